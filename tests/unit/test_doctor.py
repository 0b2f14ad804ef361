"""`agentwatch doctor` against fake machines built in a temp dir. No root needed.

Every path the checks read is a Host field (tracefs through
tracer.probes.TRACEFS_CANDIDATES, which the real probes.tracefs() and
probes.tracepoint_fields() read; the cgroup v2 tree through the mount named in
Host.proc_mounts), and the commands they run are small scripts.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import io
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tracer import doctor, probes
from tracer.doctor import FAIL, OK, WARN, Check, Host

RELEASE = "6.18.44-fc-v595"

FORMAT = """name: {event}
ID: 1
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
{extra}
print fmt: "pid=%d", REC->pid
"""

MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
tracefs /sys/kernel/tracing tracefs rw,relatime 0 0
"""

ALL_CAPS = "000001ffffffffff"


def script(path: Path, body: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def make_tracefs(root: Path, group_dead: bool = True, skip: tuple[str, ...] = ()) -> Path:
    tracing = root / "tracing"
    for cat, event in probes.TRACEPOINTS + doctor.DAEMON_TRACEPOINTS:
        if f"{cat}/{event}" in skip:
            continue
        extra = ""
        if event == "sched_process_exit" and group_dead:
            extra = "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;"
        d = tracing / "events" / cat / event
        d.mkdir(parents=True)
        (d / "format").write_text(FORMAT.format(event=event, extra=extra))
    return tracing


def make_headers(root: Path, version: str = "6.1.0-56-amd64") -> Path:
    """Debian layout: /lib/modules/R/build -> arch tree, source -> -common tree (kconfig.h there)."""
    base = version.rsplit("-", 1)[0]
    arch = root / "usr/src" / f"linux-headers-{version}"
    common = root / "usr/src" / f"linux-headers-{base}-common"
    (arch / "include/generated").mkdir(parents=True)
    (arch / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{version}"\n')
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    mod = root / "lib/modules" / RELEASE
    mod.mkdir(parents=True)
    (mod / "build").symlink_to(arch)
    (mod / "source").symlink_to(common)
    return root / "lib/modules"


REPO = Path(__file__).resolve().parents[2]
# A fake interpreter: `python -c PROBE` answers the docker probe and the bcc probe.
FAKE_PYTHON = """case "$2" in
  *"import docker"*) echo 7.1.0; echo /opt/aw/.venv/lib/python3.11/site-packages/docker/__init__.py ;;
  *) echo 0.26.0; echo /usr/lib/python3/dist-packages/bcc/__init__.py ;;
esac"""


def make_cgroup2(root: Path, kill: bool = True, freeze: bool = True, children: bool = True) -> Path:
    """A v2 hierarchy's files: the root has neither cgroup.kill nor cgroup.freeze, its children do."""
    mount = root / "sys/fs/cgroup/unified"
    mount.mkdir(parents=True)
    for name in ("cgroup.procs", "cgroup.controllers", "cgroup.subtree_control"):
        (mount / name).write_text("")
    if children:
        for child in ("init.scope", "system.slice"):
            (mount / child).mkdir()
            (mount / child / "cgroup.procs").write_text("")
            if kill:
                (mount / child / "cgroup.kill").write_text("")
            if freeze:
                (mount / child / "cgroup.freeze").write_text("0\n")
    return mount


def daemon_config(path: Path, text: str | None = None) -> str:
    """The shipped config, its policy read from this repo and its files in path's folder."""
    if text is None:
        text = (REPO / "packaging/agentwatch.yaml").read_text().replace(
            "/etc/agentwatch/policies/rl-sandbox.yaml", str(REPO / "policies/rl-sandbox.yaml"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def docker_api():
    """A listening unix socket standing for dockerd (in a short folder: sun_path holds 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="aw-doctor-")
    path = os.path.join(folder, "docker.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    yield path
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def machine(tmp_path, monkeypatch, docker_api):
    """A healthy fake machine like the dev VM: returns a Host for it."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/status").write_text(f"Name:\tpython\nCapEff:\t{ALL_CAPS}\n")
    (tmp_path / "proc/mounts").write_text(MOUNTS.replace("/sys/fs/cgroup/unified", str(make_cgroup2(tmp_path))))
    (tmp_path / "proc/cmdline").write_text("console=ttyS0 quiet\n")
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(
        b"CONFIG_BPF_SYSCALL=y\n# CONFIG_KPROBES is not set\nCONFIG_BPF_LSM=y\n"
        b'CONFIG_LSM="landlock,lockdown,yama,bpf"\nCONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\n'
    ))
    (tmp_path / "security").mkdir()
    (tmp_path / "security/lsm").write_text("lockdown,capability,landlock,bpf")
    (tmp_path / "security/lockdown").write_text("none [integrity] confidentiality\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "run").mkdir()  # /run/agentwatch is absent until the daemon runs
    (tmp_path / "vmlinux").write_bytes(b"fake")
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(make_tracefs(tmp_path)),))
    # BTF parsing is tested on its own below (and in the btf tests); here it resolves
    monkeypatch.setattr(probes, "kernel_offsets", lambda path: {
        f"OFF_{s.upper()}_{m.upper()}": 8 for s, m in probes.KERNEL_FIELDS})
    return Host(
        release=RELEASE,
        euid=0,
        environ={"PATH": str(tmp_path / "bin")},
        os_release=str(tmp_path / "etc/os-release"),
        proc_status=str(tmp_path / "proc/status"),
        proc_mounts=str(tmp_path / "proc/mounts"),
        proc_cmdline=str(tmp_path / "proc/cmdline"),
        proc_config=str(tmp_path / "proc/config.gz"),
        boot_dir=str(tmp_path / "boot"),
        modules_dir=str(make_headers(tmp_path)),
        security_dir=str(tmp_path / "security"),
        btf_path=str(tmp_path / "vmlinux"),
        python=script(tmp_path / "bin/python", FAKE_PYTHON),
        bpftool=script(tmp_path / "bin/bpftool", 'echo "bpftool v7.1.0"; echo "using libbpf v1.1"'),
        dpkg_query=str(tmp_path / "bin/no-dpkg-query"),
        load_probes=lambda: 0.31,
        daemon_config=daemon_config(tmp_path / "etc/agentwatch/agentwatch.yaml"),
        run_dir=str(tmp_path / "run/agentwatch"),
        docker_socket=docker_api,
    )


def rows_by_name(host: Host) -> dict[str, Check]:
    return {row.name: row for row in doctor.collect(host)}


# ---- one check at a time -----------------------------------------------------


def test_kernel_and_distro(machine):
    assert doctor.check_kernel(machine).status == OK
    assert RELEASE in doctor.check_kernel(machine).detail
    distro = doctor.check_distro(machine)
    assert (distro.status, distro.detail) == (OK, "Debian GNU/Linux 12 (bookworm)")


def test_distro_without_os_release_is_still_ok(machine, tmp_path):
    row = doctor.check_distro(Host(os_release=str(tmp_path / "missing")))
    assert row.status == OK and "unknown" in row.detail


def test_privileges(machine, tmp_path):
    row = doctor.check_privileges(machine)
    assert row.status == OK
    assert "CAP_BPF" in row.detail and "CAP_PERFMON" in row.detail

    row = doctor.check_privileges(Host(euid=1000, proc_status=machine.proc_status))
    assert row.status == FAIL and "euid 1000" in row.detail
    assert "sudo" in row.fix

    status = tmp_path / "status-sysadmin-only"
    status.write_text(f"CapEff:\t{1 << 21:016x}\n")  # CAP_SYS_ADMIN alone is enough
    assert doctor.check_privileges(Host(euid=0, proc_status=str(status))).status == OK

    status.write_text(f"CapEff:\t{1 << 39:016x}\n")  # CAP_BPF without CAP_PERFMON is not
    row = doctor.check_privileges(Host(euid=0, proc_status=str(status)))
    assert row.status == FAIL and "PERFMON" in row.fix


def test_btf_missing_and_garbage(tmp_path):
    row = doctor.check_btf(Host(btf_path=str(tmp_path / "vmlinux")))
    assert row.status == FAIL and "does not exist" in row.detail
    assert "CONFIG_DEBUG_INFO_BTF=y" in row.fix

    (tmp_path / "vmlinux").write_bytes(b"not btf at all")
    row = doctor.check_btf(Host(btf_path=str(tmp_path / "vmlinux")))
    assert row.status == FAIL
    assert row.detail.startswith("cannot read kernel struct offsets from")  # the ProbeError text


@pytest.mark.skipif(not os.access(probes.BTF_PATH, os.R_OK), reason="no readable kernel BTF here")
def test_btf_of_this_kernel():
    row = doctor.check_btf(Host())
    assert row.status == OK and f"all {len(probes.KERNEL_FIELDS)} struct fields" in row.detail


def test_tracefs_and_tracepoints(machine):
    assert doctor.check_tracefs(machine).status == OK
    assert doctor.check_tracepoints(machine) == Check(
        "tracepoints", OK, f"all {len(probes.TRACEPOINTS)} present", "")
    assert doctor.check_group_dead(machine).status == OK


def test_module_loads_are_watched_where_the_kernel_has_modules(machine, tmp_path):
    row = doctor.check_module_loads(machine)
    assert (row.status, row.detail) == (OK, "kernel built without modules (no init_module/finit_module "
                                            "tracepoints): nothing to load")
    events_dir = Path(probes.TRACEFS_CANDIDATES[0], "events")
    for cat, event in [t[:2] for t in probes.MODULE_TRACEPOINTS] + [probes.MODULE_LOAD_TRACEPOINT[:2]]:
        (events_dir / cat / event).mkdir(parents=True, exist_ok=True)
        (events_dir / cat / event / "format").write_text(FORMAT.format(event=event, extra=""))
    row = doctor.check_module_loads(machine)
    assert (row.status, row.detail) == (OK, "init_module and finit_module watched, named by module/module_load")


def test_missing_tracepoint_fails(machine, tmp_path, monkeypatch):
    root = make_tracefs(tmp_path / "other", skip=("syscalls/sys_enter_execveat",))
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(root),))
    row = doctor.check_tracepoints(machine)
    assert row.status == FAIL and "syscalls/sys_enter_execveat" in row.detail
    assert "CONFIG_FTRACE_SYSCALLS=y" in row.fix


