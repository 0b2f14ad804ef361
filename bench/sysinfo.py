"""Where the figures were taken: machine, kernel, versions, date, load."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def kprobes_available() -> bool:
    return any(Path(p).exists() for p in ("/sys/kernel/tracing/kprobe_events",
                                          "/sys/kernel/debug/tracing/kprobe_events",
                                          "/sys/bus/event_source/devices/kprobe"))


def collect() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    os_name = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    try:
        import bcc  # noqa: PLC0415

        bcc_version = getattr(bcc, "__version__", "?")
    except Exception:  # noqa: BLE001
        bcc_version = "not importable"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "bcc": bcc_version,
        "gcc": _first_line(["gcc", "--version"]),
        "bpftrace": _first_line(["bpftrace", "--version"]) if shutil.which("bpftrace") else "not installed",
        "auditd": _first_line(["auditctl", "-v"]) if shutil.which("auditctl") else "not installed",
        "kprobes": kprobes_available(),
        "bcc_tools": {t: bool(shutil.which(t)) for t in ("execsnoop-bpfcc", "tcpconnect-bpfcc")},
        "loadavg_start": loadavg(),
    }


def wait_quiet(max_wait: float, threshold: float, log) -> list[float]:
    """Wait (at most max_wait s) until the 1-minute load average is below threshold."""
    t0 = time.monotonic()
    while True:
        la = loadavg()
        if la[0] < threshold or time.monotonic() - t0 >= max_wait:
            return la
        log(f"waiting for a quiet machine: load {la[0]:.2f} >= {threshold}")
        time.sleep(15)
