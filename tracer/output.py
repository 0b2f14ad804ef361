"""Output sinks: JSON lines for machines, a live table for people.

Both take records from tracer.records, whose strings are already safe to
print (no control characters), so neither can be made to forge a line. The
table escapes its cells once more, for records replayed from a file that
agentwatch did not write.
"""

from __future__ import annotations

import shlex
from typing import BinaryIO, Protocol

import orjson

from .records import safe_text


class Writer(Protocol):
    def write(self, record: dict) -> None: ...
    def flush(self) -> None: ...


class JsonLinesWriter:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def write(self, record: dict) -> None:
        self.stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        self.stream.flush()


# Widths hold the longest value plus a space: HH:MM:SS.mmm, agent-<12 hex>, 7-digit pids, comm (15).
COLUMNS = [("TIME", 13), ("AGENT", 19), ("PID", 8), ("PPID", 8), ("COMM", 16), ("TYPE", 8), ("DETAIL", 0)]


def _detail(rec: dict) -> str:
    kind = rec.get("type")
    if rec.get("kind") == "alert":
        mitre = ",".join(rec.get("mitre") or [])
        return f"{rec['severity'].upper()} {rec['rule']}{f' [{mitre}]' if mitre else ''}: {rec['message']}"
    if rec.get("kind") == "status":
        extra = {k: v for k, v in rec.items() if k not in ("kind", "status", "time", "agent")}
        return f"{rec['status']} {orjson.dumps(extra).decode()}"
    if kind == "exec":
        ex = rec["exec"]
        argv = ex.get("argv", rec["process"]["argv"])
        text = " ".join(shlex.quote(a) for a in argv) or ex["filename"]
        if ex["result"] != "ok":
            text = f"{ex['filename']}: {ex['result']}  [{text}]"
        elif rec["process"]["argv_truncated"]:
            text += " ...(truncated)"
        return text
    if kind == "connect":
        n = rec["network"]
        host = f"[{n['daddr']}]" if ":" in n["daddr"] else n["daddr"]
        return f"{n['protocol']} {host}:{n['dport']} {n['result']}"
    if kind == "exit":
        return f"signal {rec['signal']}" if rec.get("signal") else f"code {rec['exit_code']}"
    if kind == "fork":
        return f"child {rec['child']['pid']}"
    if kind == "lost":
        return "LOST " + ", ".join(f"{k}={v}" for k, v in rec["lost"].items() if v)
    return ""


class TableWriter:
    """One row per record, printed as it comes.

    Fixed column widths rather than tabulate's: tabulate sizes columns from
    all rows at once, and a live table cannot wait for them.
    """

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.stream.write(self._row([name for name, _ in COLUMNS]).encode() + b"\n")

    @staticmethod
    def _row(cells: list[str]) -> str:
        parts = []
        for (_, width), cell in zip(COLUMNS, cells):
            cell = safe_text(str(cell).encode("utf-8", "surrogatepass"))
            if width:
                # A longer value (a user-chosen agent id) is cut, keeping one space.
                cell = cell[: width - 1].ljust(width)
            parts.append(cell)
        return "".join(parts).rstrip()

    def write(self, record: dict) -> None:
        proc = record.get("process") or {}
        agent = record.get("agent") or {}
        cells = [
            record["time"][11:23],
            agent.get("id", "-"),
            proc.get("pid", "-"),
            proc.get("ppid", "-"),
            proc.get("comm", "-"),
            "ALERT" if record.get("kind") == "alert" else record.get("type") or record.get("kind"),
            _detail(record),
        ]
        self.stream.write(self._row(cells).encode() + b"\n")

    def flush(self) -> None:
        self.stream.flush()


class MemoryWriter:
    """Keeps records in a list: for tests, and for callers that post-process."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass
