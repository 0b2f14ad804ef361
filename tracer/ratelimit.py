"""Alert storms: at most N alerts per (rule, agent) in a window are delivered; the rest are counted.

A scanner can make a threshold rule fire on every probe, a reverse shell can make an exec rule
fire on every command. Past the limit, alerts of that rule for that agent are not written (their
actions are still carried out: the limit is on delivery, not on protection); when the window in
which some were held back ends, one `alerts_suppressed` status record says how many, with the
first and last suppressed alert's time, so that nothing disappears without a trace.

    rate_limit: {count: 100, per: 60}    in a rule: its own limit
    rate_limit: off                      in a rule: never limited (e.g. an egress denial)
    --alert-rate 20/60                   the default for every other rule (run, watch, daemon)
    --alert-rate off                     no limit at all

Windows are fixed and run on the record's time (not the wall clock), so replay gives the same
output as the live run.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field

DEFAULT = (20, 60.0)


class RateError(ValueError):
    pass


def parse_rate(text: str) -> tuple[int, float] | None:
    """"N/SECONDS" or "off" to (N, seconds) or None."""
    if text.strip().lower() in ("off", "none", "0"):
        return None
    count, sep, per = text.partition("/")
    try:
        n, s = int(count), float(per)
    except ValueError:
        n, s = 0, 0.0
    if not sep or n < 1 or s <= 0:
        raise RateError(f"{text!r} is not N/SECONDS (e.g. 20/60) or off")
    return n, s


@dataclass
class _Window:
    start: float
    agent: dict | None
    delivered: int = 0
    suppressed: int = 0
    first: str | None = None
    last: str | None = None


def _seconds(t: str | None) -> float | None:
    """A record's RFC 3339 time to seconds since the epoch (None if it has none)."""
    if not isinstance(t, str) or len(t) < 20:
        return None
    try:
        whole = calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    frac = t[19:-1] if t.endswith("Z") else ""
    return whole + (float("0" + frac) if frac.startswith(".") else 0.0)


@dataclass
class AlertRateLimit:
    """A Writer in front of another: alerts past their (rule, agent) limit are held back and counted."""

    writer: object
    default: tuple[int, float] | None = DEFAULT
    per_rule: dict = field(default_factory=dict)  # rule id -> (count, seconds) | False (off)
    live: bool = True  # flush() closes windows by the wall clock; replay: only by the records' time
    metrics: object | None = None  # tracer.metrics.Metrics
    suppressed_total: int = 0
    _windows: dict = field(default_factory=dict)  # (rule, agent id) -> _Window

    @classmethod
    def for_rules(cls, writer, rules, default: tuple[int, float] | None = DEFAULT, live: bool = True,
                  metrics=None) -> "AlertRateLimit":
        per_rule = {r.id: r.rate_limit for r in rules if r.rate_limit is not None}
        return cls(writer, default, per_rule, live, metrics)

    def _limit(self, rule: str) -> tuple[int, float] | None:
        own = self.per_rule.get(rule)
        if own is False:
            return None
        return own or self.default

    def write(self, record: dict) -> None:
        if record.get("kind") != "alert":
            self.writer.write(record)
            return
        rule = record.get("rule")
        limit = self._limit(rule)
        if limit is None:
            self.writer.write(record)
            return
        count, per = limit
        agent = (record.get("agent") or {}).get("id")
        now = _seconds(record.get("time"))
        key = (rule, agent)
        w = self._windows.get(key)
        if w is not None and now is not None and now >= w.start + per:
            self._close(key, w)
            w = None
        if w is None:
            w = self._windows[key] = _Window(now if now is not None else 0.0, record.get("agent"))
        if w.delivered < count:
            w.delivered += 1
            self.writer.write(record)
            return
        w.suppressed += 1
        self.suppressed_total += 1
        if self.metrics is not None:
            self.metrics.suppressed_alert(rule)
        w.first = w.first or record.get("time")
        w.last = record.get("time")

    def _close(self, key, w: _Window) -> None:
        del self._windows[key]
        if not w.suppressed:
            return
        rule = key[0]
        count, per = self._limit(rule) or (0, 0.0)
        self.writer.write({
            "kind": "status", "status": "alerts_suppressed", "time": w.last, "agent": w.agent,
            "rule": rule, "suppressed": w.suppressed, "delivered": w.delivered, "limit": {"count": count, "per": per},
            "first_suppressed": w.first, "last_suppressed": w.last,
        })

    def expire(self, now_s: float | None) -> None:
        """Close windows that ended by now_s (record time): their summaries are written. None: all."""
        for key, w in list(self._windows.items()):
            limit = self._limit(key[0])
            if now_s is None or limit is None or now_s >= w.start + limit[1]:
                self._close(key, w)

    def flush(self) -> None:
        if self.live and self._windows:
            self.expire(time.time())
        self.writer.flush()

    def finish(self) -> None:
        """At the end of a run: every window's summary now."""
        self.expire(None)
        self.writer.flush()
