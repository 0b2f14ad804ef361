"""Rules over records: single-event rules, sequences and thresholds.

Every record of a run (or of a replayed file) goes through Engine.evaluate,
which returns the alerts it completes. Rules are indexed by record type and,
where a rule's condition pins a field to a few values (its guard, see
compiler.py), by that field's value: a record is tested only against rules
that can match it.

Stateful rules keep their state per key (a process, a process lineage or an
agent). Time is the records' `time`, never the wall clock, so a replay fires
exactly as the live run did. State is bounded: a key is dropped once
`within` seconds (of record time) have passed since its last record, checked
whenever the rule matches, at most every SWEEP_SECONDS; and each rule keeps
at most MAX_KEYS keys, dropping the least recently used.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from typing import Callable

from . import fields as F
from .alerts import alert_record

MAX_KEYS = 16384  # per stateful rule: with EVIDENCE_MAX, what bounds the records held
EVIDENCE_MAX = 5  # records kept per key as a threshold alert's evidence (the latest)
SWEEP_SECONDS = 5.0  # expire stale state at most this often (record time)


class Engine:
    """The consumer of session.Pipeline: evaluate(record) -> alerts."""

    def __init__(self, rules: list) -> None:
        self.rules = [r for r in rules if r.enabled]
        self._single: dict[str, _Plan] = {}
        self._stateful: dict[str, list] = {}
        self._machines: list = []
        singles: dict[str, list] = {}
        for index, rule in enumerate(self.rules):
            if rule.sequence is not None:
                machine = Sequence(index, rule)
            elif rule.threshold is not None:
                machine = Threshold(index, rule)
            else:
                for t in rule.events:
                    singles.setdefault(t, []).append((index, rule))
                continue
            self._machines.append(machine)
            for t in machine.types:
                self._stateful.setdefault(t, []).append(machine)
        for t, entries in singles.items():
            self._single[t] = _Plan(entries)
        self.types = frozenset(self._single) | frozenset(self._stateful)  # record types any rule reads

    def evaluate(self, rec: dict) -> list[dict]:
        kind = rec.get("kind")
        if kind == "event":
            t = rec.get("type")
            if t.__class__ is not str:
                return []
        elif kind == "status":
            t = "status"
        else:
            return []
        out: list | None = None
        plan = self._single.get(t)
        if plan is not None:
            out = plan.run(rec)
        machines = self._stateful.get(t)
        if machines is not None:
            for m in machines:
                hit = m.feed(rec, t)
                if hit is not None:
                    if out is None:
                        out = []
                    out.append(hit)
        if not out:
            return []
        if len(out) > 1:
            out.sort(key=_order)
        return [alert for _, alert in out]

    def state_size(self) -> int:
        """Keys held by all stateful rules (for tests of the bounds)."""
        return sum(len(m.state) for m in self._machines)


def _order(hit: tuple[int, dict]) -> int:
    return hit[0]


class _Plan:
    """The single-event rules of one record type, indexed by their guards (compiler.Compiler.guard).

    Rules without a guard are tested on every record. The others are
    candidates when a guard alternative holds: an "eq" alternative is one
    dict lookup per field; a "sub" alternative is a scan of the field's text
    for the literals of every rule that has one. Text that is not ASCII is
    not scanned (case folding beyond ASCII is not lower()): every rule with a
    "sub" guard on that field is a candidate then.
    """

    def __init__(self, entries: list) -> None:
        self.entries = {index: (rule, rule.match) for index, rule in entries}
        always = []
        eq: dict[str, dict] = {}
        sub: dict[str, dict] = {}
        for index, rule in entries:
            if rule.guard is None:
                always.append((index, rule, rule.match))
                continue
            for kind, name, values in rule.guard:
                table = (eq if kind == "eq" else sub).setdefault(name, {})
                for v in values:
                    table.setdefault(v, set()).add(index)
        self.always = tuple(always)
        self.eq = tuple((F.field(name).get, {v: frozenset(i) for v, i in table.items()}) for name, table in eq.items())
        self.sub = tuple(
            (F.field(name).get, _any_literal(table), tuple((lit, frozenset(i)) for lit, i in sorted(table.items())),
             frozenset().union(*table.values()))
            for name, table in sub.items()
        )
        self.indexed = bool(self.eq or self.sub)

    def run(self, rec: dict) -> list | None:
        out = None
        for index, rule, match in self.always:
            if match(rec):
                if out is None:
                    out = []
                out.append((index, alert_record(rule, [rec])))
        if not self.indexed:
            return out
        cands = None  # a frozenset of rule indexes, made only when something hits
        for get, table in self.eq:
            hits = table.get(get(rec))
            if hits is not None:
                cands = hits if cands is None else cands | hits
        for get, any_literal, literals, everyone in self.sub:
            text = get(rec)
            if text is None:
                continue
            if text.isascii():
                low = text.lower()
                if any_literal(low) is None:  # most records hold none: one search in C says so
                    continue
                for lit, hits in literals:
                    if lit in low:
                        cands = hits if cands is None else cands | hits
            else:
                cands = everyone if cands is None else cands | everyone
        if cands is not None:
            entries = self.entries
            for index in cands:
                rule, match = entries[index]
                if match(rec):
                    if out is None:
                        out = []
                    out.append((index, alert_record(rule, [rec])))
        return out


def guarded(match: Callable[[dict], bool], guard) -> Callable[[dict], bool]:
    """One rule's condition behind its own guard: a cheap test first, the condition only if it passes.

    For the rules the plans do not index (steps of sequences, thresholds).
    """
    if guard is None:
        return match
    checks = []
    for kind, name, values in guard:
        get = F.field(name).get
        if kind == "eq":
            checks.append(lambda r, get=get, values=values: get(r) in values)
        else:
            gate = _any_literal(values)

            def has_text(r, get=get, gate=gate):
                text = get(r)
                return text is not None and (not text.isascii() or gate(text.lower()) is not None)

            checks.append(has_text)
    if len(checks) == 1:
        (check,) = checks
        return lambda r: check(r) and match(r)
    checks_t = tuple(checks)

    def pred(r):
        for check in checks_t:
            if check(r):
                return match(r)
        return False

    return pred


def _any_literal(literals) -> Callable[[str], object]:
    """A search for any of the literals, as a regex shaped like their trie.

    A plain alternation (a|b|c...) tries every literal at every position; the
    trie form tries only the literals that share the text's next character.
    """
    root: dict = {}
    for word in literals:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        alts = [re.escape(ch) + emit(node[ch]) for ch in sorted(k for k in node if k)]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(emit(root)).search


# --------------------------------------------------------------------------
# Keys of stateful rules.


def _process_key(rec: dict):
    p = rec.get("process")
    if p.__class__ is dict:
        k = p.get("key")
        if k.__class__ is str:
            return k
    return None


def _agent_key(rec: dict):
    a = rec.get("agent")
    if a.__class__ is dict:
        k = a.get("id")
        if k.__class__ is str:
            return k
    return None


# Per-key state lives in OrderedDicts, least recently used first: a plain dict
# that loses entries at the front makes next(iter(d)) walk the holes they leave.


def _touch(state: OrderedDict, key, value) -> None:
    """Insert or move to the end (most recently used), dropping the oldest past MAX_KEYS."""
    state[key] = value
    state.move_to_end(key)
    if len(state) > MAX_KEYS:
        state.popitem(last=False)


def _expire(state: OrderedDict, stale) -> None:
    """Drop entries from the front while stale(entry)."""
    while state:
        key, entry = next(iter(state.items()))
        if not stale(entry):
            break
        state.popitem(last=False)


# --------------------------------------------------------------------------
# Sequences.


class _Stateful:
    """What sequences and thresholds share: the record clock and expiry of stale keys."""

    within: float
    state: OrderedDict

    def __init__(self) -> None:
        self._sweep_at = float("-inf")
        self.state = OrderedDict()

    def clock(self, rec: dict) -> float | None:
        """The record's time, read only once a record matched; stale keys go at most every SWEEP_SECONDS."""
        now = F.record_seconds(rec)
        if now is not None and now >= self._sweep_at:
            self.expire(now)
            self._sweep_at = now + SWEEP_SECONDS
        return now

    def expire(self, now: float) -> None:
        raise NotImplementedError


