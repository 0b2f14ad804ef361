"""tracer.events.decode on records built with the same ctypes classes.

Exec records carry only the used part of argv, as the BPF program emits
them: size = offsetof(struct aw_exec, argv) + argv_size.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket

import pytest

from tracer import events
from tracer.events import DecodeError, decode

HDR = dict(
    pid=4242,
    tid=4243,
    ppid=4000,
    uid=1001,
    agent_id=7,
    comm=b"python3",
    ktime_ns=123_456_789_012,
    start_ns=98_765_432_100,
)


def assert_header(ev: events.Event, kind: str) -> None:
    assert ev.type == kind
    assert (ev.pid, ev.tid, ev.ppid, ev.uid, ev.agent_id) == (4242, 4243, 4000, 1001, 7)
    assert ev.comm == b"python3"
    assert ev.ktime_ns == 123_456_789_012
    assert ev.start_ns == 98_765_432_100


def test_fork(raw):
    ev = decode(raw.fork(child_pid=4300, child_agent_id=7, child_start_ns=2**40 + 5, **HDR))
    assert isinstance(ev, events.ForkEvent)
    assert_header(ev, "fork")
    assert (ev.child_pid, ev.child_agent_id, ev.child_start_ns) == (4300, 7, 2**40 + 5)


def test_header_fields_use_their_full_width(raw):
    """64-bit times and 32-bit ids survive at their extremes, in little endian."""
    rec = raw.fork(
        child_pid=2**32 - 1,
        child_start_ns=2**64 - 1,
        pid=2**32 - 2,
        uid=2**32 - 1,
        ktime_ns=2**64 - 2,
        start_ns=2**63 + 1,
        comm=b"x" * 15,
    )
    assert rec[8:16] == (2**64 - 2).to_bytes(8, "little")
    ev = decode(rec)
    assert (ev.pid, ev.uid, ev.ktime_ns, ev.start_ns) == (2**32 - 2, 2**32 - 1, 2**64 - 2, 2**63 + 1)
    assert (ev.child_pid, ev.child_start_ns) == (2**32 - 1, 2**64 - 1)
    assert ev.comm == b"x" * 15


def test_comm_stops_at_nul(raw):
    rec = bytearray(raw.exit(**HDR))
    comm_at = events.RawHeader.comm.offset
    rec[comm_at : comm_at + 16] = b"sh\0garbage\0\0\0\0\0\0"
    assert decode(bytes(rec)).comm == b"sh"


def test_exec_variable_length_argv(raw):
    argv = [b"python3", b"-c", b"print('hi there')", b"", b"\xff\xfe not utf-8", b"last"]
    rec = raw.exec(filename=b"/usr/bin/python3", argv=argv, **HDR)
    blob = b"".join(a + b"\0" for a in argv)
    # Emitted like the kernel: only the used bytes of argv.
    assert len(rec) == events.EXEC_FIXED_SIZE + len(blob) < ct.sizeof(events.RawExec)
    ev = decode(rec)
    assert isinstance(ev, events.ExecEvent)
    assert_header(ev, "exec")
    assert ev.retval == 0
    assert ev.flags == 0
    assert not ev.argv_truncated
    assert ev.filename == b"/usr/bin/python3"
    assert ev.argv == argv


@pytest.mark.parametrize(
    "argv",
    [
        [b"true"],
        [b"a", b""],  # trailing empty argument kept
        [b"", b"a"],
        [b"", b"", b""],
        [b"x" * 4000, b"y" * 4000],
    ],
    ids=["one", "trailing-empty", "leading-empty", "all-empty", "long"],
)
def test_exec_argv_shapes(raw, argv):
    ev = decode(raw.exec(filename=b"/bin/x", argv=argv, **HDR))
    assert ev.argv == argv


def test_exec_truncated_argv(raw):
    """Past the byte cap the last argument is cut and NUL-terminated at the cap."""
    first = b"a" * 100
    cut = b"b" * (events.ARGV_BYTES - len(first) - 2)
    blob = first + b"\0" + cut + b"\0"
    assert len(blob) == events.ARGV_BYTES
    rec = raw.exec(
        filename=b"/bin/echo", argv=[first, cut], blob=blob, flags=events.EXEC_ARGV_TRUNCATED, **HDR
    )
    assert len(rec) == events.EXEC_FIXED_SIZE + events.ARGV_BYTES
    ev = decode(rec)
    assert ev.argv_truncated
    assert ev.flags == events.EXEC_ARGV_TRUNCATED
    assert ev.argv == [first, cut]


def test_exec_argv_without_final_nul(raw):
    ev = decode(raw.exec(argv=[b"a", b"bc"], blob=b"a\0bc", flags=events.EXEC_ARGV_TRUNCATED, **HDR))
    assert ev.argv == [b"a", b"bc"]
    assert ev.argv_truncated


def test_exec_argv_comes_from_argv_size_not_argc(raw):
    """A successful exec copies the new image's argument area whole: argc is 0."""
    ev = decode(raw.exec(argv=[b"a", b"b", b"c"], argc=0, **HDR))
    assert ev.argv == [b"a", b"b", b"c"]


