"""Rules over recorded JSON lines (`agentwatch run --events -o FILE`), as the live run saw them.

The engine takes its time from the records, so the same file always gives
the same alerts, byte for byte.

With jobs > 1 the records are split by agent over worker processes
(forked, each with its own copy of the fresh engine): every rule's state is
per process, lineage or agent, and all of an agent's records (records with
no agent: all of them) go to one worker, in file order. The parent reads
and routes the lines, and writes what the workers return in file order (each
item carries its line number), so the output is the one jobs=1 gives. What
the split cannot see: state that spans agents, namely a by-lineage sequence
whose first step is a process of another agent (or of none) that is an
ancestor of the later step's process, and the MAX_KEYS bound of each rule,
which then holds per worker. Time has to run forward within an agent for
the expiry of stale state to be the same (recordings do).
"""

from __future__ import annotations

import gc
import heapq
import io
import multiprocessing
import os
import stat
import sys
from array import array
from operator import itemgetter
from typing import BinaryIO, Iterator

import orjson

from .output import Writer
from .rules.fields import RECORD_TYPES

# How the JSON writer starts an event: {"kind":"event","type":"exec",... Used
# only to skip, unparsed, records no rule reads; anything else is parsed.
_EVENT_HEAD = b'{"kind":"event","type":"'
_STATUS_HEAD = b'{"kind":"status",'
_ALERT_HEAD = b'{"kind":"alert",'
# How the JSON writer names a record's agent: right after "time", before any
# nested object, so the first occurrence is the record's own.
_AGENT_ID = b'"agent":{"id":"'
# Parsed records are acyclic and freed by reference counting; the cyclic
# collector's passes over young objects only cost time here.
_GC_THRESHOLD = 100_000
# Bytes read at a time: lines are cut from big reads rather than read one by one.
_CHUNK = 1 << 22


class ReplayError(Exception):
    """A line that is not a record: one line, NAME:LINE: what is wrong."""


def replay(stream: BinaryIO, name: str, engine, writer: Writer, show_events: bool, jobs: int = 1) -> int:
    """Feed each record of `stream` to the engine and write its alerts; return the records read.

    Like a live run, lost events are written with or without `show_events`,
    other records only with it. Alerts in the input (a recording made with
    rules on) are skipped: they are rebuilt from the records. jobs > 1:
    split by agent over that many worker processes (see the module's doc).
    """
    threshold = gc.get_threshold()
    gc.set_threshold(_GC_THRESHOLD, *threshold[1:])
    try:
        if jobs > 1:
            count = _replay_jobs(stream, name, engine, writer, show_events, jobs)
        else:
            count = 0
            lineno = 0
            run = _Run(name, engine, show_events)
            write = writer.write
            for lines, tail in _batches(_reader(stream)):
                n, out, error = run.lines(range(lineno + 1, lineno + 1 + len(lines)), lines, tail, write)
                count += n
                lineno += len(lines)
                if error is not None:
                    raise ReplayError(error[1])
    finally:
        gc.set_threshold(*threshold)
    writer.flush()
    return count


def _batches(read) -> Iterator[tuple[list, int]]:
    """The lines that read(n) returns (without their newline), a big read at a time.

    Also, per batch, the position in it of a last line that had no newline
    (the file's end), or -1: an error message quotes the line as it was.
    """
    carry = b""
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        lines = chunk.split(b"\n")
        if carry:
            lines[0] = carry + lines[0]
        carry = lines.pop()
        if lines:
            yield lines, -1
    if carry:
        yield [carry], 0


