"""The field names rules may use: one table of names, types, docs and accessors.

This table is the single source of truth. The condition parser checks names
and types against it, the compiler takes its accessors, `agentwatch rules
fields` prints it and docs/rules.md carries the same table (a unit test
compares them).

An accessor takes a record (a dict, as printed by --events) and returns a
value of the field's type, or None when the record does not have it. A value
of the wrong JSON type (a hand-edited replay file) is also None, so operators
never see a type they do not expect.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Callable

# Field types. ADDR is an IP address as text: the only type `cidr` accepts.
STR, INT, FLOAT, BOOL, ADDR, LIST = "str", "int", "float", "bool", "addr", "list[str]"

RECORD_TYPES = ("exec", "exit", "fork", "connect", "send", "connection", "dns", "gpu", "tamper", "blocked", "pipe_link",
                "lost",
                "status")

Getter = Callable[[dict], object]
# A getter with raw_text = True returns a string exactly as the record holds it at one
# path (not derived, not normalised): a record whose JSON text has no backslash holds
# that value only if it holds it quoted, byte for byte (what lets a replay skip lines
# unparsed, Engine.needed_text).


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    source: str  # where in the record, for people
    get: Getter


def record_type(rec: dict) -> str | None:
    """The record type rules select on (`events:`): an event's `type`, or "status"."""
    kind = rec.get("kind")
    if kind == "event":
        t = rec.get("type")
        return t if t.__class__ is str else None
    if kind == "status":
        return "status"
    return None


_seconds_cache: dict[str, int] = {}
_last_time: list = [None, None]  # the last record read, and its seconds: several rules ask in a row


def record_seconds(rec: dict) -> float | None:
    """`time` (RFC 3339, UTC, up to nanoseconds) as seconds since the epoch."""
    last = _last_time
    if rec is last[0]:
        return last[1]
    seconds = _parse_time(rec.get("time"))
    last[0] = rec
    last[1] = seconds
    return seconds


def _parse_time(t) -> float | None:
    if t.__class__ is not str or len(t) < 20 or t[-1] != "Z":
        return None
    head = t[:19]
    whole = _seconds_cache.get(head)
    if whole is None:
        try:
            whole = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return None
        if len(_seconds_cache) > 4096:  # one entry per second seen; keep it small
            _seconds_cache.clear()
        _seconds_cache[head] = whole
    frac = t[20:-1]
    if t[19] == "Z":
        return float(whole)
    if t[19] != "." or not frac.isdigit():
        return None
    return whole + int(frac) / 10 ** len(frac)


# --------------------------------------------------------------------------
# Accessor builders. Each returns the value only when it has the right type.


def _top(key: str, typ: type) -> Getter:
    def get(r: dict):
        v = r.get(key)
        return v if v.__class__ is typ else None

    get.raw_text = typ is str
    return get


def _sub(top: str, key: str, typ: type) -> Getter:
    def get(r: dict):
        d = r.get(top)
        if d.__class__ is dict:
            v = d.get(key)
            if v.__class__ is typ:
                return v
        return None

    get.raw_text = typ is str
    return get


def _sub_number(top: str, key: str) -> Getter:
    def get(r: dict):
        d = r.get(top)
        if d.__class__ is dict:
            v = d.get(key)
            if v.__class__ is float:
                return v
            if v.__class__ is int:
                return float(v)
        return None

    return get


def _memo_on(top: str, compute: Callable[[dict], object]) -> Getter:
    """A field derived from record[top] (a dict), computed once per such object.

    Every rule that reads proc.cmdline on one record sees the same process
    dict; the last one is held (so its id cannot be reused) and compared by
    identity. Records are never changed once built, so the value stays right.
    """
    last_d = None
    last_v = None

    def get(r: dict):
        nonlocal last_d, last_v
        d = r.get(top)
        if d is last_d:
            return last_v
        if d.__class__ is not dict:
            return None
        v = compute(d)
        last_d = d
        last_v = v
        return v

    return get


