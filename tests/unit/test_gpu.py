"""GPU bookkeeping without a GPU: path and device classes, counters, the fd resolver, NVML absence."""

from __future__ import annotations

import os

import pytest

from tracer import gpu
from tracer.events import read_defines

D = read_defines()


@pytest.mark.parametrize(
    "path,cls",
    [
        ("/dev/nvidiactl", "NV_CTL"),
        ("/dev/nvidia0", "NV_GPU"),
        ("/dev/nvidia17", "NV_GPU"),
        ("/dev/nvidia-uvm", "NV_UVM"),
        ("/dev/nvidia-uvm-tools", "NV_UVM_TOOLS"),
        ("/dev/nvidia-modeset", "NV_MODESET"),
        ("/dev/nvidia-caps/nvidia-cap1", "NV_CAPS"),
        ("/dev/kfd", "KFD"),
        ("/dev/accel/accel0", "ACCEL"),
        ("/dev/char/195:255", "NV_CTL"),
        ("/dev/char/195:254", "NV_MODESET"),
        ("/dev/char/195:3", "NV_GPU"),
    ],
)
def test_classify_path(path, cls):
    assert gpu.classify_path(path) == D[f"AW_GPU_CLASS_{cls}"]


def test_classify_path_drm_keeps_the_minor():
    assert gpu.classify_path("/dev/dri/renderD129") == D["AW_GPU_CLASS_DRM_RENDER"] | 129 << 8
    assert gpu.classify_path("/dev/dri/card1") == D["AW_GPU_CLASS_DRM_CARD"] | 1 << 8


@pytest.mark.parametrize("path", ["/dev/null", "/dev/nvidiactlx", "/dev/nvidia", "/dev/kfd2", "/tmp/nvidia0", ""])
def test_not_gpu_paths(path):
    assert gpu.classify_path(path) == 0


def test_device_majors_reads_character_devices_only(tmp_path):
    f = tmp_path / "devices"
    f.write_text("Character devices:\n  1 mem\n195 nvidia\n195 nvidiactl\n238 nvidia-uvm\n241 nvidia-caps\n"
                 "510 kfd\n\nBlock devices:\n  8 sd\n238 weird\n")
    assert gpu.device_majors(f) == {"mem": 1, "nvidia": 195, "nvidiactl": 195, "nvidia-uvm": 238,
                                    "nvidia-caps": 241, "kfd": 510}


def test_classify_rdev_with_dynamic_majors():
    majors = {"nvidia-uvm": 238, "nvidia-caps": 241, "kfd": 510}
    assert gpu.classify_rdev(os.makedev(195, 255), majors) == D["AW_GPU_CLASS_NV_CTL"]
    assert gpu.classify_rdev(os.makedev(195, 0), majors) == D["AW_GPU_CLASS_NV_GPU"]
    assert gpu.classify_rdev(os.makedev(238, 0), majors) == D["AW_GPU_CLASS_NV_UVM"]
    assert gpu.classify_rdev(os.makedev(238, 1), majors) == D["AW_GPU_CLASS_NV_UVM_TOOLS"]
    assert gpu.classify_rdev(os.makedev(510, 0), majors) == D["AW_GPU_CLASS_KFD"]
    assert gpu.classify_rdev(os.makedev(226, 128), majors) == D["AW_GPU_CLASS_DRM_RENDER"] | 128 << 8
    assert gpu.classify_rdev(os.makedev(1, 3), majors) == 0  # /dev/null


def test_resolve_fd_of_a_plain_file_is_not_gpu(tmp_path):
    with open(tmp_path / "nvidia0", "w") as f:
        assert gpu.resolve_fd(os.getpid(), f.fileno(), {}) == 0
    assert gpu.resolve_fd(os.getpid(), 99999, {}) == 0  # no such fd


