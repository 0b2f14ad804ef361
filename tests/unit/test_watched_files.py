"""Paths written that matter (tracer/watched_files.py) and their tamper records (tracer/records.py).

The kernel keeps a written path only when one of its names is marked; userland then resolves it and
gives it a category. These tests hold the two halves together: every path with a category has a
marked name, so the kernel never drops what userland would keep.
"""

from __future__ import annotations

import os

import pytest

from tracer import events, records, watched_files
from tracer.records import Clock, event_record, file_tamper_json, kept_write
from tracer.proctree import Process

CATEGORISED = {
    "/home/dev/.bashrc": "shell_startup",
    "/root/.bash_profile": "shell_startup",
    "/home/dev/.profile": "shell_startup",
    "/home/dev/.zshrc": "shell_startup",
    "/etc/profile": "shell_startup",
    "/etc/profile.d/zz-agent.sh": "shell_startup",
    "/etc/bash.bashrc": "shell_startup",
    "/etc/environment": "shell_startup",
    "/etc/skel/.bashrc": "shell_startup",
    "/etc/crontab": "cron",
    "/etc/cron.d/job": "cron",
    "/etc/cron.daily/job": "cron",
    "/var/spool/cron/crontabs/root": "cron",
    "/var/spool/cron/root": "cron",
    "/etc/systemd/system/evil.service": "systemd",
    "/etc/systemd/system/multi-user.target.wants/evil.service": "systemd",
    "/lib/systemd/system/evil.service": "systemd",
    "/usr/lib/systemd/system/evil.service": "systemd",
    "/usr/local/lib/systemd/system/evil.service": "systemd",
    "/run/systemd/system/evil.service": "systemd",
    "/home/dev/.config/systemd/user/sync.service": "systemd",
    "/home/dev/.local/share/systemd/user/sync.service": "systemd",
    "/root/.ssh/authorized_keys": "authorized_keys",
    "/home/dev/.ssh/authorized_keys2": "authorized_keys",
    "/etc/ld.so.preload": "ld_preload",
    "/etc/sudoers": "sudoers",
    "/etc/sudoers.d/agent": "sudoers",
    "/etc/rc.local": "init_scripts",
    "/etc/init.d/evil": "init_scripts",
    "/etc/rc2.d/S01evil": "init_scripts",
    "/etc/modules-load.d/x.conf": "modules",
    "/etc/modprobe.d/x.conf": "modules",
    "/usr/lib/modules-load.d/x.conf": "modules",
    "/etc/audit/auditd.conf": "audit",
    "/etc/audit/rules.d/audit.rules": "audit",
    "/etc/agentwatch/agentwatch.yaml": "agentwatch",
    "/etc/agentwatch/rules/local.yaml": "agentwatch",
    "/etc/systemd/system/agentwatch.service": "agentwatch",
    "/etc/systemd/system/agentwatch.service.d/override.conf": "agentwatch",
    "/usr/lib/systemd/system/agentwatch.service": "agentwatch",
    "/etc/cron.d": "cron",  # an O_TMPFILE open names the directory
}

# What agents write all day: no category, dropped.
UNCATEGORISED = [
    "/home/dev/project/src/main.c", "/home/dev/project/build/main.o", "/home/dev/.cache/pip/http/x",
    "/home/dev/project/.venv/lib/python3.11/site-packages/x.py", "/home/dev/project/.venv/bin/activate",
    "/home/dev/project/.venv/etc/jupyter/jupyter_notebook_config.d/x.json", "/home/dev/.ssh/known_hosts",
    "/etc/hosts.new", "/tmp/x", "/home/dev/project/etc/cron.d/job", "/home/dev/project/systemd/x.service",
    "/home/dev/.bashrc.d/x", "/home/dev/.bash_history", "/var/spool/mail/dev",
    "/home/dev/agentwatch/packaging/agentwatch.service",  # agentwatch's own checkout
]


def marked(path: str) -> bool:
    return any(name in watched_files.MARKED_NAMES for name in path.split("/"))


@pytest.mark.parametrize("path,category", sorted(CATEGORISED.items()))
def test_each_path_that_matters_has_its_category_and_a_marked_name(path, category):
    assert watched_files.classify(path) == category
    assert marked(path), f"{path}: no name the kernel marks, so it would never be reported"


@pytest.mark.parametrize("path", UNCATEGORISED)
def test_everyday_writes_have_no_category(path):
    assert watched_files.classify(path) is None


def test_marked_names_fit_the_kernel_hash():
    hashes = watched_files.marked_hashes()
    assert len(hashes) == len(set(hashes)) == len(watched_files.MARKED_NAMES)
    # FNV-1a 64, the published test vectors (as bpf/file.bpf.c computes it).
    assert watched_files.fnv1a64(b"") == 0xCBF29CE484222325
    assert watched_files.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert watched_files.fnv1a64(b"foobar") == 0x85944171F73967E8


