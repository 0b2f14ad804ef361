"""GPU use by process: device classes, the fd resolver, counters into records, NVML.

The kernel side (bpf/gpu.bpf.c) counts ioctls per (process, device class,
operation) and reports milestones. This module names those numbers, turns
the cumulative per-CPU counters into per-second `gpu` records, resolves fds
the kernel did not see opened, and adds NVML's per-process utilisation when
the NVIDIA management library is installed. No BCC here.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .events import read_defines

_D = read_defines()


def _names(prefix: str) -> dict[int, str]:
    return {v: k[len(prefix) :].lower() for k, v in _D.items() if k.startswith(prefix)}


CLASS_NAMES = {
    _D["AW_GPU_CLASS_NV_CTL"]: "nvidiactl",
    _D["AW_GPU_CLASS_NV_GPU"]: "nvidia",
    _D["AW_GPU_CLASS_NV_UVM"]: "nvidia-uvm",
    _D["AW_GPU_CLASS_NV_UVM_TOOLS"]: "nvidia-uvm-tools",
    _D["AW_GPU_CLASS_NV_MODESET"]: "nvidia-modeset",
    _D["AW_GPU_CLASS_NV_CAPS"]: "nvidia-caps",
    _D["AW_GPU_CLASS_KFD"]: "kfd",
    _D["AW_GPU_CLASS_DRM_RENDER"]: "drm-render",
    _D["AW_GPU_CLASS_DRM_CARD"]: "drm-card",
    _D["AW_GPU_CLASS_ACCEL"]: "accel",
}
VENDOR_OF_CLASS = {
    **{c: "nvidia" for c in range(_D["AW_GPU_CLASS_NV_CTL"], _D["AW_GPU_CLASS_NV_CAPS"] + 1)},
    _D["AW_GPU_CLASS_KFD"]: "amd",
    _D["AW_GPU_CLASS_DRM_RENDER"]: "drm",
    _D["AW_GPU_CLASS_DRM_CARD"]: "drm",
    _D["AW_GPU_CLASS_ACCEL"]: "accel",
}
OP_NAMES = _names("AW_GPU_OP_")
MILESTONE_NAMES = _names("AW_GPU_MS_")
KIND_MILESTONE = _D["AW_GPU_KIND_MILESTONE"]
KIND_RESOLVE = _D["AW_GPU_KIND_RESOLVE"]
OP_MEM_BYTES = _D["AW_GPU_OP_MEM_BYTES"]
DRM_DRIVERS = {"amdgpu": _D["AW_DRM_AMDGPU"], "i915": _D["AW_DRM_I915"], "xe": _D["AW_DRM_XE"]}

NVIDIA_MAJOR = 195  # nv-chardev-numbers.h; the others are dynamic (/proc/devices)
DRM_MAJOR = 226
ACCEL_MAJOR = 261  # include/drm/drm_accel.h


def milestone_of_bit(bit: int) -> str:
    return MILESTONE_NAMES.get(bit, str(bit))


def classify_path(path: str) -> int:
    """Device class of a path, as bpf/gpu.bpf.c decides it at open (0: not a GPU)."""
    if path == "/dev/nvidiactl":
        return _D["AW_GPU_CLASS_NV_CTL"]
    if re.fullmatch(r"/dev/nvidia\d+", path):
        return _D["AW_GPU_CLASS_NV_GPU"]
    if path == "/dev/nvidia-uvm":
        return _D["AW_GPU_CLASS_NV_UVM"]
    if path == "/dev/nvidia-uvm-tools":
        return _D["AW_GPU_CLASS_NV_UVM_TOOLS"]
    if path == "/dev/nvidia-modeset":
        return _D["AW_GPU_CLASS_NV_MODESET"]
    if path.startswith("/dev/nvidia-caps"):
        return _D["AW_GPU_CLASS_NV_CAPS"]
    if path == "/dev/kfd":
        return _D["AW_GPU_CLASS_KFD"]
    m = re.fullmatch(r"/dev/dri/renderD(\d+)", path)
    if m:
        return _D["AW_GPU_CLASS_DRM_RENDER"] | int(m.group(1)) << 8
    m = re.fullmatch(r"/dev/dri/card(\d+)", path)
    if m:
        return _D["AW_GPU_CLASS_DRM_CARD"] | int(m.group(1)) << 8
    if path.startswith("/dev/accel/"):
        return _D["AW_GPU_CLASS_ACCEL"]
    m = re.fullmatch(r"/dev/char/195:(\d+)", path)
    if m:
        minor = int(m.group(1))
        return _D["AW_GPU_CLASS_NV_CTL" if minor == 255 else "AW_GPU_CLASS_NV_MODESET" if minor == 254 else "AW_GPU_CLASS_NV_GPU"]
    return 0


def device_majors(proc_devices: Path = Path("/proc/devices")) -> dict[str, int]:
    """Character device majors by driver name; nvidia-uvm, nvidia-caps and kfd are dynamic."""
    majors: dict[str, int] = {}
    try:
        text = proc_devices.read_text()
    except OSError:
        return majors
    block = text.split("Block devices:")[0]
    for line in block.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            majors.setdefault(parts[1], int(parts[0]))
    return majors


def classify_rdev(rdev: int, majors: dict[str, int]) -> int:
    """Device class of a character device number (userland st_rdev)."""
    major, minor = os.major(rdev), os.minor(rdev)
    if major == NVIDIA_MAJOR:
        if minor == 255:
            return _D["AW_GPU_CLASS_NV_CTL"]
        return _D["AW_GPU_CLASS_NV_MODESET" if minor == 254 else "AW_GPU_CLASS_NV_GPU"]
    if major == majors.get("nvidia-uvm"):
        return _D["AW_GPU_CLASS_NV_UVM_TOOLS" if minor == 1 else "AW_GPU_CLASS_NV_UVM"]
    if major == majors.get("nvidia-caps"):
        return _D["AW_GPU_CLASS_NV_CAPS"]
    if major == majors.get("kfd"):
        return _D["AW_GPU_CLASS_KFD"]
    if major == DRM_MAJOR:
        return _D["AW_GPU_CLASS_DRM_RENDER" if minor >= 128 else "AW_GPU_CLASS_DRM_CARD"] | minor << 8
    if major == ACCEL_MAJOR:
        return _D["AW_GPU_CLASS_ACCEL"]
    return 0


def resolve_fd(pid: int, fd: int, majors: dict[str, int], proc: Path = Path("/proc")) -> int:
    """The class of an fd the kernel did not see opened (SCM_RIGHTS, openat by dirfd, ...)."""
    link = proc / str(pid) / "fd" / str(fd)
    try:
        st = os.stat(link)
    except OSError:
        return 0
    if stat.S_ISCHR(st.st_mode):
        cls = classify_rdev(st.st_rdev, majors)
        if cls:
            return cls
    try:
        return classify_path(os.readlink(link))
    except OSError:
        return 0


def drm_drivers(sys_drm: Path = Path("/sys/class/drm")) -> dict[int, int]:
    """DRM minor -> AW_DRM_* from sysfs, for the drivers whose ioctls we decode."""
    out: dict[int, int] = {}
    try:
        entries = list(sys_drm.iterdir())
    except OSError:
        return out
    for entry in entries:
        m = re.fullmatch(r"(?:renderD|card)(\d+)", entry.name)
        if not m:
            continue
        try:
            driver = os.path.basename(os.readlink(entry / "device" / "driver"))
        except OSError:
            continue
        if driver in DRM_DRIVERS:
            out[int(m.group(1))] = DRM_DRIVERS[driver]
    return out


def counter_name(devclass: int, op: int) -> str:
    return f"{CLASS_NAMES.get(devclass, str(devclass))}.{OP_NAMES.get(op, str(op))}"


@dataclass
class GpuUsage:
    """One process's GPU activity in one window, ready for a record."""

    pid: int
    ioctls: dict[str, int] = field(default_factory=dict)  # "nvidiactl.compute": n
    mem_bytes: int = 0
    nvml: dict | None = None

    def as_json(self, window_s: float, totals: dict[str, int]) -> dict:
        ops: dict[str, int] = {}
        for name, n in self.ioctls.items():
            op = name.split(".", 1)[1]
            ops[op] = ops.get(op, 0) + n
        return {
            "event": "usage",
            "window_s": round(window_s, 3),
            "ioctls": dict(sorted(self.ioctls.items())),
            "ops": dict(sorted(ops.items())),
            "ioctl_count": sum(self.ioctls.values()),
            "mem_bytes": self.mem_bytes,
            "total_ioctls": sum(totals.values()),
            "nvml": self.nvml,
        }


