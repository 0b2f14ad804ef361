"""agentwatch records as Elastic Common Schema 8.x documents (docs/formats.md).

to_ecs is a pure function of one record: no I/O, no wall clock, no random
ids, so the same record always gives the same document. It never raises:
a record it cannot map (an unknown kind or type, a field of an odd shape)
gets the generic mapping, and nothing of a record is dropped. What ECS has
no field for is kept under the custom `agentwatch.*` object, as ECS asks of
custom fields. Strings are copied as they are: agentwatch has already made
them safe text (tracer.records.safe_text).

`agent.*` in ECS is the shipper (Filebeat, Elastic Agent), not the AI agent:
the AI agent is `agentwatch.agent`, agentwatch itself is `observer.*`.

The field names and allowed values come from ECS's own definitions
(generated/ecs/ecs_flat.yml); tests/unit/test_formats.py checks every field
of every converted record against the copy in tests/data/ecs/.
"""

from __future__ import annotations

from importlib import metadata

ECS_VERSION = "8.17.0"

try:
    PRODUCT_VERSION = metadata.version("agentwatch")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    PRODUCT_VERSION = "0.1.0"
PRODUCT = "agentwatch"
EPOCH = "1970-01-01T00:00:00.000000000Z"

# Alert severities on a 1-5 scale, the same numbers as OCSF's severity_id.
SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
LOG_LEVEL = {"info": "info", "low": "notice", "medium": "warning", "high": "error", "critical": "critical"}
MITRE_FRAMEWORK = "MITRE ATT&CK"

# ECS network.transport: IANA keyword names, lowercase.
TRANSPORT = {"icmpv6": "ipv6-icmp"}
IANA_NUMBER = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}

# status -> (event.category, event.type, event.outcome); the closest ECS buckets (docs/formats.md).
STATUS = {
    "agent_started": ("process", "start", None),
    "root_exited": ("process", "end", None),
    "linger_expired": ("process", "info", None),
    "agent_finished": ("process", "end", None),
    "stopped": ("process", "end", None),
    "watching": ("process", "info", None),
    "contained": ("configuration", "change", "success"),
    "survivors_killed": ("process", "end", None),
    "stop_ignored": ("process", "info", None),
    "containment_released": ("configuration", "change", None),
    "daemon_started": ("process", "start", None),
    "daemon_stopped": ("process", "end", None),
    "sandbox_adopted": ("host", "info", None),
    "sandbox_added": ("host", "start", None),
    "sandbox_removed": ("host", "end", None),
    "episode_begun": ("session", "start", None),
    "episode_ended": ("session", "end", None),
    "control_refused": ("api", "denied", "failure"),
    "control_error": ("api", "info", "failure"),
    "config_error": ("configuration", "info", "failure"),
    "config_reloaded": ("configuration", "change", "success"),
}
# Status records that say something went wrong: their severity and log level.
STATUS_SEVERITY = {"control_refused": 3, "config_error": 3, "control_error": 2}

# The keys each record shape maps; anything else goes to agentwatch.details, by its own name.
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
              "evidence")
# The network keys that have an ECS place; the rest (scope, allowlisted, result, ...) stay agentwatch's.
_NET_MAPPED = ("family", "protocol", "saddr", "sport", "daddr", "dport")
_ID_KEYS = ("id",)


def to_ecs(record: dict, *, host: str | None = None) -> dict:
    """One agentwatch record (docs/event.schema.json) as an ECS document.

    `host` names the machine for records that do not carry it (only the
    daemon's records do, in agent.sandbox.host): host.hostname and host.name.
    """
    try:
        return _convert(record, host)
    except Exception:  # a record of a shape no mapping expects: the generic one, which cannot fail
        return _generic(record, host)


# --------------------------------------------------------------------------
# Small helpers, shared with tracer.ocsf.


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value) -> list:
    return value if isinstance(value, list) else []


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_mitre(ids) -> tuple[list[str], list[str]]:
    """MITRE ids to (technique ids, sub-technique ids): T1059.004 gives T1059 and T1059.004."""
    techniques: list[str] = []
    subs: list[str] = []
    for tid in as_list(ids):
        if not isinstance(tid, str) or not tid:
            continue
        base, dot, _ = tid.partition(".")
        if base not in techniques:
            techniques.append(base)
        if dot and tid not in subs:
            subs.append(tid)
    return techniques, subs


def plain_tags(record: dict) -> list[str]:
    """An alert's tags that are not MITRE technique ids."""
    mitre = set(as_list(record.get("mitre")))
    return [t for t in as_list(record.get("tags")) if isinstance(t, str) and t not in mitre]


