"""Output records: hostile text made safe, network fields, errno names, time."""

from __future__ import annotations

import calendar
import io
import ipaddress
import json
import random
import re
import time
import unicodedata

import pytest

from tracer import events
from tracer.agents import Agent
from tracer.output import JsonLinesWriter, TableWriter
from tracer.proctree import Process
from tracer.records import (
    Clock,
    errno_name,
    event_record,
    lost_record,
    network_json,
    safe_text,
    status_record,
)

# What must never reach a log or a terminal raw.
UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"plain ascii -x=1", "plain ascii -x=1"),
        (b"line1\nline2", "line1\\x0aline2"),
        (b"over\rwrite", "over\\x0dwrite"),
        (b"\x1b[2Jclear", "\\x1b[2Jclear"),
        (b"\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        (b"\xc2\x9b31m", "\\x9b31m"),  # C1 CSI, as UTF-8
        (b"\x9b31m", "\\x9b31m"),  # C1 CSI, as a raw (invalid UTF-8) byte
        ("a\u2028b".encode(), "a\\u2028b"),
        ("a\u2029b".encode(), "a\\u2029b"),
        ("evil\u202etxt.exe".encode(), "evil\\u202etxt.exe"),
        ("\u2066iso\u2069".encode(), "\\u2066iso\\u2069"),
        ("\u200emark".encode(), "\\u200emark"),
        (b"bad\xff\xfe", "bad\\xff\\xfe"),
        (b"cut\xe6\xbc", "cut\\xe6\\xbc"),  # UTF-8 sequence cut short
        (b"\xc0\xaf", "\\xc0\\xaf"),  # overlong "/"
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # a UTF-16 surrogate, encoded
        (b"nul\x00byte", "nul\\x00byte"),
        (b"del\x7f", "del\\x7f"),
        (b"tab\there", "tab\\x09here"),
        ("next\u0085line".encode(), "next\\x85line"),  # NEL
        ("caf\u00e9 \u6f22\u5b57 \U0001f600".encode(), "caf\u00e9 \u6f22\u5b57 \U0001f600"),
        (b"back\\slash \\x41", "back\\slash \\x41"),  # backslash stays itself
        (b"", ""),
    ],
    ids=lambda v: repr(v)[:30] if isinstance(v, bytes) else None,
)
def test_safe_text(raw, text):
    assert safe_text(raw) == text


def test_safe_text_output_is_always_safe():
    rng = random.Random(1234)
    alphabet = [b"\x1b", b"\n", b"\x9b", b"\xc2\x9b", "\u2028".encode(), "\u202e".encode(), b"\xff", b"a",
                b"\\", "\u00e9".encode(), b"\x00", b"\xe2", b"\x80"]
    for _ in range(2000):
        if rng.random() < 0.5:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        else:
            raw = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        text = safe_text(raw)
        assert not UNSAFE_CHARS.search(text), (raw, text)
        text.encode("utf-8")  # no lone surrogate left: always encodable


def test_safe_text_escapes_every_control_separator_and_bidi_format_char():
    explicit = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
    # All of these lie in the BMP (Unicode 14: none above U+FFFF), so the
    # scan stops there to stay fast.
    chars = [
        chr(c)
        for c in range(0x10000)
        if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp")
        or unicodedata.bidirectional(chr(c)) in explicit
    ]
    assert len(chars) > 65
    for ch in chars:
        out = safe_text(ch.encode("utf-8", "surrogatepass"))
        assert out.startswith("\\") and out.isascii(), (hex(ord(ch)), out)


def test_safe_text_escapes_arabic_letter_mark():
    assert safe_text("a\u061cb".encode()) == "a\\u061cb"


# --------------------------------------------------------------------------
# Whole records through the writers.

