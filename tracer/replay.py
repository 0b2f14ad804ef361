"""Rules over recorded JSON lines (`agentwatch run --events -o FILE`), as the live run saw them.

The engine takes its time from the records, so the same file always gives
the same alerts, byte for byte.

With jobs > 1 the records are split by agent over worker processes
(forked, each with its own copy of the fresh engine): every rule's state is
per process, lineage or agent, and all of an agent's records (records with
no agent: all of them) go to one worker, in file order. The workers' answers
carry line numbers and the parent writes them in file order, so the output
is the one jobs=1 gives. What the split cannot see: state that spans agents,
namely a by-lineage sequence whose first step is a process of another agent
(or of none) that is an ancestor of the later step's process, and the
MAX_KEYS bound of each rule, which then holds per worker. Time has to run
forward within an agent for the expiry of stale state to be the same
(recordings do).
"""

from __future__ import annotations

import gc
import heapq
import io
import multiprocessing
import os
import re
import stat
import sys
from array import array
from itertools import islice
from operator import itemgetter
from typing import BinaryIO, Iterable

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
# Lines per batch that a worker answers at once (--jobs): what is written waits for at most this many.
_BATCH = 4096


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
            # Line by line from the buffered stream: each line is parsed while it is still in
            # the cache (cutting big reads into lists of lines first measured slower).
            count, _, error = _Run(name, engine, show_events).lines(enumerate(stream, 1), writer.write)
            if error is not None:
                raise ReplayError(error[1])
    finally:
        gc.set_threshold(*threshold)
    writer.flush()
    return count


class _Run:
    """The loop over lines: skip what no rule reads, parse, evaluate, hand on what is written."""

    def __init__(self, name: str, engine, show_events: bool) -> None:
        self.name = name
        self.engine = engine
        self.show_events = show_events
        self.skip = {t.encode() for t in RECORD_TYPES if t not in engine.types and t not in ("lost", "status")}
        self.skip_status = "status" not in engine.types
        self.last = None
        # Types that rules read only when they hold one of some texts (Engine.needed_text): a
        # line without a backslash (every string in it written as is) and without any of them
        # quoted is skipped unparsed, as a connection record that is not "established" is.
        self.needed = {t.encode(): re.compile(b"|".join(re.escape(orjson.dumps(v)) for v in sorted(texts))).search
                       for t, texts in engine.needed_text.items() if texts}

    def lines(self, numbered: Iterable, emit, owner=None, me: int = 0) -> tuple[int, list | None, tuple | None]:
        """Run (line number, line as read) pairs; returns (records read, collected, error).

        emit(rec) is called for each record to write, in order; with emit
        None the (line number, record) pairs are collected and returned
        instead. error: (line number, message) of a line that is not a
        record; the lines after it are not run. owner: a worker's router
        (_Router.owner): only the lines owner() gives to worker `me` are
        run, the skipped ones are not routed and worker 0 counts them (every
        worker skips the same lines, so the routing is still the same in
        all). self.last: the number of the last line taken from `numbered`.
        """
        show_events = self.show_events
        skip, skip_status, needed = self.skip, self.skip_status, self.needed
        evaluate = self.engine.evaluate
        loads = orjson.loads
        collected = None
        if emit is None:
            collected = []
            append = collected.append
        count = 0
        counts_skipped = 1 if owner is None or me == 0 else 0
        lineno = None
        for lineno, line in numbered:
            if not show_events:
                if line.startswith(_EVENT_HEAD):
                    t = line[24:line.find(b'"', 24, 48)]
                    if t in skip:
                        count += counts_skipped
                        continue
                    has_text = needed.get(t)
                    if has_text is not None and has_text(line) is None and b"\\" not in line:
                        count += counts_skipped
                        continue
                elif line.startswith(_ALERT_HEAD):
                    continue
                elif skip_status and line.startswith(_STATUS_HEAD):
                    count += counts_skipped
                    continue
            if owner is not None and owner(line) != me:
                continue
            try:
                rec = loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.strip():
                    continue
                return count, collected, (lineno, f"{self.name}:{lineno}: not a JSON record ({exc})")
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
        self.last = lineno
        return count, collected, None


