"""Load rules files: items in order, lists, macros, rules and overrides; compile; run examples.

    load([paths]) -> RuleSet        (RulesError: one line, file:line: what is wrong)

Files load in the order given (a directory gives its *.yaml, sorted). A
list or macro defined again replaces the earlier one; `append: true` extends
it. A rule id defined twice is an error; a later item changes an earlier rule
only through `override:` (or an item with just `rule` and `enabled`).
Everything is checked and compiled once all files are read, against the
final lists and macros.
"""

from __future__ import annotations

import calendar
import difflib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import fields as F
from .alerts import ACTIONS, MITRE, SEVERITIES, TemplateError, compile_template
from .compiler import Compiler, Predicate
from .engine import Engine
from .condition import And, Compare, ConditionError, Or, Source, Value, parse, parse_append
from .parser import RulesError, Where, YList, YMap, load_items

RULE_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*$")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")

RULE_KEYS = ("rule", "title", "description", "severity", "tags", "events", "condition", "output", "enabled",
             "exceptions", "examples", "action", "sequence", "threshold", "override", "rate_limit")
LIST_KEYS = ("list", "items", "append")
MACRO_KEYS = ("macro", "condition", "append")
EXCEPTION_KEYS = ("name", "fields", "comps", "values")
SEQUENCE_KEYS = ("by", "within", "steps")
STEP_KEYS = ("events", "condition")
THRESHOLD_KEYS = ("by", "within", "count", "distinct", "processes")
EXAMPLE_KEYS = ("match", "no_match")
OVERRIDE_APPEND = ("condition", "exceptions", "tags")
OVERRIDE_REPLACE = ("condition", "exceptions", "tags", "enabled", "severity", "output", "title", "description",
                    "action", "events", "rate_limit")
EXCEPTION_OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "contains", "icontains", "startswith", "endswith", "glob",
                 "regex", "cidr")


def default_rules_dir() -> Path:
    """The repository's rules/ directory, next to the tracer package."""
    return Path(__file__).resolve().parent.parent.parent / "rules"


# --------------------------------------------------------------------------
# What a load produces.


@dataclass
class Exception_:
    name: str
    fields: list[F.Field]
    comps: list[str]
    values: list[list]  # one tuple of values per entry, one value per field
    where: Where


@dataclass
class Step:
    events: tuple[str, ...]
    tree: object
    src: Source
    match: Predicate | None = None
    guard: tuple | None = None
    by_type: dict = field(default_factory=dict)  # see Rule.by_type


@dataclass
class SequenceSpec:
    by: str
    within: float
    steps: list[Step]


@dataclass
class ThresholdSpec:
    by: str
    within: float
    count: int
    distinct: tuple[str, ...]
    processes: int = 1  # by agent or lineage: the records come from at least this many processes


@dataclass
class Example:
    expect: bool  # True: must match; False: must not
    records: list[dict]  # partial records, as written
    label: str  # "match[0]"
    where: Where


@dataclass
class Rule:
    id: str
    title: str
    description: str
    severity: str
    tags: tuple[str, ...]
    mitre: tuple[str, ...]
    events: tuple[str, ...]
    tree: object | None  # the condition (for a sequence: ANDed into every step)
    src: Source | None
    output: str | None
    message: Callable[[dict], str]
    enabled: bool
    action: str
    exceptions: list[Exception_]
    examples: list[Example]
    sequence: SequenceSpec | None
    threshold: ThresholdSpec | None
    where: Where
    match: Predicate | None = None  # condition and not exceptions (single-event and threshold rules)
    guard: tuple[str, frozenset] | None = None
    # Record type -> (match, guard) where tests of evt.type fold away for that type
    # (Compiler.specialize), or None where the rule can never match it; types not
    # here use match and guard.
    by_type: dict = field(default_factory=dict)
    # Alerts delivered per (rule, agent): None, the session's default; False, never limited;
    # (count, seconds), this rule's own (tracer/ratelimit.py).
    rate_limit: tuple[int, float] | bool | None = None

    @property
    def kind(self) -> str:
        return "sequence" if self.sequence else "threshold" if self.threshold else "event"

    @property
    def all_events(self) -> tuple[str, ...]:
        if self.sequence is None:
            return self.events
        seen: dict[str, None] = {}
        for s in self.sequence.steps:
            seen.update(dict.fromkeys(s.events))
        return tuple(seen)


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    lists: dict[str, list[str]] = field(default_factory=dict)
    macros: dict[str, object] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# Paths.


_SIGMA_KEYS = (re.compile(r"(?m)^logsource\s*:"), re.compile(r"(?m)^detection\s*:"))


def looks_like_sigma(text: str) -> bool:
    """A Sigma rule file: a YAML document with top-level `logsource` and `detection` keys (rules files are lists)."""
    return all(k.search(text) for k in _SIGMA_KEYS)


