"""tracer.sinks without root: files, syslog framing, HTTP delivery against receivers on 127.0.0.1.

Every receiver here is a thread of this process on the loopback of the root namespace, on a port
the kernel picks: nothing is added to any namespace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from tracer import sinks
from tracer.sinks import FileSink, HttpSink, SinkSet, SyslogSink, parse_sink, record_id

REPO = Path(__file__).resolve().parents[2]


def rec(i: int, kind: str = "event", **extra) -> dict:
    r = {"kind": kind, "type": "exec", "time": f"2026-01-02T03:04:05.{i:09d}Z", "agent": None, "seq": i,
         "process": {"pid": 1000 + i, "comm": "sh", "argv": ["sh", "-c", f"echo {i}"]}}
    if kind == "alert":
        r.pop("type")
        r.update(rule="stratum-protocol", severity="critical", message=f"miner {i}")
    r.update(extra)
    return r


def wait_until(pred, timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# --- FileSink ------------------------------------------------------------------------------------


def _lines_in_order(path: Path, keep: int) -> list[dict]:
    """Every line of path.keep ... path.1, path (oldest first)."""
    out = []
    for p in [Path(f"{path}.{i}") for i in range(keep, 0, -1)] + [path]:
        if p.exists():
            out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def test_file_rotation_by_size_keeps_every_line(tmp_path):
    path = tmp_path / "aw.jsonl"
    sink = FileSink(path, max_bytes=2000, keep=50)
    for i in range(300):
        sink.submit(rec(i))
    sink.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 10 and sink.rotations == len(files) - 1
    assert all(f.stat().st_size <= 2000 for f in files)
    assert [r["seq"] for r in _lines_in_order(path, 50)] == list(range(300))
    assert sink.stats()["dropped"] == 0 and sink.stats()["delivered"] == 300


def test_file_rotation_keep_removes_the_oldest(tmp_path):
    path = tmp_path / "aw.jsonl"
    sink = FileSink(path, max_bytes=1000, keep=3)
    for i in range(200):
        sink.submit(rec(i))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aw.jsonl", "aw.jsonl.1", "aw.jsonl.2", "aw.jsonl.3"]
    seqs = [r["seq"] for r in _lines_in_order(path, 3)]
    assert seqs == list(range(seqs[0], 200))  # the newest, contiguous: nothing lost inside what is kept


def test_file_rotation_by_age(tmp_path):
    now = [1000.0]
    path = tmp_path / "aw.jsonl"
    sink = FileSink(path, max_age_s=60, keep=5, clock=lambda: now[0])
    for i in range(10):
        sink.submit(rec(i))
        now[0] += 20  # a new file every three records
    now[0] += 40  # the last file (record 9) is now 60 s old
    sink.flush()  # an aged file rotates at flush too, without waiting for a record
    sink.close()
    assert sink.rotations == 4
    assert [r["seq"] for r in _lines_in_order(path, 5)] == list(range(10))
    assert path.stat().st_size == 0  # rotated at the flush; the new file is empty


def test_file_reopens_after_an_outside_rotation(tmp_path):
    path = tmp_path / "aw.jsonl"
    sink = FileSink(path)
    sink.submit(rec(0))
    os.rename(path, tmp_path / "moved")  # logrotate without copytruncate
    sink.submit(rec(1))  # still the moved file: nothing has told the sink yet
    sink.flush()
    sink.submit(rec(2))
    sink.close()
    assert [json.loads(x)["seq"] for x in (tmp_path / "moved").read_text().splitlines()] == [0, 1]
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [2]
    assert sink.reopens == 1


def test_file_lines_whole_across_rotation_with_threads(tmp_path):
    path = tmp_path / "aw.jsonl"
    sink = FileSink(path, max_bytes=4096, keep=1000)

    def writer(t):
        for i in range(500):
            sink.submit(rec(t * 1000 + i))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    got = _lines_in_order(path, 1000)  # json.loads of every line: none torn
    assert sorted(r["seq"] for r in got) == sorted(t * 1000 + i for t in range(4) for i in range(500))
    for t in range(4):  # and each writer's lines in its order
        mine = [r["seq"] for r in got if r["seq"] // 1000 == t]
        assert mine == sorted(mine)


def test_file_write_failure_is_counted(tmp_path):
    sink = FileSink("/dev/full")
    sink.submit(rec(0))
    st = sink.stats()
    assert st["dropped_by_reason"] == {"write_failed": 1} and "ENOSPC" in st["last_error"]


# --- syslog format ------------------------------------------------------------------------------

RFC5424 = re.compile(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) (.*)", re.S)


def parse5424(msg: bytes) -> dict:
    m = RFC5424.fullmatch(msg)
    assert m, msg[:200]
    pri = int(m.group(1))
    return {"facility": pri // 8, "severity": pri % 8, "time": m.group(2).decode(), "host": m.group(3).decode(),
            "app": m.group(4).decode(), "procid": m.group(5).decode(), "msgid": m.group(6).decode(),
            "sd": m.group(7).decode(), "msg": m.group(8)}


@pytest.mark.parametrize("severity,expected", [("critical", 2), ("high", 3), ("medium", 4), ("low", 5), ("info", 6)])
def test_syslog_alert_severity(severity, expected):
    r = rec(1, "alert", severity=severity)
    m = parse5424(sinks.syslog_message(r, orjson.dumps(r)))
    assert (m["facility"], m["severity"], m["msgid"]) == (16, expected, "alert")


def test_syslog_message_fields():
    r = rec(123456789, message="caf\u00e9 \u65e5\u672c")
    msg = sinks.syslog_message(r, orjson.dumps(r), facility=sinks.FACILITIES["local3"], hostname="host-1",
                               app_name="agentwatch", procid="4242")
    m = parse5424(msg)
    assert m["facility"] == 19 and m["severity"] == 6  # events are info
    assert m["time"] == "2026-01-02T03:04:05.123456Z"  # nanoseconds cut to the 6 digits RFC 5424 allows
    assert (m["host"], m["app"], m["procid"], m["msgid"], m["sd"]) == ("host-1", "agentwatch", "4242", "exec", "-")
    assert json.loads(m["msg"]) == r  # MSG-ANY: the JSON as it is, UTF-8, no BOM
    bommed = parse5424(sinks.syslog_message(r, orjson.dumps(r), bom=True))["msg"]
    assert bommed.startswith(sinks.BOM) and json.loads(bommed[3:]) == r


def test_syslog_msgid_and_time_fallbacks():
    assert sinks.syslog_msgid({"kind": "status", "status": "agent_started"}) == "status"
    assert sinks.syslog_msgid({"kind": "event", "type": "connect"}) == "connect"
    assert sinks.syslog_msgid({}) == "-"
    assert sinks.syslog_severity({"kind": "status", "status": "sink_dropped"}) == 4
    assert sinks.syslog_timestamp("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05Z"
    assert sinks.syslog_timestamp("2026-01-02T03:04:05.5+02:00") == "2026-01-02T03:04:05.5+02:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", sinks.syslog_timestamp("garbage"))
    assert sinks.octet_frame(b"<14>1 - - - - - - x") == b"19 <14>1 - - - - - - x"


def read_frames(data: bytes) -> list[bytes]:
    """RFC 6587 octet-counted frames out of a TCP stream."""
    out, pos = [], 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        n = int(data[pos:sp])
        out.append(data[sp + 1:sp + 1 + n])
        pos = sp + 1 + n
    assert pos == len(data)
    return out


def whole_frames(data: bytes) -> int:
    """How many whole frames data holds so far (a receiver polled mid-stream has a partial one)."""
    n, pos = 0, 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0 or sp + 1 + int(data[pos:sp]) > len(data):
            break
        pos = sp + 1 + int(data[pos:sp])
        n += 1
    return n


class TcpReceiver:
    """A listening TCP socket on 127.0.0.1; accept() collects everything each connection sent."""

    def __init__(self, listen: bool = True, read: bool = True):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.data = bytearray()
        self.read = read
        self.conns: list[socket.socket] = []
        if listen:
            self.listen()

    def listen(self):
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.read:
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        while chunk := conn.recv(65536):
            self.data += chunk

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def test_syslog_tcp_octet_counting_in_order():
    rx = TcpReceiver()
    sink = SyslogSink(f"tcp:127.0.0.1:{rx.port}", hostname="h")
    records = [rec(i, message="x" * (i % 50)) for i in range(2000)]
    for r in records:
        sink.submit(r)
    assert sink.wait_idle(10)
    sink.close(2)
    wait_until(lambda: whole_frames(bytes(rx.data)) == 2000)
    got = [json.loads(parse5424(f)["msg"]) for f in read_frames(bytes(rx.data))]
    assert got == records
    assert sink.stats()["delivered"] == 2000 and sink.stats()["dropped"] == 0
    rx.close()


def test_syslog_tcp_waits_for_a_receiver_then_delivers_in_order():
    rx = TcpReceiver(listen=False)  # bound, not listening: connections are refused
    sink = SyslogSink(f"tcp:127.0.0.1:{rx.port}", retry_base_s=0.01, retry_cap_s=0.05)
    for i in range(100):
        sink.submit(rec(i))
    assert wait_until(lambda: sink.stats()["failed"] >= 2)
    assert sink.stats()["queued"] == 100 and "ECONNREFUSED" in sink.stats()["last_error"]
    rx.listen()
    assert sink.wait_idle(10)
    sink.close(2)
    wait_until(lambda: whole_frames(bytes(rx.data)) == 100)
    assert [json.loads(parse5424(f)["msg"])["seq"] for f in read_frames(bytes(rx.data))] == list(range(100))
    assert sink.stats()["retries"] >= 1
    rx.close()


def test_syslog_queue_full_drops_the_oldest_counted_and_told():
    rx = TcpReceiver(listen=False)
    sink = SyslogSink(f"tcp:127.0.0.1:{rx.port}", queue_max=10, retry_base_s=0.01, retry_cap_s=0.05)
    for i in range(25):
        sink.submit(rec(i))
    st = sink.stats()
    assert st["dropped"] == 15 and st["dropped_by_reason"] == {"queue_full": 15}
    notices = SinkSet([sink]).drain_notices()
    assert [(n["kind"], n["status"], n["sink"], n["dropped"], n["reason"]) for n in notices] == [
        ("status", "sink_dropped", sink.name, 15, "queue_full")]
    rx.listen()
    assert sink.wait_idle(10)
    sink.close(2)
    wait_until(lambda: whole_frames(bytes(rx.data)) == 10)
    assert [json.loads(parse5424(f)["msg"])["seq"] for f in read_frames(bytes(rx.data))] == list(range(15, 25))
    rx.close()


LOCAL = re.compile(rb"<(\d{1,3})>([A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d) ([^\[\]: ]+)\[(\d+)\]: (.*)", re.S)


def parse_local(msg: bytes) -> dict:
    """<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG, as glibc's syslog(3) writes to /dev/log."""
    m = LOCAL.fullmatch(msg)
    assert m, msg[:200]
    pri = int(m.group(1))
    return {"facility": pri // 8, "severity": pri % 8, "time": m.group(2).decode(), "app": m.group(3).decode(),
            "procid": m.group(4).decode(), "msgid": None, "msg": m.group(5)}


