"""connect(2) through the real kernel, inside a network namespace the test creates."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# One agent run makes every kind of connect; each line it prints names one.
CLIENT = textwrap.dedent(
    """
    import errno, socket
    def listener(family, addr):
        s = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((addr, 0)); s.listen(8)
        return s
    v4 = listener(socket.AF_INET, "127.0.0.1")
    v6 = listener(socket.AF_INET6, "::")
    port4, port6 = v4.getsockname()[1], v6.getsockname()[1]

    c = socket.create_connection(("127.0.0.1", port4)); print("tcp4", c.getsockname()[1]); c.close()
    c = socket.socket(socket.AF_INET6); c.connect(("::1", port6)); print("tcp6", c.getsockname()[1]); c.close()
    c = socket.socket(socket.AF_INET6); c.connect(("::ffff:127.0.0.1", port4)); print("mapped", c.getsockname()[1]); c.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", 53)); print("udp4", u.getsockname()[1])
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.connect(("::1", 5353)); print("udp6", u6.getsockname()[1])
    r = socket.socket(); print("refused", r.connect_ex(("127.0.0.1", 9)))
    n = socket.socket(); n.setblocking(False); print("nonblock", errno.errorcode[n.connect_ex(("127.0.0.1", port4))])
    x = socket.socket(socket.AF_UNIX); print("unix", x.connect_ex("/nonexistent-agentwatch.sock"))
    print("ports", port4, port6)
    """
)


def test_connect_kinds_and_results(trace, netns, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = tmp_path / "out.txt"
    t = trace(["sh", "-c", f"ip netns exec {netns} {sys.executable} {script} > {out}"])
    assert t.exit_code == 0, out.read_text()
    lines = dict(line.split(None, 1) for line in out.read_text().splitlines())
    port4, port6 = (int(p) for p in lines["ports"].split())
    conns = [r["network"] for r in t.of_type("connect")]
    # AF_UNIX is ignored; every inet connect is there, in order.
    assert len(conns) == 7, conns
    tcp4, tcp6, mapped, udp4, udp6, refused, nonblock = conns

    assert tcp4 == {
        "family": "ipv4", "protocol": "tcp", "saddr": "127.0.0.1", "sport": int(lines["tcp4"]),
        "daddr": "127.0.0.1", "dport": port4, "v4_mapped": False, "result": "ok", "retval": 0,
        "scope": "loopback", "allowlisted": False, "repeats": 0,
    }
    assert (tcp6["family"], tcp6["daddr"], tcp6["dport"], tcp6["saddr"]) == ("ipv6", "::1", port6, "::1")
    assert tcp6["sport"] == int(lines["tcp6"]) and tcp6["result"] == "ok"
    assert (mapped["family"], mapped["v4_mapped"], mapped["daddr"], mapped["dport"]) == ("ipv6", True, "127.0.0.1", port4)
    assert mapped["saddr"] == "127.0.0.1" and mapped["sport"] == int(lines["mapped"])
    assert (udp4["protocol"], udp4["daddr"], udp4["dport"], udp4["result"]) == ("udp", "127.0.0.1", 53, "ok")
    assert udp4["sport"] == int(lines["udp4"])
    assert (udp6["protocol"], udp6["family"], udp6["daddr"], udp6["dport"]) == ("udp", "ipv6", "::1", 5353)
    assert (refused["result"], refused["retval"], refused["dport"]) == ("ECONNREFUSED", -111, 9)
    assert (nonblock["result"], nonblock["retval"]) == (lines["nonblock"], -115)
    assert lines["nonblock"] == "EINPROGRESS"

    procs = {r["process"]["pid"] for r in t.of_type("connect")}
    assert len(procs) == 1
    assert all(r["agent"]["id"] == t.agent_id for r in t.of_type("connect"))


# Identical repeats: one socket connect()ed to one destination again and
# again, then elsewhere, again for a while, then closed; a second thread
# repeats on its own socket and exits without closing it.
REPEATS = textwrap.dedent(
    """
    import socket, sys, threading, time
    n = int(sys.argv[1])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(n):
        u.connect(("127.0.0.1", 9))
    u.connect(("127.0.0.1", 10))
    end = time.monotonic() + 1.3  # past the once-a-second summary
    k = 0
    while time.monotonic() < end:
        u.connect(("127.0.0.1", 10)); k += 1
        time.sleep(0.001)
    u.close()
    def worker():
        w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(7):
            w.connect(("127.0.0.1", 11))
        # returns without closing: the thread's exit reports its repeats
    t = threading.Thread(target=worker); t.start(); t.join()
    print(k)
    """
)


def test_identical_repeats_are_folded_and_counted(trace, netns, tmp_path):
    script = tmp_path / "repeats.py"
    script.write_text(REPEATS)
    out = tmp_path / "out.txt"
    n = 5000
    t = trace(["sh", "-c", f"ip netns exec {netns} {sys.executable} {script} {n} > {out}"])
    assert t.exit_code == 0, out.read_text()
    k = int(out.read_text())
    by_port: dict[int, list[int]] = {}
    for r in t.of_type("connect"):
        by_port.setdefault(r["network"]["dport"], []).append(r["network"]["repeats"])
    # Each destination: its first call as a record (repeats 0), then summaries
    # that add up to every other call. Nothing is lost, little is sent.
    assert by_port[9][0] == 0 and sum(by_port[9]) == n - 1 and len(by_port[9]) <= 3, by_port[9]
    assert by_port[10][0] == 0 and sum(by_port[10]) == k, (by_port[10], k)
    assert 3 <= len(by_port[10]) <= 4  # the first, one or two once-a-second summaries, the close
    assert by_port[11] == [0, 6]  # reported when the thread exited
    assert len(t.of_type("connect")) < 12
    assert not [r for r in t.records if r.get("type") == "lost"]


POLLED = textwrap.dedent(
    """
    import errno, socket
    s = socket.socket(); s.setblocking(False)
    codes = [s.connect_ex(("198.18.0.5", 443)) for _ in range(201)]  # the SYN goes nowhere
    s.close()
    print(" ".join(sorted({errno.errorcode[c] for c in codes})))
    """
)


def test_a_polled_tcp_connect_is_one_record_per_result(trace, netns, tmp_path):
    # A veth pair with both ends in the namespace and nobody at 198.18.0.5: ARP is never
    # answered, so the SYN never leaves and the connect stays in progress.
    subprocess.run(["ip", "-n", netns, "link", "add", "aw0", "type", "veth", "peer", "name", "aw1"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "aw1", "up"], check=True)
    subprocess.run(["ip", "-n", netns, "addr", "add", "198.18.0.1/24", "dev", "aw0"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "aw0", "up"], check=True)
    script = tmp_path / "polled.py"
    script.write_text(POLLED)
    out = tmp_path / "out.txt"
    t = trace(["sh", "-c", f"ip netns exec {netns} {sys.executable} {script} > {out}"])
    assert t.exit_code == 0 and out.read_text().split() == ["EALREADY", "EINPROGRESS"]
    calls = [(r["network"]["result"], r["network"]["repeats"]) for r in t.of_type("connect")]
    # The handshake's start is one record; each later result a record, its repeats a summary at close.
    assert calls == [("EINPROGRESS", 0), ("EALREADY", 0), ("EALREADY", 199)]
