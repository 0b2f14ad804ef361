"""First bytes of new connections, through the real kernel, inside a network namespace the test creates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
from outside import add_outside

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "event.schema.json").read_text())

# One agent run sends every way there is; each line it prints names a socket by its local port.
CLIENT = textwrap.dedent(
    """
    import os, socket
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(32)
    port = srv.getsockname()[1]
    held = []
    def serve():
        # In this thread, right after each connect: an accept() blocked in another thread holds
        # the lowest free fd number, and dup2() onto that number fails with EBUSY.
        c, _ = srv.accept()
        c.sendall(b"server hello")  # accepted, not connected: never reported
        held.append(c)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
    u1, u2, u3 = (s.getsockname()[1] for s in sinks)

    def tcp(name):
        c = socket.create_connection(("127.0.0.1", port))
        print(name, c.getsockname()[1], flush=True)
        held.append(c)
        serve()
        return c

    c = tcp("write"); os.write(c.fileno(), b"GET / HTTP/1.0\\r\\n\\r\\n"); os.write(c.fileno(), b"second write")
    c = tcp("send"); c.send(b"via send()"); c.send(b"second send")
    c = tcp("sendmsg"); c.sendmsg([b"hello ", b"world"])
    c = tcp("writev"); os.writev(c.fileno(), [b"ab", b"", b"cd"])
    c = tcp("big"); c.sendall(b"x" * 600)
    c = tcp("ssh"); c.sendall(b"SSH-2.0-test\\r\\n")
    c = tcp("empty"); c.send(b""); c.send(b"after empty")

    # Closed before any write: a file that gets the fd number is not a socket.
    c = tcp("closed"); fd = c.fileno(); held.remove(c); c.close()
    f = os.open("/dev/null", os.O_WRONLY)
    if f != fd:
        os.dup2(f, fd); os.close(f)
    os.write(fd, b"not a socket"); os.close(fd)
    # Replaced by dup2 (no close call): the fd now names /dev/null.
    c = tcp("dup2"); null = os.open("/dev/null", os.O_WRONLY); os.dup2(null, c.fileno())
    os.write(c.fileno(), b"not a socket either")

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", u1))
    print("udp", u.getsockname()[1], flush=True)
    u.send(b"udp first"); u.send(b"udp second")

    v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v.sendto(b"to-u1 one", ("127.0.0.1", u1)); v.sendto(b"to-u1 two", ("127.0.0.1", u1))
    v.sendto(b"to-u2", ("127.0.0.1", u2))
    v.sendmsg([b"msg-to-", b"u3"], [], 0, ("127.0.0.1", u3))
    print("unconnected", v.getsockname()[1], flush=True)

    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    w.sendto(b"to the internet", ("198.18.0.2", 9999))
    print("external", w.getsockname()[1], flush=True)
    w6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    w6.sendto(b"to fd99::2", ("fd99::2", 9999))
    print("private6", w6.getsockname()[1], flush=True)
    print("ports", port, u1, u2, u3, flush=True)
    """
)

# A process outside the agent that does the same things at the same time.
UNWATCHED = textwrap.dedent(
    """
    import socket, sys, time
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        c = socket.create_connection(srv.getsockname()); c.send(b"unwatched"); c.close()
        u.sendto(b"unwatched", ("127.0.0.1", 9))
        a, _ = srv.accept(); a.close()
        time.sleep(0.002)
    """
)


def test_first_bytes_of_every_kind_of_send(trace, netns, tmp_path):
    add_outside(netns)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    noise = tmp_path / "unwatched.py"
    noise.write_text(UNWATCHED)
    out = tmp_path / "out.txt"
    other = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(noise), "3"])
    try:
        time.sleep(0.2)
        t = trace(["sh", "-c", f"ip netns exec {netns} {sys.executable} {script} > {out}"])
    finally:
        other.wait(timeout=10)
    assert t.exit_code == 0, out.read_text()
    ports = {}
    for line in out.read_text().splitlines():
        name, *rest = line.split()
        ports[name] = [int(x) for x in rest]
    server, u1, u2, u3 = ports.pop("ports")
    by_name = {port[0]: name for name, port in ports.items()}

    sends = t.of_type("send")
    client_pids = {r["process"]["pid"] for r in t.of_type("connect")}
    assert len(client_pids) == 1
    assert {r["process"]["pid"] for r in sends} == client_pids, "only the agent's own sends"
    assert all(r["agent"]["id"] == t.agent_id for r in sends)
    got: dict[str, list[dict]] = {}
    for r in sends:
        got.setdefault(by_name.get(r["network"]["sport"], "?"), []).append(r)

    def one(name: str) -> dict:
        assert len(got.get(name, [])) == 1, (name, got.get(name))
        return got[name][0]

    write = one("write")
    assert write["payload"] == {"text": "GET / HTTP/1.0\\x0d\\x0a\\x0d\\x0a", "length": 18, "truncated": False}
    assert write["network"] == {
        "family": "ipv4", "protocol": "tcp", "saddr": "127.0.0.1", "sport": ports["write"][0],
        "daddr": "127.0.0.1", "dport": server, "v4_mapped": False, "result": "ok", "retval": 0,
        "scope": "loopback", "allowlisted": False,
    }
    assert one("send")["payload"]["text"] == "via send()"
    assert one("sendmsg")["payload"] == {"text": "hello world", "length": 11, "truncated": False}
    assert one("writev")["payload"] == {"text": "abcd", "length": 4, "truncated": False}
    big = one("big")["payload"]
    assert big == {"text": "x" * 512, "length": 512, "truncated": True}
    assert one("ssh")["payload"]["text"] == "SSH-2.0-test\\x0d\\x0a"
    assert one("empty")["payload"]["text"] == "after empty", "a zero-length send is not the first bytes"
    assert "closed" not in got and "dup2" not in got, "a reused fd is not the connection"

    udp = one("udp")
    assert (udp["network"]["protocol"], udp["network"]["dport"], udp["payload"]["text"]) == ("udp", u1, "udp first")

    # The first datagram of an unbound socket leaves before it has a port: matched by text.
    texts = {r["payload"]["text"]: r for r in sends}
    unconnected = [(t, texts[t]["network"]["dport"]) for t in ("to-u1 one", "to-u2", "msg-to-u3")]
    assert unconnected == [("to-u1 one", u1), ("to-u2", u2), ("msg-to-u3", u3)]
    assert texts["to-u1 one"]["network"]["sport"] is None
    assert "to-u1 two" not in texts, "a destination already seen on the socket"
    ext = texts["to the internet"]["network"]
    assert (ext["daddr"], ext["dport"], ext["scope"], ext["protocol"]) == ("198.18.0.2", 9999, "external", "udp")
    v6 = texts["to fd99::2"]["network"]
    assert (v6["family"], v6["daddr"], v6["scope"]) == ("ipv6", "fd99::2", "private")
    assert len(sends) == 13, [r["payload"]["text"] for r in sends]

    # Each send comes after its connection's connect record.
    order = [(r["type"], r["network"]["sport"]) for r in t.events if r["type"] in ("connect", "send")]
    for r in sends:
        key = ("send", r["network"]["sport"])
        if r["network"]["protocol"] == "tcp":
            assert order.index(("connect", r["network"]["sport"])) < order.index(key)

    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in t.records:
        errors = list(validator.iter_errors(record))
        assert not errors, (record, [e.message for e in errors])
