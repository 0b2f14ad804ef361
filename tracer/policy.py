"""Egress policies: YAML files to the tables the kernel enforces (bpf/policy.bpf.c).

A policy is an ordered list of rules; the first rule that matches a
destination decides, and `default` decides when none does:

    name: rl-sandbox
    default: allow
    rules:
      - name: cloud-metadata
        action: deny
        to: [169.254.169.254/32, fd00:ec2::254/128]
      - name: outbound-ssh
        action: deny
        protocol: tcp
        ports: [22]

A rule matches when the destination address is in one of its `to` CIDRs
(no `to`: any address; `to: []`: no address, an inert list to fill in), its
port is in `ports` (numbers or "lo-hi"; none: any port) and its protocol is
one of `protocol` (tcp, udp, other or any; default any). An IPv4 rule also
covers the v4-mapped form (::ffff:a.b.c.d) an IPv6 socket may use.

Everything is parsed and checked before anything reaches the kernel, and an
error names the file, the line and the field (`policy.yaml:12: rules[1].to[0]:
...`), so a bad policy is never half applied. Nothing here needs BCC.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path


from .rules.parser import RulesError, YList, YMap, load_document

MAX_RULES = 64            # one bit each in the kernel's u64 masks
MAX_PORT_RANGES = 16      # "lo-hi" ranges in the whole policy: AW_POL_RANGES in bpf/policy.bpf.c
MAX_PORTS = 4096          # distinct single ports in the whole policy: AW_POL_PORTS
MAX_CIDRS = 16384         # per address family: the LPM tries' size
ACTIONS = ("allow", "deny")
PROTO_BITS = {"tcp": 1, "udp": 2, "other": 4}
PROTO_INDEX = {"tcp": 0, "udp": 1, "other": 2}  # conf.proto[] in the kernel
ANY_PROTO = 7
DEFAULT_RULE = 0xFFFF     # the rule index the kernel reports when `default: deny` decided
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_TOP_KEYS = ("name", "description", "default", "rules")
_RULE_KEYS = ("name", "description", "action", "to", "ports", "protocol")

POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"
DEFAULT_POLICY = POLICIES_DIR / "rl-sandbox.yaml"


class PolicyError(ValueError):
    """A mistake in a policy file: one line, `file:line: field: what is wrong`."""


@dataclass(frozen=True)
class PolicyRule:
    name: str
    action: str                      # allow | deny
    nets: tuple | None               # ip_network objects; None: any address
    ports: tuple                     # (lo, hi) ranges; empty: any port
    protocols: int                   # PROTO_BITS mask
    line: int

    def matches(self, addr, port: int, proto_bit: int) -> bool:
        if not self.protocols & proto_bit:
            return False
        if self.ports and not any(lo <= port <= hi for lo, hi in self.ports):
            return False
        if self.nets is None:
            return True
        return any(addr.version == n.version and addr in n for n in self.nets)


@dataclass(frozen=True)
class Policy:
    name: str
    default: str
    rules: tuple
    file: str
    description: str = ""

    def decide(self, daddr: str, dport: int, protocol: str) -> tuple[str, str | None]:
        """(action, rule name or None for the default): what the kernel does, in Python."""
        addr = ipaddress.ip_address(daddr)
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        bit = PROTO_BITS.get(protocol, PROTO_BITS["other"])
        for rule in self.rules:
            if rule.matches(addr, dport, bit):
                return rule.action, rule.name
        return self.default, None

    def rule_name(self, index: int) -> str | None:
        """The rule the kernel reported by index; None for the default."""
        if 0 <= index < len(self.rules):
            return self.rules[index].name
        return None

    def tables(self) -> "KernelTables":
        return KernelTables.build(self)

    def as_json(self) -> dict:
        return {"name": self.name, "file": self.file, "default": self.default,
                "rules": [r.name for r in self.rules]}


@dataclass
class KernelTables:
    """The maps of bpf/policy.bpf.c. Every value is a mask of rules (rule i is bit i)."""

    v4: dict = field(default_factory=dict)      # (prefixlen, 4 address bytes) -> rules whose `to` covers it
    v6: dict = field(default_factory=dict)      # (prefixlen, 16 address bytes) -> rules
    ports: dict = field(default_factory=dict)   # single port -> rules that list it
    ranges: list = field(default_factory=list)  # (lo, hi, rules) for ranges lo < hi
    active: int = 0                             # every rule
    deny: int = 0                               # rules that deny
    any_addr: int = 0                           # rules without `to`
    any_port: int = 0                           # rules without `ports`
    proto: list = field(default_factory=lambda: [0, 0, 0, 0])  # rules taking tcp, udp, other
    default_deny: bool = False

    @classmethod
    def build(cls, policy: Policy) -> "KernelTables":
        t = cls(default_deny=policy.default == "deny")
        own: dict = {}  # network -> rules that list it
        ranges: dict = {}
        for i, rule in enumerate(policy.rules):
            bit = 1 << i
            t.active |= bit
            if rule.action == "deny":
                t.deny |= bit
            for name, index in PROTO_INDEX.items():
                if rule.protocols & PROTO_BITS[name]:
                    t.proto[index] |= bit
            if not rule.ports:
                t.any_port |= bit
            for lo, hi in rule.ports:
                if lo == hi:
                    t.ports[lo] = t.ports.get(lo, 0) | bit
                else:
                    ranges[(lo, hi)] = ranges.get((lo, hi), 0) | bit
            if rule.nets is None:
                t.any_addr |= bit
                continue
            for net in rule.nets:
                own[net] = own.get(net, 0) | bit
        t.ranges = [(lo, hi, mask) for (lo, hi), mask in ranges.items()]
        # The kernel's LPM lookup finds only the longest prefix holding an address, so
        # each entry carries the rules of every listed network that contains it too.
        for net, mask in own.items():
            full = mask
            for plen in range(net.prefixlen - 1, -1, -1):
                full |= own.get(net.supernet(new_prefix=plen), 0)
            table = t.v4 if net.version == 4 else t.v6
            table[(net.prefixlen, net.network_address.packed)] = full
        return t

    def decide(self, daddr: str, dport: int, protocol: str) -> tuple[bool, int | None]:
        """(deny, rule index or None): the kernel's algorithm, step for step, for tests."""
        addr = ipaddress.ip_address(daddr)
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        table, bits = (self.v4, 32) if addr.version == 4 else (self.v6, 128)
        found = 0
        for plen in range(bits, -1, -1):  # longest prefix first, as the LPM trie
            key = (plen, ipaddress.ip_network(f"{addr}/{plen}", strict=False).network_address.packed)
            if key in table:
                found = table[key]
                break
        m = (found | self.any_addr) & self.proto[PROTO_INDEX.get(protocol, 2)] & self.active
        if m:
            ports = self.any_port | self.ports.get(dport, 0)
            for lo, hi, mask in self.ranges:
                if lo <= dport <= hi:
                    ports |= mask
            m &= ports
        if not m:
            return bool(self.active) and self.default_deny, None
        first = m & -m
        return bool(first & self.deny), first.bit_length() - 1


