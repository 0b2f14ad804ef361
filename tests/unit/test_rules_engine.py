"""The engine: single-event rules and their index, exceptions, sequences, thresholds, alerts.

The clock is the records' `time`: each test sets it per record.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tracer.rules import Engine, engine as engine_mod, load_text
from tracer.rules.loader import example_record

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "event.schema.json").read_text())


def rec(t: float = 0.0, **partial) -> dict:
    partial.setdefault("time", t)
    return example_record(partial, partial.get("type", "exec"), 0)


def engine(text: str) -> Engine:
    return Engine(load_text(text, "e.yaml").rules)


def fired(eng: Engine, *records) -> list[str]:
    return [a["rule"] for r in records for a in eng.evaluate(r)]


# --------------------------------------------------------------------------
# Single-event rules.

SINGLE = """
- list: tools
  items: [chisel, frpc]
- rule: by-name
  severity: high
  tags: [tunnel, T1572]
  events: [exec]
  condition: proc.name in tools
  output: "%proc.name ran: %proc.cmdline (%agent.labels.task)"
- rule: by-args
  severity: low
  events: [exec]
  condition: 'proc.args contains "R:"'
  action: kill_agent
- rule: by-port
  severity: medium
  events: [connect]
  condition: net.dport = 22 and proc.name != ssh
  exceptions:
    - name: jump
      fields: [net.daddr, proc.name]
      comps: [cidr, in]
      values: [[10.0.0.0/8, [git, rsync]], ["192.168.0.0/16", tools]]
"""


def test_rules_apply_to_their_record_types_in_rule_order():
    eng = engine(SINGLE)
    r = rec(process={"argv": ["chisel", "client", "R:8080"]}, agent={"labels": {"task": "42"}})
    assert fired(eng, r) == ["by-name", "by-args"]
    assert fired(eng, rec(type="connect", process={"comm": "chisel"}, network={"daddr": "1.2.3.4", "dport": 22})) \
        == ["by-port"]
    assert fired(eng, rec(type="exit", process={"comm": "chisel"})) == []
    assert eng.types == {"exec", "connect"}


def test_alert_record():
    eng = engine(SINGLE)
    r = rec(5.25, process={"argv": ["chisel", "client", "R:8080"]}, agent={"labels": {"task": "42"}})
    by_name, by_args = eng.evaluate(r)
    assert by_name == {
        "kind": "alert",
        "rule": "by-name",
        "title": "by-name",
        "severity": "high",
        "tags": ["tunnel", "T1572"],
        "mitre": ["T1572"],
        "time": "2026-01-01T00:00:05.250000000Z",
        "agent": r["agent"],
        "process": r["process"],
        "message": "chisel ran: chisel client R:8080 (42)",
        "action": "none",
        "evidence": [r],
    }
    assert by_args["action"] == "kill_agent" and "network" not in by_args
    c = rec(type="connect", process={"comm": "nc"}, network={"daddr": "1.2.3.4", "dport": 22})
    (alert,) = eng.evaluate(c)
    assert alert["network"] == c["network"]
    for a in (by_name, by_args, alert):
        jsonschema.validate(a, SCHEMA)


def test_message_values_are_safe_text_and_missing_ones_are_na():
    eng = engine("""
- rule: r
  severity: low
  events: [exec]
  condition: proc.name exists
  output: "%proc.cmdline | %net.daddr | %proc.detached | 100%% sure"
""")
    (alert,) = eng.evaluate(rec(process={"argv": ["sh", "-c", "echo\x1b[2J\nforged"]}))
    assert alert["message"] == "sh -c echo\\x1b[2J\\x0aforged | <NA> | <NA> | 100% sure"


def test_exceptions_suppress_matching_records():
    eng = engine(SINGLE)

    def conn(daddr, comm):
        return rec(type="connect", process={"comm": comm}, network={"daddr": daddr, "dport": 22})

    assert fired(eng, conn("10.1.1.1", "git")) == []  # first exception entry: both fields
    assert fired(eng, conn("10.1.1.1", "curl")) == ["by-port"]  # only one of its two fields
    assert fired(eng, conn("192.168.1.1", "frpc")) == []  # second entry, through a named list
    assert fired(eng, conn("192.168.1.1", "git")) == ["by-port"]


INDEXED = """
- list: tools
  items: [chisel, frpc]
