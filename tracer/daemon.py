"""agentwatch daemon: one process per host, one set of BPF programs, every sandbox its own agent.

The stages are those of `run` and `watch` (tracer/session.py Pipeline: decode,
attribute, enrich, judge, deliver); the daemon adds around them:

    Fleet (tracer/fleet.py)   sandboxes from the scan and from cgroup records
    SandboxJudge              the rules, then each sandbox's `on_alert`, and the
                              alert counted into its sandbox and episode
    AlertFanout               alerts written, then sent to control subscribers
    ControlServer             episodes begin and end; status; subscriptions
    the state file            what a restart needs to carry on without double counting

Episode boundaries are stamped with CLOCK_MONOTONIC when a request is read,
the clock of the records' kernel time, so a record falls in the episode in
force when the kernel made it. An `end` is answered only after a drain that
began past the boundary (plus the ring buffer's reservation skew): by then
every record of the episode has been read, and the reply lists its alerts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import events
from .actions import Actor
from .control import ControlError, ControlServer, Request
from .episodes import EpisodeError, check_id
from .fleet import Fleet, Sandbox, fleet_from_scan
from .fleetconfig import DaemonConfig
from .records import status_record
from .sandboxes import scan, within
from .session import DENIAL_SKEW_NS, Pipeline, StopFlag, stop_requested

STATE_EVERY_S = 5.0
POLL_S = 0.01  # the drain tick, as tracer/probes.py POLL_MS
SEVERITY_RANK = {s: i for i, s in enumerate(("info", "low", "medium", "high", "critical"))}


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class SandboxJudge:
    """The rules over every record, then the sandbox's on_alert; alerts counted per sandbox and episode."""

    engine: object
    fleet: Fleet

    def evaluate(self, record: dict) -> list[dict]:
        alerts = self.engine.evaluate(record)
        agent = record.get("agent")
        sb = self.fleet.of_agent_id(agent["id"]) if agent else None
        ep = None
        if sb is not None and agent.get("episode"):
            ep = sb.timeline.find(agent["episode"]["id"])
            if ep is not None and record.get("kind") == "event":
                ep.records += 1
        for alert in alerts:
            if sb is None:
                continue
            apply_on_alert(alert, sb.klass.on_alert, sb.klass.min_severity)
            sb.alerts += 1
            sb.last_alert = alert.get("rule")
            if ep is not None:
                ep.add_alert(alert)
        return alerts


def apply_on_alert(alert: dict, on_alert: str, min_severity: str) -> None:
    """The sandbox's policy for actions: the rule's own (rule), none (report), or one for all at and above a severity."""
    if on_alert == "rule":
        return
    if on_alert == "report" or SEVERITY_RANK.get(alert.get("severity"), 0) < SEVERITY_RANK[min_severity]:
        alert["action"] = "none"
        return
    alert["action"] = on_alert


@dataclass
class AlertFanout:
    """The daemon's output, and every alert also to the control connections subscribed to it."""

    writer: object
    control: ControlServer | None = None
    written: int = 0

    def write(self, record: dict) -> None:
        self.writer.write(record)
        self.written += 1
        if self.control is None or record.get("kind") != "alert":
            return
        agent = record.get("agent") or {}
        episode = (agent.get("episode") or {}).get("id")
        for conn in self.control.subscribers():
            want_agent, want_episode = conn.subscription
            if want_agent is not None and agent.get("id") != want_agent:
                continue
            if want_episode is not None and episode != want_episode:
                continue
            self.control.send(conn, record)

    def flush(self) -> None:
        self.writer.flush()