def _sigma_file(path: Path) -> bool:
    try:
        return looks_like_sigma(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return True  # load() says why it cannot be read


def rule_files(paths: list[str | Path]) -> list[Path]:
    """A directory gives its *.yaml files and its Sigma *.yml files, in sorted order (not its subdirectories)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted([*path.glob("*.yaml"), *(f for f in path.glob("*.yml") if _sigma_file(f))]))
        elif path.is_file():
            out.append(path)
        else:
            raise RulesError(f"{p}: no such rules file or directory")
    return out


def load(paths: list[str | Path] | None = None, check_examples: bool = True,
         sigma_refusal: Callable[[str], None] | None = None) -> RuleSet:
    """Load, check and compile rules; with check_examples, every example must hold.

    A Sigma rule file (looks_like_sigma) is converted on the fly (tracer/rules/sigma.py). A Sigma
    rule that cannot be converted is a RulesError (`file:line: sigma rule 'Title': why`), unless
    sigma_refusal is given: then that line is passed to it and the rule is skipped.
    """
    if paths is None:
        paths = [default_rules_dir()] if default_rules_dir().is_dir() else []
    files = rule_files(paths)
    loader = _Loader()
    sigma_ids: set[str] = set()
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        if path.suffix in (".yml", ".yaml") and looks_like_sigma(text):
            text = _from_sigma(text, str(path), sigma_refusal, sigma_ids)
        loader.load_text(text, str(path))
    return _finish(loader, check_examples)


def _from_sigma(text: str, file: str, refusal: Callable[[str], None] | None, used: set[str]) -> str:
    """A Sigma file's rules as rules-file text; each refusal raises, or goes to `refusal` and is skipped."""
    try:
        from . import sigma  # noqa: PLC0415  (pySigma is loaded only when a Sigma file is)
    except ImportError as exc:
        raise RulesError(f"{file}: a Sigma rule file, and pySigma cannot be loaded ({exc}); "
                         "pip install pysigma") from None
    converted = sigma.convert_text(text, file, used)
    for r in converted.refusals:
        if refusal is None:
            raise RulesError(str(r))
        refusal(str(r))
    return converted.yaml


def load_text(text: str, file: str = "<rules>", check_examples: bool = True) -> RuleSet:
    """Rules from one text (tests)."""
    loader = _Loader()
    loader.load_text(text, file)
    return _finish(loader, check_examples)


def _finish(loader: "_Loader", check_examples: bool) -> RuleSet:
    """The loaded rule set; the first example that does not hold stops the load."""
    ruleset = loader.finish()
    if check_examples:
        for rule in ruleset.rules:
            failures = run_examples(rule)
            if failures:
                raise RulesError(failures[0])
    return ruleset


# --------------------------------------------------------------------------
# Items.


def _src(item: YMap, key: str, owner: str, what: str) -> Source:
    return Source(item.where.file, item.value_line[key], item[key], owner, what)


class _Loader:
    def __init__(self) -> None:
        self.lists: dict[str, tuple[list, Where]] = {}
        self.macros: dict[str, tuple[object, Where]] = {}
        self.rules: dict[str, Rule] = {}
        self.files: list[str] = []

    def load_text(self, text: str, file: str) -> None:
        self.files.append(file)
        for item in load_items(text, file):
            kinds = [k for k in ("rule", "macro", "list") if k in item]
            if len(kinds) != 1:
                what = "none" if not kinds else " and ".join(kinds)
                raise RulesError(f"{item.where}: an item has exactly one of rule, macro, list (this one has {what})")
            getattr(self, "_" + kinds[0])(item)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _fail(item: YMap, owner: str, message: str, key: str | None = None) -> "NoReturn":  # noqa: F821
        line = item.key_line[key] if key is not None and key in item.key_line else item.where.line
        raise RulesError(f"{item.where.file}:{line}: {owner}: {message}")

    def _check_keys(self, item: YMap, allowed: tuple, owner: str, what: str = "") -> None:
        for key in item:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (one of {', '.join(allowed)})"
                self._fail(item, owner, f"{what}unknown key '{key}'{hint}", key)

    def _condition(self, item: YMap, key: str, owner: str, what: str = "condition"):
        text = item.get(key)
        if text is None or (isinstance(text, str) and not text.strip()):
            self._fail(item, owner, f"{what}: missing condition", key if key in item else None)
        if not isinstance(text, str):
            self._fail(item, owner, f"{what}: a condition is text, not {type(text).__name__}", key)
        src = _src(item, key, owner, what)
        try:
            return parse(src), src
        except ConditionError as exc:
            raise _condition_error(exc) from None

    # -- lists --------------------------------------------------------------

    def _list(self, item: YMap) -> None:
        name = item["list"]
        owner = f"list {name}"
        if not isinstance(name, str) or not NAME.match(name):
            self._fail(item, f"list {name!r}", "a list name is letters, digits and _", "list")
        self._check_keys(item, LIST_KEYS, owner)
        if name in self.macros:
            self._fail(item, owner, f"'{name}' is already a macro ({self.macros[name][1]}); lists and macros share "
                                    "one namespace", "list")
        items = item.get("items")
        if not isinstance(items, list):
            self._fail(item, owner, "items: a YAML list of values is required", "items" if "items" in item else None)
        values = []
        for v, raw, line in zip(items, items.raw, items.item_line):
            if raw is None or v is None:
                raise RulesError(f"{item.where.file}:{line}: {owner}: items: {v!r} is not a text or number value")
            values.append(raw)  # as written: `on` stays on, 0755 stays 0755
        append = item.get("append", False)
        if not isinstance(append, bool):
            self._fail(item, owner, "append: true or false", "append")
        if append:
            if name not in self.lists:
                self._fail(item, owner, "append to a list that is not defined yet", "append")
            self.lists[name] = (self.lists[name][0] + values, self.lists[name][1])
        else:
            self.lists[name] = (values, item.where)

    # -- macros -------------------------------------------------------------

    def _macro(self, item: YMap) -> None:
        name = item["macro"]
        if not isinstance(name, str) or not NAME.match(name):
            self._fail(item, f"macro {name!r}", "a macro name is letters, digits and _", "macro")
        owner = f"macro {name}"
        if F.field(name) is not None or name in ("and", "or", "not"):
            self._fail(item, owner, f"'{name}' is a field or keyword, not a macro name", "macro")
        self._check_keys(item, MACRO_KEYS, owner)
        if name in self.lists:
            self._fail(item, owner, f"'{name}' is already a list ({self.lists[name][1]}); lists and macros share "
                                    "one namespace", "macro")
        append = item.get("append", False)
        if not isinstance(append, bool):
            self._fail(item, owner, "append: true or false", "append")
        if append:
            if name not in self.macros:
                self._fail(item, owner, "append to a macro that is not defined yet", "append")
            op, tree = self._appended(item, owner)
            old = self.macros[name][0]
            self.macros[name] = ((And if op == "and" else Or)([old, tree]), self.macros[name][1])
        else:
            tree, _ = self._condition(item, "condition", owner)
            self.macros[name] = (tree, item.where)

    def _appended(self, item: YMap, owner: str):
        text = item.get("condition")
        if not isinstance(text, str) or not text.strip():
            self._fail(item, owner, "condition: missing condition", "condition" if "condition" in item else None)
        try:
            return parse_append(_src(item, "condition", owner, "condition"))
        except ConditionError as exc:
            raise _condition_error(exc) from None

    # -- rules --------------------------------------------------------------

    def _rule(self, item: YMap) -> None:
        rid = item["rule"]
        if not isinstance(rid, str) or not RULE_ID.match(rid):
            self._fail(item, f"rule {rid!r}", "a rule id is lowercase letters, digits and dashes", "rule")
        owner = f"rule {rid}"
        self._check_keys(item, RULE_KEYS, owner)
        if "override" in item:
            return self._override(item, rid, owner)
        if set(item) == {"rule", "enabled"}:
            if rid not in self.rules:
                self._fail(item, owner, "an item of just rule and enabled changes an earlier rule, and there is none",
                           "rule")
            if not isinstance(item["enabled"], bool):
                self._fail(item, owner, "enabled: true or false", "enabled")
            self.rules[rid].enabled = item["enabled"]
            return None
        if rid in self.rules:
            self._fail(item, owner, f"duplicate rule id (first defined at {self.rules[rid].where}; "
                                    "use override: to change it)", "rule")
        self.rules[rid] = self._new_rule(item, rid, owner)
        return None

    def _new_rule(self, item: YMap, rid: str, owner: str) -> Rule:
        if "sequence" in item and "threshold" in item:
            self._fail(item, owner, "a rule has a sequence or a threshold, not both", "threshold")
        severity = self._severity(item, owner)
        title = self._text(item, "title", owner, default=rid)
        description = self._text(item, "description", owner, default="")
        tags = self._tags(item, owner)
        action = self._action(item, owner)
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            self._fail(item, owner, "enabled: true or false", "enabled")
        events = self._events(item, "events", owner, required="sequence" not in item)
        tree = src = None
        if "condition" in item or "sequence" not in item:
            tree, src = self._condition(item, "condition", owner)
        sequence = self._sequence(item, owner, events) if "sequence" in item else None
        threshold = self._threshold(item, owner) if "threshold" in item else None
        output = self._text(item, "output", owner, default=None)
        message = self._template(item, owner, output, title)
        rule = Rule(
            id=rid, title=title, description=description, severity=severity, tags=tags,
            mitre=tuple(t for t in tags if MITRE.match(t)), events=events, tree=tree, src=src, output=output,
            message=message, enabled=enabled, action=action, exceptions=[], examples=[], sequence=sequence,
            threshold=threshold, where=item.where,
        )
        rule.exceptions = self._exceptions(item, owner)
        rule.examples = self._examples(item, owner, rule)
        rule.rate_limit = self._rate_limit(item, owner)
        return rule

    def _rate_limit(self, item: YMap, owner: str):
        if "rate_limit" not in item:
            return None
        v = item["rate_limit"]
        if v is False:
            return False
        if isinstance(v, dict) and set(v) == {"count", "per"}:
            count, per = v["count"], v["per"]
            if isinstance(count, int) and not isinstance(count, bool) and count >= 1 and \
                    isinstance(per, (int, float)) and not isinstance(per, bool) and per > 0:
                return (count, float(per))
        self._fail(item, owner, "rate_limit: off, or {count: N, per: SECONDS} (N >= 1, SECONDS > 0)", "rate_limit")

    def _text(self, item: YMap, key: str, owner: str, default):
        v = item.get(key, default)
        if v is not default and not isinstance(v, str):
            self._fail(item, owner, f"{key}: text expected", key)
        return v

    def _severity(self, item: YMap, owner: str) -> str:
        sev = item.get("severity")
        if sev is None:
            self._fail(item, owner, f"severity: missing ({', '.join(SEVERITIES)})", "severity" if "severity" in item else None)
        if sev not in SEVERITIES:
            self._fail(item, owner, f"bad severity {sev!r} (one of {', '.join(SEVERITIES)})", "severity")
        return sev

    def _tags(self, item: YMap, owner: str) -> tuple[str, ...]:
        tags = item.get("tags", [])
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
            self._fail(item, owner, "tags: a list of words", "tags")
        return tuple(tags)

    def _action(self, item: YMap, owner: str) -> str:
        action = item.get("action", "none")
        if action not in ACTIONS:
            self._fail(item, owner, f"bad action {action!r} (one of {', '.join(ACTIONS)})", "action")
        return action

    def _events(self, item: YMap, key: str, owner: str, required: bool, what: str = "") -> tuple[str, ...]:
        events = item.get(key)
        if events is None:
            if required:
                self._fail(item, owner, f"{what}events: missing (one or more of {', '.join(F.RECORD_TYPES)})",
                           key if key in item else None)
            return ()
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, list) or not events:
            self._fail(item, owner, f"{what}events: a list of record types", key)
        for e in events:
            if e not in F.RECORD_TYPES:
                self._fail(item, owner, f"{what}events: unknown record type {e!r} (one of {', '.join(F.RECORD_TYPES)})",
                           key)
        return tuple(dict.fromkeys(events))

    def _template(self, item: YMap, owner: str, output: str | None, title: str):
        try:
            return compile_template(output if output is not None else title)
        except TemplateError as exc:
            self._fail(item, owner, f"{'output' if output is not None else 'title'}: {exc}",
                       "output" if output is not None else "title")

    def _window(self, spec: YMap, owner: str, what: str) -> float:
        within = spec.get("within")
        if isinstance(within, bool) or not isinstance(within, (int, float)) or within <= 0:
            self._fail(spec, owner, f"{what}.within: seconds, a number > 0", "within" if "within" in spec else None)
        return float(within)

    def _sequence(self, item: YMap, owner: str, events: tuple[str, ...]) -> SequenceSpec:
        spec = item["sequence"]
        if not isinstance(spec, YMap):
            self._fail(item, owner, "sequence: a mapping with by, within and steps", "sequence")
        self._check_keys(spec, SEQUENCE_KEYS, owner, "sequence: ")
        by = spec.get("by", "process")
        if by not in ("process", "lineage", "agent"):
            self._fail(spec, owner, f"sequence.by: {by!r} is not process, lineage or agent", "by")
        within = self._window(spec, owner, "sequence")
        steps = spec.get("steps")
        if not isinstance(steps, YList) or len(steps) < 2:
            self._fail(spec, owner, "sequence.steps: a list of two or more steps", "steps" if "steps" in spec else None)
        out = []
        for i, step in enumerate(steps):
            what = f"sequence.steps[{i}]"
            if not isinstance(step, YMap):
                raise RulesError(f"{item.where.file}:{steps.item_line[i]}: {owner}: {what}: a mapping with events "
                                 "and condition")
            self._check_keys(step, STEP_KEYS, owner, f"{what}: ")
            step_events = self._events(step, "events", owner, required=not events, what=f"{what}.") or events
            tree, src = self._condition(step, "condition", owner, f"{what}.condition")
            out.append(Step(step_events, tree, src))
        return SequenceSpec(by, within, out)

    def _threshold(self, item: YMap, owner: str) -> ThresholdSpec:
        spec = item["threshold"]
        if not isinstance(spec, YMap):
            self._fail(item, owner, "threshold: a mapping with by, within, count, distinct and processes", "threshold")
        self._check_keys(spec, THRESHOLD_KEYS, owner, "threshold: ")
        by = spec.get("by", "process")
        if by not in ("process", "lineage", "agent"):
            self._fail(spec, owner, f"threshold.by: {by!r} is not process, lineage or agent", "by")
        within = self._window(spec, owner, "threshold")
        count = spec.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            self._fail(spec, owner, "threshold.count: a whole number >= 1", "count" if "count" in spec else None)
        distinct = spec.get("distinct", [])
        if isinstance(distinct, str):
            distinct = [distinct]
        if not isinstance(distinct, list):
            self._fail(spec, owner, "threshold.distinct: a list of fields", "distinct")
        for name in distinct:
            if not isinstance(name, str) or F.field(name) is None:
                self._fail(spec, owner, f"threshold.distinct: unknown field {name!r}", "distinct")
        processes = spec.get("processes", 1)
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            self._fail(spec, owner, "threshold.processes: a whole number >= 1", "processes")
        if processes > 1 and by == "process":
            self._fail(spec, owner, "threshold.processes: counts the processes of an agent or a lineage "
                       "(by: agent or by: lineage)", "processes")
        return ThresholdSpec(by, within, count, tuple(distinct), processes)

    def _exceptions(self, item: YMap, owner: str) -> list[Exception_]:
        excs = item.get("exceptions", [])
        if not isinstance(excs, list):
            self._fail(item, owner, "exceptions: a list of {name, fields, comps, values}", "exceptions")
        out: list[Exception_] = []
        names = set()
        for i, exc in enumerate(excs):
            if not isinstance(exc, YMap):
                raise RulesError(f"{item.where.file}:{excs.item_line[i]}: {owner}: exceptions[{i}]: a mapping with "
                                 "name, fields, comps and values")
            e = self._exception(exc, owner, i)
            if e.name in names:
                self._fail(exc, owner, f"exceptions: duplicate name '{e.name}'", "name")
            names.add(e.name)
            out.append(e)
        return out

    def _exception(self, exc: YMap, owner: str, i: int) -> Exception_:
        self._check_keys(exc, EXCEPTION_KEYS, owner, f"exceptions[{i}]: ")
        name = exc.get("name")
        if not isinstance(name, str) or not name:
            self._fail(exc, owner, f"exceptions[{i}]: name: missing", "name" if "name" in exc else None)
        what = f"exceptions: {name}"
        names = exc.get("fields")
        single = isinstance(names, str)
        if single:
            names = [names]
        if not isinstance(names, list) or not names:
            self._fail(exc, owner, f"{what}: fields: a field or a list of fields", "fields" if "fields" in exc else None)
        flds = []
        for n in names:
            fld = F.field(n) if isinstance(n, str) else None
            if fld is None:
                self._fail(exc, owner, f"{what}: fields: unknown field {n!r}", "fields")
            flds.append(fld)
        comps = exc.get("comps", "=" if single else ["="] * len(flds))
        if single and isinstance(comps, str):
            comps = [comps]
        if not isinstance(comps, list) or len(comps) != len(flds):
            self._fail(exc, owner, f"{what}: comps: one operator per field", "comps")
        for c in comps:
            if c not in EXCEPTION_OPS:
                self._fail(exc, owner, f"{what}: comps: unknown operator {c!r}", "comps")
        values = exc.get("values")
        if values is None:
            values = YList()
            values.where, values.item_line, values.raw = exc.where, [], []
        if not isinstance(values, YList):
            self._fail(exc, owner, f"{what}: values: a list", "values")
        items = _written(values)
        if items is None:
            self._fail(exc, owner, f"{what}: values: text, numbers and lists of them only", "values")
        rows = []
        for v in items:
            row = [v] if single else v
            if not isinstance(row, list) or len(row) != len(flds):
                self._fail(exc, owner, f"{what}: values: each entry is a list of {len(flds)} value(s), one per field",
                           "values")
            rows.append(row)
        return Exception_(name, flds, comps, rows, exc.where)

    def _examples(self, item: YMap, owner: str, rule: Rule) -> list[Example]:
        ex = item.get("examples")
        if ex is None:
            return []
        if not isinstance(ex, YMap):
            self._fail(item, owner, "examples: a mapping with match and no_match", "examples")
        self._check_keys(ex, EXAMPLE_KEYS, owner, "examples: ")
        stateful = rule.sequence is not None or rule.threshold is not None
        out = []
        for key in EXAMPLE_KEYS:
            entries = ex.get(key)
            if entries is None:
                continue
            if not isinstance(entries, YList):
                self._fail(ex, owner, f"examples.{key}: a list of examples", key)
            for i, (entry, line) in enumerate(zip(entries, entries.item_line)):
                label = f"{key}[{i}]"
                where = Where(item.where.file, line)
                records = entry if isinstance(entry, list) else [entry]
                if isinstance(entry, list) and not stateful:
                    raise RulesError(f"{where}: {owner}: examples.{label}: one record (a mapping); a list of records "
                                     "is for sequence and threshold rules")
                try:
                    records = expand_example(records)
                    for r in records:
                        check_example_record(r)
                except ValueError as exc:
                    raise RulesError(f"{where}: {owner}: examples.{label}: {exc}") from None
                out.append(Example(key == "match", records, label, where))
        return out

    # -- overrides ----------------------------------------------------------

    def _override(self, item: YMap, rid: str, owner: str) -> None:
        rule = self.rules.get(rid)
        if rule is None:
            self._fail(item, owner, "override of a rule that is not defined yet", "override")
        spec = item["override"]
        if not isinstance(spec, YMap) or not spec:
            self._fail(item, owner, "override: a mapping of key: append|replace", "override")
        given = [k for k in item if k not in ("rule", "override")]
        for key in given:
            if key not in spec:
                self._fail(item, owner, f"override: '{key}' is given but not listed in override", key)
        for key, how in spec.items():
            if how not in ("append", "replace"):
                self._fail(spec, owner, f"override.{key}: append or replace, not {how!r}", key)
            allowed = OVERRIDE_APPEND if how == "append" else OVERRIDE_REPLACE
            if key not in allowed:
                self._fail(spec, owner, f"override.{key}: cannot {how} {key} (can {how}: {', '.join(allowed)})", key)
            if key not in item:
                self._fail(spec, owner, f"override.{key}: no '{key}' given to {how}", key)
        for key, how in spec.items():
            if key == "condition":
                if how == "replace":
                    rule.tree, rule.src = self._condition(item, "condition", owner)
                else:
                    op, tree = self._appended(item, owner)
                    if rule.tree is None:
                        if op == "or":
                            self._fail(item, owner, "condition: nothing to append 'or' to", "condition")
                        rule.tree = tree
                    else:
                        rule.tree = (And if op == "and" else Or)([rule.tree, tree])
            elif key == "exceptions":
                new = self._exceptions(item, owner)
                if how == "replace":
                    rule.exceptions = new
                else:
                    by_name = {e.name: e for e in rule.exceptions}
                    for e in new:
                        old = by_name.get(e.name)
                        if old is None:
                            rule.exceptions.append(e)
                        elif [f.name for f in old.fields] == [f.name for f in e.fields] and old.comps == e.comps:
                            old.values.extend(e.values)
                        else:
                            self._fail(item, owner, f"exceptions: {e.name}: appended values need the same fields "
                                                    "and comps", "exceptions")
            elif key == "tags":
                tags = self._tags(item, owner)
                rule.tags = tuple(dict.fromkeys(rule.tags + tags)) if how == "append" else tags
                rule.mitre = tuple(t for t in rule.tags if MITRE.match(t))
            elif key == "enabled":
                if not isinstance(item["enabled"], bool):
                    self._fail(item, owner, "enabled: true or false", "enabled")
                rule.enabled = item["enabled"]
            elif key == "severity":
                rule.severity = self._severity(item, owner)
            elif key == "action":
                rule.action = self._action(item, owner)
            elif key == "rate_limit":
                rule.rate_limit = self._rate_limit(item, owner)
            elif key == "events":
                if rule.sequence is not None:
                    self._fail(item, owner, "events: a sequence's events are in its steps", "events")
                rule.events = self._events(item, "events", owner, required=True)
            elif key in ("output", "title"):
                setattr(rule, key, self._text(item, key, owner, default=None))
                rule.message = self._template(item, owner, rule.output, rule.title)
            elif key == "description":
                rule.description = self._text(item, key, owner, default="")

    # -- the end of a load --------------------------------------------------

    def finish(self) -> RuleSet:
        try:
            return self._finish()
        except RecursionError:
            raise RulesError(f"{self.files[-1] if self.files else '<rules>'}: conditions nest too deep") from None

    def _finish(self) -> RuleSet:
        lists = self._resolve_lists()
        macros = {name: tree for name, (tree, _) in self.macros.items()}
        compiler = Compiler(lists, macros)
        for name, (tree, where) in self.macros.items():
            try:
                compiler.compile(compiler.expand(tree, (name,)))
            except ConditionError as exc:
                raise _condition_error(exc, f"{where}: macro {name}") from None
        for rule in self.rules.values():
            _compile_rule(compiler, rule)
        return RuleSet(list(self.rules.values()), lists, macros, self.files)

    def _resolve_lists(self) -> dict[str, list[str]]:
        """Items that name another list stand for its items (Falco's lists of lists)."""
        out: dict[str, list[str]] = {}

        def resolve(name: str, stack: tuple[str, ...]) -> list[str]:
            if name in out:
                return out[name]
            if name in stack:
                where = self.lists[name][1]
                raise RulesError(f"{where}: list {name}: list cycle: {' -> '.join(stack + (name,))}")
            items: list[str] = []
            for v in self.lists[name][0]:
                if v in self.lists:
                    items.extend(resolve(v, stack + (name,)))
                else:
                    items.append(v)
            out[name] = items
            return items

        for name in self.lists:
            resolve(name, ())
        return out