def test_syslog_local_message_fields():
    r = rec(1, "alert", severity="medium")
    m = parse_local(sinks.syslog_local_message(r, orjson.dumps(r), facility=sinks.FACILITIES["local3"],
                                               tag=sinks.syslog_tag("aw: [x] y"), procid="42"))
    assert (m["facility"], m["severity"], m["app"], m["procid"]) == (19, 4, "aw___x__y", "42")
    assert json.loads(m["msg"]) == r
    local = time.mktime((2026, 3, 5, 7, 8, 9, 0, 0, -1))
    assert sinks.local_timestamp(local) == "Mar  5 07:08:09"  # local time, the day padded with a space (%e)


@pytest.mark.parametrize("transport,rfc5424", [("udp", None), ("unix", None), ("udp", False), ("unix", True)])
def test_syslog_udp_and_unix(tmp_path, transport, rfc5424):
    """udp: RFC 5424 by default; unix (/dev/log): the local syntax of syslog(3) by default."""
    if transport == "udp":
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        target = f"udp:127.0.0.1:{rx.getsockname()[1]}"
    else:
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(str(tmp_path / "log"))
        target = f"unix:{tmp_path / 'log'}"
    rx.settimeout(5)
    sink = SyslogSink(target, facility="user", app_name="aw test", rfc5424=rfc5424)
    as5424 = transport != "unix" if rfc5424 is None else rfc5424
    assert sink.rfc5424 == as5424
    for i in range(50):
        sink.submit(rec(i, "alert", severity="high"))
    parse = parse5424 if as5424 else parse_local
    got = [parse(rx.recv(65536)) for _ in range(50)]  # (a unix receiver's queue holds few datagrams)
    assert sink.wait_idle(5)
    sink.close(1)
    assert [json.loads(m["msg"])["seq"] for m in got] == list(range(50))
    msgid = "alert" if as5424 else None
    assert {(m["facility"], m["severity"], m["app"], m["msgid"]) for m in got} == {(1, 3, "aw_test", msgid)}
    assert {m["procid"] for m in got} == {str(os.getpid())}
    rx.close()