def test_exit_without_group_dead_warns(machine, tmp_path, monkeypatch):
    root = make_tracefs(tmp_path / "old", group_dead=False)
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(root),))
    row = doctor.check_group_dead(machine)
    assert row.status == WARN and "approximated" in row.detail


def test_tracefs_not_mounted(machine, tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(tmp_path / "nothing"),))
    host = Host(proc_mounts=str(tmp_path / "nothing"))
    for fn in (doctor.check_tracefs, doctor.check_tracepoints):
        row = fn(host)
        assert row.status == FAIL
        assert row.fix == "mount -t tracefs tracefs /sys/kernel/tracing"


def test_tracefs_mounted_but_unreadable(machine, tmp_path, monkeypatch):
    # what a non-root user sees: the mount exists, its events dir does not open
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(tmp_path / "nothing"),))
    row = doctor.check_tracefs(Host(euid=1000, proc_mounts=machine.proc_mounts))
    assert row.status == FAIL and "not readable as euid 1000" in row.detail
    assert "sudo" in row.fix


def test_kprobes_never_fail(machine, tmp_path, monkeypatch):
    row = doctor.check_kprobes(machine)
    assert row.status == OK
    assert "not available" in row.detail and "CONFIG_KPROBES is not set" in row.detail

    # /boot/config-$(uname -r) wins over /proc/config.gz
    (Path(machine.boot_dir) / f"config-{RELEASE}").write_text("CONFIG_KPROBES=y\n")
    row = doctor.check_kprobes(machine)
    assert row.status == OK and "; available\n(CONFIG_KPROBES=y" in row.detail

    # no kernel config at all: kprobe_events in tracefs decides
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(tmp_path / "nothing"),))
    row = doctor.check_kprobes(Host(release=RELEASE, boot_dir=str(tmp_path / "x"), proc_config=str(tmp_path / "x")))
    assert row.status == OK and "kprobe_events absent" in row.detail