def _written(values: YList) -> list | None:
    """Scalars as written in the file (lists of them kept as lists), or None for anything else."""
    out: list = []
    for v, raw in zip(values, values.raw):
        if isinstance(v, YList):
            inner = _written(v)
            if inner is None:
                return None
            out.append(inner)
        elif raw is None or v is None:
            return None
        else:
            out.append(raw)
    return out


def _condition_error(exc: ConditionError, fallback: str = "") -> RulesError:
    src = exc.src
    if src is None:
        return RulesError(f"{fallback}: {exc.message}")
    line, col = src.where(exc.pos)
    return RulesError(f"{src.file}:{line}: {src.owner}: {src.what}: {exc.message}{col}")


def _exception_tree(rule: Rule, exc: Exception_):
    """An exception as a condition tree: (f1 c1 v1 and f2 c2 v2 ...) or ... for each entry."""
    src = Source(exc.where.file, exc.where.line, "", f"rule {rule.id}", f"exceptions: {exc.name}")
    entries = []
    for row in exc.values:
        terms = []
        for fld, comp, value in zip(exc.fields, exc.comps, row):
            if isinstance(value, list):
                if any(isinstance(v, list) for v in value):
                    raise RulesError(f"{exc.where}: rule {rule.id}: exceptions: {exc.name}: values nest too deep")
                values, listy = [Value(v, 0, True, True) for v in value], True
            elif comp == "in":
                values, listy = [Value(value, 0, False, False)], False  # a list name
            else:
                values, listy = [Value(value, 0, True, False)], False
            terms.append(Compare(fld, comp, values, listy, 0, 0, src))
        entries.append(terms[0] if len(terms) == 1 else And(terms))
    if not entries:
        return None
    return entries[0] if len(entries) == 1 else Or(entries)


