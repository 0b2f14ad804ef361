"""Oversight tampering through the real kernel: paths written that matter, module loads, ptrace targets.

Each agent is a real program under the loaded BPF programs (bpf/file.bpf.c, bpf/guard.bpf.c). The
records checked are the pipeline's, so the path is the one userland resolved and classified; the
kernel's own record count is checked where volume is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest

from tracer import events
from tracer.gpu import GpuMonitor
from tracer.launcher import GatedChild
from tracer.output import MemoryWriter
from tracer.rules import Engine, load
from tracer.session import Pipeline, StopFlag, run_agent

SCHEMA = jsonschema.Draft202012Validator(
    json.loads((Path(__file__).parents[2] / "docs" / "event.schema.json").read_text()))


class CountingPipeline(Pipeline):
    """The real pipeline, also counting the kernel's file records before any is dropped."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.file_records: list[events.FileEvent] = []

    def handle(self, raw: bytes) -> None:
        ev = events.decode(raw)
        if isinstance(ev, events.FileEvent):
            self.file_records.append(ev)
        super().handle(raw)


@pytest.fixture
def watched(probes):
    """watched(argv, others=...) -> (records, pipeline): one agent run with the default rules.

    others: pids made the members of a second agent for the run.
    """

    def run(argv: list, others: tuple[int, ...] = (), linger: float = 1.0):
        writer = MemoryWriter()
        pipe = CountingPipeline(probes, writer, gpu=GpuMonitor(probes))
        pipe.rules = Engine(load().rules)
        pipe.table.seed_from_proc()
        if others:
            other = pipe.agents.new(others[0], {"role": "other"})
            for pid in others:
                probes.watch(pid, other.kernel_id)
        stop = StopFlag()
        try:
            run_agent(pipe, GatedChild([os.fsdecode(a) for a in argv]), {}, linger, stop)
        finally:
            stop.restore()
            for pid in others:
                probes.unwatch(pid)
        for record in writer.records:
            errors = [e.message for e in SCHEMA.iter_errors(record)]
            assert not errors, (record, errors)
        return writer.records, pipe

    return run


def writes(records: list[dict]) -> list[dict]:
    return [r["tamper"]["file"] for r in records if r.get("type") == "tamper" and r["tamper"]["kind"] == "write"]


def alerts(records: list[dict], rule: str) -> list[dict]:
    return [r for r in records if r["kind"] == "alert" and r["rule"] == rule]


