"""Who is this process: a table of processes seeded from /proc and kept by events.

A process is known by its key, pid plus start time, so a reused pid is a new
process. Each process holds a reference to its parent as it was at fork
time; reparenting (to init or a subreaper) never rewrites ancestry, and an
exited parent stays reachable through its children for as long as they need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ANCESTRY_DEPTH = 16


def start_ticks_from_ns(start_ns: int) -> int:
    """Kernel start_boottime (ns) in the clock ticks /proc/PID/stat reports."""
    return start_ns * CLOCK_TICKS // 1_000_000_000


def process_key(pid: int, start_ticks: int) -> str:
    return f"{pid}:{start_ticks}"


@dataclass(slots=True, eq=False)
class Process:
    pid: int
    start_ticks: int
    ppid: int
    uid: int = 0
    comm: bytes = b""
    exe: bytes | None = None
    argv: list[bytes] = field(default_factory=list)
    argv_truncated: bool = False
    parent: Process | None = None
    agent_id: int = 0  # kernel agent id; 0 = in no agent
    alive: bool = True
    # records.process_json's caches; cleared whenever the process changes.
    json_cache: dict | None = None
    brief_cache: dict | None = None

    def changed(self) -> None:
        self.json_cache = self.brief_cache = None

    @property
    def key(self) -> str:
        return process_key(self.pid, self.start_ticks)

    def ancestry(self, depth: int = ANCESTRY_DEPTH) -> list[Process]:
        """Parent first, as recorded at fork time."""
        out = []
        node = self.parent
        while node is not None and len(out) < depth:
            out.append(node)
            node = node.parent
        return out


@dataclass(slots=True)
class ProcStat:
    pid: int
    ppid: int
    comm: bytes
    start_ticks: int
    uid: int


def read_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """/proc/PID/stat fields we need; None when the process is gone."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
        uid = (proc / str(pid)).stat().st_uid
    except OSError:
        return None
    # comm is in parentheses and may itself contain ") ": split at the last one.
    lpar, rpar = raw.index(b"("), raw.rindex(b")")
    rest = raw[rpar + 2 :].split()
    # Fields after comm start at field 3 (state); ppid is 4, starttime is 22.
    return ProcStat(pid, int(rest[1]), raw[lpar + 1 : rpar], int(rest[19]), uid)


def read_exe_argv(pid: int, proc: Path = Path("/proc")) -> tuple[bytes | None, list[bytes]]:
    base = proc / str(pid)
    try:
        exe = os.readlink(base / "exe").encode(errors="surrogateescape")
    except OSError:
        exe = None
    try:
        argv = (base / "cmdline").read_bytes().split(b"\0")
        if argv and argv[-1] == b"":
            argv.pop()
    except OSError:
        argv = []
    return exe, argv


class ProcessTable:
    """Live processes by pid, updated from fork/exec/exit events."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Process] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def get(self, pid: int) -> Process | None:
        return self._by_pid.get(pid)

    def seed_from_proc(self, proc: Path = Path("/proc")) -> int:
        """Load every process that exists now; parents linked by today's ppid."""
        stats = {}
        for entry in os.scandir(proc):
            if entry.name.isdigit():
                st = read_stat(int(entry.name), proc)
                if st is not None:
                    stats[st.pid] = st
        for st in stats.values():
            exe, argv = read_exe_argv(st.pid, proc)
            self._by_pid[st.pid] = Process(
                st.pid, st.start_ticks, st.ppid, st.uid, st.comm, exe, argv
            )
        for p in self._by_pid.values():
            p.parent = self._by_pid.get(p.ppid)
        return len(self._by_pid)

    def lookup(self, pid: int, start_ticks: int, ppid: int = 0, comm: bytes = b"", uid: int = 0) -> Process:
        """The process with this key, created if unknown or if the pid was reused."""
        p = self._by_pid.get(pid)
        if p is not None and p.start_ticks == start_ticks:
            return p
        if p is not None:
            p.alive = False  # an earlier process with this pid is gone
        parent = self._by_pid.get(ppid)
        p = Process(pid, start_ticks, ppid, uid, comm, parent=parent)
        # Met mid-life (its fork came before we watched): ask /proc, and fall
        # back on the parent's image when it is already gone.
        p.exe, p.argv = read_exe_argv(pid)
        if p.exe is None and parent is not None:
            p.exe, p.argv = parent.exe, parent.argv
        self._by_pid[pid] = p
        return p

    def fork(self, parent: Process, child_pid: int, child_start_ticks: int, agent_id: int) -> Process:
        """A new process: it runs its parent's image until it execs."""
        old = self._by_pid.get(child_pid)
        if old is not None:
            old.alive = False
        child = Process(
            child_pid,
            child_start_ticks,
            parent.pid,
            parent.uid,
            parent.comm,
            parent.exe,
            parent.argv,
            parent.argv_truncated,
            parent=parent,
            agent_id=agent_id,
        )
        self._by_pid[child_pid] = child
        return child

    def new_image(self, p: Process, comm: bytes, exe: bytes, argv: list[bytes], truncated: bool) -> None:
        p.comm, p.exe, p.argv, p.argv_truncated = comm, exe, argv, truncated
        p.changed()

    def refresh(self, p: Process, comm: bytes, ppid: int, uid: int) -> None:
        """What the kernel says of the process now: its name (prctl(PR_SET_NAME)),
        its parent (reparenting; the fork-time ancestry is kept) and its uid."""
        if p.comm != comm or p.ppid != ppid or p.uid != uid:
            p.comm, p.ppid, p.uid = comm, ppid, uid
            p.changed()

    def exit(self, p: Process) -> None:
        p.alive = False
        if self._by_pid.get(p.pid) is p:
            del self._by_pid[p.pid]

    def descendants(self, pid: int) -> list[Process]:
        """Live processes whose fork-time ancestry contains this one.

        Compared by identity, not pid: a reused pid is another process, and
        a grandchild whose parent exited still descends from the root.
        """
        root = self._by_pid.get(pid)
        if root is None:
            return []
        return [p for p in self._by_pid.values() if p is not root and root in p.ancestry(depth=1 << 16)]