def test_syslog_unix_too_large_is_counted(tmp_path):
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(tmp_path / "log"))
    sink = SyslogSink(f"unix:{tmp_path / 'log'}")
    sink.submit(rec(0, blob="y" * 400_000))  # over the socket's send buffer
    sink.submit(rec(1))
    assert sink.wait_idle(5)
    sink.close(1)
    rx.settimeout(5)
    assert json.loads(parse_local(rx.recv(65536))["msg"])["seq"] == 1
    assert sink.stats()["dropped_by_reason"] == {"too_large": 1}


# --- HTTP ----------------------------------------------------------------------------------------


class Receiver:
    """An HTTP receiver on 127.0.0.1 in a thread. respond(n, handler, body) -> status (and may sleep).

    requests: (headers, body) of every request; records(): the records of the 2xx ones, in order.
    """

    def __init__(self, respond=None, port: int = 0):
        self.requests: list[tuple[dict, bytes, int]] = []
        self.respond = respond or (lambda n, h, body: 200)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append((dict(self.headers), body, 0))
                status = outer.respond(n, self, body)
                with outer.lock:
                    outer.requests[n] = (dict(self.headers), body, status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/ingest"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def ok_bodies(self) -> list[tuple[dict, bytes]]:
        with self.lock:
            return [(h, b) for h, b, s in self.requests if 200 <= s < 300]

    def records(self) -> list[dict]:
        out = []
        for h, body in self.ok_bodies():
            if h["Content-Type"] == "application/json":
                out += json.loads(body)
            else:
                out += [json.loads(line) for line in body.splitlines()]
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def dead_url() -> str:
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/ingest"


FAST = {"retry_base_s": 0.01, "retry_cap_s": 0.05, "flush_s": 0.05}


def test_http_batches_lines_bearer_and_ids(tmp_path):
    rx = Receiver()
    (tmp_path / "token").write_text("s3cret\n")
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", token_file=tmp_path / "token", batch_max=500, **FAST)
    records = [rec(i) for i in range(1200)] + [rec(1200, id="my-own-id")]
    for r in records:
        sink.submit(r)
    assert sink.wait_idle(10)
    sink.close(2)
    bodies = rx.ok_bodies()
    assert [len(b.splitlines()) for _, b in bodies] == [500, 500, 201]
    assert {h["Content-Type"] for h, _ in bodies} == {"application/x-ndjson"}
    assert {h["Authorization"] for h, _ in bodies} == {"Bearer s3cret"}
    got = rx.records()
    assert [g["id"] for g in got] == [record_id(r) for r in records[:-1]] + ["my-own-id"]
    assert [{k: v for k, v in g.items() if k != "id"} for g in got[:-1]] == records[:-1]
    assert list(got[0])[0] == "id"  # the id comes first
    assert record_id(records[0]) == record_id(dict(reversed(list(records[0].items()))))  # key order does not matter
    assert "id" not in records[0]  # the caller's record is left as it was
    st = sink.stats()
    assert (st["delivered"], st["queued"], st["dropped"], st["failed"]) == (1201, 0, 0, 0)
    assert not list((tmp_path / "spool").glob("*.seg"))  # every segment delivered is deleted
    rx.close()


def test_http_array_body(tmp_path):
    rx = Receiver()
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", body="array", batch_max=7, **FAST)
    for i in range(20):
        sink.submit(rec(i))
    assert sink.wait_idle(10)
    sink.close(2)
    assert {h["Content-Type"] for h, _ in rx.ok_bodies()} == {"application/json"}
    assert [len(json.loads(b)) for _, b in rx.ok_bodies()] == [7, 7, 6]
    assert [r["seq"] for r in rx.records()] == list(range(20))
    rx.close()


def test_http_flush_s_sends_a_partial_batch(tmp_path):
    rx = Receiver()
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=500, flush_s=0.2)
    t0 = time.monotonic()
    sink.submit(rec(0))
    assert wait_until(lambda: rx.ok_bodies(), 5)
    assert 0.15 <= time.monotonic() - t0 < 3
    sink.close(2)
    rx.close()


