"""The daemon's sandboxes: each a cgroup, each its own agent, found at start and as they come and go.

Attribution is the kernel's (bpf/common.h, bpf/cgroup.bpf.c): a sandbox's
agent id there is the low 32 bits of its cgroup id, so the kernel can
attribute a cgroup made under a watched parent before userland has seen it,
and both sides agree on the id without talking. Here:

    adopt      a sandbox found by the scan at start or by a mkdir record: an Agent with
               its name, runtime labels (Docker), policy, and its episode timeline
    on_cgroup  mkdir / rmdir records: new sandboxes, new parents, sandboxes gone
    attribute  every record: settle its agent (a denial names none), drop those of
               cgroups the kernel attributed at birth but that are no sandbox

Nothing here reads the ring buffer or writes output: the pipeline calls in,
and status records go out through `emit`.
"""

from __future__ import annotations

import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import events
from .agents import Agent, AgentRegistry
from .cgroups import AgentCgroup, procs_recursive
from .episodes import Timeline
from .proctree import ProcessTable
from .runtimes import DockerRuntime
from .sandboxes import Found, SandboxClass, classify, identify, within

RETIRED_KEPT = 1024  # removed sandboxes still known, for records that arrive after their rmdir
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:@-]+")


def kernel_agent_id(cgroup_id: int) -> int:
    """A sandbox's agent id in the kernel: the low 32 bits of its cgroup id (bpf/cgroup.bpf.c)."""
    return cgroup_id & 0xFFFFFFFF


@dataclass
class Sandbox:
    agent: Agent
    path: str                  # "/" + path below the v2 mount
    cgroup_id: int
    klass: SandboxClass
    cgroup: AgentCgroup
    timeline: Timeline
    runtime_note: str | None = None   # why the runtime could not be asked, if it could not
    policy: object | None = None      # tracer.policy.Policy attached to its cgroup
    events: int = 0
    alerts: int = 0
    last_alert: str | None = None
    frozen: bool = False

    @property
    def name(self) -> str:
        return self.agent.sandbox["name"]

    def episode_id_base(self) -> str:
        return _NAME_CHARS.sub("_", self.name).strip("_.:@-") or f"sandbox-{self.cgroup_id}"

    def status(self, clock) -> dict:
        ep = self.timeline.current
        return {
            "name": self.name, "agent": self.agent.id, "cgroup": self.path, "cgroup_id": self.cgroup_id,
            "runtime": self.agent.sandbox["runtime"], "labels": self.agent.labels,
            "episode": ep.summary(clock) if ep is not None else None, "episodes": self.timeline.count,
            "events": self.events, "alerts": self.alerts, "last_alert": self.last_alert,
            "policy": self.policy.name if self.policy is not None else None,
            "on_alert": self.klass.on_alert, "runtime_note": self.runtime_note,
        }