def _compile_rule(compiler: Compiler, rule: Rule) -> None:
    owner = f"{rule.where}: rule {rule.id}"
    try:
        cond_tree = compiler.expand(rule.tree) if rule.tree is not None else None
        exc_trees = [t for t in (_exception_tree(rule, e) for e in rule.exceptions) if t is not None]
        exc_fns = [compiler.compile(t) for t in exc_trees]
        if rule.sequence is not None:
            for step in rule.sequence.steps:
                step_tree = compiler.expand(step.tree)
                if cond_tree is not None:
                    step_tree = And([cond_tree, step_tree])
                step.match = _with_exceptions(compiler.compile(step_tree), exc_fns)
                step.guard = compiler.guard(step_tree)
                step.by_type = _by_type(compiler, step_tree, exc_trees, step.events)
            rule.match = None
            rule.guard = None
            return
        cond = compiler.compile(cond_tree)
        rule.match = _with_exceptions(cond, exc_fns)
        rule.guard = compiler.guard(cond_tree)
        rule.by_type = _by_type(compiler, cond_tree, exc_trees, rule.events)
    except ConditionError as exc:
        if exc.src is not None and exc.src.text == "":  # an exception: no text to point into
            raise RulesError(f"{exc.src.file}:{exc.src.line}: {exc.src.owner}: {exc.src.what}: {exc.message}") from None
        raise _condition_error(exc, owner) from None


