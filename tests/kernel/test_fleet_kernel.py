"""bpf/cgroup.bpf.c through the real kernel: cgroups made and removed, and sandboxes attributed at birth.

Each test makes its own cgroups under a slice of its own in the v2 hierarchy
(found in /proc/mounts) and removes them, also when it fails.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tracer import cgroups, events
from tracer.fleet import kernel_agent_id
from tracer.probes import ProbeConfig, ProbeError, Probes


@pytest.fixture(scope="module")
def fleet_probes():
    try:
        p = Probes(ProbeConfig(self_tgid=os.getpid(), cgroups=True, fleet=True, cgroups_max=256))
    except ProbeError as exc:
        pytest.fail(f"fleet probes do not load: {exc}")
    yield p
    p.close()


@pytest.fixture
def slice_(fleet_probes):
    mount = cgroups.require_mount()
    top = mount / f"aw-kt-{uuid.uuid4().hex[:8]}.slice"
    top.mkdir()
    fleet_probes.poll(0)  # drop what came before
    yield top
    for pid in cgroups.procs_recursive(top):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    cgroups.wait_empty(top)
    cgroups.remove(top)


def run_in(cgroup: Path, *argv: str) -> int:
    """Run argv as a process that moves itself into cgroup first, and wait for it."""
    proc = subprocess.run(["/bin/sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *argv],
                          capture_output=True, timeout=10, check=True)
    return proc


def records(fleet_probes, wait: float = 0.3) -> list[events.Event]:
    time.sleep(wait)
    return [events.decode(r) for r in fleet_probes.poll(0)]


def test_mkdir_under_a_watched_parent_is_attributed_before_userland_looks(fleet_probes, slice_):
    fleet_probes.watch_cgroup_children(cgroups.cgroup_id(slice_))
    sb = slice_ / "sb-1"
    sb.mkdir()
    sb_id = cgroups.cgroup_id(sb)
    run_in(sb, "/bin/echo", "first-exec-in-sandbox")
    evs = records(fleet_probes)
    mk = [e for e in evs if isinstance(e, events.CgroupEvent) and e.cgroup_id == sb_id]
    assert len(mk) == 1 and mk[0].op == events.CGROUP_MKDIR and mk[0].attributed
    assert mk[0].path == "/" + str(sb.relative_to(cgroups.require_mount()))
    assert mk[0].parent_id == cgroups.cgroup_id(slice_) and mk[0].level == len(mk[0].path.strip("/").split("/"))
    execs = [e for e in evs if isinstance(e, events.ExecEvent) and b"first-exec-in-sandbox" in e.argv]
    assert len(execs) == 1 and execs[0].agent_id == kernel_agent_id(sb_id)


def test_a_sub_cgroup_of_a_sandbox_is_the_sandbox_and_rmdir_is_reported(fleet_probes, slice_):
    fleet_probes.watch_cgroup_children(cgroups.cgroup_id(slice_))
    sb = slice_ / "sb-2"
    sb.mkdir()
    sb_id = cgroups.cgroup_id(sb)
    inner = sb / "inner"
    inner.mkdir()
    run_in(inner, "/bin/echo", "exec-in-sub-cgroup")
    evs = records(fleet_probes)
    inner_mk = [e for e in evs if isinstance(e, events.CgroupEvent) and e.cgroup_id == cgroups.cgroup_id(inner)]
    assert len(inner_mk) == 1 and not inner_mk[0].attributed  # its parent is a sandbox, not a watched parent
    execs = [e for e in evs if isinstance(e, events.ExecEvent) and b"exec-in-sub-cgroup" in e.argv]
    assert [e.agent_id for e in execs] == [kernel_agent_id(sb_id)]  # the kernel climbed to the sandbox
    inner.rmdir()
    sb.rmdir()
    evs = records(fleet_probes)
    rm = [(e.cgroup_id, e.op) for e in evs if isinstance(e, events.CgroupEvent)]
    assert (sb_id, events.CGROUP_RMDIR) in rm
    cg_map = fleet_probes._bpf[b"aw_cgroups"]
    assert not [k for k in cg_map.keys() if k.value == sb_id]  # the kernel dropped it at rmdir


def test_an_unwatched_parent_s_children_are_reported_but_not_attributed(fleet_probes, slice_):
    other = slice_ / "elsewhere"
    other.mkdir()
    run_in(other, "/bin/echo", "not-in-any-sandbox")
    evs = records(fleet_probes)
    mk = [e for e in evs if isinstance(e, events.CgroupEvent) and e.cgroup_id == cgroups.cgroup_id(other)]
    assert len(mk) == 1 and not mk[0].attributed
    assert not [e for e in evs if isinstance(e, events.ExecEvent) and b"not-in-any-sandbox" in e.argv]


def test_v1_hierarchies_are_not_reported(fleet_probes):
    v1 = Path("/sys/fs/cgroup/pids")
    if not (v1 / "cgroup.procs").exists() or cgroups.require_mount() == Path("/sys/fs/cgroup"):
        pytest.skip("no cgroup v1 pids hierarchy on this machine (a pure v2 host): nothing to tell apart")
    d = v1 / f"aw-kt-v1-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    try:
        evs = records(fleet_probes, 0.1)
    finally:
        d.rmdir()
    assert not [e for e in evs if isinstance(e, events.CgroupEvent) and d.name in e.path]


def test_a_process_found_outside_joins_when_its_cgroup_is_watched_later(fleet_probes, slice_):
    """The kernel caches "this cgroup is in no agent" (bpf/common.h aw_outside); watch_cgroup
    must void that answer for a process already running there, not only for new ones."""
    cg = slice_ / "late"
    cg.mkdir()
    cg_id = cgroups.cgroup_id(cg)
    script = f'echo $$ > "{cg}/cgroup.procs" && /bin/echo before-watch && read line && exec /bin/echo after-watch'
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"before-watch\n"
        outside = fleet_probes._bpf[b"aw_outside"]
        assert [k.value for k in outside.keys() if k.value == cg_id] == [cg_id]  # answered, and cached
        agent = kernel_agent_id(cg_id)
        fleet_probes.watch_cgroup(cg_id, agent)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"after-watch\n"
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fleet_probes.unwatch_cgroup(cg_id)
    execs = {e.argv[1]: e.agent_id for e in records(fleet_probes)
             if isinstance(e, events.ExecEvent) and len(e.argv) > 1 and e.argv[1].endswith(b"-watch")}
    assert execs.get(b"after-watch") == agent
    assert b"before-watch" not in execs  # it was outside then: no record
