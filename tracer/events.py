"""The Python mirror of bpf/events.h, and nothing else.

Constants are read from events.h itself, so the limits exist once. The
ctypes classes restate the struct layouts; tests/unit/test_event_layout.py
compiles events.h with the host compiler and fails when they drift.
"""

from __future__ import annotations

import ctypes as ct
import re
import struct
from dataclasses import dataclass
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
EVENTS_H = BPF_DIR / "events.h"


def read_defines(path: Path = EVENTS_H) -> dict[str, int]:
    """Every `#define AW_NAME <integer or (2 * AW_OTHER)>` of events.h."""
    defines: dict[str, int] = {}
    pattern = re.compile(r"^#define\s+(AW_\w+)\s+(.+?)\s*(?:/\*.*)?$")
    for line in path.read_text().splitlines():
        match = pattern.match(line)
        if not match:
            continue
        expr = match.group(2).strip()
        names = re.sub(r"\bAW_\w+\b", lambda m: str(defines[m.group(0)]), expr)
        names = names.rstrip("uU")
        # Only decimal integers, parentheses and * are allowed: the header is data.
        if not re.fullmatch(r"[\d\s()*]+", names) or re.search(r"\b0\d", names):
            raise ValueError(f"{path}: cannot read #define {match.group(1)} {expr}")
        value = 1
        for factor in re.findall(r"\d+", names):
            value *= int(factor)
        defines[match.group(1)] = value
    return defines


_D = read_defines()
COMM_LEN = _D["AW_COMM_LEN"]
FILENAME_LEN = _D["AW_FILENAME_LEN"]
ARGV_BYTES = _D["AW_ARGV_BYTES"]
ARGV_MAX_ARGS = _D["AW_ARGV_MAX_ARGS"]
ARGV_BUF = _D["AW_ARGV_BUF"]

EVENT_FORK = _D["AW_EVENT_FORK"]
EVENT_EXEC = _D["AW_EVENT_EXEC"]
EVENT_EXIT = _D["AW_EVENT_EXIT"]
EVENT_CONNECT = _D["AW_EVENT_CONNECT"]
EVENT_SEND = _D["AW_EVENT_SEND"]
EVENT_CONN = _D["AW_EVENT_CONN"]
EVENT_GPU = _D["AW_EVENT_GPU"]
EVENT_TAMPER = _D["AW_EVENT_TAMPER"]
EVENT_BLOCK = _D["AW_EVENT_BLOCK"]
EVENT_CGROUP = _D["AW_EVENT_CGROUP"]
EVENT_FILE = _D["AW_EVENT_FILE"]
EVENT_TYPES = _D["AW_EVENT_TYPES"]
EVENT_NAMES = {
    EVENT_FORK: "fork",
    EVENT_EXEC: "exec",
    EVENT_EXIT: "exit",
    EVENT_CONNECT: "connect",
    EVENT_SEND: "send",
    EVENT_CONN: "connection",
    EVENT_GPU: "gpu",
    EVENT_TAMPER: "tamper",
    EVENT_BLOCK: "blocked",
    EVENT_CGROUP: "cgroup",
    EVENT_FILE: "file",
}

EXEC_ARGV_TRUNCATED = _D["AW_EXEC_ARGV_TRUNCATED"]
EXEC_FILENAME_TRUNCATED = _D["AW_EXEC_FILENAME_TRUNCATED"]
EXEC_EXECVEAT = _D["AW_EXEC_EXECVEAT"]
EXEC_ARGV_FAULT = _D["AW_EXEC_ARGV_FAULT"]
CONNECT_NO_SOCKET = _D["AW_CONNECT_NO_SOCKET"]

