"""Events, processes and agents to output records (docs/event.schema.json).

This is where kernel bytes become text, so this is where hostile text is
made safe: see safe_text.
"""

from __future__ import annotations

import errno
import posixpath
import re
import signal
import socket
import time

from . import events, gpu, watched_files
from .agents import Agent
from .dns import Question
from .netscope import ScopeClassifier
from .proctree import Process

SCHEMA_VERSION = 1

# Printable ASCII: the common case, decoded as is.
_PLAIN = re.compile(rb"[\x20-\x7e]*")
# Code points a terminal or a log viewer may act on: C0/C1 controls, DEL,
# line/paragraph separators, bidirectional overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(raw: bytes) -> str:
    """Bytes from the kernel as text that is safe to print and to log.

    Valid UTF-8 stays readable and a backslash stays itself (argv is shown
    as typed); every byte that is not valid UTF-8 becomes \\xNN and every
    control or direction-changing character becomes \\xNN or \\uNNNN. The
    result holds no newline, no escape sequence and no character that
    reorders a line.
    """
    if _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    text = raw.decode("utf-8", errors="surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch)
    return _UNSAFE.sub(_escape_char, "".join(out))


def errno_name(retval: int) -> str:
    if retval >= 0:
        return "ok"
    return errno.errorcode.get(-retval, f"E{-retval}")


class Clock:
    """Kernel CLOCK_MONOTONIC timestamps to RFC 3339 UTC with nanoseconds."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self._second = -1
        self._prefix = ""

    def rfc3339(self, ktime_ns: int) -> str:
        wall = ktime_ns + self.offset_ns
        second, nanos = divmod(wall, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{nanos:09d}Z"

    def now(self) -> str:
        return self.rfc3339(time.monotonic_ns())


def _brief(p: Process) -> dict:
    """{pid, comm, exe} of an ancestor; cached until that process execs or renames."""
    if p.brief_cache is None:
        p.brief_cache = {
            "pid": p.pid,
            "comm": safe_text(p.comm),
            "exe": safe_text(p.exe) if p.exe is not None else None,
        }
    return p.brief_cache


def process_json(p: Process) -> dict:
    """The process as a record field.

    Its own part is cached until it execs, renames or is reparented; the
    ancestry is assembled each time from the ancestors' cached parts, so it
    shows each ancestor as it is now.
    """
    if p.json_cache is None:
        p.json_cache = {
            "pid": p.pid,
            "ppid": p.ppid,
            "uid": p.uid,
            "comm": safe_text(p.comm),
            "exe": safe_text(p.exe) if p.exe is not None else None,
            "argv": [safe_text(a) for a in p.argv],
            "argv_truncated": p.argv_truncated,
            "key": p.key,
        }
    out = dict(p.json_cache)
    out["ancestry"] = [_brief(a) for a in p.ancestry()]
    return out


AF_INET, AF_INET6 = 2, 10
_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 262: "mptcp", 136: "udplite"}
_SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
_V4_MAPPED = bytes(10) + b"\xff\xff"


def _ntop(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def _endpoints(ev: events.ConnectEvent | events.SendEvent | events.ConnEvent, sock_type: int) -> dict:
    """family, protocol, both ends and v4_mapped: the part every network object shares."""
    v4_mapped = ev.family == AF_INET6 and ev.daddr[:12] == _V4_MAPPED
    if ev.family == AF_INET:
        daddr, saddr = ev.daddr[:4], ev.saddr[:4]
    elif v4_mapped:
        # Report the IPv4 address the packets go to; the flag keeps the form used.
        daddr, saddr = ev.daddr[12:16], ev.saddr[12:16] if ev.saddr[:12] == _V4_MAPPED else ev.saddr
    else:
        daddr, saddr = ev.daddr, ev.saddr
    protocol = _PROTOCOLS.get(ev.protocol)
    if protocol is None:
        protocol = _SOCK_TYPES.get(sock_type, "unknown") if ev.protocol == 0 else str(ev.protocol)
    return {
        "family": "ipv4" if ev.family == AF_INET else "ipv6",
        "protocol": protocol,
        "saddr": _ntop(saddr) if any(saddr) else None,
        "sport": ev.sport or None,
        "daddr": _ntop(daddr),
        "dport": ev.dport,
        "v4_mapped": v4_mapped,
    }


def network_json(ev: events.ConnectEvent | events.SendEvent) -> dict:
    """The network object of a connect, or of a send (whose result is always ok)."""
    net = _endpoints(ev, ev.sock_type)
    retval = ev.retval if isinstance(ev, events.ConnectEvent) else 0
    net["result"] = errno_name(retval)
    net["retval"] = retval
    return net


def payload_json(ev: events.SendEvent) -> dict:
    """The first bytes sent, as safe text (a CR LF shows as \\x0d\\x0a)."""
    return {"text": safe_text(ev.data), "length": ev.captured, "truncated": ev.truncated}


def connection_json(ev: events.ConnEvent) -> dict:
    closed = ev.state == events.CONN_CLOSED
    return {
        "state": events.CONN_STATES.get(ev.state, str(ev.state)),
        "duration_s": ev.duration_ns / 1e9 if closed else None,
    }


def event_record(
    clock: Clock,
    ev: events.Event,
    proc: Process,
    agent: Agent | None,
    child: Process | None = None,
    scope: ScopeClassifier | None = None,
) -> dict:
    """The output record of one kernel event; `scope` adds scope and allowlisted to `network`."""
    rec = {
        "kind": "event",
        "type": ev.type,
        "time": clock.rfc3339(ev.ktime_ns),
        "agent": agent.as_json(ev.ktime_ns) if agent is not None else None,
        "process": process_json(proc),
    }
    if isinstance(ev, events.ExecEvent):
        rec["exec"] = {
            "filename": safe_text(ev.filename),
            "result": errno_name(ev.retval),
            "retval": ev.retval,
            "execveat": bool(ev.flags & events.EXEC_EXECVEAT),
            "filename_truncated": bool(ev.flags & events.EXEC_FILENAME_TRUNCATED),
            "argv_unreadable": bool(ev.flags & events.EXEC_ARGV_FAULT),
        }
        if ev.retval < 0:
            # A failed exec leaves the process as it was: show what it tried.
            rec["exec"]["argv"] = [safe_text(a) for a in ev.argv]
            rec["exec"]["argv_truncated"] = ev.argv_truncated
    elif isinstance(ev, events.ExitEvent):
        rec["exit_code"] = ev.code
        rec["signal"] = ev.signal or None
    elif isinstance(ev, events.ForkEvent):
        rec["child"] = {"pid": ev.child_pid, "key": child.key if child is not None else None}
    elif isinstance(ev, events.ConnectEvent):
        rec["network"] = network_json(ev)
        rec["network"]["repeats"] = ev.repeats
    elif isinstance(ev, events.SendEvent):
        rec["network"] = network_json(ev)
        rec["payload"] = payload_json(ev)
    elif isinstance(ev, events.ConnEvent):
        rec["network"] = _endpoints(ev, 1)
        rec["connection"] = connection_json(ev)
    elif isinstance(ev, events.GpuEvent):
        rec["gpu"] = gpu_milestone_json(ev)
    elif isinstance(ev, events.BlockEvent):
        rec["network"] = blocked_network_json(ev)
        rec["policy"] = {"name": None, "rule": None, "hook": events.BLOCK_HOOKS.get(ev.hook, str(ev.hook)),
                         "action": "deny"}  # the names are the session's to fill: it knows the policy
    elif isinstance(ev, events.TamperEvent):
        rec["tamper"] = tamper_json(ev)
    elif isinstance(ev, events.FileEvent):
        rec["type"] = "tamper"  # the kernel's file record is a tamper record: kind write or module
        rec["tamper"] = file_tamper_json(ev)
    if scope is not None and "network" in rec:
        scope.annotate(rec["network"])
    return rec


def gpu_milestone_json(ev: events.GpuEvent) -> dict:
    """A GPU milestone: the first time this process image reached it."""
    return {
        "event": "milestone",
        "milestone": gpu.milestone_of_bit(ev.milestone),
        "device": gpu.VENDOR_OF_CLASS.get(ev.devclass, "unknown"),
        "class": gpu.CLASS_NAMES.get(ev.devclass, str(ev.devclass)),
        "op": gpu.OP_NAMES.get(ev.op, str(ev.op)),
        "detail": f"0x{ev.detail:x}",
        "fd": ev.fd,
        "bytes": ev.value,
    }


def gpu_usage_record(clock: Clock, proc: Process, agent: Agent | None, usage: dict) -> dict:
    """A process's GPU activity over the last window (counters, NVML), from userland."""
    return {
        "kind": "event",
        "type": "gpu",
        "time": clock.now(),
        "agent": agent.as_json() if agent is not None else None,
        "process": process_json(proc),
        "gpu": usage,
    }


def dns_record(send: dict, question: Question) -> dict:
    """The query a send record carried, as its own record (same time, process, network)."""
    return {
        "kind": "event",
        "type": "dns",
        "time": send["time"],
        "agent": send["agent"],
        "process": send["process"],
        "network": dict(send["network"]),
        "dns": {"query": question.query, "qtype": question.qtype},
    }


def lost_record(clock: Clock, lost: dict[str, int], total: dict[str, int]) -> dict:
    """Events the kernel could not hand over (ring buffer full), per type."""
    return {
        "kind": "event",
        "type": "lost",
        "time": clock.now(),
        "agent": None,
        "process": None,
        "lost": lost,
        "lost_total": total,
    }


def status_record(clock: Clock, status: str, agent: Agent | None, **fields) -> dict:
    rec = {"kind": "status", "status": status, "time": clock.now(), "agent": agent.as_json() if agent else None}
    rec.update(fields)
    return rec


def blocked_network_json(ev: events.BlockEvent) -> dict:
    """Where a denied connect or send was going (the policy's view: no local end, no result)."""
    daddr = ev.daddr[:4] if ev.family == AF_INET else ev.daddr
    v4_mapped = ev.family == AF_INET and ev.sock_family == AF_INET6
    protocol = _PROTOCOLS.get(ev.protocol)
    if protocol is None:
        protocol = _SOCK_TYPES.get(ev.sock_type, "unknown") if ev.protocol == 0 else str(ev.protocol)
    return {
        "family": "ipv6" if ev.sock_family == AF_INET6 else "ipv4",  # the socket's, as in connect records
        "protocol": protocol,
        "daddr": _ntop(daddr),
        "dport": ev.dport,
        "v4_mapped": v4_mapped,
    }


_SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}
_PTRACE_REQUESTS = {16: "PTRACE_ATTACH", 0x4206: "PTRACE_SEIZE"}
# enum bpf_cmd (include/uapi/linux/bpf.h), in order.
_BPF_CMDS = (
    "BPF_MAP_CREATE BPF_MAP_LOOKUP_ELEM BPF_MAP_UPDATE_ELEM BPF_MAP_DELETE_ELEM BPF_MAP_GET_NEXT_KEY "
    "BPF_PROG_LOAD BPF_OBJ_PIN BPF_OBJ_GET BPF_PROG_ATTACH BPF_PROG_DETACH BPF_PROG_TEST_RUN "
    "BPF_PROG_GET_NEXT_ID BPF_MAP_GET_NEXT_ID BPF_PROG_GET_FD_BY_ID BPF_MAP_GET_FD_BY_ID "
    "BPF_OBJ_GET_INFO_BY_FD BPF_PROG_QUERY BPF_RAW_TRACEPOINT_OPEN BPF_BTF_LOAD BPF_BTF_GET_FD_BY_ID "
    "BPF_TASK_FD_QUERY BPF_MAP_LOOKUP_AND_DELETE_ELEM BPF_MAP_FREEZE BPF_BTF_GET_NEXT_ID "
    "BPF_MAP_LOOKUP_BATCH BPF_MAP_LOOKUP_AND_DELETE_BATCH BPF_MAP_UPDATE_BATCH BPF_MAP_DELETE_BATCH "
    "BPF_LINK_CREATE BPF_LINK_UPDATE BPF_LINK_GET_FD_BY_ID BPF_LINK_GET_NEXT_ID BPF_ENABLE_STATS "
    "BPF_ITER_CREATE BPF_LINK_DETACH BPF_PROG_BIND_MAP BPF_TOKEN_CREATE"
).split()
_PROTECTED = {events.PROTECT_SELF: "agentwatch", events.PROTECT_PARENT: "agentwatch_parent"}