def test_lsm_and_lockdown_from_securityfs(machine):
    row = doctor.check_lsm(machine)
    assert row.status == OK and "bpf LSM listed" in row.detail
    row = doctor.check_lockdown(machine)
    assert row.status == OK and row.detail.startswith("integrity")


def test_lsm_and_lockdown_from_config_when_securityfs_is_not_mounted(machine, tmp_path):
    host = Host(release=RELEASE, security_dir=str(tmp_path / "empty"), proc_config=machine.proc_config,
                boot_dir=machine.boot_dir, proc_cmdline=machine.proc_cmdline)
    row = doctor.check_lsm(host)
    assert row.status == OK and "bpf LSM listed" in row.detail and "securityfs not mounted" in row.detail
    assert doctor.check_lockdown(host).detail.startswith("integrity")

    (tmp_path / "cmdline").write_text("quiet lockdown=confidentiality lsm=landlock,yama\n")
    host = Host(release=RELEASE, security_dir=str(tmp_path / "empty"), proc_config=machine.proc_config,
                boot_dir=machine.boot_dir, proc_cmdline=str(tmp_path / "cmdline"))
    assert "bpf LSM not listed" in doctor.check_lsm(host).detail
    row = doctor.check_lockdown(host)
    assert row.status == WARN and row.detail.startswith("confidentiality")
    assert "lockdown=integrity" in row.fix


