"""Containment of one agent: its cgroup, its egress policy in the kernel, and the blocked alerts.

    run --contain          a fresh cgroup under <cgroup2>/agentwatch.slice, owned: removed at the end
    watch --cgroup PATH    an existing cgroup, adopted: never removed, the policy (if any) detached

The kernel's agent membership then also follows the cgroup id (bpf/common.h),
the egress policy (bpf/policy.bpf.c) is attached to the cgroup, and each
denial becomes a `blocked` event and an alert with action "blocked".
"""

from __future__ import annotations

from dataclasses import dataclass

from . import events
from .cgroups import AgentCgroup
from .policy import Policy

BLOCKED_RULE = "egress-policy"


@dataclass
class Containment:
    cgroup: AgentCgroup
    policy: Policy | None = None
    policy_probes: object | None = None  # probes.PolicyProbes, compiled already
    dry_run: bool = False                # the policy reports and denies nothing
    agent_kernel_id: int = 0
    started: bool = False
    released: dict | None = None

    def start(self, probes, agent_kernel_id: int) -> None:
        """Membership by cgroup in the main programs, then the policy filled and attached, whole."""
        self.agent_kernel_id = agent_kernel_id
        probes.watch_cgroup(self.cgroup.id, agent_kernel_id)
        if self.policy is not None and self.policy_probes is not None:
            self.policy_probes.fill(self.policy.tables(), agent_kernel_id, audit=self.dry_run)
            self.policy_probes.attach(self.cgroup.path, multi=not self.cgroup.owned)
        self.started = True

    def describe(self) -> dict:
        """For the `contained` status record."""
        return {
            "cgroup": {"path": str(self.cgroup.path), "id": self.cgroup.id, "owned": self.cgroup.owned},
            "policy": self.policy.as_json() if self.policy is not None else None,
            "dry_run": self.dry_run,
        }

    def dry_run_for(self, ev: events.BlockEvent) -> bool:
        return self.dry_run

    def leaves_agent(self, kernel_path: str, agent_id: int) -> bool:
        """Whether a cgroup move (tamper record) takes the process out of the agent's cgroup."""
        return not self.cgroup.contains(kernel_path)

    def poll(self) -> list[bytes]:
        if self.policy_probes is None:
            return []
        return self.policy_probes.poll(0)

    def denied(self) -> dict:
        """Denials so far per rule name ("default" for the default), and records lost."""
        if self.policy_probes is None or self.policy is None:
            return {}
        per, default, lost = self.policy_probes.denied()
        out = {r.name: per[i] for i, r in enumerate(self.policy.rules) if per[i]}
        if default:
            out["default"] = default
        if lost:
            out["records_lost"] = lost
        return out

    def name_rule(self, record: dict, ev: events.BlockEvent) -> None:
        """Fill the policy's and the rule's names into a blocked record."""
        pol = record.get("policy")
        if pol is None or self.policy is None:
            return
        pol["name"] = self.policy.name
        pol["rule"] = "default" if ev.rule == events.POL_DEFAULT else (self.policy.rule_name(ev.rule) or str(ev.rule))

    def release(self, kill_leftovers: bool = False) -> dict:
        """At the end: remove an owned cgroup when it is empty, detach the policy unless processes remain.

        An owned cgroup that still holds processes (survivors not killed) is
        kept with its policy attached: they stay contained after agentwatch
        exits, and the next run sweeps the cgroup once it is empty.
        """
        if self.released is not None:
            return self.released
        cg = self.cgroup
        left = cg.procs()
        if left and kill_leftovers and cg.owned:
            cg.kill_all()
            from .cgroups import wait_empty  # noqa: PLC0415

            wait_empty(cg.path)
            left = cg.procs()
        cgroup = {"path": str(cg.path), "removed": False}
        out = {"cgroup": cgroup, "remaining": sorted(left), "denied": self.denied(), "policy_state": None}
        pp = self.policy_probes
        if cg.owned and left:
            if pp is not None and pp.attached:
                pp.leave_attached()
                out["policy_state"] = "left_attached"
        else:
            if pp is not None and pp.attached:
                pp.detach()
                out["policy_state"] = "detached"
            cgroup["removed"] = cg.remove() if cg.owned else False
        self.released = out
        return out


def blocked_alert(record: dict, dry_run: bool = False) -> dict:
    """The alert for a blocked record: action "blocked", with the process, its ancestry and the destination."""
    net = record.get("network") or {}
    pol = record.get("policy") or {}
    proc = record.get("process") or {}
    verb = "would be denied" if dry_run else "denied"
    return {
        "kind": "alert",
        "rule": BLOCKED_RULE,
        "title": "Egress denied by the agent's policy",
        "severity": "high",
        "tags": ["containment", "egress"],
        "mitre": [],
        "time": record.get("time"),
        "agent": record.get("agent"),
        "process": record.get("process"),
        "network": net,
        "message": (f"{proc.get('comm')} (pid {proc.get('pid')}) {pol.get('hook')} to "
                    f"{net.get('daddr')}:{net.get('dport')}/{net.get('protocol')} {verb} by policy "
                    f"{pol.get('name')}, rule {pol.get('rule')}"),
        "action": "blocked",
        "action_result": "dry_run" if dry_run else "denied",
        "policy": pol,
        "evidence": [record],
    }
