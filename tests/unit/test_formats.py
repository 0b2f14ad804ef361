"""tracer.ecs and tracer.ocsf: every kind of record, converted and validated against the standards.

The records are real ones: raw kernel records (conftest.RawRecords) through
tracer.session.Pipeline with the default rules, plus what tracer.records
builds for GPU use and status. Each is checked against docs/event.schema.json
first. Then:

- ECS: every field outside agentwatch.* must be defined in ECS's own
  generated/ecs/ecs_flat.yml (tests/data/ecs/, vendored from elastic/ecs),
  with a value of its type, an array where ECS normalizes to an array, and
  event.kind/category/type/outcome among ECS's allowed values.
- OCSF: the JSON Schema of the event's class with the profiles it declares,
  generated from the schema.ocsf.io export that ocsf-json-schema bundles
  (required attributes, types, enums, no deprecated attribute), plus the
  uid arithmetic and captions no JSON Schema states.
"""

from __future__ import annotations

import sys

import copy
import ctypes as ct
import ipaddress
import json
import re
import timeit
from functools import lru_cache
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from tracer import ecs, events, gpu, ocsf, records
from tracer.actions import Actor
from tracer.agents import Agent
from tracer.episodes import Timeline
from tracer.proctree import start_ticks_from_ns
from tracer.rules import Engine, load
from tracer.session import Pipeline

from test_dns import query as dns_query
from test_pipeline import CHILD, CHILD_START, GRANDCHILD, P, ROOT, ROOT_START, SEC, FakeProbes, ListWriter

REPO = Path(__file__).resolve().parents[2]
RECORD_SCHEMA = json.loads((REPO / "docs" / "event.schema.json").read_text())
ECS_FLAT = yaml.load((REPO / "tests" / "data" / "ecs" / "ecs_flat.yml").read_text(), Loader=yaml.CSafeLoader)
OCSF_RAW = get_ocsf_schema(ocsf.OCSF_VERSION)
OCSF_SCHEMA = OcsfJsonSchemaEmbedded(OCSF_RAW)


# --------------------------------------------------------------------------
# Real records of every kind.


class Denials:
    """The containment a Pipeline asks about denials (tracer.containment.Containment's part)."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def dry_run_for(self, ev) -> bool:
        return False

    def poll(self) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def name_rule(self, record: dict, ev) -> None:
        record["policy"].update(name="rl-sandbox", rule="deny-metadata")

    def leaves_agent(self, path: str, agent_id: int) -> bool:
        return True


def _tamper(raw, *, kind: int, target_pid: int = 0, arg: int = 0, result: int = 0, protected: int = 0,
            path: bytes = b"", **hdr) -> bytes:
    r = events.RawTamper()
    r.hdr = raw.header(events.EVENT_TAMPER, size=ct.sizeof(r), **hdr)
    r.kind, r.target_pid, r.arg, r.result, r.protected = kind, target_pid, arg, result, protected
    r.path_len = len(path)
    r.path = path
    return bytes(r)


def _gpu_milestone(raw, milestone: str, **hdr) -> bytes:
    r = events.RawGpu()
    r.hdr = raw.header(events.EVENT_GPU, size=ct.sizeof(r), **hdr)
    r.kind = gpu.KIND_MILESTONE
    r.fd = 5
    r.devclass = next(c for c, name in gpu.CLASS_NAMES.items() if name == "nvidia-uvm")
    r.op = next(o for o, name in gpu.OP_NAMES.items() if name == "compute")
    r.detail = 0xC36F
    r.milestone = next(b for b, name in gpu.MILESTONE_NAMES.items() if name == milestone)
    r.value = 0
    return bytes(r)


def _hdr(pid: int, start_ns: int, comm: bytes, ktime_s: float, ppid: int, agent_id: int = 1) -> dict:
    return dict(pid=pid, ppid=ppid, comm=comm, agent_id=agent_id, start_ns=start_ns, ktime_ns=int(ktime_s * SEC))


def _pipeline() -> Pipeline:
    probes, writer = FakeProbes(), ListWriter()
    pipe = Pipeline(probes, writer)
    pipe.rules = Engine(load().rules)
    pipe.containment = Denials()
    pipe.agent = pipe.agents.new(ROOT, {"task": "42", "com.example.team": "blue"}, agent_id="agent-formats")
    root = pipe.table.lookup(ROOT, start_ticks_from_ns(ROOT_START), ppid=P, comm=b"agent")
    pipe.table.new_image(root, b"agent", b"/usr/bin/agent", [b"agent", b"--run"], False)
    root.agent_id = 1
    probes.watch(ROOT, 1)
    pipe.actor = Actor(members=lambda kid: [], agent_cgroup=lambda kid: None, kernel_id=lambda aid: 1,
                       clock_offset_ns=pipe.clock.offset_ns, protected=set(), kill=lambda pid, ticks: None)
    return pipe


def _feed(pipe: Pipeline, *raws: bytes, denials: tuple[bytes, ...] = ()) -> None:
    pipe.probes.batches.append(list(raws))
    if denials:
        pipe.containment.batches.append(list(denials))
    pipe.drain(0)


def _session_records(raw) -> tuple[list[dict], Pipeline]:
    """One agent's session: every event type, the alerts they raise, lost events."""
    pipe = _pipeline()
    root = lambda t, comm=b"agent": _hdr(ROOT, ROOT_START, comm, t, P)  # noqa: E731
    child = lambda t, comm=b"agent": _hdr(CHILD, CHILD_START, comm, t, ROOT)  # noqa: E731
    shell_start = 102 * SEC
    shell = lambda t, comm=b"bash": _hdr(GRANDCHILD, shell_start, comm, t, CHILD)  # noqa: E731
    pool, metadata = bytes([198, 51, 100, 7]), bytes([169, 254, 169, 254])
    stratum = b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4x","pass":"x","agent":"XMRig/6.21.0"}}\n'
    _feed(
        pipe,
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, **root(10)),
        raw.exec(filename=b"/usr/bin/ssh", argv=[b"ssh", b"-N", b"-R", b"8080:localhost:80", b"user@198.51.100.7"],
                 **child(11, b"ssh")),
        raw.connect(family=2, daddr=pool, dport=22, retval=-115, sock_cookie=77, **child(12, b"ssh")),
        raw.conn(state=events.CONN_ESTABLISHED, family=2, daddr=pool, dport=22, saddr=bytes([10, 0, 0, 5]),
                 sport=40000, sock_cookie=77, **child(12.1, b"ssh")),
        raw.conn(state=events.CONN_CLOSED, family=2, daddr=pool, dport=22, saddr=bytes([10, 0, 0, 5]),
                 sport=40000, duration_ns=1_500_000_000, sock_cookie=77, **child(13.6, b"ssh")),
        raw.exec(filename=b"/nope", argv=[b"/nope", b"--x"], retval=-2, **child(14, b"ssh")),
        raw.connect(family=10, daddr=bytes.fromhex("20010db8000000000000000000000001"), dport=443,
                    saddr=bytes.fromhex("20010db8000000000000000000000002"), sport=50000, retval=-111,
                    **root(15)),
        raw.conn(state=events.CONN_FAILED, family=2, daddr=pool, dport=8443, sock_cookie=78, **root(15.5)),
        raw.connect(family=2, daddr=metadata, dport=80, retval=0, **root(16)),
        raw.send(family=2, daddr=bytes([8, 8, 8, 8]), dport=53, protocol=17, sock_type=2, sport=53000,
                 data=dns_query("Pool.Minexmr.com", 16), **root(17)),
        raw.send(family=2, daddr=pool, dport=3333, data=stratum, total=400, **root(18)),
        _tamper(raw, kind=events.TAMPER_SIGNAL, target_pid=4_999_000, arg=15, protected=events.PROTECT_SELF,
                **root(19)),
        _tamper(raw, kind=events.TAMPER_PTRACE, target_pid=4_999_001, arg=16, **root(19.1)),
        _tamper(raw, kind=events.TAMPER_CGROUP, arg=2, path=b"/elsewhere.slice", **root(19.2)),
        _tamper(raw, kind=events.TAMPER_BPF, arg=5, **root(19.3)),
        raw.file(op=events.FILE_OPEN, path=b".bashrc", dir=b"/home/dev", open_flags=0o2101, result=3, **root(19.4)),
        raw.file(op=events.FILE_FINIT_MODULE, dir=b"/tmp/rk.ko", dirfd=3, result=-1, **root(19.5)),
        raw.fork(child_pid=GRANDCHILD, child_agent_id=1, child_start_ns=shell_start, **child(20)),
        raw.connect(family=2, daddr=pool, dport=4444, retval=0, **shell(21)),
        raw.exec(filename=b"/bin/bash", argv=[b"bash", b"-i"], **shell(21.001)),
        raw.exit(exit_code=9, **shell(22)),  # killed by SIGKILL
        denials=(raw.block(daddr=metadata, dport=80, **child(16.5)),),
    )
    _feed(pipe, raw.exit(exit_code=1 << 8, **child(23, b"ssh")))
    pipe.probes.lost["exec"] = 3
    pipe.probes.lost["connect"] = 1
    pipe.report_lost()
    return pipe.writer.records, pipe


