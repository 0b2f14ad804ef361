"""Alert records (docs/event.schema.json, $defs/alert) and their messages.

An alert is built only from the records that made the match, so the same
records give the same bytes: no wall clock, no random ids.
"""

from __future__ import annotations

import re
from typing import Callable

from ..records import safe_text
from . import fields as F

SEVERITIES = ("info", "low", "medium", "high", "critical")
ACTIONS = ("none", "kill_process", "kill_agent", "freeze_agent")
MITRE = re.compile(r"T\d{4}(\.\d{3})?$")

# %proc.name, %agent.labels.run-id; "%%" is a literal percent sign.
_REF = re.compile(r"%(%|agent\.labels\.[A-Za-z0-9_\-]+|[a-z]+(?:\.[a-z0-9_]+)+)")

Template = Callable[[dict], str]


class TemplateError(ValueError):
    pass


def _text(value) -> str:
    if value is None:
        return "<NA>"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, list):
        return safe_text(" ".join(value).encode("utf-8", "surrogatepass"))
    if isinstance(value, str):
        return safe_text(value.encode("utf-8", "surrogatepass"))
    return str(value)


def compile_template(text: str) -> Template:
    """`output:` text to a function of the last record. An unknown field raises TemplateError."""
    parts: list = []
    pos = 0
    for m in _REF.finditer(text):
        parts.append(text[pos:m.start()])
        name = m.group(1)
        if name == "%":
            parts.append("%")
        else:
            fld = F.field(name)
            if fld is None:
                raise TemplateError(f"unknown field '%{name}'")
            parts.append(fld.get)
        pos = m.end()
    parts.append(text[pos:])
    parts = [p for p in parts if p != ""]
    static = safe_text("".join(p for p in parts if isinstance(p, str)).encode("utf-8", "surrogatepass"))
    if all(isinstance(p, str) for p in parts):
        return lambda _rec: static
    parts = [safe_text(p.encode("utf-8", "surrogatepass")) if isinstance(p, str) else p for p in parts]

    def render(rec: dict) -> str:
        return "".join(p if isinstance(p, str) else _text(p(rec)) for p in parts)

    return render


def alert_record(rule, evidence: list[dict], count: int | None = None, process: dict | None = None,
                 involved: dict | None = None) -> dict:
    """The alert for a rule matched by `evidence` (oldest first; the last completed the match).

    `process` names the culprit when it is not the last record's process (an
    agent or lineage threshold: the processes' common ancestor); the message
    is then filled in with it. `involved` lists those processes.
    """
    last = evidence[-1]
    shown = last
    if process is None:
        process = last.get("process")
    elif process is not last.get("process"):
        shown = dict(last, process=process)
    alert = {
        "kind": "alert",
        "rule": rule.id,
        "title": rule.title,
        "severity": rule.severity,
        "tags": list(rule.tags),
        "mitre": list(rule.mitre),
        "time": last.get("time"),
        "agent": last.get("agent"),
        "process": process,
    }
    network = last.get("network")
    if network is not None:
        alert["network"] = network
    alert["message"] = rule.message(shown)
    alert["action"] = rule.action
    if count is not None:
        alert["count"] = count
    if involved is not None:
        alert["involved"] = involved
    alert["evidence"] = list(evidence)
    return alert