def test_http_500_then_200_delivers_once(tmp_path):
    rx = Receiver(lambda n, h, b: 500 if n < 3 else 200)
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=100, **FAST)
    for i in range(250):
        sink.submit(rec(i))
    assert sink.wait_idle(10)
    sink.close(2)
    assert [r["seq"] for r in rx.records()] == list(range(250))
    st = sink.stats()
    assert st["failed"] == 3 and st["retries"] >= 3 and st["last_error"].endswith("HTTP 500")
    assert st["delivered"] == 250 and st["dropped"] == 0
    rx.close()


def test_http_retry_after_is_honoured(tmp_path):
    times = []

    def respond(n, h, b):
        times.append(time.monotonic())
        if n == 0:
            h.send_response(503)
            h.send_header("Retry-After", "1")
            h.send_header("Content-Length", "0")
            h.end_headers()
            h.close_connection = True
            return 503
        return 200

    rx = Receiver(lambda n, h, b: respond(n, h, b) if n else (times.append(time.monotonic()) or 429))
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", **FAST)
    sink.submit(rec(0))
    assert sink.wait_idle(10)
    sink.close(2)
    assert len(times) == 2 and times[1] - times[0] < 1  # 429 without Retry-After: the short backoff
    rx.close()


def test_http_bearer_token_reread_on_401(tmp_path):
    token = tmp_path / "token"
    token.write_text("old")
    rx = Receiver(lambda n, h, b: 200 if h.headers.get("Authorization") == "Bearer new" else 401)
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", token_file=token, **FAST)
    sink.submit(rec(0))
    assert wait_until(lambda: sink.stats()["failed"] >= 2)  # 401, re-read (still old), 401: backing off
    token.write_text("new\n")  # rotated
    assert sink.wait_idle(10)
    sink.close(2)
    assert [r["seq"] for r in rx.records()] == [0]
    auths = [h["Authorization"] for h, _, _ in rx.requests]
    assert auths[0] == auths[1] == "Bearer old" and auths[-1] == "Bearer new"
    rx.close()


