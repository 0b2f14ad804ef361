"""The configurations a workload runs under.

none      no tracing
aw-run    `agentwatch run` with the workload as the agent (records to /dev/null)
aw-watch  `agentwatch watch --all --events` in the background (records to a tmpfs file)
bpftrace  bpftrace with the same tracepoints, host-wide, printing to /dev/null
auditd    auditd with execve/execveat and connect syscall rules

A host-wide tracer is started before a block of workloads and stopped after
it (start() waits until it is armed); aw-run wraps each workload instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from awcli import Agentwatch

HERE = Path(__file__).resolve().parent
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def _wait4(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Reap proc; returns (exit code, its own + reaped children's CPU seconds)."""
    if proc.returncode is not None:  # already reaped (by poll()): no rusage left to read
        return proc.returncode, None
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime


class Tracer:
    name = "none"
    host_wide = False
    description = "no tracing"

    def __init__(self) -> None:
        self.unavailable: str | None = None  # why it cannot run here, or None
        self.armed_s: list[float] = []       # start-to-armed times of each start
        self.blocks: list[dict] = []         # what each start..stop saw (cpu, events, lost)

    def wrap(self, argv: list[str]) -> list[str]:
        return argv

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class AwRun(Tracer):
    name = "aw-run"
    description = "agentwatch run (workload is the agent), records to /dev/null"

    def __init__(self, aw: Agentwatch) -> None:
        super().__init__()
        self.aw = aw
        if not aw.usable:
            self.unavailable = "agentwatch does not start (`agentwatch run --help` failed)"

    def wrap(self, argv: list[str]) -> list[str]:
        return self.aw.run(argv, output="/dev/null")


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float, needle: bytes = b"") -> float | None:
    """Seconds until path is non-empty (and holds needle), None on timeout or exit."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if path.stat().st_size > 0 and (not needle or needle in path.read_bytes()[:65536]):
                return time.monotonic() - t0
        except OSError:
            pass
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    return None


class AwWatch(Tracer):
    name = "aw-watch"
    host_wide = True
    description = "agentwatch watch --all --events, records to a tmpfs file (without --events it writes nothing before the first alert, so it could not be seen to arm)"

    def __init__(self, aw: Agentwatch) -> None:
        super().__init__()
        self.aw = aw
        self.proc: subprocess.Popen | None = None
        if not aw.usable:
            self.unavailable = "agentwatch does not start"

    def start(self) -> None:
        self.out = SHM / f"awbench-watch-{os.getpid()}.jsonl"
        self.out.unlink(missing_ok=True)
        self.err = tempfile.TemporaryFile()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.aw.watch_all(str(self.out), events=True),
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        armed = wait_for_file(self.out, self.proc, 60)
        if armed is None:
            self.stop()
            raise RuntimeError(f"agentwatch watch --all did not arm: {self.last_error}")
        self.armed_s.append(time.monotonic() - t0)

    @property
    def last_error(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace").strip()[-500:]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        code, cpu = _wait4(self.proc, 120)
        self.proc = None
        records, lost = count_records(self.out)
        self.out.unlink(missing_ok=True)
        self.blocks.append({"exit": code, "cpu_s": cpu, "records": records, "lost": lost})


def count_records(path: Path) -> tuple[int, int]:
    """(lines, events the kernel reported lost) of a JSON-lines output file."""
    import orjson  # noqa: PLC0415

    lines = lost_total = 0
    try:
        with path.open("rb") as f:
            for line in f:
                lines += 1
                if b'"lost"' in line:
                    rec = orjson.loads(line)
                    if rec.get("type") == "lost":
                        lost_total = max(lost_total, sum((rec.get("lost_total") or {}).values()))
    except FileNotFoundError:
        pass
    return lines, lost_total


BPFTRACE_SCRIPT = r"""
// What agentwatch reports, host-wide, one printed line per event (two per exec:
// argv at entry, result at exit); ioctls counted in the kernel like agentwatch's
// GPU counters. BEGIN runs once every probe is attached: it marks "armed".
BEGIN { system("touch %(armed)s"); }
tracepoint:sched:sched_process_fork { printf("fork %%d %%d %%s\n", args->parent_pid, args->child_pid, comm); }
tracepoint:syscalls:sys_enter_execve, tracepoint:syscalls:sys_enter_execveat { printf("exec %%d %%s %%s ", pid, comm, str(args->filename)); join(args->argv); }
tracepoint:syscalls:sys_exit_execve, tracepoint:syscalls:sys_exit_execveat { printf("exec_ret %%d %%s %%d\n", pid, comm, args->ret); }
tracepoint:sched:sched_process_exit /pid == tid/ { printf("exit %%d %%s\n", pid, comm); }
tracepoint:syscalls:sys_enter_connect {
  $sa = (struct sockaddr_in *)args->uservaddr;
  if ($sa->sin_family == 2 || $sa->sin_family == 10) { @addr[tid] = $sa->sin_addr.s_addr; @port[tid] = $sa->sin_port; }
}
tracepoint:syscalls:sys_exit_connect /@port[tid]/ {
  printf("connect %%d %%s %%s %%d %%d\n", pid, comm, ntop(@addr[tid]), @port[tid], args->ret);
  delete(@addr[tid]); delete(@port[tid]);
}
tracepoint:syscalls:sys_enter_ioctl { @ioctl[pid, args->cmd] = count(); }
END { clear(@addr); clear(@port); }
"""


class Bpftrace(Tracer):
    name = "bpftrace"
    host_wide = True
    description = "bpftrace, same tracepoints host-wide, printf to /dev/null"

    def __init__(self) -> None:
        super().__init__()
        self.exe = shutil.which("bpftrace")
        self.proc: subprocess.Popen | None = None
        if not self.exe:
            self.unavailable = "bpftrace not installed (apt-get install bpftrace)"

    def version(self) -> str:
        if not self.exe:
            return ""
        return subprocess.run([self.exe, "--version"], capture_output=True, text=True).stdout.strip()

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="awbench-bt-", dir=SHM))
        armed = self.dir / "armed"
        script = self.dir / "trace.bt"
        script.write_text(BPFTRACE_SCRIPT % {"armed": armed})
        self.err = tempfile.TemporaryFile()
        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.exe, "--unsafe", "-o", "/dev/null", str(script)],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        if wait_for_file_exists(armed, self.proc, 60) is None:
            self.err.seek(0)
            why = self.err.read().decode(errors="replace").strip()[-500:]
            self.stop()
            raise RuntimeError(f"bpftrace did not arm: {why}")
        self.armed_s.append(time.monotonic() - t0)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        code, cpu = _wait4(self.proc, 60)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        self.blocks.append({"exit": code, "cpu_s": cpu})


def wait_for_file_exists(path: Path, proc: subprocess.Popen, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists():
            return time.monotonic() - t0
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    return None


AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {log}
log_group = root
log_format = RAW
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 4096
num_logs = 2
priority_boost = 4
name_format = NONE
max_log_file_action = IGNORE
space_left = 75
space_left_action = IGNORE
admin_space_left = 50
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
use_libwrap = no
tcp_listen_queue = 5
tcp_max_per_addr = 1
tcp_client_max_idle = 0
transport = TCP
distribute_network = no
q_depth = 2000
overflow_action = IGNORE
max_restarts = 10
plugin_dir = {plugins}
end_of_event_timeout = 2
"""