def _gpu_and_status_records(raw, pipe: Pipeline) -> list[dict]:
    proc, agent = pipe.table.get(ROOT), pipe.agent
    out = [records.event_record(pipe.clock, events.decode(_gpu_milestone(raw, m, **_hdr(ROOT, ROOT_START, b"agent",
                                                                                      30 + i, P))), proc, agent)
           for i, m in enumerate(("open", "compute"))]
    usage = gpu.GpuUsage(ROOT, ioctls={"nvidiactl.compute": 3, "nvidia-uvm.mem": 2}, mem_bytes=1 << 20,
                         nvml={"gpus": [0], "sm_util": 97, "mem_util": 40, "mem_bytes": 1 << 30})
    out.append(records.gpu_usage_record(pipe.clock, proc, agent, usage.as_json(1.0, {"nvidiactl.compute": 10})))
    clock = pipe.clock
    out += [
        records.status_record(clock, "agent_started", agent, argv=["agent", "--run"]),
        records.status_record(clock, "stopped", agent, signal=15, survivors=[{"pid": CHILD, "comm": "ssh"}]),
        records.status_record(clock, "agent_finished", agent, exit_code=0),
        records.status_record(clock, "watching", None, pids=[], host_wide=True),
        records.status_record(clock, "daemon_started", None, config="/etc/agentwatch/agentwatch.yaml", pid=1234,
                              sandboxes=2, parents=["/system.slice"], control="/run/agentwatch/control.sock",
                              restarted=False),
        records.status_record(clock, "config_error", None, error="agentwatch.yaml:3: sandboxes: not a list"),
        records.status_record(clock, "control_refused", None, peer={"pid": 77, "uid": 1000, "gid": 1000}),
    ]
    return out


