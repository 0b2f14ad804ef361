"""The condition language: every operator, list fields, missing fields, and errors with columns."""

from __future__ import annotations

import json
import re

import pytest

from tracer.rules import RulesError, load_text
from tracer.rules.loader import example_record

LISTS = """
- list: tunnel_tools
  items: [chisel, frpc, ngrok]
- list: pool_ports
  items: [3333, 4444]
- list: private_nets
  items: [10.0.0.0/8, "fc00::/7"]
- list: more_tools
  items: [tunnel_tools, bore]
- macro: is_ssh
  condition: proc.name = ssh
"""


def matcher(condition: str, events: str = "exec"):
    text = LISTS + f"""
- rule: r
  severity: low
  events: [{events}]
  condition: {json.dumps(condition)}
"""
    (rule,) = load_text(text, "t.yaml").rules
    return rule


def rec(**partial) -> dict:
    return example_record(partial, partial.get("type", "exec"), 0)


SSH = rec(process={"comm": "ssh", "exe": "/usr/bin/ssh", "argv": ["ssh", "-N", "-R", "8080:localhost:80", "u@h"],
                   "uid": 1000, "ancestry": [{"pid": 50, "comm": "bash"}, {"pid": 40, "comm": "agent"}]})
CONNECT = rec(type="connect", process={"comm": "curl"},
              network={"daddr": "10.1.2.3", "dport": 3333, "scope": "private", "protocol": "tcp"})
CONNECT6 = rec(type="connect", process={"comm": "curl"}, network={"daddr": "fd12::1", "dport": 443, "scope": "private"})
MAPPED = rec(type="connect", process={"comm": "curl"}, network={"daddr": "::ffff:10.9.9.9", "dport": 80})
EXTERNAL = rec(type="connect", process={"comm": "curl"},
               network={"daddr": "198.51.100.7", "dport": 443, "scope": "external"})


