"""A tracing session: kernel records in, attributed records out.

Pipeline turns each raw record into an output record (decode, process
table, agent); run_agent and watch drive it for the two CLI commands.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Protocol

from . import dns, events, gpu
from .actions import Actor
from .agents import Agent, AgentRegistry
from .containment import Containment, blocked_alert
from .flows import FlowTracker
from .launcher import GatedChild
from .netscope import ScopeClassifier
from .output import Writer
from .probes import POLL_MS, Probes
from .proctree import Process, ProcessTable, read_exe_argv, read_stat, start_ticks_from_ns
from .gpu import GpuMonitor
from .records import (
    Clock, dns_record, event_record, gpu_usage_record, kept_write, lost_record, safe_text, status_record,
)

LOST_CHECK_SECONDS = 1.0
# A record's kernel time is taken just after its ring buffer slot is reserved,
# and a reserved slot not yet submitted holds back the reader: a denial this
# close to the cut may still be ahead of records that preceded it.
DENIAL_SKEW_NS = 1_000_000
# TCP connects remembered for their connection records; the oldest go first past this.
CONNECTORS_MAX = 65536
_TCP = 6
_DNS_PORT = 53


class RecordConsumer(Protocol):
    """What sees every record after it is built: the rule engine."""

    def evaluate(self, record: dict) -> list[dict]: ...


class FleetHooks(Protocol):
    """What the daemon adds to the pipeline: sandboxes from cgroup records, attribution checks."""

    def on_cgroup(self, ev: events.CgroupEvent) -> None: ...

    def attribute(self, ev: events.Event) -> bool:
        """Settle ev.agent_id; False: the record belongs to no sandbox and is dropped."""
        ...


@dataclass
class Pipeline:
    probes: Probes
    writer: Writer
    agents: AgentRegistry = field(default_factory=AgentRegistry)
    table: ProcessTable = field(default_factory=ProcessTable)
    clock: Clock = field(default_factory=Clock)
    rules: RecordConsumer | None = None
    show_events: bool = True  # False: only alerts, lost events and errors are written
    scope: ScopeClassifier = field(default_factory=ScopeClassifier)
    gpu: GpuMonitor | None = None  # None: GPU records off (tests of other concerns)
    actor: Actor | None = None  # carries out rule actions (kill_process, kill_agent); None: report only
    containment: Containment | None = None  # the agent's cgroup and egress policy (run --contain, watch --cgroup)
    received: int = 0
    fleet: "FleetHooks | None" = None  # the daemon's sandboxes (tracer/daemon.py); None for run and watch
    metrics: "object | None" = None  # tracer.metrics.Metrics (--metrics); None: no counting
    flows: FlowTracker | None = field(default_factory=FlowTracker)  # pipe_link records (tracer/flows.py)
    # Stop signals a watched process sent to agentwatch (tamper records): such a stop is ignored.
    stop_signals_from_agents: list[int] = field(default_factory=list)
    _lost_seen: dict[str, int] = field(default_factory=dict)
    _lost_checked: float = 0.0
    _denials: list[bytes] = field(default_factory=list)  # read, not yet due (see _with_denials)
    # struct sock of a TCP connect -> the process that made it, for its connection records.
    _connectors: dict[int, Process] = field(default_factory=dict)

    def handle(self, raw: bytes) -> None:
        ev = events.decode(raw)
        self.received += 1
        if self.fleet is not None:
            # The daemon: cgroups made and removed are sandboxes coming and going, and a
            # record of a cgroup the kernel attributed at birth but that is no sandbox is dropped.
            if isinstance(ev, events.CgroupEvent):
                self.fleet.on_cgroup(ev)
                return
            if not self.fleet.attribute(ev):
                return
        if isinstance(ev, events.ConnEvent):
            self._handle_connection(ev)
            return
        if isinstance(ev, events.GpuEvent):
            if self.gpu is None:
                return
            if ev.kind == gpu.KIND_RESOLVE:
                self.gpu.resolve(ev.pid, ev.fd)
                return
            self.gpu.active.add(ev.pid)  # its counters are flushed when it exits
        proc = self.table.lookup(ev.pid, start_ticks_from_ns(ev.start_ns), ev.ppid, ev.comm, ev.uid)
        self.table.refresh(proc, ev.comm, ev.ppid, ev.uid)
        if ev.agent_id:
            proc.agent_id = ev.agent_id
        agent = self.agents.by_kernel_id(ev.agent_id)
        child = None
        if isinstance(ev, events.ForkEvent):
            child = self.table.fork(proc, ev.child_pid, start_ticks_from_ns(ev.child_start_ns), ev.child_agent_id)
        elif isinstance(ev, events.ExecEvent) and ev.retval == 0:
            self.table.new_image(proc, ev.comm, ev.filename, ev.argv, ev.argv_truncated)
            if self.gpu is not None:
                self.gpu.after_exec(ev.pid)
        elif isinstance(ev, events.ExitEvent) and self.gpu is not None and (
            ev.pid in self.gpu.active or self.gpu.counters.pending(ev.pid)
        ):
            self.report_gpu()  # its last counters, before it is gone
            self.gpu.forget(ev.pid)
        elif isinstance(ev, events.ConnectEvent) and ev.sock_cookie and ev.protocol == _TCP:
            self._remember_connector(ev.sock_cookie, proc)
        record = event_record(self.clock, ev, proc, agent, child, self.scope)
        if isinstance(ev, events.BlockEvent):
            self._emit_blocked(ev, record)
            return
        if isinstance(ev, events.TamperEvent):
            self._note_tamper(ev, record)
        elif isinstance(ev, events.FileEvent) and not kept_write(record):
            return  # the kernel keeps a superset (any path through /etc, ~/.ssh ...): this one does not matter
        self.emit(record)
        if self.flows is not None and proc.agent_id:
            for link in self.flows.observe(record, proc, child):
                self.emit(link)
        if isinstance(ev, events.SendEvent):
            self._emit_dns(ev, record)
        elif isinstance(ev, events.ExitEvent):
            self.table.exit(proc)

    def _emit_blocked(self, ev: events.BlockEvent, record: dict) -> None:
        """A denial of the egress policy: its event record, then its alert (action "blocked")."""
        containment = self.containment
        if containment is not None:
            containment.name_rule(record, ev)
        self.emit(record)
        self.writer.write(blocked_alert(record, dry_run=containment is not None and containment.dry_run_for(ev)))

    def _note_tamper(self, ev: events.TamperEvent, record: dict) -> None:
        tamper = record["tamper"]
        cg = tamper.get("cgroup")
        if cg is not None and cg["v2"] and self.containment is not None:
            cg["leaves_agent"] = self.containment.leaves_agent(cg["path"], ev.agent_id)
        if ev.kind == events.TAMPER_SIGNAL and ev.protected == events.PROTECT_SELF:
            self.stop_signals_from_agents.append(ev.arg)
        if ev.kind == events.TAMPER_PTRACE and not ev.protected:
            tamper["target_scope"], tamper["target_agent_id"] = self._whose(ev.target_pid, ev.agent_id)

    def _whose(self, pid: int, agent_id: int) -> tuple[str, str | None]:
        """same_agent, other_agent (and its id) or outside: whom a traced process belongs to."""
        target = self.probes.agent_of_tgid(pid)
        if not target:
            proc = self.table.get(pid)
            target = proc.agent_id if proc is not None else 0
        if not target:
            return "outside", None
        if target == agent_id:
            return "same_agent", None
        other = self.agents.by_kernel_id(target)
        return "other_agent", other.id if other is not None else None

    def _remember_connector(self, cookie: int, proc: Process) -> None:
        self._connectors.pop(cookie, None)  # re-inserted last: the newest is evicted last
        if len(self._connectors) >= CONNECTORS_MAX:
            del self._connectors[next(iter(self._connectors))]
        self._connectors[cookie] = proc

    def _connector(self, ev: events.ConnEvent) -> Process:
        """The process that made the connection, alive or not.

        The kernel names it by pid and start time as it was at SYN_SENT. It
        may have exited (its pid even reused) by the time the connection
        closes, so it is found through its connect record, then the table,
        and is otherwise rebuilt from the record without entering the table.
        """
        start = start_ticks_from_ns(ev.start_ns)
        proc = self._connectors.get(ev.sock_cookie)
        if proc is not None and (proc.pid, proc.start_ticks) == (ev.pid, start):
            return proc
        proc = self.table.get(ev.pid)
        if proc is not None and proc.start_ticks == start:
            return proc
        parent = self.table.get(ev.ppid)
        proc = Process(ev.pid, start, ev.ppid, ev.uid, ev.comm, parent=parent, agent_id=ev.agent_id)
        st = read_stat(ev.pid)
        if st is not None and st.start_ticks == start:
            proc.exe, proc.argv = read_exe_argv(ev.pid)
        elif parent is not None:
            proc.exe, proc.argv = parent.exe, parent.argv
        return proc

    def _handle_connection(self, ev: events.ConnEvent) -> None:
        proc = self._connector(ev)
        if ev.state != events.CONN_ESTABLISHED:
            self._connectors.pop(ev.sock_cookie, None)
        agent = self.agents.by_kernel_id(ev.agent_id)
        self.emit(event_record(self.clock, ev, proc, agent, scope=self.scope))

    def _emit_dns(self, ev: events.SendEvent, send: dict) -> None:
        """A dns record after the send record of a query to port 53."""
        if ev.dport != _DNS_PORT:
            return
        question = dns.parse_query(ev.data, tcp=ev.protocol == _TCP)
        if question is not None:
            self.emit(dns_record(send, question))

    def emit(self, record: dict, always: bool = False) -> None:
        """Write an event or status record (unless events are hidden and not always) and its alerts.

        An alert's action (kill_process, kill_agent) is carried out before
        the alert is written, and the alert records what was done.
        """
        metrics = self.metrics
        if metrics is not None:
            metrics.observe(record)
        if self.show_events or always:
            self.writer.write(record)
        if self.rules is not None:
            for alert in self.rules.evaluate(record):
                if self.actor is not None and alert.get("action", "none") != "none":
                    self.actor.act(alert)
                if metrics is not None:
                    metrics.observe(alert)
                self.writer.write(alert)

    def drain(self, timeout_ms: int = POLL_MS) -> int:
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: a denial older than this has
        # every record that preceded it in the main buffer by the time it is read.
        cut = time.monotonic_ns() - DENIAL_SKEW_NS
        batch = self.probes.poll(timeout_ms)
        if self.containment is not None:
            batch = self._with_denials(batch, cut)
        for raw in batch:
            self.handle(raw)
        if self.metrics is not None:
            self.metrics.drained(len(batch), events.ktime_of(batch[-1]) if batch else None)
        if self.flows is not None:
            for link in self.flows.tick(self._agent_now):
                self.emit(link)
        now = time.monotonic()
        if now - self._lost_checked >= LOST_CHECK_SECONDS:
            self.report_lost()
            self.report_gpu()
            self._lost_checked = now
            if not batch:
                self.writer.flush()  # a writer may hold something back for a while (rate-limit summaries)
        if batch:
            self.writer.flush()
        return len(batch)

    def _agent_now(self, kernel_id: int) -> dict | None:
        agent = self.agents.by_kernel_id(kernel_id)
        return agent.as_json() if agent is not None else None

    def _with_denials(self, batch: list[bytes], cut: int | None) -> list[bytes]:
        """Denials (their own ring buffer) merged into the main batch by kernel time.

        A denial is handled between the records that came before and after it,
        so its process's fork and exec are known and its exit not yet handled
        (ancestry and argv intact). The denial buffer is read after the main
        one, so a denial may be newer than all of this batch; if it is also
        newer than cut (taken before the main buffer was read), records that
        preceded it may still be unread: it waits for the next drain. Older
        than the newest record of the batch or than cut, it is placed now.
        cut None: everything is due (finish).
        """
        self._denials += self.containment.poll()
        if not self._denials:
            return batch
        if cut is not None and batch:
            cut = max(cut, max(events.ktime_of(r) for r in batch))
        due = [d for d in self._denials if cut is None or events.ktime_of(d) < cut]
        self._denials = [d for d in self._denials if cut is not None and events.ktime_of(d) >= cut]
        return _merge_by_ktime(batch, sorted(due, key=events.ktime_of))

    def report_gpu(self) -> None:
        """A gpu usage record for each process whose GPU counters or NVML figures moved."""
        if self.gpu is None:
            return
        window, usage = self.gpu.tick(ready=self._reportable)
        for pid, use in usage.items():
            if not self._reportable(pid):
                continue  # NVML lists every GPU process on the host: keep the watched ones
            proc = self.table.get(pid)
            agent = self.agents.by_kernel_id(proc.agent_id)
            self.emit(gpu_usage_record(self.clock, proc, agent, use.as_json(window, self.gpu.counters.totals(pid))))

    def _reportable(self, pid: int) -> bool:
        """A process a gpu record can name: in the table, and watched (or host-wide)."""
        proc = self.table.get(pid)
        return proc is not None and bool(proc.agent_id or self.probes.config.host_wide)

    def report_lost(self) -> None:
        """A lost event for whatever the kernel failed to hand over since the last check."""
        total = self.probes.lost_counts()
        delta = {k: v - self._lost_seen.get(k, 0) for k, v in total.items()}
        if self.metrics is not None:
            self.metrics.lost_delta(delta)
        if any(delta.values()):
            record = lost_record(self.clock, delta, total)
            self.writer.write(record)  # always shown, --events or not: losses are never silent
            if self.rules is not None:
                for alert in self.rules.evaluate(record):
                    self.writer.write(alert)
            self.writer.flush()
        self._lost_seen = total

    def finish(self, budget_s: float = 2.0) -> None:
        """Drain what is queued, then the last lost and GPU figures.

        Bounded in time: the probes are still attached, and on a busy host
        (watch --all) the buffer never runs dry.
        """
        deadline = time.monotonic() + budget_s
        while self.drain(0) and time.monotonic() < deadline:
            pass
        if self.containment is not None:
            for raw in self._with_denials(self.probes.poll(0), None):
                self.handle(raw)
        self.report_lost()
        self.report_gpu()
        self.writer.flush()


def _merge_by_ktime(batch: list[bytes], due: list[bytes]) -> list[bytes]:
    """batch (in ring buffer order) with the sorted records of due placed by kernel time."""
    if not due:
        return batch
    out: list[bytes] = []
    i = 0
    for raw in batch:
        t = events.ktime_of(raw)
        while i < len(due) and events.ktime_of(due[i]) <= t:
            out.append(due[i])
            i += 1
        out.append(raw)
    out.extend(due[i:])
    return out


class StopFlag:
    """Set by SIGINT/SIGTERM; the poll loop checks it at least every 100 ms."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._set)

    def _set(self, signum, _frame) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _wait_status_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def agent_members(pipeline: Pipeline, agent: Agent) -> list[int]:
    """The agent's processes: the kernel's membership, and whatever is in its cgroup."""
    pids = set(pipeline.probes.members(agent.kernel_id))
    if pipeline.containment is not None:
        pids.update(pipeline.containment.cgroup.procs())
    return sorted(pids)