def _fleet_records(raw) -> list[dict]:
    """The daemon's view: a Docker sandbox in an episode, a pod's container between episodes."""
    pipe = _pipeline()
    timeline = Timeline()
    timeline.begin("rollout-7:3", {"task": "swe-123", "step": "4"}, at_ns=1)
    docker = pipe.agents.add(Agent(
        "sandbox-4242", 2, P + 50, {"pool": "rollout", "com.docker.compose.project": "rl"},
        {"name": "rollout-7", "cgroup": "/system.slice/docker-0123456789ab.scope", "cgroup_id": 4242,
         "runtime": "docker", "host": "worker-3", "container_id": "0123456789ab" * 5 + "cdef",
         "image": "python:3.12-slim"},
        timeline))
    pod = pipe.agents.add(Agent(
        "sandbox-4343", 3, None, {"pool": "k8s"},
        {"name": "pod-8c1d2e3f/0a1b2c3d4e5f", "cgroup": "/kubepods.slice/kubepods-pod8c1d.slice/cri-containerd-0a1b.scope",
         "cgroup_id": 4343, "runtime": "kubernetes", "host": "worker-3",
         "pod_uid": "8c1d2e3f-1111-2222-3333-444455556666", "container_id": "0a1b2c3d4e5f"},
        Timeline()))
    _feed(
        pipe,
        raw.exec(filename=b"/usr/bin/python3", argv=[b"python3", b"train.py"],
                 **_hdr(P + 50, SEC, b"python3", 40, P, agent_id=2)),
        raw.connect(family=2, daddr=bytes([169, 254, 169, 254]), dport=80, **_hdr(P + 50, SEC, b"python3", 41, P,
                                                                                   agent_id=2)),
        raw.connect(family=2, daddr=bytes([10, 1, 2, 3]), dport=8080, retval=-115,
                    **_hdr(P + 60, SEC, b"node", 42, P, agent_id=3)),
    )
    clock = pipe.clock
    summary = {"id": "rollout-7:3", "labels": {"task": "swe-123"}, "alerts": 1, "records": 2,
               "began": clock.rfc3339(1), "ended": None}
    pipe.writer.records += [
        records.status_record(clock, "sandbox_added", docker, pids=[P + 50], policy=None, restarted=False),
        records.status_record(clock, "episode_begun", docker, episode_summary=summary),
        records.status_record(clock, "sandbox_removed", pod, events=1, alerts=0, episodes=0, episode_ended=None),
    ]
    return pipe.writer.records


def _pipe_link_records(session: list[dict]) -> list[dict]:
    """A pipe_link as tracer/flows.py writes it, from two real processes joined by a real pipe (the
    session's records have made-up pids, so /proc has nothing to link for them)."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from tracer.flows import FlowTracker  # noqa: PLC0415
    from tracer.proctree import Process, read_stat  # noqa: PLC0415

    connect = next(r for r in session if r.get("type") == "connect" and r["network"].get("scope") == "external")
    r, w = os.pipe()
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    nc = subprocess.Popen(sleep, stdout=w)
    sh = subprocess.Popen(sleep, stdin=r)
    os.close(r), os.close(w)
    try:
        procs = [Process(p.pid, read_stat(p.pid).start_ticks, os.getpid(), comm=comm, exe=exe, argv=[exe], agent_id=1)
                 for p, comm, exe in ((nc, b"nc", b"/usr/bin/nc"), (sh, b"sh", b"/bin/sh"))]
        flows = FlowTracker()
        flows.observe({**connect, "type": "exec", "exec": {"result": "ok"}}, procs[1])
        links = flows.observe(connect, procs[0])
    finally:
        for p in (nc, sh):
            p.kill()
            p.wait()
    assert len(links) == 1
    return links


@lru_cache(maxsize=1)
def all_records(raw) -> tuple[dict, ...]:
    """Every kind of record; raw is conftest.RawRecords (the `raw` fixture)."""
    session, pipe = _session_records(raw)
    return tuple(session + _gpu_and_status_records(raw, pipe) + _fleet_records(raw) + _pipe_link_records(session))


def _shape(rec: dict) -> str:
    if rec["kind"] == "event":
        return rec["type"]
    return rec["status"] if rec["kind"] == "status" else f"alert:{rec['rule']}"


@pytest.fixture
def recs(raw) -> tuple[dict, ...]:
    return all_records(raw)  # built once


def test_the_records_are_every_kind_and_valid(recs):
    for rec in recs:
        jsonschema.validate(rec, RECORD_SCHEMA)
    shapes = {_shape(r) for r in recs}
    event_types = RECORD_SCHEMA["$defs"]["process_event"]["properties"]["type"]["enum"] + ["lost"]
    assert set(event_types) <= shapes, set(event_types) - shapes
    alerts = [r for r in recs if r["kind"] == "alert"]
    assert {"alert:ssh-remote-forward", "alert:cloud-metadata-access", "alert:stratum-protocol",
            "alert:agentwatch-signalled", "alert:egress-policy", "alert:reverse-shell-connect-then-exec"} <= shapes
    assert any("." in t for a in alerts for t in a["mitre"])  # a sub-technique (T1552.005)
    assert any(len(a["evidence"]) > 1 for a in alerts)  # a sequence
    assert any(a.get("action_result") == "killed" for a in alerts)
    assert any(a.get("action") == "blocked" for a in alerts)
    fleet = [r for r in recs if (r.get("agent") or {}).get("sandbox")]
    assert any(r["agent"].get("episode") for r in fleet) and any(r["agent"].get("episode") is None for r in fleet)
    assert {"docker", "kubernetes"} <= {r["agent"]["sandbox"]["runtime"] for r in fleet}
    assert {r["connection"]["state"] for r in recs if r.get("type") == "connection"} == {
        "established", "closed", "failed"}
    assert {r["gpu"]["event"] for r in recs if r.get("type") == "gpu"} == {"milestone", "usage"}
    assert {r["tamper"]["kind"] for r in recs if r.get("type") == "tamper"} == {"signal", "ptrace", "cgroup", "bpf", "write",
                                                                                   "module"}


# --------------------------------------------------------------------------
# ECS: against ECS's own field definitions.

_TEXT = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text"}
_INTS = {"long", "integer", "short", "byte", "unsigned_long"}
_FLOATS = {"float", "double", "half_float", "scaled_float"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_CONTAINERS = {"object", "flattened", "nested"}


def _ecs_leaves(doc: dict, prefix: str = ""):
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name == "agentwatch":
            continue  # the custom namespace: ECS says nothing about it
        field = ECS_FLAT.get(name)
        if isinstance(value, dict) and (field is None or field["type"] not in _CONTAINERS):
            if not value:
                yield name, value
            yield from _ecs_leaves(value, name + ".")
        else:
            yield name, value


def _value_ok(field: dict, value) -> bool:
    t = field["type"]
    if t in _TEXT:
        return isinstance(value, str)
    if t in _INTS:
        return isinstance(value, int) and not isinstance(value, bool)
    if t in _FLOATS:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "ip":
        try:
            ipaddress.ip_address(value)
        except (ValueError, TypeError):
            return False
        return True
    if t == "date":
        return isinstance(value, str) and bool(_DATE.match(value))
    if t == "object":
        if not isinstance(value, dict):
            return False
        if field.get("object_type") == "keyword":  # labels: flat keyword values, no object paths in the keys
            return all(isinstance(k, str) and "." not in k and isinstance(v, str) for k, v in value.items())
        return True
    if t == "flattened":
        return isinstance(value, dict)
    if t == "nested":
        return isinstance(value, dict)
    if t == "geo_point":
        return isinstance(value, dict) and {"lat", "lon"} <= set(value)
    return False


def ecs_errors(doc: dict) -> list[str]:
    """Every way doc departs from ECS's definitions (generated/ecs/ecs_flat.yml)."""
    errors = []
    if "agentwatch" in doc and not isinstance(doc["agentwatch"], dict):
        errors.append("agentwatch: not an object")
    seen = {}
    for name, value in _ecs_leaves(doc):
        seen[name] = value
        field = ECS_FLAT.get(name)
        if field is None:
            errors.append(f"{name}: not an ECS field (custom fields belong under agentwatch.*)")
            continue
        if "array" in field.get("normalize", []):
            if not isinstance(value, list) or not value:
                errors.append(f"{name}: ECS normalizes it to an array, got {value!r}")
                continue
            items = value
        else:
            if isinstance(value, list):
                errors.append(f"{name}: not an array in ECS, got {value!r}")
                continue
            items = [value]
        for item in items:
            if not _value_ok(field, item):
                errors.append(f"{name}: {item!r} is not a valid {field['type']}")
            allowed = field.get("allowed_values")
            if allowed and item not in {a["name"] for a in allowed}:
                errors.append(f"{name}: {item!r} is not among ECS's allowed values")
    for name, field in ECS_FLAT.items():
        if field.get("required") and name not in seen:
            errors.append(f"{name}: required by ECS, missing")
    cats = seen.get("event.category") or []
    if isinstance(cats, list) and cats:
        expected = set()
        for a in ECS_FLAT["event.category"]["allowed_values"]:
            if a["name"] in cats:
                expected |= set(a.get("expected_event_types", []))
        for t in seen.get("event.type") or []:
            if t not in expected:
                errors.append(f"event.type: {t!r} is not expected for event.category {cats}")
    return errors