def tamper_json(ev: events.TamperEvent) -> dict:
    """What a watched process did against agentwatch or its containment (bpf/guard.bpf.c)."""
    kind = events.TAMPER_KINDS.get(ev.kind, str(ev.kind))
    out = {
        "kind": kind,
        "target_pid": ev.target_pid or None,
        "target": _PROTECTED.get(ev.protected),
        "signal": None,
        "ptrace_request": None,
        "bpf_cmd": None,
        "cgroup": None,
        "target_scope": None,  # ptrace: the session says whose the target is
        "target_agent_id": None,
        "file": None,
        "module": None,
    }
    if ev.kind == events.TAMPER_SIGNAL:
        out["signal"] = _SIGNAL_NAMES.get(ev.arg, f"SIG{ev.arg}")
    elif ev.kind == events.TAMPER_PTRACE:
        out["ptrace_request"] = _PTRACE_REQUESTS.get(ev.arg, str(ev.arg))
    elif ev.kind == events.TAMPER_BPF:
        out["bpf_cmd"] = _BPF_CMDS[ev.arg] if 0 <= ev.arg < len(_BPF_CMDS) else str(ev.arg)
    elif ev.kind == events.TAMPER_CGROUP:
        # leaves_agent: the session knows the agent's cgroup and fills it in (null when it has none).
        out["cgroup"] = {"path": safe_text(ev.path), "id": ev.cgroup_id, "level": ev.arg,
                         "v2": ev.result == 0, "leaves_agent": None}
    return out