def stop_requested(pipeline: Pipeline, stop: StopFlag, agent: Agent | None) -> bool:
    """True when a stop signal came from outside the agents.

    A SIGTERM or SIGINT that a watched process sent to agentwatch (its tamper
    record is in the ring buffer before the signal lands) is ignored: the
    agent does not get to end its own monitoring. The tamper alert says so.
    """
    if not stop:
        return False
    pipeline.drain(0)
    sent = pipeline.stop_signals_from_agents
    if stop.signal in sent:
        sent.remove(stop.signal)
        pipeline.emit(status_record(pipeline.clock, "stop_ignored", agent, signal=stop.signal))
        pipeline.writer.flush()
        stop.signal = None
        return False
    return True


def run_agent(
    pipeline: Pipeline, child: GatedChild, labels: dict[str, str], linger: float, stop: StopFlag,
    kill_on_exit: bool = False,
) -> int:
    """Watch the gated child as an agent; return its exit code once its tree is gone.

    With pipeline.containment the child is moved into the agent's cgroup and
    the egress policy attached before it may exec. kill_on_exit: once the
    root has exited, SIGKILL every process of the agent still alive.
    """
    agent = pipeline.agents.new(child.pid, labels)
    st = read_stat(child.pid)
    root = pipeline.table.lookup(child.pid, st.start_ticks if st else 0, os.getpid())
    root.agent_id = agent.kernel_id
    pipeline.probes.watch(child.pid, agent.kernel_id)
    containment = pipeline.containment
    if containment is not None:
        try:
            containment.cgroup.move(child.pid)
            containment.start(pipeline.probes, agent.kernel_id)
        except Exception:
            child.abandon()
            containment.release()
            raise
    argv = [safe_text(os.fsencode(a)) for a in child.argv]
    pipeline.emit(status_record(pipeline.clock, "agent_started", agent, argv=argv))
    if containment is not None:
        pipeline.emit(status_record(pipeline.clock, "contained", agent, **containment.describe()))
    child.release()

    exit_code: int | None = None
    root_gone_at = 0.0
    reported_survivors = False
    killed_survivors = False
    while not stop_requested(pipeline, stop, agent):
        pipeline.drain(POLL_MS)
        if exit_code is None:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid == 0:
                continue
            exit_code = _wait_status_code(status)
            root_gone_at = time.monotonic()
            pipeline.drain(0)
        survivors = agent_members(pipeline, agent)
        if not survivors:
            break
        if not reported_survivors:
            reported_survivors = True
            _report_survivors(pipeline, agent, "root_exited", survivors, linger=linger)
        if kill_on_exit and not killed_survivors:
            killed_survivors = True
            _kill_survivors(pipeline, agent)
            continue
        if time.monotonic() - root_gone_at >= linger:
            _report_survivors(pipeline, agent, "linger_expired", survivors)
            break
    pipeline.finish()
    if containment is not None:
        released = containment.release()
        pipeline.emit(status_record(pipeline.clock, "containment_released", agent, **released))
    if exit_code is None:  # stopped by a signal before the agent ended
        survivors = agent_members(pipeline, agent)
        _report_survivors(pipeline, agent, "stopped", survivors, signal=stop.signal)
        return 128 + (stop.signal or signal.SIGTERM)
    pipeline.emit(status_record(pipeline.clock, "agent_finished", agent, exit_code=exit_code))
    pipeline.writer.flush()
    return exit_code


