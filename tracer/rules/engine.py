"""Rules over records: single-event rules, sequences and thresholds.

Every record of a run (or of a replayed file) goes through Engine.evaluate,
which returns the alerts it completes. Rules are indexed by record type and,
where a rule's condition pins a field to a few values (its guard, see
compiler.py), by that field's value: a record is tested only against rules
that can match it.

Stateful rules keep their state per key (a process, a process lineage or an
agent). Time is the records' `time`, never the wall clock, so a replay fires
exactly as the live run did. State is bounded: partial matches and windows
expire `within` seconds after they start (by record time), and each rule
keeps at most MAX_KEYS keys, dropping the least recently used.
"""

from __future__ import annotations

from collections import deque

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
        self._sweep_at = float("-inf")

    def evaluate(self, rec: dict) -> list[dict]:
        kind = rec.get("kind")
        if kind == "event":
            t = rec.get("type")
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
            now = F.record_seconds(rec)
            if now is not None:
                if now >= self._sweep_at:
                    self._sweep(now)
                for m in machines:
                    hit = m.feed(rec, t, now)
                    if hit is not None:
                        if out is None:
                            out = []
                        out.append(hit)
        if not out:
            return []
        if len(out) > 1:
            out.sort(key=_order)
        return [alert for _, alert in out]

    def _sweep(self, now: float) -> None:
        for m in self._machines:
            m.expire(now)
        self._sweep_at = now + SWEEP_SECONDS

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
            (F.field(name).get, tuple((lit, frozenset(i)) for lit, i in sorted(table.items())),
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
        cands: set = set()
        for get, table in self.eq:
            hits = table.get(get(rec))
            if hits is not None:
                cands |= hits
        for get, literals, everyone in self.sub:
            text = get(rec)
            if text is None:
                continue
            if text.isascii():
                low = text.lower()
                for lit, hits in literals:
                    if lit in low:
                        cands |= hits
            else:
                cands |= everyone
        if cands:
            entries = self.entries
            for index in cands:
                rule, match = entries[index]
                if match(rec):
                    if out is None:
                        out = []
                    out.append((index, alert_record(rule, [rec])))
        return out


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


def _touch(state: dict, key, value) -> None:
    """Insert or move to the end (most recently used), dropping the oldest past MAX_KEYS."""
    state.pop(key, None)
    state[key] = value
    if len(state) > MAX_KEYS:
        del state[next(iter(state))]


# --------------------------------------------------------------------------
# Sequences.


class _Anchor:
    """The partial matches of one key: stage k holds a match of steps 0..k-1."""

    __slots__ = ("ident", "stages", "last")

    def __init__(self, ident, now: float) -> None:
        self.ident = ident  # lineage: the process key of the first step (the state key is its pid)
        self.stages: dict[int, tuple[float, tuple]] = {}  # stage -> (start time, evidence)
        self.last = now


class Sequence:
    """Steps in order, within `within` seconds of the first, for one process, lineage or agent.

    Per key and stage only the most recent partial match is kept. A record
    advances at most one partial match per stage, higher stages first, and a
    record that advances one does not also start a new one: one record is
    never two steps. With `by: lineage` the key is the
    process of the first step, and a later step may come from it or from any
    process whose ancestry (as recorded at fork) holds its pid.
    """

    def __init__(self, index: int, rule) -> None:
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
                self.steps_for[t] = self.steps_for.get(t, ()) + ((k, step.match),)
        self.state: dict = {}

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

    def feed(self, rec: dict, t: str, now: float):
        matched = None
        for k, match in self.steps_for[t]:
            if match(rec):
                if matched is None:
                    matched = [k]
                else:
                    matched.append(k)
        if matched is None:
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
        state = self.state
        while state:
            skey = next(iter(state))
            entry = state[skey]
            if entry.last >= cutoff:
                break
            del state[skey]


# --------------------------------------------------------------------------
# Thresholds.


class _Window:
    __slots__ = ("hits", "evidence", "quiet_until", "last")

    def __init__(self, distinct: bool, now: float) -> None:
        # count: times of the matching records in the window, oldest first;
        # distinct: value tuple -> the time it was last seen, oldest first.
        self.hits: deque | dict = {} if distinct else deque()
        self.evidence: deque = deque(maxlen=EVIDENCE_MAX)
        self.quiet_until = float("-inf")
        self.last = now


class Threshold:
    """At least `count` matching records (or distinct values) within `within` seconds, per key.

    The window slides. Once it fires for a key, that key is quiet for
    `within` seconds (one alert per key and window) and then starts afresh.
    """

    def __init__(self, index: int, rule) -> None:
        self.index = index
        self.rule = rule
        spec = rule.threshold
        self.key = _agent_key if spec.by == "agent" else _process_key
        self.within = spec.within
        self.count = spec.count
        self.distinct = tuple(F.field(name).get for name in spec.distinct)
        self.types = set(rule.events)
        self.match = rule.match
        self.state: dict = {}

    def feed(self, rec: dict, t: str, now: float):
        if not self.match(rec):
            return None
        key = self.key(rec)
        if key is None:
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
            value = tuple(get(rec) for get in self.distinct)
            if None in value:
                return None
            value = tuple(tuple(v) if v.__class__ is list else v for v in value)
            seen = w.hits
            seen.pop(value, None)
            seen[value] = now
            while seen:
                first = next(iter(seen))
                if seen[first] >= cutoff:
                    break
                del seen[first]
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
        state = self.state
        while state:
            key = next(iter(state))
            w = state[key]
            if w.last >= now - self.within or now < w.quiet_until:
                break
            del state[key]