PAYLOAD_BYTES = _D["AW_PAYLOAD_BYTES"]
PAYLOAD_BUF = _D["AW_PAYLOAD_BUF"]
PAYLOAD_IOVECS = _D["AW_PAYLOAD_IOVECS"]
VIA_NAMES = {
    _D["AW_VIA_WRITE"]: "write",
    _D["AW_VIA_WRITEV"]: "writev",
    _D["AW_VIA_SENDTO"]: "sendto",
    _D["AW_VIA_SENDMSG"]: "sendmsg",
    _D["AW_VIA_SENDMMSG"]: "sendmmsg",
}
SEND_UNCONNECTED = _D["AW_SEND_UNCONNECTED"]
SEND_FAULT = _D["AW_SEND_FAULT"]
SEND_MORE_IOVECS = _D["AW_SEND_MORE_IOVECS"]
CONN_ESTABLISHED = _D["AW_CONN_ESTABLISHED"]
CONN_CLOSED = _D["AW_CONN_CLOSED"]
CONN_FAILED = _D["AW_CONN_FAILED"]
CONN_STATES = {CONN_ESTABLISHED: "established", CONN_CLOSED: "closed", CONN_FAILED: "failed"}

STAT_THREADS = _D["AW_STAT_THREADS"]
STAT_EXEC_PENDING_FULL = _D["AW_STAT_EXEC_PENDING_FULL"]
STAT_WATCH_FULL = _D["AW_STAT_WATCH_FULL"]
STATS = _D["AW_STATS"]
STAT_NAMES = {
    STAT_THREADS: "threads_created",
    STAT_EXEC_PENDING_FULL: "exec_pending_full",
    STAT_WATCH_FULL: "membership_full",
}

BLOCK_HOOKS = {_D["AW_BLOCK_CONNECT"]: "connect", _D["AW_BLOCK_SENDMSG"]: "sendmsg"}
POL_DEFAULT = _D["AW_POL_DEFAULT"]
TAMPER_SIGNAL = _D["AW_TAMPER_SIGNAL"]
TAMPER_PTRACE = _D["AW_TAMPER_PTRACE"]
TAMPER_CGROUP = _D["AW_TAMPER_CGROUP"]
TAMPER_BPF = _D["AW_TAMPER_BPF"]
TAMPER_KINDS = {TAMPER_SIGNAL: "signal", TAMPER_PTRACE: "ptrace", TAMPER_CGROUP: "cgroup", TAMPER_BPF: "bpf"}
PROTECT_SELF = _D["AW_PROTECT_SELF"]
PROTECT_PARENT = _D["AW_PROTECT_PARENT"]
TAMPER_PATH_LEN = _D["AW_TAMPER_PATH_LEN"]
CGROUP_MKDIR = _D["AW_CGROUP_MKDIR"]
CGROUP_RMDIR = _D["AW_CGROUP_RMDIR"]
CGROUP_ATTRIBUTED = _D["AW_CGROUP_ATTRIBUTED"]
CGROUP_PATH_TRUNCATED = _D["AW_CGROUP_PATH_TRUNCATED"]
CGROUP_PATH_LEN = _D["AW_CGROUP_PATH_LEN"]
FILE_OPEN = _D["AW_FILE_OPEN"]
FILE_RENAME = _D["AW_FILE_RENAME"]
FILE_LINK = _D["AW_FILE_LINK"]
FILE_SYMLINK = _D["AW_FILE_SYMLINK"]
FILE_TRUNCATE = _D["AW_FILE_TRUNCATE"]
FILE_UNLINK = _D["AW_FILE_UNLINK"]
FILE_INIT_MODULE = _D["AW_FILE_INIT_MODULE"]
FILE_FINIT_MODULE = _D["AW_FILE_FINIT_MODULE"]
FILE_OPS = {
    FILE_OPEN: "open", FILE_RENAME: "rename", FILE_LINK: "link", FILE_SYMLINK: "symlink",
    FILE_TRUNCATE: "truncate", FILE_UNLINK: "unlink", FILE_INIT_MODULE: "init_module",
    FILE_FINIT_MODULE: "finit_module",
}
FILE_PATH_TRUNCATED = _D["AW_FILE_PATH_TRUNCATED"]
FILE_DIR_WALKED = _D["AW_FILE_DIR_WALKED"]
FILE_DIR_TRUNCATED = _D["AW_FILE_DIR_TRUNCATED"]
FILE_PATH_FAULT = _D["AW_FILE_PATH_FAULT"]
FILE_MODULE_NAMED = _D["AW_FILE_MODULE_NAMED"]
FILE_PATH_LEN = _D["AW_FILE_PATH_LEN"]
FILE_NAME_HASHED = _D["AW_FILE_NAME_HASHED"]

