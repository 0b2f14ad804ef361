"""Which written paths matter: the names the kernel keeps, and the category of a path.

The kernel (bpf/file.bpf.c) keeps a written path only when one of its names
is in MARKED_NAMES, a cheap test it can make on every open for writing. That
is a superset: "etc" keeps /etc/hosts and a project's etc/ too. Here, on
the resolved path, classify() decides what the write is (a shell startup
file, a cron job, ...) and a path of no category is dropped. A unit test
checks that every path classify() knows has a marked name, so the kernel
never drops what this module would keep.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from . import events
from .proctree import read_stat, start_ticks_from_ns

# Files a login or interactive shell runs (T1546.004), by name wherever they are: in a home, in
# /etc/skel, in a dotfiles checkout they are linked from.
SHELL_STARTUP_NAMES = (
    ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile",
    ".zshrc", ".zprofile", ".zshenv", ".zlogin", ".zlogout",
)
AUTHORIZED_KEYS_NAMES = ("authorized_keys", "authorized_keys2")

# A path is kept by the kernel when one of its names is one of these.
MARKED_NAMES = (
    "etc",                       # /etc/...: cron, systemd, sudoers, profile, ld.so.preload, audit, agentwatch
    "cron", "crontabs",          # /var/spool/cron/..., a cwd inside it
    "systemd",                   # /lib, /usr/lib, /usr/local/lib, /run, ~/.config, ~/.local/share
    "modules-load.d",            # /usr/lib/modules-load.d
    ".ssh",
    *AUTHORIZED_KEYS_NAMES,
    *SHELL_STARTUP_NAMES,
    "agentwatch", "agentwatch.service", "agentwatch.service.d",
)

CATEGORIES = ("agentwatch", "audit", "ld_preload", "sudoers", "authorized_keys", "cron", "systemd",
              "init_scripts", "modules", "shell_startup")

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits, as bpf/file.bpf.c computes it."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def marked_hashes() -> list[int]:
    """What userland puts in the kernel's aw_file_names."""
    out = []
    for name in MARKED_NAMES:
        raw = name.encode()
        assert len(raw) <= events.FILE_NAME_HASHED, name  # longer names are never hashed in the kernel
        out.append(fnv1a64(raw))
    return out


def _under(path: str, *dirs: str) -> bool:
    """path is one of dirs or below one."""
    return any(path == d or path.startswith(d + "/") for d in dirs)


_SYSTEMD_DIRS = ("/etc/systemd", "/lib/systemd", "/usr/lib/systemd", "/usr/local/lib/systemd",
                 "/run/systemd/system", "/run/systemd/user", "/run/systemd/transient",
                 "/run/systemd/generator", "/run/systemd/generator.early", "/run/systemd/generator.late")
_CRON_FILES = ("/etc/crontab", "/etc/anacrontab")
_CRON_DIRS = ("/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly",
              "/etc/cron.yearly", "/var/spool/cron", "/var/spool/anacron")
_SHELL_FILES = ("/etc/profile", "/etc/bash.bashrc", "/etc/bashrc", "/etc/environment", "/etc/zshrc",
                "/etc/zprofile", "/etc/zshenv", "/etc/zlogin", "/etc/zlogout")
_SHELL_DIRS = ("/etc/profile.d", "/etc/zsh", "/etc/skel")
_INIT_DIRS = ("/etc/init.d", "/etc/rc.d") + tuple(f"/etc/rc{level}.d" for level in "0123456S")


def classify(path: str) -> str | None:
    """The category of an absolute, normalised path written, or None when it does not matter.

    The first that applies: agentwatch's own configuration and unit, audit configuration,
    /etc/ld.so.preload, sudoers, authorized_keys, cron, systemd units, init scripts, kernel
    module configuration, shell startup files.
    """
    name = path.rpartition("/")[2]
    parent = posixpath.dirname(path).rpartition("/")[2]
    unit_dir = _under(path, *_SYSTEMD_DIRS) or "/.config/systemd/" in path or "/.local/share/systemd/" in path
    if _under(path, "/etc/agentwatch") or (unit_dir and (name.startswith("agentwatch.service")
                                                          or parent == "agentwatch.service.d")):
        return "agentwatch"  # a checkout's packaging/agentwatch.service is not the installed unit
    if _under(path, "/etc/audit", "/etc/audisp"):
        return "audit"
    if path == "/etc/ld.so.preload":
        return "ld_preload"
    if _under(path, "/etc/sudoers", "/etc/sudoers.d"):
        return "sudoers"
    if name in AUTHORIZED_KEYS_NAMES:
        return "authorized_keys"
    if path in _CRON_FILES or _under(path, *_CRON_DIRS):
        return "cron"
    if unit_dir:
        return "systemd"
    if path == "/etc/rc.local" or _under(path, *_INIT_DIRS):
        return "init_scripts"
    if _under(path, "/etc/modules", "/etc/modules-load.d", "/etc/modprobe.d", "/usr/lib/modules-load.d"):
        return "modules"
    if name in SHELL_STARTUP_NAMES or path in _SHELL_FILES or _under(path, *_SHELL_DIRS):
        return "shell_startup"
    return None


def _same_process(ev: events.Event, proc_root: str) -> bool:
    st = read_stat(ev.pid, Path(proc_root))
    return st is not None and st.start_ticks == start_ticks_from_ns(ev.start_ns)


def _proc_dir(ev: events.FileEvent, proc_root: str) -> bytes | None:
    """The directory of a relative path from /proc, while the process is still there."""
    link = f"{proc_root}/{ev.pid}/cwd" if ev.dirfd == -100 else f"{proc_root}/{ev.pid}/fd/{ev.dirfd}"
    try:
        target = os.readlink(link)
    except OSError:
        return None
    if not _same_process(ev, proc_root):  # the pid was reused: not its cwd
        return None
    return os.fsencode(target)


def resolve(ev: events.FileEvent, proc_root: str = "/proc") -> tuple[bytes, bool]:
    """The path written as an absolute, normalised path, and whether it is one.

    An absolute path is only normalised (".." taken lexically, as the kernel
    would without symlinks). A relative one is joined to the directory the
    kernel walked; when the walk failed or was cut, to the process's cwd or
    dirfd read from /proc, if it is still running; otherwise it stays
    relative (resolved False) and only its last name can classify it.
    """
    path = ev.path
    if path.startswith(b"/"):
        return posixpath.normpath(path), not ev.flags & events.FILE_PATH_TRUNCATED
    base = ev.dir if ev.dir is not None and not ev.flags & events.FILE_DIR_TRUNCATED else None
    if base is None:
        base = _proc_dir(ev, proc_root)
    if base is None:
        return path, False
    return posixpath.normpath(posixpath.join(base, path)), not ev.flags & events.FILE_PATH_TRUNCATED


def category_of(path: bytes, resolved: bool) -> str | None:
    """classify() on bytes; a path left relative is judged by its last name only."""
    text = path.decode("utf-8", "surrogateescape")
    if resolved:
        return classify(text)
    name = text.rpartition("/")[2]
    if name in AUTHORIZED_KEYS_NAMES:
        return "authorized_keys"
    if name in SHELL_STARTUP_NAMES:
        return "shell_startup"
    return None
