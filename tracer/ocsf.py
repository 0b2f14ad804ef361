"""agentwatch records as OCSF 1.8.0 events (docs/formats.md).

to_ocsf is a pure function of one record: no I/O, no wall clock, no random
ids (an alert's finding uid is a hash of the alert), so the same record
always gives the same event. It never raises: a record it cannot map gets
the Base Event, with the whole record under `unmapped`.

    exec, exit, fork            Process Activity (1007): Launch, Terminate
    connect, send, connection,  Network Activity (4001): Open, Traffic, Close,
      blocked                     Fail, Refuse, Reset
    dns                         DNS Activity (4003): Query
    alert                       Detection Finding (2004): Create
    tamper                      Process Activity (signal: Terminate, ptrace: Open, cgroup: Other);
                                  bpf: Kernel Activity (1003): Invoke
    gpu                         Process Activity: Other ("GPU open", "GPU usage", ...)
    lost                        Application Error (6008): General Error
    status                      Application Lifecycle (6002): Start, Stop, Update, Other
    anything else               Base Event (0): Other

`time` is epoch milliseconds, as OCSF wants; the record's own RFC 3339 time,
nanoseconds and all, is `metadata.original_time`. What has no OCSF place
(the agent with its sandbox and episode, evidence records, payloads, GPU
counters, ...) is kept under `unmapped`. The profiles an event uses are in
`metadata.profiles`; tests/unit/test_formats.py validates every converted
record against the OCSF schema that the ocsf-json-schema package bundles.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from functools import lru_cache

import orjson

from .ecs import (
    PRODUCT,
    PRODUCT_VERSION,
    SEVERITY,
    as_dict,
    as_list,
    command_line,
    is_int,
    plain_tags,
    split_mitre,
)

OCSF_VERSION = "1.8.0"

CATEGORIES = {0: "Uncategorized", 1: "System Activity", 2: "Findings", 4: "Network Activity",
              6: "Application Activity"}
# class_uid -> (caption, category_uid, {activity_id: caption})
CLASSES = {
    0: ("Base Event", 0, {0: "Unknown", 99: "Other"}),
    1003: ("Kernel Activity", 1, {0: "Unknown", 1: "Create", 2: "Read", 3: "Delete", 4: "Invoke", 99: "Other"}),
    1007: ("Process Activity", 1, {0: "Unknown", 1: "Launch", 2: "Terminate", 3: "Open", 4: "Inject",
                                   5: "Set User ID", 99: "Other"}),
    2004: ("Detection Finding", 2, {0: "Unknown", 1: "Create", 2: "Update", 3: "Close", 99: "Other"}),
    4001: ("Network Activity", 4, {0: "Unknown", 1: "Open", 2: "Close", 3: "Reset", 4: "Fail", 5: "Refuse",
                                   6: "Traffic", 7: "Listen", 99: "Other"}),
    4003: ("DNS Activity", 4, {0: "Unknown", 1: "Query", 2: "Response", 6: "Traffic", 99: "Other"}),
    6002: ("Application Lifecycle", 6, {0: "Unknown", 1: "Install", 2: "Remove", 3: "Start", 4: "Stop",
                                        5: "Restart", 6: "Enable", 7: "Disable", 8: "Update", 99: "Other"}),
    6008: ("Application Error", 6, {0: "Unknown", 1: "General Error", 2: "Translation Error", 99: "Other"}),
}
SEVERITY_NAMES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical", 6: "Fatal",
                  99: "Other"}
STATUS_NAMES = {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"}
FINDING_STATUS_NEW = (1, "New")
ACTION_NAMES = {1: "Allowed", 2: "Denied", 3: "Observed", 4: "Modified"}
DISPOSITION_NAMES = {2: "Blocked", 3: "Quarantined", 7: "Custom Action", 15: "Detected", 16: "No Action",
                     27: "Error"}
# An alert's action_result -> (action_id, disposition_id).
ALERT_OUTCOME = {
    "denied": (2, 2),        # the egress policy denied it in the kernel: Denied, Blocked
    "killed": (2, 7),        # SIGKILL sent: Denied, Custom Action
    "frozen": (2, 3),        # the sandbox's cgroup frozen, its processes kept: Denied, Quarantined
    "dry_run": (3, 15),      # --dry-run: Observed, Detected
    "gone": (3, 16),         # it had exited already: Observed, No Action
    "refused": (3, 27),      # agentwatch, its parent or pid 1: Observed, Error
    "failed": (3, 27),
    "no_agent": (3, 27),
}
LAUNCH_FORK, LAUNCH_EXEC = (2, "Fork"), (3, "Exec")
PROTOCOL_NUM = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
IP_VERSIONS = {"ipv4": (4, "Internet Protocol version 4 (IPv4)"), "ipv6": (6, "Internet Protocol version 6 (IPv6)")}
# agentwatch's scope of a destination -> network_scope_id (1 Internal, 2 External, 99 Other).
SCOPE_IDS = {"loopback": 1, "host": 1, "private": 1, "link_local": 1, "metadata": 1, "shared": 1,
             "external": 2, "multicast": 99}
SCOPE_NAMES = {1: "Internal", 2: "External"}
TERMINATING_SIGNALS = {"SIGKILL", "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP"}
LIFECYCLE = {"daemon_started": 3, "daemon_stopped": 4, "stopped": 4, "config_reloaded": 8}
STATUS_FAILED = {"config_error", "control_error", "control_refused"}
STATUS_SEVERITY = {"control_refused": 3, "config_error": 3, "control_error": 2}
LINUX = {"name": "Linux", "type_id": 200, "type": "Linux"}
UNKNOWN_HOST = "unknown"

_COMMON = ("kind", "type", "time", "agent", "process")
KNOWN_KEYS = {
    "exec": _COMMON + ("exec",),
    "exit": _COMMON + ("exit_code", "signal"),
    "fork": _COMMON + ("child",),
    "connect": _COMMON + ("network",),
    "send": _COMMON + ("network", "payload"),
    "connection": _COMMON + ("network", "connection"),
    "dns": _COMMON + ("network", "dns"),
    "blocked": _COMMON + ("network", "policy"),
    "gpu": _COMMON + ("gpu",),
    "tamper": _COMMON + ("tamper",),
    "lost": _COMMON + ("lost", "lost_total"),
}
STATUS_KEYS = ("kind", "status", "time", "agent")
ALERT_KEYS = ("kind", "rule", "title", "severity", "tags", "mitre", "time", "agent", "process", "network",
              "message", "action", "action_result", "action_targets", "action_latency_s", "policy", "count",
              "evidence", "id")
_NET_MAPPED = ("family", "protocol", "saddr", "sport", "daddr", "dport")

_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def to_ocsf(record: dict, *, host: str | None = None) -> dict:
    """One agentwatch record (docs/event.schema.json) as an OCSF 1.8.0 event.

    `host` names the device for records that do not carry it (only the
    daemon's records do, in agent.sandbox.host); without either,
    device.name is "unknown".
    """
    try:
        return _convert(record, host)
    except Exception:  # a record of a shape no mapping expects: the Base Event, which cannot fail
        return _generic(record, host)


# --------------------------------------------------------------------------
# Helpers.


@lru_cache(maxsize=4096)
def _epoch_seconds(prefix: str) -> int:
    d = date(int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]))
    hh, mm, ss = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(prefix)
    return (d.toordinal() - _EPOCH_DAY) * 86400 + hh * 3600 + mm * 60 + ss


def epoch_ns(ts) -> int | None:
    """An RFC 3339 UTC time ("...T02:33:24.531849786Z") as nanoseconds since the epoch; None if it is not one."""
    if not isinstance(ts, str):
        return None
    m = _TIME.fullmatch(ts)
    if m is None:
        return None
    try:
        seconds = _epoch_seconds(m.group(1))
    except ValueError:
        return None
    frac = m.group(2) or ""
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


def epoch_ms(ts) -> int | None:
    ns = epoch_ns(ts)
    return None if ns is None else ns // 1_000_000


def _put(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


class _Event:
    """An OCSF event being built: its class, the profiles it uses, its unmapped part."""

    def __init__(self, rec: dict, host: str | None, class_uid: int, activity_id: int,
                 activity_name: str | None = None, severity_id: int = 1):
        self.rec = rec
        self.profiles = {"host"}
        self.unmapped: dict = {}
        caption, category, activities = CLASSES[class_uid]
        name = activities.get(activity_id, "Other")
        self.out: dict = {
            "class_uid": class_uid,
            "class_name": caption,
            "category_uid": category,
            "category_name": CATEGORIES[category],
            "activity_id": activity_id,
            "activity_name": activity_name if activity_id == 99 and activity_name else name,
            "type_uid": class_uid * 100 + activity_id,
            "type_name": f"{caption}: {name}",
            "severity_id": severity_id,
            "severity": SEVERITY_NAMES.get(severity_id, "Other"),
        }
        ms = epoch_ms(rec.get("time"))
        self.out["time"] = ms if ms is not None else 0
        if ms is None and rec.get("time") is not None:
            self.unmapped["time"] = rec.get("time")
        self.agent = rec.get("agent")
        self.sandbox = as_dict(as_dict(self.agent).get("sandbox"))
        self.host = self.sandbox["host"] if isinstance(self.sandbox.get("host"), str) and self.sandbox["host"] \
            else host

    def status(self, status_id: int, code: str | None = None, detail: str | None = None) -> None:
        self.out["status_id"] = status_id
        self.out["status"] = STATUS_NAMES[status_id] if status_id != 99 or not code else code
        _put(self.out, "status_code", code)
        _put(self.out, "status_detail", detail)

    def finish(self, known) -> dict:
        out, rec = self.out, self.rec
        device: dict = {"type_id": 0, "type": "Unknown"}
        if isinstance(self.host, str) and self.host:
            device["hostname"] = self.host
            device["name"] = self.host
        else:
            device["name"] = UNKNOWN_HOST
        device["os"] = dict(LINUX)
        out["device"] = device
        meta: dict = {"version": OCSF_VERSION,
                      "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": PRODUCT_VERSION}}
        if rec.get("id") is not None:
            meta["uid"] = str(rec["id"])
        if isinstance(rec.get("time"), str):
            meta["original_time"] = rec["time"]
        code = rec.get("type") if rec.get("kind") == "event" else rec.get("status") if rec.get("kind") == "status" \
            else rec.get("rule") if rec.get("kind") == "alert" else None
        if isinstance(code, str):
            meta["event_code"] = code
        meta["profiles"] = sorted(self.profiles)
        labels = as_dict(as_dict(self.agent).get("labels"))
        if labels:
            meta["tags"] = [{"name": str(k), "value": v if isinstance(v, str) else str(v)} for k, v in labels.items()]
        out["metadata"] = meta
        if self.agent is not None:
            self.unmapped["agent"] = self.agent
        extra = {k: v for k, v in rec.items() if k not in known}
        if extra:
            self.unmapped["details"] = extra
        if self.unmapped:
            out["unmapped"] = self.unmapped
        return out

    # ----------------------------------------------------------------
    # Objects.

    def container(self) -> dict | None:
        sb = self.sandbox
        runtime = sb.get("runtime")
        if not (sb.get("container_id") or runtime in ("docker", "kubernetes")):
            return None
        c: dict = {}
        _put(c, "uid", sb.get("container_id") if isinstance(sb.get("container_id"), str) else None)
        _put(c, "name", sb.get("name") if isinstance(sb.get("name"), str) else None)
        if runtime == "docker":
            c["runtime"] = "docker"
        if runtime == "kubernetes":
            c["orchestrator"] = "kubernetes"
            _put(c, "pod_uuid", sb.get("pod_uid") if isinstance(sb.get("pod_uid"), str) else None)
        if not c.get("uid") and not c.get("name"):
            return None
        self.profiles.add("container")
        return c

    def process(self, p: dict, with_context: bool = True) -> dict:
        """A record's process: parent_process and ancestry from its ancestry; its sandbox and container."""
        out = _image(p)
        ancestors = [a for a in as_list(p.get("ancestry")) if isinstance(a, dict)]
        if ancestors:
            out["parent_process"] = _image(ancestors[0])
            out["ancestry"] = [_entity(a) for a in ancestors]
        elif is_int(p.get("ppid")) and p["ppid"] > 0:
            out["parent_process"] = {"pid": p["ppid"]}
        if with_context:
            self.context(out)
        return out

    def context(self, proc: dict) -> None:
        if isinstance(self.sandbox.get("name"), str):
            proc["sandbox"] = self.sandbox["name"]
        c = self.container()
        if c is not None:
            proc["container"] = c

    def process_extras(self, p: dict) -> None:
        extra: dict = {}
        _put(extra, "ppid", p.get("ppid"))
        _put(extra, "argv_truncated", p.get("argv_truncated"))
        if extra:
            self.unmapped["process"] = extra

    def network(self, net: dict) -> None:
        """dst_endpoint, src_endpoint, connection_info; scope, allowlisted, result, ... unmapped."""
        dst = _endpoint(net.get("daddr"), net.get("dport"))
        if dst:
            scope_id = SCOPE_IDS.get(net.get("scope"))
            if scope_id is not None:
                dst["network_scope_id"] = scope_id
                dst["network_scope"] = SCOPE_NAMES.get(scope_id, str(net.get("scope")))
            self.out["dst_endpoint"] = dst
        src = _endpoint(net.get("saddr"), net.get("sport"))
        if src:
            self.out["src_endpoint"] = src
        self.out["connection_info"] = _connection_info(net)
        extra = {k: v for k, v in net.items() if k not in _NET_MAPPED}
        if extra:
            self.unmapped["network"] = extra

    def actor(self, proc: dict | None) -> None:
        if proc is not None:
            self.out["actor"] = {"process": proc}


def _image(p: dict) -> dict:
    """pid, uid (the record's key), name, cmd_line, file and user of a process or an ancestor."""
    out: dict = {}
    _put(out, "pid", p.get("pid") if is_int(p.get("pid")) else None)
    _put(out, "uid", p.get("key") if isinstance(p.get("key"), str) else None)
    _put(out, "name", p.get("comm") if isinstance(p.get("comm"), str) else None)
    _put(out, "cmd_line", command_line(p.get("argv")))
    exe = p.get("exe")
    if isinstance(exe, str) and exe:
        out["file"] = {"name": exe.rsplit("/", 1)[-1] or exe, "path": exe, "type_id": 1, "type": "Regular File"}
    if is_int(p.get("uid")):
        out["user"] = {"uid": str(p["uid"])}
    return out


def _entity(p: dict) -> dict:
    out: dict = {}
    _put(out, "pid", p.get("pid") if is_int(p.get("pid")) else None)
    _put(out, "uid", p.get("key") if isinstance(p.get("key"), str) else None)
    _put(out, "name", p.get("comm") if isinstance(p.get("comm"), str) else None)
    _put(out, "path", p.get("exe") if isinstance(p.get("exe"), str) and p.get("exe") else None)
    return out


def _endpoint(ip, port) -> dict:
    out: dict = {}
    if isinstance(ip, str) and ip:
        out["ip"] = ip
        _put(out, "port", port if is_int(port) else None)
    return out


def _connection_info(net: dict) -> dict:
    info: dict = {"direction_id": 2, "direction": "Outbound"}
    proto = net.get("protocol")
    if isinstance(proto, str) and proto:
        info["protocol_name"] = proto
        _put(info, "protocol_num", PROTOCOL_NUM.get(proto))
    ver = IP_VERSIONS.get(net.get("family"))
    if ver is not None:
        info["protocol_ver_id"], info["protocol_ver"] = ver
    return info


# --------------------------------------------------------------------------
# Record kinds.


def _convert(rec: dict, host: str | None) -> dict:
    kind = rec.get("kind") if isinstance(rec, dict) else None
    if kind == "alert":
        return _alert(rec, host)
    if kind == "status":
        return _status(rec, host)
    if kind == "event":
        etype = rec.get("type")
        if etype in ("exec", "exit", "fork"):
            return _process_activity(rec, host)
        if etype in ("connect", "send", "connection", "blocked"):
            return _network_activity(rec, host)
        if etype == "dns":
            return _dns_activity(rec, host)
        if etype == "tamper":
            return _tamper(rec, host)
        if etype == "gpu":
            return _gpu(rec, host)
        if etype == "lost":
            return _lost(rec, host)
    return _generic(rec, host)


def _process_activity(rec: dict, host: str | None) -> dict:
    etype = rec["type"]
    p = as_dict(rec.get("process"))
    if etype == "exit":
        ev = _Event(rec, host, 1007, 2)
        proc = ev.process(p)
        _put(proc, "terminated_time", ev.out["time"] if rec.get("time") is not None else None)
        ev.out["process"] = proc
        ev.actor(proc)  # a process exiting terminates itself: OCSF's reflexive case
        _put(ev.out, "exit_code", rec.get("exit_code") if is_int(rec.get("exit_code")) else None)
        ev.unmapped["exit"] = {"signal": rec.get("signal")}
        ev.process_extras(p)
        return ev.finish(KNOWN_KEYS["exit"])
    ev = _Event(rec, host, 1007, 1)
    if etype == "fork":
        # The new child, running its parent's image; the actor is the process that forked.
        child = as_dict(rec.get("child"))
        parent = ev.process(p, with_context=False)
        proc = _image(p)
        proc.pop("pid", None)
        proc.pop("uid", None)
        proc = {**({"pid": child["pid"]} if is_int(child.get("pid")) else {}),
                **({"uid": child["key"]} if isinstance(child.get("key"), str) else {}), **proc}
        proc["created_time"] = ev.out["time"]
        proc["parent_process"] = {k: v for k, v in parent.items() if k not in ("parent_process", "ancestry")}
        proc["ancestry"] = [_entity(p)] + [_entity(a) for a in as_list(p.get("ancestry")) if isinstance(a, dict)]
        ev.context(proc)
        ev.out["process"] = proc
        actor = dict(parent)
        ev.context(actor)
        ev.actor(actor)
        ev.out["launch_type_id"], ev.out["launch_type"] = LAUNCH_FORK
        ev.status(1)
        ev.unmapped["fork"] = {"child": rec.get("child")}
        _put(ev.unmapped, "process", {"argv_truncated": p["argv_truncated"]} if "argv_truncated" in p else None)
        return ev.finish(KNOWN_KEYS["fork"])
    # exec: the process with its new image; the actor is its parent (the first ancestor).
    proc = ev.process(p)
    ev.out["process"] = proc
    ancestors = [a for a in as_list(p.get("ancestry")) if isinstance(a, dict)]
    ev.actor(_image(ancestors[0]) if ancestors else proc)
    ev.out["launch_type_id"], ev.out["launch_type"] = LAUNCH_EXEC
    ex = as_dict(rec.get("exec"))
    result = ex.get("result")
    if result == "ok":
        ev.status(1, "ok")
    else:
        ev.status(2, str(result) if result is not None else None,
                  f"{result}: {ex.get('filename')}" if ex.get("filename") is not None else None)
    ev.unmapped["exec"] = rec.get("exec")
    ev.process_extras(p)
    return ev.finish(KNOWN_KEYS["exec"])


def _network_activity(rec: dict, host: str | None) -> dict:
    etype = rec["type"]
    net = as_dict(rec.get("network"))
    if etype == "connect":
        result = net.get("result")
        activity = 1 if result in ("ok", "EINPROGRESS") else 5 if result == "ECONNREFUSED" \
            else 3 if result == "ECONNRESET" else 4
        ev = _Event(rec, host, 4001, activity)
        if result == "ok":
            ev.status(1, "ok")
        elif result == "EINPROGRESS":
            ev.status(99, "EINPROGRESS", "the handshake's outcome comes in connection records")
        else:
            ev.status(2, str(result) if result is not None else None)
    elif etype == "send":
        ev = _Event(rec, host, 4001, 6)
        ev.unmapped["payload"] = rec.get("payload")
    elif etype == "connection":
        conn = as_dict(rec.get("connection"))
        state = conn.get("state")
        ev = _Event(rec, host, 4001, {"established": 1, "closed": 2}.get(state, 4))
        ev.status(2 if state not in ("established", "closed") else 1, str(state) if state is not None else None)
        dur = conn.get("duration_s")
        if isinstance(dur, (int, float)) and not isinstance(dur, bool) and dur >= 0:
            ev.out["duration"] = int(round(dur * 1000))
        ev.unmapped["connection"] = rec.get("connection")
    else:  # blocked: denied by the egress policy in the kernel, before any packet left
        ev = _Event(rec, host, 4001, 5)
        ev.status(2, "denied", "denied by the agent's egress policy")
        _policy(ev, rec.get("policy"))
    p = rec.get("process")
    if isinstance(p, dict):
        ev.actor(ev.process(p))
        ev.process_extras(p)
    ev.network(net)
    return ev.finish(KNOWN_KEYS[etype])


def _policy(ev: _Event, policy) -> None:
    """The egress policy's decision: the security_control profile's action, disposition, policy, firewall_rule."""
    pol = as_dict(policy)
    ev.profiles.add("security_control")
    ev.out["action_id"], ev.out["action"] = 2, ACTION_NAMES[2]
    ev.out["disposition_id"], ev.out["disposition"] = 2, DISPOSITION_NAMES[2]
    p: dict = {"type": "egress"}
    _put(p, "name", pol.get("name") if isinstance(pol.get("name"), str) else None)
    ev.out["policy"] = p
    if isinstance(pol.get("rule"), str) and pol["rule"]:
        rule: dict = {"name": pol["rule"]}
        if isinstance(pol.get("hook"), str):
            rule["condition"] = pol["hook"]
        ev.out["firewall_rule"] = rule
    if policy is not None:
        ev.unmapped["policy"] = policy


def _dns_activity(rec: dict, host: str | None) -> dict:
    ev = _Event(rec, host, 4003, 1)
    question = as_dict(rec.get("dns"))
    q: dict = {}
    if isinstance(question.get("query"), str):
        q["hostname"] = question["query"]
        _put(q, "type", question.get("qtype") if isinstance(question.get("qtype"), str) else None)
        ev.out["query"] = q
    p = rec.get("process")
    if isinstance(p, dict):
        ev.actor(ev.process(p))
        ev.process_extras(p)
    ev.network(as_dict(rec.get("network")))
    ev.unmapped["dns"] = rec.get("dns")
    return ev.finish(KNOWN_KEYS["dns"])


def _tamper(rec: dict, host: str | None) -> dict:
    t = as_dict(rec.get("tamper"))
    kind = t.get("kind")
    p = as_dict(rec.get("process"))
    if kind == "bpf":
        ev = _Event(rec, host, 1003, 4)
        cmd = t.get("bpf_cmd")
        ev.out["kernel"] = {"name": cmd if isinstance(cmd, str) and cmd else "bpf", "type_id": 2,
                            "type": "System Call", "system_call": "bpf"}
        ev.actor(ev.process(p))
    else:
        if kind == "signal":
            activity = 2 if t.get("signal") in TERMINATING_SIGNALS else 99
            name = f"Signal {t.get('signal')}"
        elif kind == "ptrace":
            activity, name = 3, None  # PTRACE_ATTACH/SEIZE: a handle on the process for further actions
        else:
            activity, name = 99, f"Tamper: {kind}"
        ev = _Event(rec, host, 1007, activity, name)
        actor = ev.process(p)
        ev.actor(actor)
        target = t.get("target_pid")
        ev.out["process"] = {"pid": target} if is_int(target) and kind in ("signal", "ptrace") else actor
    ev.process_extras(p)
    ev.unmapped["tamper"] = rec.get("tamper")
    return ev.finish(KNOWN_KEYS["tamper"])


def _gpu(rec: dict, host: str | None) -> dict:
    gpu = as_dict(rec.get("gpu"))
    name = f"GPU {gpu.get('milestone')}" if gpu.get("event") == "milestone" else f"GPU {gpu.get('event')}"
    ev = _Event(rec, host, 1007, 99, name)
    p = as_dict(rec.get("process"))
    proc = ev.process(p)
    ev.out["process"] = proc
    ev.actor(proc)
    ev.process_extras(p)
    ev.unmapped["gpu"] = rec.get("gpu")
    return ev.finish(KNOWN_KEYS["gpu"])


def _lost(rec: dict, host: str | None) -> dict:
    ev = _Event(rec, host, 6008, 1, severity_id=3)
    lost = as_dict(rec.get("lost"))
    counts = [f"{k} {v}" for k, v in lost.items() if is_int(v) and v]
    total = sum(v for v in lost.values() if is_int(v))
    ev.out["message"] = f"{total} events lost" + (f" ({', '.join(counts)})" if counts else "")
    ev.unmapped["lost"] = rec.get("lost")
    ev.unmapped["lost_total"] = rec.get("lost_total")
    return ev.finish(KNOWN_KEYS["lost"])


def _status(rec: dict, host: str | None) -> dict:
    status = rec.get("status")
    activity = LIFECYCLE.get(status, 99)
    ev = _Event(rec, host, 6002, activity, str(status), STATUS_SEVERITY.get(status, 1))
    ev.out["app"] = {"name": PRODUCT, "vendor_name": PRODUCT, "version": PRODUCT_VERSION}
    if status in STATUS_FAILED:
        ev.status(2, str(status))
    if isinstance(rec.get("error"), str):
        ev.out["message"] = rec["error"]
    ev.unmapped["status"] = status
    return ev.finish(STATUS_KEYS)


def finding_uid(rec: dict) -> str:
    """A deterministic uid for an alert without an id: a hash of the alert itself."""
    if rec.get("id") is not None:
        return str(rec["id"])
    try:
        blob = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except Exception:
        blob = repr(rec).encode("utf-8", "surrogatepass")
    return f"{PRODUCT}-{hashlib.sha256(blob).hexdigest()[:32]}"


def _attacks(mitre) -> list[dict]:
    techniques, subs = split_mitre(mitre)
    out = []
    for tid in techniques:
        mine = [s for s in subs if s.startswith(tid + ".")]
        if mine:
            out += [{"technique": {"uid": tid}, "sub_technique": {"uid": s}} for s in mine]
        else:
            out.append({"technique": {"uid": tid}})
    return out


def _evidence(ev: _Event, e: dict) -> dict | None:
    out: dict = {}
    name = e.get("type") if e.get("kind") == "event" else e.get("status") if e.get("kind") == "status" \
        else e.get("rule") if e.get("kind") == "alert" else None
    if isinstance(name, str):
        out["name"] = name
    p = e.get("process")
    if isinstance(p, dict):
        out["process"] = ev.process(p)
    net = e.get("network")
    if isinstance(net, dict):
        dst = _endpoint(net.get("daddr"), net.get("dport"))
        if dst:
            out["dst_endpoint"] = dst
        src = _endpoint(net.get("saddr"), net.get("sport"))
        if src:
            out["src_endpoint"] = src
    dns = as_dict(e.get("dns"))
    if isinstance(dns.get("query"), str):
        q = {"hostname": dns["query"]}
        _put(q, "type", dns.get("qtype") if isinstance(dns.get("qtype"), str) else None)
        out["query"] = q
    if not any(k in out for k in ("process", "dst_endpoint", "src_endpoint", "query")):
        return None
    return out


def _alert(rec: dict, host: str | None) -> dict:
    sev = SEVERITY.get(rec.get("severity"), 0)
    ev = _Event(rec, host, 2004, 1, severity_id=sev)
    out = ev.out
    out["status_id"], out["status"] = FINDING_STATUS_NEW
    out["is_alert"] = True
    _put(out, "message", rec.get("message") if isinstance(rec.get("message"), str) else None)
    if is_int(rec.get("count")) and rec["count"] > 0:
        out["count"] = rec["count"]
    info: dict = {"uid": finding_uid(rec)}
    _put(info, "title", rec.get("title") if isinstance(rec.get("title"), str) else None)
    _put(info, "desc", out.get("message"))
    types = plain_tags(rec)
    if types:
        info["types"] = types
    if isinstance(rec.get("rule"), str):
        info["analytic"] = {"uid": rec["rule"], "name": rec["rule"], "type_id": 1, "type": "Rule"}
    attacks = _attacks(rec.get("mitre"))
    if attacks:
        info["attacks"] = attacks
    evidence = [e for e in as_list(rec.get("evidence")) if isinstance(e, dict)]
    if evidence:
        _put(info, "first_seen_time", epoch_ms(evidence[0].get("time")))
        _put(info, "last_seen_time", epoch_ms(evidence[-1].get("time")))
    out["finding_info"] = info
    # agentwatch acts on what it finds (kills, freezes, denies): a security control, so OCSF
    # asks for the security_control profile, with the attacks duplicated at the top.
    ev.profiles.add("security_control")
    action_id, disposition_id = ALERT_OUTCOME.get(rec.get("action_result"), (3, 15))
    out["action_id"], out["action"] = action_id, ACTION_NAMES[action_id]
    out["disposition_id"], out["disposition"] = disposition_id, DISPOSITION_NAMES[disposition_id]
    if attacks:
        out["attacks"] = attacks
    if "policy" in rec:
        pol = as_dict(rec.get("policy"))
        p: dict = {"type": "egress"}
        _put(p, "name", pol.get("name") if isinstance(pol.get("name"), str) else None)
        out["policy"] = p
        if isinstance(pol.get("rule"), str) and pol["rule"]:
            out["firewall_rule"] = {"name": pol["rule"]}
        ev.unmapped["policy"] = rec.get("policy")
    p = rec.get("process")
    if isinstance(p, dict):
        ev.actor(ev.process(p))
        ev.process_extras(p)
    evidences = [x for x in (_evidence(ev, e) for e in evidence) if x is not None]
    if evidences:
        out["evidences"] = evidences
    alert = {k: rec[k] for k in ("severity", "action", "action_result", "action_targets", "action_latency_s")
             if k in rec}
    ev.unmapped["alert"] = alert
    if isinstance(rec.get("network"), dict):
        extra = {k: v for k, v in rec["network"].items() if k not in _NET_MAPPED}
        if extra:
            ev.unmapped["network"] = extra
    ev.unmapped["evidence"] = rec.get("evidence")
    if isinstance(rec.get("tags"), list):
        ev.unmapped["tags"] = rec["tags"]
    return ev.finish(ALERT_KEYS)


def _generic(rec, host: str | None) -> dict:
    """Base Event (0), Other: the record's time and process where they parse, the rest unmapped."""
    rec = rec if isinstance(rec, dict) else {"value": rec}
    try:
        name = rec.get("type") or rec.get("status") or rec.get("kind")
        ev = _Event(rec, host, 0, 99, str(name) if name is not None else "unknown")
        try:
            p = rec.get("process")
            if isinstance(p, dict):
                ev.actor(ev.process(p))
        except Exception:
            ev.out.pop("actor", None)
            ev.profiles.discard("container")
        return ev.finish(("time", "agent", "id"))
    except Exception:
        return {"class_uid": 0, "category_uid": 0, "activity_id": 99, "type_uid": 99, "severity_id": 1,
                "time": 0, "metadata": {"version": OCSF_VERSION,
                                        "product": {"name": PRODUCT, "vendor_name": PRODUCT,
                                                    "version": PRODUCT_VERSION}},
                "unmapped": {"unconvertible": repr(rec)}}