def _kill_survivors(pipeline: Pipeline, agent: Agent) -> None:
    """run --kill-on-exit: SIGKILL what outlives the root, and say what was done."""
    actor = pipeline.actor or default_actor(pipeline)
    started = time.monotonic()
    result, pids = actor.kill_agent(agent.kernel_id)
    pipeline.emit(status_record(pipeline.clock, "survivors_killed", agent, result=result, pids=pids,
                                seconds=round(time.monotonic() - started, 6)))
    pipeline.writer.flush()


def default_actor(pipeline: Pipeline, dry_run: bool = False) -> Actor:
    """The Actor of a session: membership from the kernel, the cgroup from the containment."""

    def kernel_id(agent_id: str) -> int | None:
        for a in pipeline.agents:
            if a.id == agent_id:
                return a.kernel_id
        return None

    def agent_cgroup(kid: int):
        c = pipeline.containment
        return c.cgroup if c is not None and c.agent_kernel_id == kid else None

    return Actor(members=pipeline.probes.members, agent_cgroup=agent_cgroup, kernel_id=kernel_id,
                 clock_offset_ns=pipeline.clock.offset_ns, dry_run=dry_run)


def _report_survivors(pipeline: Pipeline, agent: Agent, status: str, pids: list[int], **extra) -> None:
    survivors = []
    for pid in sorted(pids):
        p = pipeline.table.get(pid)
        survivors.append({"pid": pid, "key": p.key if p else None, "comm": safe_text(p.comm) if p else None})
    pipeline.emit(status_record(pipeline.clock, status, agent, survivors=survivors, **extra))
    pipeline.writer.flush()