def _memo_on_process(compute: Callable[[dict], object]) -> Getter:
    return _memo_on("process", compute)


def _argv(p: dict) -> list | None:
    """argv if it is a list of strings (join fails, in C, on anything else)."""
    argv = p.get("argv")
    if argv.__class__ is list:
        try:
            "".join(argv)
        except TypeError:
            return None
        return argv
    return None


def _args(p: dict):
    argv = _argv(p)
    return argv[1:] if argv is not None else None


def _argv0(p: dict):
    argv = _argv(p)
    return argv[0] if argv else None


def _joined(argv):
    """argv as one string, or None unless it is a list of strings."""
    if argv.__class__ is list:
        try:
            return " ".join(argv)
        except TypeError:
            return None
    return None


def _cmdline(p: dict):
    return _joined(p.get("argv"))


def _exe_name(p: dict):
    exe = p.get("exe")
    return exe.rpartition("/")[2] if exe.__class__ is str else None


def _ancestry_items(p: dict, key: str):
    anc = p.get("ancestry")
    if anc.__class__ is not list:
        return None
    out = []
    for a in anc:
        v = a.get(key) if a.__class__ is dict else None
        if v.__class__ is str:
            out.append(v)
    return out


def _pname(p: dict):
    anc = p.get("ancestry")
    if anc.__class__ is list and anc and anc[0].__class__ is dict:
        v = anc[0].get("comm")
        return v if v.__class__ is str else None
    return None


def _detached(p: dict):
    anc = p.get("ancestry")
    ppid = p.get("ppid")
    if anc.__class__ is list and anc and anc[0].__class__ is dict and ppid.__class__ is int:
        return anc[0].get("pid") != ppid
    return None


def _evt_type(r: dict):
    return record_type(r)


def _evt_time(r: dict):
    return record_seconds(r)


def _exec_cmdline(r: dict):
    e = r.get("exec")
    return _joined(e.get("argv")) if e.__class__ is dict else None


def _exit_code(r: dict):
    v = r.get("exit_code")
    return v if v.__class__ is int else None


def _internal(n: dict):
    scope = n.get("scope")
    if scope.__class__ is str:
        return scope != "external"
    return None


# Read by most connect rules (several thresholds each): once per record.
_net_internal = _memo_on("network", _internal)


def _nested(top: str, mid: str, key: str, typ: type) -> Getter:
    """record[top][mid][key] when each level is a dict and the value has type typ."""

    def get(r: dict):
        a = r.get(top)
        if a.__class__ is dict:
            b = a.get(mid)
            if b.__class__ is dict:
                v = b.get(key)
                if v.__class__ is typ:
                    return v
        return None

    get.raw_text = typ is str
    return get


def _nvml(key: str) -> Getter:
    """A figure of the NVML sample on a gpu usage record."""
    return _nested("gpu", "nvml", key, int)


def _status_name(r: dict):
    if r.get("kind") != "status":
        return None
    v = r.get("status")
    return v if v.__class__ is str else None


def _status_survivors(r: dict):
    if r.get("kind") != "status":
        return None
    v = r.get("survivors")
    if v.__class__ is list:
        return len(v)
    if v.__class__ is int:
        return v
    return None


def _tamper_cgroup(key: str, typ: type) -> Getter:
    def get(r: dict):
        t = r.get("tamper")
        if t.__class__ is dict:
            c = t.get("cgroup")
            if c.__class__ is dict:
                v = c.get(key)
                if v.__class__ is typ:
                    return v
        return None

    return get


def _link_relays(r: dict):
    link = r.get("link")
    if link.__class__ is dict and link.get("relays").__class__ is list:
        return len(link["relays"])
    return None


def _link_peer_cmdline(r: dict):
    link = r.get("link")
    if link.__class__ is dict and link.get("peer").__class__ is dict:
        return _cmdline(link["peer"])
    return None