# Flag names per call, for people (uapi asm-generic/fcntl.h, linux/fcntl.h, linux/module.h).
_OPEN_FLAGS = ((0o1, "O_WRONLY"), (0o2, "O_RDWR"), (0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o1000, "O_TRUNC"),
               (0o2000, "O_APPEND"), (0o20200000, "O_TMPFILE"))
_CALL_FLAGS = {
    events.FILE_RENAME: ((1, "RENAME_NOREPLACE"), (2, "RENAME_EXCHANGE"), (4, "RENAME_WHITEOUT")),
    events.FILE_LINK: ((0x400, "AT_SYMLINK_FOLLOW"), (0x1000, "AT_EMPTY_PATH")),
    events.FILE_UNLINK: ((0x200, "AT_REMOVEDIR"),),
    events.FILE_FINIT_MODULE: ((1, "MODULE_INIT_IGNORE_MODVERSIONS"), (2, "MODULE_INIT_IGNORE_VERMAGIC"),
                               (4, "MODULE_INIT_COMPRESSED_FILE")),
}


def _flag_names(value: int, names) -> list[str]:
    out, rest = [], value
    for bit, name in names:
        if value & bit == bit:
            out.append(name)
            rest &= ~bit
    if rest:
        out.append(hex(rest))
    return out