HOSTILE_ARGV = [
    b"sh",
    b"-c",
    b"echo hi\n{\"kind\":\"event\",\"forged\":true}",
    b"\x1b[2J\x1b]0;pwned\x07",
    b"\xc2\x9b31m\x9b0m",
    "\u2028\u2029\u202eexe.txt".encode(),
    b"\xff\xfe\x00\x7f\r",
    "caf\u00e9 \u6f22\u5b57 \U0001f600".encode(),
]
HOSTILE_COMM = b"\x1b[31mred\n\x9b"


class FixedClock(Clock):
    def __init__(self):
        super().__init__()
        self.offset_ns = 1_700_000_000 * 10**9


def _exec_event(retval: int, argv=HOSTILE_ARGV) -> events.ExecEvent:
    return events.ExecEvent(
        "exec", 5 * 10**9, 10**9, 4242, 4242, 4000, 1000, 1, HOSTILE_COMM,
        retval, events.EXEC_ARGV_TRUNCATED, b"/tmp/\x1b[2J\n/evil\xff", list(argv),
    )


def _process() -> Process:
    parent = Process(4000, 90, 1, 1000, b"\x1b]0;parent\x07", b"/bin/\x9bsh", [b"sh"])
    p = Process(4242, 100, 4000, 1000, HOSTILE_COMM, b"/tmp/\x1b[2J\n/evil\xff", list(HOSTILE_ARGV),
                True, parent=parent, agent_id=1)
    return p


def _agent() -> Agent:
    return Agent("agent-test", 1, 4000, {"team": "red"})


def _all_records() -> list[dict]:
    clock = FixedClock()
    proc, agent = _process(), _agent()
    connect = events.ConnectEvent("connect", 6 * 10**9, 10**9, 4242, 4242, 4000, 1000, 1, HOSTILE_COMM,
                                  -111, 3, 2, 6, 1, 0, 0, 443, 0, bytes(16), bytes([1, 2, 3, 4]) + bytes(12))
    exit_ = events.ExitEvent("exit", 7 * 10**9, 10**9, 4242, 4242, 4000, 1000, 1, HOSTILE_COMM, 9)
    fork = events.ForkEvent("fork", 8 * 10**9, 10**9, 4242, 4242, 4000, 1000, 1, HOSTILE_COMM, 4243, 1, 2 * 10**9)
    child = Process(4243, 200, 4242, 1000, HOSTILE_COMM, parent=proc)
    return [
        event_record(clock, _exec_event(0), proc, agent),
        event_record(clock, _exec_event(-13), proc, agent),
        event_record(clock, connect, proc, agent),
        event_record(clock, exit_, proc, None),
        event_record(clock, fork, proc, agent, child),
        lost_record(clock, {"fork": 0, "exec": 3, "exit": 0, "connect": 1}, {"fork": 0, "exec": 5, "exit": 0, "connect": 1}),
        status_record(clock, "watching", agent, pids=[4000, 4242]),
    ]


def assert_clean_line(line: bytes) -> None:
    assert not any(b < 0x20 for b in line), line
    assert b"\x7f" not in line
    assert b"\x1b" not in line
    assert b"\xc2\x9b" not in line and b"\x9b" not in line
    for ch in "\u2028\u2029\u202e":
        assert ch.encode() not in line
    line.decode("utf-8")  # valid UTF-8


def test_exec_record_as_one_json_line():
    clock, proc = FixedClock(), _process()
    rec = event_record(clock, _exec_event(0), proc, _agent())
    buf = io.BytesIO()
    JsonLinesWriter(buf).write(rec)
    data = buf.getvalue()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert_clean_line(data[:-1])
    parsed = json.loads(data)
    assert parsed["type"] == "exec"
    assert parsed["process"]["argv"] == [safe_text(a) for a in HOSTILE_ARGV]
    assert parsed["process"]["argv"][3] == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert parsed["process"]["argv"][7] == "caf\u00e9 \u6f22\u5b57 \U0001f600"
    assert parsed["process"]["comm"] == "\\x1b[31mred\\x0a\\x9b"
    assert parsed["process"]["exe"] == "/tmp/\\x1b[2J\\x0a/evil\\xff"
    assert parsed["process"]["ancestry"] == [{"pid": 4000, "comm": "\\x1b]0;parent\\x07", "exe": "/bin/\\x9bsh"}]
    assert parsed["exec"]["filename"] == "/tmp/\\x1b[2J\\x0a/evil\\xff"
    assert parsed["exec"]["result"] == "ok"
    assert "argv" not in parsed["exec"]  # a successful exec's argv is the process's
    assert parsed["agent"] == {"id": "agent-test", "root_pid": 4000, "labels": {"team": "red"}}
    assert parsed["time"] == "2023-11-14T22:13:25.000000000Z"