class _Run:
    """The loop over lines: skip what no rule reads, parse, evaluate, hand on what is written."""

    def __init__(self, name: str, engine, show_events: bool) -> None:
        self.name = name
        self.engine = engine
        self.show_events = show_events
        self.skip = {t.encode() for t in RECORD_TYPES if t not in engine.types and t not in ("lost", "status")}
        self.skip_status = "status" not in engine.types

    def lines(self, linenos, lines: list, tail: int, emit) -> tuple[int, list | None, tuple | None]:
        """Run the lines (numbered by linenos); returns (records read, None, error).

        emit(rec) is called for each record to write, in order; emit None
        collects (line number, record) pairs instead, returned in place of
        None. error: (line number, message) of a line that is not a record;
        the lines after it are not run.
        """
        show_events = self.show_events
        skip, skip_status = self.skip, self.skip_status
        evaluate = self.engine.evaluate
        loads = orjson.loads
        collected = None
        if emit is None:
            collected = []
            append = collected.append
        count = 0
        for i, (lineno, line) in enumerate(zip(linenos, lines)):
            if not show_events:
                if line.startswith(_EVENT_HEAD):
                    if line[24:line.find(b'"', 24, 48)] in skip:
                        count += 1
                        continue
                elif line.startswith(_ALERT_HEAD):
                    continue
                elif skip_status and line.startswith(_STATUS_HEAD):
                    count += 1
                    continue
            try:
                rec = loads(line)
            except orjson.JSONDecodeError:
                if not line.strip():
                    continue
                return count, collected, (lineno, self._bad_json(lineno, line if i == tail else line + b"\n"))
            if rec.__class__ is not dict:
                return count, collected, (lineno, f"{self.name}:{lineno}: not a JSON object")
            kind = rec.get("kind")
            if kind == "alert":
                continue
            count += 1
            if show_events or (kind == "event" and rec.get("type") == "lost"):
                if emit is None:
                    append((lineno, rec))
                else:
                    emit(rec)
            try:
                alerts = evaluate(rec)
            except (TypeError, AttributeError, KeyError, ValueError) as exc:
                return count, collected, (lineno, f"{self.name}:{lineno}: cannot evaluate this record: {exc}")
            for alert in alerts:
                if emit is None:
                    append((lineno, alert))
                else:
                    emit(alert)
        return count, collected, None

    def _bad_json(self, lineno: int, line: bytes) -> str:
        """The message for a line that does not parse, with orjson's words for the line as read (newline and all)."""
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"{self.name}:{lineno}: not a JSON record ({exc})"
        return f"{self.name}:{lineno}: not a JSON record"  # not reached: the line failed without its newline


# --------------------------------------------------------------------------
# Several processes: records split by agent.
#
# From a regular file each worker reads the whole file itself (pread, the page
# cache shares it) and keeps the lines the router gives it: every worker
# routes every line the same way, so nothing but the results crosses a pipe.
# From a pipe (stdin) the parent reads and routes, and sends each worker its
# lines. Either way a worker answers each batch of lines (the same batches in
# every worker) with what to write, and the parent merges the answers by
# line number.


def _replay_jobs(stream: BinaryIO, name: str, engine, writer: Writer, show_events: bool, jobs: int) -> int:
    sys.stdout.flush()  # a forked child flushes inherited std buffers when it ends: leave them empty
    sys.stderr.flush()
    source = _file_source(stream)
    workers = [_Worker(k, jobs, name, engine, show_events, source) for k in range(jobs)]
    count = 0
    try:
        sending = None
        if source is None:  # the parent reads and routes
            router = _Router(jobs)
            sending = _routed(_batches(_reader(stream)), router)
            pending = next(sending, None)
            if pending is None:
                return 0
        while True:
            if sending is not None:
                for w, part in zip(workers, pending):
                    w.send(part)
                pending = next(sending, None)  # the next batch is read and routed while the workers run this one
            results = [w.receive() for w in workers]
            if results[0] is None:  # the end of the file (every worker reads the same batches)
                break
            errors = [r[2] for r in results if r[2] is not None]
            stop = min(errors)[0] if errors else None
            write = writer.write
            for lineno, rec in heapq.merge(*(r[1] for r in results), key=itemgetter(0)):
                if stop is not None and lineno >= stop:
                    break
                write(rec)
            if errors:
                raise ReplayError(min(errors)[1])
            count += sum(r[0] for r in results)
            if sending is not None and pending is None:
                break
    finally:
        for w in workers:
            w.close()
    return count