def test_resolve_fd_goes_by_device_number():
    # /dev/null is character major 1: no GPU, until /proc/devices (faked) says kfd is major 1.
    with open("/dev/null") as f:
        assert gpu.resolve_fd(os.getpid(), f.fileno(), {}) == 0
        assert gpu.resolve_fd(os.getpid(), f.fileno(), {"kfd": 1}) == D["AW_GPU_CLASS_KFD"]


def test_drm_drivers_from_sysfs(tmp_path):
    for name, driver in (("renderD128", "amdgpu"), ("card0", "i915"), ("renderD129", "nouveau")):
        dev = tmp_path / "drivers" / driver
        dev.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "device").mkdir(parents=True)
        os.symlink(dev, tmp_path / name / "device" / "driver")
    (tmp_path / "version").write_text("x")
    assert gpu.drm_drivers(tmp_path) == {128: D["AW_DRM_AMDGPU"], 0: D["AW_DRM_I915"]}


def test_counters_report_changes_only_and_keep_totals():
    c = gpu.GpuCounters()
    ctl, alloc = D["AW_GPU_CLASS_NV_CTL"], D["AW_GPU_OP_COMPUTE"]
    control, mem_bytes = D["AW_GPU_OP_CONTROL"], D["AW_GPU_OP_MEM_BYTES"]
    first = c.delta({(10, ctl, alloc, 0xCBC0): 1, (10, ctl, control, 0x2080): 5, (10, ctl, mem_bytes, 0): 4096})
    assert first[10].ioctls == {"nvidiactl.compute": 1, "nvidiactl.control": 5}
    assert first[10].mem_bytes == 4096
    second = c.delta({(10, ctl, alloc, 0xCBC0): 1, (10, ctl, control, 0x2080): 8, (10, ctl, mem_bytes, 0): 4096})
    assert second[10].ioctls == {"nvidiactl.control": 3} and second[10].mem_bytes == 0
    assert c.delta({(10, ctl, alloc, 0xCBC0): 1, (10, ctl, control, 0x2080): 8}) == {}
    assert c.totals(10) == {"nvidiactl.compute": 1, "nvidiactl.control": 8}
    usage = second[10].as_json(1.0, c.totals(10))
    assert usage["ops"] == {"control": 3} and usage["ioctl_count"] == 3 and usage["total_ioctls"] == 9
    assert sorted(c.forget(10)) == sorted([(10, ctl, alloc, 0xCBC0), (10, ctl, control, 0x2080), (10, ctl, mem_bytes, 0)])
    assert c.totals(10) == {}


def test_counters_hold_back_a_process_not_yet_reportable():
    # A forked child's ioctls can be in the kernel map before its fork event is
    # handled: its change must wait, not be taken and dropped (a CI failure).
    c = gpu.GpuCounters()
    ctl, compute = D["AW_GPU_CLASS_NV_CTL"], D["AW_GPU_OP_COMPUTE"]
    counts = {(10, ctl, compute, 0xCBC0): 2, (11, ctl, compute, 0xCBC0): 1}
    known = {10}
    first = c.delta(counts, ready=known.__contains__)
    assert set(first) == {10} and c.pending(11) and not c.pending(10)
    known.add(11)
    second = c.delta(counts, ready=known.__contains__)
    assert set(second) == {11} and second[11].ioctls == {"nvidiactl.compute": 1}
    assert not c.pending(11)
    # A process that never became reportable still has its kernel keys deleted.
    c.delta({(12, ctl, compute, 0xCBC0): 1}, ready=known.__contains__)
    assert c.forget(12) == [(12, ctl, compute, 0xCBC0)] and not c.pending(12)


def test_milestone_names_come_from_the_header():
    assert gpu.milestone_of_bit(D["AW_GPU_MS_COMPUTE"]) == "compute"
    assert gpu.OP_NAMES[D["AW_GPU_OP_SUBMIT"]] == "submit"


def test_nvml_absence_is_said_not_raised(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *a, **k):
        if name == "pynvml":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    s = gpu.NvmlSampler()
    assert not s.available and "nvidia-ml-py" in s.reason
    assert s.poll() is None