def test_failed_exec_record_carries_what_it_tried():
    rec = event_record(FixedClock(), _exec_event(-2, [b"/nope\n", b"x"]), _process(), _agent())
    assert rec["exec"]["result"] == "ENOENT" and rec["exec"]["retval"] == -2
    assert rec["exec"]["argv"] == ["/nope\\x0a", "x"]
    assert rec["exec"]["argv_truncated"] is True


def test_every_record_kind_as_json_lines():
    records = _all_records()
    buf = io.BytesIO()
    w = JsonLinesWriter(buf)
    for rec in records:
        w.write(rec)
    lines = buf.getvalue().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == len(records)
    for line, rec in zip(lines, records):
        assert_clean_line(line)
        assert json.loads(line)["type" if rec["kind"] == "event" else "status"] == rec.get("type", rec.get("status"))


def test_table_writer_one_clean_line_per_record():
    records = _all_records()
    buf = io.BytesIO()
    w = TableWriter(buf)
    for rec in records:
        w.write(rec)
    lines = buf.getvalue().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == 1 + len(records)  # header, then one row each
    assert lines[0].split() == [b"TIME", b"AGENT", b"PID", b"PPID", b"COMM", b"TYPE", b"DETAIL"]
    for line in lines[:-1]:
        assert_clean_line(line)
    rows = lines[1:-1]
    assert rows[0].startswith(b"22:13:25.000 ")
    assert b"ECONNREFUSED" in rows[2] and b"1.2.3.4:443" in rows[2]
    assert b"signal 9" in rows[3]
    assert b"child 4243" in rows[4]
    assert b"LOST exec=3, connect=1" in rows[5]


def test_table_time_column_keeps_milliseconds():
    """TIME is 12 characters (HH:MM:SS.mmm); a cell as wide as its column is cut."""
    clock = Clock()
    clock.offset_ns = 1_700_000_000 * 10**9
    buf = io.BytesIO()
    TableWriter(buf).write(lost_record(clock, {"exec": 1}, {"exec": 1}) | {"time": clock.rfc3339(123_456_789)})
    row = buf.getvalue().split(b"\n")[1]
    assert row.startswith(b"22:13:20.123 ")


# --------------------------------------------------------------------------
# network_json


def _connect(family, daddr: bytes, saddr: bytes = b"", *, protocol=6, sock_type=1, sport=0, dport=443, retval=0):
    return events.ConnectEvent(
        "connect", 0, 0, 1, 1, 0, 0, 0, b"x", retval, 3, family, protocol, sock_type, 0, sport, dport, 0,
        saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"),
    )


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_network_v4():
    n = network_json(_connect(2, _ip("93.184.216.34"), _ip("10.0.0.2"), sport=40000, retval=-115))
    assert n == {
        "family": "ipv4", "protocol": "tcp", "saddr": "10.0.0.2", "sport": 40000,
        "daddr": "93.184.216.34", "dport": 443, "v4_mapped": False, "result": "EINPROGRESS", "retval": -115,
    }


def test_network_v4_unbound_source():
    n = network_json(_connect(2, _ip("127.0.0.1"), dport=8080, retval=-111))
    assert (n["saddr"], n["sport"], n["daddr"], n["dport"]) == (None, None, "127.0.0.1", 8080)
    assert n["result"] == "ECONNREFUSED"