def test_http_spool_survives_a_new_instance(tmp_path):
    url = dead_url()
    sink = HttpSink(url, spool_dir=tmp_path / "spool", segment_bytes=4096, **FAST)
    records = [rec(i) for i in range(300)]
    for r in records:
        sink.submit(r)
    assert not sink.wait_idle(0.3)
    sink.close(0.2)  # the receiver is down: they stay on disk
    st = sink.stats()
    assert st["queued"] == 300 and st["dropped"] == 0 and st["spooled_bytes"] > 0
    assert len(list((tmp_path / "spool").glob("*.seg"))) > 3
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    rx = Receiver(port=port)
    again = HttpSink(url, spool_dir=tmp_path / "spool", **FAST)
    assert again.stats()["queued"] == 300
    for i in range(300, 310):
        again.submit(rec(i))
    assert again.wait_idle(10)
    again.close(2)
    assert [r["seq"] for r in rx.records()] == list(range(310))  # once each, in order
    assert not list((tmp_path / "spool").glob("*.seg"))
    rx.close()


def test_http_resumes_mid_segment_without_resending(tmp_path):
    rx = Receiver(lambda n, h, b: 200 if n < 2 else 500)  # two batches delivered, then down
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=10, **FAST)
    for i in range(50):  # all in one segment
        sink.submit(rec(i))
    assert wait_until(lambda: sink.stats()["failed"] >= 1)
    sink.close(0.1)
    assert sink.stats()["delivered"] == 20
    rx.respond = lambda n, h, b: 200
    again = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=10, **FAST)
    assert again.stats()["queued"] == 30
    assert again.wait_idle(10)
    again.close(2)
    assert [r["seq"] for r in rx.records()] == list(range(50))
    rx.close()


CRASHER = """
import sys, time
sys.path.insert(0, {repo!r})
from tracer.sinks import HttpSink
sink = HttpSink({url!r}, spool_dir={spool!r}, batch_max=100, flush_s=0.01, retry_base_s=0.01, retry_cap_s=0.05)
for i in range(1000):
    sink.submit({{"kind": "event", "type": "exec", "seq": i}})
print("submitted", flush=True)
time.sleep(60)
"""


def test_http_crash_resends_only_the_batch_in_flight(tmp_path):
    """kill -9 while a batch is in flight: a new HttpSink resends that batch (dedupe by id) and the rest once."""
    release = threading.Event()

    def respond(n, h, b):
        if n == 3:  # the fourth batch hangs until the sender is dead
            release.wait(30)
            return 200
        return 200

    rx = Receiver(respond)
    spool = str(tmp_path / "spool")
    child = subprocess.Popen([sys.executable, "-c", CRASHER.format(repo=str(REPO), url=rx.url, spool=spool)],
                             stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"submitted\n"
    assert wait_until(lambda: len(rx.requests) == 4)
    child.send_signal(signal.SIGKILL)
    child.wait()
    release.set()
    again = HttpSink(rx.url, spool_dir=spool, batch_max=100, **FAST)
    assert again.stats()["queued"] == 700  # batches 1-3 were acknowledged before the kill
    assert again.wait_idle(10)
    again.close(2)
    seqs = [r["seq"] for r in rx.records()]
    assert len(seqs) == 1100  # the hung batch twice
    first_seen = list(dict.fromkeys(r["id"] for r in rx.records()))
    assert len(first_seen) == 1000
    assert list(dict.fromkeys(seqs)) == list(range(1000))
    assert seqs[300:400] == seqs[400:500] == list(range(300, 400))
    rx.close()


def test_http_flaky_receiver_ordered_exactly_once(tmp_path):
    import random
    rnd = random.Random(7)
    rx = Receiver(lambda n, h, b: rnd.choice([200, 200, 500, 502, 503]))
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=50, segment_bytes=8192, **FAST)
    records = [rec(i) for i in range(3000)]
    for r in records:
        sink.submit(r)
    assert sink.wait_idle(30)
    sink.close(2)
    got = rx.records()
    assert [g["id"] for g in got] == [record_id(r) for r in records]
    assert sink.stats()["failed"] > 0 and sink.stats()["dropped"] == 0
    rx.close()