# --------------------------------------------------------------------------
# Several processes: records split by agent.
#
# From a regular file each worker reads the whole file itself (its own open
# file, the page cache shares the pages) and keeps the lines the router gives
# it: every worker routes every line the same way, so nothing but the results
# crosses a pipe. From a pipe (stdin) the parent reads and routes, and sends
# each worker its lines. Either way a worker answers each batch of _BATCH
# lines (the same batches in every worker) with what to write, and the
# parent merges the answers by line number. (The parent routing for every
# worker from a file measured slower on two CPUs: it competes with them.)


def _replay_jobs(stream: BinaryIO, name: str, engine, writer: Writer, show_events: bool, jobs: int) -> int:
    sys.stdout.flush()  # a forked child flushes inherited std buffers when it ends: leave them empty
    sys.stderr.flush()
    source = _file_source(stream)
    workers = [_Worker(k, jobs, name, engine, show_events, source) for k in range(jobs)]
    count = 0
    try:
        sending = None
        if source is None:  # the parent reads and routes
            sending = _routed(stream, _Router(jobs))
            pending = next(sending, None)
        while True:
            if sending is not None:
                if pending is None:
                    break
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
    finally:
        for w in workers:
            w.close()
    return count


def _file_source(stream: BinaryIO) -> tuple[int, int] | None:
    """(fd, offset of the next unread byte) of a regular file, or None (a pipe, a terminal, a BytesIO)."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not os.path.exists(f"/proc/self/fd/{fd}"):
            return None
        return fd, stream.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class _Router:
    """Which worker each line goes to: by its agent id, in order of first sighting; no agent: the first worker."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.workers: dict[bytes, int] = {}

    def owner(self, line: bytes) -> int:
        at = line.find(_AGENT_ID)
        if at >= 0:
            start = at + 15
            aid = line[start:line.find(b'"', start)]
        elif b'"agent"' in line:
            aid = _agent_of(line)  # written some other way: parse it
            if aid is None:
                return 0
        else:
            return 0
        w = self.workers.get(aid)
        if w is None:
            w = self.workers[aid] = len(self.workers) % self.jobs
        return w

    def owners(self, lines: list) -> list[int]:
        return [self.owner(line) for line in lines]


def _agent_of(line: bytes) -> bytes | None:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    agent = rec.get("agent") if rec.__class__ is dict else None
    aid = agent.get("id") if agent.__class__ is dict else None
    return aid.encode() if aid.__class__ is str else None


def _routed(stream: BinaryIO, router: _Router):
    """Per batch of the stream, each worker's share to send: (line numbers, line lengths, the lines joined)."""
    jobs = router.jobs
    numbered = enumerate(stream, 1)
    while True:
        numbers = [array("Q") for _ in range(jobs)]
        lengths = [array("Q") for _ in range(jobs)]
        mine: list[list] = [[] for _ in range(jobs)]
        n = 0
        for lineno, line in islice(numbered, _BATCH):
            n += 1
            w = router.owner(line)
            numbers[w].append(lineno)
            lengths[w].append(len(line))
            mine[w].append(line)
        if not n:
            return
        yield [(numbers[k].tobytes(), lengths[k].tobytes(), b"".join(mine[k])) for k in range(jobs)]


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
            fd, offset = source
            with open(f"/proc/self/fd/{fd}", "rb") as f:  # an open file of its own: its own offset
                f.seek(offset)
                numbered = enumerate(f, 1)
                owner = _Router(jobs).owner
                end = _BATCH  # the number of the last line of the batch
                while True:
                    result = run.lines(islice(numbered, _BATCH), None, owner, k)
                    conn.send(result)
                    if result[2] is not None or run.last != end:  # an error, or the end of the file
                        break
                    end += _BATCH
            conn.send(None)
            conn.recv()  # the parent's goodbye
        else:
            while True:
                part = conn.recv()
                if part is None:
                    break
                numbers, lengths, blob = part
                linenos, sizes = array("Q"), array("Q")
                linenos.frombytes(numbers)
                sizes.frombytes(lengths)
                lines, at = [], 0
                for n in sizes:
                    lines.append(blob[at:at + n])
                    at += n
                conn.send(run.lines(zip(linenos, lines), None))
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