def test_an_append_to_bashrc_in_a_temp_home_is_seen_once_with_its_path(watched, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # Relative, from a cwd the kernel walks; the shell is gone before the record is read.
    script = f"cd {home} && for i in $(seq 50); do echo 'export X=$i' >> .bashrc; done"
    records, pipe = watched(["sh", "-c", script])
    [w] = writes(records)
    assert (w["op"], w["path"], w["resolved"], w["category"], w["result"]) == (
        "open", f"{home}/.bashrc", True, "shell_startup", "ok")
    assert "O_APPEND" in w["flags"]
    [alert] = alerts(records, "shell-startup-modified")
    assert alert["mitre"] == ["T1546.004"]
    assert len(pipe.file_records) == 1  # 50 appends, one record: the kernel deduplicates


def test_a_cron_job_in_the_real_cron_d_is_seen_and_removed(watched):
    job = Path("/etc/cron.d") / f"agentwatch-test-{uuid.uuid4().hex[:8]}"
    if not job.parent.is_dir():
        pytest.skip("no /etc/cron.d on this host")
    try:
        # A comment only: nothing for cron to run even while it exists.
        records, _ = watched(["sh", "-c", f"cd /etc && echo '# agentwatch kernel test' > cron.d/{job.name}; "
                                          f"rm -f {job}"])
    finally:
        job.unlink(missing_ok=True)
    ops = [(w["op"], w["path"], w["category"]) for w in writes(records)]
    assert ops == [("open", str(job), "cron"), ("unlink", str(job), "cron")]
    [alert] = alerts(records, "cron-job-written")
    assert alert["mitre"] == ["T1053.003"] and alert["severity"] == "high"


def test_a_file_renamed_into_place_names_its_destination(watched, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    script = f"cd {tmp_path} && echo ssh-ed25519 AAAA k > keys.tmp && mv keys.tmp home/.ssh/authorized_keys"
    records, _ = watched(["sh", "-c", script])
    [w] = writes(records)  # keys.tmp has no marked name: the kernel never reports it
    assert (w["op"], w["path"], w["source"], w["category"]) == (
        "rename", f"{home}/.ssh/authorized_keys", "keys.tmp", "authorized_keys")
    assert alerts(records, "authorized-keys-file-written")


def test_a_dirfd_relative_write_and_a_symlink_into_cron_d(watched, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import os, sys\n"
        f"d = os.open({str(home)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.close(os.open('.zshrc', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d))\n"
        f"os.symlink('/etc/cron.d', {str(tmp_path / 'c')!r})\n"
    )
    records, _ = watched([sys.executable, "-c", code])
    got = {(w["op"], w["path"], w["category"]) for w in writes(records)}
    assert ("open", f"{home}/.zshrc", "shell_startup") in got
    assert ("symlink", str(tmp_path / "c"), "cron") in got


def test_a_path_through_a_mount_is_walked_across_it(watched, tmp_path):
    """In a mount namespace of its own, the agent mounts a tmpfs and writes a .profile inside it."""
    point = tmp_path / "mnt"
    point.mkdir()
    script = f"mount -t tmpfs aw-test {point} && cd {point} && mkdir -p a/b && cd a/b && echo x > .profile"
    records, _ = watched(["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    [w] = writes(records)
    assert (w["path"], w["category"]) == (f"{point}/a/b/.profile", "shell_startup")


def test_a_failed_write_is_an_attempt_with_its_errno(watched, tmp_path):
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o555)
    script = f"cd {blocked} && setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x >> .bashrc' 2>/dev/null; true"
    records, _ = watched(["sh", "-c", script])
    [w] = writes(records)
    assert (w["path"], w["result"]) == (f"{blocked}/.bashrc", "EACCES")


def test_build_like_writes_make_no_record_at_all(watched, tmp_path):
    """A compile-like workload: hundreds of files written and renamed, relative and absolute."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    script = (f"cd {proj} && for i in $(seq 300); do echo \"int f$i(void){{return $i;}}\" > src/f$i.c; "
              f"echo o > build-$i.tmp && mv build-$i.tmp f$i.o; done; mkdir -p {proj}/.cache && "
              f"for i in $(seq 100); do echo x > {proj}/.cache/c$i; done; rm -f f*.o")
    records, pipe = watched(["sh", "-c", script])
    assert writes(records) == []
    assert pipe.file_records == []  # the kernel marked none of them: nothing crossed the ring buffer


def test_ptrace_of_a_process_outside_every_agent_and_of_another_agent(watched):
    bystander = subprocess.Popen(["sleep", "30"])
    other = subprocess.Popen(["sleep", "30"])
    code = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for pid in map(int, sys.argv[1:]):\n"
        "    libc.ptrace(16, pid, 0, 0)\n"          # PTRACE_ATTACH
        "    os.waitpid(pid, 0)\n"
        "    libc.ptrace(17, pid, 0, 0)\n"          # PTRACE_DETACH
    )
    try:
        records, _ = watched([sys.executable, "-c", code, str(bystander.pid), str(other.pid)], others=(other.pid,))
    finally:
        for p in (bystander, other):
            p.kill()
            p.wait()
    scopes = {r["tamper"]["target_pid"]: r["tamper"]["target_scope"] for r in records
              if r.get("type") == "tamper" and r["tamper"]["kind"] == "ptrace"}
    assert scopes == {bystander.pid: "outside", other.pid: "other_agent"}
    assert alerts(records, "agent-ptraces-outside") and alerts(records, "agent-ptraces-other-agent")


def test_module_programs_pass_the_verifier_here(probes):
    """They are attached only where the kernel has the tracepoints; they must load everywhere."""
    from bcc import BPF

    for name in (b"aw_module_init_enter", b"aw_module_finit_enter", b"aw_module_exit"):
        probes._bpf.load_func(name, BPF.TRACEPOINT)


def test_a_finit_module_attempt_is_seen(watched, probes):
    if os.uname().machine != "x86_64":
        pytest.skip("the test calls finit_module by its x86_64 number")
    if not probes.module_tracepoints:
        pytest.skip("this kernel is built without CONFIG_MODULES: init_module/finit_module have no "
                    "tracepoints, and nothing can be loaded")
    code = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "fd = os.open('/dev/null', os.O_RDONLY)\n"
            "print(libc.syscall(313, fd, b'', 0), ctypes.get_errno())\n")  # __NR_finit_module (x86_64)
    records, _ = watched([sys.executable, "-c", code])
    [m] = [r["tamper"]["module"] for r in records if r.get("type") == "tamper" and r["tamper"]["kind"] == "module"]
    assert (m["syscall"], m["file"], m["name"]) == ("finit_module", "/dev/null", None)
    assert m["result"] != "ok"
    assert alerts(records, "kernel-module-load")


def test_the_module_load_variant_compiles_and_passes_the_verifier():
    """Where module:module_load exists its name is read too: that variant must build here as well."""
    from tracer import bpfobject
    from tracer import probes as tracer_probes

    flags = tracer_probes.build_cflags(tracer_probes.ProbeConfig(self_tgid=os.getpid()),
                                       tracer_probes.kernel_offsets(), None, module_name_at=12)
    obj = bpfobject.compile_with_bcc(tracer_probes.program_text(), flags)
    bpf = bpfobject.LoadedObject(obj, constants={bpfobject.SELF_TGID_PLACEHOLDER: os.getpid()})
    try:
        for name in (b"aw_module_load", b"aw_module_finit_enter", b"aw_module_exit", b"aw_file_finish"):
            assert bpf.load_func(name, bpfobject.PROG_TRACEPOINT).fd >= 0
    finally:
        bpf.cleanup()