class _Anchor:
    """The partial matches of one key: stage k holds a match of steps 0..k-1."""

    __slots__ = ("ident", "stages", "last")

    def __init__(self, ident, now: float) -> None:
        self.ident = ident  # lineage: the process key of the first step (the state key is its pid)
        self.stages: dict[int, tuple[float, tuple]] = {}  # stage -> (start time, evidence)
        self.last = now


class Sequence(_Stateful):
    """Steps in order, within `within` seconds of the first, for one process, lineage or agent.

    Per key and stage only the most recent partial match is kept. A record
    advances at most one partial match per stage, higher stages first, and a
    record that advances one does not also start a new one: one record is
    never two steps. With `by: lineage` the key is the
    process of the first step, and a later step may come from it or from any
    process whose ancestry (as recorded at fork) holds its pid.
    """

    def __init__(self, index: int, rule) -> None:
        super().__init__()
        self.index = index
        self.rule = rule
        spec = rule.sequence
        self.by = spec.by
        self.within = spec.within
        self.n = len(spec.steps)
        self.types: set[str] = set()
        self.steps_for: dict[str, tuple] = {}
        for k, step in enumerate(spec.steps):
            for t in step.events:
                self.types.add(t)
                self.steps_for[t] = self.steps_for.get(t, ()) + ((k, guarded(step.match, step.guard)),)

    def _anchors(self, rec: dict) -> list | None:
        """(state key, process key that must match or None) for each key the record may continue."""
        if self.by == "agent":
            k = _agent_key(rec)
            return [(k, None)] if k is not None else None
        key = _process_key(rec)
        if key is None:
            return None
        if self.by == "process":
            return [(key, None)]
        p = rec["process"]
        pid = p.get("pid")
        out = [(pid, key)]
        anc = p.get("ancestry")
        if anc.__class__ is list:
            for a in anc:
                if a.__class__ is dict:
                    out.append((a.get("pid"), None))
        return out

    def _start_key(self, rec: dict):
        if self.by == "agent":
            return _agent_key(rec), None
        key = _process_key(rec)
        if self.by == "process" or key is None:
            return key, None
        return rec["process"].get("pid"), key

    def feed(self, rec: dict, t: str):
        matched = None
        for k, match in self.steps_for[t]:
            if match(rec):
                if matched is None:
                    matched = [k]
                else:
                    matched.append(k)
        if matched is None:
            return None
        now = self.clock(rec)
        if now is None:
            return None
        fired = None
        anchors = None
        used = False  # a record that continues a match does not also start one
        for k in reversed(matched):
            if k == 0:
                if used:
                    continue
                skey, ident = self._start_key(rec)
                if skey is None:
                    continue
                entry = self.state.get(skey)
                if entry is None or entry.ident != ident:
                    entry = _Anchor(ident, now)
                entry.stages[1] = (now, (rec,))
                entry.last = now
                _touch(self.state, skey, entry)
                continue
            if anchors is None:
                anchors = self._anchors(rec)
                if anchors is None:
                    return fired
            for skey, ident in anchors:
                entry = self.state.get(skey)
                if entry is None or (ident is not None and entry.ident != ident):
                    continue
                partial = entry.stages.pop(k, None)
                if partial is None:
                    continue
                start, evidence = partial
                if now - start > self.within:
                    continue
                evidence = evidence + (rec,)
                used = True
                if k + 1 == self.n:
                    if fired is None:
                        fired = (self.index, alert_record(self.rule, list(evidence)))
                else:
                    entry.stages[k + 1] = (start, evidence)
                entry.last = now
                if entry.stages:
                    _touch(self.state, skey, entry)
                else:
                    del self.state[skey]
                break
        return fired

    def expire(self, now: float) -> None:
        cutoff = now - self.within
        _expire(self.state, lambda entry: entry.last < cutoff)