def _file_source(stream: BinaryIO) -> tuple[int, int] | None:
    """(fd, offset of the next unread byte) of a regular file, or None (a pipe, a terminal, a BytesIO)."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fd, stream.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _reader(stream: BinaryIO):
    return getattr(stream, "read1", None) or stream.read  # read1: what is there, without waiting for more


def _pread_reader(fd: int, offset: int):
    def read(n: int) -> bytes:
        nonlocal offset
        data = os.pread(fd, n, offset)
        offset += len(data)
        return data

    return read


class _Router:
    """Which worker each line goes to: by its agent id, in order of first sighting; no agent: the first worker."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.workers: dict[bytes, int] = {}

    def owners(self, lines: list) -> list[int]:
        workers = self.workers
        jobs = self.jobs
        out = []
        for line in lines:
            at = line.find(_AGENT_ID)
            if at >= 0:
                start = at + 15
                aid = line[start:line.find(b'"', start)]
            elif b'"agent"' in line:
                aid = _agent_of(line)  # written some other way: parse it
            else:
                aid = None
            if aid is None:
                out.append(0)
                continue
            w = workers.get(aid)
            if w is None:
                w = workers[aid] = len(workers) % jobs
            out.append(w)
        return out


def _pick(lines: list, owners: list, first: int, tail: int, k: int) -> tuple[list, list, int]:
    """Worker k's share of a batch: (line numbers, lines, index of an unterminated last line or -1)."""
    linenos, mine = [], []
    for i, w in enumerate(owners):
        if w == k:
            linenos.append(first + 1 + i)
            mine.append(lines[i])
    t = len(mine) - 1 if tail >= 0 and owners and owners[-1] == k else -1
    return linenos, mine, t


def _routed(batches, router: _Router):
    """Per batch, each worker's share as sent down its pipe: (line numbers, joined lines, count, tail)."""
    lineno = 0
    for lines, tail in batches:
        owners = router.owners(lines)
        parts = []
        for k in range(router.jobs):
            linenos, mine, t = _pick(lines, owners, lineno, tail, k)
            parts.append((array("Q", linenos).tobytes(), b"\n".join(mine), len(mine), t))
        lineno += len(lines)
        yield parts


def _agent_of(line: bytes) -> bytes | None:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    agent = rec.get("agent") if rec.__class__ is dict else None
    aid = agent.get("id") if agent.__class__ is dict else None
    return aid.encode() if aid.__class__ is str else None


class _Worker:
    """A forked process with its own engine: lines in, (line number, record to write) pairs out."""

    def __init__(self, k: int, jobs: int, name: str, engine, show_events: bool, source) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_work, args=(child, k, jobs, name, engine, show_events, source), daemon=True)
        self.proc.start()
        child.close()

    def send(self, part: tuple) -> None:
        self.conn.send(part)

    def receive(self) -> tuple | None:
        try:
            result = self.conn.recv()
        except EOFError:
            raise ReplayError(f"a replay worker ended (exit code {self.proc.exitcode})") from None
        if result is not None and result[0] == "crash":
            raise ReplayError(f"a replay worker failed: {result[1]}")
        return result

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _work(conn, k: int, jobs: int, name: str, engine, show_events: bool, source) -> None:
    gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
    run = _Run(name, engine, show_events)
    try:
        if source is not None:
            router = _Router(jobs)
            lineno = 0
            for lines, tail in _batches(_pread_reader(*source)):
                linenos, mine, t = _pick(lines, router.owners(lines), lineno, tail, k)
                lineno += len(lines)
                result = run.lines(linenos, mine, t, None)
                conn.send(result)
                if result[2] is not None:
                    break
            conn.send(None)
            conn.recv()  # the parent's goodbye
        else:
            while True:
                part = conn.recv()
                if part is None:
                    break
                numbers, blob, n, tail = part
                linenos = array("Q")
                linenos.frombytes(numbers)
                conn.send(run.lines(linenos, blob.split(b"\n") if n else [], tail, None))
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        pass
    except Exception as exc:  # noqa: BLE001  (a bug: the parent says so rather than hang)
        try:
            conn.send(("crash", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)
