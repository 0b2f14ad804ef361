"""Agents as cgroups (v2): find the hierarchy, make an agent's cgroup, move, list, kill, remove.

An agent contained by `agentwatch run --contain` lives in its own cgroup,

    <cgroup2 mount>/agentwatch.slice/agent-<id>

so that the kernel's egress policy (bpf/policy.bpf.c) applies to everything it
starts and membership follows the cgroup id whatever a process does with its
parentage. The v2 hierarchy is found in /proc/mounts: /sys/fs/cgroup on most
distributions, /sys/fs/cgroup/unified on hybrid systems. Nothing here needs
BCC; it is plain file work under cgroupfs.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

MOUNTS = "/proc/mounts"
PARENT = "agentwatch.slice"
_AGENT_NAME = re.compile(r"agent-[A-Za-z0-9_.-]{1,64}$")


class CgroupError(RuntimeError):
    """The cgroup side cannot be set up; the message says why."""


def _unescape_mount(path: str) -> str:
    """/proc/mounts writes a space in a path as \\040 (and tab, newline, backslash likewise)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def find_mount(mounts: str = MOUNTS) -> Path | None:
    """The mount point of the cgroup v2 hierarchy, or None when there is none.

    When it is mounted more than once (a container sees its own), the
    shortest path wins: that is the host's view on hybrid systems too.
    """
    try:
        text = Path(mounts).read_text()
    except OSError:
        return None
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            found.append(_unescape_mount(parts[1]))
    if not found:
        return None
    return Path(min(found, key=len))


def require_mount(mounts: str = MOUNTS) -> Path:
    mount = find_mount(mounts)
    if mount is None:
        raise CgroupError(
            "no cgroup v2 hierarchy is mounted (none in /proc/mounts): "
            "mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with "
            "systemd.unified_cgroup_hierarchy=1"
        )
    return mount


def cgroup_id(path: Path | str) -> int:
    """The kernel's id of a v2 cgroup: its kernfs inode number (what bpf_get_current_cgroup_id returns)."""
    return os.stat(path).st_ino


