"""TCP connection lifetime (sock:inet_sock_set_state) through the real kernel, inside a private netns.

The server runs outside the agent and closes its end only after the
client's: the client socket then reaches CLOSE while the server's task
handles the last FIN, so the record must be attributed from the cache,
not from the task the kernel was running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "event.schema.json").read_text())

SERVER = textwrap.dedent(
    """
    import os, socket, sys, threading
    def handle(c):
        while c.recv(4096):
            pass
        c.close()  # after the client's FIN: the client's socket closes in this task
    def serve(family, addr):
        s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 7001)); s.listen(16)
        threading.Thread(target=lambda: [threading.Thread(target=handle, args=(s.accept()[0],)).start()
                                         for _ in iter(int, 1)], daemon=True).start()
    serve(socket.AF_INET, "127.0.0.1"); serve(socket.AF_INET6, "::1")
    print(os.getpid(), flush=True)
    sys.stdin.read()
    """
)

CLIENT = textwrap.dedent(
    """
    import os, select, socket, time
    c = socket.create_connection(("127.0.0.1", 7001))
    print("held", os.getpid(), c.getsockname()[1], flush=True)
    time.sleep(0.3)
    c.close()
    r = socket.socket(); print("refused", os.getpid(), r.connect_ex(("127.0.0.1", 7999)), flush=True); r.close()
    n = socket.socket(); n.setblocking(False); n.connect_ex(("127.0.0.1", 7001))
    select.select([], [n], [], 5); print("nonblock", os.getpid(), n.getsockname()[1], flush=True); n.close()
    c6 = socket.create_connection(("::1", 7001)); print("v6", os.getpid(), c6.getsockname()[1], flush=True); c6.close()
    pid = os.fork()
    if pid == 0:
        # The child connects and exits; its connection closes after it is gone.
        k = socket.create_connection(("127.0.0.1", 7001))
        print("child", os.getpid(), k.getsockname()[1], flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.5)  # the server closes its ends meanwhile
    """
)


def test_connection_lifetime_attributed_to_the_connecting_process(trace, netns, tmp_path):
    server_py, client_py, out = tmp_path / "server.py", tmp_path / "client.py", tmp_path / "out.txt"
    server_py.write_text(SERVER)
    client_py.write_text(CLIENT)
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, str(server_py)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        server_pid = int(server.stdout.readline())
        t = trace(["sh", "-c", f"ip netns exec {netns} {sys.executable} {client_py} > {out}"])
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    assert t.exit_code == 0, out.read_text()
    lines = {name: (int(pid), int(port)) for name, pid, port in (ln.split() for ln in out.read_text().splitlines())}

    conns = t.of_type("connection")
    by_port: dict[int, list[dict]] = {}
    for r in conns:
        by_port.setdefault(r["network"]["sport"], []).append(r)
    client_pid, held_port = lines["held"]

    held = by_port[held_port]
    assert [r["connection"]["state"] for r in held] == ["established", "closed"]
    for r in held:
        assert r["process"]["pid"] == client_pid  # not the server, whose task ran the close
        assert r["agent"]["id"] == t.agent_id
        assert r["network"] == {
            "family": "ipv4", "protocol": "tcp", "saddr": "127.0.0.1", "sport": held_port,
            "daddr": "127.0.0.1", "dport": 7001, "v4_mapped": False, "scope": "loopback", "allowlisted": False,
        }
    assert held[0]["connection"]["duration_s"] is None
    assert 0.25 < held[1]["connection"]["duration_s"] < 5

    # The connect record comes first, though the handshake finished inside connect().
    seq = [(r["type"], r.get("connection", {}).get("state")) for r in t.events
           if r["type"] in ("connect", "connection") and r["network"]["sport"] == held_port]
    assert seq == [("connect", None), ("connection", "established"), ("connection", "closed")]

    failed = [r for r in conns if r["connection"]["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["network"]["dport"] == 7999
    assert failed[0]["connection"]["duration_s"] is None and failed[0]["process"]["pid"] == client_pid
    refused_connect = next(r for r in t.of_type("connect") if r["network"]["dport"] == 7999)
    assert refused_connect["network"]["result"] == "ECONNREFUSED"
    assert t.events.index(refused_connect) < t.events.index(failed[0])

    nonblock = by_port[lines["nonblock"][1]]
    assert [r["connection"]["state"] for r in nonblock] == ["established", "closed"]
    v6 = by_port[lines["v6"][1]]
    assert [r["connection"]["state"] for r in v6] == ["established", "closed"]
    assert (v6[0]["network"]["family"], v6[0]["network"]["daddr"], v6[0]["network"]["saddr"]) == ("ipv6", "::1", "::1")

    child_pid, child_port = lines["child"]
    child = by_port[child_port]
    assert [r["connection"]["state"] for r in child] == ["established", "closed"]
    fork = next(r for r in t.of_type("fork") if r["child"]["pid"] == child_pid)
    exit_ = next(r for r in t.of_type("exit") if r["process"]["pid"] == child_pid)
    assert t.events.index(exit_) < t.events.index(child[1]), "closed after the child exited"
    assert all(r["process"]["key"] == fork["child"]["key"] for r in child)

    assert server_pid not in {r["process"]["pid"] for r in t.events if r["process"]}
    assert len(conns) == 9
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in t.records:
        errors = list(validator.iter_errors(record))
        assert not errors, (record, [e.message for e in errors])


# listen(0) holds one connection; the next SYN is dropped until the first is accepted.
SLOW_SERVER = textwrap.dedent(
    """
    import select, socket, sys, time
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 7003)); s.listen(0)
    print("ready", flush=True)
    select.select([s], [], [])
    time.sleep(0.4)  # the second client's SYN is dropped meanwhile
    held = [s.accept()[0], s.accept()[0]]
    sys.stdin.read()
    """
)

SLOW_CLIENT = textwrap.dedent(
    """
    import os, socket, time
    first = socket.create_connection(("127.0.0.1", 7003))
    t0 = time.monotonic()
    second = socket.create_connection(("127.0.0.1", 7003))  # blocks until the SYN retransmit
    print(second.getsockname()[1], time.monotonic() - t0, flush=True)
    """
)


def test_handshake_finished_in_softirq_while_connect_sleeps(trace, netns, tmp_path):
    """The SYN-ACK of a retransmitted SYN is handled by a timer, not by the sleeping client."""
    server_py, client_py, out = tmp_path / "server.py", tmp_path / "client.py", tmp_path / "out.txt"
    server_py.write_text(SLOW_SERVER)
    client_py.write_text(SLOW_CLIENT)
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, str(server_py)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        t = trace(["sh", "-c", f"ip netns exec {netns} {sys.executable} {client_py} > {out}"])
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    assert t.exit_code == 0
    port, waited = out.read_text().split()
    assert float(waited) > 0.5, "the first SYN was not dropped: the test proves nothing"
    client_pid = next(r["process"]["pid"] for r in t.of_type("connect"))
    seq = [(r["type"], r["process"]["pid"], r.get("connection", {}).get("state")) for r in t.events
           if r["type"] in ("connect", "connection") and r["network"]["sport"] == int(port)]
    # Held while connect() slept, reported after its connect record.
    assert seq[:2] == [("connect", client_pid, None), ("connection", client_pid, "established")]