u8, u16, u32, u64, s32 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64, ct.c_int32


class RawHeader(ct.Structure):
    _fields_ = [
        ("type", u32),
        ("size", u32),
        ("ktime_ns", u64),
        ("start_ns", u64),
        ("pid", u32),
        ("tid", u32),
        ("ppid", u32),
        ("uid", u32),
        ("agent_id", u32),
        ("_pad", u32),
        ("comm", ct.c_char * COMM_LEN),
    ]


class RawFork(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("child_pid", u32),
        ("child_agent_id", u32),
        ("child_start_ns", u64),
    ]


class RawExec(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("retval", s32),
        ("flags", u32),
        ("argc", u32),
        ("argv_size", u32),
        ("filename", ct.c_char * FILENAME_LEN),
        ("argv", ct.c_char * ARGV_BUF),
    ]


class RawExit(ct.Structure):
    _fields_ = [("hdr", RawHeader), ("exit_code", u32), ("_pad", u32)]


class RawConnect(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("retval", s32),
        ("fd", u32),
        ("family", u16),
        ("protocol", u16),
        ("sock_type", u16),
        ("flags", u16),
        ("sport", u16),
        ("dport", u16),
        ("repeats", u32),
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
        ("sock_cookie", u64),
    ]


class RawSend(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("sock_cookie", u64),
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
        ("fd", u32),
        ("total", u32),
        ("captured", u32),
        ("flags", u32),
        ("via", u16),
        ("family", u16),
        ("protocol", u16),
        ("sock_type", u16),
        ("sport", u16),
        ("dport", u16),
        ("_pad", u32),
        ("data", u8 * PAYLOAD_BUF),
    ]


class RawConn(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("sock_cookie", u64),
        ("duration_ns", u64),
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
        ("state", u16),
        ("family", u16),
        ("protocol", u16),
        ("sport", u16),
        ("dport", u16),
        ("oldstate", u16),
        ("_pad", u32),
    ]


# GPU (bpf/gpu.bpf.c): map keys userland reads, and the record; tracer/gpu.py names their values.
class RawGpuFdKey(ct.Structure):
    _fields_ = [("tgid", u32), ("fd", u32)]


class RawGpuCountKey(ct.Structure):
    _fields_ = [("tgid", u32), ("devclass", u16), ("op", u16), ("detail", u32)]


class RawGpu(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("kind", u32),
        ("fd", u32),
        ("devclass", u32),
        ("op", u32),
        ("detail", u32),
        ("milestone", u32),
        ("value", u64),
    ]


# Containment: egress denials (bpf/policy.bpf.c) and acts against agentwatch (bpf/guard.bpf.c).
class RawBlock(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("cgroup_id", u64),
        ("daddr", u8 * 16),
        ("family", u16),
        ("protocol", u16),
        ("sock_type", u16),
        ("dport", u16),
        ("hook", u16),
        ("rule", u16),
        ("sock_family", u16),
        ("_pad", u16),
    ]


class RawTamper(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("cgroup_id", u64),
        ("kind", u32),
        ("target_pid", u32),
        ("arg", s32),
        ("result", s32),
        ("protected", u32),
        ("path_len", u32),
        ("path", ct.c_char * TAMPER_PATH_LEN),
    ]


# Fleet (bpf/cgroup.bpf.c): cgroups of the v2 hierarchy made and removed.
class RawCgroup(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("cgroup_id", u64),
        ("parent_id", u64),
        ("op", u32),
        ("level", s32),
        ("flags", u32),
        ("path_len", u32),
        ("path", ct.c_char * CGROUP_PATH_LEN),
    ]


# Oversight (bpf/file.bpf.c): paths written that may matter, kernel modules loaded.
class RawFile(ct.Structure):
    _fields_ = [
        ("hdr", RawHeader),
        ("op", u32),
        ("result", s32),
        ("dirfd", s32),
        ("open_flags", u32),
        ("flags", u32),
        ("_pad", u32),
        ("path_len", u16),
        ("dir_len", u16),
        ("other_len", u16),
        ("_pad2", u16),
        ("path", ct.c_char * FILE_PATH_LEN),
        ("dir", ct.c_char * FILE_PATH_LEN),
        ("other", ct.c_char * FILE_PATH_LEN),
    ]


