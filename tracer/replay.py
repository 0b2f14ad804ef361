"""Rules over recorded JSON lines (`agentwatch run --events -o FILE`), as the live run saw them.

The engine takes its time from the records, so the same file always gives
the same alerts, byte for byte.
"""

from __future__ import annotations

import gc
from typing import BinaryIO

import orjson

from .output import Writer
from .rules.fields import RECORD_TYPES

# How the JSON writer starts an event: {"kind":"event","type":"exec",... Used
# only to skip, unparsed, records no rule reads; anything else is parsed.
_EVENT_HEAD = b'{"kind":"event","type":"'
_STATUS_HEAD = b'{"kind":"status",'
_ALERT_HEAD = b'{"kind":"alert",'
# Parsed records are acyclic and freed by reference counting; the cyclic
# collector's passes over young objects only cost time here.
_GC_THRESHOLD = 100_000


class ReplayError(Exception):
    """A line that is not a record: one line, NAME:LINE: what is wrong."""


def replay(stream: BinaryIO, name: str, engine, writer: Writer, show_events: bool) -> int:
    """Feed each record of `stream` to the engine and write its alerts; return the records read.

    Like a live run, lost events are written with or without `show_events`,
    other records only with it. Alerts in the input (a recording made with
    rules on) are skipped: they are rebuilt from the records.
    """
    skip = {t.encode() for t in RECORD_TYPES if t not in engine.types and t not in ("lost", "status")}
    skip_status = "status" not in engine.types
    count = 0
    threshold = gc.get_threshold()
    gc.set_threshold(_GC_THRESHOLD, *threshold[1:])
    try:
        for lineno, line in enumerate(stream, 1):
            if not show_events:
                if line.startswith(_EVENT_HEAD):
                    if line[24:line.find(b'"', 24, 48)] in skip:
                        count += 1
                        continue
                elif line.startswith(_ALERT_HEAD):
                    continue
                elif skip_status and line.startswith(_STATUS_HEAD):
                    count += 1
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
    finally:
        gc.set_threshold(*threshold)
    writer.flush()
    return count
