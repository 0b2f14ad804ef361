"""Rules over recorded JSON lines (`agentwatch run --events -o FILE`), as the live run saw them.

The engine takes its time from the records, so the same file always gives
the same alerts, byte for byte.
"""

from __future__ import annotations

import re
from typing import BinaryIO

import orjson

from .output import Writer

# How the JSON writer starts a record: {"kind":"event","type":"exec",... Used
# only to skip, unparsed, records no rule looks at; anything else is parsed.
_HEAD = re.compile(rb'\{"kind":"(event|status|alert)"(?:,"type":"([a-z_]+)")?')


class ReplayError(Exception):
    """A line that is not a record: one line, NAME:LINE: what is wrong."""


def replay(stream: BinaryIO, name: str, engine, writer: Writer, show_events: bool) -> int:
    """Feed each record of `stream` to the engine and write its alerts; return the records read.

    Like a live run, lost events are written with or without `show_events`,
    other records only with it. Alerts in the input (a recording made with
    rules on) are skipped: they are rebuilt from the records.
    """
    wanted = {t.encode() for t in engine.types} | {b"lost"}
    status_ruled = "status" in engine.types
    count = 0
    for lineno, line in enumerate(stream, 1):
        if not show_events:
            head = _HEAD.match(line)
            if head is not None:
                kind, t = head.groups()
                if kind == b"alert" or (kind == b"event" and t is not None and t not in wanted) or (
                    kind == b"status" and not status_ruled
                ):
                    count += kind != b"alert"
                    continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if not line.strip():
                continue
            raise ReplayError(f"{name}:{lineno}: not a JSON record ({exc})") from None
        if rec.__class__ is not dict:
            raise ReplayError(f"{name}:{lineno}: not a JSON object")
        kind = rec.get("kind")
        if kind == "alert":
            continue
        count += 1
        if show_events or (kind == "event" and rec.get("type") == "lost"):
            writer.write(rec)
        try:
            alerts = engine.evaluate(rec)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise ReplayError(f"{name}:{lineno}: cannot evaluate this record: {exc}") from None
        for alert in alerts:
            writer.write(alert)
    writer.flush()
    return count
