"""DNS query names from what a watched process sends to port 53, through the real kernel.

A responder outside the agent answers NXDOMAIN on 127.0.0.1:53 inside a
private network namespace; `ip netns exec` gives the namespace its own
resolv.conf (from /etc/netns/NAME/), so glibc's resolver asks it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
from outside import add_outside

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "event.schema.json").read_text())

RESPONDER = textwrap.dedent(
    """
    import socket, sys, threading
    def answer(query):
        # Same id and question, QR set, RCODE 3 (NXDOMAIN), no records.
        return query[:2] + bytes([0x81, 0x83]) + query[4:6] + bytes(6) + query[12:]
    def tcp(s):
        while True:
            c, _ = s.accept()
            n = int.from_bytes(c.recv(2, socket.MSG_WAITALL), "big")
            q = c.recv(n, socket.MSG_WAITALL)
            a = answer(q); c.sendall(len(a).to_bytes(2, "big") + a); c.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 53))
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("127.0.0.1", 53)); t.listen(8)
    threading.Thread(target=tcp, args=(t,), daemon=True).start()
    print("ready", flush=True)
    while True:
        q, peer = u.recvfrom(4096)
        if len(q) >= 12:
            u.sendto(answer(q), peer)
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, subprocess
    def query(name, qtype):
        q = bytes.fromhex("abcd01000001000000000000")
        for label in name.split("."):
            q += bytes([len(label)]) + label.encode()
        return q + b"\\0" + qtype.to_bytes(2, "big") + b"\\0\\1"
    # glibc: A and AAAA for getaddrinfo (sendmmsg), then the same through gethostbyname.
    subprocess.run(["getent", "ahosts", "Mining-Pool.Example.TEST"])
    subprocess.run(["getent", "hosts", "second.example.test"])
    # Crafted: unconnected UDP, twice (every datagram to 53 is reported), a TXT query.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tunnel = "mzxw6ytboi.t.example.test"
    u.sendto(query(tunnel, 16), ("127.0.0.1", 53)); u.recv(512)
    u.sendto(query(tunnel, 16), ("127.0.0.1", 53)); u.recv(512)
    u.sendto(b"\\xff garbage, not a query", ("127.0.0.1", 53))
    # TCP with its 2-byte length prefix, in one write.
    t = socket.create_connection(("127.0.0.1", 53))
    m = query("over.tcp.example.test", 10)
    t.sendall(len(m).to_bytes(2, "big") + m); t.recv(512); t.close()
    """
)


@pytest.fixture
def resolv_conf(netns):
    """/etc/netns/NAME/resolv.conf: `ip netns exec` mounts it over /etc/resolv.conf; removed afterwards."""
    base = Path("/etc/netns")
    made_base = not base.exists()
    d = base / netns
    d.mkdir(parents=True)
    try:
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if made_base:
            try:
                base.rmdir()
            except OSError:
                pass


def test_dns_query_names(trace, netns, resolv_conf, tmp_path):
    if shutil.which("getent") is None:
        pytest.fail("getent (libc-bin) is needed for the resolver test")
    add_outside(netns)  # glibc asks for A and AAAA only with addresses configured beyond loopback
    responder_py, client_py = tmp_path / "responder.py", tmp_path / "client.py"
    responder_py.write_text(RESPONDER)
    client_py.write_text(CLIENT)
    responder = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, str(responder_py)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout.readline().strip() == "ready"
        t = trace(["ip", "netns", "exec", netns, sys.executable, str(client_py)])
    finally:
        responder.kill()
        responder.wait(timeout=10)
    assert t.exit_code == 0

    dns = [(r["process"]["comm"], r["network"]["protocol"], r["dns"]["query"], r["dns"]["qtype"]) for r in t.of_type("dns")]
    getent = [(q, qt) for comm, _, q, qt in dns if comm == "getent"]
    assert ("mining-pool.example.test", "A") in getent and ("mining-pool.example.test", "AAAA") in getent
    assert any(q == "second.example.test" for q, _ in getent)
    crafted = [(proto, q, qt) for comm, proto, q, qt in dns if comm != "getent"]
    assert crafted == [
        ("udp", "mzxw6ytboi.t.example.test", "TXT"),
        ("udp", "mzxw6ytboi.t.example.test", "TXT"),
        ("tcp", "over.tcp.example.test", "NULL"),
    ]
    # Each dns record follows the send record that carried it, with the same network and time.
    for i, r in enumerate(t.events):
        if r["type"] == "dns":
            send = t.events[i - 1]
            assert send["type"] == "send" and send["network"] == r["network"] and send["time"] == r["time"]
            assert r["network"]["dport"] == 53 and r["network"]["scope"] == "loopback"
    garbage = [r for r in t.of_type("send") if r["payload"]["text"].startswith("\\xff garbage")]
    assert len(garbage) == 1, "reported as a send, with no dns record"
    # The responder, outside the agent, sent as much as the client and produced nothing.
    assert {r["agent"]["id"] for r in t.events if r["type"] in ("send", "dns")} == {t.agent_id}

    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in t.records:
        errors = list(validator.iter_errors(record))
        assert not errors, (record, [e.message for e in errors])