def test_exec_record_longer_than_its_argv_is_refused(raw):
    """The kernel emits exactly offsetof(argv) + argv_size: anything else breaks the contract."""
    rec = raw.exec(argv=[b"a", b"b"], **HDR) + b"junk\0"
    with pytest.raises(DecodeError):
        decode(rec)


def test_execveat_flag(raw):
    ev = decode(raw.exec(filename=b"/dev/fd/3", argv=[b"x"], flags=events.EXEC_EXECVEAT, **HDR))
    assert ev.flags & events.EXEC_EXECVEAT
    assert not ev.argv_truncated


def test_failed_exec_keeps_negative_retval(raw):
    ev = decode(raw.exec(filename=b"/nonexistent", argv=[b"/nonexistent", b"-v"], retval=-2, **HDR))
    assert ev.retval == -2
    assert ev.filename == b"/nonexistent"
    assert ev.argv == [b"/nonexistent", b"-v"]


def test_exec_with_unreadable_argv(raw):
    """No argv bytes at all: the record stops right at argv."""
    rec = raw.exec(filename=b"/bin/sh", flags=events.EXEC_ARGV_FAULT, **HDR)
    assert len(rec) == events.EXEC_FIXED_SIZE
    ev = decode(rec)
    assert ev.argv == []
    assert ev.flags == events.EXEC_ARGV_FAULT
    assert not ev.argv_truncated
    assert ev.filename == b"/bin/sh"


def test_exec_with_empty_argv(raw):
    """execve(path, NULL, ...) or {NULL}: zero bytes of argv, no flag."""
    ev = decode(raw.exec(filename=b"/bin/true", argv=[], **HDR))
    assert ev.argv == []
    assert ev.flags == 0


def test_exec_filename_of_full_length(raw):
    name = b"/" + b"d" * (events.FILENAME_LEN - 1)
    ev = decode(raw.exec(filename=name, flags=events.EXEC_FILENAME_TRUNCATED, argv=[b"x"], **HDR))
    assert ev.filename == name
    assert ev.argv == [b"x"]


@pytest.mark.parametrize(
    "status, code, signal",
    [(0, 0, 0), (3 << 8, 3, 0), (255 << 8, 255, 0), (9, 0, 9), (0x80 | 11, 0, 11), (15, 0, 15)],
    ids=["zero", "code-3", "code-255", "sigkill", "sigsegv-core", "sigterm"],
)
def test_exit(raw, status, code, signal):
    ev = decode(raw.exit(exit_code=status, **HDR))
    assert isinstance(ev, events.ExitEvent)
    assert_header(ev, "exit")
    assert ev.exit_code == status
    assert (ev.code, ev.signal) == (code, signal)