# --------------------------------------------------------------------------
# Thresholds.


class _Window:
    __slots__ = ("hits", "evidence", "quiet_until", "last")

    def __init__(self, distinct: bool, now: float) -> None:
        # count: times of the matching records in the window, oldest first;
        # distinct: value tuple -> the time it was last seen, oldest first.
        self.hits: deque | OrderedDict = OrderedDict() if distinct else deque()
        self.evidence: deque = deque(maxlen=EVIDENCE_MAX)
        self.quiet_until = float("-inf")
        self.last = now


def _value_of(flds: list):
    """The distinct value of a record: a hashable tuple of the fields, or None if one is missing."""
    if not flds:
        return None
    gets = tuple(f.get for f in flds)
    if any(f.type == F.LIST for f in flds):
        def value(rec):
            v = tuple(get(rec) for get in gets)
            return None if None in v else tuple(tuple(x) if x.__class__ is list else x for x in v)

        return value
    if len(gets) == 1:
        (g,) = gets

        def one(rec):
            a = g(rec)
            return None if a is None else (a,)

        return one
    if len(gets) == 2:
        g1, g2 = gets

        def two(rec):
            a = g1(rec)
            if a is None:
                return None
            b = g2(rec)
            return None if b is None else (a, b)

        return two

    def many(rec):
        v = tuple(get(rec) for get in gets)
        return None if None in v else v

    return many


