"""Episodes of a sandbox: which labels were in force at a kernel time.

A sandbox lives through many episodes. A boundary is placed at the kernel
time (CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns) at which the daemon
took the request, and a record belongs to the episode in force at *its*
kernel time, not at the time it happened to be read: a connect made just
before `begin` and read just after it stays in the old episode.

The timeline keeps the last KEEP episodes, enough for records that arrive
late (a connection closing, a GPU counter read) to find theirs.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

KEEP = 64
ALERTS_KEPT = 1000  # per episode, for the `end` reply; more are counted
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


class EpisodeError(ValueError):
    pass


def check_id(episode_id: str) -> str:
    if not isinstance(episode_id, str) or not _ID.match(episode_id):
        raise EpisodeError("an episode id is 1-128 letters, digits and _.:@- (starting with a letter or digit)")
    return episode_id


@dataclass
class Episode:
    id: str
    labels: dict[str, str]
    begin_ns: int
    end_ns: int | None = None
    alerts: list[dict] = field(default_factory=list)
    alert_count: int = 0
    records: int = 0

    def as_json(self) -> dict:
        return {"id": self.id, "labels": self.labels}

    def summary(self, clock=None) -> dict:
        out = {"id": self.id, "labels": self.labels, "alerts": self.alert_count, "records": self.records}
        if clock is not None:
            out["began"] = clock.rfc3339(self.begin_ns)
            out["ended"] = clock.rfc3339(self.end_ns) if self.end_ns is not None else None
        return out

    def add_alert(self, alert: dict) -> None:
        self.alert_count += 1
        if len(self.alerts) < ALERTS_KEPT:
            self.alerts.append(alert)

    def state(self) -> dict:
        return {"id": self.id, "labels": self.labels, "begin_ns": self.begin_ns, "end_ns": self.end_ns,
                "alerts": self.alert_count, "records": self.records}


class Timeline:
    """A sandbox's episodes in time order; at most one is open (end_ns None), the newest."""

    def __init__(self) -> None:
        self._episodes: list[Episode] = []
        self._begins: list[int] = []
        self.count = 0  # episodes begun, ever (ids default to the sandbox name and this)

    @property
    def current(self) -> Episode | None:
        if self._episodes and self._episodes[-1].end_ns is None:
            return self._episodes[-1]
        return None

    def begin(self, episode_id: str, labels: dict[str, str], at_ns: int) -> tuple[Episode, Episode | None]:
        """A new episode from at_ns; the one in force (if any) ends there. (new, ended)."""
        if self._episodes and at_ns < self._episodes[-1].begin_ns:
            raise EpisodeError("an episode cannot begin before the previous one")
        if any(e.id == episode_id for e in self._episodes):
            raise EpisodeError(f"episode {episode_id!r} was already used in this sandbox")
        ended = self.end(at_ns)
        ep = Episode(episode_id, dict(labels), at_ns)
        self._episodes.append(ep)
        self._begins.append(at_ns)
        self.count += 1
        if len(self._episodes) > KEEP:
            del self._episodes[0], self._begins[0]
        return ep, ended

    def end(self, at_ns: int) -> Episode | None:
        ep = self.current
        if ep is not None:
            ep.end_ns = max(at_ns, ep.begin_ns)
        return ep

    def at(self, ktime_ns: int | None) -> Episode | None:
        """The episode in force at a kernel time (None: now); None between episodes."""
        if ktime_ns is None:
            return self.current
        i = bisect.bisect_right(self._begins, ktime_ns) - 1
        if i < 0:
            return None
        ep = self._episodes[i]
        if ep.end_ns is not None and ktime_ns >= ep.end_ns:
            return None
        return ep

    def find(self, episode_id: str) -> Episode | None:
        for ep in reversed(self._episodes):
            if ep.id == episode_id:
                return ep
        return None

    def restore(self, saved: dict, count: int) -> None:
        """The episode in force when the daemon last stopped (state file), kept as it was."""
        ep = Episode(saved["id"], dict(saved["labels"]), int(saved["begin_ns"]), saved.get("end_ns"),
                     alert_count=int(saved.get("alerts", 0)), records=int(saved.get("records", 0)))
        self._episodes, self._begins = [ep], [ep.begin_ns]
        self.count = count
