"""Replay: recorded JSON lines through the rules give the live run's alerts, byte for byte, every time."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from tracer.output import JsonLinesWriter
from tracer.proctree import start_ticks_from_ns
from tracer.records import Clock
from tracer.replay import ReplayError, replay
from tracer.rules import Engine, load
from tracer.rules.loader import example_record
from tracer.session import Pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "rules" / "tiny.yaml"


def engine() -> Engine:
    return Engine(load([FIXTURE]).rules)


def rec(t: float, **partial) -> dict:
    partial["time"] = t
    return example_record(partial, partial.get("type", "exec"), 0)


def recording() -> list[dict]:
    """A small session: a tunnel tool, an ssh -R (and an excepted one), a reverse tunnel, a scan, survivors."""
    out = [{"kind": "status", "status": "agent_started", "time": rec(0)["time"],
            "agent": rec(0)["agent"], "argv": ["agent"]}]
    out.append(rec(1, type="fork", process={"pid": 10}))
    out.append(rec(2, process={"pid": 11, "argv": ["chisel", "client", "198.51.100.7:443", "R:8080"]}))
    out.append(rec(3, process={"pid": 12, "argv": ["ssh", "-N", "-R", "8080:localhost:80", "u@198.51.100.7"]}))
    out.append(rec(3.5, process={"pid": 13, "argv": ["ssh", "-R", "1:localhost:2", "bastion.internal"]}))
    out.append(rec(4, type="connect", process={"pid": 20}, network={"daddr": "198.51.100.7", "dport": 22,
                                                                     "scope": "external"}))
    out.append(rec(5, type="connect", process={"pid": 21, "ancestry": [{"pid": 20}]},
                   network={"daddr": "127.0.0.1", "dport": 8080, "scope": "loopback"}))
    for i in range(6):
        out.append(rec(6 + i / 10, type="connect", process={"pid": 30},
                       network={"daddr": "10.0.0.9", "dport": 1000 + i, "scope": "private"}))
    out.append({"kind": "event", "type": "lost", "time": rec(7)["time"], "agent": None, "process": None,
                "lost": {"exec": 2}, "lost_total": {"exec": 2}})
    out.append(rec(8, type="exit", process={"pid": 11, "argv": ["chisel"]}))
    out.append({"kind": "status", "status": "root_exited", "time": rec(9)["time"], "agent": rec(9)["agent"],
                "linger": 2.0, "survivors": [{"pid": 12, "key": "12:1000", "comm": "ssh"}]})
    return out


def jsonl(records: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)


def run_replay(data: bytes, show_events: bool = False, eng: Engine | None = None) -> bytes:
    out = io.BytesIO()
    replay(io.BytesIO(data), "rec.jsonl", eng or engine(), JsonLinesWriter(out), show_events)
    return out.getvalue()


def lines(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


def test_replay_prints_the_alerts_and_lost_events():
    got = lines(run_replay(jsonl(recording())))
    assert [(r["kind"], r.get("rule") or r.get("type")) for r in got] == [
        ("alert", "tunnel-tool"),
        ("alert", "ssh-remote-forward"),
        ("alert", "tunnel-then-local"),
        ("alert", "port-scan"),
        ("event", "lost"),
        ("alert", "descendant-survives"),
    ]
    tunnel = got[2]
    assert [e["process"]["pid"] for e in tunnel["evidence"]] == [20, 21]
    assert got[3]["count"] == 5 and got[3]["time"] == rec(6.4)["time"]


def test_replay_is_deterministic_to_the_byte():
    data = jsonl(recording())
    first = run_replay(data)
    assert first == run_replay(data) == run_replay(data)
    assert run_replay(data, show_events=True) == run_replay(data, show_events=True)


def test_events_flag_prints_every_record_and_the_same_alerts():
    data = jsonl(recording())
    with_events = lines(run_replay(data, show_events=True))
    assert [r for r in with_events if r["kind"] != "alert"] == recording()
    alerts_only = [r for r in lines(run_replay(data)) if r["kind"] == "alert"]
    assert [r for r in with_events if r["kind"] == "alert"] == alerts_only


def test_alerts_in_the_input_are_not_replayed_again():
    data = jsonl(recording())
    once = run_replay(data, show_events=True)
    assert run_replay(once, show_events=True) == once


def test_records_no_rule_reads_are_skipped_unparsed_but_other_shapes_are_parsed():
    # A record with its keys in another order is parsed, and its alerts still come out.
    r = rec(2, process={"argv": ["chisel"]})
    reordered = {"type": r["type"], **{k: v for k, v in r.items() if k != "type"}}
    assert [a["rule"] for a in lines(run_replay(jsonl([reordered])))] == ["tunnel-tool"]
    # A fork record (no rule reads forks) that is not valid JSON past its head is skipped...
    assert run_replay(b'{"kind":"event","type":"fork","broken\n') == b""
    # ...but with --events every line is parsed.
    with pytest.raises(ReplayError, match=r"^rec.jsonl:1: not a JSON record"):
        run_replay(b'{"kind":"event","type":"fork","broken\n', show_events=True)


def test_records_without_a_text_every_rule_needs_are_skipped_unparsed():
    eng = Engine(load(check_examples=False).rules)
    # Only the reverse-tunnel rule reads connection records, and only established ones.
    assert eng.needed_text["connection"] == {"established"}
    outside = rec(1, type="connection", process={"pid": 40, "key": "40:1"},
                  network={"daddr": "198.51.100.7", "dport": 22, "scope": "external"},
                  connection={"state": "established", "duration_s": None})
    back = rec(2, type="connect", process={"pid": 40, "key": "40:1"},
               network={"daddr": "127.0.0.1", "dport": 8000, "scope": "loopback", "protocol": "tcp"})
    closed = jsonl([{**outside, "connection": {"state": "closed", "duration_s": 1.0}}])
    fired = [a["rule"] for a in lines(run_replay(jsonl([outside, back]), eng=eng))]
    assert "reverse-tunnel-behaviour" in fired
    # A closed connection is skipped: not even parsed (broken past the text would be an error)...
    assert run_replay(closed[:-20] + b"\n", eng=Engine(eng.rules)) == b""
    # ...and it is still counted as a record read.
    assert replay(io.BytesIO(closed * 3), "rec.jsonl", Engine(eng.rules), JsonLinesWriter(io.BytesIO()), False) == 3
    # The value written with an escape is not missed: a line with a backslash is always parsed.
    escaped = jsonl([outside]).replace(b'"established"', b'"\\u0065stablished"')
    assert b"established" not in escaped
    assert [a["rule"] for a in lines(run_replay(escaped + jsonl([back]), eng=Engine(eng.rules)))] == fired


@pytest.mark.parametrize("line, message", [
    (b"not json\n", "rec.jsonl:2: not a JSON record"),
    (b"[1, 2]\n", "rec.jsonl:2: not a JSON object"),
])
def test_bad_lines_are_one_line_errors(line, message):
    data = jsonl([rec(1, process={"argv": ["true"]})]) + line
    with pytest.raises(ReplayError) as info:
        run_replay(data)
    assert str(info.value).startswith(message)


def test_blank_lines_are_ignored():
    data = b"\n" + jsonl([rec(2, process={"argv": ["chisel"]})]) + b"\n\n"
    assert len(lines(run_replay(data))) == 1


# --------------------------------------------------------------------------
# Live and replay agree: a pipeline fed kernel records, then its output replayed.

P = 5_000_000
SEC = 10**9


class FakeProbes:
    def __init__(self, batches):
        self.batches = batches

    def poll(self, timeout_ms=100):
        return self.batches.pop(0) if self.batches else []

    def lost_counts(self):
        return {}


def test_replay_of_a_live_recording_gives_the_live_alerts(raw):
    out = io.BytesIO()
    pipe = Pipeline(FakeProbes([]), JsonLinesWriter(out), rules=engine(), show_events=True)
    pipe.clock = Clock()
    agent = pipe.agents.new(P + 1, {"task": "7"}, agent_id="agent-live")
    root = pipe.table.lookup(P + 1, start_ticks_from_ns(100 * SEC), ppid=P, comm=b"agent")
    root.agent_id = agent.kernel_id

    def hdr(pid, comm, ktime, **kw):
        return dict(pid=pid, ppid=P + 1, comm=comm, agent_id=1, start_ns=101 * SEC, ktime_ns=ktime * SEC) | kw

    pipe.probes.batches.append([
        raw.fork(child_pid=P + 2, child_agent_id=1, child_start_ns=101 * SEC,
                 **hdr(P + 1, b"agent", 10, ppid=P, start_ns=100 * SEC)),
        raw.exec(filename=b"/usr/bin/ssh", argv=[b"ssh", b"-N", b"-R", b"9000:localhost:22", b"u@h"],
                 **hdr(P + 2, b"ssh", 11)),
        raw.exec(filename=b"/opt/frpc", argv=[b"frpc", b"-c", b"frpc.toml"], **hdr(P + 2, b"frpc", 12)),
        raw.exit(**hdr(P + 2, b"frpc", 13)),
    ])
    pipe.drain(0)
    live = out.getvalue()
    live_alerts = [line for line in live.splitlines(keepends=True) if b'"kind":"alert"' in line]
    assert [orjson.loads(a)["rule"] for a in live_alerts] == ["ssh-remote-forward", "tunnel-tool"]
    assert orjson.loads(live_alerts[0])["agent"]["labels"] == {"task": "7"}
    assert run_replay(live) == b"".join(live_alerts)
    assert run_replay(live, show_events=True) == live


def test_pipeline_without_events_writes_only_alerts(raw):
    out = io.BytesIO()
    pipe = Pipeline(FakeProbes([]), JsonLinesWriter(out), rules=engine(), show_events=False)
    pipe.agents.new(P + 1, {}, agent_id="agent-live")
    pipe.probes.batches.append([
        raw.exec(filename=b"/usr/bin/true", argv=[b"true"], pid=P + 1, ppid=P, comm=b"true", agent_id=1),
        raw.exec(filename=b"/opt/ngrok", argv=[b"ngrok", b"tcp", b"22"], pid=P + 1, ppid=P, comm=b"ngrok",
                 agent_id=1),
    ])
    pipe.drain(0)
    assert [r["kind"] for r in lines(out.getvalue())] == ["alert"]


def test_replay_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    """Sets and dicts iterate in hash order; nothing of it may reach the output."""
    import os
    import subprocess
    import sys

    path = tmp_path / "rec.jsonl"
    path.write_bytes(jsonl(recording()))
    outs = []
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-m", "tracer.cli", "replay", str(path), "--rules", str(FIXTURE),
                               "--events"], capture_output=True, env=env, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1] == outs[2] != b""
