"""Delivery: sinks that lose nothing they can keep, and count what they cannot.

A sink takes output records (tracer.records, tracer.rules.alerts) and delivers
them somewhere: a local file (FileSink), a syslog receiver (SyslogSink), an
HTTP collector (HttpSink). SinkSet is the Writer (tracer.output) over several.

    sink.submit(record)     never blocks on the network: the BPF drain calls it
    sink.flush()            non-blocking; FileSink also notices an outside rotation
    sink.wait_idle(t)       blocks until everything submitted is delivered (or dropped): tests, shutdown
    sink.close(timeout_s)   delivers what it can within timeout_s, then stops
    sink.stats()            {name, queued, delivered, failed, retries, dropped, dropped_by_reason,
                             spooled_bytes, spooled_records, last_error, ...}

What each one guarantees:

- FileSink writes each line with one write(2) on an O_APPEND descriptor before
  submit returns, so a line is whole in exactly one file: rotation renames
  under the same lock. A write that fails (ENOSPC, EIO) drops that record,
  counted (reason "write_failed").
- SyslogSink keeps a bounded queue in memory (records and bytes); a thread
  sends it in order. When the queue is full the OLDEST record is dropped and
  counted ("queue_full"); records still queued at close are counted
  ("closed"); a message the transport refuses as too large is counted
  ("too_large"). On TCP the sender reconnects with backoff and resends the
  chunk that failed (a duplicate is possible), but plain syslog has no
  acknowledgement: bytes in the kernel's buffers when a connection breaks can
  be lost unseen (RELP would be needed to know). UDP is fire-and-forget.
  Over udp and tcp a message is RFC 5424; to a unix socket (/dev/log) it is
  what glibc's syslog(3) writes there, the only syntax its readers parse
  (journald; rsyslog's imuxsock by default): rfc5424= chooses otherwise.
- HttpSink appends every record to an on-disk spool (segment files) in
  submit, before it counts as queued; a thread POSTs the spool in order, one
  batch in flight at a time, and a segment is deleted once all its records
  were answered 2xx. The delivered position is kept in the spool directory,
  so a new HttpSink on the same directory (a restart, a crash) sends what the
  old one left, from where it stopped. Delivery is AT LEAST ONCE: the batch
  in flight when the process died (or when close gave up) is sent again.
  Every record carries an "id" (its own, or record_id() of it) for the
  receiver to drop those duplicates. Records are lost only when the spool
  would pass spool_max_bytes (the oldest segments are deleted: "spool_full"),
  when the receiver rejects a single record for good (400/413/422 on a batch
  of one: "rejected"), or when the spool cannot be written ("spool_write_failed"),
  all counted. The spool is fdatasync'ed by the sender thread every fsync_s,
  so a power loss can cost the last fsync_s of records; a crash of agentwatch
  costs nothing (the records are in the page cache).

Drops are never silent: stats() counts them by reason, and SinkSet turns
new drops into status records (kind "status", status "sink_dropped", see
SinkSet.drain_notices) that it writes to all its sinks.

Every sink takes encode(record) -> bytes (default: orjson, one line). A line
break in what an encoder returns is replaced by a space (JSON whitespace), so
that framing by lines stays sound.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import http.client
import os
import random
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson

Encode = Callable[[dict], bytes]

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def encode_json(record: dict) -> bytes:
    """The default encoder: the record as orjson writes it (no newline)."""
    return orjson.dumps(record)


def record_id(record: dict) -> str:
    """A record's stable id: blake2b-128 of its orjson bytes with sorted keys, as 32 hex digits.

    The same record always gets the same id, so a receiver can drop a batch
    it is sent twice; two records that are equal byte for byte share one.
    """
    return hashlib.blake2b(orjson.dumps(record, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def wall_time() -> str:
    """Now as RFC 3339 UTC with nanoseconds, as records' "time" is written."""
    ns = time.time_ns()
    sec, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{nanos:09d}Z"


def _one_line(payload: bytes) -> bytes:
    if b"\n" in payload:
        payload = payload.replace(b"\n", b" ")
    return payload


def _errtext(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno or 0, "")
        return f"{exc.strerror} ({name})" if name else exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Sink(Protocol):
    name: str

    def submit(self, record: dict) -> None: ...
    def flush(self) -> None: ...
    def close(self, timeout_s: float = 5.0) -> None: ...
    def stats(self) -> dict: ...


class SinkBase:
    """Counters shared by the sinks; every field is guarded by _lock."""

    kind = "sink"

    def __init__(self, name: str | None) -> None:
        self.name = name or self.kind
        self._lock = threading.Lock()
        self._closed = False
        self.submitted = 0
        self.delivered = 0
        self.failed = 0  # failed delivery attempts
        self.retries = 0
        self.dropped_by_reason: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_time: str | None = None

    def _drop(self, n: int, reason: str) -> None:
        """Count n records lost for reason (the caller holds _lock)."""
        if n > 0:
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + n

    def _error(self, text: str) -> None:
        self.last_error = text
        self.last_error_time = wall_time()

    def _queued(self) -> int:
        return 0

    def _extra_stats(self) -> dict:
        return {}

    def stats(self) -> dict:
        with self._lock:
            return {
                "name": self.name,
                "kind": self.kind,
                "submitted": self.submitted,
                "queued": self._queued(),
                "delivered": self.delivered,
                "failed": self.failed,
                "retries": self.retries,
                "dropped": sum(self.dropped_by_reason.values()),
                "dropped_by_reason": dict(self.dropped_by_reason),
                "spooled_bytes": 0,
                "spooled_records": 0,
                "last_error": self.last_error,
                "last_error_time": self.last_error_time,
                **self._extra_stats(),
            }

    def flush(self) -> None:
        pass

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True

    def _encode_or_drop(self, encode: Encode, record: dict) -> bytes | None:
        try:
            return _one_line(encode(record))
        except Exception as exc:  # an encoder's bug must not stop the drain
            with self._lock:
                self.submitted += 1
                self._drop(1, "encode_failed")
                self._error(f"encode: {_errtext(exc)}")
            return None


# --- file ---------------------------------------------------------------------------------------


