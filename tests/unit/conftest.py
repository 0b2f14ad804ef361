"""Builders of raw kernel records for the unit tests.

Records are built with the same ctypes classes that tracer.events decodes
with (tracer.events.Raw*), and emitted the way the BPF programs emit them:
fixed-size records whole, exec records cut after the used part of argv
(size = offsetof(struct aw_exec, argv) + argv_size).
"""

from __future__ import annotations

import ctypes as ct

import pytest

from tracer import events

class RawRecords:
    """Raw ring buffer records as bytes."""

    @staticmethod
    def header(
        kind: int,
        *,
        pid: int,
        ppid: int = 1,
        tid: int | None = None,
        uid: int = 1000,
        agent_id: int = 0,
        comm: bytes = b"",
        ktime_ns: int = 1_000_000_000,
        start_ns: int = 500_000_000,
        size: int = 0,
    ) -> events.RawHeader:
        h = events.RawHeader()
        h.type = kind
        h.size = size
        h.ktime_ns = ktime_ns
        h.start_ns = start_ns
        h.pid = pid
        h.tid = pid if tid is None else tid
        h.ppid = ppid
        h.uid = uid
        h.agent_id = agent_id
        h.comm = comm
        return h

    @classmethod
    def fork(cls, *, child_pid: int, child_start_ns: int, child_agent_id: int = 0, **hdr) -> bytes:
        r = events.RawFork()
        r.hdr = cls.header(events.EVENT_FORK, size=ct.sizeof(r), **hdr)
        r.child_pid = child_pid
        r.child_agent_id = child_agent_id
        r.child_start_ns = child_start_ns
        return bytes(r)

    @staticmethod
    def pack_argv(argv: list[bytes]) -> bytes:
        return b"".join(a + b"\0" for a in argv)

    @classmethod
    def exec(
        cls,
        *,
        filename: bytes = b"",
        argv: list[bytes] | None = None,
        blob: bytes | None = None,
        argc: int | None = None,
        flags: int = 0,
        retval: int = 0,
        **hdr,
    ) -> bytes:
        """argv packed NUL-separated, or an explicit blob (for truncated argv)."""
        argv = [] if argv is None else argv
        if blob is None:
            blob = cls.pack_argv(argv)
        r = events.RawExec()
        size = events.EXEC_FIXED_SIZE + len(blob)
        r.hdr = cls.header(events.EVENT_EXEC, size=size, **hdr)
        r.retval = retval
        r.flags = flags
        r.argc = len(argv) if argc is None else argc
        r.argv_size = len(blob)
        r.filename = filename
        ct.memmove(ct.addressof(r) + events.EXEC_FIXED_SIZE, blob, len(blob))
        return bytes(r)[:size]

    @classmethod
    def exit(cls, *, exit_code: int = 0, **hdr) -> bytes:
        r = events.RawExit()
        r.hdr = cls.header(events.EVENT_EXIT, size=ct.sizeof(r), **hdr)
        r.exit_code = exit_code
        return bytes(r)

    @classmethod
    def block(cls, *, daddr: bytes, dport: int, family: int = 2, protocol: int = 6, rule: int = 0, **hdr) -> bytes:
        r = events.RawBlock()
        r.hdr = cls.header(events.EVENT_BLOCK, size=ct.sizeof(r), **hdr)
        ct.memmove(r.daddr, daddr, len(daddr))
        r.family = r.sock_family = family
        r.protocol = protocol
        r.sock_type = 1
        r.dport = dport
        r.hook = 1  # AW_BLOCK_CONNECT
        r.rule = rule
        return bytes(r)

    @classmethod
    def connect(
        cls,
        *,
        family: int,
        daddr: bytes,
        dport: int,
        saddr: bytes = b"",
        sport: int = 0,
        protocol: int = 6,
        sock_type: int = 1,
        retval: int = 0,
        fd: int = 3,
        flags: int = 0,
        sock_cookie: int = 0,
        **hdr,
    ) -> bytes:
        r = events.RawConnect()
        r.hdr = cls.header(events.EVENT_CONNECT, size=ct.sizeof(r), **hdr)
        r.retval = retval
        r.fd = fd
        r.family = family
        r.protocol = protocol
        r.sock_type = sock_type
        r.flags = flags
        r.sport = sport
        r.dport = dport
        ct.memmove(r.saddr, saddr, len(saddr))
        ct.memmove(r.daddr, daddr, len(daddr))
        r.sock_cookie = sock_cookie
        return bytes(r)

    @classmethod
    def send(
        cls,
        *,
        family: int,
        daddr: bytes,
        dport: int,
        data: bytes = b"",
        total: int | None = None,
        saddr: bytes = b"",
        sport: int = 0,
        protocol: int = 6,
        sock_type: int = 1,
        fd: int = 3,
        flags: int = 0,
        via: int = 1,
        sock_cookie: int = 0,
        **hdr,
    ) -> bytes:
        """Emitted like the kernel: size = offsetof(struct aw_send, data) + captured."""
        r = events.RawSend()
        size = events.SEND_FIXED_SIZE + len(data)
        r.hdr = cls.header(events.EVENT_SEND, size=size, **hdr)
        r.sock_cookie = sock_cookie
        ct.memmove(r.saddr, saddr, len(saddr))
        ct.memmove(r.daddr, daddr, len(daddr))
        r.fd = fd
        r.total = len(data) if total is None else total
        r.captured = len(data)
        r.flags = flags
        r.via = via
        r.family = family
        r.protocol = protocol
        r.sock_type = sock_type
        r.sport = sport
        r.dport = dport
        ct.memmove(ct.addressof(r) + events.SEND_FIXED_SIZE, data, len(data))
        return bytes(r)[:size]

    @classmethod
    def conn(
        cls,
        *,
        state: int,
        family: int,
        daddr: bytes,
        dport: int,
        saddr: bytes = b"",
        sport: int = 0,
        duration_ns: int = 0,
        oldstate: int = 2,
        sock_cookie: int = 0,
        **hdr,
    ) -> bytes:
        r = events.RawConn()
        r.hdr = cls.header(events.EVENT_CONN, size=ct.sizeof(r), **hdr)
        r.sock_cookie = sock_cookie
        r.duration_ns = duration_ns
        ct.memmove(r.saddr, saddr, len(saddr))
        ct.memmove(r.daddr, daddr, len(daddr))
        r.state = state
        r.family = family
        r.protocol = 6
        r.sport = sport
        r.dport = dport
        r.oldstate = oldstate
        return bytes(r)

    @classmethod
    def cgroup(cls, *, op: int, cgroup_id: int, path: str, parent_id: int = 1, level: int | None = None,
               flags: int = 0, **hdr) -> bytes:
        r = events.RawCgroup()
        hdr.setdefault("pid", 4_999_999)
        r.hdr = cls.header(events.EVENT_CGROUP, size=ct.sizeof(r), **hdr)
        r.cgroup_id = cgroup_id
        r.parent_id = parent_id
        r.op = op
        r.level = path.strip("/").count("/") + 1 if level is None else level
        r.flags = flags
        data = path.encode()
        r.path_len = len(data)
        r.path = data
        return bytes(r)

    @classmethod
    def file(cls, *, op: int, path: bytes = b"", dir: bytes | None = None, other: bytes = b"", result: int = 0,
             dirfd: int = -100, open_flags: int = 0, flags: int = 0, **hdr) -> bytes:
        """An aw_file record; dir as a path (/etc/cron.d), written leaf first as the kernel walks it."""
        r = events.RawFile()
        r.hdr = cls.header(events.EVENT_FILE, size=ct.sizeof(r), **hdr)
        r.op, r.result, r.dirfd, r.open_flags, r.flags = op, result, dirfd, open_flags, flags
        r.path_len, r.path = len(path), path
        r.other_len, r.other = len(other), other
        if dir is not None:
            walk = b"".join(name + b"\0" for name in reversed(dir.strip(b"/").split(b"/")) if name)
            r.dir_len = len(walk)
            ct.memmove(ct.addressof(r) + events.RawFile.dir.offset, walk, len(walk))  # NULs and all
            r.flags |= events.FILE_DIR_WALKED
        return bytes(r)


@pytest.fixture
def raw() -> type[RawRecords]:
    return RawRecords
