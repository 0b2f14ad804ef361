"""cgroup v2 helpers that need no root: finding the hierarchy, paths as the kernel names them."""

from __future__ import annotations

from pathlib import Path

from tracer import cgroups


def mounts(tmp_path, text: str) -> str:
    p = tmp_path / "mounts"
    p.write_text(text)
    return str(p)


def test_v2_mount_on_a_unified_system(tmp_path):
    m = mounts(tmp_path, "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    assert cgroups.find_mount(m) == Path("/sys/fs/cgroup")


def test_v2_mount_on_a_hybrid_system(tmp_path):
    m = mounts(tmp_path, "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                         "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert cgroups.find_mount(m) == Path("/sys/fs/cgroup/unified")


def test_no_v2_and_escaped_paths(tmp_path):
    assert cgroups.find_mount(mounts(tmp_path, "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")) is None
    m = mounts(tmp_path, "cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n")
    assert cgroups.find_mount(m) == Path("/mnt/my cgroups")
    assert cgroups.find_mount(str(tmp_path / "absent")) is None


def test_kernel_paths_inside_and_outside_the_agent():
    cg = cgroups.AgentCgroup(Path("/sys/fs/cgroup/agentwatch.slice/agent-1"), Path("/sys/fs/cgroup"), owned=True)
    assert cg.relative == "/agentwatch.slice/agent-1"
    assert cg.contains("/agentwatch.slice/agent-1")
    assert cg.contains("/agentwatch.slice/agent-1/sub")
    assert not cg.contains("/")
    assert not cg.contains("/agentwatch.slice/agent-10")
    assert not cg.contains("/user.slice")
