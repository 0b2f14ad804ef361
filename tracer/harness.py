"""The Python API for an RL harness: mark episodes of a sandbox and get their alerts.

    from tracer.harness import Client

    aw = Client()                                   # /run/agentwatch/control.sock
    for step in range(100):
        aw.begin("rollout-7", task="swe-123", step=str(step))
        reward = run_episode(env)                   # the agent acts in its sandbox
        result = aw.end("rollout-7")                # returns once the episode's alerts are all in
        if result.alerts:
            reward -= 1.0                           # an escape attempt costs the reward

`end` returns only after the daemon has read every record the kernel made
before the boundary, so `result.alerts` is complete. `alerts()` streams the
alerts of one sandbox (or one episode) as they happen, for a trainer that
ends an episode early. Everything goes over the daemon's control socket;
the caller must be root or in the daemon's control group.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Iterator

import orjson

DEFAULT_SOCKET = "/run/agentwatch/control.sock"


class DaemonError(RuntimeError):
    """The daemon refused the request or cannot be reached; the message says why."""


@dataclass
class EpisodeResult:
    sandbox: str
    episode: dict                    # id, labels, began, ended, alerts (count), records
    alerts: list[dict] = field(default_factory=list)  # at most the first 1000; episode["alerts"] counts all


class Client:
    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as exc:
            s.close()
            raise DaemonError(f"cannot reach the agentwatch daemon at {self.path}: {exc.strerror or exc}") from None
        return s

    def request(self, obj: dict) -> dict:
        """One request and its reply; DaemonError when the reply is not ok."""
        if self._sock is None:
            self._sock, self._buf = self._connect(), b""
        try:
            try:
                self._sock.sendall(orjson.dumps(obj) + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refused peer is told why, then closed: read that line below
            reply = self._line(self._sock)
        except (OSError, DaemonError):
            self.close()
            raise
        if not reply.get("ok"):
            raise DaemonError(reply.get("error") or "the daemon refused the request")
        return reply

    def _line(self, sock: socket.socket) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise DaemonError(f"no reply from the daemon within {self.timeout} s") from None
            if not chunk:
                line, self._buf = self._buf, b""
                if line.strip():
                    return orjson.loads(line)
                raise DaemonError("the daemon closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return orjson.loads(line)

    def begin(self, sandbox: str, episode: str | None = None, **labels: str) -> dict:
        """Begin an episode (ending the one in force); its id and labels as the daemon recorded them."""
        req = {"op": "begin", "sandbox": sandbox, "labels": {k: str(v) for k, v in labels.items()}}
        if episode is not None:
            req["episode"] = episode
        return self.request(req)["episode"]

    def end(self, sandbox: str) -> EpisodeResult:
        reply = self.request({"op": "end", "sandbox": sandbox})
        return EpisodeResult(sandbox, reply["episode"], reply.get("alerts", []))

    def status(self) -> dict:
        return self.request({"op": "status"})

    def alerts(self, sandbox: str | None = None, episode: str | None = None,
               timeout: float | None = None) -> Iterator[dict]:
        """Alerts as they happen, on a connection of their own; stops when the daemon goes (or timeout)."""
        sock = self._connect()
        req = {"op": "subscribe"}
        if sandbox is not None:
            req["sandbox"] = sandbox
        if episode is not None:
            req["episode"] = episode
        sub = Client(self.path, self.timeout)
        sub._sock = sock
        try:
            sock.sendall(orjson.dumps(req) + b"\n")
            reply = sub._line(sock)
            if not reply.get("ok"):
                raise DaemonError(reply.get("error") or "subscription refused")
            sock.settimeout(timeout)
            while True:
                try:
                    yield sub._line(sock)
                except DaemonError:
                    return
                except socket.timeout:
                    return
        finally:
            sock.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