_F = Field
FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        _F("evt.type", STR, "`type`: exec, exit, fork, connect, send, connection, dns, gpu, tamper, blocked, lost; `status` for status records", _evt_type),
        _F("evt.time", FLOAT, "`time`, in seconds since the epoch", _evt_time),
        _F("proc.pid", INT, "`process.pid`", _sub("process", "pid", int)),
        _F("proc.ppid", INT, "`process.ppid` (the parent now)", _sub("process", "ppid", int)),
        _F("proc.uid", INT, "`process.uid`", _sub("process", "uid", int)),
        _F("proc.name", STR, "`process.comm`", _sub("process", "comm", str)),
        _F("proc.exe", STR, "`process.exe`", _sub("process", "exe", str)),
        _F("proc.exe_name", STR, "the last path component of `process.exe`", _memo_on_process(_exe_name)),
        _F("proc.args", LIST, "`process.argv[1:]`", _memo_on_process(_args)),
        _F("proc.argv0", STR, "`process.argv[0]`", _memo_on_process(_argv0)),
        _F("proc.cmdline", STR, "`process.argv` joined with spaces", _memo_on_process(_cmdline)),
        _F("proc.key", STR, "`process.key` (pid:start, unique across pid reuse)", _sub("process", "key", str)),
        _F("proc.ancestors", LIST, "the `comm` of each ancestor, parent first",
           _memo_on_process(lambda p: _ancestry_items(p, "comm"))),
        _F("proc.ancestor_exes", LIST, "the `exe` of each ancestor, parent first",
           _memo_on_process(lambda p: _ancestry_items(p, "exe"))),
        _F("proc.pname", STR, "the parent's `comm` (first ancestor)", _memo_on_process(_pname)),
        _F("proc.detached", BOOL,
           "the parent now (`ppid`) is not the parent at fork (reparented, as by `setsid`, `nohup` or `ssh -f`)",
           _memo_on_process(_detached)),
        _F("agent.id", STR, "`agent.id`", _sub("agent", "id", str)),
        _F("agent.root_pid", INT, "`agent.root_pid`", _sub("agent", "root_pid", int)),
        _F("agent.labels.<key>", STR, "`agent.labels[<key>]`", lambda r: None),  # see field()
        _F("exec.result", STR, "`exec.result` (`ok`, `ENOENT`, ...). A failed exec's `proc.*` fields are the "
           "process as it was, not what it tried to run", _sub("exec", "result", str)),
        _F("exec.filename", STR, "`exec.filename`: the path given to execve (failed execs too)",
           _sub("exec", "filename", str)),
        _F("exec.cmdline", STR, "`exec.argv` joined with spaces: what a failed exec tried to run", _exec_cmdline),
        _F("exit.code", INT, "`exit_code` (of an exit record, or the root's in `agent_finished`)", _exit_code),
        _F("exit.signal", INT, "`signal`: the signal that killed the process (absent if none)", _top("signal", int)),
        _F("net.family", STR, "`network.family` (ipv4, ipv6)", _sub("network", "family", str)),
        _F("net.protocol", STR, "`network.protocol` (tcp, udp, ...)", _sub("network", "protocol", str)),
        _F("net.saddr", ADDR, "`network.saddr`", _sub("network", "saddr", str)),
        _F("net.sport", INT, "`network.sport`", _sub("network", "sport", int)),
        _F("net.daddr", ADDR, "`network.daddr`", _sub("network", "daddr", str)),
        _F("net.dport", INT, "`network.dport`", _sub("network", "dport", int)),
        _F("net.repeats", INT, "`network.repeats` (connect): 0 for a call, N for a summary of N more identical calls",
           _sub("network", "repeats", int)),
        _F("net.result", STR, "`network.result` (`ok`, `EINPROGRESS`, `ECONNREFUSED`, ...)", _sub("network", "result", str)),
        _F("net.scope", STR,
           "`network.scope`: loopback, link_local, metadata, private, shared, multicast, host, external",
           _sub("network", "scope", str)),
        _F("net.internal", BOOL, "`network.scope` is anything but external", _net_internal),
        _F("net.allowlisted", BOOL, "`network.allowlisted`: the destination is on the site's allowlist",
           _sub("network", "allowlisted", bool)),
        _F("payload.text", STR, "`payload.text`: the first bytes written on a new connection, escaped as in events.md",
           _sub("payload", "text", str)),
        _F("payload.length", INT, "`payload.length`: bytes captured (at most 512)", _sub("payload", "length", int)),
        _F("payload.truncated", BOOL, "`payload.truncated`: the call sent more than was captured",
           _sub("payload", "truncated", bool)),
        _F("conn.state", STR, "`connection.state`: established, closed, failed", _sub("connection", "state", str)),
        _F("conn.duration", FLOAT, "`connection.duration_s`: seconds from established to closed",
           _sub_number("connection", "duration_s")),
        _F("dns.query", STR, "`dns.query`: the queried name, lowercase, no trailing dot", _sub("dns", "query", str)),
        _F("dns.qtype", STR, "`dns.qtype`: A, AAAA, TXT, ...", _sub("dns", "qtype", str)),
        _F("gpu.event", STR, "`gpu.event`: milestone (first time a process reached it) or usage (a window's counters)",
           _sub("gpu", "event", str)),
        _F("gpu.milestone", STR, "`gpu.milestone`: open, memory, channel, compute, submit, debug, recon",
           _sub("gpu", "milestone", str)),
        _F("gpu.device", STR, "`gpu.device`: nvidia, amd, drm, accel", _sub("gpu", "device", str)),
        _F("gpu.class", STR, "`gpu.class`: the device node class (nvidiactl, nvidia-uvm, kfd, drm-render, ...)",
           _sub("gpu", "class", str)),
        _F("gpu.op", STR, "`gpu.op`: what the ioctl did (compute, channel, submit, mem, control, ...)",
           _sub("gpu", "op", str)),
        _F("gpu.ioctls", INT, "`gpu.ioctl_count`: GPU ioctls in the usage window", _sub("gpu", "ioctl_count", int)),
        _F("gpu.mem_bytes", INT, "`gpu.mem_bytes`: device memory allocated in the window (as the ioctls say)",
           _sub("gpu", "mem_bytes", int)),
        _F("gpu.sm_util", INT, "`gpu.nvml.sm_util`: NVML per-process SM utilisation, percent", _nvml("sm_util")),
        _F("gpu.used_bytes", INT, "`gpu.nvml.mem_bytes`: NVML per-process GPU memory in use", _nvml("mem_bytes")),
        _F("tamper.kind", STR, "`tamper.kind`: signal, ptrace, cgroup, bpf, write, module", _sub("tamper", "kind", str)),
        _F("tamper.target", STR, "`tamper.target`: agentwatch or agentwatch_parent when the act aims at them",
           _sub("tamper", "target", str)),
        _F("tamper.target_pid", INT, "`tamper.target_pid`: the process signalled, traced or moved",
           _sub("tamper", "target_pid", int)),
        _F("tamper.signal", STR, "`tamper.signal`: SIGTERM, SIGKILL, ...", _sub("tamper", "signal", str)),
        _F("tamper.bpf_cmd", STR, "`tamper.bpf_cmd`: BPF_PROG_LOAD, BPF_PROG_DETACH, ...", _sub("tamper", "bpf_cmd", str)),
        _F("tamper.cgroup_path", STR, "`tamper.cgroup.path`: the cgroup a process was moved to",
           _tamper_cgroup("path", str)),
        _F("tamper.leaves_cgroup", BOOL, "`tamper.cgroup.leaves_agent`: the move takes it out of the agent's cgroup",
           _tamper_cgroup("leaves_agent", bool)),
        _F("tamper.target_scope", STR, "`tamper.target_scope` (ptrace): same_agent, other_agent or outside (in no agent)",
           _sub("tamper", "target_scope", str)),
        _F("tamper.target_agent", STR, "`tamper.target_agent_id` (ptrace): the other agent whose process is traced",
           _sub("tamper", "target_agent_id", str)),
        _F("file.op", STR, "`tamper.file.op` (write): open, rename, link, symlink, truncate, unlink",
           _nested("tamper", "file", "op", str)),
        _F("file.path", STR, "`tamper.file.path` (write): the path written, made absolute", _nested("tamper", "file", "path", str)),
        _F("file.category", STR, "`tamper.file.category` (write): shell_startup, cron, systemd, authorized_keys, ld_preload, "
           "sudoers, init_scripts, modules, audit, agentwatch", _nested("tamper", "file", "category", str)),
        _F("file.result", STR, "`tamper.file.result` (write): ok, or the errno of a failed attempt",
           _nested("tamper", "file", "result", str)),
        _F("file.link_target", STR, "`tamper.file.link_target` (write, symlink): what the link points to",
           _nested("tamper", "file", "link_target", str)),
        _F("module.name", STR, "`tamper.module.name` (module): the module's name, once the kernel loaded it",
           _nested("tamper", "module", "name", str)),
        _F("module.file", STR, "`tamper.module.file` (module, finit_module): the file it was loaded from",
           _nested("tamper", "module", "file", str)),
        _F("module.result", STR, "`tamper.module.result` (module): ok, or the errno of a failed attempt",
           _nested("tamper", "module", "result", str)),
        _F("link.stdin", BOOL, "`link.stdin` (pipe_link): what the peer (the connection's holder) writes reaches "
           "this process's stdin", _sub("link", "stdin", bool)),
        _F("link.stdout", BOOL, "`link.stdout` (pipe_link): what this process writes on stdout or stderr reaches the peer",
           _sub("link", "stdout", bool)),
        _F("link.via", LIST, "`link.via` (pipe_link): what the data passes: pipe, fifo, socket",
           _sub("link", "via", list)),
        _F("link.relays", INT, "the number of `link.relays` (pipe_link): processes between the two",
           _link_relays),
        _F("link.peer.name", STR, "`link.peer.comm` (pipe_link): the process holding the outside connection",
           _nested("link", "peer", "comm", str)),
        _F("link.peer.exe", STR, "`link.peer.exe` (pipe_link)", _nested("link", "peer", "exe", str)),
        _F("link.peer.cmdline", STR, "`link.peer.argv` joined with spaces (pipe_link)", _link_peer_cmdline),
        _F("policy.rule", STR, "`policy.rule` of a blocked record: the policy rule that denied, or default",
           _sub("policy", "rule", str)),
        _F("status.name", STR,
           ("`status` of a status record: agent_started, root_exited, linger_expired, agent_finished, stopped, "
            "watching, contained, survivors_killed, stop_ignored, containment_released"),
           _status_name),
        _F("status.survivors", INT, "the number of `survivors` of a status record (processes still alive)",
           _status_survivors),
    ]
}

LABEL_PREFIX = "agent.labels."
_label_getters: dict[str, Field] = {}


def _label_getter(key: str) -> Getter:
    return _nested("agent", "labels", key, str)


def field(name: str) -> Field | None:
    """The field called `name`, or None. `agent.labels.<key>` is one field per key."""
    f = FIELDS.get(name)
    if f is not None:
        return f if not name.endswith("<key>") else None
    if name.startswith(LABEL_PREFIX) and len(name) > len(LABEL_PREFIX):
        f = _label_getters.get(name)
        if f is None:
            f = Field(name, STR, f"`agent.labels[{name[len(LABEL_PREFIX):]!r}]`", _label_getter(name[len(LABEL_PREFIX):]))
            _label_getters[name] = f
        return f
    return None


def names() -> list[str]:
    return list(FIELDS)


def markdown_table() -> str:
    """The table of docs/rules.md, from this module."""
    lines = ["| field | type | from the record |", "|---|---|---|"]
    for f in FIELDS.values():
        lines.append(f"| `{f.name}` | {f.type} | {f.source} |")
    return "\n".join(lines) + "\n"