def test_ecs_version_is_the_vendored_definitions():
    versions = {f.get("version") for f in ECS_FLAT.values()} - {None}
    readme = (REPO / "tests" / "data" / "ecs" / "README.md").read_text()
    assert f"v{ecs.ECS_VERSION}" in readme
    assert ECS_FLAT["ecs.version"]["type"] == "keyword"
    assert not versions or versions == {ecs.ECS_VERSION}


def test_every_record_converts_to_valid_ecs(recs):
    for rec in recs:
        doc = ecs._convert(rec, None)  # the specific mapping, not the fallback
        assert ecs.to_ecs(rec) == doc
        assert ecs_errors(doc) == [], (_shape(rec), ecs_errors(doc))
        assert doc["ecs"]["version"] == ecs.ECS_VERSION
        assert doc["@timestamp"] == rec["time"]
        assert doc["event"]["kind"] == ("alert" if rec["kind"] == "alert" else "event")
        assert doc["event"]["module"] == "agentwatch"
        assert "agent" not in doc  # ECS's agent is the shipper; the AI agent is agentwatch.agent


def test_ecs_fields(recs):
    by = {}
    for rec in recs:
        by.setdefault(_shape(rec), []).append((rec, ecs.to_ecs(rec, host="worker-9")))
    rec, doc = by["exec"][0]
    p = rec["process"]
    assert doc["event"]["category"] == ["process"] and doc["event"]["type"] == ["start"]
    assert doc["event"]["outcome"] == "success"
    assert doc["process"]["pid"] == p["pid"] and doc["process"]["entity_id"] == p["key"]
    assert doc["process"]["args"] == p["argv"] and doc["process"]["args_count"] == len(p["argv"])
    assert doc["process"]["command_line"] == " ".join(p["argv"])
    assert doc["process"]["executable"] == "/usr/bin/ssh" and doc["process"]["user"] == {"id": "1000"}
    assert doc["process"]["parent"] == {"pid": ROOT, "name": "agent", "executable": "/usr/bin/agent"}
    assert doc["labels"] == {"task": "42", "com_example_team": "blue"}
    assert doc["agentwatch"]["agent"]["labels"] == {"task": "42", "com.example.team": "blue"}
    assert doc["host"] == {"hostname": "worker-9", "name": "worker-9"}
    failed = by["exec"][1][1]
    assert failed["event"]["outcome"] == "failure" and failed["agentwatch"]["exec"]["result"] == "ENOENT"

    fork_rec, fork = by["fork"][0]
    assert fork["process"]["pid"] == fork_rec["child"]["pid"]
    assert fork["process"]["entity_id"] == fork_rec["child"]["key"]
    assert fork["process"]["parent"]["pid"] == fork_rec["process"]["pid"]

    shell_exit = next(d for r, d in by["exit"] if r["signal"] == 9)
    assert shell_exit["event"]["type"] == ["end"] and shell_exit["event"]["outcome"] == "failure"
    assert shell_exit["agentwatch"]["exit"] == {"signal": 9}
    ancestry = shell_exit["agentwatch"]["process"]["ancestry"]
    assert shell_exit["process"]["parent"]["pid"] == CHILD and [a["pid"] for a in ancestry] == [ROOT]

    c = next(d for r, d in by["connect"] if r["network"]["dport"] == 22)
    assert c["destination"] == {"address": "198.51.100.7", "ip": "198.51.100.7", "port": 22}
    assert c["network"] == {"transport": "tcp", "iana_number": "6", "type": "ipv4", "direction": "egress"}
    assert c["event"]["outcome"] == "unknown"  # EINPROGRESS
    assert c["agentwatch"]["network"]["result"] == "EINPROGRESS"
    v6 = next(d for r, d in by["connect"] if r["network"]["family"] == "ipv6")
    assert v6["source"]["ip"] == "2001:db8::2" and v6["network"]["type"] == "ipv6"

    closed = next(d for r, d in by["connection"] if r["connection"]["state"] == "closed")
    assert closed["event"]["type"] == ["connection", "end"] and closed["event"]["duration"] == 1_500_000_000

    dns = by["dns"][0][1]
    assert dns["dns"] == {"type": "query", "question": {"name": "pool.minexmr.com", "type": "TXT"}}
    assert dns["network"]["protocol"] == "dns" and dns["network"]["transport"] == "udp"

    send = next(d for r, d in by["send"] if r["network"]["dport"] == 3333)
    assert send["agentwatch"]["payload"]["text"].startswith('{"id":1')

    blocked = by["blocked"][0][1]
    assert blocked["event"]["type"] == ["connection", "denied"]
    assert blocked["rule"] == {"name": "deny-metadata", "ruleset": "rl-sandbox"}

    lost = by["lost"][0][1]
    assert lost["agentwatch"]["lost"]["exec"] == 3 and lost["log"]["level"] == "warning"

    st = by["daemon_started"][0][1]
    assert st["agentwatch"]["details"]["pid"] == 1234 and st["event"]["action"] == "daemon_started"


