"""tracer.dns: the question of a DNS query, from bytes a hostile process sent."""

from __future__ import annotations

import random
import re

import pytest

from tracer.dns import Question, parse_message, parse_query, qtype_name

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f]")


def name_wire(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    out = b""
    for label in raw.split(b".") if raw else []:
        out += bytes([len(label)]) + label
    return out + b"\0"


def query(name: str | bytes, qtype: int = 1, *, flags: int = 0x0100, qdcount: int = 1, wire: bytes | None = None) -> bytes:
    head = (0xBEEF).to_bytes(2, "big") + flags.to_bytes(2, "big") + qdcount.to_bytes(2, "big") + bytes(6)
    return head + (name_wire(name) if wire is None else wire) + qtype.to_bytes(2, "big") + b"\0\1"


@pytest.mark.parametrize(
    "qtype, name",
    [(1, "A"), (28, "AAAA"), (16, "TXT"), (10, "NULL"), (255, "ANY"), (65, "HTTPS"), (33, "SRV"), (1234, "1234")],
)
def test_qtype_names(qtype, name):
    assert parse_query(query("example.com", qtype)) == Question("example.com", name)
    assert qtype_name(qtype) == name


def test_lowercase_and_no_trailing_dot():
    assert parse_query(query("Mining-Pool.EXAMPLE.Com")) == Question("mining-pool.example.com", "A")


def test_root():
    assert parse_query(query("", 2)) == Question(".", "NS")


def test_odd_bytes_in_labels_are_escaped():
    """A dot or control byte inside a label must not read as another name or reach a log raw."""
    wire = bytes([3]) + b"a.b" + bytes([4]) + b"\x1b\n\\\xff" + bytes([3]) + b"com" + b"\0"
    q = parse_query(query(b"", wire=wire))
    assert q.query == "a\\x2eb.\\x1b\\x0a\\x5c\\xff.com"
    assert not UNSAFE.search(q.query)


def test_tunnel_shaped_name():
    label = "mzxw6ytboi" * 6  # 60 characters of base32
    name = f"{label}.{label}.{label}.t.example.org"
    assert parse_query(query(name, 10)) == Question(name, "NULL")


@pytest.mark.parametrize(
    "msg",
    [
        query("example.com", flags=0x8180),  # a response
        query("example.com", qdcount=0),
        query(b"", wire=b"\x07example\xc0\x0c"),  # compression pointer in the question
        query(b"", wire=b"\xc0\x0c"),
        query(b"", wire=b"\x41abc\0"),  # reserved label type 0x40
        query(b"", wire=b"\x81abc\0"),  # reserved label type 0x80
        query(b"", wire=bytes([64]) + b"a" * 64 + b"\0"),  # label over 63
        query(".".join(["a" * 63] * 4)),  # name over 255 on the wire
        b"",
        bytes(11),
        bytes(12),
    ],
    ids=["response", "no-question", "pointer-after-label", "pointer", "type-0x40", "type-0x80", "long-label",
         "long-name", "empty", "short-header", "header-only"],
)
def test_refused(msg):
    assert parse_query(msg) is None
    assert parse_query(msg, tcp=True) is None


def test_longest_name_is_accepted():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 255 bytes on the wire
    assert len(name_wire(name)) == 255
    assert parse_query(query(name)).query == name


def test_every_truncation_is_refused_not_raised():
    msg = query("www.example.com", 28)
    for cut in range(len(msg)):
        assert parse_message(msg[:cut]) is None, cut
    assert parse_message(msg) == Question("www.example.com", "AAAA")


def test_garbage_never_raises():
    rng = random.Random(1)
    base = query("a.b.example.com")
    for _ in range(20000):
        n = rng.randrange(0, 80)
        junk = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5:  # mutate a real query instead
            junk = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                junk[rng.randrange(len(junk))] = rng.randrange(256)
            junk = bytes(junk)
        for tcp in (False, True):
            q = parse_query(junk, tcp=tcp)
            assert q is None or (isinstance(q.query, str) and not UNSAFE.search(q.query))


def test_tcp_length_prefix():
    msg = query("over.tcp.example", 16)
    framed = len(msg).to_bytes(2, "big") + msg
    assert parse_query(framed, tcp=True) == Question("over.tcp.example", "TXT")
    # Without tcp=True the prefix is part of the header, and the bytes do not parse as the same query.
    assert parse_query(framed) != Question("over.tcp.example", "TXT")


def test_tcp_prefix_written_apart():
    """A client may write the length first and the message second: each write is tried as it is."""
    msg = query("split.example", 1)
    assert parse_query(len(msg).to_bytes(2, "big"), tcp=True) is None
    assert parse_query(msg, tcp=True) == Question("split.example", "A")


def test_tcp_capture_cut_after_the_question():
    """Only the first 512 bytes are captured; a question inside them is enough."""
    msg = query("cut.example", 1) + b"\0" * 1000  # an additional section, say
    framed = len(msg).to_bytes(2, "big") + msg
    assert parse_query(framed[:512], tcp=True) == Question("cut.example", "A")