def test_headers_mismatch_warns_with_versions(machine):
    row = doctor.check_headers(machine)
    assert row.status == WARN
    assert "build -> " in row.detail and "linux-headers-6.1.0-56-amd64" in row.detail
    assert "source -> " in row.detail and "linux-headers-6.1.0-56-common" in row.detail
    assert "BCC compiles against 6.1.0-56-amd64 headers" in row.detail
    assert "only through BTF offsets, so this is safe" in row.detail
    assert row.fix.startswith("none needed")


def test_headers_match(tmp_path):
    modules = make_headers(tmp_path, version=RELEASE)
    # make_headers links under RELEASE; the arch tree says UTS_RELEASE == RELEASE
    row = doctor.check_headers(Host(release=RELEASE, modules_dir=str(modules), environ={}))
    assert row.status == OK and "match the running kernel" in row.detail


def test_headers_missing_or_dangling_fail(machine, tmp_path):
    row = doctor.check_headers(Host(release=RELEASE, modules_dir=str(tmp_path / "none"), environ={}))
    assert row.status == FAIL and row.fix == "make setup"
    assert "build: missing" in row.detail

    mod = tmp_path / "dangling" / RELEASE
    mod.mkdir(parents=True)
    (mod / "build").symlink_to(tmp_path / "gone")
    row = doctor.check_headers(Host(release=RELEASE, modules_dir=str(tmp_path / "dangling"), environ={}))
    assert row.status == FAIL and "(dangling)" in row.detail and row.fix == "make setup"


def test_headers_bcc_kernel_source_override(machine, tmp_path):
    host = Host(release=RELEASE, modules_dir=machine.modules_dir,
                environ={"BCC_KERNEL_SOURCE": str(tmp_path / "elsewhere")})
    row = doctor.check_headers(host)
    assert row.status == FAIL and "BCC_KERNEL_SOURCE" in row.detail


def test_bcc(machine, tmp_path):
    assert doctor.check_bcc(machine).detail == "0.26.0 (/usr/lib/python3/dist-packages/bcc)"

    broken = script(tmp_path / "bin/broken", "echo \"ModuleNotFoundError: No module named 'bcc'\" >&2; exit 1")
    row = doctor.check_bcc(Host(python=broken))
    assert row.status == FAIL and "No module named 'bcc'" in row.detail
    assert "apt-get install python3-bpfcc" in row.fix and "--system-site-packages" in row.fix

    row = doctor.check_bcc(Host(python=str(tmp_path / "no-python")))
    assert row.status == FAIL


