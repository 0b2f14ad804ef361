"""The control protocol: requests, peer checks, and the server's line handling (no root)."""

from __future__ import annotations

import socket

import orjson
import pytest

from tracer.control import MAX_LINE, ControlError, ControlServer, Peer, parse_request, peer_allowed
from tracer.harness import Client, DaemonError


@pytest.mark.parametrize("line, error", [
    (b"{", "not JSON"),
    (b"[1]", "a request is a JSON object"),
    (b'{"op": "reboot"}', "field 'op': 'reboot' is not one of"),
    (b'{"op": "begin"}', "field 'sandbox': begin needs"),
    (b'{"op": "end", "sandbox": ""}', "field 'sandbox': must be non-empty"),
    (b'{"op": "begin", "sandbox": "s", "labels": ["a"]}', "field 'labels': must be an object"),
    (b'{"op": "begin", "sandbox": "s", "labels": {"k": 1}}', "field 'labels.k':"),
    (b'{"op": "end", "sandbox": "s", "labels": {"k": "v"}}', "field 'labels': only begin"),
    (b'{"op": "status", "sudo": true}', "field 'sudo': unknown"),
    (b'{"op": "begin", "sandbox": "s", "episode": 7}', "field 'episode': must be text"),
])
def test_bad_requests_name_the_field(line, error):
    with pytest.raises(ControlError) as exc:
        parse_request(line)
    assert str(exc.value).startswith(error), str(exc.value)


def test_good_requests():
    r = parse_request(b'{"op":"begin","sandbox":"rollout-7","episode":"e1","labels":{"task":"42"}}')
    assert (r.op, r.sandbox, r.episode, r.labels) == ("begin", "rollout-7", "e1", {"task": "42"})
    assert parse_request(b'{"op":"subscribe"}').sandbox is None


def test_only_root_or_the_group_may_talk():
    assert peer_allowed(Peer(1, 0, 0), None)
    assert not peer_allowed(Peer(1, 1000, 1000), None)
    assert peer_allowed(Peer(1, 1000, 1000, (27, 1001)), 1001)
    assert peer_allowed(Peer(1, 1000, 1001), 1001)
    assert not peer_allowed(Peer(1, 1000, 1000, (27,)), 1001)


def test_server_lines_replies_and_oversized_requests(tmp_path):
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, None, 0o600)
    try:
        assert oct((tmp_path / "c.sock").stat().st_mode & 0o777) == "0o600"
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        c.sendall(b'{"op":"ping"}\n{"op":"st')
        got = []
        for _ in range(10):
            got += server.poll(0.05)
            if got:
                break
        assert [r.op for _, r in got] == ["ping"]
        conn = got[0][0]
        assert conn.peer.uid == 0 or conn.peer.uid >= 0
        c.sendall(b'atus"}\n' + b"x" * (MAX_LINE + 10))
        more = []
        for _ in range(20):
            more += server.poll(0.05)
            if len(more) >= 2:
                break
        assert more[0][1].op == "status"
        assert isinstance(more[1][1], ControlError) and "at most" in str(more[1][1])
        server.send(conn, {"ok": True, "n": 1})
        assert orjson.loads(c.recv(100)) == {"ok": True, "n": 1}
        c.close()
    finally:
        server.shutdown()
    assert not (tmp_path / "c.sock").exists()


def test_client_says_why_it_cannot_reach_the_daemon(tmp_path):
    with pytest.raises(DaemonError, match="cannot reach the agentwatch daemon"):
        Client(str(tmp_path / "none.sock")).status()


def test_a_stale_socket_is_taken_over(tmp_path):
    path = tmp_path / "c.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound, never listening: what a killed daemon leaves
    server = ControlServer(str(path))
    server.shutdown()
