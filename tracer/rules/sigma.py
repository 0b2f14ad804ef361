"""Sigma rules (SigmaHQ's format) to agentwatch rules, through pySigma.

    import_sigma(paths) -> SigmaImport        .yaml: a rules file; .refusals: (file, title, reason)
    convert_text(text, file) -> SigmaImport   one Sigma file's text (the loader's hook)
    looks_like_sigma(text) -> bool            a top-level `logsource:` and `detection:`

pySigma parses each rule (modifiers, wildcards, `1 of selection_*`, `all of them`, ...) and a
processing pipeline checks the log source and the fields and maps the field names; the backend
below, a pySigma TextQueryBackend, writes agentwatch condition text. Whatever cannot be said in
agentwatch's language with the same meaning is refused, with the reason, instead of being
approximated: docs/rules.md, Sigma, has the tables.

Sigma strings match without regard to case unless `|cased`: `contains` becomes `icontains`;
`startswith`, `endswith`, equality and wildcards become an anchored `(?i)` regex when the value has
letters (agentwatch has no case-insensitive prefix or suffix operator) and the plain operator when
it has none (case cannot matter).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml
from sigma.conditions import ConditionAND, ConditionFieldEqualsValueExpression, ConditionNOT, ConditionOR
from sigma.conversion.base import TextQueryBackend
from sigma.exceptions import SigmaError
from sigma.modifiers import reverse_modifier_mapping
from sigma.processing.conditions import LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import FieldMappingTransformation
from sigma.processing.transformations.base import PreprocessingTransformation
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

from . import fields as F
from .condition import And, Or, Source, parse
from .loader import load_text, looks_like_sigma
from .parser import RulesError

# --------------------------------------------------------------------------
# What agentwatch can take: log sources and fields.

EVENTS = {"process_creation": "exec", "network_connection": "connect"}

INITIATED = "@initiated"  # Initiated: always true of a connect record; handled by the backend

# Sigma field (Sysmon for Linux names) -> agentwatch field, per category.
FIELD_MAP = {
    "process_creation": {
        "Image": "proc.exe",
        "CommandLine": "proc.cmdline",
        "ProcessId": "proc.pid",
        "ParentProcessId": "proc.ppid",
    },
    "network_connection": {
        "Image": "proc.exe",
        "ProcessId": "proc.pid",
        "DestinationIp": "net.daddr",
        "DestinationPort": "net.dport",
        "SourceIp": "net.saddr",
        "SourcePort": "net.sport",
        "Protocol": "net.protocol",
        "Initiated": INITIATED,
    },
}

_SYSMON_ONLY = "a Sysmon field agentwatch does not record"
# Fields Sigma rules use that agentwatch knows it cannot match, and why.
REFUSED_FIELDS = {
    "ParentImage": "no agentwatch field holds the parent's executable path (proc.pname is the parent's comm, "
                   "a name of at most 15 characters; proc.ancestor_exes holds every ancestor's exe, not only "
                   "the parent's)",
    "ParentCommandLine": "agentwatch does not record the parent's command line (ancestry holds pid, comm and exe)",
    "CurrentDirectory": "agentwatch does not record the working directory",
    "User": "a user name; agentwatch records the uid (proc.uid) and does not resolve names",
    "ParentUser": "a user name; agentwatch records the uid (proc.uid) and does not resolve names",
    "DestinationHostname": "connect records carry the address, not a host name (names are in dns records, "
                           "dns.query, a different event: matching the lookup instead of the connection would "
                           "change the rule)",
    "SourceHostname": "connect records carry the address, not a host name",
    "DestinationPortName": "agentwatch records port numbers, not service names",
    "SourcePortName": "agentwatch records port numbers, not service names",
    **{f: _SYSMON_ONLY for f in ("LogonId", "LogonGuid", "ProcessGuid", "ParentProcessGuid", "TerminalSessionId",
                                  "IntegrityLevel", "Hashes", "OriginalFileName", "Product", "Company",
                                  "Description", "FileVersion", "RuleName", "UtcTime", "SourceIsIpv6",
                                  "DestinationIsIpv6")},
}

# Modifiers refused, by pySigma class name, and why. Everything else pySigma knows is converted
# (contains, startswith, endswith, all, re with i/m/s, cidr, cased, exists, windash, neq,
# lt/lte/gt/gte on number fields).
_ENCODING = ("encoding modifiers (base64, base64offset, utf16, utf16le, utf16be, wide) are not imported: "
             "a Linux argv is bytes, usually UTF-8, so a UTF-16 form cannot occur in it, and base64 forms are "
             "left to the rule's author (write the encoded strings as plain |contains values, as SigmaHQ's "
             "Linux rules do)")
REFUSED_MODIFIERS = {
    "SigmaBase64Modifier": _ENCODING,
    "SigmaBase64OffsetModifier": _ENCODING,
    "SigmaWideModifier": _ENCODING,
    "SigmaUTF16Modifier": _ENCODING,
    "SigmaUTF16BEModifier": _ENCODING,
    "SigmaExpandModifier": "|expand names placeholders (site lists) that agentwatch has no values for",
    "SigmaFieldReferenceModifier": "|fieldref compares two fields, and agentwatch has no such operator",
    **{f"SigmaTimestamp{p}Modifier": "time-part modifiers (minute, hour, day, week, month, year): agentwatch "
                                     "conditions have no time-of-day operator"
       for p in ("Minute", "Hour", "Day", "Week", "Month", "Year")},
}

SEVERITY = {"informational": "info", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}
DEFAULT_SEVERITY = "medium"  # a Sigma rule without a level
_MITRE_TAG = re.compile(r"attack\.(t\d{4}(?:\.\d{3})?)$", re.IGNORECASE)
_TACTIC_TAG = re.compile(r"attack\.([a-z][a-z-]*)$")


# --------------------------------------------------------------------------
# What an import gives.


class Refusal(NamedTuple):
    file: str
    title: str
    reason: str
    line: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: sigma rule '{self.title}': {self.reason}"


@dataclass
class SigmaImport:
    rules: list[dict] = field(default_factory=list)  # agentwatch rule items (rule, title, ...), in file order
    refusals: list[Refusal] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # "file:line" of each rule's Sigma document

    @property
    def yaml(self) -> str:
        """The rules as an agentwatch rules file, headed by comments: what was imported, what was refused."""
        head = [f"# Imported from Sigma by agentwatch (pySigma {pysigma_version()}): {len(self.rules)} rule(s), "
                f"{len(self.refusals)} refused.",
                "# SigmaHQ rules are under the Detection Rule License 1.1: keep each rule's attribution."]
        head += [f"#   refused: {r}" for r in self.refusals]
        return "\n".join(head) + "\n" + dump_rules(self.rules)

    def extend(self, other: "SigmaImport") -> None:
        self.rules.extend(other.rules)
        self.refusals.extend(other.refusals)
        self.sources.extend(other.sources)


def pysigma_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("pysigma")
    except PackageNotFoundError:
        return "not installed"


def sigma_files(paths: list[str | Path]) -> list[Path]:
    """Files to import: a directory gives every *.yml / *.yaml under it (recursively) that looks like Sigma."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.suffix in (".yml", ".yaml") and f.is_file())
            out.extend(f for f in found if looks_like_sigma(_read(f)))
        elif path.is_file():
            out.append(path)
        else:
            raise RulesError(f"{p}: no such Sigma file or directory")
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def import_sigma(paths: list[str | Path]) -> SigmaImport:
    """Every Sigma rule under paths, converted or refused. RulesError only for a path that cannot be read."""
    out = SigmaImport()
    used: set[str] = set()
    for path in sigma_files(paths):
        out.extend(convert_text(_read(path), str(path), used))
    return out