@dataclass
class Fleet:
    probes: object                    # tracer.probes.Probes (fleet=True), or a fake in tests
    agents: AgentRegistry
    table: ProcessTable
    classes: list[SandboxClass]
    mount: Path
    emit: Callable[[str, Agent | None, dict], None]  # a status record: (status, agent, fields)
    runtime: DockerRuntime | None = None
    policies: dict = field(default_factory=dict)      # (policy file, dry_run) -> attachable PolicyProbes
    parsed_policies: dict = field(default_factory=dict)  # policy file -> tracer.policy.Policy
    host: str = field(default_factory=socket.gethostname)
    sandboxes: dict[int, Sandbox] = field(default_factory=dict)   # kernel agent id -> sandbox
    parents: dict[int, str] = field(default_factory=dict)         # cgroup id -> path
    restored: dict = field(default_factory=dict)                  # cgroup id -> saved state (restart)
    _retired: OrderedDict = field(default_factory=OrderedDict)    # kernel agent id -> Sandbox
    _by_name: dict[str, Sandbox] = field(default_factory=dict)
    dropped_records: int = 0          # records of cgroups attributed at birth that were no sandbox
    on_retire: Callable[[int], None] | None = None  # a sandbox gone: its cgroup id (the daemon drops its state)

    # ---- finding sandboxes ------------------------------------------------------------

    def watch_parent(self, cgroup_id: int, path: str) -> None:
        self.parents[cgroup_id] = path
        self.probes.watch_cgroup_children(cgroup_id)

    def adopt(self, found: Found, at_start: bool = False) -> Sandbox | None:
        """Make a sandbox an agent; None when it is one already or went away meanwhile."""
        kid = kernel_agent_id(found.cgroup_id)
        known = self.sandboxes.get(kid)
        if known is not None and known.cgroup_id == found.cgroup_id:
            return None
        real = self.mount / found.path.lstrip("/")
        if not real.is_dir():
            return None
        klass = found.klass
        ident = identify(found.path, klass.runtime)
        sandbox_json = {"name": ident.name, "cgroup": found.path, "cgroup_id": found.cgroup_id,
                        **ident.as_json(), "host": self.host}
        labels = dict(klass.labels)
        note = None
        if ident.runtime == "docker" and ident.container_id:
            info = self.runtime.inspect(ident.container_id) if self.runtime is not None else None
            if info is not None:
                sandbox_json["name"], sandbox_json["image"] = info.name, info.image
                labels.update(info.labels)
            else:
                note = self.runtime.reason if self.runtime is not None else "no Docker runtime configured"
        saved = self.restored.pop(found.cgroup_id, None)
        name = self._unique(saved["name"] if saved else sandbox_json["name"], found.cgroup_id)
        sandbox_json["name"] = name
        pids = sorted(procs_recursive(real))
        agent = Agent(f"sandbox-{found.cgroup_id}", kid, pids[0] if pids else None, labels, sandbox_json)
        timeline = Timeline()
        agent.episodes = timeline
        sb = Sandbox(agent, found.path, found.cgroup_id, klass, AgentCgroup(real, self.mount, owned=False),
                     timeline, note)
        if saved:
            sb.events, sb.alerts = int(saved.get("events", 0)), int(saved.get("alerts", 0))
            if saved.get("episode"):
                timeline.restore(saved["episode"], int(saved.get("episodes", 1)))
            else:
                timeline.count = int(saved.get("episodes", 0))
        self.agents.add(agent)
        self.sandboxes[kid] = sb
        self._retired.pop(kid, None)
        self._by_name[name] = sb
        self.probes.watch_cgroup(found.cgroup_id, kid)
        for pid in pids:
            # Already inside: the kernel attributes them by cgroup at their next event;
            # the table learns whose they are now, for ancestry and actions.
            p = self.table.get(pid)
            if p is not None:
                p.agent_id = kid
        self._attach_policy(sb)
        status = "sandbox_adopted" if at_start else "sandbox_added"
        fields = {"pids": pids}
        if saved:
            fields["restarted"] = True
        if note:
            fields["runtime_note"] = note
        if sb.policy is not None:
            fields["policy"] = sb.policy.as_json()
        self.emit(status, agent, fields)
        return sb

    def _attach_policy(self, sb: Sandbox) -> None:
        file = sb.klass.policy
        if file is None:
            return
        pp = self.policies.get((file, sb.klass.dry_run))
        if pp is None:
            return
        pp.attach_more(sb.cgroup.path)
        sb.policy = self.parsed_policies.get(file)

    def _unique(self, name: str, cgroup_id: int) -> str:
        other = self._by_name.get(name)
        if other is None or other.cgroup_id == cgroup_id:
            return name
        return f"{name}~{cgroup_id}"

    def on_cgroup(self, ev: events.CgroupEvent) -> None:
        kid = kernel_agent_id(ev.cgroup_id)
        if ev.op == events.CGROUP_RMDIR:
            self.parents.pop(ev.cgroup_id, None)
            sb = self.sandboxes.get(kid)
            if sb is not None and sb.cgroup_id == ev.cgroup_id:
                self.retire(sb)
            return
        if any(within(ev.path, s.path) for s in self.sandboxes.values()):
            return  # below a sandbox: part of it (the kernel climbs the ancestors)
        kind, klass = classify(ev.path, self.classes)
        if kind == "sandbox":
            self.adopt(Found(ev.path, ev.cgroup_id, klass))
            return
        if ev.attributed:
            # Attributed at birth, and no sandbox after all: undo it in the kernel. A process
            # that already joined the tgid map with this id leaves it at its next (dropped)
            # record or at its exit: no walk over the whole map for every cgroup made.
            self.probes.unwatch_cgroup(ev.cgroup_id)
        if kind == "parent":
            self.watch_parent(ev.cgroup_id, ev.path)

    def retire(self, sb: Sandbox, reason: str = "cgroup removed") -> None:
        ended = sb.timeline.end(time.monotonic_ns())
        if ended is not None:
            ended.alerts = []
        self.probes.unwatch_cgroup(sb.cgroup_id)
        if sb.policy is not None:
            pp = self.policies.get((sb.klass.policy, sb.klass.dry_run))
            if pp is not None:
                pp.detach_from(sb.cgroup.path)
        del self.sandboxes[sb.agent.kernel_id]
        if self._by_name.get(sb.name) is sb:
            del self._by_name[sb.name]
        self._retired[sb.agent.kernel_id] = sb
        while len(self._retired) > RETIRED_KEPT:
            kid, old = self._retired.popitem(last=False)
            if self.agents.by_kernel_id(kid) is old.agent:
                self.agents.remove(kid)
        if self.on_retire is not None:
            self.on_retire(sb.cgroup_id)
        self.emit("sandbox_removed", sb.agent, {"reason": reason, "events": sb.events, "alerts": sb.alerts,
                                                "episodes": sb.timeline.count,
                                                "episode_ended": ended.id if ended is not None else None})

    # ---- per record ---------------------------------------------------------------------

    def attribute(self, ev: events.Event) -> bool:
        kid = ev.agent_id
        if not kid and isinstance(ev, events.BlockEvent):
            # The policy programs serve many sandboxes and name none: the connect probe,
            # which ran first, put the process in the kernel's membership.
            kid = self.probes.agent_of_tgid(ev.pid) or self._agent_of_cgroup_id(ev.cgroup_id)
            ev.agent_id = kid
        sb = self.sandboxes.get(kid) or self._retired.get(kid)
        if sb is None:
            self.dropped_records += 1
            if kid:
                self.probes.unwatch(ev.pid)  # attributed at birth to a cgroup that is no sandbox
            return False
        sb.events += 1
        return True

    def _agent_of_cgroup_id(self, cgroup_id: int) -> int:
        sb = self.sandboxes.get(kernel_agent_id(cgroup_id))
        return sb.agent.kernel_id if sb is not None and sb.cgroup_id == cgroup_id else 0

    def of_agent_id(self, agent_id: str) -> Sandbox | None:
        if agent_id.startswith("sandbox-"):
            try:
                cid = int(agent_id[len("sandbox-"):])
            except ValueError:
                return None
            sb = self.sandboxes.get(kernel_agent_id(cid)) or self._retired.get(kernel_agent_id(cid))
            return sb if sb is not None and sb.cgroup_id == cid else None
        return None

    def find(self, selector: str) -> Sandbox | None:
        """A live sandbox by name, agent id or cgroup path."""
        sb = self._by_name.get(selector)
        if sb is not None:
            return sb
        sb = self.of_agent_id(selector)
        if sb is not None and sb.agent.kernel_id in self.sandboxes:
            return sb
        path = "/" + selector.strip("/")
        for s in self.sandboxes.values():
            if s.path == path:
                return s
        return None

    def cgroup_of_agent(self, kid: int) -> AgentCgroup | None:
        sb = self.sandboxes.get(kid)
        return sb.cgroup if sb is not None else None


def fleet_from_scan(fleet: Fleet, found_sandboxes: list[Found], found_parents: list[Found]) -> None:
    """Parents watched first (a sandbox made meanwhile is then attributed at birth), then sandboxes adopted."""
    for p in found_parents:
        fleet.watch_parent(p.cgroup_id, p.path)
    for s in found_sandboxes:
        fleet.adopt(s, at_start=True)

