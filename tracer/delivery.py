"""Deliver: the record format (json, ecs, ocsf) and where records go (the main stream and sinks).

`run`, `watch`, `replay` and the daemon differ only in where records come
from; this module builds, from the same words everywhere (`--format`,
`--output`, `--sink SPEC`; the daemon's `format:`, `output:`, `sinks:`), the
one Writer (tracer.output) the pipeline writes to:

- the main stream (standard output or the output file) gets every record,
  as today, in the chosen format;
- each sink (tracer.sinks) gets the same records in the same format. Sinks
  on the network never block the caller: the BPF drain hands a record to a
  queue (syslog) or a spool on disk (HTTP) and goes on.

What a sink drops is told as a `sink_dropped` status record on the other
outputs (SinkSet), counted in its stats and in Prometheus
(agentwatch_sink_*), and, at exit, on stderr with what still waits in an
HTTP spool for the next run.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack
from typing import BinaryIO, Callable
from urllib.parse import urlsplit

import orjson

from .output import JsonLinesWriter, TableWriter
from .sinks import SPEC_HELP, SinkSet, WriterSink, _spec_parts, parse_sink, parse_syslog_target

FORMATS = ("json", "ecs", "ocsf")  # machine formats; "table" is for people and has no conversion

Encode = Callable[[dict], bytes]


class DeliveryError(ValueError):
    """A bad format or sink spec, in one line."""


def encoder(fmt: str, host: str | None = None) -> Encode:
    """record -> one JSON line (without the newline) in fmt."""
    if fmt == "json":
        return orjson.dumps
    if fmt == "ecs":
        from .ecs import to_ecs  # noqa: PLC0415

        return lambda record: orjson.dumps(to_ecs(record, host=host))
    if fmt == "ocsf":
        from .ocsf import to_ocsf  # noqa: PLC0415

        return lambda record: orjson.dumps(to_ocsf(record, host=host))
    raise DeliveryError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


class EncodedLinesWriter(JsonLinesWriter):
    """JSON lines as encode writes them: agentwatch's own records, ECS or OCSF."""

    def __init__(self, stream: BinaryIO, encode: Encode):
        super().__init__(stream)
        self.encode = encode

    def write(self, record: dict) -> None:
        self.stream.write(self.encode(record) + b"\n")


def split_format(spec: str) -> tuple[str, str | None]:
    """A sink's own `format=` option taken out of its spec: (the spec without it, the format or None).

    `file:/var/log/aw/ecs.jsonl?format=ecs&keep=5` writes ECS to that file
    whatever --format the main stream has.
    """
    head, sep, query = spec.partition("?")
    if not sep:
        return spec, None
    fmt = None
    kept = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if name == "format" and eq:
            if fmt is not None:
                raise DeliveryError(f"sink {spec!r}: option 'format' given twice")
            if value not in FORMATS:
                raise DeliveryError(f"sink {spec!r}: format: {value!r} is not one of {', '.join(FORMATS)}")
            fmt = value
        else:
            kept.append(part)
    return (f"{head}?{'&'.join(kept)}" if kept else head), fmt


def check_sink(spec: str) -> None:
    """Raise DeliveryError for a spec parse_sink would refuse, without opening or starting anything."""
    spec, _ = split_format(spec)
    try:
        kind, target, opts, _ = _spec_parts(spec)
        if kind == "syslog":
            parse_syslog_target(target)
        elif kind == "http":
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{target!r} is not an http:// or https:// URL")
            if "spool_dir" not in opts:
                raise ValueError("needs spool=DIR (the directory where records wait on disk)")
    except ValueError as exc:
        text = str(exc)
        raise DeliveryError(text if text.startswith("sink ") else f"sink {spec!r}: {text}") from None


def default_host(fmt: str) -> str | None:
    """The host name ECS and OCSF records get when they do not carry one (run, watch, replay)."""
    return socket.gethostname() if fmt in ("ecs", "ocsf") else None


def build_writer(stack: ExitStack, stream: BinaryIO | None, fmt: str, sink_specs: tuple[str, ...] = (),
                 host: str | None = None, report: Callable[[str], None] | None = None, close_timeout_s: float = 5.0,
                 metrics=None):
    """The Writer over the main stream (None: none) and the sinks of sink_specs, all in fmt.

    fmt "table" applies to the main stream; sinks then get agentwatch's JSON. A sink's
    own `format=` option wins over fmt for it.
    The sinks are closed when stack unwinds (within close_timeout_s in all);
    report(line) gets one line per sink that still holds or lost records then.
    """
    machine_fmt = fmt if fmt in FORMATS else "json"
    encode = encoder(machine_fmt, host)
    main = None
    if stream is not None:
        main = TableWriter(stream) if fmt == "table" else (
            JsonLinesWriter(stream) if fmt == "json" else EncodedLinesWriter(stream, encode))
    if not sink_specs:
        if main is None:
            raise DeliveryError("no output and no sink")
        return main
    sinks = [WriterSink(main, name="output")] if main is not None else []
    try:
        for spec in sink_specs:
            bare, own = split_format(spec)
            sinks.append(parse_sink(bare, encode=encode if own is None else encoder(own, host)))
    except ValueError as exc:
        for s in sinks:
            s.close(0)
        raise DeliveryError(str(exc)) from None
    sinkset = SinkSet(sinks)
    if metrics is not None:
        metrics.sinks_from(sinkset.stats)

    def close() -> None:
        late = sinkset.close(close_timeout_s)
        if report is None:
            return
        for line in closing_report(sinkset.stats(), late):
            report(line)

    stack.callback(close)
    return sinkset


def closing_report(stats: dict[str, dict], late_notices: list[dict]) -> list[str]:
    """Lines for stderr at exit: what each sink still holds (a spool for the next run) or lost."""
    lines = []
    for name, st in stats.items():
        if st.get("kind") == "writer":
            continue
        dropped = st.get("dropped", 0)
        if st.get("kind") == "http" and st.get("spooled_records"):
            lines.append(f"{name}: {st['spooled_records']} records wait in {st.get('spool_dir')} "
                         f"(the next run with this spool sends them)")
        if dropped:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted((st.get("dropped_by_reason") or {}).items()))
            lines.append(f"{name}: {dropped} records dropped ({reasons}); last error: {st.get('last_error')}")
    for notice in late_notices:  # drops while closing that no sink could be told of
        if not any(notice["sink"] in line for line in lines):
            lines.append(f"{notice['sink']}: {notice['dropped']} records dropped while closing ({notice['reason']})")
    return lines


__all__ = ["FORMATS", "SPEC_HELP", "DeliveryError", "EncodedLinesWriter", "build_writer", "check_sink",
           "closing_report", "default_host", "encoder", "split_format"]