class FileSink(SinkBase):
    """JSON lines appended to path, rotated by size and/or age as logrotate numbers them.

    Rotation (path -> path.1 -> ... -> path.keep; the old path.keep is
    removed; keep=0 keeps none) happens before a line that would take the
    file past max_bytes, or the first line written max_age_s after the file
    was opened (the age of a file met at start counts from then; flush()
    also rotates an aged file). A file that is never empty is never rotated
    empty. flush() reopens path when something else moved it away
    (logrotate without copytruncate), as reopen() does.
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None, max_age_s: float | None = None,
                 keep: int = 10, encode: Encode = encode_json, name: str | None = None, mode: int = 0o600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name or f"file:{os.fspath(path)}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"file sink: max_bytes must be positive, not {max_bytes}")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"file sink: max_age_s must be positive, not {max_age_s}")
        if keep < 0:
            raise ValueError(f"file sink: keep must be 0 or more, not {keep}")
        self.path = os.fspath(path)
        self.max_bytes, self.max_age_s, self.keep = max_bytes, max_age_s, keep
        self.encode, self.mode, self.clock = encode, mode, clock
        self.rotations = 0
        self.reopens = 0
        self._fd: int | None = None
        self._size = 0
        self._opened_at = 0.0
        self._ident: tuple[int, int] | None = None
        self._torn = False
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        st = os.fstat(fd)
        self._fd, self._size, self._ident = fd, st.st_size, (st.st_dev, st.st_ino)
        self._opened_at = self.clock()

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _aged(self) -> bool:
        return self.max_age_s is not None and self._size > 0 and self.clock() - self._opened_at >= self.max_age_s

    def _rotate(self) -> None:
        """Rename the chain under the lock, then start a new file (the caller holds _lock)."""
        p = self.path
        if self.keep == 0:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        else:
            for i in range(self.keep - 1, 0, -1):
                try:
                    os.replace(f"{p}.{i}", f"{p}.{i + 1}")  # replacing path.keep removes the oldest
                except FileNotFoundError:
                    pass
            try:
                os.replace(p, f"{p}.1")
            except FileNotFoundError:
                pass  # moved away by someone else: nothing of ours to number
        self._close_fd()
        self._open()
        self.rotations += 1

    def submit(self, record: dict) -> None:
        line = self._encode_or_drop(self.encode, record)
        if line is None:
            return
        line += b"\n"
        with self._lock:
            self.submitted += 1
            if self._closed:
                self._drop(1, "closed")
                return
            try:
                if self._fd is None:
                    self._open()
                if (self.max_bytes is not None and self._size > 0 and self._size + len(line) > self.max_bytes) \
                        or self._aged():
                    self._rotate()
                if self._torn:  # the last write stopped mid-line: end that line, keep this one whole
                    os.write(self._fd, b"\n")
                    self._size += 1
                    self._torn = False
                done = 0
                while done < len(line):
                    try:
                        done += os.write(self._fd, line[done:])
                    except OSError:
                        self._torn = done > 0
                        raise
                self._size += len(line)
                self.delivered += 1
            except OSError as exc:
                self.failed += 1
                self._drop(1, "write_failed")
                self._error(f"{self.path}: {_errtext(exc)}")
                self._close_fd()  # reopened at the next record

    def reopen(self) -> None:
        """Start writing to path afresh (after an outside rotation)."""
        with self._lock:
            if self._closed:
                return
            self._close_fd()
            try:
                self._open()
                self.reopens += 1
            except OSError as exc:
                self._error(f"{self.path}: {_errtext(exc)}")

    def flush(self) -> None:
        with self._lock:
            if self._closed or self._fd is None:
                return
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._ident
            except FileNotFoundError:
                moved = True
            except OSError:
                return
            try:
                if moved:
                    self._close_fd()
                    self._open()
                    self.reopens += 1
                elif self._aged():
                    self._rotate()
            except OSError as exc:
                self._error(f"{self.path}: {_errtext(exc)}")

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            self._close_fd()

    def _extra_stats(self) -> dict:
        return {"path": self.path, "bytes": self._size, "rotations": self.rotations, "reopens": self.reopens}


# --- syslog -------------------------------------------------------------------------------------

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
# alert severity -> syslog severity; everything else is info(6), a sink_dropped notice warning(4)
ALERT_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
SEV_WARNING, SEV_INFO = 4, 6
BOM = b"\xef\xbb\xbf"
_TIME_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _printusascii(text: str, limit: int) -> str:
    """RFC 5424 header fields: PRINTUSASCII (33-126), at most limit characters, "-" when empty."""
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return out or "-"


def syslog_severity(record: dict) -> int:
    if record.get("kind") == "alert":
        return ALERT_SEVERITY.get(record.get("severity"), SEV_INFO)
    if record.get("kind") == "status" and record.get("status") == "sink_dropped":
        return SEV_WARNING
    return SEV_INFO


def syslog_msgid(record: dict) -> str:
    """MSGID: "alert" for alerts, the type for events (exec, connect, ...), else the kind ("status")."""
    kind = record.get("kind")
    value = record.get("type") if kind == "event" else kind
    return _printusascii(str(value or "-"), 32)


def syslog_timestamp(value: object) -> str:
    """The record's RFC 3339 time cut to microseconds (RFC 5424 allows 6 digits); now if it has none."""
    if isinstance(value, str):
        m = _TIME_RE.fullmatch(value)
        if m:
            return m.group(1) + (m.group(2) or "")[:7] + m.group(3)
    us = time.time_ns() // 1000
    sec, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{micros:06d}Z"