- rule: eq-or
  severity: low
  events: [exec]
  condition: (proc.name = a or proc.name in (b, c)) and proc.uid = 0
- rule: two-fields
  severity: low
  events: [exec]
  condition: proc.name in tools or proc.exe_name in tools
- rule: unguarded
  severity: low
  events: [exec]
  condition: proc.name = a or not proc.uid = 0
- rule: regex-literal
  severity: low
  events: [exec]
  condition: proc.cmdline regex '(?i)stratum[0-9]?\\+(tcp|ssl)://'
- rule: args-literal
  severity: low
  events: [exec]
  condition: proc.args startswith (--donate-level, --cpu-priority) and not proc.name = a
- rule: icontains-literal
  severity: low
  events: [exec]
  condition: proc.cmdline icontains RemoteForward
- rule: glob-literal
  severity: low
  events: [exec]
  condition: "proc.args glob 'R:*:*' or proc.exe endswith /frpc"
- rule: bool
  severity: low
  events: [exec]
  condition: proc.detached and proc.name = sh
"""

ARGVS = [["a"], ["b", "x"], ["chisel", "client", "R:80:localhost:8080"], ["/opt/frpc", "-c", "f.toml"],
         ["xmrig", "-o", "STRATUM+TCP://pool:3333"], ["xmrig", "-o", "\u017ftratum+tcp://p"], ["x", "--donate-level=1"],
         ["ssh", "-o", "remoteforward=1 2"], ["ssh", "-o", "RemoteForwarD=x", "\u00e9"], ["sh", "-c", "true"],
         ["a", "--cpu-priority", "5"], ["python3", "-c", "print(1)"]]


def test_the_index_never_changes_an_answer():
    """Every record gets exactly the alerts of testing every rule on it (guards only skip work)."""
    eng = engine(INDEXED)
    ids = {r.id: r for r in eng.rules}
    assert ids["eq-or"].guard == (("eq", "proc.name", frozenset("abc")),)
    assert ids["two-fields"].guard == (("eq", "proc.name", frozenset({"chisel", "frpc"})),
                                       ("eq", "proc.exe_name", frozenset({"chisel", "frpc"})))
    assert ids["unguarded"].guard is None
    assert ids["regex-literal"].guard == (("sub", "proc.cmdline", frozenset({"stratum"})),)
    assert ids["args-literal"].guard == (("sub", "proc.cmdline", frozenset({"--donate-level", "--cpu-priority"})),)
    assert ids["icontains-literal"].guard == (("sub", "proc.cmdline", frozenset({"remoteforward"})),)
    seen = set()
    for argv in ARGVS:
        for uid in (0, 1000):
            for ancestry, ppid in (([], 1), ([{"pid": 5}], 5), ([{"pid": 5}], 1)):
                r = rec(process={"argv": argv, "uid": uid, "ancestry": ancestry, "ppid": ppid})
                expect = [rule.id for rule in eng.rules if rule.match(r)]
                assert fired(eng, r) == expect, argv
                seen.update(expect)
    assert seen == set(ids)  # every rule fired at least once


def test_records_without_a_kind_or_type_are_ignored():
    eng = engine(SINGLE)
    assert eng.evaluate({}) == []
    assert eng.evaluate({"kind": "alert", "rule": "x"}) == []
    assert eng.evaluate({"kind": "event", "type": 5}) == []


# --------------------------------------------------------------------------
# Sequences.


def sequence(by: str, within: float = 60) -> Engine:
    return engine(f"""