def watch(
    pipeline: Pipeline, pids: list[int], labels: dict[str, str], duration: float | None, stop: StopFlag
) -> int:
    """Trace existing processes and their descendants (or the host, or a cgroup) until stopped.

    With pipeline.containment (watch --cgroup), the cgroup is the agent: its
    processes now and whatever enters it later, by cgroup id in the kernel.
    """
    agent = None
    containment = pipeline.containment
    if containment is not None:
        members = containment.cgroup.procs()
        agent = pipeline.agents.new(members[0] if members else os.getpid(), labels)
        containment.start(pipeline.probes, agent.kernel_id)
        for pid in members:
            pipeline.probes.watch(pid, agent.kernel_id)
            p = pipeline.table.get(pid)
            if p is not None:
                p.agent_id = agent.kernel_id
        pipeline.emit(status_record(pipeline.clock, "watching", agent, pids=sorted(members),
                                    **containment.describe()))
    elif pids:
        agent = pipeline.agents.new(pids[0], labels)
        members = []
        for pid in pids:
            pipeline.probes.watch(pid, agent.kernel_id)
            members.append(pid)
        # Descendants that exist already; later forks are inherited in the kernel.
        for pid in pids:
            for p in pipeline.table.descendants(pid):
                pipeline.probes.watch(p.pid, agent.kernel_id)
                members.append(p.pid)
        for pid in members:
            p = pipeline.table.get(pid)
            if p is not None:
                p.agent_id = agent.kernel_id
        pipeline.emit(status_record(pipeline.clock, "watching", agent, pids=sorted(members)))
    else:
        pipeline.emit(status_record(pipeline.clock, "watching", None, host_wide=True))
    deadline = time.monotonic() + duration if duration else None
    while not stop_requested(pipeline, stop, agent):
        pipeline.drain(POLL_MS)
        if deadline is not None and time.monotonic() >= deadline:
            break
    pipeline.finish()
    if containment is not None:
        released = containment.release()
        pipeline.emit(status_record(pipeline.clock, "containment_released", agent, **released))
        pipeline.writer.flush()
    return 0