def syslog_message(record: dict, payload: bytes, *, facility: int = 16, hostname: str = "-",
                   app_name: str = "agentwatch", procid: str = "-", bom: bool = False) -> bytes:
    """<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG, MSG being payload (RFC 5424).

    No structured data ("-"): an SD-ID of our own would need an IANA
    enterprise number. Without bom the MSG is MSG-ANY (RFC 5424 6.4), which
    receivers take as it is; with it, MSG-UTF8 (BOM then UTF-8).
    """
    pri = facility * 8 + syslog_severity(record)
    head = f"<{pri}>1 {syslog_timestamp(record.get('time'))} {hostname} {app_name} {procid} {syslog_msgid(record)} - "
    return head.encode() + (BOM + payload if bom else payload)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def local_timestamp(epoch_s: float) -> str:
    """"Dec  3 16:50:51": syslog(3)'s "%h %e %T" in local time, month names in English whatever the locale."""
    t = time.localtime(epoch_s)
    return f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def syslog_tag(app_name: str) -> str:
    """The TAG of a local message: readers end it at "[", ":" or a space, so those become "_" (at most 32)."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "[]:" else "_" for c in app_name)[:32] or "-"


def syslog_local_message(record: dict, payload: bytes, *, facility: int = 16, tag: str = "agentwatch",
                         procid: str = "-", timestamp: str | None = None) -> bytes:
    """<PRI>TIMESTAMP TAG[PID]: MSG, as glibc's syslog(3) writes to /dev/log (RFC 3164 without HOSTNAME).

    journald reads nothing else on /dev/log (systemd issue #19251), nor does
    rsyslog's imuxsock with its default special parser: an RFC 5424 message
    there comes out with app-name "1" and its whole header in the text. The
    timestamp (local time, no year, no zone, whole seconds) is now's; both
    replace it with the time of receipt by default, and the record's own
    time is in the JSON. No MSGID, no hostname (the reader adds its own).
    """
    pri = facility * 8 + syslog_severity(record)
    ts = timestamp if timestamp is not None else local_timestamp(time.time())
    return f"<{pri}>{ts} {tag}[{procid}]: ".encode() + payload


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(message) + message


def _parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what}: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{what}: an IPv6 address goes in brackets ([::1]:514), got {text!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: port must be 1-65535, got {port!r}")
    return host, int(port)


def parse_syslog_target(target: str) -> tuple[str, object]:
    """'unix:/dev/log' | 'udp:HOST:PORT' | 'tcp:HOST:PORT' -> (transport, address)."""
    proto, sep, rest = target.partition(":")
    if proto == "unix" and sep:
        if not rest:
            raise ValueError("syslog target unix: needs a socket path (unix:/dev/log)")
        return "unix", rest
    if proto in ("udp", "tcp") and sep:
        return proto, _parse_hostport(rest, f"syslog target {proto}")
    raise ValueError(f"syslog target {target!r}: expected unix:PATH, udp:HOST:PORT or tcp:HOST:PORT")


class _SendFailed(Exception):
    def __init__(self, sent: int, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.sent, self.exc = sent, exc


class _TooLarge(Exception):
    def __init__(self, sent: int, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.sent, self.exc = sent, exc


class _Transport:
    sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def interrupt(self) -> None:
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _DgramTransport(_Transport):
    """unix (datagram, /dev/log style) or udp: one message per datagram, connected once."""

    def __init__(self, proto: str, address, timeout_s: float) -> None:
        self.proto, self.address, self.timeout_s = proto, address, timeout_s

    def _connect(self) -> None:
        if self.proto == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            addr = self.address
        else:
            host, port = self.address
            family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def send(self, messages: list[bytes]) -> None:
        if self.sock is None:
            try:
                self._connect()
            except OSError as exc:
                raise _SendFailed(0, exc) from exc
        for i, msg in enumerate(messages):
            try:
                self.sock.send(msg)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise _TooLarge(i, exc) from exc
                self.close()  # a restarted receiver is a new socket: connect again
                raise _SendFailed(i, exc) from exc


class _TcpTransport(_Transport):
    """tcp with RFC 6587 octet counting; frames of a chunk go out in one sendall."""

    def __init__(self, address: tuple[str, int], timeout_s: float) -> None:
        self.address, self.timeout_s = address, timeout_s

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)  # (a timeout socket ignores MSG_DONTWAIT)
            return bool(readable) and self.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def send(self, messages: list[bytes]) -> None:
        if self.sock is not None and self._peer_closed():
            self.close()  # do not write into a connection the receiver has closed
        if self.sock is None:
            try:
                self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                self.sock = None
                raise _SendFailed(0, exc) from exc
        try:
            self.sock.sendall(b"".join(octet_frame(m) for m in messages))
        except OSError as exc:
            self.close()
            raise _SendFailed(0, exc) from exc  # how much arrived is unknown: the chunk is sent again


class SyslogSink(SinkBase):
    """Syslog messages to a receiver, from a bounded in-memory queue and a thread of its own.

    target: unix:PATH (datagram), udp:HOST:PORT, tcp:HOST:PORT (octet-counted).
    rfc5424: RFC 5424 messages (syslog_message) or, False, the local syntax
    of syslog(3) (syslog_local_message); by default RFC 5424 over udp and
    tcp, the local syntax to a unix socket. bom and hostname are RFC 5424's.
    The queue holds at most queue_max messages and queue_max_bytes bytes;
    past either, the oldest is dropped and counted ("queue_full").
    """

    kind = "syslog"
    CHUNK_MESSAGES = 256
    CHUNK_BYTES = 256 * KIB

    def __init__(self, target: str, app_name: str = "agentwatch", hostname: str | None = None,
                 facility: str | int = "local0", encode: Encode = encode_json, name: str | None = None,
                 queue_max: int = 100_000, queue_max_bytes: int = 64 * MIB, bom: bool = False,
                 timeout_s: float = 5.0, retry_base_s: float = 0.1, retry_cap_s: float = 30.0,
                 rfc5424: bool | None = None) -> None:
        super().__init__(name or f"syslog:{target}")
        self.target = target
        self.proto, address = parse_syslog_target(target)
        if isinstance(facility, str):
            if facility.isascii() and facility.isdigit():  # a spec's facility=3 is text
                facility = int(facility)
            elif facility in FACILITIES:
                facility = FACILITIES[facility]
            else:
                raise ValueError(f"syslog facility {facility!r}: expected one of {', '.join(FACILITIES)} or 0-23")
        if not 0 <= int(facility) <= 23:
            raise ValueError(f"syslog facility {facility}: expected 0-23")
        if queue_max < 1 or queue_max_bytes < 1:
            raise ValueError("syslog sink: queue_max and queue_max_bytes must be positive")
        self.facility = int(facility)
        self.app_name = _printusascii(app_name, 48)
        self.rfc5424 = self.proto != "unix" if rfc5424 is None else bool(rfc5424)
        self.tag = syslog_tag(app_name)
        self._stamp: tuple[int, str] = (-1, "")  # (second, its local timestamp): one strftime a second
        self.hostname = _printusascii(hostname or socket.gethostname(), 255)
        self.procid = str(os.getpid())
        self.encode, self.bom = encode, bom
        self.queue_max, self.queue_max_bytes = queue_max, queue_max_bytes
        self.retry_base_s, self.retry_cap_s = retry_base_s, retry_cap_s
        self._transport: _DgramTransport | _TcpTransport = (
            _TcpTransport(address, timeout_s) if self.proto == "tcp" else _DgramTransport(self.proto, address, timeout_s))
        self._q: collections.deque[bytes] = collections.deque()
        self._qbytes = 0
        self._inflight = 0
        self._cond = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    def message(self, record: dict) -> bytes | None:
        payload = self._encode_or_drop(self.encode, record)
        if payload is None:
            return None
        if self.rfc5424:
            return syslog_message(record, payload, facility=self.facility, hostname=self.hostname,
                                  app_name=self.app_name, procid=self.procid, bom=self.bom)
        now = time.time()
        if int(now) != self._stamp[0]:
            self._stamp = (int(now), local_timestamp(now))
        return syslog_local_message(record, payload, facility=self.facility, tag=self.tag, procid=self.procid,
                                    timestamp=self._stamp[1])

    def submit(self, record: dict) -> None:
        msg = self.message(record)
        if msg is None:
            return
        with self._lock:
            self.submitted += 1
            if self._closed:
                self._drop(1, "closed")
                return
            self._q.append(msg)
            self._qbytes += len(msg)
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        while self._q and (len(self._q) > self.queue_max or self._qbytes > self.queue_max_bytes):
            self._qbytes -= len(self._q.popleft())
            self._drop(1, "queue_full")

    def _run(self) -> None:
        failures = 0
        while not self._abort.is_set():
            with self._cond:
                while not self._q and not self._closed:
                    self._cond.wait()
                if not self._q:  # closed and drained
                    break
                chunk: list[bytes] = []
                size = 0
                while self._q and len(chunk) < self.CHUNK_MESSAGES and size < self.CHUNK_BYTES:
                    msg = self._q.popleft()
                    chunk.append(msg)
                    size += len(msg)
                self._qbytes -= size
                self._inflight = len(chunk)
            sent, error, too_large = len(chunk), None, False
            try:
                self._transport.send(chunk)
            except _TooLarge as exc:
                sent, too_large = exc.sent, True
                error = exc.exc
            except _SendFailed as exc:
                sent, error = exc.sent, exc.exc
            except Exception as exc:  # never let the thread die with records queued
                sent, error = 0, exc
            with self._cond:
                self.delivered += sent
                rest = chunk[sent:]
                if too_large:
                    self._drop(1, "too_large")
                    self._error(f"{self.target}: a message of {len(rest[0])} bytes: {_errtext(error)}")
                    rest = rest[1:]
                    error = None
                if rest:  # back to the front, in order; the bound still holds
                    self._q.extendleft(reversed(rest))
                    self._qbytes += sum(map(len, rest))
                    self._trim()
                self._inflight = 0
                if error is not None:
                    self.failed += 1
                    self._error(f"{self.target}: {_errtext(error)}")
                self._cond.notify_all()
            if error is None:
                failures = 0
                continue
            failures += 1
            delay = min(self.retry_cap_s, self.retry_base_s * 2 ** min(failures - 1, 30))
            if self._abort.wait(delay * random.uniform(0.5, 1.0)):
                break
            with self._lock:
                self.retries += 1

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._q and not self._inflight, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued within timeout_s; what is left then is dropped, counted ("closed")."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout_s))
        if self._thread.is_alive():
            self._abort.set()
            self._transport.interrupt()
            self._thread.join(1.0)
        with self._cond:
            self._drop(len(self._q), "closed")
            self._q.clear()
            self._qbytes = 0
        self._transport.close()

    def _queued(self) -> int:
        return len(self._q) + self._inflight

    def _extra_stats(self) -> dict:
        return {"target": self.target, "queued_bytes": self._qbytes}


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Segment:
    seq: int
    path: str
    size: int = 0  # bytes on disk
    records: int = 0  # records in it (from offset, for a segment met at start)
    done: int = 0  # of those, delivered or dropped
    offset: int = 0  # where the first record not yet done starts
    closed: bool = False  # nothing more is appended
    inflight: int = 0
    dropped: bool = False
    synced: int = 0

    @property
    def waiting(self) -> int:
        return self.records - self.done - self.inflight


_SEG_RE = re.compile(r"(\d{20})\.seg")
_RETRY_STATUS = None  # every status but 2xx and the rejections below is retried
_REJECT_STATUS = (400, 413, 422)  # about the records themselves: halve the batch, drop a lone one


class SpoolInUse(RuntimeError):
    pass


class HttpSink(SinkBase):
    """Batches POSTed to url from an on-disk spool (see the module's docstring for the guarantees).

    body "lines": application/x-ndjson, one record a line; "array":
    application/json, one JSON array. A batch is sent when batch_max records
    wait, or flush_s after the first of them, or at once on wait_idle/close.
    token_file: "Authorization: Bearer <its content, stripped>", re-read on a
    401 (and the batch sent again once at once). ca_file: trust only that
    CA bundle for https (default: the system store). Retries back off
    exponentially from retry_base_s to retry_cap_s with jitter; a 429/503's
    Retry-After is honoured up to the cap.

    The spool (spool_dir, mode 0700, locked with flock against a second
    sink) holds NNNNNNNNNNNNNNNNNNNN.seg segment files of encoded lines, and
    "position" (the segment and offset delivered up to).
    """

    kind = "http"

    def __init__(self, url: str, *, spool_dir: str | os.PathLike, token_file: str | os.PathLike | None = None,
                 batch_max: int = 500, flush_s: float = 1.0, body: str = "lines",
                 spool_max_bytes: int = 256 * MIB, timeout_s: float = 5.0, encode: Encode = encode_json,
                 name: str | None = None, ca_file: str | os.PathLike | None = None,
                 batch_max_bytes: int = 4 * MIB, segment_bytes: int | None = None, retry_base_s: float = 0.5,
                 retry_cap_s: float = 30.0, fsync_s: float | None = 1.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"http sink: {url!r} is not an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("http sink: credentials in the URL; use token_file")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"http sink: {url!r}: {exc}") from None
        super().__init__(name or f"http:{parts.scheme}://{parts.netloc}{parts.path}")
        if body not in ("lines", "array"):
            raise ValueError(f"http sink: body must be lines or array, not {body!r}")
        if batch_max < 1 or batch_max_bytes < 1 or spool_max_bytes < 4 * KIB or flush_s < 0 or timeout_s <= 0:
            raise ValueError("http sink: batch_max, batch_max_bytes, timeout_s must be positive, "
                             "flush_s not negative, spool_max_bytes at least 4 KiB")
        self.url, self.body, self.encode = url, body, encode
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._content_type = "application/x-ndjson" if body == "lines" else "application/json"
        self.batch_max, self.batch_max_bytes, self.flush_s = batch_max, batch_max_bytes, flush_s
        self.spool_max_bytes = spool_max_bytes
        self.segment_bytes = segment_bytes or max(KIB, min(8 * MIB, spool_max_bytes // 8))
        if self.segment_bytes > spool_max_bytes // 4:
            raise ValueError("http sink: segment_bytes must be at most a quarter of spool_max_bytes")
        self.timeout_s, self.retry_base_s, self.retry_cap_s, self.fsync_s = timeout_s, retry_base_s, retry_cap_s, fsync_s
        self.token_file = os.fspath(token_file) if token_file is not None else None
        self.ca_file = os.fspath(ca_file) if ca_file is not None else None
        self._extra_headers = dict(headers or {})
        self._ssl = ssl.create_default_context(cafile=self.ca_file) if self._https else None
        self._token: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._conn_used = 0
        self.batches = 0
        self.rejected = 0
        self._limit = batch_max  # halved by 400/413/422, grows back on success
        self.spool_dir = os.fspath(spool_dir)
        self._segments: collections.deque[_Segment] = collections.deque()
        self._active: _Segment | None = None
        self._wfd: int | None = None
        self._spooled_bytes = 0
        self._waiting = 0  # records spooled, not yet delivered or dropped (in flight included)
        self._first_waiting: float | None = None
        self._force = False
        self._lockfd: int | None = None
        self._open_spool()
        self._cond = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    # -- the spool ------------------------------------------------------------------------------

    def _seg_path(self, seq: int) -> str:
        return os.path.join(self.spool_dir, f"{seq:020d}.seg")

    def _open_spool(self) -> None:
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.spool_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise SpoolInUse(f"http sink: spool {self.spool_dir} is in use (by pid {holder or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lockfd = fd
        pos_seq, pos_off = self._read_position()
        seqs = sorted(int(m.group(1)) for f in os.listdir(self.spool_dir) if (m := _SEG_RE.fullmatch(f)))
        self._next_seq = max(seqs[-1] + 1 if seqs else 1, pos_seq)  # never below the delivered position
        for seq in seqs:
            path = self._seg_path(seq)
            if seq < pos_seq:
                os.unlink(path)  # delivered; the process stopped before deleting it
                continue
            with open(path, "rb") as f:
                data = f.read()
            start = pos_off if seq == pos_seq else 0
            if start > len(data) or (start and data[start - 1:start] != b"\n"):
                start = 0  # a position that does not fit: send the segment whole (duplicates, not losses)
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a record cut short (ENOSPC, power loss): it cannot be sent
                os.truncate(path, end)
                self._drop(1, "spool_torn")
            records = data.count(b"\n", start, end)
            if records == 0:
                os.unlink(path)
                continue
            seg = _Segment(seq, path, size=end, records=records, offset=start, closed=True, synced=end)
            self._segments.append(seg)
            self._spooled_bytes += end
            self._waiting += records
        if self._waiting:
            self._first_waiting = float("-inf")  # a backlog from before: send it at once

    def _read_position(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.spool_dir, "position"), "rb") as f:
                seq, off = f.read().split()
            return int(seq), int(off)
        except (FileNotFoundError, ValueError):
            return 0, 0

    def _write_position(self, seq: int, offset: int) -> None:
        path = os.path.join(self.spool_dir, "position")
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(b"%d %d\n" % (seq, offset))
            os.replace(tmp, path)
        except OSError as exc:
            with self._lock:
                self._error(f"{path}: {_errtext(exc)}")

    def _new_segment(self) -> None:
        """Close the active segment and start the next (the caller holds _lock)."""
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        if self._active is not None:
            self._active.closed = True
        seq = self._next_seq
        self._next_seq += 1
        seg = _Segment(seq, self._seg_path(seq))
        self._wfd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._active = seg
        self._segments.append(seg)

    def _drop_oldest(self) -> None:
        """Delete the oldest segment to stay under spool_max_bytes (the caller holds _lock)."""
        seg = self._segments.popleft()
        lost = seg.waiting  # an in-flight batch is settled when its answer comes
        self._drop(lost, "spool_full")
        self._waiting -= lost
        seg.done += lost
        seg.dropped = True
        self._spooled_bytes -= seg.size
        self._error(f"{self.spool_dir}: spool full ({self.spool_max_bytes} bytes): "
                    f"{lost} records of segment {seg.seq} dropped")
        try:
            os.unlink(seg.path)
        except OSError:
            pass

    def submit(self, record: dict) -> None:
        if "id" not in record:
            try:
                record = {"id": record_id(record), **record}
            except Exception:
                pass  # encode below fails the same way and counts it
        payload = self._encode_or_drop(self.encode, record)
        if payload is None:
            return
        line = payload + b"\n"
        with self._lock:
            self.submitted += 1
            if self._closed:
                self._drop(1, "closed")
                return
            if len(line) > self.spool_max_bytes // 2:
                self._drop(1, "too_large")
                self._error(f"a record of {len(line)} bytes is over half of spool_max_bytes")
                return
            seg = self._active
            try:
                if seg is None or seg.size >= self.segment_bytes:
                    self._new_segment()
                    seg = self._active
                done = 0
                while done < len(line):
                    done += os.write(self._wfd, line[done:])
            except OSError as exc:
                self.failed += 1
                self._drop(1, "spool_write_failed")
                self._error(f"{self.spool_dir}: {_errtext(exc)}")
                if seg is not None and self._wfd is not None:
                    try:
                        os.ftruncate(self._wfd, seg.size)  # no half record left behind
                    except OSError:
                        pass
                return
            seg.size += len(line)
            seg.records += 1
            self._spooled_bytes += len(line)
            self._waiting += 1
            if self._first_waiting is None:
                self._first_waiting = time.monotonic()
                self._cond.notify()
            elif self._waiting == self.batch_max:
                self._cond.notify()
            while self._spooled_bytes > self.spool_max_bytes and len(self._segments) > 1:
                self._drop_oldest()

    # -- the sender -----------------------------------------------------------------------------

    def _due(self) -> float | None:
        """0: send now; a number: wait that long; None: nothing to send (the caller holds _lock)."""
        avail = self._waiting
        if avail <= 0:
            return None
        if avail >= self._limit or self._force or self._closed or self._first_waiting is None:
            return 0.0
        return max(0.0, self._first_waiting + self.flush_s - time.monotonic())

    def _take(self) -> tuple[_Segment, int, int] | None:
        """The head segment with records waiting, its offset and size (the caller holds _lock)."""
        for seg in self._segments:
            if seg.waiting > 0:
                return seg, seg.offset, seg.size
        return None

    def _read_batch(self, seg: _Segment, offset: int, size: int) -> tuple[list[bytes], int]:
        """Up to _limit records (and batch_max_bytes, one record at least) from offset: (lines, end offset)."""
        want = min(self._limit, seg.waiting)
        est = int(seg.size / max(1, seg.records) * want * 1.25) + 4 * KIB
        cap = offset + self.batch_max_bytes
        buf = bytearray()
        pos = offset
        count = 0
        with open(seg.path, "rb") as f:
            while pos < size and count < want and (pos < cap or count == 0):
                chunk = os.pread(f.fileno(), min(size - pos, max(64 * KIB, est)), pos)
                if not chunk:
                    break
                buf += chunk
                pos += len(chunk)
                count += chunk.count(b"\n")
        data = bytes(buf)
        lines: list[bytes] = []
        start = 0
        while len(lines) < want:
            nl = data.find(b"\n", start)
            if nl < 0 or (lines and nl + 1 > self.batch_max_bytes):
                break
            lines.append(data[start:nl])
            start = nl + 1
        return lines, offset + start

    def _run(self) -> None:
        failures = 0
        last_sync = time.monotonic()
        while not self._abort.is_set():
            with self._cond:
                while True:
                    due = self._due()
                    if self._abort.is_set() or (due is None and self._closed):
                        return
                    sync_in = None if self.fsync_s is None else last_sync + self.fsync_s - time.monotonic()
                    if due == 0.0 or (sync_in is not None and sync_in <= 0):
                        break
                    waits = [w for w in (due, sync_in) if w is not None]
                    self._cond.wait(min(waits) if waits else None)
                taken = self._take() if due == 0.0 else None
            if self.fsync_s is not None and time.monotonic() - last_sync >= self.fsync_s:
                self._sync()
                last_sync = time.monotonic()
            if taken is None:
                continue
            seg, offset, size = taken
            try:
                lines, end = self._read_batch(seg, offset, size)
            except FileNotFoundError:
                continue  # dropped (spool full) since it was taken
            except OSError as exc:
                with self._lock:
                    self._error(f"{seg.path}: {_errtext(exc)}")
                self._abort.wait(1.0)
                continue
            if not lines:
                continue
            with self._lock:
                if seg.dropped:
                    continue
                seg.inflight = len(lines)
            outcome, detail, retry_after = self._send(lines)
            position = None
            with self._cond:
                n = seg.inflight
                seg.inflight = 0
                if outcome == "ok" or (outcome == "rejected" and n == 1):
                    if outcome == "ok":
                        self.delivered += n
                        self.batches += 1
                        self._limit = min(self.batch_max, self._limit * 2)
                    else:
                        self.rejected += 1
                        self._drop(1, "rejected")
                        self._error(f"{self.url}: a record rejected for good: {detail}")
                    self._waiting -= n
                    if seg.dropped:
                        pass  # its segment was deleted meanwhile; these were not counted as dropped
                    else:
                        seg.done += n
                        seg.offset = end
                        position = (seg.seq, seg.offset)
                        if seg.closed and seg.done >= seg.records:
                            self._segments.remove(seg)
                            self._spooled_bytes -= seg.size
                            position = (seg.seq + 1, 0)
                            try:
                                os.unlink(seg.path)
                            except OSError:
                                pass
                    # what came while this batch was out waits flush_s (or until batch_max of it)
                    self._first_waiting = time.monotonic() if self._waiting > 0 else None
                    failures = 0
                else:
                    if seg.dropped:
                        self._drop(n, "spool_full")
                        self._waiting -= n
                    if outcome == "rejected":
                        self._limit = max(1, n // 2)  # find the record it refuses
                    else:
                        self.failed += 1
                    self._error(f"{self.url}: {detail}")
                self._cond.notify_all()
            if position is not None:
                self._write_position(*position)
            if outcome in ("ok", "rejected"):
                continue
            failures += 1
            delay = min(self.retry_cap_s, self.retry_base_s * 2 ** min(failures - 1, 30)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(self.retry_cap_s, retry_after))
            if self._abort.wait(delay):
                return
            with self._lock:
                self.retries += 1

    def _sync(self) -> None:
        with self._lock:
            todo = [(s, s.size) for s in self._segments if s.synced < s.size]
        for seg, size in todo:
            try:
                fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                seg.synced = size
            except OSError as exc:
                with self._lock:
                    self._error(f"{seg.path}: fdatasync: {_errtext(exc)}")
            finally:
                os.close(fd)

    def _body(self, lines: list[bytes]) -> bytes:
        if self.body == "lines":
            return b"\n".join(lines) + b"\n"
        return b"[" + b",".join(lines) + b"]"

    def _read_token(self) -> str | None:
        with open(self.token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if not token or any(c in token for c in "\r\n"):
            raise ValueError(f"{self.token_file}: no token in it")
        return token

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def _post(self, body: bytes) -> tuple[int, str | None]:
        headers = {"Content-Type": self._content_type, "User-Agent": "agentwatch", **self._extra_headers}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        for attempt in (0, 1):
            reused = self._conn is not None and self._conn_used > 0
            if self._conn is None:
                self._conn, self._conn_used = self._connect(), 0
            try:
                self._conn.request("POST", self._target, body=body, headers=headers)
                resp = self._conn.getresponse()
                resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError) as exc:
                self._drop_conn()
                if reused and attempt == 0:
                    continue  # the receiver closed an idle keep-alive connection: once more on a new one
                raise exc
            except Exception:
                self._drop_conn()
                raise
            self._conn_used += 1
            if resp.will_close:
                self._drop_conn()
            return resp.status, resp.getheader("Retry-After")
        raise AssertionError("unreachable")

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def _send(self, lines: list[bytes]) -> tuple[str, str, float | None]:
        """One batch: ("ok" | "rejected" | "retry", what happened, Retry-After seconds)."""
        body = self._body(lines)
        reread = False
        while True:
            try:
                if self.token_file is not None and self._token is None:
                    self._token = self._read_token()
                status, retry_after = self._post(body)
            except Exception as exc:
                return "retry", _errtext(exc), None
            if 200 <= status < 300:
                return "ok", str(status), None
            if status == 401 and self.token_file is not None and not reread:
                reread = True
                self._token = None  # read the file again and send once more at once
                with self._lock:
                    self.failed += 1
                    self.retries += 1
                continue
            detail = f"HTTP {status}"
            if status in _REJECT_STATUS:
                return "rejected", detail, None
            wait = None
            if retry_after is not None and retry_after.strip().isdigit():
                wait = float(retry_after.strip())
            return "retry", detail, wait

    # -- the caller's side ----------------------------------------------------------------------

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Send what waits at once and block until the spool is delivered; False on timeout."""
        with self._cond:
            self._force = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._waiting <= 0, timeout_s)
            finally:
                self._force = False

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what waits within timeout_s; what is still spooled then stays for the next HttpSink."""
        with self._cond:
            if self._lockfd is None:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout_s))
        if self._thread.is_alive():
            self._abort.set()
            conn = self._conn
            if conn is not None and conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)  # the batch in flight stays in the spool
                except OSError:
                    pass
            with self._cond:
                self._cond.notify_all()
            self._thread.join(max(1.0, self.timeout_s))
        with self._lock:
            if self._wfd is not None:
                os.close(self._wfd)
                self._wfd = None
            if self._active is not None:
                self._active.closed = True
                if self._active.done >= self._active.records and self._active in self._segments:
                    self._segments.remove(self._active)
                    self._spooled_bytes -= self._active.size
                    try:
                        os.unlink(self._active.path)
                    except OSError:
                        pass
            self._sync_locked_files()
            os.close(self._lockfd)
            self._lockfd = None
        self._drop_conn()

    def _sync_locked_files(self) -> None:
        for seg in self._segments:
            if seg.synced < seg.size:
                try:
                    fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    pass

    def _queued(self) -> int:
        return self._waiting

    def _extra_stats(self) -> dict:
        return {"url": self.url, "spooled_bytes": self._spooled_bytes, "spooled_records": self._waiting,
                "segments": len(self._segments), "batches": self.batches, "spool_dir": self.spool_dir}


# --- a Writer over several sinks ----------------------------------------------------------------


class WriterSink(SinkBase):
    """A tracer.output Writer (JsonLinesWriter on stdout, TableWriter) as a sink: synchronous."""

    kind = "writer"

    def __init__(self, writer, name: str | None = None) -> None:
        super().__init__(name or type(writer).__name__)
        self.writer = writer

    def submit(self, record: dict) -> None:
        with self._lock:
            self.submitted += 1
        try:
            self.writer.write(record)
        except Exception as exc:
            with self._lock:
                self.failed += 1
                self._drop(1, "write_failed")
                self._error(_errtext(exc))
            return
        with self._lock:
            self.delivered += 1

    def flush(self) -> None:
        try:
            self.writer.flush()
        except Exception as exc:
            with self._lock:
                self._error(_errtext(exc))

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush()
        super().close(timeout_s)


class SinkSet:
    """The Writer (tracer.output) over several sinks: write() submits the record to each.

    Drops become records. drain_notices() returns, for each sink and reason
    with drops not yet told, {"kind": "status", "status": "sink_dropped",
    "time", "agent": None, "sink": NAME, "reason": REASON, "dropped": N (since
    the last notice), "dropped_total": ALL OF THAT SINK'S DROPS}. With
    auto_notices (the default) flush() writes them itself, at most once per
    notice_interval_s, with write_notice(): to every sink but the one the
    notice is about (a full queue would only drop another record for it);
    a set of one sink writes them to that sink. A caller that routes them
    otherwise passes auto_notices=False and calls drain_notices().
    """

    def __init__(self, sinks: list, *, auto_notices: bool = True, notice_interval_s: float = 1.0) -> None:
        self.sinks = list(sinks)
        seen: dict[str, int] = {}
        for s in self.sinks:  # names label notices and metrics: make them unique
            n = seen[s.name] = seen.get(s.name, 0) + 1
            if n > 1:
                s.name = f"{s.name}#{n}"
        self.auto_notices, self.notice_interval_s = auto_notices, notice_interval_s
        self._told: dict[tuple[str, str], int] = {}
        self._raised: dict[str, int] = {}  # submit() raising: a sink's bug, counted as drops here
        self._last_notice = 0.0

    def write(self, record: dict) -> None:
        for s in self.sinks:
            try:
                s.submit(record)
            except Exception:
                self._raised[s.name] = self._raised.get(s.name, 0) + 1

    def flush(self) -> None:
        for s in self.sinks:
            try:
                s.flush()
            except Exception:
                pass
        if self.auto_notices and time.monotonic() - self._last_notice >= self.notice_interval_s:
            for notice in self.drain_notices():
                self.write_notice(notice)

    def write_notice(self, notice: dict) -> None:
        """A sink_dropped notice to every sink but the one it is about (to it alone if it is the only one)."""
        for s in self.sinks:
            if s.name != notice.get("sink") or len(self.sinks) == 1:
                try:
                    s.submit(notice)
                except Exception:
                    self._raised[s.name] = self._raised.get(s.name, 0) + 1

    def drain_notices(self) -> list[dict]:
        notices = []
        for s in self.sinks:
            st = s.stats()
            by_reason = dict(st.get("dropped_by_reason") or {})
            if self._raised.get(s.name):
                by_reason["submit_raised"] = self._raised[s.name]
            total = sum(by_reason.values())
            for reason, n in sorted(by_reason.items()):
                new = n - self._told.get((s.name, reason), 0)
                if new > 0:
                    self._told[(s.name, reason)] = n
                    notices.append({"kind": "status", "status": "sink_dropped", "time": wall_time(), "agent": None,
                                    "sink": s.name, "reason": reason, "dropped": new, "dropped_total": total})
        if notices:
            self._last_notice = time.monotonic()
        return notices

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        return all([getattr(s, "wait_idle", lambda t: True)(max(0.0, deadline - time.monotonic()))
                    for s in self.sinks])

    def close(self, timeout_s: float = 5.0) -> list[dict]:
        """Write what notices are due, close every sink within timeout_s in all; return the notices of drops
        that happened while closing (no sink is left to take them: the caller prints them)."""
        for notice in self.drain_notices():
            self.write_notice(notice)
        deadline = time.monotonic() + timeout_s
        for s in self.sinks:
            s.close(max(0.0, deadline - time.monotonic()))
        return self.drain_notices()

    def stats(self) -> dict[str, dict]:
        return {s.name: s.stats() for s in self.sinks}


# --- command-line specs -------------------------------------------------------------------------

SPEC_HELP = ("file:PATH[?max_bytes=100M&max_age_s=1d&keep=10], "
             "syslog:unix:PATH|udp:HOST:PORT|tcp:HOST:PORT[?facility=local0&app_name=..&hostname=..&bom=0"
             "&rfc5424=0|1], "
             "http:URL?spool=DIR[&token_file=F&body=lines|array&spool_max_bytes=256M&batch_max=500&flush_s=1"
             "&timeout_s=5&ca_file=F&url.NAME=VALUE]")
_SIZE_RE = re.compile(r"(\d+)\s*([kKmMgG]?)(i?[bB])?")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")


def parse_size(text: str) -> int:
    """"1048576", "512K", "100M", "1G", "256MiB": bytes (K/M/G are powers of 1024)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"expected a size such as 100M, got {text!r}")
    return int(m.group(1)) * {"": 1, "k": KIB, "m": MIB, "g": GIB}[m.group(2).lower()]


def parse_duration(text: str) -> float:
    """"30", "30s", "500ms", "5m", "1h", "1d": seconds."""
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"expected a duration such as 30s, 5m, 1h, got {text!r}")
    return float(m.group(1)) * {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _int(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"expected a whole number, got {text!r}")
    return int(text)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0 (true/false), got {text!r}")


_OPTIONS: dict[str, dict[str, tuple[str, Callable[[str], object]]]] = {
    "file": {"max_bytes": ("max_bytes", parse_size), "max_age_s": ("max_age_s", parse_duration),
             "max_age": ("max_age_s", parse_duration), "keep": ("keep", _int),
             "mode": ("mode", lambda t: int(t, 8))},
    "syslog": {"app_name": ("app_name", str), "hostname": ("hostname", str), "facility": ("facility", str),
               "bom": ("bom", _bool), "queue_max": ("queue_max", _int), "queue_max_bytes": ("queue_max_bytes", parse_size),
               "timeout_s": ("timeout_s", parse_duration), "rfc5424": ("rfc5424", _bool)},
    "http": {"spool": ("spool_dir", str), "spool_dir": ("spool_dir", str), "token_file": ("token_file", str),
             "body": ("body", str), "spool_max_bytes": ("spool_max_bytes", parse_size),
             "batch_max": ("batch_max", _int), "batch_max_bytes": ("batch_max_bytes", parse_size),
             "flush_s": ("flush_s", parse_duration), "timeout_s": ("timeout_s", parse_duration),
             "ca_file": ("ca_file", str)},
}


def _options(spec: str, kind: str, query: str) -> tuple[dict, list[tuple[str, str]]]:
    known = _OPTIONS[kind]
    out: dict = {}
    passthrough: list[tuple[str, str]] = []
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"sink {spec!r}: options {query!r} are not NAME=VALUE&NAME=VALUE") from None
    for key, value in pairs:
        if kind == "http" and key.startswith("url.") and len(key) > 4:
            passthrough.append((key[4:], value))
            continue
        if key not in known:
            raise ValueError(f"sink {spec!r}: unknown option {key!r} for {kind} (known: {', '.join(known)})")
        param, convert = known[key]
        if param in out:
            raise ValueError(f"sink {spec!r}: option {key!r} given twice")
        try:
            out[param] = convert(value)
        except ValueError as exc:
            raise ValueError(f"sink {spec!r}: {key}: {exc}") from None
    return out, passthrough


