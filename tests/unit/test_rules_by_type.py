"""Conditions compiled per record type (Compiler.specialize, Rule.by_type): tests of evt.type fold away.

The folded condition must say exactly what the whole one says of every
record of that type, and it may have a guard the whole one lacks.
"""

from __future__ import annotations

import dataclasses

from tracer.rules import Engine, load, load_text
from tracer.rules.loader import example_record, example_records

MIXED = """
- rule: mixed
  severity: high
  events: [exec, send, dns, exit]
  condition: >-
    (evt.type = send and payload.text contains mining.subscribe)
    or (evt.type = exec and proc.name in (xmrig, minerd))
    or (evt.type = dns and dns.query endswith .pool.example)
    or (evt.type = exit and exit.code > 100)
- rule: exec-only-really
  severity: low
  events: [exec, connect]
  condition: evt.type = exec and proc.name = nc
- rule: not-connect
  severity: low
  events: [exec, connect]
  condition: not evt.type in (connect) and proc.name = socat
- rule: excepted
  severity: low
  events: [exec, connect]
  condition: proc.name = curl
  exceptions:
    - name: connects
      fields: [evt.type]
      comps: [=]
      values: [[connect]]
- rule: seq
  severity: high
  sequence:
    by: process
    within: 10
    steps:
      - {events: [exec, connect], condition: evt.type = connect and net.dport = 22}
      - {events: [exec, connect], condition: evt.type = exec and proc.name = bash}
"""


def rec(**partial) -> dict:
    return example_record(partial, partial.get("type", "exec"), 0)


def rules_by_id(text: str) -> dict:
    return {r.id: r for r in load_text(text, "t.yaml").rules}


def test_folded_condition_gets_a_guard_the_whole_one_lacks():
    r = rules_by_id(MIXED)["mixed"]
    assert r.guard is None  # the exit branch has no guard, so the whole Or has none
    match, guard = r.by_type["exec"]
    assert guard == (("eq", "proc.name", frozenset({"xmrig", "minerd"})),)
    assert r.by_type["dns"][1] == (("sub", "dns.query", frozenset({".pool.example"})),)
    assert r.by_type["send"][1] == (("sub", "payload.text", frozenset({"mining.subscribe"})),)
    for record in (rec(type="exec", process={"comm": "xmrig"}), rec(type="exec", process={"comm": "ls"}),
                   rec(type="dns", dns={"query": "a.pool.example"}), rec(type="dns", dns={"query": "pypi.org"}),
                   rec(type="send", payload={"text": '{"method": "mining.subscribe"}'}),
                   rec(type="exit", exit_code=101), rec(type="exit", exit_code=1)):
        assert r.by_type[record["type"]][0](record) == r.match(record)


def test_types_a_condition_rules_out_are_marked_and_never_dispatched():
    rules = rules_by_id(MIXED)
    assert rules["exec-only-really"].by_type == {"exec": rules["exec-only-really"].by_type["exec"], "connect": None}
    assert rules["not-connect"].by_type["connect"] is None
    assert rules["excepted"].by_type["connect"] is None
    assert rules["excepted"].by_type["exec"][0](rec(type="exec", process={"comm": "curl"}))  # exception gone
    eng = Engine(list(rules.values()))
    nc_connect = rec(type="connect", process={"comm": "nc"})
    assert rules["exec-only-really"].match(nc_connect) is False
    assert eng.evaluate(nc_connect) == []
    assert [a["rule"] for a in eng.evaluate(rec(type="exec", process={"comm": "nc"}))] == ["exec-only-really"]
    assert [a["rule"] for a in eng.evaluate(rec(type="exec", process={"comm": "curl"}))] == ["excepted"]
    assert eng.evaluate(rec(type="connect", process={"comm": "curl"})) == []
    seq = next(m for m in eng._machines if m.rule.id == "seq")
    assert [k for k, _ in seq.steps_for["connect"]] == [0]  # step 1 can never take a connect
    assert [k for k, _ in seq.steps_for["exec"]] == [1]


def test_sequence_steps_fold_per_type():
    eng = Engine(list(rules_by_id(MIXED).values()))
    key = {"pid": 5, "key": "5:1"}
    out = [a["rule"] for r in (rec(type="connect", time=0, process={**key, "comm": "bash"}, network={"dport": 22}),
                               rec(type="exec", time=1, process={**key, "comm": "bash"}))
           for a in eng.evaluate(r)]
    assert out == ["seq"]


def test_default_rules_fire_the_same_with_and_without_folding():
    """Every example of every default rule, through one engine: folded and whole conditions agree."""
    rules = load(check_examples=False).rules
    assert any(r.by_type for r in rules) or any(s.by_type for r in rules if r.sequence for s in r.sequence.steps)

    def whole(r):
        if r.sequence is not None:
            steps = [dataclasses.replace(s, by_type={}) for s in r.sequence.steps]
            return dataclasses.replace(r, sequence=dataclasses.replace(r.sequence, steps=steps))
        return dataclasses.replace(r, by_type={})

    folded, plain = Engine(rules), Engine([whole(r) for r in rules])
    records = [x for r in rules for ex in r.examples for x in example_records(r, ex)]
    a = [orjson_like(folded.evaluate(x)) for x in records]
    b = [orjson_like(plain.evaluate(x)) for x in records]
    assert sum(map(len, a)) > 50
    assert a == b


def orjson_like(alerts: list[dict]) -> list:
    return [(x["rule"], x.get("count"), x.get("time")) for x in alerts]