def file_event(raw, **kw) -> events.FileEvent:
    kw.setdefault("pid", 4_999_123)
    return events.decode(raw.file(**kw))


def test_a_relative_path_joins_the_directory_the_kernel_walked(raw):
    ev = file_event(raw, op=events.FILE_OPEN, path=b"../cron.d/./job", dir=b"/etc/cron.daily")
    assert watched_files.resolve(ev) == (b"/etc/cron.d/job", True)


def test_an_absolute_path_is_only_normalised(raw):
    ev = file_event(raw, op=events.FILE_OPEN, path=b"/etc//cron.d/../cron.d/job", dir=b"/ignored")
    assert watched_files.resolve(ev) == (b"/etc/cron.d/job", True)


def test_the_walk_of_the_root_is_empty(raw):
    ev = file_event(raw, op=events.FILE_OPEN, path=b"etc/crontab", dir=b"/")
    assert ev.dir == b"/"
    assert watched_files.resolve(ev) == (b"/etc/crontab", True)


def test_no_walk_and_the_process_gone_leaves_the_path_relative(raw, tmp_path):
    ev = file_event(raw, op=events.FILE_OPEN, path=b".ssh/authorized_keys", dirfd=7)
    assert ev.dir is None
    assert watched_files.resolve(ev, proc_root=str(tmp_path)) == (b".ssh/authorized_keys", False)
    assert watched_files.category_of(b".ssh/authorized_keys", False) == "authorized_keys"
    assert watched_files.category_of(b"cron.d/job", False) is None


def test_a_cut_walk_is_completed_from_proc_while_the_process_lives(raw, tmp_path):
    """/proc/PID/fd/N (or cwd) of the same process (pid and start time) fills in a walk that was cut."""
    proc = tmp_path / "proc"
    (proc / "77" / "fd").mkdir(parents=True)
    os.symlink("/etc/cron.d", proc / "77" / "fd" / "5")
    start_ticks = 4242
    (proc / "77" / "stat").write_text(f"77 (sh) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start_ticks} 0 0\n")
    start_ns = start_ticks * 10_000_000  # 100 Hz clock ticks
    ev = file_event(raw, op=events.FILE_OPEN, path=b"job", dirfd=5, dir=b"/d/e/e/p",
                    flags=events.FILE_DIR_TRUNCATED, pid=77, start_ns=start_ns)
    assert watched_files.resolve(ev, proc_root=str(proc)) == (b"/etc/cron.d/job", True)
    reused = file_event(raw, op=events.FILE_OPEN, path=b"job", dirfd=5, pid=77, start_ns=start_ns + 10**9)
    assert watched_files.resolve(reused, proc_root=str(proc)) == (b"job", False)


def test_an_append_to_bashrc_is_a_write_record(raw):
    ev = file_event(raw, op=events.FILE_OPEN, path=b".bashrc", dir=b"/home/dev", result=3,
                    open_flags=os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC)
    t = file_tamper_json(ev)
    assert t["kind"] == "write" and t["module"] is None
    assert t["file"] == {"op": "open", "path": "/home/dev/.bashrc", "resolved": True, "category": "shell_startup",
                         "result": "ok", "flags": ["O_WRONLY", "O_CREAT", "O_APPEND"], "source": None,
                         "link_target": None, "truncated": False}


def test_a_rename_into_place_names_the_destination_and_the_source(raw):
    ev = file_event(raw, op=events.FILE_RENAME, path=b"/etc/cron.d/job", other=b"job.tmp", open_flags=1)
    f = file_tamper_json(ev)["file"]
    assert (f["op"], f["path"], f["source"], f["category"], f["flags"]) == (
        "rename", "/etc/cron.d/job", "job.tmp", "cron", ["RENAME_NOREPLACE"])


def test_a_symlink_into_a_place_that_matters_takes_its_category(raw):
    ev = file_event(raw, op=events.FILE_SYMLINK, path=b"/tmp/c", other=b"/etc/cron.d")
    f = file_tamper_json(ev)["file"]
    assert (f["path"], f["link_target"], f["category"]) == ("/tmp/c", "/etc/cron.d", "cron")
    rel = file_event(raw, op=events.FILE_SYMLINK, path=b"link", dir=b"/home/dev/.ssh", other=b"../keys")
    assert file_tamper_json(rel)["file"]["category"] is None  # /home/dev/keys: nothing


def test_a_failed_attempt_is_reported_with_its_errno(raw):
    ev = file_event(raw, op=events.FILE_OPEN, path=b"/etc/sudoers.d/agent", result=-13, open_flags=os.O_WRONLY)
    f = file_tamper_json(ev)["file"]
    assert (f["category"], f["result"]) == ("sudoers", "EACCES")