def test_bcc_version_falls_back_to_dpkg(tmp_path):
    python = script(tmp_path / "python", "echo; echo /usr/lib/python3/dist-packages/bcc/__init__.py")
    dpkg = script(tmp_path / "dpkg-query", 'echo -n "0.26.0+ds-1"')
    row = doctor.check_bcc(Host(python=python, dpkg_query=dpkg))
    assert row.status == OK and row.detail.startswith("0.26.0+ds-1")


def test_cgroup2_found_not_hard_coded(machine, tmp_path):
    assert doctor.check_cgroup2(machine).detail == str(tmp_path / "sys/fs/cgroup/unified")
    (tmp_path / "mounts2").write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    assert doctor.check_cgroup2(Host(proc_mounts=str(tmp_path / "mounts2"))).detail == "/sys/fs/cgroup"
    (tmp_path / "mounts1").write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    row = doctor.check_cgroup2(Host(proc_mounts=str(tmp_path / "mounts1")))
    assert row.status == WARN and "mount -t cgroup2" in row.fix


@pytest.mark.parametrize("release, status", [
    ("6.18.44-fc-v595", OK), ("5.8.0", OK), ("5.4.0-150-generic", FAIL), ("weird", WARN),
])
def test_ring_buffer_kernel_version(release, status):
    assert doctor.check_ringbuf(Host(release=release)).status == status


def test_programs(machine):
    row = doctor.check_programs(machine)
    assert row.status == OK and "0.31 s" in row.detail

    assert doctor.check_programs(Host(euid=1000)).status == WARN  # never tries without root

    def refuse():
        raise probes.ProbeError("cannot load the BPF programs: EPERM")

    row = doctor.check_programs(Host(euid=0, load_probes=refuse))
    assert (row.status, row.detail) == (FAIL, "cannot load the BPF programs: EPERM")


def test_bpftool(machine, tmp_path):
    assert doctor.check_bpftool(machine).detail == "bpftool v7.1.0"
    row = doctor.check_bpftool(Host(bpftool="no-such-bpftool", environ={"PATH": str(tmp_path)}))
    assert row.status == WARN and "apt-get install bpftool" in row.fix


def test_unexpected_exception_becomes_fail(machine):
    def boom():
        raise ZeroDivisionError("division by zero")

    row = doctor.check_programs(Host(euid=0, load_probes=boom))
    assert row.status == FAIL and row.detail == "ZeroDivisionError: division by zero"

    row = doctor.check_bpftool(Host(environ=None, bpftool=None))  # shutil.which(None) raises
    assert row.status == FAIL and row.detail.startswith("check crashed: ")


# ---- the whole report ----------------------------------------------------------------


def test_report_on_healthy_machine(machine):
    out = io.StringIO()
    assert doctor.run_checks(out, machine) == 0
    text = out.getvalue()
    header, rule = text.splitlines()[:2]
    assert header.split() == ["CHECK", "STATUS", "DETAIL"]
    assert set(rule) <= {"-", " "}
    rows = rows_by_name(machine)
    assert [n for n, r in rows.items() if r.status != OK] == ["kernel headers"]
    assert rows["kernel headers"].status == WARN
    fixes = [line for line in text.splitlines() if line.startswith("fix: ")]
    assert fixes == [f"fix: {rows['kernel headers'].fix}"]
    assert text.endswith(fixes[-1] + "\n")


