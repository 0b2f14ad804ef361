"""The question of a DNS query, from the first bytes a process sent to port 53.

The bytes come from a watched process, so they are hostile: anything that
is not a well-formed query gives None, never an exception. Only the first
question is read. A name in a query is written out whole, so a compression
pointer there is refused rather than followed.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = 12
MAX_NAME = 255  # wire length, length bytes and the final zero included (RFC 1035 2.3.4)
MAX_LABEL = 63

QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    17: "RP", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 39: "DNAME",
    41: "OPT", 43: "DS", 44: "SSHFP", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3",
    52: "TLSA", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 255: "ANY", 256: "URI", 257: "CAA",
    65399: "PRIVATE",  # iodine's private-use type
}

# Bytes of a label written as themselves; every other byte, and the dot and
# backslash that would make the name ambiguous, becomes \xNN.
_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\")}


@dataclass(frozen=True, slots=True)
class Question:
    query: str  # lowercase, no trailing dot; "." for the root
    qtype: str  # A, AAAA, TXT, ... or the number


def qtype_name(value: int) -> str:
    return QTYPES.get(value, str(value))


def _label_text(label: bytes) -> str:
    return "".join(chr(b) if b in _PLAIN else f"\\x{b:02x}" for b in label.lower())


def parse_message(msg: bytes) -> Question | None:
    """The first question of a DNS query message, or None."""
    if len(msg) < HEADER + 5:
        return None
    flags = int.from_bytes(msg[2:4], "big")
    qdcount = int.from_bytes(msg[4:6], "big")
    if flags & 0x8000 or qdcount == 0:  # a response, or no question
        return None
    labels, pos, wire = [], HEADER, 1
    while True:
        if pos >= len(msg):
            return None
        length = msg[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:  # a compression pointer (0xC0) or a reserved label type
            return None
        wire += length + 1
        if length > MAX_LABEL or wire > MAX_NAME or pos + 1 + length > len(msg):
            return None
        labels.append(_label_text(msg[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    if pos + 4 > len(msg):  # qtype and qclass
        return None
    qtype = int.from_bytes(msg[pos : pos + 2], "big")
    return Question(".".join(labels) if labels else ".", qtype_name(qtype))


def parse_query(payload: bytes, tcp: bool = False) -> Question | None:
    """The question of what a process sent to port 53.

    Over TCP a message starts with its 2-byte length. A client that writes
    the length and the message separately sends a bare message second, so
    a TCP payload that does not parse with the prefix is tried without it.
    """
    if tcp and len(payload) >= 2:
        length = int.from_bytes(payload[:2], "big")
        if length >= HEADER + 5:
            question = parse_message(payload[2 : 2 + length])
            if question is not None:
                return question
    return parse_message(payload)
