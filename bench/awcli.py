"""The agentwatch command line as the benchmark uses it.

The CLI is growing (rules, --events, replay), so what it offers is read from
its --help at start rather than assumed; a missing feature turns a figure
into "n/a" with the reason, never into an error.
"""

from __future__ import annotations

import calendar
import os
import shlex
import subprocess
import time
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_time_ns(text: str) -> int:
    """RFC 3339 UTC with nanoseconds ('2026-11-28T02:57:16.692542075Z') to ns since the epoch."""
    base, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


class Agentwatch:
    def __init__(self) -> None:
        # AGENTWATCH overrides the command (e.g. to benchmark another checkout).
        override = os.environ.get("AGENTWATCH")
        self.cmd = shlex.split(override) if override else [str(ROOT / ".venv" / "bin" / "agentwatch")]

    def _help(self, *sub: str) -> str:
        proc = subprocess.run([*self.cmd, *sub, "--help"], capture_output=True, text=True, timeout=60)
        return proc.stdout if proc.returncode == 0 else ""

    @cached_property
    def run_help(self) -> str:
        return self._help("run")

    @cached_property
    def main_help(self) -> str:
        return self._help()

    @property
    def usable(self) -> bool:
        return bool(self.run_help)

    @property
    def has_rules(self) -> bool:
        return "--rules" in self.run_help

    @property
    def has_events_flag(self) -> bool:
        return "--events" in self.run_help

    @property
    def has_replay(self) -> bool:
        return any(line.split()[:1] == ["replay"] for line in self.main_help.splitlines())

    def version(self) -> str:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "tracer", "bpf", "rules"],
                               capture_output=True, text=True)
        return rev.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")

    def run(self, workload: list[str], output: str | None = "/dev/null", events: bool = False,
            rules: list[str] | None = None) -> list[str]:
        """`agentwatch run` around a workload; output None is stdout; events=True asks
        for every event record; rules replace the default rules (pass them too to keep them)."""
        cmd = [*self.cmd, "run", "--format", "json"]
        if output is not None:
            cmd += ["--output", output]
        if events and self.has_events_flag:
            cmd.append("--events")
        for path in rules or []:
            if self.has_rules:
                cmd += ["--rules", path]
        return [*cmd, "--", *workload]

    def watch_all(self, output: str, events: bool = False) -> list[str]:
        cmd = [*self.cmd, "watch", "--all", "--format", "json", "--output", output]
        if events and self.has_events_flag:
            cmd.append("--events")
        return cmd

    def replay(self, path: str) -> list[str]:
        return [*self.cmd, "replay", path]
