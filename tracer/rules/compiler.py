"""Condition trees to Python closures, once, at load time. Never eval or exec.

Each comparison becomes a closure over the field's accessor and its values,
already converted to the field's type: regular expressions compiled, CIDRs
parsed, sets built. A field the record does not have (the accessor returns
None) makes a comparison false.

The compiler also finds a rule's *guard*: a field and a set of values the
field must take for the condition to hold (`proc.name in (ssh, autossh) and
...`). The engine indexes rules by their guards, so a record is tested only
against rules that can match it.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
import socket

try:  # the regular expression parser, to find the literals a regex needs (guards)
    from re import _constants as _C, _parser as _sre
except ImportError:  # Python < 3.11
    import sre_constants as _C  # noqa: N812
    import sre_parse as _sre
from typing import Callable

from . import fields as F
from .condition import (
    COMPARISONS,
    And,
    BoolTest,
    Compare,
    ConditionError,
    Exists,
    MacroRef,
    Not,
    Or,
)

Predicate = Callable[[dict], bool]

TEXT_OPS = ("contains", "icontains", "startswith", "endswith", "glob", "regex")
MULTI_OPS = ("in", "cidr") + TEXT_OPS  # operators that take a list of values
NUMBER_TYPES = (F.INT, F.FLOAT)
TEXT_TYPES = (F.STR, F.ADDR, F.LIST)


def _false(_r: dict) -> bool:
    return False


def _true(_r: dict) -> bool:
    return True


# --------------------------------------------------------------------------
# Addresses for cidr: text to (version, integer), cached, since a run sees the
# same few destinations again and again.

_addr_cache: dict[str, tuple[int, int] | None] = {}
_V4_MAPPED_PREFIX = 0xFFFF << 32


def _addr(text: str) -> tuple[int, int] | None:
    hit = _addr_cache.get(text)
    if hit is not None or text in _addr_cache:
        return hit
    try:
        if ":" in text:
            n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
            value = (4, n & 0xFFFFFFFF) if n >> 32 == 0xFFFF else (6, n)  # ::ffff:a.b.c.d is IPv4
        else:
            value = (4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except (OSError, ValueError):
        value = None
    if len(_addr_cache) > 8192:
        _addr_cache.clear()
    _addr_cache[text] = value
    return value


class Compiler:
    """Compiles trees against one set of lists and macros (the state at the end of a load)."""

    def __init__(self, lists: dict[str, list[str]], macros: dict[str, object]):
        self.lists = lists  # name -> items, with list references already expanded
        self.macros = macros  # name -> tree (may hold MacroRefs)
        self._expanded: dict[str, object] = {}
        self._compiled: dict[int, tuple[object, Predicate]] = {}  # id(node) -> (node, closure)
        self._values: dict[int, tuple[object, list]] = {}

    # ----------------------------------------------------------------------
    # Macros are inlined as trees; a macro's tree is expanded once and shared.

    def expand(self, node, stack: tuple[str, ...] = ()):
        if isinstance(node, MacroRef):
            return self._macro(node, stack)
        if isinstance(node, And):
            return And([self.expand(i, stack) for i in node.items])
        if isinstance(node, Or):
            return Or([self.expand(i, stack) for i in node.items])
        if isinstance(node, Not):
            return Not(self.expand(node.operand, stack))
        return node

    def _macro(self, ref: MacroRef, stack: tuple[str, ...]):
        if ref.name in stack:
            cycle = " -> ".join(stack[stack.index(ref.name):] + (ref.name,))
            raise ConditionError(f"macro cycle: {cycle}", ref.pos, ref.src)
        done = self._expanded.get(ref.name)
        if done is not None:
            return done
        tree = self.macros.get(ref.name)
        if tree is None:
            if ref.name in self.lists:
                raise ConditionError(f"'{ref.name}' is a list, not a macro", ref.pos, ref.src)
            close = difflib.get_close_matches(ref.name, list(self.macros), n=1, cutoff=0.75)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConditionError(f"unknown macro '{ref.name}'{hint}", ref.pos, ref.src)
        done = self.expand(tree, stack + (ref.name,))
        self._expanded[ref.name] = done
        return done

    # ----------------------------------------------------------------------

    def compile(self, node) -> Predicate:
        """A closure for an expanded tree (no MacroRefs left)."""
        hit = self._compiled.get(id(node))
        if hit is not None:
            return hit[1]
        fn = self._compile(node)
        self._compiled[id(node)] = (node, fn)
        return fn

    def _compile(self, node) -> Predicate:
        if isinstance(node, And):
            return _all([self.compile(i) for i in node.items])
        if isinstance(node, Or):
            return _any([self.compile(i) for i in node.items])
        if isinstance(node, Not):
            inner = self.compile(node.operand)
            return lambda r, inner=inner: not inner(r)
        if isinstance(node, Exists):
            get = node.field.get
            return lambda r, get=get: get(r) is not None
        if isinstance(node, BoolTest):
            get = node.field.get
            return lambda r, get=get: get(r) is True
        if isinstance(node, Compare):
            return self._compare(node)
        raise TypeError(f"not an expanded condition node: {node!r}")  # a bug, not a user error

    # ----------------------------------------------------------------------
    # Specialisation by record type.

    def specialize(self, node, rtype: str):
        """The expanded tree as it reads for records of one type: True, False or a (smaller) tree.

        The engine dispatches on the record type, so inside one type's rules
        every test of evt.type is a constant: `(evt.type = send and A) or
        (evt.type = exec and B)` is just B for exec records, and B may then
        have a guard (the whole never does). The constant is what the test's
        own closure says of a record that holds nothing but the type, since
        evt.type reads nothing else. Returns `node` itself when nothing folds.
        """
        if isinstance(node, (Compare, Exists)):
            if node.field.name != "evt.type":
                return node
            probe = {"kind": "status"} if rtype == "status" else {"kind": "event", "type": rtype}
            return bool(self.compile(node)(probe))
        if isinstance(node, Not):
            inner = self.specialize(node.operand, rtype)
            if inner is node.operand:
                return node
            return (not inner) if inner.__class__ is bool else Not(inner)
        if isinstance(node, (And, Or)):
            absorbing = isinstance(node, Or)  # True ends an or, False ends an and
            items = [self.specialize(i, rtype) for i in node.items]
            if all(a is b for a, b in zip(items, node.items)):
                return node
            kept = []
            for item in items:
                if item is absorbing:
                    return absorbing
                if item is not (not absorbing):  # the neutral constant drops out
                    kept.append(item)
            if not kept:
                return not absorbing
            if len(kept) == 1:
                return kept[0]
            return Or(kept) if absorbing else And(kept)
        return node

    # ----------------------------------------------------------------------
    # Values.

    def values(self, node: Compare) -> list:
        """The comparison's values, list names expanded, converted to the field's type."""
        hit = self._values.get(id(node))
        if hit is not None:
            return hit[1]
        out = self._convert(node)
        self._values[id(node)] = (node, out)
        return out

    def _convert(self, node: Compare) -> list:
        fld, op = node.field, node.op
        out = []
        for v in node.values:
            if op in MULTI_OPS and not v.quoted and v.text in self.lists:
                for item in self.lists[v.text]:
                    out.append(self._typed(node, item, v.pos, f"list {v.text}: item"))
                continue
            if op == "in" and not node.listy and not v.quoted:
                if v.text in self.macros:
                    raise ConditionError(f"'{v.text}' is a macro, not a list", v.pos, node.src)
                close = difflib.get_close_matches(v.text, list(self.lists), n=1, cutoff=0.75)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConditionError(
                    f"unknown list '{v.text}'{hint}; write in (a, b) for literal values", v.pos, node.src
                )
            out.append(self._typed(node, v.text, v.pos, "value"))
        return out

    def _typed(self, node: Compare, text: str, pos: int, what: str):
        t, name = node.field.type, node.field.name
        if t == F.INT:
            try:
                return int(text, 10)
            except ValueError:
                raise ConditionError(f"{what} '{text}' is not a whole number ({name} is an int)", pos, node.src) from None
        if t == F.FLOAT:
            try:
                return float(text)
            except ValueError:
                raise ConditionError(f"{what} '{text}' is not a number ({name} is a float)", pos, node.src) from None
        if t == F.BOOL:
            if text in ("true", "false"):
                return text == "true"
            raise ConditionError(f"{what} '{text}' is not true or false ({name} is a bool)", pos, node.src)
        if node.op == "regex":
            try:
                return re.compile(text)
            except re.error as exc:
                raise ConditionError(f"bad regex '{text}': {exc}", pos, node.src) from None
        if node.op == "cidr":
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConditionError(f"bad CIDR '{text}'", pos, node.src) from None
            return (net.version, int(net.network_address), int(net.netmask))
        return text

    # ----------------------------------------------------------------------
    # Comparisons.

    def _compare(self, node: Compare) -> Predicate:
        fld, op = node.field, node.op
        t = fld.type
        err = lambda msg: ConditionError(msg, node.op_pos, node.src)  # noqa: E731
        if op in ("<", "<=", ">", ">=") and t not in NUMBER_TYPES:
            raise err(f"'{op}' compares numbers; {fld.name} is {_a(t)}")
        if op in TEXT_OPS and t not in TEXT_TYPES:
            raise err(f"'{op}' works on text; {fld.name} is {_a(t)}")
        if op == "cidr" and t != F.ADDR:
            raise err(f"'cidr' works on addresses (net.daddr, net.saddr); {fld.name} is {_a(t)}")
        if op in COMPARISONS and (node.listy or len(node.values) != 1):
            raise err(f"'{op}' takes one value; use 'in' for a list")
        vals = self.values(node)
        if not vals:  # an empty named list
            return _false
        get = fld.get
        if t == F.LIST:
            return _list_compare(get, op, vals)
        return _scalar_compare(get, op, vals)

    # ----------------------------------------------------------------------
    # Guards.

    def guard(self, node) -> Guard | None:
        """Alternatives, one of which holds whenever the condition does; None if none is known.

        An alternative is ("eq", field, values): the field's value is one of
        the values; or ("sub", field, literals): the field's text, lowercased,
        contains one of the literals (lowercase ASCII, two characters or more).
        A text operator on proc.args gives a "sub" alternative on proc.cmdline,
        which holds every argument.
        """
        if isinstance(node, Compare):
            return self._compare_guard(node)
        if isinstance(node, BoolTest):
            return (("eq", node.field.name, frozenset([True])),)
        if isinstance(node, And):
            found = [g for g in (self.guard(i) for i in node.items) if g is not None]
            return min(found, key=_guard_cost) if found else None
        if isinstance(node, Or):
            found = [self.guard(i) for i in node.items]
            if any(g is None for g in found):
                return None
            merged: dict[tuple[str, str], set] = {}
            for g in found:
                for kind, name, values in g:
                    merged.setdefault((kind, name), set()).update(values)
            return tuple((kind, name, frozenset(values)) for (kind, name), values in merged.items())
        return None

    def _compare_guard(self, node: Compare) -> Guard | None:
        fld, op = node.field, node.op
        if fld.name == "evt.type":  # rules are already indexed by record type: it tells nothing more
            return None
        if fld.type not in (F.LIST, F.FLOAT) and op in ("=", "in"):
            return (("eq", fld.name, frozenset(self.values(node))),)
        if fld.type == F.LIST:
            if fld.name != "proc.args":
                return None
            target = "proc.cmdline"
        elif fld.type in (F.STR, F.ADDR):
            target = fld.name
        else:
            return None
        vals = self.values(node)
        if op in ("=", "in", "contains", "icontains", "startswith", "endswith"):
            lits = [v for v in vals]
        elif op == "glob":
            lits = [_glob_literal(v) for v in vals]
        elif op == "regex":
            found = [_regex_literals(p.pattern) for p in vals]
            if any(f is None for f in found):
                return None
            lits = [lit for f in found for lit in f]
        else:
            return None
        if not lits or any(lit is None or len(lit) < 2 or not lit.isascii() for lit in lits):
            return None
        return (("sub", target, frozenset(lit.lower() for lit in lits)),)


Guard = tuple  # of ("eq" | "sub", field name, frozenset)


# Fields most rules of a record type are indexed on: choosing them shares one
# lookup (or one scan) among many rules instead of adding another.
_SHARED_EQ = frozenset(("proc.name", "net.dport", "net.scope", "status.name", "dns.qtype", "conn.state",
                        "gpu.event", "gpu.milestone"))
_SHARED_SUB = frozenset(("proc.cmdline", "payload.text", "dns.query"))


def _guard_cost(guard: Guard) -> float:
    """Cheaper, shared and more selective guards first: a dict lookup beats a substring scan."""
    cost = 0.0
    for kind, name, values in guard:
        if kind == "eq":
            cost += 1 if name in _SHARED_EQ else 1.5
        else:
            cost += 4 + 0.1 * len(values) + (4 if min(len(v) for v in values) < 4 else 0)
            cost += 0 if name in _SHARED_SUB else 0.5
    return cost


def _glob_literal(pattern: str) -> str | None:
    """The longest fixed run of a glob: every run must appear in a match."""
    runs, run, i = [], [], 0
    while i < len(pattern):
        c = pattern[i]
        if c in "*?":
            runs.append("".join(run))
            run = []
        elif c == "[":
            runs.append("".join(run))
            run = []
            end = pattern.find("]", i + 2)
            if end < 0:
                run.append(c)  # fnmatch reads an unclosed [ as itself
            else:
                i = end
        else:
            run.append(c)
        i += 1
    runs.append("".join(run))
    best = max(runs, key=len)
    return best or None


def _regex_literals(pattern: str) -> frozenset | None:
    """Literals one of which every match of the regex contains, or None (see _required)."""
    try:
        tree = _sre.parse(pattern)
    except Exception:  # noqa: BLE001  (it compiled already; any surprise only means no guard)
        return None
    return _required(tree)


def _leading(seq) -> str:
    """The literal text a regex sequence starts with."""
    out = []
    for op, av in seq:
        if op is not _C.LITERAL:
            break
        out.append(chr(av))
    return "".join(out)


def _required(seq) -> frozenset | None:
    best: frozenset | None = None
    run: list[str] = []

    def consider(cand: frozenset | None) -> None:
        nonlocal best
        if not cand or any(len(c) < 2 or not c.isascii() for c in cand):
            return
        if best is None or (min(map(len, cand)), -len(cand)) > (min(map(len, best)), -len(best)):
            best = cand

    for op, av in seq:
        if op is _C.LITERAL:
            run.append(chr(av))
            continue
        if op is _C.BRANCH and run:
            # The parser moves a prefix common to all branches out in front: (-e|--exec) is
            # "-" then (e|-exec). Put it back on each branch's leading literal.
            prefix = "".join(run)
            consider(frozenset(prefix + _leading(b) for b in av[1]))
        consider(frozenset(["".join(run)]))
        run = []
        if op is _C.SUBPATTERN:
            consider(_required(av[-1]))
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, getattr(_C, "POSSESSIVE_REPEAT", None)) and av[0] >= 1:
            consider(_required(av[2]))
        elif op is getattr(_C, "ATOMIC_GROUP", None):
            consider(_required(av))
        elif op is _C.BRANCH:
            subs = [_required(b) for b in av[1]]
            if all(subs):
                consider(frozenset().union(*subs))
    consider(frozenset(["".join(run)]))
    return best


def _a(t: str) -> str:
    return {F.INT: "an int", F.FLOAT: "a float", F.BOOL: "a bool", F.STR: "text", F.ADDR: "an address",
            F.LIST: "a list"}[t]


def _all(fs: list[Predicate]) -> Predicate:
    if len(fs) == 2:
        a, b = fs
        return lambda r: a(r) and b(r)
    if len(fs) == 3:
        a, b, c = fs
        return lambda r: a(r) and b(r) and c(r)

    def all_(r, fs=tuple(fs)):
        for f in fs:
            if not f(r):
                return False
        return True

    return all_


def _any(fs: list[Predicate]) -> Predicate:
    if len(fs) == 2:
        a, b = fs
        return lambda r: a(r) or b(r)
    if len(fs) == 3:
        a, b, c = fs
        return lambda r: a(r) or b(r) or c(r)

    def any_(r, fs=tuple(fs)):
        for f in fs:
            if f(r):
                return True
        return False

    return any_


def _text_matcher(op: str, vals: list) -> Callable[[str], object]:
    """For a text operator and its values, a function of one string: a Match (or True) on a match, else None."""
    if op == "contains":
        return re.compile("|".join(re.escape(v) for v in vals)).search
    if op == "icontains":
        return re.compile("|".join(re.escape(v) for v in vals), re.IGNORECASE).search
    if op == "startswith":
        t = tuple(vals)
        return lambda x: True if x.startswith(t) else None
    if op == "endswith":
        t = tuple(vals)
        return lambda x: True if x.endswith(t) else None
    if op == "glob":
        return re.compile("|".join(f"(?:{fnmatch.translate(v)})" for v in vals)).match
    if op == "regex":
        if len(vals) == 1:
            return vals[0].search
        searches = tuple(p.search for p in vals)

        def any_search(x):
            for search in searches:
                m = search(x)
                if m is not None:
                    return m
            return None

        return any_search
    raise ValueError(op)


def _cidr_matcher(vals: list) -> Callable[[str], bool]:
    v4 = tuple((n, m) for ver, n, m in vals if ver == 4)
    v6 = tuple((n, m) for ver, n, m in vals if ver == 6)

    def match(x: str) -> bool:
        a = _addr(x)
        if a is None:
            return False
        ver, n = a
        for net, mask in v4 if ver == 4 else v6:
            if n & mask == net:
                return True
        return False

    return match


def _scalar_compare(get, op: str, vals: list) -> Predicate:
    if op == "=":
        v = vals[0]
        return lambda r: get(r) == v
    if op == "!=":
        v = vals[0]

        def ne(r):
            x = get(r)
            return x is not None and x != v

        return ne
    if op in ("<", "<=", ">", ">="):
        v = vals[0]
        if op == "<":
            def cmp(r):
                x = get(r)
                return x is not None and x < v
        elif op == "<=":
            def cmp(r):
                x = get(r)
                return x is not None and x <= v
        elif op == ">":
            def cmp(r):
                x = get(r)
                return x is not None and x > v
        else:
            def cmp(r):
                x = get(r)
                return x is not None and x >= v
        return cmp
    if op == "in":
        s = frozenset(vals)
        return lambda r: get(r) in s
    # The common text operators inline, without a call per test.
    if op == "contains" and len(vals) == 1:
        v = vals[0]

        def contains(r):
            x = get(r)
            return x is not None and v in x

        return contains
    if op in ("startswith", "endswith"):
        t = tuple(vals)
        if op == "startswith":
            def prefix(r):
                x = get(r)
                return x is not None and x.startswith(t)

            return prefix

        def suffix(r):
            x = get(r)
            return x is not None and x.endswith(t)

        return suffix
    if op == "cidr":
        inside = _cidr_matcher(vals)

        def cidr(r):
            x = get(r)
            return x is not None and inside(x)

        return cidr
    search = _text_matcher(op, vals)  # a regular expression's search or match: a Match or None

    def text(r):
        x = get(r)
        return x is not None and search(x) is not None

    return text


def _list_compare(get, op: str, vals: list) -> Predicate:
    """Any element of a list-valued field."""
    if op == "=":
        v = vals[0]

        def eq(r):
            x = get(r)
            return x is not None and v in x

        return eq
    if op == "!=":
        v = vals[0]

        def ne(r):
            x = get(r)
            return x is not None and any(a != v for a in x)

        return ne
    if op == "in":
        s = frozenset(vals)

        def in_(r):
            x = get(r)
            return x is not None and not s.isdisjoint(x)

        return in_
    if op in ("startswith", "endswith", "contains") and (op != "contains" or len(vals) == 1):
        t = tuple(vals) if op != "contains" else vals[0]
        if op == "startswith":
            def any_prefix(r):
                x = get(r)
                if x is not None:
                    for a in x:
                        if a.startswith(t):
                            return True
                return False

            return any_prefix
        if op == "endswith":
            def any_suffix(r):
                x = get(r)
                if x is not None:
                    for a in x:
                        if a.endswith(t):
                            return True
                return False

            return any_suffix

        def any_contains(r):
            x = get(r)
            if x is not None:
                for a in x:
                    if t in a:
                        return True
            return False

        return any_contains
    search = _text_matcher(op, vals)

    def any_elem(r):
        x = get(r)
        if x is not None:
            for a in x:
                if search(a) is not None:
                    return True
        return False

    return any_elem
