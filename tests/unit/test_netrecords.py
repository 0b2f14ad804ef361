"""send, connection and dns records through tracer.session.Pipeline, fed raw records: no root, no BCC."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tracer import events
from tracer.netscope import ScopeClassifier, ScopeConfig
from tracer.output import MemoryWriter
from tracer.proctree import start_ticks_from_ns
from tracer.session import Pipeline

# Above PID_MAX_LIMIT: the table must find none of these in the real /proc.
P = 5_100_000
ROOT, CLIENT, REUSER = P + 1, P + 2, P + 3
SEC = 10**9
SK = 0xFFFF_8880_1234_5600


class FakeProbes:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def poll(self, timeout_ms: int = 100) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def lost_counts(self) -> dict[str, int]:
        return {name: 0 for name in events.EVENT_NAMES.values()}


@pytest.fixture
def pipe():
    p = Pipeline(FakeProbes(), MemoryWriter(), scope=ScopeClassifier(ScopeConfig(allowlist=("203.0.113.0/24",)),
                                                                      host_addresses=["192.0.2.10"]))
    p.agents.new(ROOT, {"run": "t"}, agent_id="agent-n")
    root = p.table.lookup(ROOT, start_ticks_from_ns(100 * SEC), ppid=P, comm=b"agent")
    p.table.new_image(root, b"agent", b"/usr/bin/agent", [b"agent"], False)
    return p


def hdr(pid=CLIENT, start=101 * SEC, comm=b"client", **kw):
    return dict(pid=pid, ppid=ROOT, comm=comm, agent_id=1, start_ns=start) | kw


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def feed(pipe, *records: bytes) -> list[dict]:
    before = len(pipe.writer.records)
    pipe.probes.batches.append(list(records))
    pipe.drain(0)
    return pipe.writer.records[before:]


def dns_query(name: str, qtype: int) -> bytes:
    q = bytes.fromhex("12340100000100000000000000")[:12]
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + qtype.to_bytes(2, "big") + b"\0\1"


def test_send_record(pipe, raw):
    (rec,) = feed(pipe, raw.send(family=socket.AF_INET, daddr=ip("198.51.100.7"), saddr=ip("10.0.0.2"), dport=443,
                                 sport=40000, data=b"SSH-2.0-test\r\n", total=14, ktime_ns=5 * SEC, **hdr()))
    assert rec["type"] == "send" and rec["agent"]["id"] == "agent-n"
    assert rec["process"]["pid"] == CLIENT
    assert rec["network"] == {
        "family": "ipv4", "protocol": "tcp", "saddr": "10.0.0.2", "sport": 40000, "daddr": "198.51.100.7",
        "dport": 443, "v4_mapped": False, "result": "ok", "retval": 0, "scope": "external", "allowlisted": False,
    }
    assert rec["payload"] == {"text": "SSH-2.0-test\\x0d\\x0a", "length": 14, "truncated": False}


def test_send_truncated_binary_payload(pipe, raw):
    data = bytes(range(256)) * 2
    (rec,) = feed(pipe, raw.send(family=socket.AF_INET, daddr=ip("203.0.113.9"), dport=443, data=data,
                                 total=4096, **hdr()))
    assert rec["payload"]["length"] == 512 and rec["payload"]["truncated"]
    assert rec["payload"]["text"].startswith("\\x00\\x01\\x02")
    assert rec["network"]["allowlisted"] and rec["network"]["saddr"] is None and rec["network"]["sport"] is None


def test_connect_record_has_scope(pipe, raw):
    (rec,) = feed(pipe, raw.connect(family=socket.AF_INET6, daddr=ip("::ffff:192.0.2.10"), dport=22, **hdr()))
    assert (rec["network"]["daddr"], rec["network"]["scope"]) == ("192.0.2.10", "host")


@pytest.mark.parametrize("protocol, framing", [(17, b""), (6, None)], ids=["udp", "tcp"])
def test_dns_record_follows_its_send(pipe, raw, protocol, framing):
    msg = dns_query("Pool.Example.ORG", 16)
    data = msg if framing is not None else len(msg).to_bytes(2, "big") + msg
    send, dns = feed(pipe, raw.send(family=socket.AF_INET, daddr=ip("127.0.0.53"), dport=53, data=data,
                                    protocol=protocol, sock_type=2 if protocol == 17 else 1, **hdr()))
    assert (send["type"], dns["type"]) == ("send", "dns")
    assert dns["dns"] == {"query": "pool.example.org", "qtype": "TXT"}
    for key in ("time", "agent", "process", "network"):
        assert dns[key] == send[key]
    assert dns["network"] is not send["network"], "the rule engine may hold either"
    assert set(dns) == {"kind", "type", "time", "agent", "process", "network", "dns"}


@pytest.mark.parametrize("dport, data", [(53, b"\xffgarbage"), (5353, dns_query("x.local", 1))], ids=["garbage", "mdns"])
def test_no_dns_record(pipe, raw, dport, data):
    recs = feed(pipe, raw.send(family=socket.AF_INET, daddr=ip("127.0.0.1"), dport=dport, data=data, protocol=17,
                               sock_type=2, **hdr()))
    assert [r["type"] for r in recs] == ["send"]


def conn(raw, state, **kw):
    return raw.conn(state=state, family=socket.AF_INET, daddr=ip("198.18.0.9"), saddr=ip("10.0.0.2"), dport=22,
                    sport=40001, sock_cookie=SK, **kw)


def test_connection_records(pipe, raw):
    recs = feed(
        pipe,
        raw.connect(family=socket.AF_INET, daddr=ip("198.18.0.9"), dport=22, retval=-115, sock_cookie=SK, **hdr()),
        conn(raw, events.CONN_ESTABLISHED, **hdr(ktime_ns=2 * SEC)),
        conn(raw, events.CONN_CLOSED, duration_ns=2_500_000_000, **hdr(ktime_ns=5 * SEC)),
    )
    assert [r["type"] for r in recs] == ["connect", "connection", "connection"]
    est, closed = recs[1:]
    assert est["connection"] == {"state": "established", "duration_s": None}
    assert closed["connection"] == {"state": "closed", "duration_s": 2.5}
    assert est["network"] == {
        "family": "ipv4", "protocol": "tcp", "saddr": "10.0.0.2", "sport": 40001, "daddr": "198.18.0.9",
        "dport": 22, "v4_mapped": False, "scope": "external", "allowlisted": False,
    }
    assert est["process"]["key"] == recs[0]["process"]["key"] == closed["process"]["key"]
    assert est["agent"]["id"] == "agent-n"
    assert pipe._connectors == {}, "forgotten once closed"


def test_failed_connection(pipe, raw):
    recs = feed(
        pipe,
        raw.connect(family=socket.AF_INET, daddr=ip("198.18.0.9"), dport=22, retval=-111, sock_cookie=SK, **hdr()),
        conn(raw, events.CONN_FAILED, **hdr()),
    )
    assert recs[1]["connection"] == {"state": "failed", "duration_s": None}


def test_connection_closing_after_the_process_exited_and_its_pid_was_reused(pipe, raw):
    """The closed record names the process that connected, not the pid's new owner, and keeps the table alone."""
    recs = feed(
        pipe,
        raw.exec(filename=b"/usr/bin/ssh", argv=[b"ssh", b"-R", b"80:localhost:8080", b"x"], **hdr(comm=b"ssh")),
        raw.connect(family=socket.AF_INET, daddr=ip("198.18.0.9"), dport=22, sock_cookie=SK, **hdr(comm=b"ssh")),
        raw.exit(**hdr(comm=b"ssh")),
        raw.exec(filename=b"/bin/true", argv=[b"true"], **hdr(start=200 * SEC, comm=b"true")),
        conn(raw, events.CONN_CLOSED, duration_ns=SEC, **hdr(comm=b"ssh")),
    )
    closed = recs[-1]
    assert closed["process"]["argv"] == ["ssh", "-R", "80:localhost:8080", "x"]
    assert closed["process"]["key"] == recs[1]["process"]["key"]
    assert closed["process"]["ancestry"][0]["pid"] == ROOT
    assert pipe.table.get(CLIENT).argv == [b"true"], "the live process with that pid is untouched"