# Every C struct of events.h and its mirror, for the layout test.
MIRRORS = {
    "aw_header": RawHeader,
    "aw_fork": RawFork,
    "aw_exec": RawExec,
    "aw_exit": RawExit,
    "aw_connect": RawConnect,
    "aw_send": RawSend,
    "aw_conn": RawConn,
    "aw_gpu_fd_key": RawGpuFdKey,
    "aw_gpu_count_key": RawGpuCountKey,
    "aw_gpu": RawGpu,
    "aw_block": RawBlock,
    "aw_tamper": RawTamper,
    "aw_cgroup": RawCgroup,
    "aw_file": RawFile,
}
# Of those, the ones that are map keys, not ring buffer records: they carry no header.
MAP_KEYS = {"aw_gpu_fd_key", "aw_gpu_count_key"}

HEADER_SIZE = ct.sizeof(RawHeader)
EXEC_FIXED_SIZE = RawExec.argv.offset
SEND_FIXED_SIZE = RawSend.data.offset


class _RawExecHead(ct.Structure):
    """RawExec without argv: the fixed part every exec record carries."""

    _fields_ = RawExec._fields_[:-1]


class _RawSendHead(ct.Structure):
    """RawSend without data: the fixed part every send record carries."""

    _fields_ = RawSend._fields_[:-1]


class DecodeError(ValueError):
    """A record that does not match the contract: a bug, never user input."""


@dataclass(slots=True)
class Event:
    type: str
    ktime_ns: int
    start_ns: int
    pid: int
    tid: int
    ppid: int
    uid: int
    agent_id: int
    comm: bytes


@dataclass(slots=True)
class ForkEvent(Event):
    child_pid: int
    child_agent_id: int
    child_start_ns: int


@dataclass(slots=True)
class ExecEvent(Event):
    retval: int
    flags: int
    filename: bytes
    argv: list[bytes]

    @property
    def argv_truncated(self) -> bool:
        return bool(self.flags & EXEC_ARGV_TRUNCATED)


@dataclass(slots=True)
class ExitEvent(Event):
    exit_code: int  # wait(2) status

    @property
    def code(self) -> int:
        return (self.exit_code >> 8) & 0xFF

    @property
    def signal(self) -> int:
        return self.exit_code & 0x7F


@dataclass(slots=True)
class ConnectEvent(Event):
    retval: int
    fd: int
    family: int
    protocol: int
    sock_type: int
    flags: int
    sport: int
    dport: int
    repeats: int  # 0: one call; N: a summary of N more identical calls (bpf/connect.bpf.c)
    saddr: bytes
    daddr: bytes
    sock_cookie: int = 0  # the struct sock: joins send and connection records; never printed


@dataclass(slots=True)
class SendEvent(Event):
    sock_cookie: int
    saddr: bytes
    daddr: bytes
    fd: int
    total: int  # bytes the call asked to send
    captured: int
    flags: int
    via: int
    family: int
    protocol: int
    sock_type: int
    sport: int
    dport: int
    data: bytes  # the first `captured` bytes

    @property
    def truncated(self) -> bool:
        return self.total > self.captured or bool(self.flags & SEND_MORE_IOVECS)


@dataclass(slots=True)
class ConnEvent(Event):
    """A TCP state change; the header is the connecting process at SYN_SENT."""

    sock_cookie: int
    duration_ns: int
    saddr: bytes
    daddr: bytes
    state: int
    family: int
    protocol: int
    sport: int
    dport: int
    oldstate: int


@dataclass(slots=True)
class GpuEvent(Event):
    """A GPU milestone reached, or an ioctl on an fd the kernel did not see opened."""

    kind: int  # AW_GPU_KIND_*
    fd: int
    devclass: int
    op: int  # for a resolve request: the ioctl command
    detail: int
    milestone: int  # AW_GPU_MS_* bit
    value: int  # bytes allocated, when known