@pytest.mark.parametrize(
    "condition, record, expected",
    [
        # = != and the numeric comparisons
        ("proc.name = ssh", SSH, True),
        ("proc.name = sshd", SSH, False),
        ("proc.name != sshd", SSH, True),
        ("proc.name != ssh", SSH, False),
        ("proc.uid = 1000", SSH, True),
        ("proc.uid < 1000", SSH, False),
        ("proc.uid <= 1000", SSH, True),
        ("proc.uid > 0", SSH, True),
        ("proc.uid >= 1001", SSH, False),
        ("net.dport >= 3000 and net.dport<4000", CONNECT, True),
        # text operators
        ("proc.cmdline contains 8080:localhost", SSH, True),
        ("proc.cmdline contains (nothing, 8080:localhost)", SSH, True),
        ("proc.cmdline icontains LOCALHOST", SSH, True),
        ("proc.cmdline icontains (XX, U@H)", SSH, True),
        ("proc.exe startswith /usr/", SSH, True),
        ("proc.exe startswith (/opt/, /bin/)", SSH, False),
        ("proc.exe endswith /ssh", SSH, True),
        ("proc.exe glob /usr/*/ss?", SSH, True),
        ("proc.exe glob /usr/ssh*", SSH, False),
        ("proc.exe glob (/opt/*, '/usr/bin/[rs]sh')", SSH, True),
        (r"proc.cmdline regex '-R\s+\d+:'", SSH, True),
        ("proc.cmdline regex '^-R'", SSH, False),
        ("proc.cmdline regex (^nope, 'u@h$')", SSH, True),
        # in: literal lists, named lists, lists of lists, numbers
        ("proc.name in (scp, ssh)", SSH, True),
        ("proc.name in (scp, sftp)", SSH, False),
        ("proc.name in tunnel_tools", SSH, False),
        ("proc.name in (tunnel_tools, ssh)", SSH, True),
        ("net.dport in pool_ports", CONNECT, True),
        ("net.dport in (22, 80)", CONNECT, False),
        ("proc.name in more_tools", rec(process={"comm": "chisel"}), True),
        ("proc.name in more_tools", rec(process={"comm": "bore"}), True),
        ("proc.name in 'ssh'", SSH, True),  # a quoted value is never a list name
        # list-valued fields: true when any element matches
        ("proc.args = -R", SSH, True),
        ("proc.args = -L", SSH, False),
        ("proc.args startswith 8080", SSH, True),
        ("proc.args contains localhost", SSH, True),
        ("proc.args in (-L, -D)", SSH, False),
        ("proc.args in (-L, -R)", SSH, True),
        ("proc.args glob '*:localhost:*'", SSH, True),
        ("proc.args regex '^u@'", SSH, True),
        ("proc.args icontains U@H", SSH, True),
        ("proc.args != -N", SSH, True),
        ("proc.ancestors = agent", SSH, True),
        ("proc.ancestors = init", SSH, False),
        ("proc.ancestor_exes endswith /bash", SSH, True),
        ("proc.pname = bash", SSH, True),
        # cidr, v4 and v6, lists, v4-mapped
        ("net.daddr cidr 10.0.0.0/8", CONNECT, True),
        ("net.daddr cidr 10.1.2.3", CONNECT, True),
        ("net.daddr cidr 192.168.0.0/16", CONNECT, False),
        ("net.daddr cidr (192.168.0.0/16, 10.1.0.0/16)", CONNECT, True),
        ("net.daddr cidr private_nets", CONNECT6, True),
        ("net.daddr cidr fc00::/7", CONNECT6, True),
        ("net.daddr cidr fc00::/7", CONNECT, False),
        ("net.daddr cidr 10.0.0.0/8", CONNECT6, False),
        ("net.daddr cidr 10.9.0.0/16", MAPPED, True),
        ("net.daddr cidr 10.0.0.0/8", EXTERNAL, False),
        # missing fields: false, and not of it true
        ("net.dport = 22", SSH, False),
        ("net.dport != 22", SSH, False),
        ("not net.dport = 22", SSH, True),
        ("net.daddr cidr 0.0.0.0/0", SSH, False),
        ("net.dport exists", SSH, False),
        ("net.dport exists", CONNECT, True),
        ("not proc.args exists", SSH, False),
        ("payload.text contains SSH", CONNECT, False),
        ("agent.labels.task = 42", SSH, False),
        # bool fields bare and compared
        ("net.internal", CONNECT, True),
        ("net.internal", EXTERNAL, False),
        ("not net.internal", EXTERNAL, True),
        ("net.internal = false", EXTERNAL, True),
        ("net.internal", SSH, False),
        ("proc.detached", SSH, False),
        # and / or / not / parentheses / macros, precedence
        ("proc.name = nope or proc.name = ssh and proc.uid = 1000", SSH, True),
        ("(proc.name = nope or proc.name = ssh) and proc.uid = 0", SSH, False),
        ("not proc.name = nope and not not proc.name = ssh", SSH, True),
        ("is_ssh and proc.args = -R", SSH, True),
        ("not is_ssh", SSH, False),
        ("evt.type = exec", SSH, True),
        # values with operator characters, quoted strings with escapes
        ("proc.cmdline contains '-N -R'", SSH, True),
        ("proc.args contains =0", rec(process={"argv": ["xmrig", "--donate-level=0"]}), True),
        ("proc.args = --donate-level=0", rec(process={"argv": ["xmrig", "--donate-level=0"]}), True),
        (r"proc.args = 'it\'s'", rec(process={"argv": ["echo", "it's"]}), True),
        (r'proc.args = "a\\b"', rec(process={"argv": ["echo", "a\\b"]}), True),
    ],
)
def test_operator(condition, record, expected):
    rule = matcher(condition, events=record.get("type", "exec"))
    assert rule.match(record) is expected


def test_label_and_status_fields():
    labelled = rec(agent={"labels": {"task": "42", "run-id": "x"}})
    assert matcher("agent.labels.task = 42").match(labelled)
    assert matcher("agent.labels.run-id = x").match(labelled)
    status = example_record({"kind": "status", "status": "root_exited", "survivors": [{"pid": 5}, {"pid": 6}]},
                            "status", 0)
    assert matcher("status.name = root_exited and status.survivors = 2", "status").match(status)
    assert not matcher("status.survivors > 0", "status").match(rec())


def test_a_failed_exec_shows_the_old_image_and_what_it_tried():
    failed = rec(process={"argv": ["agentwatch", "run"]},
                 exec={"filename": "/usr/sbin/xmrig", "result": "ENOENT", "retval": -2, "argv": ["xmrig", "-o", "x"]})
    assert matcher("proc.name = agentwatch and exec.result != ok").match(failed)
    assert matcher("exec.filename endswith /xmrig and exec.cmdline contains '-o x'").match(failed)
    assert not matcher("exec.cmdline exists").match(rec(process={"argv": ["true"]}))