class Threshold(_Stateful):
    """At least `count` matching records (or distinct values) within `within` seconds, per key.

    The window slides. Once it fires for a key, that key is quiet for
    `within` seconds (one alert per key and window) and then starts afresh.
    """

    def __init__(self, index: int, rule) -> None:
        super().__init__()
        self.index = index
        self.rule = rule
        spec = rule.threshold
        self.key = _agent_key if spec.by == "agent" else _process_key
        self.within = spec.within
        self.count = spec.count
        self.distinct = tuple(F.field(name).get for name in spec.distinct)
        self._value = _value_of([F.field(name) for name in spec.distinct])
        self.types = set(rule.events)
        self.match = guarded(rule.match, rule.guard)

    def feed(self, rec: dict, t: str):
        if not self.match(rec):
            return None
        key = self.key(rec)
        if key is None:
            return None
        if self.distinct:
            value = self._value(rec)
            if value is None:  # a record without one of the fields does not count
                return None
        now = self.clock(rec)
        if now is None:
            return None
        state = self.state
        w = state.get(key)
        if w is None:
            w = _Window(bool(self.distinct), now)
        elif now < w.quiet_until:
            return None
        else:
            w.last = now
        _touch(state, key, w)
        cutoff = now - self.within
        if self.distinct:
            seen = w.hits
            seen[value] = now
            seen.move_to_end(value)
            while True:  # seen is never empty here
                first, at = next(iter(seen.items()))
                if at >= cutoff:
                    break
                seen.popitem(last=False)
            n = len(seen)
        else:
            times = w.hits
            times.append(now)
            while times[0] < cutoff:
                times.popleft()
            n = len(times)
        w.evidence.append((now, rec))
        if n < self.count:
            return None
        evidence = [r for at, r in w.evidence if at >= cutoff]
        fresh = _Window(bool(self.distinct), now)
        fresh.quiet_until = now + self.within
        state[key] = fresh
        return self.index, alert_record(self.rule, evidence, count=n)

    def expire(self, now: float) -> None:
        cutoff = now - self.within
        _expire(self.state, lambda w: w.last < cutoff and now >= w.quiet_until)