def test_ecs_alerts(recs):
    alerts = {r["rule"]: ecs.to_ecs(r) for r in recs if r["kind"] == "alert"}
    meta = alerts["cloud-metadata-access"]
    assert meta["event"]["kind"] == "alert"
    assert meta["event"]["category"] == ["intrusion_detection", "network"]
    assert meta["rule"] == {"id": "cloud-metadata-access", "name": "cloud-metadata-access",
                            "description": "Cloud instance metadata contacted", "category": "credential_access",
                            "ruleset": "agentwatch"}
    assert meta["threat"] == {"framework": "MITRE ATT&CK",
                              "technique": {"id": ["T1552"], "subtechnique": {"id": ["T1552.005"]}}}
    assert meta["event"]["severity"] == 4 and meta["log"]["level"] == "error"
    assert meta["tags"] == ["credential_access", "T1552.005"]
    assert meta["agentwatch"]["evidence"][0]["type"] == "connect"
    stratum = alerts["stratum-protocol"]
    assert stratum["agentwatch"]["alert"]["action_result"] == "killed"
    assert stratum["event"]["severity"] == 5
    seq = alerts["reverse-shell-connect-then-exec"]
    assert len(seq["agentwatch"]["evidence"]) == 2 and seq["event"]["category"] == ["intrusion_detection", "process"]
    egress = alerts["egress-policy"]
    assert egress["event"]["type"][0] == "denied" and egress["agentwatch"]["policy"]["rule"] == "deny-metadata"
    assert "message" in egress


def test_ecs_fleet_fields(recs):
    docker = next(r for r in recs if r.get("type") == "connect" and (r["agent"] or {}).get("sandbox", {}).get(
        "runtime") == "docker")
    doc = ecs.to_ecs(docker, host="ignored-the-record-names-it")
    assert doc["container"] == {"id": docker["agent"]["sandbox"]["container_id"], "name": "rollout-7",
                                "image": {"name": "python:3.12-slim"}, "runtime": "docker"}
    assert doc["host"] == {"hostname": "worker-3", "name": "worker-3"}
    assert doc["agentwatch"]["agent"]["episode"] == {"id": "rollout-7:3", "labels": {"task": "swe-123", "step": "4"}}
    assert doc["labels"]["com_docker_compose_project"] == "rl"
    pod = next(r for r in recs if (r.get("agent") or {}).get("sandbox", {}).get("runtime") == "kubernetes"
               and r["kind"] == "event")
    pdoc = ecs.to_ecs(pod)
    assert pdoc["orchestrator"] == {"type": "kubernetes",
                                    "resource": {"type": "pod", "id": "8c1d2e3f-1111-2222-3333-444455556666"}}
    assert pdoc["agentwatch"]["agent"]["episode"] is None


def test_ecs_validation_catches_wrong_conversions(recs):
    rec = next(r for r in recs if r["kind"] == "alert" and r["rule"] == "cloud-metadata-access")
    good = ecs.to_ecs(rec)
    assert ecs_errors(good) == []

    def broken(change) -> list[str]:
        doc = copy.deepcopy(good)
        change(doc)
        return ecs_errors(doc)

    assert broken(lambda d: d["process"].update(comand_line="x"))  # misspelled field
    assert broken(lambda d: d.update(agent_id="agent-1"))  # a custom field outside agentwatch.*
    assert broken(lambda d: d["event"].update(category=["intrusion-detection"]))  # not an allowed value
    assert broken(lambda d: d["event"].update(category="network"))  # ECS normalizes it to an array
    assert broken(lambda d: d["event"].update(kind="finding"))
    assert broken(lambda d: d["event"].update(type=["connection", "creation"]))  # not for these categories
    assert broken(lambda d: d["event"].update(outcome="ok"))
    assert broken(lambda d: d["process"].update(pid="9130"))  # a long, not a string
    assert broken(lambda d: d["process"]["user"].update(id=1000))  # a keyword, not a number
    assert broken(lambda d: d["destination"].update(ip="169.254.169.254:80"))
    assert broken(lambda d: d["threat"]["technique"].update(id="T1552"))
    assert broken(lambda d: d.update(labels={"a.b": "c"}))
    assert broken(lambda d: d.update(labels={"n": 1}))
    assert broken(lambda d: d.update({"@timestamp": "yesterday"}))
    assert broken(lambda d: d.pop("@timestamp"))
    assert broken(lambda d: d["event"].update(severity="high"))


