"""The daemon's config file (YAML) to a DaemonConfig; errors name the file, the line and the field.

    control:
      socket: /run/agentwatch/control.sock
      group: agentwatch            # may mark episodes and read alerts (root always may)
      mode: "0660"
    output: /var/log/agentwatch/records.jsonl   # "-": standard output; "none": only the sinks
    format: json                   # json (agentwatch's records) | ecs | ocsf, for the output and the sinks
    sinks:                         # any number, as agentwatch run --sink SPEC (docs/formats.md)
      - syslog:unix:/dev/log
      - http:https://siem.example/ingest?spool=/var/spool/agentwatch/siem&token_file=/etc/agentwatch/token
    events: false                  # true: every event record, not only alerts
    rules: []                      # rules files or directories; none: agentwatch's rules/
    state: /run/agentwatch/state     # a directory: one small file per sandbox
    docker_socket: /var/run/docker.sock
    internal_cidrs: []
    allow_dests: []
    alert_rate: 20/60              # at most 20 alerts per rule and sandbox a minute into the output; "off"
    metrics: 127.0.0.1:9464        # Prometheus metrics (default: none)
    sandboxes:
      - match: [system.slice/docker-*.scope, docker/*]
        runtime: docker
        policy: /etc/agentwatch/rl-sandbox.yaml
        on_alert: kill_agent       # rule | report | kill_process | kill_agent | freeze_agent
        min_severity: critical
        labels: {pool: rollout}

Everything is checked before anything is loaded into the kernel, and the
first problem raises ConfigError with `file:line: field: what`. A policy
file named here is parsed too, so its errors surface the same way.
"""

from __future__ import annotations

import grp
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .rules.parser import RulesError, YList, YMap, load_document
from .sandboxes import RUNTIMES, Pattern, PatternError, SandboxClass

DEFAULT_PATH = "/etc/agentwatch/agentwatch.yaml"
DEFAULT_SOCKET = "/run/agentwatch/control.sock"
DEFAULT_STATE = "/run/agentwatch/state"
ON_ALERT = ("rule", "report", "kill_process", "kill_agent", "freeze_agent")
SEVERITIES = ("info", "low", "medium", "high", "critical")
_TOP = ("control", "output", "events", "rules", "state", "docker_socket", "internal_cidrs", "allow_dests",
        "sandboxes", "max_sandboxes", "alert_rate", "metrics", "format", "sinks")
_CONTROL = ("socket", "group", "mode")
_SANDBOX = ("match", "runtime", "policy", "on_alert", "min_severity", "labels", "dry_run")


class ConfigError(ValueError):
    """One line: `file:line: field: what is wrong`."""


@dataclass(frozen=True)
class ControlConfig:
    socket: str = DEFAULT_SOCKET
    group: str | None = None
    gid: int | None = None
    mode: int = 0o660


@dataclass(frozen=True)
class DaemonConfig:
    file: str
    sandboxes: tuple[SandboxClass, ...]
    control: ControlConfig = ControlConfig()
    output: str = "-"
    events: bool = False
    rules: tuple[str, ...] = ()
    state: str = DEFAULT_STATE
    docker_socket: str = "/var/run/docker.sock"
    internal_cidrs: tuple[str, ...] = ()
    allow_dests: tuple[str, ...] = ()
    max_sandboxes: int = 4096
    policies: dict = field(default_factory=dict)  # policy file -> tracer.policy.Policy
    alert_rate: tuple[int, float] | None = (20, 60.0)  # per rule and sandbox, into the output (tracer/ratelimit.py)
    metrics: str | None = None                          # ADDR:PORT for Prometheus
    format: str = "json"                                # json | ecs | ocsf (tracer/delivery.py)
    sinks: tuple[str, ...] = ()                         # sink specs (tracer/sinks.py parse_sink)


