"""Rule actions: which processes an alert's action names, and what is recorded in the alert."""

from __future__ import annotations

import os
import time

import pytest

from tracer import actions
from tracer.actions import Actor, record_ktime_ns, select
from tracer.records import Clock


CLOCK = Clock()


def alert(action: str, pid: int = 4242, key: str = "4242:0", agent: str | None = "agent-a") -> dict:
    """An alert whose record the kernel saw 10 ms ago."""
    return {
        "kind": "alert", "rule": "r", "action": action,
        "time": CLOCK.rfc3339(time.monotonic_ns() - 10_000_000), "process": {"pid": pid, "key": key},
        "agent": {"id": agent, "root_pid": 100, "labels": {}} if agent else None,
    }


class FakeCgroup:
    def __init__(self, pids):
        self.pids = list(pids)
        self.killed = []

    def procs(self):
        return list(self.pids)

    def kill_all(self, protected=None):
        out = [p for p in self.pids if p not in (protected or set())]
        self.killed += out
        self.pids = []
        return out


def actor(members=None, cgroup=None, dry_run=False):
    killed = []
    table = {1: list(members or [])}

    def kill(pid, start):
        if pid == 9999:
            raise ProcessLookupError(pid)
        killed.append(pid)
        if pid in table[1]:
            table[1].remove(pid)

    a = Actor(members=lambda kid: list(table.get(kid, [])), agent_cgroup=lambda kid: cgroup,
              kernel_id=lambda aid: 1 if aid == "agent-a" else None, clock_offset_ns=CLOCK.offset_ns,
              dry_run=dry_run, kill=kill)
    return a, killed


@pytest.mark.parametrize("action, expected", [
    ("none", ("none", [])),
    ("kill_process", ("kill_process", [4242])),
    ("kill_agent", ("kill_agent", [100])),
    ("launch_missiles", ("none", [])),
])
def test_select(action, expected):
    assert select(alert(action)) == expected


def test_kill_process_records_result_targets_and_latency():
    a, killed = actor()
    out = a.act(alert("kill_process"))
    assert killed == [4242]
    assert out["action_result"] == "killed" and out["action_targets"] == [4242]
    assert 0.01 <= out["action_latency_s"] < 5
    assert a.taken == [("r", "kill_process", "killed")]


def test_dry_run_kills_nothing():
    a, killed = actor(members=[5, 6], cgroup=FakeCgroup([6, 7]), dry_run=True)
    assert a.act(alert("kill_process"))["action_result"] == "dry_run" and killed == []
    out = a.act(alert("kill_agent"))
    assert out["action_result"] == "dry_run" and out["action_targets"] == [5, 6, 7] and killed == []


def test_kill_agent_takes_the_kernels_members_and_the_cgroup():
    cg = FakeCgroup([6, 7])
    a, killed = actor(members=[5, 6], cgroup=cg)
    out = a.act(alert("kill_agent"))
    assert out["action_result"] == "killed" and out["action_targets"] == [5, 6, 7]
    assert cg.killed == [6, 7] and killed == [5]


def test_agentwatch_its_parent_and_init_are_never_killed():
    a, killed = actor(members=[os.getpid(), os.getppid(), 1, 55])
    assert a.act(alert("kill_process", pid=os.getpid()))["action_result"] == "refused"
    assert a.act(alert("kill_process", pid=os.getppid()))["action_result"] == "refused"
    assert a.act(alert("kill_process", pid=1))["action_result"] == "refused"
    out = a.act(alert("kill_agent"))
    assert out["action_targets"] == [55] and killed == [55]


def test_gone_and_no_agent():
    a, _ = actor()
    assert a.act(alert("kill_process", pid=9999))["action_result"] == "gone"
    assert a.act(alert("kill_agent", agent=None))["action_result"] == "no_agent"
    assert a.act(alert("kill_agent"))["action_result"] == "gone"  # an agent with nothing left


def test_record_time_goes_back_to_the_kernel_clock_exactly():
    clock = Clock()
    for ktime in (0, 1, 123_456_789_012, 98_765_432_100_000):
        assert record_ktime_ns({"time": clock.rfc3339(ktime)}, clock.offset_ns) == ktime
    assert record_ktime_ns({"time": "yesterday"}, clock.offset_ns) is None


def test_a_reused_pid_is_not_killed():
    """The real kill checks the start time in the alert's key against /proc before signalling."""
    with pytest.raises(ProcessLookupError):
        actions._kill(os.getpid(), 1)  # this process exists, but did not start at tick 1