def command_line(argv) -> str | None:
    args = [a for a in as_list(argv) if isinstance(a, str)]
    return " ".join(args) if args else None


def _put(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


def _label_key(key) -> str:
    # ECS labels are flat keyword values: a dot would make Elasticsearch read an object path.
    return str(key).replace(".", "_")


# --------------------------------------------------------------------------
# Pieces of a document.


def _process(p: dict) -> dict:
    """A record's process (or an ancestor) as ECS process fields."""
    out: dict = {}
    _put(out, "pid", p.get("pid") if is_int(p.get("pid")) else None)
    _put(out, "entity_id", p.get("key"))
    _put(out, "name", p.get("comm"))
    _put(out, "executable", p.get("exe"))
    if isinstance(p.get("argv"), list):
        if p["argv"]:  # an empty array is no value in Elasticsearch
            out["args"] = list(p["argv"])
        out["args_count"] = len(p["argv"])
        _put(out, "command_line", command_line(p["argv"]))
    if is_int(p.get("uid")):
        out["user"] = {"id": str(p["uid"])}
    return out


def _with_parent(proc: dict, ancestry: list, ppid) -> tuple[dict, list]:
    """proc with process.parent from the first ancestor (or the ppid); the other ancestors."""
    ancestors = [a for a in ancestry if isinstance(a, dict)]
    if ancestors:
        proc["parent"] = _process(ancestors[0])
    elif is_int(ppid) and ppid > 0:
        proc["parent"] = {"pid": ppid}
    return proc, ancestors[1:]


def _record_process(rec: dict, aw: dict) -> dict | None:
    p = rec.get("process")
    if not isinstance(p, dict):
        return None
    proc, rest = _with_parent(_process(p), as_list(p.get("ancestry")), p.get("ppid"))
    extra: dict = {}
    _put(extra, "ppid", p.get("ppid"))
    _put(extra, "argv_truncated", p.get("argv_truncated"))
    if rest:
        extra["ancestry"] = rest
    if extra:
        aw["process"] = extra
    return proc


def _fork_child(rec: dict, aw: dict) -> dict | None:
    """fork: process.* is the new child, running its parent's image; process.parent the forker."""
    p = rec.get("process")
    child = as_dict(rec.get("child"))
    if not isinstance(p, dict):
        return None
    proc: dict = {}
    _put(proc, "pid", child.get("pid") if is_int(child.get("pid")) else None)
    _put(proc, "entity_id", child.get("key") if isinstance(child.get("key"), str) else None)
    image = _process(p)
    image.pop("pid", None)
    image.pop("entity_id", None)
    proc.update(image)
    proc["parent"] = _process(p)
    extra: dict = {}
    _put(extra, "argv_truncated", p.get("argv_truncated"))
    ancestors = [a for a in as_list(p.get("ancestry")) if isinstance(a, dict)]
    if ancestors:
        extra["ancestry"] = ancestors
    if extra:
        aw["process"] = extra
    return proc


def _network(net: dict, doc: dict, aw: dict) -> None:
    """destination.*, source.*, network.*; scope, allowlisted, result, ... under agentwatch.network."""
    dest: dict = {}
    if isinstance(net.get("daddr"), str):
        dest["address"] = net["daddr"]
        dest["ip"] = net["daddr"]
    _put(dest, "port", net.get("dport") if is_int(net.get("dport")) else None)
    if dest:
        doc["destination"] = dest
    src: dict = {}
    if isinstance(net.get("saddr"), str):
        src["address"] = net["saddr"]
        src["ip"] = net["saddr"]
    _put(src, "port", net.get("sport") if is_int(net.get("sport")) else None)
    if src:
        doc["source"] = src
    network = doc.setdefault("network", {})
    proto = net.get("protocol")
    if isinstance(proto, str) and proto not in ("unknown", ""):
        network["transport"] = TRANSPORT.get(proto, proto)
        if proto in IANA_NUMBER:
            network["iana_number"] = str(IANA_NUMBER[proto])
    if net.get("family") in ("ipv4", "ipv6"):
        network["type"] = net["family"]
    network["direction"] = "egress"  # host-based view: every record is a connection this host's process made
    extra = {k: v for k, v in net.items() if k not in _NET_MAPPED}
    if extra:
        aw["network"] = extra


def _agent(agent, doc: dict, aw: dict, host: str | None) -> None:
    """labels, container.*, orchestrator.*, host.*; the agent itself under agentwatch.agent."""
    if isinstance(agent, dict):
        aw["agent"] = agent
        labels = {_label_key(k): v if isinstance(v, str) else str(v) for k, v in as_dict(agent.get("labels")).items()}
        if labels:
            doc["labels"] = labels
        sandbox = as_dict(agent.get("sandbox"))
        if isinstance(sandbox.get("host"), str):
            host = sandbox["host"]
        runtime = sandbox.get("runtime")
        if sandbox.get("container_id") or runtime in ("docker", "kubernetes"):
            container: dict = {}
            _put(container, "id", sandbox.get("container_id"))
            _put(container, "name", sandbox.get("name"))
            if isinstance(sandbox.get("image"), str):
                container["image"] = {"name": sandbox["image"]}
            if runtime == "docker":
                container["runtime"] = "docker"
            if container:
                doc["container"] = container
        if runtime == "kubernetes":
            orch: dict = {"type": "kubernetes"}
            resource: dict = {"type": "pod"}
            _put(resource, "id", sandbox.get("pod_uid"))
            orch["resource"] = resource
            doc["orchestrator"] = orch
    elif agent is not None:
        aw["agent"] = agent
    if isinstance(host, str) and host:
        doc["host"] = {"hostname": host, "name": host}


def _event_class(rec: dict) -> tuple[list[str], list[str], str | None, str]:
    """(event.category, event.type, event.outcome, event.action) of an event record."""
    etype = rec.get("type")
    if etype == "exec":
        ok = as_dict(rec.get("exec")).get("result") == "ok"
        return ["process"], ["start"], "success" if ok else "failure", "exec"
    if etype == "exit":
        clean = rec.get("exit_code") == 0 and rec.get("signal") is None
        return ["process"], ["end"], "success" if clean else "failure", "exit"
    if etype == "fork":
        return ["process"], ["start"], "success", "fork"
    if etype == "connect":
        result = as_dict(rec.get("network")).get("result")
        outcome = "success" if result == "ok" else "unknown" if result == "EINPROGRESS" else "failure"
        return ["network"], ["connection", "start"], outcome, "connect"
    if etype == "send":
        return ["network"], ["info"], None, "send"
    if etype == "connection":
        state = as_dict(rec.get("connection")).get("state")
        if state == "established":
            return ["network"], ["connection", "start"], "success", "connection-established"
        if state == "closed":
            return ["network"], ["connection", "end"], "success", "connection-closed"
        return ["network"], ["connection", "end"], "failure", f"connection-{state}"
    if etype == "dns":
        return ["network"], ["protocol"], None, "dns-query"
    if etype == "blocked":
        return ["network"], ["connection", "denied"], "failure", "blocked"
    if etype == "gpu":
        gpu = as_dict(rec.get("gpu"))
        what = gpu.get("milestone") if gpu.get("event") == "milestone" else gpu.get("event")
        return ["process"], ["info"], None, f"gpu-{what}"
    if etype == "tamper":
        t = as_dict(rec.get("tamper"))
        kind = t.get("kind")
        if kind == "write":
            f = as_dict(t.get("file"))
            op = f.get("op")
            outcome = "success" if f.get("result") == "ok" else "failure"
            return ["file"], ["deletion" if op == "unlink" else "change"], outcome, f"tamper-write-{op}"
        if kind == "module":
            outcome = "success" if as_dict(t.get("module")).get("result") == "ok" else "failure"
            return ["driver"], ["start"], outcome, "tamper-module"
        types = {"signal": "access", "ptrace": "access", "cgroup": "change"}
        return ["process"], [types.get(kind, "info")], None, f"tamper-{kind}"
    if etype == "lost":
        return [], [], None, "lost"
    return [], [], None, str(etype) if etype is not None else "event"


def _classify(rec: dict) -> tuple[list[str], list[str], str | None, str]:
    kind = rec.get("kind")
    if kind == "status":
        status = rec.get("status")
        if status in STATUS:
            cat, typ, outcome = STATUS[status]
            return [cat], [typ], outcome, status
        return [], [], None, str(status)
    if kind == "event":
        return _event_class(rec)
    return [], [], None, str(kind)


def _details(rec: dict, known, aw: dict) -> None:
    extra = {k: v for k, v in rec.items() if k not in known and k not in _ID_KEYS}
    if extra:
        aw["details"] = extra


def _base(rec: dict, kind: str, dataset: str, severity: int, level: str) -> tuple[dict, dict]:
    ts = rec.get("time")
    doc: dict = {"@timestamp": ts if isinstance(ts, str) else EPOCH, "ecs": {"version": ECS_VERSION}}
    event: dict = {"kind": kind}
    doc["event"] = event
    if "id" in rec and rec["id"] is not None:
        event["id"] = str(rec["id"])
    event["module"] = PRODUCT
    event["dataset"] = dataset
    event["severity"] = severity
    doc["log"] = {"level": level}
    doc["observer"] = {"vendor": PRODUCT, "product": PRODUCT, "version": PRODUCT_VERSION}
    return doc, event


def _finish(doc: dict, aw: dict) -> dict:
    if not doc.get("network"):
        doc.pop("network", None)
    if aw:
        doc["agentwatch"] = aw
    return doc


# --------------------------------------------------------------------------
# Record kinds.


def _convert(rec: dict, host: str | None) -> dict:
    kind = rec.get("kind") if isinstance(rec, dict) else None
    if kind == "alert":
        return _alert(rec, host)
    if kind == "status":
        return _status(rec, host)
    if kind == "event" and rec.get("type") in KNOWN_KEYS:
        return _event(rec, host)
    return _generic(rec, host)


def _set_class(event: dict, rec: dict) -> None:
    cats, types, outcome, action = _classify(rec)
    if cats:
        event["category"] = cats
    if types:
        event["type"] = types
    event["action"] = action
    if outcome is not None:
        event["outcome"] = outcome


def _event(rec: dict, host: str | None) -> dict:
    etype = rec["type"]
    lost = etype == "lost"
    doc, event = _base(rec, "event", f"{PRODUCT}.events", 3 if lost else 1, "warning" if lost else "info")
    _set_class(event, rec)
    aw: dict = {}
    _agent(rec.get("agent"), doc, aw, host)
    proc = _fork_child(rec, aw) if etype == "fork" else _record_process(rec, aw)
    ts = doc["@timestamp"]
    if proc is not None:
        doc["process"] = proc
        if etype == "exit":
            _put(proc, "exit_code", rec.get("exit_code") if is_int(rec.get("exit_code")) else None)
            proc["end"] = ts
        elif etype == "fork":
            proc["start"] = ts
    if etype == "exit":
        aw["exit"] = {"signal": rec.get("signal")}
    net = rec.get("network")
    if isinstance(net, dict):
        _network(net, doc, aw)
    if etype == "exec":
        aw["exec"] = rec.get("exec")
    elif etype == "send":
        aw["payload"] = rec.get("payload")
    elif etype == "connection":
        conn = as_dict(rec.get("connection"))
        aw["connection"] = rec.get("connection")
        dur = conn.get("duration_s")
        if isinstance(dur, (int, float)) and not isinstance(dur, bool) and dur >= 0:
            event["duration"] = int(round(dur * 1e9))
    elif etype == "dns":
        question = as_dict(rec.get("dns"))
        q: dict = {}
        _put(q, "name", question.get("query"))
        _put(q, "type", question.get("qtype"))
        doc["dns"] = {"type": "query", "question": q} if q else {"type": "query"}
        doc.setdefault("network", {})["protocol"] = "dns"
    elif etype == "blocked":
        policy = as_dict(rec.get("policy"))
        rule: dict = {}
        _put(rule, "name", policy.get("rule") if isinstance(policy.get("rule"), str) else None)
        _put(rule, "ruleset", policy.get("name") if isinstance(policy.get("name"), str) else None)
        if rule:
            doc["rule"] = rule
        aw["policy"] = rec.get("policy")
    elif etype == "gpu":
        aw["gpu"] = rec.get("gpu")
    elif etype == "tamper":
        t = as_dict(rec.get("tamper"))
        written = as_dict(t.get("file")).get("path")
        loaded = as_dict(t.get("module")).get("file")
        path = written if isinstance(written, str) else loaded if isinstance(loaded, str) else None
        if path is not None:
            directory, _, name = path.rpartition("/")
            doc["file"] = {"path": path, "name": name, "directory": directory or "/"}
        aw["tamper"] = rec.get("tamper")
    elif lost:
        aw["lost"] = rec.get("lost")
        aw["lost_total"] = rec.get("lost_total")
    aw["record"] = {"kind": "event", "type": etype}
    _details(rec, KNOWN_KEYS[etype], aw)
    return _finish(doc, aw)


def _status(rec: dict, host: str | None) -> dict:
    status = rec.get("status")
    severity = STATUS_SEVERITY.get(status, 1)
    doc, event = _base(rec, "event", f"{PRODUCT}.status", severity, "warning" if severity >= 3 else "info")
    _set_class(event, rec)
    aw: dict = {}
    _agent(rec.get("agent"), doc, aw, host)
    aw["record"] = {"kind": "status", "status": status}
    _details(rec, STATUS_KEYS, aw)
    return _finish(doc, aw)


def _alert(rec: dict, host: str | None) -> dict:
    sev_word = rec.get("severity")
    doc, event = _base(rec, "alert", f"{PRODUCT}.alerts", SEVERITY.get(sev_word, 0),
                       LOG_LEVEL.get(sev_word, "info"))
    evidence = [e for e in as_list(rec.get("evidence")) if isinstance(e, dict)]
    cats, types, _, action = _classify(evidence[-1]) if evidence else ([], [], None, "alert")
    denied = rec.get("action") == "blocked" or rec.get("action_result") == "denied"
    event["category"] = ["intrusion_detection"] + [c for c in cats if c != "intrusion_detection"]
    event["type"] = ["denied" if denied else "info"] + [t for t in types if t not in ("denied", "info")]
    event["action"] = action
    aw: dict = {}
    _agent(rec.get("agent"), doc, aw, host)
    proc = _record_process(rec, aw)
    if proc is not None:
        doc["process"] = proc
    if isinstance(rec.get("network"), dict):
        _network(rec["network"], doc, aw)
    rule: dict = {}
    _put(rule, "id", rec.get("rule"))
    _put(rule, "name", rec.get("rule"))
    _put(rule, "description", rec.get("title"))
    tags = plain_tags(rec)
    if tags:
        rule["category"] = tags[0]
    rule["ruleset"] = PRODUCT
    doc["rule"] = rule
    _put(doc, "message", rec.get("message") if isinstance(rec.get("message"), str) else None)
    all_tags = [t for t in as_list(rec.get("tags")) if isinstance(t, str)]
    if all_tags:
        doc["tags"] = all_tags
    techniques, subs = split_mitre(rec.get("mitre"))
    if techniques:
        technique: dict = {"id": techniques}
        if subs:
            technique["subtechnique"] = {"id": subs}
        doc["threat"] = {"framework": MITRE_FRAMEWORK, "technique": technique}
    alert = {k: rec[k] for k in ("severity", "action", "action_result", "action_targets", "action_latency_s", "count")
             if k in rec}
    aw["alert"] = alert
    if "policy" in rec:
        aw["policy"] = rec["policy"]
    aw["evidence"] = rec.get("evidence")
    aw["record"] = {"kind": "alert"}
    _details(rec, ALERT_KEYS, aw)
    return _finish(doc, aw)


def _generic(rec, host: str | None) -> dict:
    """Any record: what is surely mappable (time, id, agent, a well-formed process), the rest kept whole."""
    rec = rec if isinstance(rec, dict) else {"value": rec}
    try:
        ts = rec.get("time")
        doc: dict = {"@timestamp": ts if isinstance(ts, str) else EPOCH, "ecs": {"version": ECS_VERSION}}
        event: dict = {"kind": "alert" if rec.get("kind") == "alert" else "event"}
        if rec.get("id") is not None:
            event["id"] = str(rec["id"])
        event["module"] = PRODUCT
        event["dataset"] = f"{PRODUCT}.{'alerts' if event['kind'] == 'alert' else 'events'}"
        action = rec.get("type") or rec.get("status") or rec.get("kind")
        event["action"] = str(action) if action is not None else "unknown"
        event["severity"] = 1
        doc["event"] = event
        doc["log"] = {"level": "info"}
        doc["observer"] = {"vendor": PRODUCT, "product": PRODUCT, "version": PRODUCT_VERSION}
        aw: dict = {}
        try:
            _agent(rec.get("agent"), doc, aw, host)
            proc = _record_process(rec, aw)
            if proc is not None:
                doc["process"] = proc
        except Exception:
            for key in ("labels", "container", "orchestrator", "process"):
                doc.pop(key, None)
            aw = {}
        aw["record"] = {"kind": rec.get("kind"), "type": rec.get("type")} if "type" in rec else {"kind": rec.get("kind")}
        _details(rec, ("time", "agent", "process"), aw)
        doc["agentwatch"] = aw
        return doc
    except Exception:
        return {"@timestamp": EPOCH, "ecs": {"version": ECS_VERSION},
                "event": {"kind": "event", "module": PRODUCT, "dataset": f"{PRODUCT}.events", "action": "unknown"},
                "agentwatch": {"details": {"unconvertible": repr(rec)}}}