AUDIT_KEY = "awbench"
AUDIT_RULES = [
    ["-a", "always,exit", "-F", "arch=b64", "-S", "execve,execveat", "-k", AUDIT_KEY],
    ["-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-k", AUDIT_KEY],
]
AUDIT_BACKLOG = 8192  # what the distribution's audit.rules sets (-b 8192); the kernel default is 64


def audit_status() -> dict[str, int]:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            status[parts[0]] = int(parts[1])
    return status


class Auditd(Tracer):
    """auditd, started here (-n, a private config and log) unless one already runs.

    The kernel's audit settings (enabled, backlog_limit) are put back as they
    were, our rules (key awbench) removed, and a daemon started here stopped.
    """

    name = "auditd"
    host_wide = True
    description = f"auditd, -S execve,execveat and -S connect rules, backlog {AUDIT_BACKLOG}, RAW log on tmpfs"

    def __init__(self) -> None:
        super().__init__()
        self.auditd = shutil.which("auditd")
        self.auditctl = shutil.which("auditctl")
        self.proc: subprocess.Popen | None = None
        if not (self.auditd and self.auditctl):
            self.unavailable = "auditd not installed (apt-get install auditd)"
        elif "enabled" not in audit_status():
            self.unavailable = "the kernel audit subsystem does not answer (auditctl -s)"
        elif audit_status().get("enabled") == 2:
            self.unavailable = "audit configuration is locked (enabled 2)"
        else:
            # Rules left by an earlier run that was killed: ours carry the key, nobody else's do.
            subprocess.run([self.auditctl, "-D", "-k", AUDIT_KEY], capture_output=True)

    def version(self) -> str:
        if not self.auditctl:
            return ""
        return subprocess.run([self.auditctl, "-v"], capture_output=True, text=True).stdout.strip()

    def start(self) -> None:
        before = audit_status()
        self.saved = {"enabled": before.get("enabled", 0), "backlog_limit": before.get("backlog_limit", 64)}
        self.dir = None
        self.lost_before = before.get("lost", 0)
        self.dir = Path(tempfile.mkdtemp(prefix="awbench-audit-", dir=SHM))
        self.log = self.dir / "audit.log"
        (self.dir / "plugins.d").mkdir()
        conf = self.dir / "auditd.conf"
        conf.write_text(AUDITD_CONF.format(log=self.log, plugins=self.dir / "plugins.d"))
        conf.chmod(0o600)
        t0 = time.monotonic()
        if before.get("pid", 0) == 0:
            self.err = tempfile.TemporaryFile()
            self.proc = subprocess.Popen([self.auditd, "-n", "-s", "enable", "-c", str(self.dir)],
                                         stdout=subprocess.DEVNULL, stderr=self.err)
            while audit_status().get("pid", 0) != self.proc.pid:
                if self.proc.poll() is not None or time.monotonic() - t0 > 30:
                    self.err.seek(0)
                    why = self.err.read().decode(errors="replace").strip()[-300:]
                    self.stop()
                    raise RuntimeError(f"auditd did not start: {why}")
                time.sleep(0.02)
        subprocess.run([self.auditctl, "-e", "1"], capture_output=True, check=True)
        subprocess.run([self.auditctl, "-b", str(AUDIT_BACKLOG)], capture_output=True, check=True)
        for rule in AUDIT_RULES:
            subprocess.run([self.auditctl, *rule], capture_output=True, check=True)
        self.armed_s.append(time.monotonic() - t0)

    def stop(self) -> None:
        """Our rules out, the daemon we started stopped, the kernel settings as they were."""
        if not hasattr(self, "saved"):
            return
        subprocess.run([self.auditctl, "-D", "-k", AUDIT_KEY], capture_output=True)
        lost = audit_status().get("lost", 0) - self.lost_before
        cpu = None
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            _, cpu = _wait4(self.proc, 30)
            self.proc = None
        subprocess.run([self.auditctl, "-e", str(self.saved["enabled"])], capture_output=True)
        subprocess.run([self.auditctl, "-b", str(self.saved["backlog_limit"])], capture_output=True)
        records = 0
        if self.dir is None:
            return
        try:
            with self.log.open("rb") as f:
                records = sum(1 for line in f if line.startswith(b"type=SYSCALL") and b'key="' + AUDIT_KEY.encode() in line)
        except FileNotFoundError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.blocks.append({"cpu_s": cpu, "records": records, "lost": lost})