- rule: seq
  severity: critical
  sequence:
    by: {by}
    within: {within}
    steps:
      - events: [connect]
        condition: net.scope = external
      - events: [connect]
        condition: net.scope = loopback
      - events: [exec]
        condition: proc.name in (sh, bash)
""")


def out(t, pid=10, **proc):
    return rec(t, type="connect", process={"pid": pid, **proc}, network={"daddr": "198.51.100.7", "scope": "external"})


def loop(t, pid=10, **proc):
    return rec(t, type="connect", process={"pid": pid, **proc}, network={"daddr": "127.0.0.1", "scope": "loopback"})


def shell(t, pid=10, **proc):
    return rec(t, process={"pid": pid, "comm": "sh", **proc})


def test_sequence_fires_when_steps_come_in_order_within_the_window():
    eng = sequence("process")
    steps = [out(1), loop(2), shell(3)]
    assert fired(eng, *steps) == ["seq"]
    assert eng.state_size() == 0


def test_sequence_evidence_is_the_step_records_oldest_first():
    eng = sequence("process")
    steps = [out(1), loop(2), shell(3)]
    alerts = [a for r in steps for a in eng.evaluate(r)]
    assert alerts[0]["evidence"] == steps
    assert alerts[0]["time"] == steps[-1]["time"]
    jsonschema.validate(alerts[0], SCHEMA)


def test_sequence_steps_out_of_order_do_not_fire():
    assert fired(sequence("process"), loop(1), out(2), shell(3)) == []
    assert fired(sequence("process"), out(1), shell(2), loop(3)) == []


def test_sequence_window_is_from_the_first_step():
    assert fired(sequence("process", within=10), out(0), loop(5), shell(10)) == ["seq"]
    assert fired(sequence("process", within=10), out(0), loop(5), shell(10.5)) == []
    # A later first step restarts the window.
    assert fired(sequence("process", within=10), out(0), out(8), loop(9), shell(17)) == ["seq"]


def test_sequence_by_process_keeps_processes_apart():
    eng = sequence("process")
    assert fired(eng, out(1, pid=10), loop(2, pid=11), shell(3, pid=10)) == []
    # pid reuse: same pid, new key, is another process
    assert fired(sequence("process"), out(1, pid=10), loop(2, pid=10, key="10:2"), shell(3, pid=10, key="10:2")) == []


def test_sequence_by_lineage_accepts_descendants_of_the_first_step():
    anc = [{"pid": 10}]
    eng = sequence("lineage")
    assert fired(eng, out(1, pid=10), loop(2, pid=11, ancestry=anc),
                 shell(3, pid=12, ancestry=[{"pid": 11}, {"pid": 10}])) == ["seq"]
    # a sibling (not a descendant) does not continue it
    eng = sequence("lineage")
    assert fired(eng, out(1, pid=10, ancestry=[{"pid": 5}]), loop(2, pid=11, ancestry=[{"pid": 5}])) == []
    # the first process itself does, and so does a detached descendant (ancestry as at fork)
    eng = sequence("lineage")
    assert fired(eng, out(1, pid=10), loop(2, pid=10), shell(3, pid=13, ppid=1, ancestry=[{"pid": 10}])) == ["seq"]
    # a new process that reuses the pid is not the first process
    eng = sequence("lineage")
    assert fired(eng, out(1, pid=10), loop(2, pid=10, key="10:99"), shell(3, pid=10, key="10:99")) == []


def test_sequence_by_agent_spans_processes_of_one_agent():
    other = {"id": "agent-other"}
    eng = sequence("agent")
    assert fired(eng, out(1, pid=10), loop(2, pid=20), shell(3, pid=30, **{})) == ["seq"]
    eng = sequence("agent")
    a, b = out(1, pid=10), loop(2, pid=20)
    b["agent"] = dict(b["agent"], **other)
    assert fired(eng, a, b, shell(3)) == []


def test_one_record_is_never_two_steps():
    eng = engine("""
