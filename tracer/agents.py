"""Which agent owns a process: the registry of agents being watched.

The kernel knows an agent by a small integer (the value in the aw_watched
map); users and SIEMs know it by a string id, its root pid and its labels.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(slots=True)
class Agent:
    id: str
    kernel_id: int
    root_pid: int
    labels: dict[str, str] = field(default_factory=dict)
    # Fleet mode (agentwatch daemon): the sandbox it is, and its episodes (tracer.episodes.Timeline).
    sandbox: dict | None = None
    episodes: object | None = None

    def as_json(self, ktime_ns: int | None = None) -> dict:
        """The agent as records name it; a sandbox's also carries the episode in force at ktime_ns (None: now)."""
        out = {"id": self.id, "root_pid": self.root_pid, "labels": self.labels}
        if self.sandbox is not None:
            out["sandbox"] = self.sandbox
        if self.episodes is not None:
            ep = self.episodes.at(ktime_ns)
            out["episode"] = ep.as_json() if ep is not None else None
        return out


class LabelError(ValueError):
    pass


def parse_labels(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """--label K=V options to a dict; a bad one raises LabelError naming it."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LabelError(f"label {pair!r} is not KEY=VALUE")
        labels[key.strip()] = value
    return labels


class AgentRegistry:
    def __init__(self) -> None:
        self._by_kernel_id: dict[int, Agent] = {}
        self._next = 1
        self._reserved: str | None = None

    def next_id(self) -> str:
        """The id the next new agent will get (to name its cgroup before it starts)."""
        if self._reserved is None:
            self._reserved = f"agent-{secrets.token_hex(6)}"
        return self._reserved

    def new(self, root_pid: int, labels: dict[str, str] | None = None, agent_id: str | None = None) -> Agent:
        kernel_id = self._next
        self._next += 1
        if agent_id is None:
            agent_id, self._reserved = self._reserved, None
        agent = Agent(agent_id or f"agent-{secrets.token_hex(6)}", kernel_id, root_pid, dict(labels or {}))
        self._by_kernel_id[kernel_id] = agent
        return agent

    def add(self, agent: Agent) -> Agent:
        """An agent whose kernel id was chosen elsewhere (a sandbox: the low 32 bits of its cgroup id)."""
        self._by_kernel_id[agent.kernel_id] = agent
        return agent

    def remove(self, kernel_id: int) -> Agent | None:
        return self._by_kernel_id.pop(kernel_id, None)

    def by_kernel_id(self, kernel_id: int) -> Agent | None:
        return self._by_kernel_id.get(kernel_id)

    def __iter__(self):
        return iter(self._by_kernel_id.values())