def test_report_with_everything_missing_never_raises(tmp_path, monkeypatch):
    nothing = tmp_path / "nothing"
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(nothing),))
    host = Host(
        release="", euid=1000, environ={},
        **{name: str(nothing / name) for name in (
            "os_release", "proc_status", "proc_mounts", "proc_cmdline", "proc_config", "boot_dir",
            "modules_dir", "security_dir", "btf_path", "python", "bpftool", "dpkg_query",
            "daemon_config", "run_dir", "docker_socket")},
    )
    out = io.StringIO()
    assert doctor.run_checks(out, host) == 1
    text = out.getvalue()
    assert "check crashed" not in text  # every missing path is handled, not caught
    rows = rows_by_name(host)
    assert {r.status for r in rows.values()} <= {OK, WARN, FAIL}
    assert len(rows) == len(doctor.CHECKS)
    failed = {n for n, r in rows.items() if r.status == FAIL}
    assert {"privileges", "BTF", "tracefs", "tracepoints", "kernel headers", "bcc"} <= failed
    assert rows["kprobes"].status == OK and rows["fentry/LSM"].status == OK
    for row in rows.values():
        if row.status != OK:
            assert f"fix: {row.fix}" in text.splitlines()
    assert "fix: make setup" in text.splitlines()
    assert "fix: mount -t tracefs tracefs /sys/kernel/tracing" in text.splitlines()


def test_report_survives_a_crashing_check(machine, monkeypatch):
    def crash(category, event):
        raise ValueError("bad format file")

    host = dataclasses.replace(machine, tracepoint_fields=crash)
    out = io.StringIO()
    assert doctor.run_checks(out, host) == 1
    assert "check crashed: ValueError: bad format file" in out.getvalue()


# ---- the daemon's prerequisites ---------------------------------------------------------


def test_daemon_rows_on_a_healthy_machine(machine, tmp_path):
    rows = rows_by_name(machine)
    mount = tmp_path / "sys/fs/cgroup/unified"
    row = rows["daemon cgroups"]
    assert row.status == OK
    assert row.detail.splitlines() == [
        f"{mount} writable",
        "cgroup.kill (kill_agent): present in the cgroups",
        "cgroup.freeze (freeze_agent): present in the cgroups",
    ]
    assert rows["daemon tracepoints"] == Check("daemon tracepoints", OK, "cgroup/cgroup_mkdir, cgroup/cgroup_rmdir")
    assert rows["daemon run dir"].status == OK and "absent;" in rows["daemon run dir"].detail
    assert rows["daemon Docker API"].status == OK and "labels, names and images from Docker" in \
        rows["daemon Docker API"].detail
    assert rows["daemon docker SDK"].detail == "7.1.0 (/opt/aw/.venv/lib/python3.11/site-packages/docker)"
    row = rows["daemon config"]
    assert row.status == OK
    assert row.detail.startswith(f"{machine.daemon_config}: 3 sandbox entries, 1 policy, ")
    assert "control /run/agentwatch/control.sock, output /var/log/agentwatch/records.jsonl" in row.detail


def without_config(host: Host, tmp_path: Path) -> Host:
    return dataclasses.replace(host, daemon_config=str(tmp_path / "no-such-config.yaml"))