@dataclass
class SandboxPolicies:
    """The pipeline's containment for many sandboxes: denials of every policy object, named per sandbox."""

    fleet: Fleet

    def poll(self) -> list[bytes]:
        out: list[bytes] = []
        for pp in self.fleet.policies.values():
            out += pp.poll(0)
        return out

    def name_rule(self, record: dict, ev) -> None:
        pol = record.get("policy")
        sb = self.fleet.sandboxes.get(ev.agent_id)
        if pol is None or sb is None or sb.policy is None:
            return
        pol["name"] = sb.policy.name
        pol["rule"] = "default" if ev.rule == events.POL_DEFAULT else (sb.policy.rule_name(ev.rule) or str(ev.rule))

    def dry_run_for(self, ev) -> bool:
        sb = self.fleet.sandboxes.get(ev.agent_id)
        return sb is not None and sb.klass.dry_run

    def leaves_agent(self, kernel_path: str, agent_id: int) -> bool:
        sb = self.fleet.sandboxes.get(agent_id)
        return sb is not None and not within(kernel_path, sb.path)


@dataclass
class SandboxActor(Actor):
    """Rule actions with each sandbox's dry_run."""

    fleet: Fleet | None = None

    def act(self, alert: dict) -> dict:
        agent = alert.get("agent") or {}
        sb = self.fleet.of_agent_id(agent.get("id") or "") if self.fleet is not None else None
        self.dry_run = bool(sb is not None and sb.klass.dry_run)
        return super().act(alert)


@dataclass
class PendingEnd:
    conn: object
    sandbox: Sandbox
    episode: object
    due_ns: int