def _by_type(compiler: Compiler, tree, exc_trees: list, types: tuple[str, ...]) -> dict:
    """Rule.by_type: per record type, the condition and exceptions with evt.type folded away.

    Only the types where something folds are listed; None marks a type the
    condition (or an exception that always holds) rules out.
    """
    out: dict = {}
    for t in types:
        cond = compiler.specialize(tree, t)
        excs = [compiler.specialize(e, t) for e in exc_trees]
        if cond is tree and all(a is b for a, b in zip(excs, exc_trees)):
            continue
        if cond is False or any(e is True for e in excs):
            out[t] = None
            continue
        match = _always if cond is True else compiler.compile(cond)
        out[t] = (_with_exceptions(match, [compiler.compile(e) for e in excs if e is not False]),
                  None if cond is True else compiler.guard(cond))
    return out


def _always(_r: dict) -> bool:
    return True


def _with_exceptions(cond: Predicate, excs: list[Predicate]) -> Predicate:
    if not excs:
        return cond
    if len(excs) == 1:
        e = excs[0]
        return lambda r: cond(r) and not e(r)
    excs_t = tuple(excs)

    def match(r):
        if not cond(r):
            return False
        for e in excs_t:
            if e(r):
                return False
        return True

    return match


# --------------------------------------------------------------------------
# Examples: partial records, completed so that every field resolves.

