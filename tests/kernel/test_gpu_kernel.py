"""GPU tracking through the real kernel, with the driver simulated at the syscall layer.

tests/kernel/progs/gpu_sim.c puts plain files at the device paths in a
private mount namespace and issues real ioctl(2)s with real NVIDIA, UVM,
KFD and DRM numbers and argument layouts. No driver answers (ENOTTY), but
the tracepoints see every call: the classification under test is ours.
"""

from __future__ import annotations

import subprocess

from tracer.events import read_defines

D = read_defines()


def _gpu(t, event: str) -> list[dict]:
    return [r for r in t.of_type("gpu") if r["gpu"]["event"] == event]


def _totals(t, pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in _gpu(t, "usage"):
        if r["process"]["pid"] == pid:
            for name, n in r["gpu"]["ioctls"].items():
                out[name] = out.get(name, 0) + n
    return out


def test_cuda_like_setup_is_classified(trace, progs, probes):
    probes.gpu_set_drm_driver(128, D["AW_DRM_AMDGPU"])  # what sysfs would say of renderD128
    t = trace([progs["gpu_sim"], "cuda"])
    assert t.exit_code == 0
    [pid] = {r["process"]["pid"] for r in t.of_type("gpu")}
    milestones = {r["gpu"]["milestone"]: r["gpu"] for r in _gpu(t, "milestone")}
    # Each milestone once, with what reached it first.
    assert len(_gpu(t, "milestone")) == len(milestones)
    assert set(milestones) == {"open", "memory", "channel", "compute", "submit", "debug"}
    assert milestones["open"]["class"] == "nvidiactl"
    assert milestones["memory"]["bytes"] == 1 << 30
    assert (milestones["channel"]["op"], milestones["channel"]["detail"]) == ("tsg", "0xa06c")
    assert (milestones["compute"]["op"], milestones["compute"]["detail"]) == ("compute", "0xcbc0")
    assert (milestones["submit"]["op"], milestones["submit"]["device"]) == ("schedule", "nvidia")
    assert milestones["debug"]["detail"] == "0xb2cc"  # a profiler class, reached through XFER_CMD
    assert all(r["agent"]["id"] == t.agent_id for r in t.of_type("gpu"))

    totals = _totals(t, pid)
    assert totals == {
        "nvidiactl.open": 1,
        "nvidia.open": 1,
        "nvidia-uvm.open": 1,
        "kfd.open": 1,
        "drm-render.open": 1,
        "nvidiactl.misc": 1,  # CHECK_VERSION_STR
        "nvidiactl.client": 1,
        "nvidiactl.device": 1,
        "nvidiactl.mem": 1,
        "nvidiactl.tsg": 1,
        "nvidiactl.channel": 1,
        "nvidiactl.compute": 1,
        "nvidiactl.schedule": 1,
        "nvidiactl.submit": 1,  # GET_WORK_SUBMIT_TOKEN
        "nvidiactl.control": 1,
        "nvidiactl.debug": 1,
        "nvidiactl.other": 1,  # GT200_DEBUGGER: every CUDA context has one
        "nvidia.other": 1,  # an OS event object on the GPU node
        "nvidia-uvm.uvm_init": 1,
        "nvidia-uvm.channel": 1,
        "kfd.compute": 1,
        "drm-render.compute": 1,
        "drm-render.submit": 1,
    }
    mem = sum(r["gpu"]["mem_bytes"] for r in _gpu(t, "usage"))
    assert mem == 1 << 30


def test_million_ioctls_make_no_event_each_and_exact_totals(trace, progs):
    n = 1_000_000
    t = trace([progs["gpu_sim"], "storm", str(n)])
    assert t.exit_code == 0
    pid = t.execs()[0]["process"]["pid"]
    assert _totals(t, pid) == {"nvidiactl.open": 1, "nvidiactl.control": n}
    # Nothing per ioctl: one milestone (the open) and a usage record a second at most.
    assert [r["gpu"]["milestone"] for r in _gpu(t, "milestone")] == ["open"]
    assert len(t.events) < 50
    assert not [r for r in t.records if r.get("type") == "lost"]


def test_dup_fcntl_close_and_fork_inheritance(trace, progs):
    t = trace([progs["gpu_sim"], "fork"])
    assert t.exit_code == 0
    parent = t.execs()[0]["process"]["pid"]
    [fork] = t.of_type("fork")
    child = fork["child"]["pid"]
    # dup and F_DUPFD_CLOEXEC copies count; the closed original does not.
    assert _totals(t, parent) == {"nvidiactl.open": 1, "nvidiactl.control": 2}
    assert _totals(t, child) == {"nvidiactl.compute": 1}
    [compute] = [r for r in _gpu(t, "milestone") if r["gpu"]["milestone"] == "compute"]
    assert compute["process"]["pid"] == child and compute["agent"]["id"] == t.agent_id


def test_gpu_numbers_on_a_file_that_is_no_gpu_are_ignored(trace, progs, probes):
    t = trace([progs["gpu_sim"], "plain"])
    assert t.exit_code == 0
    assert t.of_type("gpu") == []
    pid = t.execs()[0]["process"]["pid"]
    assert not [k for k in probes.gpu_counts() if k[0] == pid]


def test_a_gpu_fd_number_reused_without_close_is_no_gpu(trace, progs, probes):
    # The GPU fd goes by close_range(2), which no probe sees; a read-only open of a plain
    # file then gets its number: the open's exit must drop the old class.
    t = trace([progs["gpu_sim"], "reuse"])
    assert t.exit_code == 0
    pid = t.execs()[0]["process"]["pid"]
    assert _totals(t, pid) == {"nvidiactl.open": 1, "nvidiactl.control": 1}


def test_unwatched_processes_are_not_counted(progs, probes):
    outside = subprocess.Popen([progs["gpu_sim"], "storm", "1237"], stdout=subprocess.DEVNULL)
    assert outside.wait() == 0
    assert not [k for k in probes.gpu_counts() if k[0] == outside.pid]
    assert probes.gpu_fds(outside.pid) == {}  # its open of /dev/nvidiactl was not recorded either