@dataclass
class Daemon:
    config: DaemonConfig
    pipeline: Pipeline
    fleet: Fleet
    control: ControlServer
    state: "StateDir"
    started_ns: int = field(default_factory=time.monotonic_ns)
    pending: list[PendingEnd] = field(default_factory=list)
    refused: int = 0
    bad_requests: int = 0
    reload_requested: bool = False
    _state_saved: float = 0.0

    # ---- status records -----------------------------------------------------------

    def emit(self, status: str, agent, fields: dict, episode=None) -> None:
        """A status record; episode: the one it is about (an ended one is no longer in force)."""
        rec = status_record(self.pipeline.clock, status, agent, **fields)
        if episode is not None and rec["agent"] is not None:
            rec["agent"]["episode"] = episode.as_json()
        # The daemon's own account (sandboxes, episodes, refusals) is written with or without `events`.
        self.pipeline.emit(rec, always=True)

    # ---- start ---------------------------------------------------------------------

    def start(self) -> None:
        restored = self.state.load()
        self.fleet.restored = restored
        self.fleet.on_retire = self.state.forget
        found, parents = scan(self.fleet.mount, list(self.fleet.classes))
        fleet_from_scan(self.fleet, found, parents)
        self.emit("daemon_started", None, {
            "config": self.config.file, "pid": os.getpid(), "sandboxes": len(self.fleet.sandboxes),
            "parents": len(self.fleet.parents), "control": self.control.path,
            "restarted": bool(restored) or None,
        })
        self.pipeline.writer.flush()
        self.save_state(force=True)

    # ---- the loop ------------------------------------------------------------------

    def run(self, stop: StopFlag, duration: float | None = None) -> int:
        deadline = time.monotonic() + duration if duration else None
        while not stop_requested(self.pipeline, stop, None):
            began = time.monotonic_ns()
            n = self.pipeline.drain(0)
            self._answer_due(began - DENIAL_SKEW_NS)
            for conn, req in self.control.poll(0 if n else self._idle_wait()):
                self._handle(conn, req)
            self._log_refused()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self.save_state()
            if deadline is not None and time.monotonic() >= deadline:
                break
        return 0

    def finish(self, reason: str) -> None:
        self.pipeline.finish()
        self._answer_due(None)
        self.save_state(force=True)
        self.emit("daemon_stopped", None, {"reason": reason, "sandboxes": len(self.fleet.sandboxes)})
        self.pipeline.writer.flush()

    # ---- control requests ------------------------------------------------------------

    def _handle(self, conn, req: Request | ControlError) -> None:
        if isinstance(req, ControlError):
            self.bad_requests += 1
            self.emit("control_error", None, {"peer": conn.peer.as_json(), "error": str(req)})
            self.control.send(conn, {"ok": False, "error": str(req)})
            return
        try:
            if req.op == "ping":
                self.control.send(conn, {"ok": True})
            elif req.op == "status":
                self.control.send(conn, self.status())
            elif req.op == "begin":
                self.control.send(conn, self.begin(req))
            elif req.op == "end":
                self.end(conn, req)
            elif req.op == "subscribe":
                self.subscribe(conn, req)
        except ControlError as exc:
            self.bad_requests += 1
            self.control.send(conn, {"ok": False, "error": str(exc)})

    def _sandbox(self, req: Request) -> Sandbox:
        sb = self.fleet.find(req.sandbox)
        if sb is None:
            raise ControlError(f"field 'sandbox': no sandbox {req.sandbox!r} is watched (see agentwatch status)")
        return sb

    def begin(self, req: Request) -> dict:
        sb = self._sandbox(req)
        at = time.monotonic_ns()
        episode_id = req.episode or f"{sb.episode_id_base()}-{sb.timeline.count + 1}"
        try:
            check_id(episode_id)
            ep, ended = sb.timeline.begin(episode_id, req.labels, at)
        except EpisodeError as exc:
            raise ControlError(f"field 'episode': {exc}") from None
        clock = self.pipeline.clock
        if ended is not None:
            self.emit("episode_ended", sb.agent, {"episode_summary": ended.summary(clock), "implicit": True}, ended)
            ended.alerts = []  # nobody asked for them (no `end`); the count stays
        self.emit("episode_begun", sb.agent, {"episode_summary": ep.summary(clock)})
        self.pipeline.writer.flush()
        self.save_state(only=sb)
        return {"ok": True, "sandbox": sb.name, "episode": ep.summary(clock),
                "ended": ended.summary(clock) if ended is not None else None,
                "boundary_to_reply_ns": time.monotonic_ns() - at}

    def end(self, conn, req: Request) -> None:
        sb = self._sandbox(req)
        at = time.monotonic_ns()
        ep = sb.timeline.current
        if ep is None:
            raise ControlError(f"field 'sandbox': {sb.name} has no episode in force")
        if req.episode is not None and req.episode != ep.id:
            raise ControlError(f"field 'episode': the episode in force in {sb.name} is {ep.id!r}")
        sb.timeline.end(at)
        self.save_state(only=sb)
        self.pending.append(PendingEnd(conn, sb, ep, at + DENIAL_SKEW_NS))

    def _idle_wait(self) -> float:
        """The drain tick, or less while an `end` waits for the drain that lets it be answered."""
        if not self.pending:
            return POLL_S
        ready_at = min(p.due_ns for p in self.pending) + DENIAL_SKEW_NS  # a drain must begin past this
        return max(0.0, min(POLL_S, (ready_at - time.monotonic_ns()) / 1e9))

    def _answer_due(self, cut_ns: int | None) -> None:
        """Reply to `end`s whose boundary every record read so far has passed."""
        if not self.pending:
            return
        due = [p for p in self.pending if cut_ns is None or p.due_ns <= cut_ns]
        if not due:
            return
        self.pending = [p for p in self.pending if p not in due]
        clock = self.pipeline.clock
        for p in due:
            summary = p.episode.summary(clock)
            self.emit("episode_ended", p.sandbox.agent, {"episode_summary": summary}, p.episode)
            self.control.send(p.conn, {"ok": True, "sandbox": p.sandbox.name, "episode": summary,
                                       "alerts": p.episode.alerts})
            p.episode.alerts = []  # handed over: an ended episode keeps only its counts
        self.pipeline.writer.flush()

    def subscribe(self, conn, req: Request) -> None:
        agent_id = None
        if req.sandbox is not None:
            agent_id = self._sandbox(req).agent.id
        conn.subscription = (agent_id, req.episode)
        self.control.send(conn, {"ok": True, "subscribed": {"agent": agent_id, "episode": req.episode}})

    def status(self) -> dict:
        probes = self.pipeline.probes
        clock = self.pipeline.clock
        return {
            "ok": True,
            "daemon": {
                "pid": os.getpid(), "config": self.config.file, "control": self.control.path,
                "uptime_s": round((time.monotonic_ns() - self.started_ns) / 1e9, 3),
                "records": self.pipeline.received, "lost": probes.lost_counts(),
                "dropped_not_sandbox": self.fleet.dropped_records, "parents": len(self.fleet.parents),
                "control_refused": self.refused, "bad_requests": self.bad_requests,
                "subscribers_cut_off": self.control.cut_off,
            },
            "sandboxes": [sb.status(clock) for sb in sorted(self.fleet.sandboxes.values(), key=lambda s: s.name)],
        }

    def _log_refused(self) -> None:
        refused, self.control.refused = self.control.refused, []
        for peer in refused:
            self.refused += 1
            self.emit("control_refused", None, {"peer": peer.as_json(),
                                                "reason": "not root and not in the control group"})
            print(f"agentwatch daemon: refused a control connection from pid {peer.pid} uid {peer.uid}",
                  file=sys.stderr)
        if refused:
            self.pipeline.writer.flush()

    # ---- config reload (SIGHUP) ------------------------------------------------------

    def reload(self) -> None:
        """A new config's sandbox patterns from now on; a bad one changes nothing and is reported."""
        from .fleetconfig import ConfigError, load  # noqa: PLC0415

        try:
            new = load(self.config.file)
        except ConfigError as exc:
            print(f"agentwatch daemon: config not reloaded: {exc}", file=sys.stderr)
            self.emit("config_error", None, {"error": str(exc), "kept": self.config.file})
            self.pipeline.writer.flush()
            return
        missing = [c.policy for c in new.sandboxes if c.policy and (c.policy, c.dry_run) not in self.fleet.policies]
        if missing:
            msg = f"{self.config.file}: a reload cannot add a policy file ({missing[0]}): restart the daemon"
            print(f"agentwatch daemon: config not reloaded: {msg}", file=sys.stderr)
            self.emit("config_error", None, {"error": msg, "kept": self.config.file})
            return
        self.config = new
        self.fleet.classes = list(new.sandboxes)
        found, parents = scan(self.fleet.mount, list(self.fleet.classes))
        fleet_from_scan(self.fleet, found, parents)
        self.emit("config_reloaded", None, {"config": new.file, "sandboxes": len(self.fleet.sandboxes)})
        self.pipeline.writer.flush()

    # ---- state across restarts -------------------------------------------------------

    def save_state(self, force: bool = False, only: Sandbox | None = None) -> None:
        """Each sandbox's state in a file of its own, so that a boundary rewrites one small file.

        only: that sandbox, now (begin, end). Otherwise the sandboxes whose counts moved, at most
        every STATE_EVERY_S; force: all of them, now (start and stop).
        """
        if only is not None:
            self.state.save(only)
            return
        now = time.monotonic()
        if not force and now - self._state_saved < STATE_EVERY_S:
            return
        self._state_saved = now
        for sb in list(self.fleet.sandboxes.values()):
            if force or self.state.changed(sb):
                self.state.save(sb)