# --------------------------------------------------------------------------
# One file.


def _documents(text: str, file: str):
    """(line, data) per YAML document; a YAML error ends the file with (line, RulesError)."""
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node.start_mark.line + 1, loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        yield (mark.line + 1 if mark else 1), RulesError(f"YAML: {problem}")
    finally:
        loader.dispose()


def convert_text(text: str, file: str = "<sigma>", used_ids: set[str] | None = None) -> SigmaImport:
    """The agentwatch rules for one Sigma file's text (one or more YAML documents), and its refusals."""
    used = set() if used_ids is None else used_ids
    out = SigmaImport()
    for line, data in _documents(text, file):
        title = data.get("title") if isinstance(data, dict) else None
        title = title if isinstance(title, str) and title.strip() else "<untitled>"
        if isinstance(data, RulesError):
            out.refusals.append(Refusal(file, title, str(data), line))
            break
        if data is None:
            continue
        try:
            item = _convert_document(data, file)
        except _Refused as exc:
            out.refusals.append(Refusal(file, title, " ".join(exc.reason.split()), line))
            continue
        rid = item["rule"]
        if rid in used:
            sid = str(data.get("id") or "")[:8].lower()
            rid = f"{rid}-{sid}" if re.fullmatch(r"[0-9a-f]{8}", sid) else rid
            if rid in used:
                out.refusals.append(Refusal(file, title, f"a rule with the id '{rid}' was imported already", line))
                continue
            item["rule"] = rid
        used.add(rid)
        out.rules.append(item)
        out.sources.append(f"{file}:{line}")
    return out