def _spec_parts(spec: str) -> tuple[str, str, dict, list]:
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in _OPTIONS:
        raise ValueError(f"sink {spec!r}: unknown kind {kind!r}; expected {SPEC_HELP}")
    target, _, query = rest.partition("?")
    if not target:
        raise ValueError(f"sink {spec!r}: nothing after {kind}:")
    opts, passthrough = _options(spec, kind, query)
    return kind, target, opts, passthrough


def parse_sink(spec: str, encode: Encode = encode_json) -> Sink:
    """A sink from a command-line spec (SPEC_HELP); ValueError naming the bad part otherwise.

        file:/var/log/aw.jsonl?max_bytes=100M&keep=5
        syslog:unix:/dev/log            syslog:tcp:127.0.0.1:514?facility=local3
        http:https://siem.example/ingest?token_file=/etc/aw/token&body=array&spool=/var/spool/agentwatch

    Options after "?" are the sink's (URL-encoded); an http URL's own query
    parameters are written url.NAME=VALUE. The sink is started (files
    opened, threads running): a failure to do so is a ValueError too.
    """
    kind, target, opts, passthrough = _spec_parts(spec)
    name = f"{kind}:{target}"
    try:
        if kind == "file":
            return FileSink(target, encode=encode, name=name, **opts)
        if kind == "syslog":
            parse_syslog_target(target)
            return SyslogSink(target, encode=encode, name=name, **opts)
        if "spool_dir" not in opts:
            raise ValueError("needs spool=DIR (the directory where records wait on disk)")
        url = target
        if passthrough:
            url += "?" + urlencode(passthrough, quote_via=quote)
        return HttpSink(url, encode=encode, name=name, **opts)
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith("sink ") else f"sink {spec!r}: {text}") from None
    except (OSError, SpoolInUse, ssl.SSLError) as exc:
        raise ValueError(f"sink {spec!r}: {_errtext(exc) if isinstance(exc, OSError) else exc}") from None