def test_daemon_cgroups_without_a_v2_hierarchy(machine, tmp_path):
    (tmp_path / "mounts-v1").write_text("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    host = dataclasses.replace(machine, proc_mounts=str(tmp_path / "mounts-v1"))
    row = doctor.check_daemon_cgroups(host)
    assert row.status == FAIL and "the daemon cannot run" in row.detail  # the daemon is installed here
    assert "systemd.unified_cgroup_hierarchy=1" in row.fix
    assert doctor.check_daemon_cgroups(without_config(host, tmp_path)).status == WARN  # and here it is not


def test_daemon_cgroups_read_only(machine, tmp_path):
    mount = tmp_path / "sys/fs/cgroup/unified"
    (tmp_path / "mounts-ro").write_text(f"cgroup2 {mount} cgroup2 ro,nosuid,nodev 0 0\n")
    host = dataclasses.replace(machine, proc_mounts=str(tmp_path / "mounts-ro"))
    row = doctor.check_daemon_cgroups(host)
    assert row.status == FAIL and "read-only" in row.detail
    assert row.fix.startswith(f"mount -o remount,rw {mount}")
    assert doctor.check_daemon_cgroups(without_config(host, tmp_path)).status == WARN


def test_daemon_cgroups_old_kernel_warns(machine, tmp_path):
    root = tmp_path / "old"
    mount = make_cgroup2(root, kill=False)  # 5.2 <= kernel < 5.14: freeze, no kill
    (root / "mounts").write_text(f"cgroup2 {mount} cgroup2 rw 0 0\n")
    row = doctor.check_daemon_cgroups(dataclasses.replace(machine, proc_mounts=str(root / "mounts")))
    assert row.status == WARN  # kill_agent still works, signalling pid by pid
    assert "cgroup.kill (kill_agent): absent in the cgroups: kill_agent signals pid by pid" in row.detail
    assert "cgroup.freeze (freeze_agent): present in the cgroups" in row.detail
    assert row.fix.startswith("boot a kernel >= 5.14")


@pytest.mark.parametrize("release, status, kill_ok, freeze_ok", [
    (RELEASE, OK, True, True), ("5.10.0-30-amd64", WARN, False, True), ("4.19.0", WARN, False, False),
])
def test_daemon_cgroups_bare_hierarchy_goes_by_the_kernel(machine, tmp_path, release, status, kill_ok, freeze_ok):
    root = tmp_path / "bare"
    mount = make_cgroup2(root, children=False)  # nothing below the root to look at
    (root / "mounts").write_text(f"cgroup2 {mount} cgroup2 rw 0 0\n")
    row = doctor.check_daemon_cgroups(dataclasses.replace(machine, proc_mounts=str(root / "mounts"),
                                                          release=release))
    assert row.status == status
    assert (f"kernel {release} >= 5.14" in row.detail) == kill_ok
    assert (f"kernel {release} >= 5.2" in row.detail) == freeze_ok
    if not freeze_ok:
        assert row.fix.startswith("boot a kernel >= 5.14")


def test_daemon_tracepoints_missing(machine, tmp_path, monkeypatch):
    root = make_tracefs(tmp_path / "other", skip=("cgroup/cgroup_rmdir",))
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(root),))
    row = doctor.check_daemon_tracepoints(machine)
    assert row.status == FAIL and "cgroup/cgroup_rmdir" in row.detail and "cgroup_mkdir" not in row.detail
    assert "CONFIG_TRACEPOINTS=y" in row.fix
    assert doctor.check_daemon_tracepoints(without_config(machine, tmp_path)).status == WARN
    assert doctor.check_tracepoints(machine).status == OK  # `run` does not need them


def test_daemon_tracepoints_without_tracefs(machine, tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "TRACEFS_CANDIDATES", (str(tmp_path / "nothing"),))
    host = without_config(dataclasses.replace(machine, proc_mounts=str(tmp_path / "nothing")), tmp_path)
    row = doctor.check_daemon_tracepoints(host)
    assert row.status == WARN and row.fix == "mount -t tracefs tracefs /sys/kernel/tracing"


def test_daemon_run_dir(machine, tmp_path):
    run = Path(machine.run_dir)
    assert doctor.check_daemon_run_dir(machine).detail == \
        f"{run} absent; {run.parent} is writable, so the daemon (or systemd) makes it"
    deep = dataclasses.replace(machine, run_dir=str(tmp_path / "a/b/agentwatch"))  # the nearest that exists
    assert doctor.check_daemon_run_dir(deep).detail.endswith(f"; {tmp_path} is writable, so the daemon "
                                                               "(or systemd) makes it")
    run.mkdir(parents=True)
    assert doctor.check_daemon_run_dir(machine) == Check(
        "daemon run dir", OK, f"{run} writable (control socket, state file)")