class _Refused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _RefusedSigma(SigmaError):
    """A refusal raised inside pySigma's machinery (pipeline or backend): convert_rule passes it on."""


def _convert_document(data, file: str) -> dict:
    if not isinstance(data, dict):
        raise _Refused("not a Sigma rule (a YAML mapping is expected)")
    if "correlation" in data:
        raise _Refused("Sigma correlation rules are not imported (write an agentwatch sequence or threshold rule)")
    if "filter" in data and "detection" not in data:
        raise _Refused("Sigma filters (meta filters) are not imported")
    if "logsource" not in data or "detection" not in data:
        raise _Refused("not a Sigma rule (no logsource and detection)")
    try:
        rule = SigmaRule.from_dict(data)
        backend = AgentwatchBackend(processing_pipeline=_pipeline())
        queries = backend.convert_rule(rule)
    except _RefusedSigma as exc:
        raise _Refused(exc.args[0]) from None
    except SigmaError as exc:
        raise _Refused(f"pySigma: {exc.args[0] if exc.args else exc}") from None
    except Exception as exc:  # noqa: BLE001  (pySigma on what it cannot do: one rule, not the whole import)
        raise _Refused(f"pySigma: {type(exc).__name__}: {exc}") from None
    if not queries:
        raise _Refused("pySigma gave no condition")
    category = rule.logsource.category
    condition = queries[0] if len(queries) == 1 else " or ".join(f"({q})" for q in queries)
    if category == "process_creation":
        # A failed exec leaves the process as it was: it is not a process creation.
        condition = f"exec.result = ok and {_grouped(condition)}"
    item = _item(data, rule, category, condition)
    _check_loads(item, file)
    return item


def _grouped(condition: str) -> str:
    """condition, in parentheses when its top level is an `or`."""
    tree = parse(Source("<sigma>", 1, condition, "sigma"))
    return f"({condition})" if isinstance(tree, Or) else condition