def _v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


@pytest.mark.parametrize(
    "family, saddr, daddr, sport, dport, retval",
    [
        (socket.AF_INET, bytes([10, 0, 0, 2]), bytes([93, 184, 216, 34]), 40000, 443, -115),
        (socket.AF_INET, b"", bytes([127, 0, 0, 1]), 0, 8080, -111),
        (socket.AF_INET6, _v6("2001:db8::2"), _v6("2001:db8::1"), 51234, 80, 0),
        (socket.AF_INET6, _v6("::ffff:10.0.0.2"), _v6("::ffff:1.2.3.4"), 65535, 65535, -101),
    ],
    ids=["v4", "v4-unbound", "v6", "v4-mapped"],
)
def test_connect(raw, family, saddr, daddr, sport, dport, retval):
    ev = decode(
        raw.connect(
            family=family, saddr=saddr, daddr=daddr, sport=sport, dport=dport, retval=retval,
            protocol=6, sock_type=1, fd=17, flags=0, **HDR,
        )
    )
    assert isinstance(ev, events.ConnectEvent)
    assert_header(ev, "connect")
    assert (ev.family, ev.sport, ev.dport, ev.retval, ev.fd) == (family, sport, dport, retval, 17)
    assert (ev.protocol, ev.sock_type, ev.flags) == (6, 1, 0)
    assert ev.saddr == saddr.ljust(16, b"\0")
    assert ev.daddr == daddr.ljust(16, b"\0")
    assert len(ev.saddr) == len(ev.daddr) == 16


def test_connect_no_socket_flag_and_udp(raw):
    ev = decode(
        raw.connect(
            family=socket.AF_INET, daddr=bytes([8, 8, 8, 8]), dport=53, protocol=17, sock_type=2,
            flags=events.CONNECT_NO_SOCKET, **HDR,
        )
    )
    assert ev.flags == events.CONNECT_NO_SOCKET
    assert (ev.protocol, ev.sock_type) == (17, 2)


# --------------------------------------------------------------------------
# Records that break the contract.


def test_empty_record():
    with pytest.raises(DecodeError, match="shorter than the header"):
        decode(b"")


def test_record_shorter_than_header(raw):
    rec = raw.fork(child_pid=1, child_start_ns=1, **HDR)
    with pytest.raises(DecodeError, match="shorter than the header"):
        decode(rec[: events.HEADER_SIZE - 1])


@pytest.mark.parametrize("kind", [0, events.EVENT_TYPES, 99, 2**32 - 1])
def test_unknown_type(raw, kind):
    rec = bytearray(raw.exit(**HDR))
    rec[0:4] = kind.to_bytes(4, "little")
    with pytest.raises(DecodeError, match=f"unknown record type {kind}"):
        decode(bytes(rec))


@pytest.mark.parametrize(
    "build",
    [
        lambda raw: raw.fork(child_pid=1, child_start_ns=1, **HDR),
        lambda raw: raw.exit(exit_code=0, **HDR),
        lambda raw: raw.connect(family=2, daddr=b"\1\2\3\4", dport=1, **HDR),
    ],
    ids=["fork", "exit", "connect"],
)
def test_fixed_record_one_byte_short(raw, build):
    rec = build(raw)
    decode(rec)  # whole: fine
    with pytest.raises(DecodeError, match=f"record of {len(rec) - 1} bytes, want (at least )?{len(rec)}"):
        decode(rec[:-1])
    with pytest.raises(DecodeError):
        decode(rec[: events.HEADER_SIZE])


def test_exec_shorter_than_its_fixed_part(raw):
    rec = raw.exec(filename=b"/bin/sh", argv=[b"sh"], **HDR)
    with pytest.raises(DecodeError, match=f"exec record of {events.EXEC_FIXED_SIZE - 1} bytes"):
        decode(rec[: events.EXEC_FIXED_SIZE - 1])
    with pytest.raises(DecodeError):
        decode(rec[: events.HEADER_SIZE])