class GpuCounters:
    """Cumulative kernel counters -> what changed since the last drain, per process."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, int, int, int], int] = {}
        self._totals: dict[int, dict[str, int]] = {}
        self._held: set[tuple[int, int, int, int]] = set()  # counted, not yet reportable

    def delta(
        self, counts: dict[tuple[int, int, int, int], int], ready: Callable[[int], bool] | None = None
    ) -> dict[int, GpuUsage]:
        """counts: (tgid, devclass, op, detail) -> cumulative value, summed over CPUs.

        ready(tgid) False holds that process's change back for a later call:
        the counters are read at any moment, and a child's ioctls can be in
        the map before its fork event has reached the process table. Taking
        the change then would drop it for good.
        """
        out: dict[int, GpuUsage] = {}
        for key, value in counts.items():
            change = value - self._last.get(key, 0)
            if change <= 0:
                continue
            tgid, devclass, op, _detail = key
            if ready is not None and not ready(tgid):
                self._held.add(key)
                continue
            self._held.discard(key)
            self._last[key] = value
            usage = out.setdefault(tgid, GpuUsage(tgid))
            if op == OP_MEM_BYTES:
                usage.mem_bytes += change
                continue
            name = counter_name(devclass, op)
            usage.ioctls[name] = usage.ioctls.get(name, 0) + change
            totals = self._totals.setdefault(tgid, {})
            totals[name] = totals.get(name, 0) + change
        return out

    def totals(self, tgid: int) -> dict[str, int]:
        return self._totals.get(tgid, {})

    def pending(self, tgid: int) -> bool:
        """Whether changes of this process are held back (see delta)."""
        return any(k[0] == tgid for k in self._held)

    def forget(self, tgid: int) -> list[tuple[int, int, int, int]]:
        """Drop a gone process; returns its kernel keys so the caller deletes them."""
        keys = [k for k in self._last if k[0] == tgid]
        for k in keys:
            del self._last[k]
        held = [k for k in self._held if k[0] == tgid]
        self._held.difference_update(held)
        self._totals.pop(tgid, None)
        return keys + held


class NvmlSampler:
    """Per-process SM utilisation and memory from NVML, when nvidia-ml-py is installed."""

    def __init__(self, interval_s: float = 3.0):
        self.interval_s = interval_s
        self.available = False
        self.reason = ""
        self._nvml = None
        self._handles = []
        self._last_ts: dict[int, int] = {}
        self._next = 0.0
        self.samples: dict[int, dict] = {}
        try:
            import pynvml  # noqa: PLC0415  (optional: the `nvml` extra)

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
            self.available = True
        except ImportError:
            self.reason = "nvidia-ml-py is not installed (pip install 'agentwatch[nvml]')"
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            self.reason = f"NVML unavailable: {exc}"

    def poll(self, now: float | None = None) -> dict[int, dict] | None:
        """Fresh per-pid samples when the interval has passed, else None."""
        if not self.available:
            return None
        now = time.monotonic() if now is None else now
        if now < self._next:
            return None
        self._next = now + self.interval_s
        nv = self._nvml
        samples: dict[int, dict] = {}
        for index, handle in enumerate(self._handles):
            try:
                for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    s = samples.setdefault(p.pid, {"gpus": [], "sm_util": 0, "mem_util": 0, "mem_bytes": 0})
                    s["gpus"].append(index)
                    s["mem_bytes"] += p.usedGpuMemory or 0
            except nv.NVMLError:
                pass
            try:
                for u in nv.nvmlDeviceGetProcessUtilization(handle, self._last_ts.get(index, 0)):
                    s = samples.setdefault(u.pid, {"gpus": [index], "sm_util": 0, "mem_util": 0, "mem_bytes": 0})
                    s["sm_util"] = max(s["sm_util"], u.smUtil)
                    s["mem_util"] = max(s["mem_util"], u.memUtil)
                    self._last_ts[index] = max(self._last_ts.get(index, 0), u.timeStamp)
            except nv.NVMLError:
                pass  # NOT_FOUND when no process used the GPU since the last sample
        self.samples = samples
        return samples


def nvidia_present(proc_driver: Path = Path("/proc/driver/nvidia"), dev: Path = Path("/dev/nvidiactl")) -> bool:
    return proc_driver.exists() or dev.exists()


class GpuMonitor:
    """The userland half of GPU tracking: resolver, counter drains, NVML samples.

    `probes` needs gpu_counts, gpu_forget, gpu_set_fd, gpu_fds, gpu_drop_fd
    and gpu_set_drm_driver (tracer.probes.Probes has them).
    """

    def __init__(self, probes, nvml: NvmlSampler | None = None, majors: dict[str, int] | None = None):
        self.probes = probes
        self.counters = GpuCounters()
        self.nvml = nvml if nvml is not None else NvmlSampler()
        self.majors = majors if majors is not None else device_majors()
        self.active: set[int] = set()  # tgids with GPU fds or counters
        self._last_tick = time.monotonic()
        for minor, driver in drm_drivers().items():
            probes.gpu_set_drm_driver(minor, driver)

    def resolve(self, pid: int, fd: int) -> int:
        """Classify an fd the kernel met first in an ioctl; tell the kernel if it is a GPU."""
        cls = resolve_fd(pid, fd, self.majors)
        if cls:
            self.probes.gpu_set_fd(pid, fd, cls)
            self.active.add(pid)
        return cls

    def after_exec(self, pid: int) -> None:
        """A new image: fds that were closed on exec are no GPU fds any more."""
        if pid not in self.active:
            return
        for fd in self.probes.gpu_fds(pid):
            if not resolve_fd(pid, fd, self.majors):
                self.probes.gpu_drop_fd(pid, fd)

    def tick(self, ready: Callable[[int], bool] | None = None) -> tuple[float, dict[int, GpuUsage]]:
        """What changed since the last tick, per process, with NVML samples attached.

        ready: see GpuCounters.delta.
        """
        now = time.monotonic()
        window, self._last_tick = now - self._last_tick, now
        usage = self.counters.delta(self.probes.gpu_counts(), ready)
        self.active.update(usage)
        samples = self.nvml.poll(now)
        if samples:
            for pid, sample in samples.items():
                usage.setdefault(pid, GpuUsage(pid)).nvml = sample
        return window, usage

    def forget(self, pid: int) -> None:
        """A process is gone: drop its kernel counters and fd classes."""
        if pid in self.active or self.counters.pending(pid):
            self.probes.gpu_forget(pid, self.counters.forget(pid))
            self.active.discard(pid)