def test_daemon_run_dir_that_is_a_file(machine, tmp_path):
    Path(machine.run_dir).write_text("")
    row = doctor.check_daemon_run_dir(machine)
    assert row.status == FAIL and "is not a directory" in row.detail
    assert doctor.check_daemon_run_dir(without_config(machine, tmp_path)).status == WARN


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any mode bits")
def test_daemon_run_dir_not_writable_as_a_user(machine, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        host = dataclasses.replace(machine, euid=os.geteuid(), run_dir=str(locked / "agentwatch"))
        row = doctor.check_daemon_run_dir(host)
        assert row.status == WARN and "not writable as euid" in row.detail and row.fix.startswith("run as root")
    finally:
        locked.chmod(0o755)


def test_docker_api_absent_or_not_answering_only_warns(machine, tmp_path):
    row = doctor.check_docker_socket(dataclasses.replace(machine, docker_socket=str(tmp_path / "no.sock")))
    assert row.status == WARN and "named from their cgroup path only" in row.detail
    assert row.fix.startswith("none needed where no sandbox is a Docker container")

    (tmp_path / "file.sock").write_text("")
    row = doctor.check_docker_socket(dataclasses.replace(machine, docker_socket=str(tmp_path / "file.sock")))
    assert row.status == WARN and "is not a socket" in row.detail

    folder = tempfile.mkdtemp(prefix="aw-doctor-")
    try:
        stale = os.path.join(folder, "docker.sock")  # left by a dockerd that died: nobody listens
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(stale)
        s.close()
        row = doctor.check_docker_socket(dataclasses.replace(machine, docker_socket=stale))
        assert row.status == WARN and "is dockerd running?" in row.detail
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_docker_sdk_missing_warns(machine, tmp_path):
    broken = script(tmp_path / "bin/nodocker", "echo \"ModuleNotFoundError: No module named 'docker'\" >&2; exit 1")
    row = doctor.check_docker_sdk(dataclasses.replace(machine, python=broken))
    assert row.status == WARN and "No module named 'docker'" in row.detail
    assert "cgroup path only" in row.detail and row.fix.startswith("make setup")
    assert doctor.check_docker_sdk(dataclasses.replace(machine, python=str(tmp_path / "no-python"))).status == WARN


@pytest.mark.skipif(importlib.util.find_spec("docker") is None, reason="the docker package is not installed here")
def test_docker_sdk_of_this_interpreter():
    row = doctor.check_docker_sdk(Host())
    assert row.status == OK and "docker" in row.detail


def test_daemon_config_absent_warns_with_make_install(machine, tmp_path):
    row = doctor.check_daemon_config(without_config(machine, tmp_path))
    assert row.status == WARN and "the daemon is not installed" in row.detail
    assert row.fix == "make install"


def test_daemon_config_that_does_not_parse_fails(machine, tmp_path):
    bad = daemon_config(tmp_path / "bad.yaml", "sandboxes:\n  - match: [docker/*]\n    on_alert: explode\n")
    row = doctor.check_daemon_config(dataclasses.replace(machine, daemon_config=bad))
    assert row.status == FAIL
    assert row.detail.startswith(f"{bad}:3: sandboxes[0].on_alert: 'explode' is not one of rule, report")
    assert row.fix == f"fix it (agentwatch daemon --config {bad} --check), then systemctl reload agentwatch"

    gone = daemon_config(tmp_path / "gone.yaml", "sandboxes:\n  - match: [docker/*]\n    policy: nowhere.yaml\n")
    row = doctor.check_daemon_config(dataclasses.replace(machine, daemon_config=gone))
    assert row.status == FAIL and row.detail.startswith(f"{gone}:3: sandboxes[0].policy: ")


def test_daemon_config_with_a_bad_rules_file_fails(machine, tmp_path):
    (tmp_path / "rules.yaml").write_text("- rule: broken\n  condition: proc.name = \n")
    cfg = daemon_config(tmp_path / "cfg.yaml", "rules: [rules.yaml]\nsandboxes:\n  - match: [docker/*]\n")
    row = doctor.check_daemon_config(dataclasses.replace(machine, daemon_config=cfg))
    assert row.status == FAIL and row.detail.startswith("a rules file it names: ")
    assert str(tmp_path / "rules.yaml") in row.detail