def kept_write(record: dict) -> bool:
    """A file record worth writing: a module load, or a write whose path has a category."""
    t = record["tamper"]
    return t["kind"] == "module" or t["file"]["category"] is not None


def file_tamper_json(ev: events.FileEvent, proc_root: str = "/proc") -> dict:
    """A write to a path that may matter (kind write) or a module load (kind module): bpf/file.bpf.c.

    The path is made absolute here (tracer/watched_files.py resolve) and given
    its category, None when it does not matter (the session drops those).
    """
    out = {
        "kind": "write", "target_pid": None, "target": None, "signal": None, "ptrace_request": None,
        "bpf_cmd": None, "cgroup": None, "target_scope": None, "target_agent_id": None, "file": None, "module": None,
    }
    result = errno_name(ev.result)
    if ev.op in (events.FILE_INIT_MODULE, events.FILE_FINIT_MODULE):
        out["kind"] = "module"
        named = bool(ev.flags & events.FILE_MODULE_NAMED)
        out["module"] = {
            "syscall": events.FILE_OPS[ev.op],
            "name": safe_text(ev.path) if named else None,
            "file": safe_text(ev.dir) if ev.dir is not None else None,
            "fd": ev.dirfd if ev.op == events.FILE_FINIT_MODULE else None,
            "flags": _flag_names(ev.open_flags, _CALL_FLAGS[events.FILE_FINIT_MODULE]),
            "result": result,
        }
        return out
    path, resolved = watched_files.resolve(ev, proc_root)
    category = watched_files.category_of(path, resolved)
    target = None
    if ev.op == events.FILE_SYMLINK:
        target = ev.other
        if category is None:  # a link into a place that matters is a way into it
            there = target if target.startswith(b"/") or not resolved else posixpath.join(posixpath.dirname(path), target)
            category = watched_files.category_of(posixpath.normpath(there), resolved or there.startswith(b"/"))
    if ev.op == events.FILE_OPEN:
        flags = _flag_names(ev.open_flags & 0o20203303, _OPEN_FLAGS)
    else:
        flags = _flag_names(ev.open_flags, _CALL_FLAGS.get(ev.op, ()))
    out["file"] = {
        "op": events.FILE_OPS.get(ev.op, str(ev.op)),
        "path": safe_text(path),
        "resolved": resolved,
        "category": category,
        "result": result,
        "flags": flags,
        "source": safe_text(ev.other) if ev.op in (events.FILE_RENAME, events.FILE_LINK) else None,
        "link_target": safe_text(target) if target is not None else None,
        "truncated": ev.truncated,
    }
    return out