def test_http_spool_bound_drops_the_oldest_and_counts(tmp_path):
    url = dead_url()
    sink = HttpSink(url, spool_dir=tmp_path / "spool", spool_max_bytes=64 * 1024, segment_bytes=8192, **FAST)
    for i in range(1000):  # ~200 KB
        sink.submit(rec(i))
    st = sink.stats()
    assert st["spooled_bytes"] <= 64 * 1024 and st["dropped"] > 0
    assert st["dropped"] + st["queued"] == 1000 and st["dropped_by_reason"] == {"spool_full": st["dropped"]}
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.seg")) <= 64 * 1024
    notices = SinkSet([sink]).drain_notices()
    assert notices[0]["dropped"] == st["dropped"] and notices[0]["reason"] == "spool_full"
    sink.close(0.1)
    rx = Receiver(port=int(url.rsplit(":", 1)[1].split("/")[0]))
    again = HttpSink(url, spool_dir=tmp_path / "spool", spool_max_bytes=64 * 1024, segment_bytes=8192, **FAST)
    assert again.wait_idle(10)
    again.close(2)
    seqs = [r["seq"] for r in rx.records()]
    assert seqs == list(range(st["dropped"], 1000))  # the newest, contiguous and in order
    rx.close()


def test_http_submit_stays_fast_while_the_receiver_hangs(tmp_path):
    hang = threading.Event()
    rx = Receiver(lambda n, h, b: hang.wait(20) and 200)
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=100, flush_s=0.01, timeout_s=30)
    big = rec(0, evidence=[rec(j) for j in range(4)])  # about 1 KB
    times = []
    for i in range(3000):
        r = dict(big, seq=i)
        t0 = time.perf_counter()
        sink.submit(r)
        times.append(time.perf_counter() - t0)
    assert wait_until(lambda: len(rx.requests) >= 1)  # a batch is out and hanging (on a loaded machine, soon)
    times.sort()
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    assert p99 < 0.001, (p50, p99, times[-1])
    assert times[-1] < 0.05, times[-1]  # not blocked on the receiver (a preempted call, at worst)
    hang.set()
    assert sink.wait_idle(20)
    sink.close(2)
    assert [r["seq"] for r in rx.records()] == list(range(3000))
    rx.close()


def test_syslog_submit_stays_fast_while_the_receiver_does_not_read():
    rx = TcpReceiver(read=False)  # accepts, never reads: the sender blocks in sendall
    sink = SyslogSink(f"tcp:127.0.0.1:{rx.port}", timeout_s=30, queue_max=1000)
    times = []
    payload = "z" * 900
    for i in range(20000):
        t0 = time.perf_counter()
        sink.submit(rec(i, blob=payload))
        times.append(time.perf_counter() - t0)
    times.sort()
    assert times[int(len(times) * 0.99)] < 0.001 and times[-1] < 0.05
    st = sink.stats()
    assert st["dropped_by_reason"].get("queue_full", 0) > 0  # the bound held
    sink.close(0.2)
    assert sink.stats()["dropped_by_reason"]["closed"] > 0
    rx.close()


def test_http_413_halves_the_batch_and_400_on_one_record_drops_it(tmp_path):
    def respond(n, h, body):
        if len(body.splitlines()) > 8:
            return 413
        return 400 if b'"poison"' in body else 200

    rx = Receiver(respond)
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", batch_max=100, **FAST)
    for i in range(60):
        sink.submit(rec(i, tag="poison" if i == 33 else "ok"))
    assert sink.wait_idle(10)
    sink.close(2)
    assert [r["seq"] for r in rx.records()] == [i for i in range(60) if i != 33]
    st = sink.stats()
    assert st["dropped_by_reason"] == {"rejected": 1} and st["delivered"] == 59
    rx.close()


def test_http_hung_receiver_at_close_keeps_the_batch(tmp_path):
    hang = threading.Event()
    rx = Receiver(lambda n, h, b: hang.wait(20) and 200)
    sink = HttpSink(rx.url, spool_dir=tmp_path / "spool", timeout_s=20, **FAST)
    for i in range(5):
        sink.submit(rec(i))
    assert wait_until(lambda: rx.requests)
    t0 = time.monotonic()
    sink.close(0.3)
    assert time.monotonic() - t0 < 3
    assert sink.stats()["queued"] == 5
    hang.set()
    rx.close()