# --------------------------------------------------------------------------
# send and connection records.


def test_connect_carries_its_socket(raw):
    ev = decode(raw.connect(family=socket.AF_INET, daddr=bytes([1, 2, 3, 4]), dport=443, sock_cookie=2**64 - 8, **HDR))
    assert ev.sock_cookie == 2**64 - 8


@pytest.mark.parametrize("data", [b"", b"x", b"SSH-2.0-test\r\n", bytes(range(256)) * 2], ids=["none", "one", "ssh", "cap"])
def test_send_variable_length_data(raw, data):
    rec = raw.send(family=socket.AF_INET, daddr=bytes([1, 2, 3, 4]), saddr=bytes([10, 0, 0, 2]), dport=22,
                   sport=40000, data=data, total=len(data) + 7, sock_cookie=99, **HDR)
    assert len(rec) == events.SEND_FIXED_SIZE + len(data)
    ev = decode(rec)
    assert isinstance(ev, events.SendEvent)
    assert_header(ev, "send")
    assert ev.data == data and ev.captured == len(data) and ev.total == len(data) + 7
    assert (ev.family, ev.dport, ev.sport, ev.sock_cookie, ev.fd) == (socket.AF_INET, 22, 40000, 99, 3)
    assert ev.daddr == bytes([1, 2, 3, 4]).ljust(16, b"\0")
    assert ev.truncated


def test_send_truncated_only_past_what_was_captured(raw):
    ev = decode(raw.send(family=socket.AF_INET, daddr=b"\1\2\3\4", dport=80, data=b"abc", **HDR))
    assert not ev.truncated
    ev = decode(raw.send(family=socket.AF_INET, daddr=b"\1\2\3\4", dport=80, data=b"abc",
                         flags=events.SEND_MORE_IOVECS, **HDR))
    assert ev.truncated, "more iovecs than gathered: the total is not known"


def test_send_record_must_end_with_its_data(raw):
    rec = raw.send(family=socket.AF_INET, daddr=b"\1\2\3\4", dport=80, data=b"abc", **HDR)
    with pytest.raises(DecodeError, match="send record"):
        decode(rec + b"x")
    with pytest.raises(DecodeError):
        decode(rec[:-1])
    with pytest.raises(DecodeError, match="want at least"):
        decode(rec[: events.SEND_FIXED_SIZE - 1])


def test_send_data_past_the_cap_is_refused(raw):
    data = b"y" * (events.PAYLOAD_BYTES + 1)
    with pytest.raises(DecodeError, match=f"with {len(data)} bytes of data"):
        decode(raw.send(family=socket.AF_INET, daddr=b"\1\2\3\4", dport=80, data=data, **HDR))


def test_connection(raw):
    ev = decode(raw.conn(state=events.CONN_CLOSED, family=socket.AF_INET6, daddr=_v6("2001:db8::1"),
                         saddr=_v6("2001:db8::2"), sport=5555, dport=443, duration_ns=1_500_000_000,
                         oldstate=5, sock_cookie=12345, **HDR))
    assert isinstance(ev, events.ConnEvent)
    assert_header(ev, "connection")
    assert (ev.state, ev.family, ev.protocol, ev.sport, ev.dport) == (events.CONN_CLOSED, socket.AF_INET6, 6, 5555, 443)
    assert (ev.duration_ns, ev.oldstate, ev.sock_cookie) == (1_500_000_000, 5, 12345)
    assert ev.daddr == _v6("2001:db8::1")
    rec = raw.conn(state=events.CONN_FAILED, family=socket.AF_INET, daddr=b"\1\2\3\4", dport=1, **HDR)
    with pytest.raises(DecodeError):
        decode(rec[:-1])
