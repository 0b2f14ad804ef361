"""Egress policies: parsing, error messages (file:line: field: what), and the kernel's tables."""

from __future__ import annotations

import itertools

import pytest

from tracer import policy as P


def parse(text: str):
    return P.parse(text, "p.yaml")


def error(text: str) -> str:
    with pytest.raises(P.PolicyError) as info:
        parse(text)
    return str(info.value)


def test_the_default_policy_loads_and_says_what_the_issue_asks():
    pol = P.load()
    assert pol.name == "rl-sandbox" and pol.default == "allow"
    assert pol.decide("169.254.169.254", 80, "tcp") == ("deny", "cloud-metadata")
    assert pol.decide("fd00:ec2::254", 80, "tcp") == ("deny", "cloud-metadata")
    assert pol.decide("::ffff:169.254.169.254", 80, "udp") == ("deny", "cloud-metadata")
    assert pol.decide("198.18.0.1", 22, "tcp") == ("deny", "outbound-ssh")
    assert pol.decide("198.18.0.1", 22, "udp") == ("allow", None)
    assert pol.decide("127.0.0.1", 22, "tcp") == ("allow", "loopback")
    assert pol.decide("::1", 22, "tcp") == ("allow", "loopback")
    assert pol.decide("198.18.0.1", 443, "tcp") == ("allow", None)


POLICY = """\
name: test
default: deny
rules:
  - name: dns
    action: allow
    protocol: udp
    ports: [53]
  - name: lab
    action: allow
    to: [10.0.0.0/8, "fd00::/8"]
    ports: [22, "8000-8999"]
  - name: lab-host-blocked
    action: deny
    to: [10.1.2.3/32]
  - name: web
    action: allow
    protocol: tcp
    ports: [80, 443, "1024-2048"]
"""


def test_first_match_wins_and_the_default_decides_the_rest():
    pol = parse(POLICY)
    assert pol.decide("8.8.8.8", 53, "udp") == ("allow", "dns")
    assert pol.decide("8.8.8.8", 53, "tcp") == ("deny", None)
    assert pol.decide("10.1.2.3", 22, "tcp") == ("allow", "lab")  # lab comes first
    assert pol.decide("10.1.2.3", 23, "tcp") == ("deny", "lab-host-blocked")
    assert pol.decide("fd00::5", 8500, "tcp") == ("allow", "lab")
    assert pol.decide("1.2.3.4", 1500, "tcp") == ("allow", "web")
    assert pol.decide("1.2.3.4", 1500, "udp") == ("deny", None)


def test_the_kernel_tables_decide_as_the_policy_does():
    """KernelTables.decide is the BPF program's algorithm (LPM entry with folded masks, ports, first bit)."""
    pol = parse(POLICY)
    tables = pol.tables()
    names = [r.name for r in pol.rules]
    addrs = ["10.1.2.3", "10.9.9.9", "8.8.8.8", "fd00::5", "fe80::1", "::ffff:10.1.2.3", "1.2.3.4"]
    ports = [22, 23, 53, 80, 1024, 1500, 2049, 8000, 8999, 9000]
    for addr, port, proto in itertools.product(addrs, ports, ["tcp", "udp", "other"]):
        deny, index = tables.decide(addr, port, proto)
        action, rule = pol.decide(addr, port, proto)
        assert ("deny" if deny else "allow", None if index is None else names[index]) == (action, rule), \
            (addr, port, proto)


def test_covering_prefixes_are_folded_into_longer_ones():
    pol = parse(POLICY)
    t = pol.tables()
    host = t.v4[(32, bytes([10, 1, 2, 3]))]
    assert host == 0b110  # lab (its /8 covers the host) and lab-host-blocked
    assert t.v4[(8, bytes([10, 0, 0, 0]))] == 0b010
    assert t.ports == {53: 0b0001, 22: 0b0010, 80: 0b1000, 443: 0b1000}
    assert sorted(t.ranges) == [(1024, 2048, 0b1000), (8000, 8999, 0b0010)]
    assert t.any_addr == 0b1001 and t.any_port == 0b0100 and t.deny == 0b0100 and t.default_deny