def test_http_spool_in_use(tmp_path):
    sink = HttpSink(dead_url(), spool_dir=tmp_path / "spool", **FAST)
    with pytest.raises(sinks.SpoolInUse, match=r"in use \(by pid"):
        HttpSink(dead_url(), spool_dir=tmp_path / "spool")
    sink.close(0.1)
    HttpSink(dead_url(), spool_dir=tmp_path / "spool").close(0.1)


def test_http_https_with_a_ca_file(tmp_path):
    import ssl
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    rx = Receiver()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    rx.server.socket = ctx.wrap_socket(rx.server.socket, server_side=True)
    url = f"https://127.0.0.1:{rx.port}/ingest"
    untrusted = HttpSink(url, spool_dir=tmp_path / "a", **FAST)  # the system store does not know it
    untrusted.submit(rec(0))
    assert wait_until(lambda: untrusted.stats()["failed"] >= 1)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stats()["last_error"]
    untrusted.close(0.1)
    trusted = HttpSink(url, spool_dir=tmp_path / "b", ca_file=cert, **FAST)
    trusted.submit(rec(1))
    assert trusted.wait_idle(10)
    trusted.close(1)
    assert [r["seq"] for r in rx.records()] == [1]
    rx.close()


def test_http_torn_spool_tail_is_counted(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{1:020d}.seg").write_bytes(b'{"id":"a","seq":0}\n{"id":"b","se')
    rx = Receiver()
    sink = HttpSink(rx.url, spool_dir=spool, **FAST)
    assert sink.stats()["dropped_by_reason"] == {"spool_torn": 1}
    assert sink.wait_idle(10)
    sink.close(1)
    assert rx.records() == [{"id": "a", "seq": 0}]
    rx.close()


# --- SinkSet -------------------------------------------------------------------------------------


def test_sinkset_writes_to_every_sink_and_tells_the_others_of_drops(tmp_path):
    rx = TcpReceiver(listen=False)
    syslog = SyslogSink(f"tcp:127.0.0.1:{rx.port}", queue_max=5, retry_base_s=0.01, name="siem")
    f = FileSink(tmp_path / "aw.jsonl")
    ss = SinkSet([f, syslog], notice_interval_s=0)
    for i in range(12):
        ss.write(rec(i))
    ss.flush()  # writes the notice to the other sinks
    lines = [json.loads(x) for x in (tmp_path / "aw.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in lines[:12]] == list(range(12))
    [notice] = lines[12:]
    assert notice["kind"] == "status" and notice["status"] == "sink_dropped" and notice["agent"] is None
    assert (notice["sink"], notice["reason"], notice["dropped"]) == ("siem", "queue_full", 7)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", notice["time"])
    ss.flush()
    assert len((tmp_path / "aw.jsonl").read_text().splitlines()) == 13  # told once
    assert syslog.stats()["queued"] == 5  # not to the full queue it is about: that would only drop another
    ss.write(rec(12))
    ss.flush()
    assert json.loads((tmp_path / "aw.jsonl").read_text().splitlines()[-1])["dropped"] == 1
    stats = ss.stats()
    assert set(stats) == {f.name, "siem"} and stats["siem"]["dropped"] == 8
    assert ss.close(0.1)[0]["reason"] == "closed"
    rx.close()


def test_sinkset_survives_a_sink_that_raises(tmp_path):
    class Broken(sinks.SinkBase):
        def submit(self, record):
            raise RuntimeError("bug")

    f = FileSink(tmp_path / "aw.jsonl")
    ss = SinkSet([Broken("broken"), f], auto_notices=False)
    ss.write(rec(0))
    assert f.stats()["delivered"] == 1
    assert ss.drain_notices()[0]["reason"] == "submit_raised"


def test_writer_sink_wraps_a_writer():
    from tracer.output import MemoryWriter
    mw = MemoryWriter()
    ss = SinkSet([sinks.WriterSink(mw, name="stdout")])
    ss.write(rec(0))
    ss.flush()
    assert mw.records == [rec(0)] and ss.stats()["stdout"]["delivered"] == 1


# --- parse_sink ----------------------------------------------------------------------------------


def test_parse_sink_good_specs(tmp_path):
    f = parse_sink(f"file:{tmp_path}/aw.jsonl?max_bytes=100M&keep=5&max_age_s=1d")
    assert isinstance(f, FileSink) and (f.max_bytes, f.keep, f.max_age_s) == (100 << 20, 5, 86400)
    assert f.name == f"file:{tmp_path}/aw.jsonl"
    f.close()
    s = parse_sink("syslog:tcp:127.0.0.1:1?facility=local3&app_name=aw&bom=1")
    assert isinstance(s, SyslogSink) and (s.facility, s.app_name, s.bom, s.proto) == (19, "aw", True, "tcp")
    s.close(0)
    s = parse_sink("syslog:udp:[::1]:514")
    assert s._transport.address == ("::1", 514) and s.rfc5424
    s.close(0)
    s = parse_sink("syslog:unix:/dev/log")
    assert not s.rfc5424  # what /dev/log's readers parse
    s.close(0)
    s = parse_sink("syslog:unix:/run/rsyslog-5424.sock?rfc5424=1")
    assert s.rfc5424
    s.close(0)
    (tmp_path / "tok").write_text("t")
    h = parse_sink(f"http:https://siem.example/ingest?token_file={tmp_path}/tok&body=array&spool={tmp_path}/sp"
                   "&spool_max_bytes=1G&batch_max=100&flush_s=250ms&url.index=aw%20x")
    assert isinstance(h, HttpSink)
    assert (h.body, h.batch_max, h.flush_s, h.spool_max_bytes, h.token_file) == (
        "array", 100, 0.25, 1 << 30, f"{tmp_path}/tok")
    assert h._target == "/ingest?index=aw%20x" and h.name == "http:https://siem.example/ingest"
    h.close(0)


@pytest.mark.parametrize("spec,message", [
    ("", "unknown kind ''"),
    ("kafka:broker:9092", "unknown kind 'kafka'"),
    ("file:", "nothing after file:"),
    ("file:/tmp/x?keep=many", "keep: expected a whole number, got 'many'"),
    ("file:/tmp/x?max_bytes=lots", "max_bytes: expected a size such as 100M, got 'lots'"),
    ("file:/tmp/x?max_age_s=soon", "max_age_s: expected a duration"),
    ("file:/tmp/x?rotate=1", "unknown option 'rotate' for file"),
    ("file:/tmp/x?keep=1&keep=2", "option 'keep' given twice"),
    ("file:/tmp/x?keep", "options 'keep' are not NAME=VALUE"),
    ("file:/nonexistent-dir/x", "No such file or directory"),
    ("syslog:/dev/log", "expected unix:PATH, udp:HOST:PORT or tcp:HOST:PORT"),
    ("syslog:tcp:127.0.0.1", "syslog target tcp: expected HOST:PORT"),
    ("syslog:tcp:127.0.0.1:99999", "port must be 1-65535, got '99999'"),
    ("syslog:udp:::1:514", "IPv6 address goes in brackets"),
    ("syslog:unix:", "needs a socket path"),
    ("syslog:unix:/dev/log?facility=local9", "syslog facility 'local9'"),
    ("syslog:unix:/dev/log?facility=24", "syslog facility 24: expected 0-23"),
    ("syslog:unix:/dev/log?bom=maybe", "bom: expected 1/0"),
    ("http:https://siem.example/ingest", "needs spool=DIR"),
    ("http:ftp://siem.example/x?spool=/tmp/s", "is not an http:// or https:// URL"),
    ("http:https://user:pw@siem.example/x?spool=/tmp/s", "credentials in the URL"),
    ("http:https://siem.example/x?spool=/tmp/s&body=xml", "body must be lines or array"),
    ("http:https://siem.example/x?spool=/tmp/s&tokenfile=/t", "unknown option 'tokenfile' for http"),
    ("http:https://siem.example:http/x?spool=/tmp/s", "Port could not be cast"),
])
def test_parse_sink_errors(spec, message, tmp_path):
    with pytest.raises(ValueError) as err:
        parse_sink(spec)
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith(f"sink {spec!r}: ")


def test_parse_sink_numeric_facility():
    s = parse_sink("syslog:udp:127.0.0.1:9?facility=3")  # "or 0-23", as the error for a bad one says
    s.close(0)
    assert s.facility == 3


def test_parse_sink_bad_spec_has_no_side_effect(tmp_path):
    with pytest.raises(ValueError):
        parse_sink(f"http:https://siem.example/x?spool={tmp_path}/sp&batch_max=x")
    assert not (tmp_path / "sp").exists()


def test_parse_sizes_and_durations():
    assert [sinks.parse_size(t) for t in ("10", "1K", "100M", "2G", "256MiB", "1kb")] == [
        10, 1024, 100 << 20, 2 << 30, 256 << 20, 1024]
    assert [sinks.parse_duration(t) for t in ("30", "30s", "500ms", "5m", "1h", "1d", "1.5s")] == [
        30, 30, 0.5, 300, 3600, 86400, 1.5]