def test_network_v6():
    n = network_json(_connect(10, _ip("2001:db8::1"), _ip("2001:db8::2"), sport=5555, dport=80))
    assert (n["family"], n["daddr"], n["saddr"], n["sport"], n["v4_mapped"]) == (
        "ipv6", "2001:db8::1", "2001:db8::2", 5555, False)
    assert n["result"] == "ok"


def test_network_v4_mapped():
    n = network_json(_connect(10, _ip("::ffff:1.2.3.4"), _ip("::ffff:10.0.0.2"), sport=1234, dport=53,
                              protocol=17, sock_type=2))
    assert (n["family"], n["daddr"], n["saddr"], n["v4_mapped"], n["protocol"]) == (
        "ipv6", "1.2.3.4", "10.0.0.2", True, "udp")


def test_network_v4_mapped_unbound_source():
    n = network_json(_connect(10, _ip("::ffff:1.2.3.4")))
    assert (n["daddr"], n["saddr"], n["v4_mapped"]) == ("1.2.3.4", None, True)


def test_network_v6_lookalike_is_not_v4_mapped():
    n = network_json(_connect(10, _ip("::1.2.3.4")))  # IPv4-compatible, not mapped
    assert not n["v4_mapped"]
    assert n["daddr"] == "::1.2.3.4"


@pytest.mark.parametrize(
    "protocol, sock_type, name",
    [(6, 1, "tcp"), (17, 2, "udp"), (262, 1, "mptcp"), (132, 5, "sctp"), (0, 2, "dgram"), (0, 1, "stream"),
     (0, 3, "raw"), (0, 99, "unknown"), (250, 1, "250")],
)
def test_network_protocol_name(protocol, sock_type, name):
    assert network_json(_connect(2, _ip("1.1.1.1"), protocol=protocol, sock_type=sock_type))["protocol"] == name


# --------------------------------------------------------------------------
# errno_name, Clock


@pytest.mark.parametrize(
    "retval, name",
    [(0, "ok"), (7, "ok"), (-2, "ENOENT"), (-13, "EACCES"), (-111, "ECONNREFUSED"), (-115, "EINPROGRESS"),
     (-8, "ENOEXEC"), (-99999, "E99999")],
)
def test_errno_name(retval, name):
    assert errno_name(retval) == name


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def test_rfc3339_known_offset():
    clock = Clock()
    clock.offset_ns = 1_700_000_000 * 10**9 - 5 * 10**9  # ktime 5 s is 2023-11-14T22:13:20Z
    assert clock.rfc3339(5_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert clock.rfc3339(6_000_000_001) == "2023-11-14T22:13:21.000000001Z"
    assert clock.rfc3339(5_999_999_999) == "2023-11-14T22:13:20.999999999Z"  # back a second: no stale prefix
    assert clock.rfc3339(5 * 10**9) == "2023-11-14T22:13:20.000000000Z"


def test_rfc3339_leap_day_and_year_end():
    clock = Clock()
    clock.offset_ns = calendar.timegm((2024, 2, 29, 23, 59, 59)) * 10**9
    assert clock.rfc3339(999_999_999) == "2024-02-29T23:59:59.999999999Z"
    assert clock.rfc3339(10**9) == "2024-03-01T00:00:00.000000000Z"
    clock.offset_ns = calendar.timegm((1999, 12, 31, 23, 59, 59)) * 10**9
    assert clock.rfc3339(10**9 + 7) == "2000-01-01T00:00:00.000000007Z"


def test_clock_tracks_wall_time():
    clock = Clock()
    text = clock.rfc3339(time.monotonic_ns())
    assert RFC3339.match(text)
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:29]) / 1e9
    assert abs(seconds - time.time()) < 1.0
    assert RFC3339.match(clock.now())