- rule: twice
  severity: low
  sequence:
    by: process
    within: 10
    steps:
      - {events: [exec], condition: proc.name = a}
      - {events: [exec], condition: proc.name = a}
""")
    assert fired(eng, rec(1, process={"comm": "a"})) == []
    assert fired(eng, rec(2, process={"comm": "a"})) == ["twice"]
    assert fired(eng, rec(3, process={"comm": "a"})) == []  # the match was used up; this one starts anew
    assert fired(eng, rec(4, process={"comm": "a"})) == ["twice"]


def test_sequence_exceptions_apply_to_every_step():
    eng = engine("""
- rule: seq
  severity: low
  sequence:
    by: process
    within: 10
    steps:
      - {events: [connect], condition: net.scope = external}
      - {events: [connect], condition: net.scope = loopback}
  exceptions:
    - name: dev
      fields: net.dport
      values: [5432]
""")
    dev = rec(2, type="connect", process={"pid": 10}, network={"daddr": "127.0.0.1", "dport": 5432, "scope": "loopback"})
    assert fired(eng, out(1), dev) == []
    assert fired(eng, loop(3)) == ["seq"]


def test_sequence_state_expires_by_record_time(monkeypatch):
    eng = sequence("process", within=10)
    for pid in range(100):
        eng.evaluate(out(1, pid=pid))
    assert eng.state_size() == 100
    eng.evaluate(out(1 + engine_mod.SWEEP_SECONDS + 20, pid=500))  # the clock moves on: the old ones go
    assert eng.state_size() == 1


def test_state_is_bounded_in_keys(monkeypatch):
    monkeypatch.setattr(engine_mod, "MAX_KEYS", 50)
    eng = sequence("process", within=1000)
    for pid in range(200):
        eng.evaluate(out(1, pid=pid))
    assert eng.state_size() == 50
    # the most recent keys are the ones kept
    assert fired(eng, loop(2, pid=199), shell(3, pid=199)) == ["seq"]
    assert fired(eng, loop(2, pid=0), shell(3, pid=0)) == []


# --------------------------------------------------------------------------
# Thresholds.


def threshold(by: str = "process", count: int = 3, within: float = 10, distinct: str = "") -> Engine:
    dist = f", distinct: [{distinct}]" if distinct else ""
    return engine(f"""
- rule: many
  severity: high
  events: [connect]
  condition: net.internal
  threshold: {{by: {by}, within: {within}, count: {count}{dist}}}
  output: "%proc.name: %net.daddr:%net.dport"
  exceptions:
    - name: allowed
      fields: net.dport
      values: [53]
