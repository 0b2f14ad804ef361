"""The daemon's sandboxes, episodes and control requests over a fake kernel: no root, no BCC.

The cgroup "mount" is a temp directory; records are built like the kernel's
(conftest.RawRecords) and fed through the real Pipeline, Fleet and Daemon.
"""

from __future__ import annotations

import os
import socket

import orjson
import pytest

from tracer import events
from tracer.control import ControlError, ControlServer, Request
from tracer.daemon import AlertFanout, Daemon, SandboxJudge, SandboxPolicies, StateDir, apply_on_alert
from tracer.fleet import Fleet, kernel_agent_id
from tracer.fleetconfig import DaemonConfig
from tracer.sandboxes import Pattern, SandboxClass
from tracer.session import Pipeline

from test_pipeline import ZERO_LOST, ListWriter

P = 5_000_000  # above PID_MAX_LIMIT: /proc knows none of these
SEC = 10**9


class FakeProbes:
    """The parts of tracer.probes.Probes the daemon uses, as dicts."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.cgroups: dict[int, int] = {}
        self.parents: set[int] = set()
        self.watched: dict[int, int] = {}
        self.forgotten: list[int] = []

    class config:
        host_wide = False

    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def lost_counts(self) -> dict[str, int]:
        return dict(ZERO_LOST)

    def watch_cgroup(self, cid: int, agent: int) -> None:
        self.cgroups[cid] = agent

    def unwatch_cgroup(self, cid: int) -> None:
        self.cgroups.pop(cid, None)

    def watch_cgroup_children(self, cid: int) -> None:
        self.parents.add(cid)

    def unwatch(self, tgid: int) -> None:
        self.forgotten.append(tgid)
        self.watched.pop(tgid, None)

    def members(self, agent: int) -> list[int]:
        return [t for t, a in self.watched.items() if a == agent]

    def agent_of_tgid(self, tgid: int) -> int:
        return self.watched.get(tgid, 0)


class AlertOnConnect:
    """A stand-in rule engine: one alert per connect record, severity from its port."""

    rules = ()

    def evaluate(self, rec: dict) -> list[dict]:
        if rec.get("type") != "connect":
            return []
        sev = "critical" if rec["network"]["dport"] == 3333 else "low"
        return [{"kind": "alert", "rule": "test-connect", "severity": sev, "time": rec["time"],
                 "agent": rec["agent"], "process": rec["process"], "action": "kill_process", "evidence": [rec]}]


@pytest.fixture
def world(tmp_path):
    mount = tmp_path / "cg"
    (mount / "fleet.slice" / "sb-a").mkdir(parents=True)
    (mount / "fleet.slice" / "sb-b").mkdir(parents=True)
    (mount / "system.slice").mkdir()
    probes, writer = FakeProbes(), ListWriter()
    control = ControlServer(str(tmp_path / "control.sock"), None, 0o600)
    fanout = AlertFanout(writer, control)
    pipe = Pipeline(probes, fanout)
    classes = [SandboxClass((Pattern.parse("fleet.slice/*"),), on_alert="rule", labels={"pool": "t"})]
    daemon = None

    def emit(status, agent, fields):
        daemon.emit(status, agent, fields)

    fleet = Fleet(probes, pipe.agents, pipe.table, classes, mount, emit)
    pipe.fleet = fleet
    pipe.containment = SandboxPolicies(fleet)
    pipe.rules = SandboxJudge(AlertOnConnect(), fleet)
    config = DaemonConfig(file="test.yaml", sandboxes=tuple(classes), state=str(tmp_path / "state"))
    daemon = Daemon(config, pipe, fleet, control, StateDir(tmp_path / "state"))
    daemon.start()
    yield daemon
    control.shutdown()


def cid(daemon, name: str) -> int:
    return daemon.fleet.find(name).cgroup_id


def connect(raw, daemon, name: str, ktime_ns: int, dport: int = 80, pid: int = P + 1) -> bytes:
    kid = kernel_agent_id(cid(daemon, name))
    return raw.connect(family=2, daddr=bytes([198, 18, 0, 1]), dport=dport, pid=pid, ppid=P, agent_id=kid,
                       comm=b"worker", ktime_ns=ktime_ns, start_ns=SEC)


def feed(daemon, *records: bytes) -> list[dict]:
    w = daemon.pipeline.writer.writer
    before = len(w.records)
    daemon.pipeline.probes.batches.append(list(records))
    daemon.pipeline.drain(0)
    return w.records[before:]


def test_sandboxes_found_at_start_are_agents_watched_by_cgroup_id(world):
    fleet = world.fleet
    assert sorted(s.name for s in fleet.sandboxes.values()) == ["sb-a", "sb-b"]
    sb = fleet.find("sb-a")
    assert sb.agent.kernel_id == kernel_agent_id(sb.cgroup_id)
    assert world.pipeline.probes.cgroups[sb.cgroup_id] == sb.agent.kernel_id
    assert sb.agent.id == f"sandbox-{sb.cgroup_id}" and sb.agent.labels == {"pool": "t"}
    # The parents whose new children the kernel attributes at birth: the root and fleet.slice.
    mount = fleet.mount
    assert world.pipeline.probes.parents == {os.stat(mount).st_ino, os.stat(mount / "fleet.slice").st_ino}
    adopted = [r for r in world.pipeline.writer.writer.records if r.get("status") == "sandbox_adopted"]
    assert sorted(r["agent"]["sandbox"]["name"] for r in adopted) == ["sb-a", "sb-b"]
    assert fleet.find(sb.agent.id) is sb and fleet.find("/fleet.slice/sb-a") is sb and fleet.find("nope") is None


def test_a_boundary_splits_records_by_kernel_time_even_when_both_are_read_after_it(world, raw):
    reply = world.begin(Request("begin", "sb-a", "ep-1", {"task": "1"}))
    assert reply["ok"] and reply["episode"]["id"] == "ep-1" and reply["ended"] is None
    t1 = world.fleet.find("sb-a").timeline.current.begin_ns
    world.begin(Request("begin", "sb-a", "ep-2", {"task": "2"}))
    t2 = world.fleet.find("sb-a").timeline.current.begin_ns
    # Both connects are read now, after the second boundary; one was made before it.
    recs = feed(world, connect(raw, world, "sb-a", t2 - 1000), connect(raw, world, "sb-a", t2 + 1000),
                connect(raw, world, "sb-a", t1 - 1000), connect(raw, world, "sb-b", t2 + 5))
    conns = [r for r in recs if r.get("type") == "connect"]
    assert [(r["agent"]["sandbox"]["name"], (r["agent"]["episode"] or {}).get("id")) for r in conns] == [
        ("sb-a", "ep-1"), ("sb-a", "ep-2"), ("sb-a", None), ("sb-b", None)]
    assert conns[1]["agent"]["episode"]["labels"] == {"task": "2"}
    alerts = [r for r in recs if r["kind"] == "alert"]
    assert [(a["agent"]["sandbox"]["name"], (a["agent"]["episode"] or {}).get("id")) for a in alerts] == [
        ("sb-a", "ep-1"), ("sb-a", "ep-2"), ("sb-a", None), ("sb-b", None)]
    sb = world.fleet.find("sb-a")
    assert sb.timeline.find("ep-1").alert_count == 1 and sb.timeline.find("ep-2").alert_count == 1
    assert sb.alerts == 3 and world.fleet.find("sb-b").alerts == 1


def test_end_is_answered_once_a_drain_began_past_the_boundary_with_the_episode_s_alerts(world, raw, tmp_path):
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "control.sock"))
    client.settimeout(2)
    world.control.poll(0.1)
    [conn] = world.control.conns.values()
    world.begin(Request("begin", "sb-b", None, {}))  # called directly: its reply is returned, not sent
    world.end(conn, Request("end", "sb-b"))
    ep = world.fleet.find("sb-b").timeline.find("sb-b-1")
    assert ep is not None and ep.end_ns is not None
    late = connect(raw, world, "sb-b", ep.end_ns - 10, dport=3333)  # made before the end, read after it
    world._answer_due(ep.end_ns - 1)  # a drain that began before the boundary: no answer yet
    assert world.pending
    feed(world, late)
    world._answer_due(ep.end_ns + 2 * 10**6)
    assert not world.pending
    reply = orjson.loads(client.recv(1 << 20).split(b"\n")[0])
    assert reply["ok"] and reply["episode"]["id"] == "sb-b-1" and reply["episode"]["alerts"] == 1
    assert [a["rule"] for a in reply["alerts"]] == ["test-connect"]
    ended = [r for r in world.pipeline.writer.writer.records if r.get("status") == "episode_ended"]
    assert ended[-1]["agent"]["episode"]["id"] == "sb-b-1"  # the record names the episode that ended
    client.close()


def test_control_errors_are_answered_and_the_daemon_goes_on(world, tmp_path):
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "control.sock"))
    client.settimeout(2)
    client.sendall(b'{"op": "begin"}\nnot json\n{"op":"end","sandbox":"ghost"}\n{"op":"ping"}\n')
    got = []
    for _ in range(20):
        for conn, req in world.control.poll(0.05):
            world._handle(conn, req)
            got.append(req)
        if len(got) >= 4:
            break
    lines = [orjson.loads(x) for x in client.recv(65536).splitlines()]
    assert [x["ok"] for x in lines] == [False, False, False, True]
    assert lines[0]["error"].startswith("field 'sandbox': begin needs")
    assert lines[1]["error"].startswith("not JSON")
    assert "no sandbox 'ghost'" in lines[2]["error"]
    logged = [r for r in world.pipeline.writer.writer.records if r.get("status") == "control_error"]
    assert len(logged) == 2 and logged[0]["peer"]["pid"] == os.getpid()
    assert world.bad_requests == 3
    client.close()


def test_new_cgroups_sandbox_parent_or_neither(world, raw):
    fleet, probes = world.fleet, world.pipeline.probes
    mount = fleet.mount
    (mount / "fleet.slice" / "sb-new").mkdir()
    new_id = os.stat(mount / "fleet.slice" / "sb-new").st_ino
    kid = kernel_agent_id(new_id)
    # Attributed at birth: the exec after the mkdir already carries the new agent id.
    recs = feed(world,
                raw.cgroup(op=events.CGROUP_MKDIR, cgroup_id=new_id, path="/fleet.slice/sb-new",
                           flags=events.CGROUP_ATTRIBUTED, ktime_ns=5 * SEC),
                raw.exec(filename=b"/bin/true", argv=[b"true"], pid=P + 7, ppid=P, agent_id=kid, comm=b"true",
                         ktime_ns=5 * SEC + 1))
    assert [r.get("status") or r.get("type") for r in recs] == ["sandbox_added", "exec"]
    assert recs[1]["agent"]["sandbox"]["name"] == "sb-new"
    # A cgroup the kernel attributed (its parent is watched) that is no sandbox: undone, its records dropped.
    recs = feed(world,
                raw.cgroup(op=events.CGROUP_MKDIR, cgroup_id=77, path="/system.slice", flags=events.CGROUP_ATTRIBUTED),
                raw.exec(filename=b"/bin/x", argv=[b"x"], pid=P + 8, agent_id=77, comm=b"x"))
    assert recs == [] and 77 not in probes.cgroups and P + 8 in probes.forgotten
    assert fleet.dropped_records == 1
    # A new parent: its children will be attributed at birth.
    feed(world, raw.cgroup(op=events.CGROUP_MKDIR, cgroup_id=88, path="/other.slice"))
    assert 88 not in probes.parents  # no pattern reaches below other.slice
    # Below a sandbox: part of it, no new agent.
    feed(world, raw.cgroup(op=events.CGROUP_MKDIR, cgroup_id=99, path="/fleet.slice/sb-new/inner"))
    assert kernel_agent_id(99) not in fleet.sandboxes
    # Gone: a removed record, and a record that arrives after the rmdir still finds its agent.
    recs = feed(world, raw.cgroup(op=events.CGROUP_RMDIR, cgroup_id=new_id, path="/fleet.slice/sb-new"),
                raw.conn(state=events.CONN_CLOSED, family=2, daddr=bytes([1, 1, 1, 1]), dport=80, pid=P + 7,
                         agent_id=kid, comm=b"true"))
    assert recs[0]["status"] == "sandbox_removed" and recs[0]["agent"]["sandbox"]["name"] == "sb-new"
    assert recs[1]["type"] == "connection" and recs[1]["agent"]["sandbox"]["name"] == "sb-new"
    assert fleet.find("sb-new") is None and new_id not in probes.cgroups


def test_the_daemon_s_own_records_are_written_without_events(world, tmp_path):
    world.pipeline.show_events = False
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(tmp_path / "control.sock"))
    client.sendall(b"nonsense\n")
    for _ in range(20):
        for conn, req in world.control.poll(0.05):
            world._handle(conn, req)
        if world.bad_requests:
            break
    assert [r["status"] for r in world.pipeline.writer.writer.records if r.get("kind") == "status"][-1] == "control_error"
    client.close()


def test_on_alert_overrides_the_rule_action_at_and_above_its_severity():
    def alert(sev):
        return {"severity": sev, "action": "kill_process"}

    for on_alert, sev, want in [("rule", "low", "kill_process"), ("report", "critical", "none"),
                                ("freeze_agent", "critical", "freeze_agent"), ("freeze_agent", "medium", "none"),
                                ("kill_agent", "high", "kill_agent")]:
        a = alert(sev)
        apply_on_alert(a, on_alert, "high")
        assert a["action"] == want, (on_alert, sev)


def test_state_survives_a_restart_without_double_counting(world, raw, tmp_path):
    world.begin(Request("begin", "sb-a", "ep-7", {"k": "v"}))
    t = world.fleet.find("sb-a").timeline.current.begin_ns
    feed(world, connect(raw, world, "sb-a", t + 10))
    world.save_state(force=True)
    before = world.fleet.find("sb-a")
    # A second daemon over the same state file, as after a restart.
    probes, writer = FakeProbes(), ListWriter()
    pipe = Pipeline(probes, AlertFanout(writer))
    d2 = None
    fleet = Fleet(probes, pipe.agents, pipe.table, list(world.fleet.classes), world.fleet.mount,
                  lambda s, a, f: d2.emit(s, a, f))
    pipe.fleet, pipe.rules = fleet, SandboxJudge(AlertOnConnect(), fleet)
    control = ControlServer(str(tmp_path / "control2.sock"), None, 0o600)
    d2 = Daemon(world.config, pipe, fleet, control, StateDir(tmp_path / "state"))
    d2.start()
    after = fleet.find("sb-a")
    assert after.agent.id == before.agent.id and after.cgroup_id == before.cgroup_id
    assert (after.events, after.alerts) == (before.events, before.alerts) == (1, 1)
    assert after.timeline.current.id == "ep-7" and after.timeline.current.alert_count == 1
    adopted = [r for r in writer.records if r.get("status") == "sandbox_adopted"]
    assert all(r["restarted"] for r in adopted)
    assert next(r for r in adopted if r["agent"]["sandbox"]["name"] == "sb-a")["agent"]["episode"]["id"] == "ep-7"
    control.shutdown()


def test_a_second_daemon_cannot_take_a_live_socket(world, tmp_path):
    with pytest.raises(ControlError, match="another agentwatch daemon"):
        ControlServer(str(tmp_path / "control.sock"))


def test_ready_is_told_to_systemd_through_notify_socket(tmp_path, monkeypatch):
    from tracer.daemon import notify_ready

    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notify_ready()
    assert s.recv(100).split(b"\n")[0] == b"READY=1"
    s.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    notify_ready()  # not under systemd: nothing to do, nothing raised