def test_wrong_json_types_in_a_record_read_as_missing():
    odd = rec(type="connect", network={"daddr": 7, "dport": "22", "scope": None})
    odd["process"]["argv"] = ["ok", 5]
    odd["agent"] = "not an object"
    for condition in ["net.dport = 22", "net.dport < 100", "net.daddr cidr 0.0.0.0/0", "proc.args contains ok",
                      "proc.cmdline contains ok", "agent.id exists", "net.internal"]:
        assert matcher(condition, "connect").match(odd) is False, condition


def error_of(condition: str) -> str:
    text = LISTS + f"""
- rule: bad-rule
  severity: low
  events: [exec]
  condition: {condition}
"""
    with pytest.raises(RulesError) as info:
        load_text(text, "t.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


CONDITION_LINE = LISTS.count("\n") + 5


@pytest.mark.parametrize(
    "condition, expected",
    [
        ("proc.nmae = ssh", "condition: unknown field 'proc.nmae' (did you mean 'proc.name'?) at column 1"),
        ("proc.name = ssh and nosuch.field exists", "unknown field 'nosuch.field' at column 21"),
        ("name = ssh", "unknown field 'name' at column 1"),
        ("proc.name = ssh and is_sh", "unknown macro 'is_sh' (did you mean 'is_ssh'?) at column 21"),
        ("proc.name in tunnel_tool", "unknown list 'tunnel_tool' (did you mean 'tunnel_tools'?)"),
        ("(proc.name = ssh", "unbalanced parenthesis: '(' is not closed at column 1"),
        ("proc.name = ssh)", "unbalanced parenthesis: ')' has no matching '(' at column 16"),
        ("proc.name in (a, b", "unbalanced parenthesis: '(' is not closed at column 14"),
        ("proc.cmdline regex 'a(b'", "bad regex 'a(b': missing ), unterminated subpattern at position 1 at column 20"),
        ("net.daddr cidr 10.0.0.0/33", "bad CIDR '10.0.0.0/33' at column 16"),
        ("net.daddr cidr (10.0.0.0/8, 300.1.1.1)", "bad CIDR '300.1.1.1' at column 29"),
        ("net.dport = ssh", "value 'ssh' is not a whole number (net.dport is an int) at column 13"),
        ("proc.name < 5", "'<' compares numbers; proc.name is text at column 11"),
        ("net.dport contains 2", "'contains' works on text; net.dport is an int at column 11"),
        ("proc.name cidr 10.0.0.0/8", "'cidr' works on addresses"),
        ("proc.name = (a, b)", "'=' takes one value; use 'in' for a list at column 11"),
        ("proc.name = ssh and", "condition ends early: expected a field, a macro or '(' at column 20"),
        ("proc.name = ssh ssh", "unexpected 'ssh' (expected and, or, or the end) at column 17"),
        ("proc.cmdline contains -N -R", "unexpected '-R' (expected and, or, or the end) at column 26"),
        ("proc.name", "field 'proc.name' needs an operator"),
        ("proc.name = 'ssh", "unterminated string at column 13"),
        ("and proc.name = ssh", "expected a field, a macro or '(', not 'and' at column 1"),
        ("proc.name in ()", "empty list of values at column 15"),
        ("net.internal = maybe", "value 'maybe' is not true or false"),
        ("tunnel_tools", "'tunnel_tools' is a list, not a macro at column 1"),
        ("proc.name in is_ssh", "'is_ssh' is a macro, not a list"),
    ],
)
def test_condition_error_names_file_line_rule_and_column(condition, expected):
    message = error_of(condition)
    assert message.startswith(f"t.yaml:{CONDITION_LINE}: rule bad-rule: ")
    assert expected in message, message


def test_empty_condition_is_missing():
    assert error_of('""').endswith("rule bad-rule: condition: missing condition")


def test_error_in_a_block_condition_names_its_own_line():
    text = """
- rule: multi-line
  severity: low
  events: [exec]
  condition: |
    proc.name = ssh
    and proc.nmae = x
"""
    with pytest.raises(RulesError) as info:
        load_text(text, "b.yaml")
    assert str(info.value) == ("b.yaml:7: rule multi-line: condition: unknown field 'proc.nmae' "
                               "(did you mean 'proc.name'?) at column 5")


def test_regex_is_compiled_once():
    rule = matcher(r"proc.cmdline regex 'x+'")
    calls = []
    original = re.compile
    try:
        re.compile = lambda *a, **k: calls.append(a) or original(*a, **k)
        for _ in range(10):
            rule.match(SSH)
    finally:
        re.compile = original
    assert calls == []