def _check_loads(item: dict, file: str) -> None:
    """The loader compiles the rule (a Sigma regex Python's re cannot take, ...) or it is refused."""
    try:
        load_text(dump_rules([item]), file, check_examples=False)
    except RulesError as exc:
        message = str(exc)
        owner = f"rule {item['rule']}: "
        raise _Refused("agentwatch does not take the converted rule: " + message.split(owner, 1)[-1]) from None


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def _item(data: dict, rule, category: str, condition: str) -> dict:
    title = " ".join(str(data.get("title") or "").split()) or "Sigma rule"
    rid = "sigma-" + (_slug(title) or _slug(str(data.get("id") or "")) or "rule")
    level = str(data.get("level") or "").lower()
    severity = SEVERITY.get(level, DEFAULT_SEVERITY)
    tags = ["sigma"]
    for t in data.get("tags") or []:
        t = str(t).strip()
        m = _MITRE_TAG.match(t)
        if m:
            tags.append(m.group(1).upper())
        elif _TACTIC_TAG.match(t):  # attack.command-and-control; attack.s0508 (software) stays as it is
            tags.append(t.split(".", 1)[1])
        elif t:
            tags.append(t)
    tags = list(dict.fromkeys(tags))
    # Detection Rule License 1.1: a derived rule keeps the author and the source.
    desc = " ".join(str(data.get("description") or "").split())
    if desc and desc[-1] not in ".!?":
        desc += "."
    author = " ".join(str(data.get("author") or "").split())
    credit = f"Sigma rule {data.get('id') or title}" + (f" by {author}" if author else "") + \
        " (SigmaHQ, Detection Rule License 1.1), imported by agentwatch."
    fps = data.get("falsepositives")
    if isinstance(fps, list) and fps:
        credit += " False positives: " + "; ".join(" ".join(str(f).split()) for f in fps)
        credit += "" if credit[-1] in ".!?" else "."
    safe_title = title.replace("%", "%%")
    if category == "process_creation":
        output = f"{safe_title}: %proc.exe (pid %proc.pid) ran %proc.cmdline"
    else:
        output = f"{safe_title}: %proc.exe (pid %proc.pid) connects to %net.daddr port %net.dport"
    return {
        "rule": rid,
        "title": title,
        "description": f"{desc} {credit}".strip(),
        "severity": severity,
        "tags": tags,
        "events": [EVENTS[category]],
        "condition": _wrap(condition),
        "output": output,
    }


# --------------------------------------------------------------------------
# YAML out.


def _wrap(condition: str, width: int = 96) -> str:
    """Lines of at most `width` where possible, broken at spaces outside quoted values.

    Outside quotes a line break is only a space to the condition parser, so the text means the
    same; it is written as a literal block (`|-`), which keeps it exactly.
    """
    if len(condition) <= width:
        return condition
    words, quote, word = [], None, []
    chars = iter(condition)
    for c in chars:
        if quote is None and c == " ":
            words.append("".join(word))
            word = []
            continue
        word.append(c)
        if quote is not None and c == "\\":
            word.append(next(chars, ""))
        elif quote is not None and c == quote:
            quote = None
        elif quote is None and c in "\"'":
            quote = c
    words.append("".join(word))
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= width:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return "\n".join(lines)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str):
    style = "|" if "\n" in s else ">" if len(s) > 100 else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str)


def dump_rules(rules: list[dict]) -> str:
    """A rules file; folded long strings are checked to read back the same, else written on one line."""
    if not rules:
        return "[]\n"
    text = yaml.dump(rules, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100,
                     default_flow_style=None)
    if yaml.safe_load(text) != rules:
        text = yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, width=float("inf"))
    return text


# --------------------------------------------------------------------------
# The processing pipeline: log source, fields, field names.


class _CheckLogsource(PreprocessingTransformation):
    """Refuse a rule of a log source agentwatch has no records for, naming it."""

    def apply(self, rule) -> None:
        super().apply(rule)
        ls = rule.logsource
        if ls.product == "linux" and ls.category in EVENTS and ls.service is None:
            return
        given = ", ".join(f"{k}: {v}" for k, v in (("product", ls.product), ("category", ls.category),
                                                   ("service", ls.service)) if v is not None) or "none"
        raise _RefusedSigma(f"log source ({given}) is not imported: agentwatch takes product linux with category "
                            "process_creation (exec records) or network_connection (connect records)")