def cgroup_of(pid: int, mount: Path) -> Path | None:
    """The v2 cgroup a process is in now ("0::/path" of /proc/PID/cgroup), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            rel = line[3:].strip().lstrip("/")
            return mount / rel if rel else mount
    return None


def procs(path: Path | str) -> list[int]:
    """The processes (tgids) in a cgroup itself, not its children."""
    try:
        text = Path(path, "cgroup.procs").read_text()
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def procs_recursive(path: Path | str) -> list[int]:
    """The processes in a cgroup and every cgroup below it."""
    out: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        out.extend(procs(dirpath))
    return out


def populated(path: Path | str) -> bool:
    """Whether any process is in the cgroup or below it (cgroup.events)."""
    try:
        text = Path(path, "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    return bool(procs_recursive(path))


def move(pid: int, path: Path | str) -> None:
    """Move a whole process (all its threads) into the cgroup."""
    try:
        Path(path, "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        raise CgroupError(f"cannot move pid {pid} into {path}: {exc.strerror}") from None


def _signal_all(path: Path | str, protected: set[int]) -> list[int]:
    """SIGKILL every process in the subtree (but never a protected one); the pids signalled."""
    killed = []
    for pid in procs_recursive(path):
        if pid in protected:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def kill_all(path: Path | str, protected: set[int] | None = None) -> list[int]:
    """SIGKILL everything in the cgroup and below; returns the pids that were in it.

    cgroup.kill (Linux 5.14) kills the whole subtree in the kernel, racing no
    fork. It is used only when no protected process (agentwatch, its parent)
    is inside; otherwise, and on older kernels, every pid is signalled.
    """
    protected = protected or set()
    members = procs_recursive(path)
    if not members:
        return []
    kill_file = Path(path, "cgroup.kill")
    if not protected.intersection(members) and kill_file.exists():
        try:
            kill_file.write_text("1\n")
            return members
        except OSError:
            pass
    return _signal_all(path, protected)


def freeze(path: Path | str, frozen: bool = True) -> None:
    """Freeze (or thaw) every process in the cgroup and below through cgroup.freeze (Linux 5.2)."""
    try:
        Path(path, "cgroup.freeze").write_text("1\n" if frozen else "0\n")
    except OSError as exc:
        raise CgroupError(f"cannot {'freeze' if frozen else 'thaw'} {path}: {exc.strerror}") from None


def wait_empty(path: Path | str, timeout: float = 2.0) -> bool:
    """Wait until no process is left in the subtree (killed ones take a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while populated(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def remove(path: Path | str) -> bool:
    """rmdir the cgroup and any children (deepest first); False when one still holds processes."""
    path = Path(path)
    if not path.exists():
        return True
    dirs = sorted((Path(d) for d, _s, _f in os.walk(path)), key=lambda p: len(p.parts), reverse=True)
    for d in dirs:
        for attempt in range(50):  # EBUSY for a moment after the last process is reaped
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == 49:
                    return False
                time.sleep(0.01)
    return not path.exists()


@dataclass
class AgentCgroup:
    """An agent's cgroup: made here (owned, removed when done) or adopted (watch --cgroup)."""

    path: Path
    mount: Path
    owned: bool

    @property
    def id(self) -> int:
        return cgroup_id(self.path)

    @property
    def relative(self) -> str:
        """The path as the kernel names it in cgroup tracepoints: "/" + path below the mount."""
        rel = self.path.relative_to(self.mount).as_posix()
        return "/" if rel == "." else "/" + rel

    def contains(self, kernel_path: str) -> bool:
        """Whether a kernel cgroup path (as in cgroup_attach_task's dst_path) is this cgroup or below it."""
        mine = self.relative.rstrip("/")
        return kernel_path == mine or kernel_path.startswith(mine + "/") or mine == ""

    def procs(self) -> list[int]:
        return procs_recursive(self.path)

    def move(self, pid: int) -> None:
        move(pid, self.path)

    def kill_all(self, protected: set[int] | None = None) -> list[int]:
        return kill_all(self.path, protected)

    def freeze(self, frozen: bool = True) -> None:
        freeze(self.path, frozen)

    def remove(self) -> bool:
        """Remove an owned cgroup once it is empty; an adopted one is never removed."""
        if not self.owned:
            return False
        return remove(self.path)


def sweep_stale(mount: Path) -> list[Path]:
    """Remove empty agent-* cgroups left by an agentwatch that was killed; the ones removed.

    Only empty ones can go (rmdir refuses the rest), so a running agent's
    cgroup, even another agentwatch's, is never disturbed.
    """
    parent = mount / PARENT
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.is_dir() and _AGENT_NAME.match(entry.name) and not populated(entry):
            if remove(entry):
                removed.append(entry)
    return removed


def create_agent(agent_id: str, mount: Path | None = None) -> AgentCgroup:
    """A fresh cgroup for an agent under <mount>/agentwatch.slice."""
    name = agent_id if agent_id.startswith("agent-") else f"agent-{agent_id}"
    if not _AGENT_NAME.match(name):
        raise CgroupError(f"agent id {agent_id!r} cannot name a cgroup")
    mount = mount or require_mount()
    parent = mount / PARENT
    try:
        parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"cannot create {parent}: {exc.strerror}") from None
    sweep_stale(mount)
    path = parent / name
    try:
        path.mkdir()
    except FileExistsError:
        raise CgroupError(f"{path} already exists (another agentwatch with the same agent id?)") from None
    except OSError as exc:
        raise CgroupError(f"cannot create {path}: {exc.strerror}") from None
    return AgentCgroup(path, mount, owned=True)


def adopt(path: str, mount: Path | None = None) -> AgentCgroup:
    """An existing cgroup given by the user (a container, a pod, a systemd unit) as an agent.

    PATH may be absolute under the v2 mount, or relative to it (as
    /proc/PID/cgroup and systemd name it: /system.slice/foo.service).
    """
    mount = mount or require_mount()
    p = Path(path)
    candidates = [p] if p.is_absolute() and str(p).startswith(str(mount)) else []
    candidates.append(mount / str(path).lstrip("/"))
    for c in candidates:
        if (c / "cgroup.procs").exists():
            resolved = c.resolve()
            if resolved != mount.resolve() and mount.resolve() not in resolved.parents:
                break
            return AgentCgroup(resolved, mount.resolve(), owned=False)
    raise CgroupError(f"--cgroup {path}: not a cgroup of the v2 hierarchy at {mount}")
