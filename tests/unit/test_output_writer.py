"""Deliver: one Writer over the main stream and the sinks, in the format asked for (no root, no network)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from pathlib import Path

import pytest

from test_formats import ecs_errors, ocsf_errors
from tracer.delivery import DeliveryError, build_writer, check_sink, closing_report, encoder
from tracer.fleetconfig import ConfigError, parse
from tracer.sinks import SinkSet, record_id

REPO = Path(__file__).resolve().parents[2]

ALERT = {"kind": "alert", "time": "2026-12-03T10:00:00.000000001Z", "rule": "reverse-ssh-tunnel",
         "severity": "critical", "title": "Reverse SSH tunnel", "message": "ssh -R to 198.18.1.2:22",
         "mitre": ["T1572"], "agent": {"id": "agent-1", "root_pid": 10, "labels": {"run": "7"}},
         "process": {"pid": 12, "ppid": 10, "comm": "ssh", "exe": "/usr/bin/ssh", "argv": ["ssh", "-R", "9:x:9", "h"],
                     "argv_truncated": False, "uid": 0, "key": "12:5", "ancestry": [{"pid": 10, "comm": "bash",
                                                                                  "exe": "/bin/bash"}]},
         "evidence": []}
NOTICE = {"kind": "status", "status": "sink_dropped", "time": "2026-12-03T10:00:01.000000000Z", "agent": None,
          "sink": "http:x", "reason": "spool_full", "dropped": 3, "dropped_total": 3}


@pytest.mark.parametrize("fmt", ["json", "ecs", "ocsf"])
def test_encoder_writes_one_line_in_the_format(fmt):
    line = encoder(fmt, host="node-7")(ALERT)
    assert b"\n" not in line
    doc = json.loads(line)
    if fmt == "json":
        assert doc == ALERT
    elif fmt == "ecs":
        assert doc["rule"]["name"] == "reverse-ssh-tunnel" and doc["host"]["name"] == "node-7"
        assert ecs_errors(doc) == []
    else:
        assert doc["class_uid"] == 2004 and doc["device"]["name"] == "node-7"  # Detection Finding
        assert ocsf_errors(doc) == []


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
def test_sink_notices_are_valid_in_every_format(fmt):
    doc = json.loads(encoder(fmt)(NOTICE))
    assert (ecs_errors if fmt == "ecs" else ocsf_errors)(doc) == []


def test_unknown_format():
    with pytest.raises(DeliveryError, match="format 'cef'"):
        encoder("cef")


def test_main_stream_alone_is_a_plain_writer():
    out = io.BytesIO()
    with ExitStack() as stack:
        w = build_writer(stack, out, "ecs", host="h")
        assert not isinstance(w, SinkSet)
        w.write(ALERT)
        w.flush()
    assert json.loads(out.getvalue())["event"]["kind"] == "alert"


def test_main_stream_and_sinks_get_every_record_in_the_format(tmp_path):
    out = io.BytesIO()
    with ExitStack() as stack:
        w = build_writer(stack, out, "ocsf", (f"file:{tmp_path}/a.jsonl", f"file:{tmp_path}/b.jsonl?keep=2"))
        for i in range(5):
            w.write({**ALERT, "time": f"2026-12-03T10:00:0{i}.000000000Z"})
        w.flush()
    main = [json.loads(x) for x in out.getvalue().splitlines()]
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_bytes().splitlines()]
    assert main == a == b and len(main) == 5 and all(d["class_uid"] == 2004 for d in main)


def test_table_on_the_terminal_json_to_the_sinks(tmp_path):
    out = io.BytesIO()
    with ExitStack() as stack:
        w = build_writer(stack, out, "table", (f"file:{tmp_path}/s.jsonl",))
        w.write(ALERT)
    assert out.getvalue().startswith(b"TIME") and b"CRITICAL reverse-ssh-tunnel" in out.getvalue()
    assert json.loads((tmp_path / "s.jsonl").read_bytes()) == ALERT


def test_a_sink_s_own_format_wins(tmp_path):
    out = io.BytesIO()
    with ExitStack() as stack:
        w = build_writer(stack, out, "json", (f"file:{tmp_path}/ecs.jsonl?format=ecs&keep=2",
                                              f"file:{tmp_path}/ocsf.jsonl?format=ocsf"))
        w.write(ALERT)
    assert json.loads(out.getvalue()) == ALERT
    assert json.loads((tmp_path / "ecs.jsonl").read_bytes())["ecs"]["version"] == "8.17.0"
    assert json.loads((tmp_path / "ocsf.jsonl").read_bytes())["class_uid"] == 2004


def test_sinks_only(tmp_path):
    with ExitStack() as stack:
        w = build_writer(stack, None, "json", (f"file:{tmp_path}/s.jsonl",))
        w.write(ALERT)
    assert json.loads((tmp_path / "s.jsonl").read_bytes()) == ALERT
    with pytest.raises(DeliveryError, match="no output and no sink"):
        build_writer(ExitStack(), None, "json")


def test_a_bad_spec_leaves_nothing_started(tmp_path):
    with pytest.raises(DeliveryError, match="unknown kind 'kafka'"):
        build_writer(ExitStack(), io.BytesIO(), "json", (f"file:{tmp_path}/a.jsonl", "kafka:broker:9092"))


def test_http_spool_left_is_reported_at_exit(tmp_path):
    lines: list[str] = []
    # Port 9 on loopback: nothing listens (connection refused at once), nothing leaves the machine.
    spec = f"http:http://127.0.0.1:9/ingest?spool={tmp_path}/spool&timeout_s=1"
    with ExitStack() as stack:
        w = build_writer(stack, None, "ecs", (spec,), report=lines.append, close_timeout_s=0.5)
        for _ in range(3):
            w.write(ALERT)
    assert lines == [f"http:http://127.0.0.1:9/ingest: 3 records wait in {tmp_path}/spool "
                     "(the next run with this spool sends them)"]
    seg = next((tmp_path / "spool").glob("*.seg")).read_bytes().splitlines()
    docs = [json.loads(x) for x in seg]
    assert [d["event"]["id"] for d in docs] == [record_id(ALERT)] * 3  # the stable id, as ECS event.id


def test_closing_report_names_drops():
    stats = {"output": {"kind": "writer", "dropped": 0},
             "syslog:udp:h:514": {"kind": "syslog", "dropped": 4, "dropped_by_reason": {"queue_full": 4},
                                  "last_error": "h:514: refused"}}
    assert closing_report(stats, [{"sink": "file:x", "dropped": 1, "reason": "closed"}]) == [
        "syslog:udp:h:514: 4 records dropped (queue_full 4); last error: h:514: refused",
        "file:x: 1 records dropped while closing (closed)"]


@pytest.mark.parametrize("spec, message", [
    ("kafka:x", "unknown kind 'kafka'"),
    ("http:http://siem/ingest", "needs spool=DIR"),
    ("file:/x?max_bytes=lots", "max_bytes: expected a size"),
    ("syslog:tcp:host", "expected HOST:PORT"),
    ("file:/x?format=cef", "format: 'cef' is not one of"),
    ("file:/x?format=ecs&format=ocsf", "'format' given twice"),
])
def test_check_sink_refuses_without_side_effects(spec, message, tmp_path):
    with pytest.raises(DeliveryError, match=message):
        check_sink(spec)


def test_daemon_config_format_and_sinks():
    c = parse(textwrap.dedent("""\
        output: none
        format: ocsf
        sinks:
          - syslog:unix:/dev/log
          - http:https://siem.example/ingest?spool=/var/spool/aw
        sandboxes: [{match: a/*}]
        """), "fleet.yaml")
    assert c.format == "ocsf" and c.output == "none"
    assert c.sinks == ("syslog:unix:/dev/log", "http:https://siem.example/ingest?spool=/var/spool/aw")
    assert parse("sandboxes: [{match: a/*}]\n", "f.yaml").format == "json"


@pytest.mark.parametrize("text, message", [
    ("format: cef\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: format: 'cef' is not one of json, ecs, ocsf"),
    ("sinks:\n  - file:/x\n  - kafka:b:9\nsandboxes: [{match: a/*}]\n", "fleet.yaml:3: sinks[1]: sink 'kafka:b:9'"),
    ("sinks: [http:http://h/x]\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: sinks[0]: sink 'http:http://h/x': needs"),
    ("output: none\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: output: none needs at least one sink"),
])
def test_daemon_config_errors(text, message):
    with pytest.raises(ConfigError) as exc:
        parse(text, "fleet.yaml")
    assert str(exc.value).startswith(message), str(exc.value)


def test_cli_bad_sink_is_one_line(tmp_path):
    rec = tmp_path / "r.jsonl"
    rec.write_text("")
    proc = subprocess.run([sys.executable, "-m", "tracer.cli", "replay", str(rec), "--sink", "kafka:b:9"],
                          capture_output=True, text=True, cwd=REPO)
    if "No module named" in proc.stderr:
        pytest.skip("tracer.cli is not runnable as a module")
    assert proc.returncode == 2
    assert proc.stderr.startswith("agentwatch: sink 'kafka:b:9': unknown kind 'kafka'")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_cli_replay_converts_to_every_sink(tmp_path):
    rec = tmp_path / "r.jsonl"
    rec.write_bytes(json.dumps(NOTICE).encode() + b"\n")
    proc = subprocess.run([sys.executable, "-m", "tracer.cli", "replay", str(rec), "--format", "ecs",
                           "--sink", f"file:{tmp_path}/s.jsonl"], capture_output=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (tmp_path / "s.jsonl").read_bytes()