def _fail(file: str, line: int, where: str, what: str) -> "NoReturn":  # noqa: F821
    raise PolicyError(f"{file}:{line}: {where}: {what}")


def _line(node, key: str | None = None) -> int:
    if key is not None and isinstance(node, YMap) and key in node.key_line:
        return node.value_line.get(key, node.key_line[key])
    return node.where.line if hasattr(node, "where") else 1


def _parse_nets(file: str, rule: YMap, where: str) -> tuple | None:
    if "to" not in rule:
        return None
    to = rule["to"]
    if to is None:
        to = YList()
        to.where, to.item_line, to.raw = rule.where, [], []
    if not isinstance(to, YList):
        _fail(file, _line(rule, "to"), f"{where}.to", "must be a list of CIDRs (e.g. [10.0.0.0/8, fd00::/8])")
    nets = []
    for j, (item, line) in enumerate(zip(to, to.item_line)):
        text = to.raw[j] if to.raw[j] is not None else item
        if not isinstance(text, str):
            _fail(file, line, f"{where}.to[{j}]", f"{item!r} is not a CIDR")
        try:
            net = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as exc:
            hint = ""
            try:
                loose = ipaddress.ip_network(text.strip(), strict=False)
                hint = f" (did you mean {loose}?)"
            except ValueError:
                pass
            _fail(file, line, f"{where}.to[{j}]", f"{text!r} is not a CIDR: {exc}{hint}")
        nets.append(net)
    return tuple(nets)


