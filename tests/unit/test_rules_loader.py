"""Loading rules: items, lists, macros, append, override, errors as one line with file:line, examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.rules import Engine, RulesError, load, load_text, run_examples
from tracer.rules.fields import RECORD_TYPES
from tracer.rules.loader import example_record

FIXTURE = Path(__file__).parent / "fixtures" / "rules" / "tiny.yaml"


def rec(**partial) -> dict:
    return example_record(partial, partial.get("type", "exec"), 0)


def rule_of(ruleset, rid):
    return next(r for r in ruleset.rules if r.id == rid)


def error(text: str, file: str = "r.yaml") -> str:
    with pytest.raises(RulesError) as info:
        load_text(text, file)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fixture_loads_and_its_examples_hold():
    ruleset = load([FIXTURE])
    assert [r.id for r in ruleset.rules] == [
        "ssh-remote-forward", "tunnel-tool", "tunnel-then-local", "port-scan", "descendant-survives"]
    ssh = rule_of(ruleset, "ssh-remote-forward")
    assert ssh.tags == ("tunnel", "T1572") and ssh.mitre == ("T1572",)
    assert ssh.severity == "high" and ssh.action == "none" and ssh.enabled
    assert rule_of(ruleset, "tunnel-tool").action == "kill_process"
    assert rule_of(ruleset, "tunnel-tool").guard == (("eq", "proc.name", frozenset({"chisel", "frpc", "ngrok"})),)
    assert all(run_examples(r) == [] for r in ruleset.rules)


def test_mitre_ids_are_copied_from_tags():
    (r,) = load_text("""
- rule: m
  severity: low
  tags: [tunnel, T1059.004, T1572, t1000, T12345, mitre]
  events: [exec]
  condition: proc.name = x
""").rules
    assert r.mitre == ("T1059.004", "T1572")


def test_a_directory_loads_its_yaml_files_in_sorted_order(tmp_path):
    write(tmp_path, "b.yaml", "- list: tools\n  items: [b]\n")
    write(tmp_path, "a.yaml", "- list: tools\n  items: [a]\n- rule: r\n  severity: low\n  events: [exec]\n"
                              "  condition: proc.name in tools\n")
    write(tmp_path, "c.yml", "this is not loaded: [")
    ruleset = load([tmp_path])
    assert ruleset.lists["tools"] == ["b"]  # b.yaml replaced the list a.yaml defined
    r = ruleset.rules[0]
    assert r.match(rec(process={"comm": "b"})) and not r.match(rec(process={"comm": "a"}))


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(RulesError, match="no such rules file or directory"):
        load([tmp_path / "nope.yaml"])


def test_list_append_and_lists_of_lists():
    ruleset = load_text("""
- list: a
  items: [x]
- list: a
  append: true
  items: [y]
- list: b
  items: [a, z]
""")
    assert ruleset.lists == {"a": ["x", "y"], "b": ["x", "y", "z"]}


def test_macro_replace_and_append():
    ruleset = load_text("""
- macro: m
  condition: proc.name = a
- rule: r
  severity: low
  events: [exec]
  condition: m
- macro: m
  condition: proc.name = b
- macro: m
  append: true
  condition: or proc.name = c
""")
    r = ruleset.rules[0]
    # The rule sees the macro as it is at the end of the load.
    assert [r.match(rec(process={"comm": n})) for n in "abc"] == [False, True, True]


def test_macros_may_use_macros_defined_later_and_cycles_are_errors():
    load_text("""
- macro: outer
  condition: inner and proc.uid = 0
- macro: inner
  condition: proc.name = x
""")
    message = error("""
- macro: a
  condition: b
- macro: b
  condition: a
""")
    assert message == "r.yaml:5: macro b: condition: macro cycle: a -> b -> a at column 1"


def test_append_needs_a_leading_and_or_or():
    assert error("""
- macro: m
  condition: proc.name = a
- macro: m
  append: true
  condition: proc.name = b
