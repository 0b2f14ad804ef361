"""The daemon's control socket: a unix socket speaking one JSON object per line.

    {"op": "begin", "sandbox": "rollout-7", "labels": {"task": "42"}, "episode": "ep-1"}
    {"op": "end", "sandbox": "rollout-7"}
    {"op": "status"}
    {"op": "subscribe", "sandbox": "rollout-7", "episode": "ep-1"}   (both optional)

Each request gets one reply line, {"ok": true, ...} or {"ok": false,
"error": "..."}; a subscription then streams alert lines. Who may talk is
checked on the peer's credentials (SO_PEERCRED), not only the file mode:
root, or a member of the configured group. Anyone else is refused, and the
refusal is logged by the daemon. A bad line is answered with an error
naming the field; it never stops the daemon.

Nothing here blocks: the daemon's drain loop calls poll() between drains.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import orjson

OPS = ("begin", "end", "status", "subscribe", "ping")
MAX_LINE = 65536
MAX_OUTBUF = 8 << 20  # a subscriber this far behind is cut off, never waited for
_LABEL_MAX = 256


class ControlError(ValueError):
    """A request that cannot be taken: its message is the reply's error."""


@dataclass(frozen=True)
class Request:
    op: str
    sandbox: str | None = None
    episode: str | None = None
    labels: dict = field(default_factory=dict)


def parse_request(line: bytes) -> Request:
    """One request line to a Request; ControlError names the field that is wrong."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ControlError(f"not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise ControlError("a request is a JSON object with an 'op' field")
    op = obj.get("op")
    if op not in OPS:
        raise ControlError(f"field 'op': {op!r} is not one of {', '.join(OPS)}")
    unknown = set(obj) - {"op", "sandbox", "episode", "labels"}
    if unknown:
        raise ControlError(f"field {sorted(unknown)[0]!r}: unknown (op, sandbox, episode, labels)")
    sandbox = obj.get("sandbox")
    if op in ("begin", "end") and sandbox is None:
        raise ControlError(f"field 'sandbox': {op} needs the sandbox's name, agent id or cgroup path")
    if sandbox is not None and (not isinstance(sandbox, str) or not sandbox or len(sandbox) > 4096):
        raise ControlError("field 'sandbox': must be non-empty text")
    episode = obj.get("episode")
    if episode is not None and not isinstance(episode, str):
        raise ControlError("field 'episode': must be text")
    labels = obj.get("labels", {})
    if not isinstance(labels, dict):
        raise ControlError("field 'labels': must be an object of text values")
    for k, v in labels.items():
        if not k or len(k) > _LABEL_MAX or not isinstance(v, str) or len(v) > 4096:
            raise ControlError(f"field 'labels.{k[:64]}': a label is a name (1-{_LABEL_MAX} chars) and a text value")
    if labels and op != "begin":
        raise ControlError(f"field 'labels': only begin takes labels, not {op}")
    return Request(op, sandbox, episode, dict(labels))


def encode(obj: dict) -> bytes:
    return orjson.dumps(obj) + b"\n"


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def as_json(self) -> dict:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid}


def peer_allowed(peer: Peer, allowed_gid: int | None) -> bool:
    """Root, or a process whose primary or supplementary groups include the configured group."""
    if peer.uid == 0:
        return True
    return allowed_gid is not None and (peer.gid == allowed_gid or allowed_gid in peer.groups)


def _groups_of(pid: int) -> tuple[int, ...]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, _groups_of(pid))


@dataclass
class Conn:
    sock: socket.socket
    peer: Peer
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    subscription: tuple[str | None, str | None] | None = None  # (agent id or None, episode id or None)
    closing: bool = False


class ControlServer:
    """The listening socket and its connections; poll() returns the requests that arrived."""

    def __init__(self, path: str, allowed_gid: int | None = None, mode: int = 0o660) -> None:
        self.path = path
        self.allowed_gid = allowed_gid
        self.conns: dict[int, Conn] = {}
        self.refused: list[Peer] = []   # since the last poll, for the daemon to log
        self.cut_off = 0                # subscribers dropped for not reading
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._take_path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no window in which the socket is open to all
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        if allowed_gid is not None:
            os.chown(path, -1, allowed_gid)
        os.chmod(path, mode)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)

    @staticmethod
    def _take_path(path: str) -> None:
        """Remove a stale socket left by a daemon that died; refuse if one still answers."""
        if not os.path.exists(path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
        finally:
            probe.close()
        raise ControlError(f"{path}: another agentwatch daemon is answering on it")

    def poll(self, timeout: float) -> list[tuple[Conn, Request | ControlError]]:
        got: list[tuple[Conn, Request | ControlError]] = []
        for key, mask in self.sel.select(timeout):
            if key.data is None:
                self._accept()
                continue
            conn: Conn = key.data
            if mask & selectors.EVENT_WRITE:
                self._flush(conn)
            if mask & selectors.EVENT_READ and conn.sock.fileno() in self.conns:
                got += self._read(conn)
        return got

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            if not peer_allowed(peer, self.allowed_gid):
                self.refused.append(peer)
                try:
                    sock.sendall(encode({"ok": False, "error": "permission denied: root or the agentwatch "
                                                               "control group only"}))
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            conn = Conn(sock, peer)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Conn) -> list[tuple[Conn, Request | ControlError]]:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return []
        conn.inbuf += data
        out: list[tuple[Conn, Request | ControlError]] = []
        while True:
            nl = conn.inbuf.find(b"\n")
            if nl < 0:
                if len(conn.inbuf) > MAX_LINE:
                    out.append((conn, ControlError(f"a request line is at most {MAX_LINE} bytes")))
                    conn.inbuf.clear()
                    conn.closing = True
                break
            line = bytes(conn.inbuf[:nl])
            del conn.inbuf[: nl + 1]
            if len(line) > MAX_LINE:
                out.append((conn, ControlError(f"a request line is at most {MAX_LINE} bytes")))
                continue
            if not line.strip():
                continue
            try:
                out.append((conn, parse_request(line)))
            except ControlError as exc:
                out.append((conn, exc))
        return out

    def send(self, conn: Conn, obj: dict) -> None:
        if conn.sock.fileno() not in self.conns:
            return
        conn.outbuf += encode(obj)
        if len(conn.outbuf) > MAX_OUTBUF:
            self.cut_off += 1
            self.close(conn)
            return
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            while conn.outbuf:
                n = conn.sock.send(conn.outbuf)
                del conn.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN,):
                self.close(conn)
                return
        if conn.sock.fileno() not in self.conns:
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        self.sel.modify(conn.sock, want, conn)
        if conn.closing and not conn.outbuf:
            self.close(conn)

    def subscribers(self):
        return [c for c in self.conns.values() if c.subscription is not None]

    def close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if fd in self.conns:
            del self.conns[fd]
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    def shutdown(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)
        try:
            self.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