@dataclass(slots=True)
class BlockEvent(Event):
    """A connect or send the egress policy denied (EPERM)."""

    cgroup_id: int
    daddr: bytes
    family: int
    protocol: int
    sock_type: int
    dport: int
    hook: int  # AW_BLOCK_*
    rule: int  # index in the policy, or POL_DEFAULT
    sock_family: int  # AF_INET6 with family AF_INET: a v4-mapped destination


@dataclass(slots=True)
class TamperEvent(Event):
    """A watched process signals, traces, moves or bpf()s: see bpf/guard.bpf.c."""

    cgroup_id: int
    kind: int  # AW_TAMPER_*
    target_pid: int
    arg: int
    result: int
    protected: int  # AW_PROTECT_* of the target, 0 if neither
    path: bytes


@dataclass(slots=True)
class CgroupEvent(Event):
    """A v2 cgroup made or removed (daemon only); the header is whoever did it."""

    cgroup_id: int
    parent_id: int
    op: int  # CGROUP_MKDIR or CGROUP_RMDIR
    level: int
    flags: int  # CGROUP_ATTRIBUTED: the kernel attributes its processes already
    path: str  # relative to the hierarchy's root, "/" first

    @property
    def attributed(self) -> bool:
        return bool(self.flags & CGROUP_ATTRIBUTED)


@dataclass(slots=True)
class FileEvent(Event):
    """A path that may matter written (or tried), or a kernel module loaded: see bpf/file.bpf.c."""

    op: int  # FILE_*
    result: int  # the call's return: an fd or 0, or -errno
    dirfd: int  # what a relative path is relative to (-100: the cwd); finit_module: its fd
    open_flags: int
    flags: int  # FILE_* flags
    path: bytes  # as the process gave it; a module's name when FILE_MODULE_NAMED
    dir: bytes | None  # the kernel's walk of path's directory (finit_module: of the module file), or None
    other: bytes  # rename, link: the source; symlink: the target

    @property
    def truncated(self) -> bool:
        return bool(self.flags & (FILE_PATH_TRUNCATED | FILE_DIR_TRUNCATED))


def _struct_of(cls: type[ct.Structure]) -> struct.Struct:
    """A struct.Struct with the ctypes class's layout, `_pad` fields skipped.

    Decoding with struct is several times faster than ctypes, and deriving
    the format from the mirror keeps the layout in one place.
    """
    codes = {ct.c_uint8: "B", ct.c_uint16: "H", ct.c_uint32: "I", ct.c_uint64: "Q", ct.c_int32: "i"}
    fmt, pos = ["<"], 0

    def walk(c: type[ct.Structure], base: int) -> None:
        nonlocal pos
        for name, ctype in c._fields_:
            off, size = base + getattr(c, name).offset, ct.sizeof(ctype)
            if isinstance(ctype, type) and issubclass(ctype, ct.Structure):
                walk(ctype, off)
                continue
            fmt.append("x" * (off - pos))
            if name.startswith("_pad"):
                fmt.append(f"{size}x")
            elif ctype in codes:
                fmt.append(codes[ctype])
            else:  # char and byte arrays
                fmt.append(f"{size}s")
            pos = off + size

    walk(cls, 0)
    fmt.append("x" * (ct.sizeof(cls) - pos))
    return struct.Struct("".join(fmt))


_FORK = _struct_of(RawFork)
_EXEC_HEAD = _struct_of(_RawExecHead)
_EXIT = _struct_of(RawExit)
_CONNECT = _struct_of(RawConnect)
_SEND_HEAD = _struct_of(_RawSendHead)
_CONN = _struct_of(RawConn)
_GPU = _struct_of(RawGpu)
_BLOCK = _struct_of(RawBlock)
_TAMPER = _struct_of(RawTamper)
_CGROUP = _struct_of(RawCgroup)
_FILE = _struct_of(RawFile)
_HEADER_FIELDS = 9  # type, size, ktime_ns, start_ns, pid, tid, ppid, uid, agent_id; then comm


_LAYOUTS = {
    EVENT_FORK: _FORK,
    EVENT_EXEC: _EXEC_HEAD,
    EVENT_EXIT: _EXIT,
    EVENT_CONNECT: _CONNECT,
    EVENT_SEND: _SEND_HEAD,
    EVENT_CONN: _CONN,
    EVENT_GPU: _GPU,
    EVENT_BLOCK: _BLOCK,
    EVENT_TAMPER: _TAMPER,
    EVENT_CGROUP: _CGROUP,
    EVENT_FILE: _FILE,
}


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


