"""What a process costs, read from /proc while it runs.

Sampler follows one pid in a thread: CPU seconds (utime + stime of the
process itself, not its children), RSS high-water mark (VmHWM) and the peak
of Private_Dirty and Rss from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import os
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in bytes (empty once the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        pass
    return out


def status_field(pid: int, name: str) -> int | None:
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sampler:
    """Samples one process every `interval` seconds until stopped or gone."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.peak_private_dirty = 0
        self.peak_rss = 0
        self.vm_hwm = 0
        self.cpu = 0.0
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, rss, private_dirty)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False
        return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")

    def sample(self) -> bool:
        roll = smaps_rollup(self.pid)
        if not roll:
            return self.alive()
        rss, dirty = roll.get("Rss", 0), roll.get("Private_Dirty", 0)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_private_dirty = max(self.peak_private_dirty, dirty)
        self.samples.append((time.monotonic(), rss, dirty))
        hwm = status_field(self.pid, "VmHWM")
        if hwm:
            self.vm_hwm = max(self.vm_hwm, hwm)
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.cpu = cpu
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.sample():
                return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def private_dirty_since(self, t: float) -> int:
        """Peak Private_Dirty among samples taken at or after monotonic time t."""
        return max((d for ts, _, d in self.samples if ts >= t), default=0)


def bpf_fdinfo(pid: int, kind: str, field: str) -> list[int] | None:
    """`field` of every BPF object of `kind` (map, prog) that pid holds open, from fdinfo;
    None when its fds cannot be read."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    values = []
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != f"anon_inode:bpf-{kind}":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                values += [int(line.split()[1]) for line in f if line.startswith(f"{field}:")]
        except OSError:
            continue
    return values


def bpf_map_memlock(pid: int) -> int | None:
    """Kernel memory charged to the BPF maps (ring buffer included) that pid holds open."""
    values = bpf_fdinfo(pid, "map", "memlock")
    return sum(values) if values else None