""") == "r.yaml:6: macro m: condition: an appended condition starts with 'and' or 'or' at column 1"


def test_override_appends_and_replaces():
    ruleset = load_text("""
- rule: r
  severity: low
  tags: [a]
  events: [exec]
  condition: proc.name in (x, y)
  exceptions:
    - name: ex
      fields: proc.uid
      values: [0]
- rule: r
  override: {condition: append, exceptions: append, tags: append, severity: replace, enabled: replace}
  condition: and not proc.name = y
  exceptions:
    - name: ex
      fields: proc.uid
      values: [1]
  tags: [T1572]
  severity: critical
  enabled: false
""")
    r = ruleset.rules[0]
    assert r.severity == "critical" and r.tags == ("a", "T1572") and r.mitre == ("T1572",) and not r.enabled
    assert r.match(rec(process={"comm": "x", "uid": 1000}))
    assert not r.match(rec(process={"comm": "y", "uid": 1000}))
    assert not r.match(rec(process={"comm": "x", "uid": 0}))
    assert not r.match(rec(process={"comm": "x", "uid": 1}))
    assert Engine(ruleset.rules).evaluate(rec(process={"comm": "x"})) == []  # disabled


def test_enabled_alone_toggles_an_earlier_rule():
    ruleset = load_text("""
- rule: r
  severity: low
  events: [exec]
  condition: proc.name = x
- rule: r
  enabled: false