def _parse_ports(file: str, rule: YMap, where: str) -> tuple:
    if "ports" not in rule or rule["ports"] is None:
        return ()
    ports = rule["ports"]
    if isinstance(ports, (int, str)) and not isinstance(ports, bool):
        ports = [ports]
        lines = [_line(rule, "ports")]
    elif isinstance(ports, YList):
        lines = ports.item_line
    else:
        _fail(file, _line(rule, "ports"), f"{where}.ports", "must be a list of ports or \"lo-hi\" ranges")
    out = []
    for j, (p, line) in enumerate(zip(ports, lines)):
        here = f"{where}.ports[{j}]"
        if isinstance(p, bool):
            _fail(file, line, here, f"{p!r} is not a port")
        if isinstance(p, int):
            lo = hi = p
        elif isinstance(p, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", p):
            lo, hi = (int(x) for x in p.split("-"))
        elif isinstance(p, str) and p.strip().isdigit():
            lo = hi = int(p)
        else:
            _fail(file, line, here, f"{p!r} is not a port or a \"lo-hi\" range")
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            _fail(file, line, here, f"{p!r}: ports are 1-65535")
        if lo > hi:
            _fail(file, line, here, f"{p!r}: the range runs backwards")
        out.append((lo, hi))
    return tuple(out)


def _parse_protocols(file: str, rule: YMap, where: str) -> int:
    value = rule.get("protocol", "any")
    names = value if isinstance(value, YList) else [value]
    mask = 0
    for name in names:
        if name == "any":
            mask |= ANY_PROTO
        elif isinstance(name, str) and name in PROTO_BITS:
            mask |= PROTO_BITS[name]
        else:
            _fail(file, _line(rule, "protocol"), f"{where}.protocol",
                  f"{name!r} is not one of tcp, udp, other, any")
    if not mask:
        _fail(file, _line(rule, "protocol"), f"{where}.protocol", "names no protocol")
    return mask


def _parse_rule(file: str, rule, index: int, line: int, seen: dict) -> PolicyRule:
    where = f"rules[{index}]"
    if not isinstance(rule, YMap):
        _fail(file, line, where, "each rule is a mapping with name, action and to/ports/protocol")
    name = rule.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(file, _line(rule, "name") if "name" in rule else rule.where.line, f"{where}.name",
              "every rule needs a name of lowercase letters, digits and dashes")
    where = f"rules[{index}] ({name})"
    for key in rule:
        if key not in _RULE_KEYS:
            _fail(file, rule.key_line[key], f"{where}.{key}", f"unknown key (one of {', '.join(_RULE_KEYS)})")
    if name in seen:
        _fail(file, _line(rule, "name"), f"{where}.name", f"duplicate rule name (first at line {seen[name]})")
    seen[name] = rule.where.line
    action = rule.get("action")
    if action not in ACTIONS:
        _fail(file, _line(rule, "action") if "action" in rule else rule.where.line, f"{where}.action",
              f"{action!r} is not allow or deny")
    nets = _parse_nets(file, rule, where)
    ports = _parse_ports(file, rule, where)
    protocols = _parse_protocols(file, rule, where)
    return PolicyRule(name, action, nets, ports, protocols, rule.where.line)


def parse(text: str, file: str) -> Policy:
    """A policy from YAML text; PolicyError (file:line: field: what) at the first problem."""
    try:
        doc, first_line = load_document(text, file)
    except RulesError as exc:
        raise PolicyError(str(exc)) from None
    if doc is None:
        raise PolicyError(f"{file}:1: policy: the file is empty")
    if not isinstance(doc, YMap):
        _fail(file, first_line, "policy", "a policy is a mapping with name, default and rules")
    for key in doc:
        if key not in _TOP_KEYS:
            _fail(file, doc.key_line[key], key, f"unknown key (one of {', '.join(_TOP_KEYS)})")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(file, _line(doc, "name") if "name" in doc else doc.where.line, "name",
              "the policy needs a name of lowercase letters, digits and dashes")
    default = doc.get("default", "allow")
    if default not in ACTIONS:
        _fail(file, _line(doc, "default"), "default", f"{default!r} is not allow or deny")
    rules = doc.get("rules")
    if rules is None:
        rules = YList()
        rules.where, rules.item_line, rules.raw = doc.where, [], []
    if not isinstance(rules, YList):
        _fail(file, doc.key_line.get("rules", 1), "rules", "must be a list of rules")
    if len(rules) > MAX_RULES:
        _fail(file, doc.key_line.get("rules", 1), "rules", f"{len(rules)} rules, at most {MAX_RULES}")
    seen: dict = {}
    parsed = tuple(_parse_rule(file, r, i, line, seen) for i, (r, line) in enumerate(zip(rules, rules.item_line)))
    ranges = {(lo, hi) for r in parsed for lo, hi in r.ports if lo < hi}
    if len(ranges) > MAX_PORT_RANGES:
        _fail(file, doc.key_line.get("rules", 1), "rules",
              f"{len(ranges)} distinct port ranges, at most {MAX_PORT_RANGES} in a policy (list single ports instead)")
    ports = {lo for r in parsed for lo, hi in r.ports if lo == hi}
    if len(ports) > MAX_PORTS:
        _fail(file, doc.key_line.get("rules", 1), "rules", f"{len(ports)} distinct ports, at most {MAX_PORTS} in a policy")
    counts = {4: 0, 6: 0}
    for r in parsed:
        for n in r.nets or ():
            counts[n.version] += 1
    for version, n in counts.items():
        if n > MAX_CIDRS:
            _fail(file, doc.key_line.get("rules", 1), "rules", f"{n} IPv{version} CIDRs, at most {MAX_CIDRS}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        _fail(file, _line(doc, "description"), "description", "must be text")
    return Policy(name, default, parsed, file, description)


def load(path: str | Path | None = None) -> Policy:
    """The policy in `path` (default: policies/rl-sandbox.yaml)."""
    path = Path(path) if path is not None else DEFAULT_POLICY
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror}") from None
    return parse(text, str(path))