_KTIME = struct.Struct("<Q")
_KTIME_AT = RawHeader.ktime_ns.offset


def walked_path(raw: bytes) -> bytes:
    """aw_file.dir, names leaf first and NUL-separated ("cron.d\\0etc\\0"), as a path (/etc/cron.d)."""
    names = [n for n in raw.split(b"\0") if n]
    return b"/" + b"/".join(reversed(names))


def ktime_of(raw: bytes) -> int:
    """A record's kernel time (CLOCK_MONOTONIC ns), without decoding the rest."""
    return _KTIME.unpack_from(raw, _KTIME_AT)[0]


def decode(raw: bytes) -> Event:
    """One ring buffer record (bytes copied out of the callback) to an Event."""
    if len(raw) < HEADER_SIZE:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than the header")
    kind = int.from_bytes(raw[:4], "little")
    layout = _LAYOUTS.get(kind)
    if layout is None:
        raise DecodeError(f"unknown record type {kind}")
    if len(raw) < layout.size:
        raise DecodeError(f"{EVENT_NAMES[kind]} record of {len(raw)} bytes, want at least {layout.size}")
    v = layout.unpack_from(raw)
    if v[1] != len(raw):
        raise DecodeError(f"{EVENT_NAMES[kind]} record says {v[1]} bytes, got {len(raw)}")
    head = (EVENT_NAMES[kind], v[2], v[3], v[4], v[5], v[6], v[7], v[8], _cstr(v[9]))
    rest = v[_HEADER_FIELDS + 1 :]
    if kind == EVENT_CONNECT:
        return ConnectEvent(*head, *rest)
    if kind == EVENT_SEND:
        captured = rest[5]
        if captured > PAYLOAD_BYTES or SEND_FIXED_SIZE + captured != len(raw):
            raise DecodeError(f"send record of {len(raw)} bytes with {captured} bytes of data")
        return SendEvent(*head, *rest, raw[SEND_FIXED_SIZE:])
    if kind == EVENT_CONN:
        return ConnEvent(*head, *rest)
    if kind == EVENT_EXEC:
        retval, flags, _argc, argv_size, filename = rest
        if EXEC_FIXED_SIZE + argv_size != len(raw):
            raise DecodeError(f"exec record of {len(raw)} bytes with {argv_size} bytes of argv")
        blob = raw[EXEC_FIXED_SIZE:]
        argv = blob.split(b"\0") if blob else []
        if argv and argv[-1] == b"":
            argv.pop()
        return ExecEvent(*head, retval, flags, _cstr(filename), argv)
    if kind == EVENT_FORK:
        return ForkEvent(*head, *rest)
    if kind == EVENT_GPU:
        return GpuEvent(*head, *rest)
    if kind == EVENT_BLOCK:
        return BlockEvent(*head, *rest)
    if kind == EVENT_TAMPER:
        cgroup_id, tkind, target, arg, result, protected, path_len, path = rest
        return TamperEvent(*head, cgroup_id, tkind, target, arg, result, protected, path[:min(path_len, TAMPER_PATH_LEN)].split(b"\0", 1)[0])
    if kind == EVENT_CGROUP:
        cgroup_id, parent_id, op, level, flags, path_len, path = rest
        # cgroupfs names are bytes; undecodable ones keep their bytes as surrogates.
        text = path[:min(path_len, CGROUP_PATH_LEN)].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return CgroupEvent(*head, cgroup_id, parent_id, op, level, flags, text)
    if kind == EVENT_FILE:
        op, result, dirfd, open_flags, flags, path_len, dir_len, other_len, path, walk, other = rest
        walked = walked_path(walk[:min(dir_len, FILE_PATH_LEN)]) if flags & FILE_DIR_WALKED else None
        return FileEvent(*head, op, result, dirfd, open_flags, flags, _cstr(path[:min(path_len, FILE_PATH_LEN)]),
                         walked, _cstr(other[:min(other_len, FILE_PATH_LEN)]))
    return ExitEvent(*head, *rest)