""")


def conn(t, dport=80, daddr="10.0.0.1", pid=10, scope="private"):
    return rec(t, type="connect", process={"pid": pid, "comm": "scan"},
               network={"daddr": daddr, "dport": dport, "scope": scope})


def test_threshold_counts_matching_records_within_the_window():
    eng = threshold(count=3)
    assert fired(eng, conn(0), conn(1), conn(2)) == ["many"]
    eng = threshold(count=3)
    assert fired(eng, conn(0), conn(6), conn(11)) == []  # never 3 within 10 s
    assert fired(eng, conn(12)) == ["many"]  # 6, 11, 12: the window slides
    eng = threshold(count=3)
    assert fired(eng, conn(0), conn(1, scope="external"), conn(2, dport=53), conn(3)) == []


def test_threshold_fires_once_per_key_and_window():
    eng = threshold(count=3, within=10)
    got = fired(eng, *[conn(t) for t in range(0, 10)])
    assert got == ["many"]  # at t=2; quiet until 12
    assert fired(eng, conn(12), conn(13)) == []
    assert fired(eng, conn(14)) == ["many"]


def test_threshold_alert_has_count_and_latest_evidence():
    eng = threshold(count=15, within=100)
    alerts = [a for t in range(15) for a in eng.evaluate(conn(t))]
    (alert,) = alerts
    assert alert["count"] == 15
    assert len(alert["evidence"]) == engine_mod.EVIDENCE_MAX
    assert alert["evidence"][-1]["time"] == conn(14)["time"]
    assert alert["message"] == "scan: 10.0.0.1:80"
    jsonschema.validate(alert, SCHEMA)


def test_threshold_distinct_counts_distinct_values():
    eng = threshold(count=3, distinct="net.daddr, net.dport")
    assert fired(eng, conn(0, 80), conn(1, 80), conn(2, 81), conn(3, 81)) == []
    assert fired(eng, conn(4, 82)) == ["many"]
    eng = threshold(count=3, distinct="net.dport", within=10)
    # 80 at 0 expires by 10.5; 80 seen again at 9 keeps it in
    assert fired(eng, conn(0, 80), conn(9, 80), conn(10.5, 81), conn(11, 82)) == ["many"]
    eng = threshold(count=3, distinct="net.dport", within=10)
    assert fired(eng, conn(0, 80), conn(9, 81), conn(10.5, 82)) == []


def test_threshold_keys_by_process_or_agent():
    eng = threshold(count=3, by="process")
    assert fired(eng, conn(0, pid=1), conn(1, pid=2), conn(2, pid=3)) == []
    eng = threshold(count=3, by="agent")
    assert fired(eng, conn(0, pid=1), conn(1, pid=2), conn(2, pid=3)) == ["many"]


def test_threshold_state_expires():
    eng = threshold(count=100, within=10)
    for pid in range(50):
        eng.evaluate(conn(0, pid=pid))
    assert eng.state_size() == 50
    eng.evaluate(conn(100, pid=999))
    assert eng.state_size() == 1


def test_status_rule_reports_survivors():
    eng = engine("""
- rule: outlived
  severity: medium
  events: [status]
  condition: status.name = root_exited and status.survivors > 0
  output: "%status.survivors processes of %agent.id outlive its root"
""")
    status = {"kind": "status", "status": "root_exited", "time": "2026-01-01T00:00:01.000000000Z",
              "agent": {"id": "agent-x", "root_pid": 5, "labels": {}}, "linger": 2.0,
              "survivors": [{"pid": 7, "key": "7:1", "comm": "sleep"}]}
    (alert,) = eng.evaluate(status)
    assert alert["message"] == "1 processes of agent-x outlive its root"
    assert alert["process"] is None and alert["evidence"] == [status]
    jsonschema.validate(alert, SCHEMA)
    assert eng.evaluate(dict(status, status="agent_finished")) == []


@pytest.mark.parametrize("kind", ["event", "status"])
def test_records_without_time_skip_stateful_rules(kind):
    eng = threshold(count=1)
    r = conn(0)
    del r["time"]
    assert eng.evaluate(r) == []


@pytest.mark.parametrize("pattern, literals", [
    (r"(?i)stratum[0-9]?\+(tcp|udp)://", {"stratum"}),
    (r"(^| )(-e|--exec)( |$)", {"-e", "--exec"}),
    (r"(-e|x)y", None),  # a one-character branch: no literal every match holds
    (r"ab?cd", {"cd"}),
    (r"(abc)?def", {"def"}),
    (r"(?:abc)+x", {"abc"}),
    (r"x*yz{0,3}", None),
    (r"caf\u00e9s", None),  # not ASCII: case folding beyond ASCII is not lower()
    (r"[0-9]+\.[0-9]+", None),
    (r"(?=abc)d", None),
])
def test_required_literals_of_a_regex(pattern, literals):
    from tracer.rules.compiler import _regex_literals

    got = _regex_literals(pattern)
    assert (set(got) if got is not None else None) == literals


@pytest.mark.parametrize("pattern, literal", [
    ("R:*:*", "R:"), ("*[abc]tunnel?x", "tunnel"), ("/usr/*/ss?", "/usr/"), ("*", None), ("[x", "[x"),
])
def test_longest_fixed_run_of_a_glob(pattern, literal):
    from tracer.rules.compiler import _glob_literal

    assert _glob_literal(pattern) == literal