class _CheckFields(PreprocessingTransformation):
    """Refuse a rule with a field or modifier agentwatch cannot match, naming every one."""

    def apply(self, rule) -> None:
        super().apply(rule)
        category = rule.logsource.category
        known = FIELD_MAP[category]
        problems: list[str] = []
        for name, detection in rule.detection.detections.items():
            for item in _detection_items(detection):
                fld = item.field
                if fld is None:
                    problems.append(f"{name}: a keyword search (values with no field) has no agentwatch equivalent")
                elif fld in REFUSED_FIELDS:
                    problems.append(f"field '{fld}': {REFUSED_FIELDS[fld]}")
                elif fld not in known:
                    problems.append(f"unknown field '{fld}' (agentwatch maps, for {category}: {', '.join(known)})")
                for mod in item.modifiers:
                    reason = REFUSED_MODIFIERS.get(mod.__name__)
                    if reason:
                        problems.append(f"{fld or name}|{reverse_modifier_mapping.get(mod.__name__, mod.__name__)}: "
                                        f"{reason}")
        if problems:
            raise _RefusedSigma("; ".join(dict.fromkeys(problems)))


def _detection_items(detection):
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            yield from _detection_items(item)
        elif isinstance(item, SigmaDetectionItem):
            yield item


def _pipeline() -> ProcessingPipeline:
    """Check the log source, then the fields and modifiers, then map the field names."""
    items = [
        ProcessingItem(identifier="agentwatch_logsource", transformation=_CheckLogsource()),
        ProcessingItem(identifier="agentwatch_fields", transformation=_CheckFields()),
    ]
    for category, mapping in FIELD_MAP.items():
        items.append(ProcessingItem(
            identifier=f"agentwatch_{category}_fields",
            transformation=FieldMappingTransformation(dict(mapping)),
            rule_conditions=[LogsourceCondition(category=category, product="linux")],
        ))
    return ProcessingPipeline(name="agentwatch", priority=20, items=items)


# --------------------------------------------------------------------------
# The backend: pySigma's condition tree to agentwatch condition text.

_RE_SPECIAL = set(".^$*+?{}[]\\|()")


def _re_escape(s: str) -> str:
    return "".join("\\" + c if c in _RE_SPECIAL else c for c in s)