def test_connection_of_an_unknown_process_is_not_put_in_the_table(pipe, raw):
    (rec,) = feed(pipe, conn(raw, events.CONN_ESTABLISHED, **hdr(pid=REUSER, comm=b"curl")))
    assert (rec["process"]["pid"], rec["process"]["comm"]) == (REUSER, "curl")
    assert rec["process"]["exe"] == "/usr/bin/agent", "the parent's image, as for any process met mid-life"
    assert pipe.table.get(REUSER) is None


def test_connection_of_a_live_process_without_its_connect(pipe, raw):
    """connect() via io_uring, or its record lost: the table has the process."""
    feed(pipe, raw.exec(filename=b"/usr/bin/curl", argv=[b"curl"], **hdr(comm=b"curl")))
    (rec,) = feed(pipe, conn(raw, events.CONN_ESTABLISHED, **hdr(comm=b"curl")))
    assert rec["process"]["argv"] == ["curl"]


def test_connectors_are_bounded(pipe, raw, monkeypatch):
    monkeypatch.setattr("tracer.session.CONNECTORS_MAX", 3)
    for i in range(5):
        feed(pipe, raw.connect(family=socket.AF_INET, daddr=ip("198.18.0.9"), dport=22, sock_cookie=SK + i, **hdr()))
    assert list(pipe._connectors) == [SK + 2, SK + 3, SK + 4]
    feed(pipe, raw.connect(family=socket.AF_INET, daddr=ip("198.18.0.9"), dport=53, protocol=17, sock_type=2,
                           sock_cookie=SK + 9, **hdr()))
    assert SK + 9 not in pipe._connectors, "only TCP connects lead to connection records"
