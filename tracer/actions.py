"""Rule actions: what agentwatch does when an alert says `action: kill_process` or `kill_agent`.

    none          report only (the default)
    kill_process  SIGKILL the process the alert names (the one whose record completed the match)
    kill_agent    SIGKILL every process of the agent: the kernel's membership (tgids, which
                  reparented and setsid'd processes keep) and, when the agent has a cgroup,
                  everything in it (cgroup.kill)
    freeze_agent  freeze the agent's cgroup (cgroup.freeze): every process stops where it is,
                  alive, for a person to inspect; only agents with a cgroup (a sandbox, --contain)

The outcome goes into the alert before it is written:

    action_result     killed | frozen | dry_run | gone | refused | failed | no_agent
    action_targets    the pids signalled (or, with --dry-run, that would have been)
    action_latency_s  from the kernel's time of the record that completed the match (for
                      stratum-protocol: the first bytes on the wire) to the kill being sent

agentwatch never signals itself, its parent or pid 1, whatever a rule says. A
process is killed through a pidfd opened after its start time was checked
against the alert's `process.key`, so a pid reused since the record is never hit.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from .cgroups import CgroupError
from .proctree import read_stat

KILL_ACTIONS = ("kill_process", "kill_agent")
ACTIONS = KILL_ACTIONS + ("freeze_agent",)
_AGENT_KILL_ROUNDS = 5  # re-read membership and kill again: a fork may race the first round


def protected_pids() -> set[int]:
    """Processes no action may touch: agentwatch, its parent, init."""
    return {os.getpid(), os.getppid(), 1, 0}


def record_ktime_ns(rec: dict, offset_ns: int) -> int | None:
    """A record's `time` back on the kernel clock (CLOCK_MONOTONIC ns), exactly: Clock.rfc3339 inverted."""
    t = rec.get("time")
    if not isinstance(t, str) or len(t) != 30 or t[19] != "." or t[-1] != "Z":
        return None
    import calendar  # noqa: PLC0415

    try:
        whole = calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S"))
        nanos = int(t[20:29])
    except ValueError:
        return None
    return whole * 1_000_000_000 + nanos - offset_ns


def select(alert: dict) -> tuple[str, list[int]]:
    """(action, the pids it names directly): the culprit for kill_process, the agent root for kill_agent."""
    action = alert.get("action") or "none"
    if action not in ACTIONS:
        return "none", []
    proc = alert.get("process") or {}
    pid = proc.get("pid")
    if action == "kill_process":
        return action, [pid] if isinstance(pid, int) else []
    agent = alert.get("agent") or {}
    root = agent.get("root_pid")
    return action, [root] if isinstance(root, int) else []


def _start_ticks(key) -> int | None:
    if isinstance(key, str) and ":" in key:
        try:
            return int(key.split(":", 1)[1])
        except ValueError:
            return None
    return None


@dataclass
class Actor:
    """Carries out alerts' actions.

    members(kernel agent id) -> pids the kernel holds in that agent;
    agent_cgroup(kernel agent id) -> the agent's AgentCgroup or None;
    kernel_id(agent id string) -> the kernel agent id or None.
    """

    members: Callable[[int], list[int]]
    agent_cgroup: Callable[[int], object]
    kernel_id: Callable[[str], int | None]
    clock_offset_ns: int
    dry_run: bool = False
    protected: set[int] = field(default_factory=protected_pids)
    kill: Callable[[int, int], None] | None = None  # (pid, expected start ticks or None) -> raises; tests replace it
    taken: list = field(default_factory=list)  # (rule, action, result) of every action, for the session's summary

    def act(self, alert: dict) -> dict:
        """Carry out the alert's action and record the outcome in it; returns the alert."""
        action, _ = select(alert)
        if action == "none":
            return alert
        if action == "kill_process":
            proc = alert.get("process") or {}
            result, targets = self._kill_process(proc.get("pid"), _start_ticks(proc.get("key")))
        elif action == "freeze_agent":
            result, targets = self._freeze_agent(alert)
        else:
            result, targets = self._kill_agent(alert)
        alert["action_result"] = result
        alert["action_targets"] = sorted(targets)
        sent = time.monotonic_ns()
        start = record_ktime_ns(alert, self.clock_offset_ns)
        alert["action_latency_s"] = round((sent - start) / 1e9, 6) if start is not None else None
        self.taken.append((alert.get("rule"), action, result))
        return alert

    def _kill_process(self, pid, start_ticks) -> tuple[str, list[int]]:
        if not isinstance(pid, int) or pid <= 0:
            return "gone", []
        if pid in self.protected:
            return "refused", []
        if self.dry_run:
            return "dry_run", [pid]
        try:
            (self.kill or _kill)(pid, start_ticks)
        except ProcessLookupError:
            return "gone", []
        except OSError:
            return "failed", []
        return "killed", [pid]

    def _kill_agent(self, alert: dict) -> tuple[str, list[int]]:
        agent = alert.get("agent") or {}
        kid = self.kernel_id(agent.get("id")) if isinstance(agent.get("id"), str) else None
        if kid is None:
            return "no_agent", []
        return self.kill_agent(kid)

    def _freeze_agent(self, alert: dict) -> tuple[str, list[int]]:
        agent = alert.get("agent") or {}
        kid = self.kernel_id(agent.get("id")) if isinstance(agent.get("id"), str) else None
        cg = self.agent_cgroup(kid) if kid is not None else None
        if cg is None:
            return "no_agent", []
        pids = sorted(set(cg.procs()) - self.protected)
        if self.dry_run:
            return "dry_run", pids
        if self.protected.intersection(cg.procs()):
            return "refused", []  # freezing agentwatch or its parent would stop the watching
        try:
            cg.freeze()
        except (OSError, CgroupError):
            return "failed", []
        return "frozen", pids

    def kill_agent(self, kid: int) -> tuple[str, list[int]]:
        """SIGKILL every process of the agent with this kernel id: (result, pids)."""
        cg = self.agent_cgroup(kid)
        if self.dry_run:
            pids = set(self.members(kid)) | set(cg.procs() if cg is not None else [])
            return "dry_run", sorted(pids - self.protected)
        killed: set[int] = set()
        failed = False
        for _ in range(_AGENT_KILL_ROUNDS):
            fresh = False
            if cg is not None:
                for pid in cg.kill_all(self.protected):
                    fresh |= pid not in killed
                    killed.add(pid)
            for pid in self.members(kid):
                if pid in self.protected or pid in killed:
                    continue
                try:
                    (self.kill or _kill)(pid, None)
                    killed.add(pid)
                    fresh = True
                except ProcessLookupError:
                    pass
                except OSError:
                    failed = True
            if not fresh:
                break
        if not killed:
            return ("failed" if failed else "gone"), []
        return ("failed" if failed else "killed"), sorted(killed)


def _kill(pid: int, start_ticks: int | None) -> None:
    """SIGKILL through a pidfd, after checking that the pid is still the process the record named."""
    fd = os.pidfd_open(pid)
    try:
        if start_ticks:  # 0: the table never learned the start time
            st = read_stat(pid)
            if st is None or st.start_ticks != start_ticks:
                raise ProcessLookupError(pid)
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)