def test_a_finit_module_attempt_is_a_module_record(raw):
    ev = file_event(raw, op=events.FILE_FINIT_MODULE, dir=b"/tmp/rk.ko", dirfd=3, result=-8)
    t = file_tamper_json(ev)
    assert t["kind"] == "module" and t["file"] is None
    assert t["module"] == {"syscall": "finit_module", "name": None, "file": "/tmp/rk.ko", "fd": 3, "flags": [],
                           "result": "ENOEXEC"}
    named = file_event(raw, op=events.FILE_INIT_MODULE, path=b"rk", flags=events.FILE_MODULE_NAMED, dirfd=-1)
    assert file_tamper_json(named)["module"]["name"] == "rk"


def test_hostile_bytes_in_a_path_are_escaped(raw):
    ev = file_event(raw, op=events.FILE_OPEN, path=b"/etc/cron.d/x\x1b[31m\n\xff")
    f = file_tamper_json(ev)["file"]
    assert f["path"] == "/etc/cron.d/x\\x1b[31m\\x0a\\xff" and f["category"] == "cron"


def test_the_record_is_a_tamper_record_and_unknown_paths_are_not_kept(raw):
    proc = Process(4_999_123, 50, 1, 1000, b"sh")
    kept = event_record(Clock(), file_event(raw, op=events.FILE_OPEN, path=b"/etc/cron.d/job"), proc, None)
    assert kept["type"] == "tamper" and kept_write(kept)
    dropped = event_record(Clock(), file_event(raw, op=events.FILE_OPEN, path=b"/etc/hosts"), proc, None)
    assert not kept_write(dropped)
    module = event_record(Clock(), file_event(raw, op=events.FILE_INIT_MODULE, dirfd=-1), proc, None)
    assert kept_write(module)


def test_other_tamper_records_carry_the_new_keys_as_null():
    ev = events.TamperEvent("tamper", 1, 2, 3, 3, 1, 0, 1, b"gdb", 0, events.TAMPER_PTRACE, 9, 16, 0, 0, b"")
    t = records.tamper_json(ev)
    assert t["file"] is None and t["module"] is None and t["target_scope"] is None


# --------------------------------------------------------------------------
# In the pipeline: writes that do not matter are dropped, a ptrace says whose its target is.

from test_pipeline import CHILD, ROOT, FakeProbes, ListWriter, feed, pipe, root_hdr  # noqa: E402,F401


def test_the_pipeline_drops_writes_without_a_category_and_alerts_on_the_rest(raw):
    from tracer.rules import Engine, load
    from tracer.session import Pipeline
    probes, writer = FakeProbes(), ListWriter()
    p = Pipeline(probes, writer)
    p.rules = Engine(load().rules)
    agent = p.agents.new(ROOT, {}, agent_id="agent-w")
    probes.watch(ROOT, agent.kernel_id)
    out = feed(p, raw.file(op=events.FILE_OPEN, path=b"/etc/hosts", **root_hdr()),
               raw.file(op=events.FILE_OPEN, path=b"main.o", dir=b"/home/dev/project/etc", **root_hdr()),
               raw.file(op=events.FILE_OPEN, path=b".bashrc", dir=b"/home/dev", open_flags=0o2101, **root_hdr()),
               raw.file(op=events.FILE_FINIT_MODULE, dir=b"/dev/null", dirfd=3, result=-8, **root_hdr()))
    kinds = [(r["kind"], r.get("rule") or r["tamper"]["kind"]) for r in out]
    assert kinds == [("event", "write"), ("alert", "shell-startup-modified"), ("event", "module"),
                     ("alert", "kernel-module-load")]
    assert out[1]["mitre"] == ["T1546.004"] and out[3]["mitre"] == ["T1547.006"]


def _ptrace(raw, target: int, **hdr) -> bytes:
    import ctypes as ct
    r = events.RawTamper()
    r.hdr = raw.header(events.EVENT_TAMPER, size=ct.sizeof(r), **hdr)
    r.kind, r.target_pid, r.arg = events.TAMPER_PTRACE, target, 16
    return bytes(r)


def test_a_ptrace_says_whether_its_target_is_the_agents_anothers_or_none(raw, pipe):
    from tracer.rules import Engine, load
    pipe.rules = Engine(load().rules)
    other = pipe.agents.new(CHILD, {}, agent_id="agent-other")
    pipe.probes.watch(CHILD, other.kernel_id)
    own = ROOT + 100
    pipe.probes.watch(own, 1)
    out = feed(pipe, _ptrace(raw, own, **root_hdr()), _ptrace(raw, CHILD, **root_hdr()),
               _ptrace(raw, 4_999_777, **root_hdr()))
    events_ = [r["tamper"] for r in out if r["kind"] == "event"]
    assert [(t["target_scope"], t["target_agent_id"]) for t in events_] == [
        ("same_agent", None), ("other_agent", "agent-other"), ("outside", None)]
    assert [a["rule"] for a in out if a["kind"] == "alert"] == [
        "agent-ptrace-attach", "agent-ptraces-other-agent", "agent-ptraces-outside"]