# --------------------------------------------------------------------------
# OCSF: against the official schema, class by class, with the profiles declared.


def _no_deprecated(validator, deprecated, instance, schema):
    if deprecated:
        yield jsonschema.ValidationError(f"{schema.get('title')!r} is deprecated in OCSF {ocsf.OCSF_VERSION}")


_OcsfValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"deprecated": _no_deprecated})


@lru_cache(maxsize=None)
def _class_validator(class_uid: int, profiles: tuple[str, ...]):
    name = OCSF_SCHEMA.lookup_class_name_from_uid(class_uid)
    schema = OCSF_SCHEMA.get_class_schema(name, list(profiles))
    _OcsfValidator.check_schema(schema)
    return _OcsfValidator(schema)


def _caption(enum_attr: dict, value) -> str | None:
    entry = (enum_attr.get("enum") or {}).get(str(value))
    return entry.get("caption") if entry else None


def ocsf_errors(event: dict) -> list[str]:
    """Every way event departs from the OCSF schema of its class (ocsf-json-schema's export)."""
    try:
        class_uid = event["class_uid"]
        profiles = tuple(event["metadata"].get("profiles", []))
        validator = _class_validator(class_uid, profiles)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        return [f"no class to validate against: {e!r}"]
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in sorted(validator.iter_errors(event), key=lambda e: list(map(str, e.absolute_path)))]
    cls = OCSF_RAW["classes"][OCSF_SCHEMA.lookup_class_name_from_uid(class_uid)]
    attrs = cls["attributes"]
    if event.get("type_uid") != class_uid * 100 + event.get("activity_id", -1):
        errors.append(f"type_uid {event.get('type_uid')} is not class_uid * 100 + activity_id")
    if event.get("category_uid") != cls.get("category_uid", 0):
        errors.append(f"category_uid {event.get('category_uid')} is not {cls.get('category_uid')}")
    if event.get("metadata", {}).get("version") != ocsf.OCSF_VERSION:
        errors.append("metadata.version is not the version validated")
    for id_attr, name_attr in (("class_uid", "class_name"), ("category_uid", "category_name"),
                               ("type_uid", "type_name"), ("severity_id", "severity"), ("status_id", "status"),
                               ("activity_id", "activity_name"), ("action_id", "action"),
                               ("disposition_id", "disposition")):
        if id_attr in event and name_attr in event and id_attr in attrs and event[id_attr] != 99:
            want = _caption(attrs[id_attr], event[id_attr])
            if want is not None and event[name_attr] != want:
                errors.append(f"{name_attr} {event[name_attr]!r} is not the caption of {id_attr} {event[id_attr]}"
                              f" ({want!r})")
    if not isinstance(event.get("time"), int) or event["time"] <= 0:
        errors.append("time: not epoch milliseconds")
    return errors


def test_every_record_converts_to_valid_ocsf(recs):
    for rec in recs:
        event = ocsf._convert(rec, None)  # the specific mapping, not the fallback
        assert ocsf.to_ocsf(rec) == event
        assert ocsf_errors(event) == [], (_shape(rec), ocsf_errors(event))
        assert event["metadata"]["original_time"] == rec["time"]
        assert event["time"] == ocsf.epoch_ns(rec["time"]) // 1_000_000
        assert event["metadata"]["product"] == {"name": "agentwatch", "vendor_name": "agentwatch",
                                                "version": ecs.PRODUCT_VERSION}


CLASS_OF = {"exec": 1007, "exit": 1007, "fork": 1007, "connect": 4001, "send": 4001, "connection": 4001,
            "blocked": 4001, "dns": 4003, "gpu": 1007, "lost": 6008,
            "pipe_link": 0}  # no OCSF class says "two processes share a pipe": the Base Event, all of it kept


def test_ocsf_classes(recs):
    for rec in recs:
        event = ocsf.to_ocsf(rec)
        if rec["kind"] == "alert":
            assert event["class_uid"] == 2004
        elif rec["kind"] == "status":
            assert event["class_uid"] == 6002
        elif rec["type"] == "tamper":
            assert event["class_uid"] == (1003 if rec["tamper"]["kind"] == "bpf" else 1007)
        else:
            assert event["class_uid"] == CLASS_OF[rec["type"]], rec["type"]
    generic = ocsf.to_ocsf({"kind": "event", "type": "cgroup", "time": "2026-01-01T00:00:00.000000001Z",
                            "agent": None, "process": None, "cgroup": {"id": 7}})
    assert generic["class_uid"] == 0 and generic["activity_name"] == "cgroup"
    assert generic["unmapped"]["details"]["cgroup"] == {"id": 7}
    assert ocsf_errors(generic) == []


