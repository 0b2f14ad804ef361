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
import mmap
import multiprocessing
import os
import queue
import re
import stat
import sys
import threading
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
        # Types that rules read only when they hold one of some texts (Engine.needed_text): a
        # line without a backslash (every string in it written as is) and without any of them
        # quoted is skipped unparsed, as a connection record that is not "established" is.
        self.needed = {t.encode(): re.compile(b"|".join(re.escape(orjson.dumps(v)) for v in sorted(texts))).search
                       for t, texts in engine.needed_text.items() if texts}

    def lines(self, numbered: Iterable, emit) -> tuple[int, list | None, tuple | None]:
        """Run (line number, line as read) pairs; returns (records read, collected, error).

        emit(rec) is called for each record to write, in order; with emit
        None the (line number, record) pairs are collected and returned
        instead. error: (line number, message) of a line that is not a
        record; the lines after it are not run. What no rule reads is
        skipped unparsed (the same test as _routed's).
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
        for lineno, line in numbered:
            if not show_events:
                if line.startswith(_EVENT_HEAD):
                    t = line[24:line.find(b'"', 24, 48)]
                    if t in skip:
                        count += 1
                        continue
                    has_text = needed.get(t)
                    if has_text is not None and has_text(line) is None and b"\\" not in line:
                        count += 1
                        continue
                elif line.startswith(_ALERT_HEAD):
                    continue
                elif skip_status and line.startswith(_STATUS_HEAD):
                    count += 1
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
        return count, collected, None


# --------------------------------------------------------------------------
# Several processes: records split by agent.
#
# The parent reads the lines, skips those no rule reads (counting them) and
# routes the others by agent. From a regular file it sends each worker only
# where its lines are (line numbers, offsets, lengths) and the worker slices
# them out of its own map of the file (the page cache shares the pages); from
# a pipe (stdin) it sends the lines themselves. Each worker answers each
# batch of _BATCH lines (the same batches for every worker) with what to
# write, and the parent merges the answers by line number. (Every worker
# reading and routing the whole file itself measured 1.56x on two CPUs: the
# routing was paid once per worker.)


def _replay_jobs(stream: BinaryIO, name: str, engine, writer: Writer, show_events: bool, jobs: int) -> int:
    sys.stdout.flush()  # a forked child flushes inherited std buffers when it ends: leave them empty
    sys.stderr.flush()
    source = _file_source(stream)
    run = _Run(name, engine, show_events)
    workers = [_Worker(k, run, source) for k in range(jobs)]
    # A thread reads, routes and sends while this one merges what comes back: the workers
    # always have the next batch waiting (the sockets' buffers hold a few), and a worker
    # blocked on a full socket is only waiting for this thread, which reads in order.
    batches: queue.Queue = queue.Queue()  # per batch sent: the lines the router skipped; then None

    def feed() -> None:
        try:
            for parts, skipped in _routed(stream, _Router(jobs), run, None if source is None else source[1]):
                for w, part in zip(workers, parts):
                    w.send(part)
                batches.put(skipped)
            for w in workers:
                w.send(None)
        except (BrokenPipeError, ConnectionResetError):  # the workers were stopped (an error here)
            pass
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread, which raises it)
            batches.put(exc)
        batches.put(None)

    sender = threading.Thread(target=feed, name="replay-router", daemon=True)
    sender.start()
    count = 0
    done = False
    try:
        write = writer.write
        while True:
            skipped = batches.get()
            if skipped is None:
                break
            if isinstance(skipped, BaseException):
                raise skipped
            results = [w.receive() for w in workers]
            errors = [r[2] for r in results if r[2] is not None]
            stop = min(errors)[0] if errors else None
            for lineno, rec in heapq.merge(*(r[1] for r in results), key=itemgetter(0)):
                if stop is not None and lineno >= stop:
                    break
                write(rec)
            if errors:
                raise ReplayError(min(errors)[1])
            count += skipped + sum(r[0] for r in results)
        done = True
    finally:
        if not done:  # the sender may be blocked on a worker: stopping the workers frees it
            for w in workers:
                w.kill()
        sender.join()
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


def _routed(stream: BinaryIO, router: _Router, run: _Run, offset: int | None):
    """Per batch of the stream: (each worker's share to send, the lines skipped).

    A share is (line numbers, line lengths, the lines joined), or with an
    offset (the stream is a regular file, that is where it was) (line
    numbers, line lengths, offsets in the file).
    """
    jobs = router.jobs
    workers = router.workers
    owner = router.owner
    skip, skip_status, needed = run.skip, run.skip_status, run.needed
    show_events = run.show_events
    numbered = enumerate(stream, 1)
    while True:
        numbers = [array("Q") for _ in range(jobs)]
        lengths = [array("Q") for _ in range(jobs)]
        where: list = [[] for _ in range(jobs)] if offset is None else [array("Q") for _ in range(jobs)]
        n = skipped = 0
        for lineno, line in islice(numbered, _BATCH):
            n += 1
            size = len(line)
            if offset is not None:
                offset += size
            # _Run.lines' skip test and _Router.owner's common case, written out again: a call
            # per line would cost a tenth of this loop.
            if not show_events:
                if line.startswith(_EVENT_HEAD):
                    t = line[24:line.find(b'"', 24, 48)]
                    if t in skip:
                        skipped += 1
                        continue
                    has_text = needed.get(t)
                    if has_text is not None and has_text(line) is None and b"\\" not in line:
                        skipped += 1
                        continue
                elif line.startswith(_ALERT_HEAD):
                    continue
                elif skip_status and line.startswith(_STATUS_HEAD):
                    skipped += 1
                    continue
            at = line.find(_AGENT_ID)
            w = workers.get(line[at + 15:line.find(b'"', at + 15)]) if at >= 0 else None
            if w is None:
                w = owner(line)
            numbers[w].append(lineno)
            lengths[w].append(size)
            where[w].append(line if offset is None else offset - size)
        if not n:
            return
        if offset is None:
            yield [(numbers[k].tobytes(), lengths[k].tobytes(), b"".join(where[k])) for k in range(jobs)], skipped
        else:
            yield [(numbers[k].tobytes(), lengths[k].tobytes(), where[k].tobytes()) for k in range(jobs)], skipped


class _Worker:
    """A forked process with its own engine: lines in, (line number, record to write) pairs out."""

    def __init__(self, k: int, run: _Run, source) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_work, args=(child, run, source), daemon=True)
        self.proc.start()
        child.close()

    def send(self, part: tuple) -> None:
        self.conn.send(part)

    def receive(self) -> tuple:
        try:
            result = self.conn.recv()
        except EOFError:
            raise ReplayError(f"a replay worker ended (exit code {self.proc.exitcode})") from None
        if result[0] == "crash":
            raise ReplayError(f"a replay worker failed: {result[1]}")
        return result

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        """The end: the worker has its None (the sender's) or was killed."""
        self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _work(conn, run: _Run, source) -> None:
    gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
    mapped = None
    try:
        if source is not None:
            fd = os.open(f"/proc/self/fd/{source[0]}", os.O_RDONLY)  # its own: the parent's offset moves
            mapped = _Mapped(fd)
        while True:
            part = conn.recv()
            if part is None:
                break
            numbers, lengths, blob = part
            linenos, sizes = array("Q"), array("Q")
            linenos.frombytes(numbers)
            sizes.frombytes(lengths)
            if mapped is None:
                lines, at = [], 0
                for n in sizes:
                    lines.append(blob[at:at + n])
                    at += n
            else:
                offsets = array("Q")
                offsets.frombytes(blob)
                lines = mapped.lines(offsets, sizes)
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


class _Mapped:
    """A worker's map of the replayed file, mapped again when the file has grown past it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.map = self._map()

    def _map(self):
        size = os.fstat(self.fd).st_size
        return mmap.mmap(self.fd, size, prot=mmap.PROT_READ) if size else b""

    def lines(self, offsets: array, sizes: array) -> list[bytes]:
        m = self.map
        if offsets and offsets[-1] + sizes[-1] > len(m):
            m = self.map = self._map()
        return [m[at:at + n] for at, n in zip(offsets, sizes)]