class _Doc:
    def __init__(self, file: str):
        self.file = file

    def fail(self, line: int, where: str, what: str) -> "NoReturn":  # noqa: F821
        raise ConfigError(f"{self.file}:{line}: {where}: {what}")

    @staticmethod
    def line(node, key: str) -> int:
        if isinstance(node, YMap) and key in node.key_line:
            return node.value_line.get(key, node.key_line[key])
        return node.where.line if hasattr(node, "where") else 1

    def keys(self, node: YMap, allowed: tuple[str, ...], where: str) -> None:
        for key in node:
            if key not in allowed:
                self.fail(node.key_line[key], f"{where}{key}", f"unknown key (one of {', '.join(allowed)})")

    def text(self, node: YMap, key: str, where: str, default=None) -> str | None:
        if key not in node:
            return default
        value = node[key]
        if not isinstance(value, str) or not value:
            self.fail(self.line(node, key), f"{where}{key}", "must be non-empty text")
        return value

    def flag(self, node: YMap, key: str, where: str, default: bool = False) -> bool:
        if key not in node:
            return default
        if not isinstance(node[key], bool):
            self.fail(self.line(node, key), f"{where}{key}", "must be true or false")
        return node[key]

    def texts(self, node: YMap, key: str, where: str) -> tuple[str, ...]:
        if key not in node:
            return ()
        value = node[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(self.line(node, key), f"{where}{key}", "must be text or a list of text")
        return tuple(value)


def parse(text: str, file: str, base: Path | None = None) -> DaemonConfig:
    """A DaemonConfig from YAML text; relative policy and rules paths are taken from base (the file's folder)."""
    base = base or Path(file).resolve().parent
    d = _Doc(file)
    try:
        doc, first_line = load_document(text, file)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None
    if doc is None:
        raise ConfigError(f"{file}:1: config: the file is empty (it needs at least `sandboxes:`)")
    if not isinstance(doc, YMap):
        d.fail(first_line, "config", "the config is a mapping (control, output, sandboxes, ...)")
    d.keys(doc, _TOP, "")

    control = ControlConfig()
    if "control" in doc:
        c = doc["control"]
        if not isinstance(c, YMap):
            d.fail(d.line(doc, "control"), "control", "must be a mapping (socket, group, mode)")
        d.keys(c, _CONTROL, "control.")
        group = d.text(c, "group", "control.")
        gid = None
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                d.fail(d.line(c, "group"), "control.group", f"no such group {group!r} on this host")
        mode = 0o660
        if "mode" in c:
            raw = c["mode"]
            try:
                mode = int(str(raw), 8)
            except ValueError:
                mode = -1
            if not 0 <= mode <= 0o777:
                d.fail(d.line(c, "mode"), "control.mode", f"{raw!r} is not an octal file mode like \"0660\"")
        socket = d.text(c, "socket", "control.", DEFAULT_SOCKET)
        if not socket.startswith("/"):
            d.fail(d.line(c, "socket"), "control.socket", "must be an absolute path")
        control = ControlConfig(socket, group, gid, mode)

    for key in ("internal_cidrs", "allow_dests"):
        for cidr in d.texts(doc, key, ""):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                d.fail(d.line(doc, key), key, f"{cidr!r} is not a CIDR")

    max_sandboxes = doc.get("max_sandboxes", 4096)
    if not isinstance(max_sandboxes, int) or isinstance(max_sandboxes, bool) or not 1 <= max_sandboxes <= 65536:
        d.fail(d.line(doc, "max_sandboxes"), "max_sandboxes", "must be a whole number from 1 to 65536")

    items = doc.get("sandboxes")
    if not isinstance(items, YList) or not items:
        d.fail(d.line(doc, "sandboxes") if "sandboxes" in doc else doc.where.line, "sandboxes",
               "needs a list of at least one entry with `match:`")
    classes, policies = [], {}
    for i, (item, line) in enumerate(zip(items, items.item_line)):
        where = f"sandboxes[{i}]."
        if not isinstance(item, YMap):
            d.fail(line, f"sandboxes[{i}]", "must be a mapping with `match:`")
        d.keys(item, _SANDBOX, where)
        texts = d.texts(item, "match", where)
        if not texts:
            d.fail(line, f"{where}match", "needs at least one cgroup path pattern")
        patterns = []
        for t in texts:
            try:
                patterns.append(Pattern.parse(t))
            except PatternError as exc:
                d.fail(d.line(item, "match"), f"{where}match", f"{t!r}: {exc}")
        runtime = d.text(item, "runtime", where)
        if runtime is not None and runtime not in RUNTIMES:
            d.fail(d.line(item, "runtime"), f"{where}runtime", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
        on_alert = d.text(item, "on_alert", where, "rule")
        if on_alert not in ON_ALERT:
            d.fail(d.line(item, "on_alert"), f"{where}on_alert", f"{on_alert!r} is not one of {', '.join(ON_ALERT)}")
        severity = d.text(item, "min_severity", where, "high")
        if severity not in SEVERITIES:
            d.fail(d.line(item, "min_severity"), f"{where}min_severity",
                   f"{severity!r} is not one of {', '.join(SEVERITIES)}")
        labels = item.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(k, str) and k and isinstance(v, (str, int, float))
                                                   and not isinstance(v, bool) for k, v in labels.items()):
            d.fail(d.line(item, "labels"), f"{where}labels", "must be a mapping of names to text")
        policy = d.text(item, "policy", where)
        if policy is not None:
            policy = str((base / policy).resolve()) if not Path(policy).is_absolute() else policy
            if policy not in policies:
                from .policy import PolicyError, load  # noqa: PLC0415

                try:
                    policies[policy] = load(policy)
                except PolicyError as exc:
                    d.fail(d.line(item, "policy"), f"{where}policy", str(exc))
        classes.append(SandboxClass(tuple(patterns), runtime, policy, on_alert, severity,
                                    {k: str(v) for k, v in labels.items()}, d.flag(item, "dry_run", where), line))

    alert_rate = (20, 60.0)
    if "alert_rate" in doc:
        from .ratelimit import RateError, parse_rate  # noqa: PLC0415

        try:
            alert_rate = parse_rate(str(doc["alert_rate"]))
        except RateError as exc:
            d.fail(d.line(doc, "alert_rate"), "alert_rate", str(exc))
    metrics = d.text(doc, "metrics", "")
    if metrics is not None:
        from .metrics import MetricsError, parse_address  # noqa: PLC0415

        try:
            parse_address(metrics)
        except MetricsError as exc:
            d.fail(d.line(doc, "metrics"), "metrics", str(exc))
    rules = tuple(str((base / r).resolve()) if not Path(r).is_absolute() else r for r in d.texts(doc, "rules", ""))
    output = d.text(doc, "output", "", "-")
    from .delivery import FORMATS, DeliveryError, check_sink  # noqa: PLC0415

    fmt = d.text(doc, "format", "", "json")
    if fmt not in FORMATS:
        d.fail(d.line(doc, "format"), "format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    sinks = d.texts(doc, "sinks", "")
    for i, spec in enumerate(sinks):
        try:
            check_sink(spec)
        except DeliveryError as exc:
            node = doc["sinks"]
            line = node.item_line[i] if isinstance(node, YList) else d.line(doc, "sinks")
            d.fail(line, f"sinks[{i}]", str(exc))
    if output == "none" and not sinks:
        d.fail(d.line(doc, "output"), "output", "none needs at least one sink (sinks:)")
    return DaemonConfig(
        file=file, sandboxes=tuple(classes), control=control, output=output,
        events=d.flag(doc, "events", ""), rules=rules, state=d.text(doc, "state", "", DEFAULT_STATE),
        docker_socket=d.text(doc, "docker_socket", "", "/var/run/docker.sock"),
        internal_cidrs=d.texts(doc, "internal_cidrs", ""), allow_dests=d.texts(doc, "allow_dests", ""),
        max_sandboxes=max_sandboxes, policies=policies, alert_rate=alert_rate, metrics=metrics,
        format=fmt, sinks=sinks,
    )


def load(path: str | Path = DEFAULT_PATH) -> DaemonConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}:1: config: cannot read it: {exc.strerror}") from None
    return parse(text, str(path), path.resolve().parent)