@dataclass
class StateDir:
    """What a restarted daemon needs, one JSON file per sandbox: <dir>/<cgroup id>.json.

    Only files of this boot count: cgroup ids start over at boot.
    """

    path: Path
    boot: str = field(default_factory=boot_id)
    _saved: dict = field(default_factory=dict)  # cgroup id -> the counts last written

    @staticmethod
    def _counts(sb: Sandbox) -> tuple:
        ep = sb.timeline.current
        return (sb.events, sb.alerts, sb.timeline.count, ep.id if ep else None,
                (ep.alert_count, ep.records) if ep else None)

    def changed(self, sb: Sandbox) -> bool:
        return self._saved.get(sb.cgroup_id) != self._counts(sb)

    def save(self, sb: Sandbox) -> None:
        ep = sb.timeline.current
        state = {"boot_id": self.boot, "name": sb.name, "agent": sb.agent.id, "events": sb.events,
                 "alerts": sb.alerts, "episodes": sb.timeline.count, "episode": ep.state() if ep else None}
        file = self.path / f"{sb.cgroup_id}.json"
        tmp = file.with_suffix(".tmp")
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text(json.dumps(state))
            os.replace(tmp, file)
        except OSError as exc:
            print(f"agentwatch daemon: cannot save state to {file}: {exc.strerror}", file=sys.stderr)
            return
        self._saved[sb.cgroup_id] = self._counts(sb)

    def forget(self, cgroup_id: int) -> None:
        self._saved.pop(cgroup_id, None)
        try:
            (self.path / f"{cgroup_id}.json").unlink()
        except OSError:
            pass

    def load(self) -> dict:
        """cgroup id -> saved sandbox state, of this boot only; files of another boot are removed."""
        out = {}
        try:
            files = sorted(self.path.glob("*.json"))
        except OSError:
            return out
        for f in files:
            try:
                state = json.loads(f.read_text())
                cid = int(f.stem)
            except (OSError, ValueError):
                continue
            if not isinstance(state, dict) or state.get("boot_id") != self.boot:
                f.unlink(missing_ok=True)
                continue
            out[cid] = state
        return out


