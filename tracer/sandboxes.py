"""Which cgroups are sandboxes: path patterns, the runtime a path belongs to, and the scan at start.

A sandbox is a cgroup of the v2 hierarchy whose path (below the mount, as
/proc/PID/cgroup writes it) matches a pattern of the daemon's config:

    system.slice/docker-*.scope          Docker, systemd cgroup driver
    docker/*                             Docker, cgroupfs driver
    kubepods*/**/cri-containerd-*.scope  containerd / Kubernetes pods
    agentwatch.slice/*                   sandboxes a harness makes itself
    system.slice/rollout@*.service       systemd units

A component is a shell glob (fnmatch: `*`, `?`, `[...]`, never crossing
"/"); `**` stands for any number of components. The outermost match wins:
cgroups below a sandbox belong to it (the kernel's membership climbs the
ancestors, bpf/common.h) and are never sandboxes of their own.

A cgroup that is not a sandbox but could hold one further down (system.slice,
kubepods.slice/...) is a *parent*: the kernel attributes its new children at
birth (bpf/cgroup.bpf.c), so a container's first exec is seen even before
the daemon has read the mkdir. Only parents are walked at start, never the
whole hierarchy. Nothing here needs BCC or root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from .cgroups import PARENT

RUNTIMES = ("docker", "kubernetes", "systemd", "cgroup")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DOCKER = (re.compile(r"^docker-([0-9a-f]{64})\.scope$"), re.compile(r"^([0-9a-f]{64})$"))
_CRI = re.compile(r"^(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")
_UNIT = re.compile(r"^(.+)\.(service|scope|slice)$")


class PatternError(ValueError):
    pass


def components(path: str) -> tuple[str, ...]:
    """A cgroup path ("/a/b", "a/b", "/") as its components."""
    return tuple(c for c in path.strip("/").split("/") if c)


@dataclass(frozen=True)
class Pattern:
    text: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        parts = components(text)
        if not parts:
            raise PatternError("a pattern names at least one component (not the root)")
        for p in parts:
            if p in (".", ".."):
                raise PatternError(f"component {p!r} is not allowed")
            if "**" in p and p != "**":
                raise PatternError(f"'**' must be a whole component, not {p!r}")
        if parts[-1] == "**":
            raise PatternError("a pattern cannot end in '**' (it would match every cgroup below)")
        return cls(text, parts)

    def matches(self, comps: tuple[str, ...]) -> bool:
        return _match(self.parts, 0, comps, 0, prefix=False)

    def may_contain(self, comps: tuple[str, ...]) -> bool:
        """Whether a cgroup below comps could match (comps is a proper prefix of a match)."""
        return _match(self.parts, 0, comps, 0, prefix=True)


def _match(pat: tuple[str, ...], i: int, comps: tuple[str, ...], j: int, prefix: bool) -> bool:
    if j == len(comps):
        if prefix:
            return i < len(pat)
        return all(p == "**" for p in pat[i:])
    if i == len(pat):
        return False
    if pat[i] == "**":
        return _match(pat, i + 1, comps, j, prefix) or _match(pat, i, comps, j + 1, prefix)
    return fnmatchcase(comps[j], pat[i]) and _match(pat, i + 1, comps, j + 1, prefix)


RUN_CONTAIN_CGROUPS = Pattern.parse(f"{PARENT}/agent-*")


@dataclass(frozen=True)
class Identity:
    """What the path says about a sandbox: its runtime, container id, pod uid, a default name."""

    runtime: str
    name: str
    container_id: str | None = None
    pod_uid: str | None = None

    def as_json(self) -> dict:
        out = {"runtime": self.runtime}
        if self.container_id:
            out["container_id"] = self.container_id
        if self.pod_uid:
            out["pod_uid"] = self.pod_uid
        return out


def identify(path: str, runtime: str | None = None) -> Identity:
    """Runtime, ids and a name from a sandbox's cgroup path alone (no runtime is asked)."""
    comps = components(path)
    last = comps[-1] if comps else "/"
    pod = None
    for c in comps:
        m = _POD.search(c)
        if m:
            pod = m.group(1).replace("_", "-")
    cri = _CRI.match(last)
    if pod is not None and (cri or _HEX64.fullmatch(last)):
        cid = cri.group(1) if cri else last
        return Identity(runtime or "kubernetes", f"pod-{pod[:8]}/{cid[:12]}", cid, pod)
    for pattern in _DOCKER:
        m = pattern.match(last)
        if m and (pattern is _DOCKER[0] or (len(comps) >= 2 and comps[-2] == "docker")):
            return Identity(runtime or "docker", f"docker-{m.group(1)[:12]}", m.group(1))
    unit = _UNIT.match(last)
    if unit and (runtime in (None, "systemd")):
        return Identity("systemd", unit.group(1))
    return Identity(runtime or "cgroup", last)


@dataclass(frozen=True)
class SandboxClass:
    """One entry of the config's `sandboxes:` list: which cgroups, and what to do with them."""

    patterns: tuple[Pattern, ...]
    runtime: str | None = None        # None: from the path (identify)
    policy: str | None = None         # egress policy file, attached to each sandbox's cgroup
    on_alert: str = "rule"            # rule | report | kill_process | kill_agent | freeze_agent
    min_severity: str = "high"        # on_alert applies at and above this severity
    labels: dict = field(default_factory=dict)
    dry_run: bool = False
    line: int = 0                     # where it is in the config, for messages

    def matches(self, comps: tuple[str, ...]) -> bool:
        return any(p.matches(comps) for p in self.patterns)

    def may_contain(self, comps: tuple[str, ...]) -> bool:
        return any(p.may_contain(comps) for p in self.patterns)


def classify(path: str, classes: list[SandboxClass]) -> tuple[str | None, SandboxClass | None]:
    """("sandbox", its class), ("parent", None) or (None, None) for a cgroup path; first class wins.

    The cgroups `agentwatch run --contain` makes for itself are never sandboxes: that agentwatch
    watches them, and attaches its policy there alone (a daemon's policy beside it would make
    its attach fail).
    """
    comps = components(path)
    if RUN_CONTAIN_CGROUPS.matches(comps):
        return None, None
    for c in classes:
        if comps and c.matches(comps):
            return "sandbox", c
    if any(c.may_contain(comps) for c in classes):
        return "parent", None
    return None, None


def within(path: str, ancestor: str) -> bool:
    """Whether cgroup path is ancestor or below it."""
    a, p = components(ancestor), components(path)
    return p[: len(a)] == a


@dataclass(frozen=True)
class Found:
    path: str          # "/" + path below the mount
    cgroup_id: int
    klass: SandboxClass | None  # None for a parent


def scan(mount: Path, classes: list[SandboxClass]) -> tuple[list[Found], list[Found]]:
    """The sandboxes and the parents that exist now, walking only parents (never all of the tree)."""
    sandboxes: list[Found] = []
    parents: list[Found] = []
    stack = [("/", mount)]
    while stack:
        rel, real = stack.pop()
        kind, klass = classify(rel, classes) if rel != "/" else ("parent" if any(
            c.may_contain(()) for c in classes) else None, None)
        try:
            ino = os.stat(real).st_ino
        except OSError:
            continue  # removed while we walked
        if kind == "sandbox":
            sandboxes.append(Found(rel, ino, klass))
            continue
        if kind != "parent":
            continue
        parents.append(Found(rel, ino, None))
        try:
            with os.scandir(real) as it:
                children = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for name in sorted(children, reverse=True):
            stack.append((rel.rstrip("/") + "/" + name, real / name))
    sandboxes.sort(key=lambda f: f.path)
    return sandboxes, parents