def test_ocsf_fields(recs):
    by = {}
    for rec in recs:
        by.setdefault(_shape(rec), []).append((rec, ocsf.to_ocsf(rec, host="worker-9")))
    rec, ev = by["exec"][0]
    assert (ev["activity_id"], ev["type_uid"], ev["launch_type_id"], ev["status_id"]) == (1, 100701, 3, 1)
    proc = ev["process"]
    assert proc["pid"] == rec["process"]["pid"] and proc["uid"] == rec["process"]["key"]
    assert proc["file"] == {"name": "ssh", "path": "/usr/bin/ssh", "type_id": 1, "type": "Regular File"}
    assert proc["cmd_line"] == "ssh -N -R 8080:localhost:80 user@198.51.100.7"
    assert proc["parent_process"]["pid"] == ROOT and proc["ancestry"][0]["path"] == "/usr/bin/agent"
    assert ev["actor"]["process"]["pid"] == ROOT
    assert ev["device"]["hostname"] == "worker-9" and ev["device"]["os"]["type_id"] == 200
    assert ev["metadata"]["tags"] == [{"name": "task", "value": "42"}, {"name": "com.example.team", "value": "blue"}]
    assert by["exec"][1][1]["status_id"] == 2 and by["exec"][1][1]["status_code"] == "ENOENT"

    fork_rec, fork = by["fork"][0]
    assert fork["process"]["pid"] == fork_rec["child"]["pid"] and fork["launch_type_id"] == 2
    assert fork["actor"]["process"]["pid"] == fork_rec["process"]["pid"]

    exit_rec, exit_ = next((r, e) for r, e in by["exit"] if r["signal"] is None)
    assert exit_["activity_id"] == 2 and exit_["exit_code"] == 1

    activities = {r["network"]["result"]: e["activity_id"] for r, e in by["connect"]}
    assert activities == {"EINPROGRESS": 1, "ECONNREFUSED": 5, "ok": 1}
    c = next(e for r, e in by["connect"] if r["network"]["dport"] == 22)
    assert c["dst_endpoint"] == {"ip": "198.51.100.7", "port": 22, "network_scope_id": 2, "network_scope": "External"}
    assert c["connection_info"]["protocol_num"] == 6 and c["connection_info"]["direction_id"] == 2
    meta = next(e for r, e in by["connect"] if r["network"]["dport"] == 80)
    assert meta["dst_endpoint"]["network_scope_id"] == 1
    assert meta["unmapped"]["network"]["scope"] == "metadata"

    states = {r["connection"]["state"]: (e["activity_id"], e.get("duration")) for r, e in by["connection"]}
    assert states == {"established": (1, None), "closed": (2, 1500), "failed": (4, None)}

    dns = by["dns"][0][1]
    assert dns["class_uid"] == 4003 and dns["query"] == {"hostname": "pool.minexmr.com", "type": "TXT"}

    blocked = by["blocked"][0][1]
    assert (blocked["activity_id"], blocked["action_id"], blocked["disposition_id"]) == (5, 2, 2)
    assert blocked["policy"] == {"type": "egress", "name": "rl-sandbox"}
    assert blocked["firewall_rule"] == {"name": "deny-metadata", "condition": "connect"}

    tamper = {r["tamper"]["kind"]: e for r, e in by["tamper"]}
    assert tamper["signal"]["activity_id"] == 2 and tamper["signal"]["process"] == {"pid": 4_999_000}
    assert tamper["ptrace"]["activity_id"] == 3
    assert tamper["bpf"]["kernel"]["name"] == "BPF_PROG_LOAD"
    assert tamper["cgroup"]["activity_name"] == "Tamper: cgroup"

    lost = by["lost"][0][1]
    assert lost["severity_id"] == 3 and lost["message"] == "4 events lost (exec 3, connect 1)"

    gpu_names = sorted(e["activity_name"] for r, e in by["gpu"])
    assert gpu_names == ["GPU compute", "GPU open", "GPU usage"]

    started = by["daemon_started"][0][1]
    assert started["activity_id"] == 3 and started["app"]["name"] == "agentwatch"
    assert started["unmapped"]["details"]["config"] == "/etc/agentwatch/agentwatch.yaml"
    err = by["config_error"][0][1]
    assert err["status_id"] == 2 and err["message"].startswith("agentwatch.yaml:3")


def test_ocsf_findings(recs):
    alerts = {r["rule"]: (r, ocsf.to_ocsf(r)) for r in recs if r["kind"] == "alert"}
    rec, f = alerts["cloud-metadata-access"]
    info = f["finding_info"]
    assert (f["class_uid"], f["activity_id"], f["type_uid"], f["severity_id"]) == (2004, 1, 200401, 4)
    assert info["title"] == rec["title"] and info["desc"] == rec["message"]
    assert info["analytic"] == {"uid": "cloud-metadata-access", "name": "cloud-metadata-access", "type_id": 1,
                                "type": "Rule"}
    assert info["types"] == ["credential_access"]
    assert info["attacks"] == [{"technique": {"uid": "T1552"}, "sub_technique": {"uid": "T1552.005"}}]
    assert f["attacks"] == info["attacks"]  # security_control profile: duplicated at the top
    assert info["uid"].startswith("agentwatch-") and info["uid"] == ocsf.to_ocsf(rec)["finding_info"]["uid"]
    assert f["evidences"][0]["dst_endpoint"] == {"ip": "169.254.169.254", "port": 80}
    assert f["unmapped"]["evidence"] == rec["evidence"]
    assert f["actor"]["process"]["pid"] == rec["process"]["pid"]
    uids = {ocsf.to_ocsf(r)["finding_info"]["uid"] for r, _ in alerts.values()}
    assert len(uids) == len(alerts)
    _, stratum = alerts["stratum-protocol"]
    assert (stratum["action_id"], stratum["disposition_id"], stratum["severity_id"]) == (2, 7, 5)
    _, egress = alerts["egress-policy"]
    assert (egress["action_id"], egress["disposition_id"]) == (2, 2)
    _, seq = alerts["reverse-shell-connect-then-exec"]
    assert [e["name"] for e in seq["evidences"]] == ["connect", "exec"]
    assert seq["finding_info"]["first_seen_time"] < seq["finding_info"]["last_seen_time"]


def test_ocsf_fleet_fields(recs):
    docker = next(r for r in recs if r.get("type") == "connect" and (r["agent"] or {}).get("sandbox", {}).get(
        "runtime") == "docker")
    ev = ocsf.to_ocsf(docker)
    assert ev["device"]["hostname"] == "worker-3"
    assert ev["actor"]["process"]["sandbox"] == "rollout-7"
    assert ev["actor"]["process"]["container"] == {"uid": docker["agent"]["sandbox"]["container_id"],
                                                   "name": "rollout-7", "runtime": "docker"}
    assert "container" in ev["metadata"]["profiles"]
    assert ev["unmapped"]["agent"]["episode"]["id"] == "rollout-7:3"
    pod = next(r for r in recs if (r.get("agent") or {}).get("sandbox", {}).get("runtime") == "kubernetes"
               and r["kind"] == "event")
    container = ocsf.to_ocsf(pod)["actor"]["process"]["container"]
    assert container["orchestrator"] == "kubernetes" and container["pod_uuid"].startswith("8c1d2e3f")
    no_host = next(r for r in recs if r.get("type") == "exec")
    assert ocsf.to_ocsf(no_host)["device"]["name"] == "unknown"