def _q(s: str) -> str:
    """A quoted agentwatch value: inside quotes only \\\\, \\" and \\' are escapes."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _has_case(s: str) -> bool:
    return any(c.lower() != c or c.upper() != c for c in s)


@dataclass
class _Term:
    field: str
    op: str  # "=", "startswith", "endswith", "contains", "icontains", "regex", "cidr", "<", ...
    value: str  # written as in a condition (quoted or a number)

    def text(self) -> str:
        return f"{self.field} {self.op} {self.value}"


_LIST_OPS = {"=": "in", "contains": "contains", "icontains": "icontains", "startswith": "startswith",
             "endswith": "endswith", "regex": "regex", "cidr": "cidr"}


def _join_terms(terms: list) -> list[str]:
    """Terms ORed together: those of one field and operator become one list comparison."""
    groups: dict[tuple[str, str], list[str]] = {}
    order: list = []
    for t in terms:
        if isinstance(t, _Term) and t.op in _LIST_OPS:
            key = (t.field, t.op)
            if key not in groups:
                groups[key] = []
                order.append(key)
            if t.value not in groups[key]:
                groups[key].append(t.value)
        else:
            order.append(t)
    out = []
    for k in order:
        if isinstance(k, tuple):
            fld, op = k
            values = groups[k]
            out.append(f"{fld} {op} {values[0]}" if len(values) == 1 else
                       f"{fld} {_LIST_OPS[op]} ({', '.join(values)})")
        else:
            out.append(k.text() if isinstance(k, _Term) else k)
    return out


_SIGMA_NAME = {aw: name for m in FIELD_MAP.values() for name, aw in m.items()}


def _who(name: str) -> str:
    """A mapped field as the Sigma rule wrote it, and what it became: CommandLine (proc.cmdline)."""
    return f"{_SIGMA_NAME[name]} ({name})" if name in _SIGMA_NAME else name


_COMPARE_OPS = {CompareOperators.LT: "<", CompareOperators.LTE: "<=", CompareOperators.GT: ">",
                CompareOperators.GTE: ">=", CompareOperators.NEQ: "!="}
_WILD_MULTI, _WILD_SINGLE = SpecialChars.WILDCARD_MULTI, SpecialChars.WILDCARD_SINGLE


class AgentwatchBackend(TextQueryBackend):
    """pySigma backend: one agentwatch condition per Sigma condition."""

    name = "agentwatch"
    formats = {"default": "agentwatch rule condition"}
    requires_pipeline = True
    precedence = (ConditionNOT, ConditionAND, ConditionOR)  # agentwatch's, as Sigma's
    group_expression = "({expr})"
    token_separator = " "
    or_token = "or"
    and_token = "and"
    not_token = "not"
    eq_token = " = "
    str_quote = '"'
    escape_char = "\\"
    field_exists_expression = "{field} exists"
    field_not_exists_expression = "not {field} exists"

    # -- boolean structure ---------------------------------------------

    def convert_condition_or(self, cond, state):
        """Values of one field and operator become one list comparison: f icontains (a, b)."""
        terms: list = []
        for arg in cond.args:
            if isinstance(arg, ConditionFieldEqualsValueExpression):
                terms.extend(self._terms(arg))
            elif self.compare_precedence(cond, arg):
                terms.append(self.convert_condition(arg, state))
            else:
                terms.append(self.convert_condition_group(arg, state))
        return " or ".join(_join_terms([t for t in terms if t is not None]))

    def convert_condition_group(self, cond, state):
        """Parentheses only where agentwatch needs them: around an `and` or an `or`."""
        expr = self.convert_condition(cond, state)
        return f"({expr})" if isinstance(parse(Source("<sigma>", 1, expr, "sigma")), (And, Or)) else expr

    def convert_condition_not(self, cond, state):
        arg = cond.args[0]
        if isinstance(arg, ConditionFieldEqualsValueExpression) and len(self._terms(arg)) > 1:
            return "not " + self.convert_condition_group(arg, state)
        return super().convert_condition_not(cond, state)

    def convert_condition_field_eq_val(self, cond, state):
        out = _join_terms(self._terms(cond))
        return out[0] if len(out) == 1 else " or ".join(out)

    def convert_condition_val(self, cond, state):
        raise _RefusedSigma("a keyword search (values with no field) has no agentwatch equivalent")

    # -- one field, one value ------------------------------------------

    def _terms(self, cond) -> list:
        value = cond.value
        if isinstance(value, SigmaExpansion):  # windash and the like: any of the forms
            return [t for v in value.values for t in self._terms(ConditionFieldEqualsValueExpression(
                cond.field, v))]
        return [self._term(cond.field, value)]

    def _term(self, name: str, value):
        if name == INITIATED:
            return self._initiated(value)
        fld = F.field(name)
        if fld is None:  # the pipeline maps only to fields of the table
            raise _RefusedSigma(f"unknown agentwatch field '{name}'")
        t = fld.type
        if isinstance(value, SigmaExists):
            return f"{name} exists" if value.exists else f"not {name} exists"
        if isinstance(value, SigmaNull):
            return f"not {name} exists"
        if isinstance(value, SigmaCompareExpression):
            if t not in (F.INT, F.FLOAT):
                raise _RefusedSigma(f"{_who(name)}: a numeric comparison on a {t} field")
            return _Term(name, _COMPARE_OPS[value.op], str(value.number.number))
        if isinstance(value, SigmaCIDRExpression):
            if t != F.ADDR:
                raise _RefusedSigma(f"{_who(name)}: |cidr on a field that is not an address")
            return _Term(name, "cidr", _q(str(value.network)))
        if isinstance(value, SigmaRegularExpression):
            return self._regex(name, t, value)
        if isinstance(value, SigmaBool):
            raise _RefusedSigma(f"{_who(name)}: a boolean value ({str(value.boolean).lower()}) for a {t} field")
        if isinstance(value, SigmaNumber):
            if t in (F.INT, F.FLOAT):
                return _Term(name, "=", str(value.number))
            return _Term(name, "=", _q(str(value.number)))
        if isinstance(value, SigmaString):
            return self._string(name, t, value, cased=isinstance(value, SigmaCasedString))
        raise _RefusedSigma(f"{_who(name)}: a {type(value).__name__} value is not imported")

    def _initiated(self, value):
        truth = value.boolean if isinstance(value, SigmaBool) else \
            str(value).lower() if isinstance(value, SigmaString) else None
        if truth in (True, "true"):
            return "evt.type = connect"  # every connect record is an outgoing connection
        if truth in (False, "false"):
            raise _RefusedSigma("field 'Initiated': agentwatch records outgoing connections only (connect "
                                "records); Initiated: 'false' (an accepted connection) never holds")
        raise _RefusedSigma(f"field 'Initiated': value {value} is not true or false")

    def _regex(self, name: str, t: str, value):
        if t not in (F.STR, F.ADDR):
            raise _RefusedSigma(f"{_who(name)}: |re on a {t} field")
        flags = "".join(c for flag, c in (
            (SigmaRegularExpressionFlag.IGNORECASE, "i"), (SigmaRegularExpressionFlag.MULTILINE, "m"),
            (SigmaRegularExpressionFlag.DOTALL, "s")) if flag in value.flags)
        pattern = value.regexp.original if hasattr(value.regexp, "original") else str(value.regexp)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _RefusedSigma(f"{_who(name)}|re: Python's re cannot take {pattern!r}: {exc}") from None
        if flags and re.match(r"\(\?[a-zA-Z]+\)", pattern) is None:
            pattern = f"(?{flags}){pattern}"
        elif flags:
            raise _RefusedSigma(f"{_who(name)}|re: the regex sets its own flags and the rule adds {flags}")
        return _Term(name, "regex", _q(pattern))

    def _string(self, name: str, t: str, s, cased: bool):
        parts = list(s.s)
        if any(isinstance(p, Placeholder) for p in parts):
            raise _RefusedSigma(f"{_who(name)}: a placeholder (%name%) has no value in agentwatch")
        lead = bool(parts) and parts[0] is _WILD_MULTI
        trail = len(parts) > 1 and parts[-1] is _WILD_MULTI
        core = parts[int(lead):len(parts) - int(trail)]
        if not core and (lead or trail):  # '*': any value
            return f"{name} exists"
        plain = all(isinstance(p, str) for p in core)
        text = "".join(p for p in core if isinstance(p, str))
        if t in (F.INT, F.FLOAT):
            if plain and not lead and not trail and re.fullmatch(r"-?\d+", text.strip()):
                return _Term(name, "=", str(int(text)))
            raise _RefusedSigma(f"{_who(name)}: {s.original!r} is a text match, and {name} is a number")
        if t == F.ADDR and plain and not lead and not trail:
            try:  # records hold addresses as inet_ntop writes them: lowercase, compressed
                return _Term(name, "=", _q(str(ipaddress.ip_address(text))))
            except ValueError:
                pass
        if t == F.LIST or t not in (F.STR, F.ADDR):
            raise _RefusedSigma(f"{_who(name)}: a text match on a {t} field")
        caseless = not cased and _has_case(text)
        if plain:
            if lead and trail:
                return _Term(name, "icontains" if caseless else "contains", _q(text))
            if not caseless:
                op = "endswith" if lead else "startswith" if trail else "="
                return _Term(name, op, _q(text))
        # A case-insensitive prefix, suffix or equality, or wildcards inside the value: a regex
        # anchored where the value is.
        body = []
        for p in core:
            body.append(".*" if p is _WILD_MULTI else "." if p is _WILD_SINGLE else _re_escape(p))
        flags = ("i" if caseless else "") + ("s" if not plain else "")
        pattern = (f"(?{flags})" if flags else "") + ("" if lead else "^") + "".join(body) + \
            ("" if trail else "\\Z")
        return _Term(name, "regex", _q(pattern))