EXAMPLE_EPOCH = calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))
EXAMPLE_STEP = 0.001  # seconds between the records of an example, unless they say `time`
RECORD_KEYS = frozenset((
    "kind", "type", "time", "agent", "process", "exec", "exit_code", "signal", "child", "network", "payload",
    "connection", "dns", "gpu", "tamper", "link", "policy", "lost", "lost_total", "status", "survivors", "argv", "linger", "pids", "host_wide",
))
PROCESS_KEYS = frozenset(("pid", "ppid", "uid", "comm", "exe", "argv", "argv_truncated", "key", "ancestry"))
_REPEAT = re.compile(r"\{i(?:\+(\d+))?\}")


def _plain(value):
    """YAML's YMap/YList as plain dicts and lists, as records are (accessors test for exact types)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def expand_example(records: list) -> list[dict]:
    """`{repeat: N, record: {...}}` stands for N records; "{i}" / "{i+K}" in its text counts 0.. (or K..)."""
    out: list[dict] = []
    for r in _plain(records):
        if not isinstance(r, dict):
            raise ValueError("a record is a mapping")
        if "repeat" in r:
            n, rec = r.get("repeat"), r.get("record")
            if set(r) != {"repeat", "record"} or isinstance(n, bool) or not isinstance(n, int) or n < 1 \
                    or not isinstance(rec, dict):
                raise ValueError("repeat: {repeat: N, record: {...}}")
            out.extend(_substitute(rec, i) for i in range(n))
        else:
            out.append(r)
    return out


def _substitute(value, i: int):
    if isinstance(value, dict):
        return {k: _substitute(v, i) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, i) for v in value]
    if isinstance(value, str) and "{i" in value:
        text = _REPEAT.sub(lambda m: str(i + int(m.group(1) or 0)), value)
        return int(text) if _REPEAT.fullmatch(value) else text
    return value


def check_example_record(r: dict) -> None:
    for key in r:
        if key not in RECORD_KEYS:
            close = difflib.get_close_matches(str(key), RECORD_KEYS, n=1, cutoff=0.6)
            raise ValueError(f"unknown record key {key!r}" + (f" (did you mean '{close[0]}'?)" if close else ""))
    p = r.get("process")
    if isinstance(p, dict):
        for key in p:
            if key not in PROCESS_KEYS:
                close = difflib.get_close_matches(str(key), PROCESS_KEYS, n=1, cutoff=0.6)
                raise ValueError(f"unknown process key {key!r}" + (f" (did you mean '{close[0]}'?)" if close else ""))
    t = r.get("type")
    if t is not None and t not in F.RECORD_TYPES:
        raise ValueError(f"unknown record type {t!r}")


def _rfc3339(seconds: float) -> str:
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def example_record(partial: dict, default_type: str, index: int) -> dict:
    """A full record from a partial one: defaults for whatever it leaves out."""
    t = partial.get("type", default_type)
    if partial.get("kind") == "status":
        t = "status"
    when = partial.get("time", index * EXAMPLE_STEP)
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        when = _rfc3339(EXAMPLE_EPOCH + when)
    agent = _merge({"id": "agent-example", "root_pid": 1000, "labels": {}}, partial.get("agent") or {}) \
        if partial.get("agent", {}) is not None else None
    if t == "status":
        rec = {"kind": "status", "status": "agent_started", "time": when, "agent": agent}
        rec.update({k: v for k, v in partial.items() if k not in ("kind", "type", "time", "agent")})
        return rec
    rec = {"kind": "event", "type": t, "time": when, "agent": agent, "process": _example_process(partial.get("process") or {})}
    proc = rec["process"]
    if t == "exec":
        rec["exec"] = {"filename": proc["exe"], "result": "ok", "retval": 0, "execveat": False,
                       "filename_truncated": False, "argv_unreadable": False}
    elif t == "exit":
        rec["exit_code"], rec["signal"] = 0, None
    elif t == "fork":
        rec["child"] = {"pid": proc["pid"] + 1, "key": f"{proc['pid'] + 1}:1000"}
    elif t == "lost":
        rec["process"] = None
        rec["agent"] = None
    if t in ("connect", "send", "connection", "dns"):
        net = partial.get("network") or {}
        daddr = net.get("daddr")
        rec["network"] = {
            "family": "ipv6" if isinstance(daddr, str) and ":" in daddr else "ipv4",
            "protocol": "udp" if t == "dns" else "tcp",
            "saddr": None, "sport": None, "v4_mapped": False, "result": "ok", "retval": 0, "allowlisted": False,
        }
    if t == "send" and isinstance(partial.get("payload"), dict) and "text" in partial["payload"]:
        rec["payload"] = {"length": len(str(partial["payload"]["text"])), "truncated": False}
    if t == "dns":
        rec["dns"] = {"qtype": "A"}
    if t == "connection":
        rec["connection"] = {"state": "established"}
    for k, v in partial.items():
        if k in ("type", "time", "agent", "process"):
            continue
        rec[k] = _merge(rec[k], v) if isinstance(v, dict) and isinstance(rec.get(k), dict) else v
    return rec


def _example_process(p: dict) -> dict:
    argv = p.get("argv")
    exe = p.get("exe")
    comm = p.get("comm")
    if comm is None:
        base = (argv[0] if argv else None) or exe or "agent"
        comm = str(base).rpartition("/")[2][:15]
    if exe is None:
        first = argv[0] if argv else comm
        exe = first if "/" in str(first) else f"/usr/bin/{first}"
    if argv is None:
        argv = [comm]
    pid = p.get("pid", 4242)
    ancestry = []
    for i, a in enumerate(p.get("ancestry") or []):
        a = dict(a) if isinstance(a, dict) else {"comm": str(a)}
        a.setdefault("pid", max(1, (pid if isinstance(pid, int) else 4242) - 1 - i))
        a.setdefault("comm", "sh")
        a.setdefault("exe", f"/usr/bin/{a['comm']}")
        ancestry.append(a)
    ppid = p.get("ppid", ancestry[0]["pid"] if ancestry else 1)
    out = {"pid": pid, "ppid": ppid, "uid": 1000, "comm": comm, "exe": exe, "argv": argv, "argv_truncated": False,
           "key": f"{pid}:1000", "ancestry": ancestry}
    out.update({k: v for k, v in p.items() if k not in ("ancestry",)})
    out["ancestry"] = ancestry
    return out


def example_records(rule: Rule, example: Example) -> list[dict]:
    default_type = (rule.all_events or ("exec",))[0]
    return [example_record(r, default_type, i) for i, r in enumerate(example.records)]


def run_examples(rule: Rule) -> list[str]:
    """One line per example that does not hold: file:line: rule id: examples.match[0]: ..."""
    failures = []
    for ex in rule.examples:
        records = example_records(rule, ex)
        enabled, rule.enabled = rule.enabled, True
        try:
            engine = Engine([rule])
        finally:
            rule.enabled = enabled
        fired = [a for rec in records for a in engine.evaluate(rec)]
        if ex.expect and not fired:
            failures.append(f"{ex.where}: rule {rule.id}: examples.{ex.label}: does not match")
        elif not ex.expect and fired:
            failures.append(f"{ex.where}: rule {rule.id}: examples.{ex.label}: matches, but should not")
    return failures