def install_reload(daemon: Daemon) -> None:
    def on_hup(_sig, _frame) -> None:
        daemon.reload_requested = True

    signal.signal(signal.SIGHUP, on_hup)



def notify_ready() -> None:
    """sd_notify(READY=1) for systemd's Type=notify: one datagram to $NOTIFY_SOCKET, if it is set."""
    import socket  # noqa: PLC0415

    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(b"READY=1\nSTATUS=watching\n")
    except OSError as exc:
        print(f"agentwatch daemon: cannot notify systemd at {path!r}: {exc.strerror}", file=sys.stderr)


class DaemonSetupError(RuntimeError):
    """The daemon cannot start; one line saying why."""


def serve(config: DaemonConfig, engine, ringbuf_pages: int, protected, duration: float | None = None,
          rules=()) -> int:
    """Load everything the config asks for, adopt the sandboxes, and run until SIGTERM/SIGINT.

    Order matters: the control socket first (a second daemon fails before
    compiling), then the main BPF object, with the policy object compiling
    in a child process meanwhile (BCC 0.26 crashes when two compile in one
    process; one object serves every policy file), then the scan.
    """
    from contextlib import ExitStack  # noqa: PLC0415

    from .cgroups import CgroupError, require_mount  # noqa: PLC0415
    from .gpu import GpuMonitor  # noqa: PLC0415
    from .netscope import ScopeClassifier, ScopeConfig  # noqa: PLC0415
    from .delivery import DeliveryError, build_writer  # noqa: PLC0415
    from .probes import PolicyProbes, ProbeConfig, ProbeError, Probes  # noqa: PLC0415
    from .runtimes import DockerRuntime  # noqa: PLC0415

    try:
        mount = require_mount()
    except CgroupError as exc:
        raise DaemonSetupError(str(exc)) from None
    with ExitStack() as stack:
        if config.output == "none":
            stream = None
        elif config.output == "-":
            stream = sys.stdout.buffer
        else:
            try:
                Path(config.output).parent.mkdir(parents=True, exist_ok=True)
                stream = stack.enter_context(open(config.output, "ab"))
            except OSError as exc:
                raise DaemonSetupError(f"{config.file}: output {config.output}: {exc.strerror}") from None
        try:
            control = ControlServer(config.control.socket, config.control.gid, config.control.mode)
        except ControlError as exc:
            raise DaemonSetupError(str(exc)) from None
        except OSError as exc:
            raise DaemonSetupError(f"control socket {config.control.socket}: {exc.strerror}") from None
        stack.callback(control.shutdown)
        ahead = None
        if any(klass.policy is not None for klass in config.sandboxes):
            # One object serves every policy: it compiles in a child meanwhile (bpfobject.Ahead),
            # forked before any thread of the daemon's exists (the control server has none yet).
            try:
                ahead = PolicyProbes.compile_ahead()
            except ProbeError as exc:
                raise DaemonSetupError(f"{exc} (run `agentwatch doctor` for details)") from None
            if ahead is not None:
                stack.callback(ahead.cancel)
        probe_config = ProbeConfig(ringbuf_pages=ringbuf_pages, self_tgid=os.getpid(), cgroups=True, fleet=True,
                                   cgroups_max=config.max_sandboxes + 64)
        try:
            probes = stack.enter_context(Probes(probe_config))
            policies = {}
            for klass in config.sandboxes:
                key = (klass.policy, klass.dry_run)
                if klass.policy is None or key in policies:
                    continue
                pp = stack.enter_context(PolicyProbes(ahead))
                ahead = None  # taken: the next policy's object is the same one, cached or compiled
                pp.fill(config.policies[klass.policy].tables(), 0, audit=klass.dry_run)
                policies[key] = pp
        except ProbeError as exc:
            raise DaemonSetupError(f"{exc} (run `agentwatch doctor` for details)") from None
        probes.protect(protected())
        metrics = None
        if config.metrics is not None:
            from .metrics import Metrics  # noqa: PLC0415

            metrics = Metrics()
            try:
                metrics.serve(config.metrics)
            except OSError as exc:
                raise DaemonSetupError(f"{config.file}: metrics {config.metrics}: {exc.strerror}") from None
            stack.callback(metrics.close)
        try:
            # Records of a sandbox name their host (agent.sandbox.host); the others get this one.
            output = build_writer(stack, stream, config.format, config.sinks, host=socket.gethostname(),
                                  metrics=metrics, report=lambda line: print(f"agentwatch daemon: {line}",
                                                                             file=sys.stderr))
        except DeliveryError as exc:
            raise DaemonSetupError(f"{config.file}: sinks: {exc}") from None
        if config.alert_rate is not None or any(r.rate_limit for r in rules):
            from .ratelimit import AlertRateLimit  # noqa: PLC0415

            output = AlertRateLimit.for_rules(output, rules, config.alert_rate, metrics=metrics)
            stack.callback(output.finish)
        # Subscribers (the harness) get every alert; the rate limit is on the output (the SIEM).
        fanout = AlertFanout(output, control)
        pipeline = Pipeline(probes, fanout, show_events=config.events, gpu=GpuMonitor(probes), metrics=metrics)
        try:
            pipeline.scope = ScopeClassifier(ScopeConfig(internal=config.internal_cidrs,
                                                         allowlist=config.allow_dests))
        except ValueError as exc:
            raise DaemonSetupError(f"{config.file}: internal_cidrs / allow_dests: {exc}") from None
        pipeline.scope.annotate({"daddr": "127.0.0.1"})  # warm it (see cli._session)
        runtime = DockerRuntime(config.docker_socket)
        stack.callback(runtime.close)
        daemon: Daemon | None = None

        def emit(status: str, agent, fields: dict) -> None:
            daemon.emit(status, agent, fields)

        fleet = Fleet(probes, pipeline.agents, pipeline.table, list(config.sandboxes), mount, emit, runtime,
                      policies, dict(config.policies))
        pipeline.fleet = fleet
        if metrics is not None:
            metrics.agents_from(lambda: len(fleet.sandboxes))
        pipeline.containment = SandboxPolicies(fleet)
        pipeline.rules = SandboxJudge(engine, fleet)
        pipeline.actor = SandboxActor(members=probes.members, agent_cgroup=fleet.cgroup_of_agent,
                                      kernel_id=lambda aid: (fleet.of_agent_id(aid).agent.kernel_id
                                                             if fleet.of_agent_id(aid) else None),
                                      clock_offset_ns=pipeline.clock.offset_ns, fleet=fleet)
        pipeline.table.seed_from_proc()
        daemon = Daemon(config, pipeline, fleet, control, StateDir(Path(config.state)))
        stop = StopFlag()
        stack.callback(stop.restore)
        install_reload(daemon)
        daemon.start()
        notify_ready()
        print(f"agentwatch daemon: watching {len(fleet.sandboxes)} sandboxes "
              f"(armed in {probes.armed_seconds:.2f} s), control socket {control.path}", file=sys.stderr)
        daemon.run(stop, duration)
        daemon.finish("signal" if stop else "duration")
    return 0
