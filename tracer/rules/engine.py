"""Rules over records: single-event rules, sequences and thresholds.

Every record of a run (or of a replayed file) goes through Engine.evaluate,
which returns the alerts it completes. Rules are indexed by record type and,
where a rule's condition pins a field to a few values (its guard, see
compiler.py), by that field's value: a record is tested only against rules
that can match it.

Stateful rules keep their state per key (a process, a process lineage or an
agent). Thresholds by agent or lineage count whatever process made each
record, and their alerts name the processes' nearest common ancestor
(_Lineages, GroupThreshold). Time is the records' `time`, never the wall
clock, so a replay fires exactly as the live run did. State is bounded: a key is dropped once
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

_record_seconds = F.record_seconds

MAX_KEYS = 16384  # per stateful rule: with EVIDENCE_MAX, what bounds the records held
EVIDENCE_MAX = 5  # records kept per key as a threshold alert's evidence (the latest)
INVOLVED_MAX = 8  # processes listed in an agent or lineage threshold's alert (the latest); the rest counted
SWEEP_SECONDS = 5.0  # expire stale state at most this often (record time)


class Engine:
    """The consumer of session.Pipeline: evaluate(record) -> alerts."""

    def __init__(self, rules: list) -> None:
        self.rules = [r for r in rules if r.enabled]
        self._by_type: dict[str, _Dispatch] = {}
        self._machines: list = []
        self._lineages: _Lineages | None = None
        singles: dict[str, list] = {}
        stateful: dict[str, list] = {}
        for index, rule in enumerate(self.rules):
            if rule.sequence is not None:
                machine = Sequence(index, rule)
            elif rule.threshold is not None and rule.threshold.by != "process":
                if self._lineages is None:
                    self._lineages = _Lineages()
                machine = GroupThreshold(index, rule, self._lineages)
            elif rule.threshold is not None:
                machine = Threshold(index, rule)
            else:
                for t in rule.events:
                    typed = _typed(rule, t)
                    if typed is not None:
                        singles.setdefault(t, []).append((index, rule, *typed))
                continue
            self._machines.append(machine)
            for t in machine.types:
                stateful.setdefault(t, []).append(machine)
        for t in singles.keys() | stateful.keys():
            self._by_type[t] = _Dispatch(singles.get(t, []), stateful.get(t, []), t)
        # Record types any rule reads (as written: a replay skips the others undecoded); an agent or
        # lineage threshold also learns who the ancestors are from exec records (not forks: a
        # replay would then decode a quarter more records).
        self.types = frozenset(t for r in self.rules for t in r.all_events)
        if self._lineages is not None:
            self.types |= {"exec"}
        self.needed_text = self._needed_text()

    def _needed_text(self) -> dict[str, frozenset]:
        """Record type -> texts one of which a record of that type must hold for any rule to read it.

        For the types where every rule that reads them has a guard made only of
        "eq" alternatives on fields read as written (Field.get.raw_text) with
        text values: a record without one of those values in one of those
        fields can match nothing, change no state, and so need not be parsed
        (replay._Run tests the quoted texts against the raw line). Not for
        exec when lineages are kept (every exec is seen), nor for lost records.
        """
        out = {}
        for t in self.types - {"lost", "status"}:
            if t == "exec" and self._lineages is not None:
                continue
            dispatch = self._by_type.get(t)
            if dispatch is None or dispatch.unguarded:
                continue
            texts = _eq_texts(dispatch.guards)
            if texts is not None:
                out[t] = texts
        return out

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
        if t == "exec" and self._lineages is not None:
            self._lineages.see(rec)
        dispatch = self._by_type.get(t)
        if dispatch is None:
            return []
        singles, machines = dispatch.select(rec)
        out: list | None = None
        for index, rule, match in singles:
            if match(rec):
                if out is None:
                    out = []
                out.append((index, alert_record(rule, [rec])))
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


def _eq_texts(guards: list) -> frozenset | None:
    """The text values of guards made only of "eq" alternatives on raw-text fields; None otherwise."""
    out = set()
    for guard in guards:
        if guard is None:
            return None
        for kind, name, values in guard:
            fld = F.field(name)
            if kind != "eq" or fld is None or not getattr(fld.get, "raw_text", False):
                return None
            for v in values:
                if v.__class__ is not str:
                    return None
                out.add(v)
    return frozenset(out)


def _order(hit: tuple[int, dict]) -> int:
    return hit[0]


def _typed(item, t: str):
    """(match, guard) of a rule or a sequence step for records of type t; None if it can never match them.

    Where the condition tests evt.type, the loader compiled it once per type
    with those tests folded away (loader._by_type).
    """
    by_type = item.by_type
    if t in by_type:
        return by_type[t]
    return item.match, item.guard


class _GuardIndex:
    """Which of some rules (or stateful rules) may match a record, by their guards (compiler.Compiler.guard).

    Entries without a guard are not indexed: the caller tests them on every
    record. The others are candidates when a guard alternative holds: an
    "eq" alternative is one dict lookup per field; a "sub" alternative is a
    scan of the field's text for the literals of every entry that has one.
    Text that is not ASCII is not scanned (case folding beyond ASCII is not
    lower()): every entry with a "sub" guard on that field is a candidate then.
    The candidates are a bit mask of the entries' indexes (bit i: entry i):
    or-ing ints costs a fraction of a union of sets, and the callers turn
    the few distinct masks into what to run once (_by_mask).
    """

    def __init__(self, guards: list) -> None:  # (index, guard)
        eq: dict[str, dict] = {}
        sub: dict[str, dict] = {}
        for index, guard in guards:
            for kind, name, values in guard:
                table = (eq if kind == "eq" else sub).setdefault(name, {})
                for v in values:
                    table[v] = table.get(v, 0) | (1 << index)
        self.eq = tuple((F.field(name).get, table) for name, table in eq.items())
        subs = []
        for name, table in sub.items():
            everyone = 0  # every entry with a "sub" guard on this field
            for mask in table.values():
                everyone |= mask
            subs.append((F.field(name).get, _any_literal(table), tuple(sorted(table.items())), everyone))
        self.sub = tuple(subs)

    def hits(self, rec: dict) -> int:
        """The mask of the entries a guard alternative of which holds (0: none)."""
        cands = 0
        for get, table in self.eq:
            hits = table.get(get(rec))
            if hits is not None:
                cands |= hits
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
                        cands |= hits
            else:
                cands |= everyone
        return cands


# Distinct candidate masks remembered per plan: a handful in practice (the
# guards of one record type take few combinations); past this, start over.
_MASKS_MAX = 4096


def _bits(mask: int) -> tuple:
    """The indexes of the set bits of mask, lowest first."""
    out = []
    k = 0
    while mask:
        if mask & 1:
            out.append(k)
        mask >>= 1
        k += 1
    return tuple(out)


class _Dispatch:
    """The rules of one record type, and which of them a record can reach: one _GuardIndex for all.

    Single-event rules without a guard are tested on every record, the others
    when their guard holds. A sequence or threshold only changes its state
    when its condition (or a step's) holds, so one none of whose guards hold
    for this type (Sequence.gate, Threshold.gate) is not fed the record at all:
    a connect to a private address costs nothing to the external-scan
    thresholds. Singles and stateful rules share the index (bits 0..n-1: the
    guarded singles; above: the stateful rules), so a field both read is
    looked at once. Machines are fed in rule order, as without the index.
    """

    def __init__(self, singles: list, machines: list, t: str) -> None:
        # singles: (index, rule, match, guard); machines: Sequence, Threshold, GroupThreshold
        always = [(index, rule, match) for index, rule, match, guard in singles if guard is None]
        self.guarded = [(index, rule, match) for index, rule, match, guard in singles if guard is not None]
        self.machines = tuple(machines)
        gates = [m.gate(t) for m in machines]
        n = len(self.guarded)
        self.shift = n
        self.single_bits = (1 << n) - 1
        self.always_singles = tuple(always)
        self.always_machines = 0
        for k, g in enumerate(gates):
            if g is None:
                self.always_machines |= 1 << k
        self.unguarded = bool(always) or bool(self.always_machines)
        # Every guard, for Engine.needed_text.
        self.guards = [guard for _, _, _, guard in singles if guard is not None] + [g for g in gates if g is not None]
        indexed = [(k, guard) for k, (_, _, _, guard) in enumerate(e for e in singles if e[3] is not None)]
        indexed += [(n + k, g) for k, g in enumerate(gates) if g is not None]
        self.index = _GuardIndex(indexed) if indexed else None
        self._chosen: dict[int, tuple] = {}  # candidate mask -> (singles, machines) to run (few distinct masks)
        self._nothing = self._choose(0)

    def _choose(self, mask: int) -> tuple:
        guarded = self.guarded
        machines = self.machines
        singles = self.always_singles + tuple(guarded[k] for k in _bits(mask & self.single_bits))
        return singles, tuple(machines[k] for k in _bits(self.always_machines | (mask >> self.shift)))

    def select(self, rec: dict) -> tuple:
        """(single-event rules to test, stateful rules to feed) for this record."""
        if self.index is None:
            return self._nothing
        cands = self.index.hits(rec)
        if not cands:
            return self._nothing
        chosen = self._chosen.get(cands)
        if chosen is None:
            if len(self._chosen) >= _MASKS_MAX:
                self._chosen.clear()
            chosen = self._chosen[cands] = self._choose(cands)
        return chosen


def _merge_guards(guards: list):
    """One guard that holds whenever one of the guards does (None if one of them is None)."""
    if not guards or any(g is None for g in guards):
        return None
    merged: dict[tuple[str, str], set] = {}
    for g in guards:
        for kind, name, values in g:
            merged.setdefault((kind, name), set()).update(values)
    return tuple((kind, name, frozenset(values)) for (kind, name), values in merged.items())


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
        self._gates: dict[str, list] = {}  # record type -> the guards of its steps
        typed_steps: dict[str, list] = {}
        for k, step in enumerate(spec.steps):
            for t in step.events:
                typed = _typed(step, t)
                if typed is not None:
                    self.types.add(t)
                    typed_steps.setdefault(t, []).append((k, typed))
                    self._gates.setdefault(t, []).append(typed[1])
        for t, steps in typed_steps.items():
            # The engine feeds a record only when the gate (the steps' guards merged) holds: with
            # one step for the type that is the step's own guard, so its condition runs bare.
            if len(steps) == 1:
                (k, (match, _)), = steps
                self.steps_for[t] = ((k, match),)
            else:
                self.steps_for[t] = tuple((k, guarded(*typed)) for k, typed in steps)

    def gate(self, t: str):
        """A guard that holds whenever a step can take a record of type t (None: always try)."""
        return _merge_guards(self._gates[t])

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
        if matched[0] and not self.state:
            # Only later steps matched (steps_for is in step order) and no partial match is
            # held: nothing to continue. The common case of a reverse-tunnel rule's second
            # step (a loopback connect) when no process holds an outside connection.
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


def _matches_by_type(rule) -> dict:
    """Record type -> the rule's condition for it, for the types it can match.

    Bare, not behind its guard: the engine feeds a threshold only the records
    its guard lets through (_Dispatch), so testing it again would be waste.
    """
    out = {}
    for t in rule.events:
        typed = _typed(rule, t)
        if typed is not None:
            out[t] = typed[0]
    return out


def _threshold_gate(rule, t: str):
    """A threshold's guard for records of type t (None: always try)."""
    typed = _typed(rule, t)
    return typed[1] if typed is not None else None


class Threshold(_Stateful):
    """At least `count` matching records (or distinct values) within `within` seconds, per process.

    The window slides. Once it fires for a key, that key is quiet for
    `within` seconds (one alert per key and window) and then starts afresh.
    """

    def __init__(self, index: int, rule) -> None:
        super().__init__()
        self.index = index
        self.rule = rule
        spec = rule.threshold
        self.within = spec.within
        self.count = spec.count
        self.distinct = tuple(F.field(name).get for name in spec.distinct)
        self._value = _value_of([F.field(name) for name in spec.distinct])
        self.match_for = _matches_by_type(rule)
        self.types = set(self.match_for)

    def gate(self, t: str):
        return _threshold_gate(self.rule, t)

    def feed(self, rec: dict, t: str):
        # The hot path of a replay (every private connect meets several of these): the key,
        # the clock and the LRU touch are written out here rather than called.
        if not self.match_for[t](rec):
            return None
        p = rec.get("process")
        if p.__class__ is not dict:
            return None
        key = p.get("key")
        if key.__class__ is not str:
            return None
        distinct = self.distinct
        if distinct:
            value = self._value(rec)
            if value is None:  # a record without one of the fields does not count
                return None
        now = _record_seconds(rec)
        if now is None:
            return None
        if now >= self._sweep_at:
            self.expire(now)
            self._sweep_at = now + SWEEP_SECONDS
        state = self.state
        w = state.get(key)
        if w is None:
            w = state[key] = _Window(bool(distinct), now)  # a new key goes last: most recently used
            if len(state) > MAX_KEYS:
                state.popitem(last=False)
        elif now < w.quiet_until:
            return None
        else:
            w.last = now
            state.move_to_end(key)
        cutoff = now - self.within
        if distinct:
            seen = w.hits
            seen[value] = now
            seen.move_to_end(value)
            while True:  # seen is never empty here
                if next(iter(seen.values())) >= cutoff:
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
        fresh = _Window(bool(distinct), now)
        fresh.quiet_until = now + self.within
        state[key] = fresh
        return self.index, alert_record(self.rule, evidence, count=n)

    def expire(self, now: float) -> None:
        cutoff = now - self.within
        _expire(self.state, lambda w: w.last < cutoff and now >= w.quiet_until)


# --------------------------------------------------------------------------
# Thresholds by agent or by lineage: many processes, one culprit.


class _Lineages:
    """Who the ancestors of a record's process are inside its agent.

    Holds the process object of each exec record, per (agent id, pid): an
    ancestor of the processes of a window (the xargs, the shell running the
    loop) is known whole (argv, key) when an alert names it. A subshell that
    never exec'd is not known. At most MAX_KEYS processes, the least
    recently seen dropped. Also the processes that were ancestors in a
    chain, and the chain of the record at hand (for the next rule).
    """

    def __init__(self) -> None:
        self.seen: OrderedDict = OrderedDict()
        self._last: tuple = (None, None)  # (record, its chain): the rules of one record share it
        self.parents: OrderedDict = OrderedDict()  # (agent id, pid) of the ancestors in chains so far

    def see(self, rec: dict) -> None:
        p = rec.get("process")
        a = rec.get("agent")
        if p.__class__ is dict and a.__class__ is dict:
            aid = a.get("id")
            pid = p.get("pid")
            if aid.__class__ is str and pid.__class__ is int:
                _touch(self.seen, (aid, pid), p)

    def chain(self, rec: dict, aid: str) -> tuple | None:
        """The pids of the record's process and of its ancestors inside the agent, deepest first.

        The ancestry (as recorded at fork) up to and including the agent's
        root; when the root is not in it (a sandbox's first process is not
        everyone's ancestor, ancestry stops at 16), up to the last ancestor
        that exec'd in this agent.
        """
        last = self._last
        if last[0] is rec:
            return last[1]
        chain = self._chain(rec, aid)
        self._last = (rec, chain)
        if chain is not None:
            parents = self.parents
            for pid in chain[1:]:
                key = (aid, pid)
                if key not in parents:
                    parents[key] = None
                    if len(parents) > MAX_KEYS:
                        parents.popitem(last=False)
        return chain

    def _chain(self, rec: dict, aid: str) -> tuple | None:
        p = rec["process"]
        pid = p.get("pid")
        if pid.__class__ is not int:
            return None
        root = rec["agent"].get("root_pid")
        if pid == root:
            return (pid,)
        out = [pid]
        anc = p.get("ancestry")
        if anc.__class__ is list:
            pids = [a.get("pid") for a in anc if a.__class__ is dict]
            if root is not None and root in pids:
                out.extend(pids[:pids.index(root) + 1])
            else:
                seen = self.seen
                for x in pids:
                    if (aid, x) not in seen:
                        break
                    out.append(x)
        return tuple(out)

    def process(self, aid: str, brief: dict) -> dict | None:
        """The latest process object of the ancestor an ancestry entry names, if it is still that process."""
        p = self.seen.get((aid, brief["pid"]))
        if p is not None and p.get("comm") == brief["comm"] and p.get("exe") == brief["exe"]:
            return p
        return None


class _Member:
    """A process whose records are in a window: how many, its latest process object and lineage."""

    __slots__ = ("hits", "process", "chain")

    def __init__(self) -> None:
        self.hits = 0
        self.process: dict = {}
        self.chain: tuple | None = None


class _GroupWindow:
    __slots__ = ("hits", "members", "evidence", "quiet_until", "last")

    def __init__(self, distinct: bool, now: float) -> None:
        # count: (time, process key) of the matching records in the window, oldest first;
        # distinct: value tuple -> (time, process key) of its last sighting, oldest first.
        self.hits: deque | OrderedDict = OrderedDict() if distinct else deque()
        self.members: OrderedDict = OrderedDict()  # process key -> _Member, the latest to count last
        self.evidence: deque = deque(maxlen=EVIDENCE_MAX)
        self.quiet_until = float("-inf")
        self.last = now


class GroupThreshold(_Stateful):
    """A threshold by agent or by lineage: records count whatever process of the agent made them.

    by agent: one window per agent. by lineage: one window per process of
    the agent other than its root, for the records of that process and of
    its descendants. A record counts in the window of its process and of
    each ancestor below the root (_Lineages.chain), deepest first, up to the
    first window that is quiet (what reaches it is already in an alert). The
    deepest window to reach the count fires; it and the windows above it
    start afresh, quiet for `within` seconds. `processes: N`: a window fires
    only once N processes made records in it.

    The alert names the nearest common ancestor of the processes whose
    records are in the window, and lists the processes (the latest
    INVOLVED_MAX, with how many more).
    """

    def __init__(self, index: int, rule, lineages: _Lineages) -> None:
        super().__init__()
        self.index = index
        self.rule = rule
        spec = rule.threshold
        self.by = spec.by
        self.within = spec.within
        self.count = spec.count
        self.processes = spec.processes
        self.distinct = bool(spec.distinct)
        self._value = _value_of([F.field(name) for name in spec.distinct])
        self.match_for = _matches_by_type(rule)
        self.types = set(self.match_for)
        self.lineages = lineages

    def gate(self, t: str):
        return _threshold_gate(self.rule, t)

    def feed(self, rec: dict, t: str):
        if not self.match_for[t](rec):
            return None
        aid = _agent_key(rec)
        if aid is None:
            return None
        value = None
        if self.distinct:
            value = self._value(rec)
            if value is None:  # a record without one of the fields does not count
                return None
        now = self.clock(rec)
        if now is None:
            return None
        pkey = _process_key(rec)
        chain = self.lineages.chain(rec, aid) if pkey is not None else None
        if self.by == "agent":
            keys: list = [aid]
        else:
            if chain is None:
                return None
            nodes = chain[:-1] if len(chain) > 1 and chain[-1] == rec["agent"].get("root_pid") else chain
            keys = [(aid, pid) for pid in nodes]
            if self.processes > 1 and keys[0] not in self.lineages.parents:
                # Alone, a process's own records can never be two processes: its window
                # opens with its first descendant's record (a probe that never forks has none).
                del keys[0]
        state = self.state
        for i, key in enumerate(keys):
            w = state.get(key)
            if w is None:
                w = state[key] = _GroupWindow(self.distinct, now)
                if len(state) > MAX_KEYS:
                    state.popitem(last=False)
            elif now < w.quiet_until:
                return None
            else:
                w.last = now
                state.move_to_end(key)
            n = self._add(w, value, now, pkey, rec, chain)
            if n >= self.count and len(w.members) >= self.processes:
                alert = self._alert(w, n, now, aid)
                for above in keys[i:]:  # this window and those above it: their records are in this alert
                    old = state.get(above)
                    if old is not None and now < old.quiet_until:
                        break
                    fresh = _GroupWindow(self.distinct, now)
                    fresh.quiet_until = now + self.within
                    _touch(state, above, fresh)
                return self.index, alert
        return None

    def _add(self, w: _GroupWindow, value, now: float, pkey, rec: dict, chain) -> int:
        """Count the record in the window; returns how many records (or distinct values) it holds."""
        members = w.members
        hits = w.hits
        if self.distinct:
            old = hits.pop(value, None)
            if old is not None:
                _drop_hit(members, old[1])
        if pkey is not None:
            m = members.get(pkey)
            if m is None:
                m = members[pkey] = _Member()
            else:
                members.move_to_end(pkey)
            m.hits += 1
            m.process = rec["process"]
            m.chain = chain
        cutoff = now - self.within
        if self.distinct:
            hits[value] = (now, pkey)
            while True:  # hits is never empty here
                at, k = next(iter(hits.values()))
                if at >= cutoff:
                    break
                hits.popitem(last=False)
                _drop_hit(members, k)
        else:
            hits.append((now, pkey))
            while hits[0][0] < cutoff:
                _drop_hit(members, hits.popleft()[1])
        w.evidence.append((now, rec))
        return len(hits)

    def _alert(self, w: _GroupWindow, n: int, now: float, aid: str) -> dict:
        cutoff = now - self.within
        evidence = [r for at, r in w.evidence if at >= cutoff]
        ancestor, process = self._culprit(w.members, aid)
        members = list(w.members.items())
        listed = members[-INVOLVED_MAX:]
        involved = {
            "by": self.by,
            "ancestor": ancestor,
            "count": len(members),
            "processes": [{"pid": m.process.get("pid"), "comm": m.process.get("comm"), "key": key, "records": m.hits}
                          for key, m in listed],
            "more": len(members) - len(listed),
        }
        return alert_record(self.rule, evidence, count=n, process=process, involved=involved)

    def _culprit(self, members: OrderedDict, aid: str) -> tuple[dict | None, dict | None]:
        """({pid, comm, exe} of the members' nearest common ancestor, or None; its process object, or None)."""
        common: tuple | None = None  # the shared lineage, top first
        for m in members.values():
            if m.chain is None:
                return None, None
            top = m.chain[::-1]
            if common is None:
                common = top
            else:
                k, end = 0, min(len(common), len(top))
                while k < end and common[k] == top[k]:
                    k += 1
                common = common[:k]
            if not common:
                return None, None
        if not common:
            return None, None
        pid = common[-1]
        for m in members.values():  # the ancestor made records of the window itself
            p = m.process
            if p.get("pid") == pid:
                return {"pid": pid, "comm": p.get("comm"), "exe": p.get("exe")}, p
        for m in members.values():
            anc = m.process.get("ancestry")
            for a in anc if anc.__class__ is list else ():
                if a.__class__ is dict and a.get("pid") == pid:
                    brief = {"pid": pid, "comm": a.get("comm"), "exe": a.get("exe")}
                    return brief, self.lineages.process(aid, brief)
        return None, None

    def expire(self, now: float) -> None:
        cutoff = now - self.within
        _expire(self.state, lambda w: w.last < cutoff and now >= w.quiet_until)


def _drop_hit(members: OrderedDict, pkey) -> None:
    """A record of the process `pkey` left the window."""
    if pkey is None:
        return
    m = members.get(pkey)
    if m is not None:
        m.hits -= 1
        if m.hits <= 0:
            del members[pkey]