def test_an_empty_list_matches_nothing_and_a_missing_one_everything():
    pol = parse("name: x\nrules:\n  - {name: none, action: deny, to: []}\n  - {name: all, action: deny, ports: [25]}\n")
    assert pol.decide("1.2.3.4", 80, "tcp") == ("allow", None)
    assert pol.decide("1.2.3.4", 25, "udp") == ("deny", "all")


@pytest.mark.parametrize("text, message", [
    ("name: x\nrules:\n  - name: a\n    action: deny\n    to: [10.0.0.1/8]\n",
     "p.yaml:5: rules[0] (a).to[0]: '10.0.0.1/8' is not a CIDR: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"),
    ("name: x\nrules:\n  - name: a\n    action: deny\n    to:\n      - 10.0.0.0/8\n      - 300.1.1.1/32\n",
     "p.yaml:7: rules[0] (a).to[1]: '300.1.1.1/32' is not a CIDR"),
    ("name: x\nrules:\n  - name: a\n    action: block\n", "p.yaml:4: rules[0] (a).action: 'block' is not allow or deny"),
    ("name: x\nrules:\n  - name: a\n    action: deny\n    ports: [0]\n", "p.yaml:5: rules[0] (a).ports[0]: 0: ports are 1-65535"),
    ("name: x\nrules:\n  - name: a\n    action: deny\n    ports: [\"90-80\"]\n",
     "p.yaml:5: rules[0] (a).ports[0]: '90-80': the range runs backwards"),
    ("name: x\nrules:\n  - name: a\n    action: deny\n    ports: [ssh]\n",
     "p.yaml:5: rules[0] (a).ports[0]: 'ssh' is not a port or a \"lo-hi\" range"),
    ("name: x\nrules:\n  - name: a\n    action: deny\n    protocol: icmp\n",
     "p.yaml:5: rules[0] (a).protocol: 'icmp' is not one of tcp, udp, other, any"),
    ("name: x\nrules:\n  - name: a\n    action: deny\n    port: [22]\n",
     "p.yaml:5: rules[0] (a).port: unknown key (one of name, description, action, to, ports, protocol)"),
    ("name: x\nrules:\n  - {name: a, action: deny}\n  - {name: a, action: allow}\n",
     "p.yaml:4: rules[1] (a).name: duplicate rule name (first at line 3)"),
    ("name: x\nrules:\n  - action: deny\n", "p.yaml:3: rules[0].name: every rule needs a name"),
    ("name: x\ndefault: maybe\n", "p.yaml:2: default: 'maybe' is not allow or deny"),
    ("name: X Y\n", "p.yaml:1: name: the policy needs a name"),
    ("name: x\nrule: []\n", "p.yaml:2: rule: unknown key (one of name, description, default, rules)"),
    ("name: x\nrules: {a: 1}\n", "p.yaml:2: rules: must be a list of rules"),
    ("- a\n", "p.yaml:1: policy: a policy is a mapping with name, default and rules"),
    ("", "p.yaml:1: policy: the file is empty"),
    ("name: x\nrules:\n  - name: a\n   action: deny\n", "p.yaml:4: YAML:"),
])
def test_errors_name_file_line_and_field(text, message):
    assert error(text).startswith(message)


def test_limits_are_checked_before_anything_reaches_the_kernel():
    rules = "".join(f"  - {{name: r{i}, action: deny, ports: [{i + 1}]}}\n" for i in range(P.MAX_RULES + 1))
    assert error(f"name: x\nrules:\n{rules}") == f"p.yaml:2: rules: {P.MAX_RULES + 1} rules, at most {P.MAX_RULES}"
    ranges = ", ".join(f'"{i * 10 + 1}-{i * 10 + 5}"' for i in range(P.MAX_PORT_RANGES + 1))
    assert "distinct port ranges, at most 16" in error(f"name: x\nrules:\n  - {{name: a, action: deny, ports: [{ranges}]}}\n")


def test_a_missing_file_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(P.PolicyError, match="cannot read the policy"):
        P.load(tmp_path / "nope.yaml")