""")
    assert not ruleset.rules[0].enabled


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "- rule: r\n  severity: high\n  events: [exec]\n  condition: proc.name = y\n",
         "r.yaml:5: rule r: duplicate rule id (first defined at r.yaml:1; use override: to change it)"),
        ("- rule: r\n  sevrity: low\n",
         "r.yaml:2: rule r: unknown key 'sevrity' (did you mean 'severity'?)"),
        ("- rule: r\n  severity: urgent\n  events: [exec]\n  condition: proc.name = x\n",
         "r.yaml:2: rule r: bad severity 'urgent' (one of info, low, medium, high, critical)"),
        ("- rule: r\n  events: [exec]\n  condition: proc.name = x\n",
         "r.yaml:1: rule r: severity: missing (info, low, medium, high, critical)"),
        ("- rule: r\n  severity: low\n  events: [exec]\n",
         "r.yaml:1: rule r: condition: missing condition"),
        ("- rule: r\n  severity: low\n  condition: proc.name = x\n",
         f"r.yaml:1: rule r: events: missing (one or more of {', '.join(RECORD_TYPES)})"),
        ("- rule: r\n  severity: low\n  events: [exce]\n  condition: proc.name = x\n",
         "r.yaml:3: rule r: events: unknown record type 'exce'"),
        ("- rule: R_1\n  severity: low\n",
         "r.yaml:1: rule 'R_1': a rule id is lowercase letters, digits and dashes"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n  action: kill\n",
         "r.yaml:5: rule r: bad action 'kill' (one of none, kill_process, kill_agent, freeze_agent)"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  output: \"%proc.name did %proc.nmae\"\n",
         "r.yaml:5: rule r: output: unknown field '%proc.nmae'"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n  enabled: yes please\n",
         "r.yaml:5: rule r: enabled: true or false"),
        ("- rule: r\n  override: {condition: append}\n  condition: and proc.name = x\n",
         "r.yaml:2: rule r: override of a rule that is not defined yet"),
        ("- list: l\n  items: [a]\n  apend: true\n",
         "r.yaml:3: list l: unknown key 'apend' (did you mean 'append'?)"),
        ("- list: l\n  append: true\n  items: [a]\n", "r.yaml:2: list l: append to a list that is not defined yet"),
        ("- macro: m\n  append: true\n  condition: or proc.name = x\n",
         "r.yaml:2: macro m: append to a macro that is not defined yet"),
        ("- rules: r\n", "r.yaml:1: an item has exactly one of rule, macro, list (this one has none)"),
        ("- rule: r\n  enabled: false\n",
         "r.yaml:1: rule r: an item of just rule and enabled changes an earlier rule, and there is none"),
        ("- list: x\n  items: [a]\n- macro: x\n  condition: proc.name = a\n",
         "r.yaml:3: macro x: 'x' is already a list (r.yaml:1); lists and macros share one namespace"),
        ("- rule: r\n  severity: low\n  key: [unclosed\n", "r.yaml:4: YAML:"),
        ("rule: r\n", "r.yaml:1: a rules file is a YAML list of items"),
        ("- rule: r\n  severity: low\n  severity: high\n", "r.yaml:3: duplicate key 'severity'"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  exceptions:\n    - name: e\n      fields: [proc.nam]\n      values: [[x]]\n",
         "r.yaml:7: rule r: exceptions: e: fields: unknown field 'proc.nam'"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  exceptions:\n    - name: e\n      fields: [proc.name, proc.uid]\n      comps: [=]\n      values: []\n",
         "r.yaml:8: rule r: exceptions: e: comps: one operator per field"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  exceptions:\n    - name: e\n      fields: [proc.uid]\n      values: [[root]]\n",
         "r.yaml:6: rule r: exceptions: e: value 'root' is not a whole number (proc.uid is an int)"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  exceptions:\n    - name: e\n      fields: [proc.name]\n      comps: [in]\n      values: [[no_list]]\n",
         "r.yaml:6: rule r: exceptions: e: unknown list 'no_list'"),
        ("- rule: r\n  severity: low\n  sequence: {by: host, within: 5, steps: []}\n",
         "r.yaml:3: rule r: sequence.by: 'host' is not process, lineage or agent"),
        ("- rule: r\n  severity: low\n  sequence:\n    by: process\n    within: 5\n    steps:\n"
         "      - {events: [exec], condition: proc.name = a}\n",
         "r.yaml:6: rule r: sequence.steps: a list of two or more steps"),
        ("- rule: r\n  severity: low\n  sequence:\n    within: 0\n",
         "r.yaml:4: rule r: sequence.within: seconds, a number > 0"),
        ("- rule: r\n  severity: low\n  sequence:\n    within: 5\n    steps:\n"
         "      - {events: [exec], condition: proc.name = a}\n      - {events: [exec], condition: proc.nam = b}\n",
         "r.yaml:7: rule r: sequence.steps[1].condition: unknown field 'proc.nam'"),
        ("- rule: r\n  severity: low\n  events: [connect]\n  condition: net.internal\n"
         "  threshold: {by: process, within: 10, count: 0}\n",
         "r.yaml:5: rule r: threshold.count: a whole number >= 1"),
        ("- rule: r\n  severity: low\n  events: [connect]\n  condition: net.internal\n"
         "  threshold: {by: host, within: 10, count: 3}\n",
         "r.yaml:5: rule r: threshold.by: 'host' is not process, lineage or agent"),
        ("- rule: r\n  severity: low\n  events: [connect]\n  condition: net.internal\n"
         "  threshold: {by: process, within: 10, count: 3, processes: 2}\n",
         "r.yaml:5: rule r: threshold.processes: counts the processes of an agent or a lineage "
         "(by: agent or by: lineage)"),
        ("- rule: r\n  severity: low\n  events: [connect]\n  condition: net.internal\n"
         "  threshold: {by: agent, within: 10, count: 3, processes: 0}\n",
         "r.yaml:5: rule r: threshold.processes: a whole number >= 1"),
        ("- rule: r\n  severity: low\n  events: [connect]\n  condition: net.internal\n"
         "  threshold: {within: 10, count: 3, distinct: [net.port]}\n",
         "r.yaml:5: rule r: threshold.distinct: unknown field 'net.port'"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  examples:\n    match:\n      - {process: {comm: y}}\n",
         "r.yaml:7: rule r: examples.match[0]: does not match"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  examples:\n    no_match:\n      - {process: {comm: x}}\n",
         "r.yaml:7: rule r: examples.no_match[0]: matches, but should not"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  examples:\n    match:\n      - {proces: {comm: x}}\n",
         "r.yaml:7: rule r: examples.match[0]: unknown record key 'proces' (did you mean 'process'?)"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  examples:\n    match:\n      - {process: {name: x}}\n",
         "r.yaml:7: rule r: examples.match[0]: unknown process key 'name'"),
        ("- rule: r\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n"
         "  examples:\n    match:\n      - [{process: {comm: x}}]\n",
         "r.yaml:7: rule r: examples.match[0]: one record (a mapping); a list of records is for sequence"),
    ],
)
def test_malformed_rules_fail_with_one_precise_line(text, expected):
    assert error(text).startswith(expected)


def test_examples_can_be_skipped_and_reported_all_at_once():
    text = """