def test_ocsf_validation_catches_wrong_conversions(recs):
    rec = next(r for r in recs if r["kind"] == "alert" and r["rule"] == "cloud-metadata-access")
    good = ocsf.to_ocsf(rec)
    assert ocsf_errors(good) == []
    conn = ocsf.to_ocsf(next(r for r in recs if r.get("type") == "connect"))
    assert ocsf_errors(conn) == []

    def broken(event, change) -> list[str]:
        doc = copy.deepcopy(event)
        change(doc)
        return ocsf_errors(doc)

    assert broken(good, lambda d: d["finding_info"].update(titel="x"))  # misspelled attribute
    assert broken(good, lambda d: d["finding_info"].pop("uid"))  # required
    assert broken(good, lambda d: d.pop("severity_id"))
    assert broken(good, lambda d: d.update(activity_id=42, type_uid=200442))  # not an activity of the class
    assert broken(good, lambda d: d.update(type_uid=200402))  # not class_uid * 100 + activity_id
    assert broken(good, lambda d: d.update(severity_id=7))
    assert broken(good, lambda d: d.update(severity="Severe"))
    assert broken(good, lambda d: d.update(time=rec["time"]))  # epoch ms, not a string
    assert broken(good, lambda d: d["metadata"].update(profiles=[]))  # attacks, actor need their profiles
    assert broken(good, lambda d: d["finding_info"]["analytic"].update(type_id=12))
    assert broken(conn, lambda d: d["dst_endpoint"].update(port=70000))
    assert broken(conn, lambda d: d["dst_endpoint"].update(ip="not-an-ip"))
    assert broken(conn, lambda d: d.pop("dst_endpoint") and d.pop("src_endpoint", None))
    assert broken(conn, lambda d: d["actor"]["process"].update(lineage=["/usr/bin/agent"]))  # deprecated
    assert broken(conn, lambda d: d.update(class_uid=4002, type_uid=400201))


# --------------------------------------------------------------------------
# Determinism and robustness.


def test_conversions_are_deterministic(recs):
    for rec in recs:
        for convert in (ecs.to_ecs, ocsf.to_ocsf):
            first = orjson.dumps(convert(copy.deepcopy(rec)))
            assert orjson.dumps(convert(rec)) == first
            assert orjson.dumps(convert(rec)) == first
    assert orjson.dumps(ocsf.to_ocsf(recs[0])) == orjson.dumps(ocsf.to_ocsf(json.loads(json.dumps(recs[0]))))


def test_conversions_do_not_change_the_record(recs):
    for rec in recs:
        before = orjson.dumps(rec)
        ecs.to_ecs(rec)
        ocsf.to_ocsf(rec)
        assert orjson.dumps(rec) == before


def _variants(rec: dict):
    """rec with each key (top level and one level down) dropped or replaced by a value of another type."""
    odd = (None, "x", 7, [], {}, True)
    for key in list(rec):
        yield {k: v for k, v in rec.items() if k != key}
        for v in odd:
            yield {**rec, key: v}
        if isinstance(rec[key], dict):
            for sub in list(rec[key]):
                for v in odd:
                    yield {**rec, key: {**rec[key], sub: v}}
        if isinstance(rec[key], list) and rec[key] and isinstance(rec[key][0], dict):
            yield {**rec, key: [{}] + rec[key][1:]}


def test_conversions_never_raise(recs):
    oddities = [None, [], "x", 3, {}, {"kind": "event"}, {"kind": "alert"}, {"kind": "status"},
                {"kind": "event", "type": "nonsense", "time": "not a time"}, {"time": "2026-13-40T99:00:00Z"}]
    for rec in list(recs) + oddities:
        for variant in (_variants(rec) if isinstance(rec, dict) else [rec]):
            for convert in (ecs.to_ecs, ocsf.to_ocsf):
                out = convert(variant)
                assert isinstance(out, dict)
                orjson.dumps(out)


def test_unknown_record_kinds_get_the_generic_mapping():
    rec = {"kind": "event", "type": "cgroup", "time": "2026-11-28T02:33:24.531849786Z", "agent": None,
           "process": None, "cgroup": {"op": "mkdir", "path": "/rollout.slice/x"}}
    doc = ecs.to_ecs(rec)
    assert ecs_errors(doc) == []
    assert doc["event"]["action"] == "cgroup" and doc["agentwatch"]["details"]["cgroup"]["op"] == "mkdir"
    event = ocsf.to_ocsf(rec)
    assert ocsf_errors(event) == []
    assert event["metadata"]["original_time"] == rec["time"] and event["time"] == 1795833204531


def test_epoch_conversion():
    assert ocsf.epoch_ns("1970-01-01T00:00:00.000000001Z") == 1
    assert ocsf.epoch_ns("2026-11-28T02:33:24.531849786Z") == 1795833204531849786
    assert ocsf.epoch_ns("2026-11-28T02:33:24Z") == 1795833204000000000
    assert ocsf.epoch_ns("2026-11-28T02:33:24.5Z") == 1795833204500000000
    for bad in ("2026-02-30T00:00:00Z", "2026-11-28 02:33:24Z", "yesterday", None, 5):
        assert ocsf.epoch_ns(bad) is None


def test_conversion_cost(recs):
    """Per-record cost, reported in docs/formats.md; a generous bound so a slow CI machine still passes."""
    connect = next(r for r in recs if r.get("type") == "connect")
    alert = next(r for r in recs if r["kind"] == "alert" and r["rule"] == "cloud-metadata-access")
    for rec in (connect, alert):
        for convert in (ecs.to_ecs, ocsf.to_ocsf):
            n = 200
            per = min(timeit.repeat(lambda: convert(rec), number=n, repeat=3)) / n
            assert per < 0.002, (convert.__module__, per)