- rule: r
  severity: low
  events: [exec]
  condition: proc.name = x
  examples:
    match:
      - {process: {comm: x}}
      - {process: {comm: y}}
    no_match:
      - {process: {comm: x}}
"""
    (r,) = load_text(text, "e.yaml", check_examples=False).rules
    assert run_examples(r) == [
        "e.yaml:9: rule r: examples.match[1]: does not match",
        "e.yaml:11: rule r: examples.no_match[0]: matches, but should not",
    ]


def test_example_defaults_resolve_every_field_a_rule_reads():
    r = example_record({"process": {"argv": ["/opt/x/chisel", "client"]}}, "exec", 0)
    p = r["process"]
    assert (p["comm"], p["exe"], p["key"], p["ppid"]) == ("chisel", "/opt/x/chisel", "4242:1000", 1)
    assert r["exec"]["result"] == "ok" and r["agent"]["id"] == "agent-example"
    c = example_record({"type": "connect", "network": {"daddr": "fd00::1"}, "time": 2.5}, "exec", 3)
    assert c["network"]["family"] == "ipv6" and c["time"] == "2026-01-01T00:00:02.500000000Z"
    s = example_record({"kind": "status", "status": "root_exited"}, "exec", 0)
    assert s["kind"] == "status" and "type" not in s and "process" not in s


def test_disabled_rules_are_still_checked():
    assert error("""
- rule: r
  severity: low
  enabled: false
  events: [exec]
  condition: proc.nmae = x
""").startswith("r.yaml:6: rule r: condition: unknown field 'proc.nmae'")


def test_default_rules_directory_is_the_repository_rules():
    from tracer.rules import default_rules_dir

    assert default_rules_dir() == Path(__file__).resolve().parents[2] / "rules"


def test_list_items_and_exception_values_are_taken_as_written():
    """YAML 1.1 reads on as true and 0755 as 493; names and values are kept as typed."""
    ruleset = load_text("""
- list: odd
  items: [on, 0755, "quoted", 1_000]
- rule: r
  severity: low
  events: [exec]
  condition: proc.name in odd
  exceptions:
    - name: e
      fields: proc.args
      comps: contains
      values: [off, 0x10]
""")
    assert ruleset.lists["odd"] == ["on", "0755", "quoted", "1_000"]
    r = ruleset.rules[0]
    assert r.match(rec(process={"argv": ["on"]})) and r.match(rec(process={"argv": ["0755"]}))
    assert not r.match(rec(process={"argv": ["on", "xoffx"]}))
    assert not r.match(rec(process={"argv": ["on", "0x10"]}))
    assert r.match(rec(process={"argv": ["on", "16"]}))


def test_absurd_nesting_is_an_error_not_a_traceback():
    deep = "(" * 5000 + "proc.name = x" + ")" * 5000
    assert "nests too deep" in error(f"- rule: r\n  severity: low\n  events: [exec]\n  condition: '{deep}'\n")
    assert "nests too deep" in error("- " + "[" * 5000 + "]" * 5000 + "\n")
