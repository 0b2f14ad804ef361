"""ProcessTable: seeding from a fake /proc, fork/exec/exit, keys and ancestry."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tracer import proctree
from tracer.proctree import CLOCK_TICKS, ProcessTable, read_stat, start_ticks_from_ns

# Above PID_MAX_LIMIT: ProcessTable.lookup asks the real /proc about a pid it
# has not seen, and must find nothing there.
P = 5_000_000


def stat_line(pid: int, comm: bytes, ppid: int, starttime: int, state: bytes = b"S") -> bytes:
    """A /proc/PID/stat line: 52 fields, ppid the 4th, starttime the 22nd."""
    after_comm = [state, ppid, 7, 7, 0, -1, 4194560, 100, 0, 0, 0, 5, 3, 0, 0, 20, 0, 1, 0, starttime]
    after_comm += [12345678, 400, 2**64 - 1] + [0] * 27
    assert len(after_comm) == 50
    fields = b" ".join(f if isinstance(f, bytes) else str(f).encode() for f in after_comm)
    return b"%d (%s) %s\n" % (pid, comm, fields)


def fake_process(proc: Path, pid: int, comm: bytes, ppid: int, starttime: int,
                 cmdline: bytes | None = None, exe: bytes | None = None) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_bytes(stat_line(pid, comm, ppid, starttime))
    if cmdline is not None:
        (d / "cmdline").write_bytes(cmdline)
    if exe is not None:
        os.symlink(exe, os.fsencode(d / "exe"))


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    fake_process(proc, 1, b"systemd", 0, 1, b"/sbin/init\0splash\0", b"/usr/lib/systemd/systemd")
    fake_process(proc, 2, b"kthreadd", 0, 1, b"")  # kernel thread: empty cmdline, no exe
    fake_process(proc, 100, b"a) (b", 1, 500, b"agent\0--flag\0\0last\0", b"/opt/agent/bin/agent")
    fake_process(proc, 200, b"Web Content", 100, 700, b"web\0", b"/usr/lib/firefox/firefox")
    fake_process(proc, 300, b") S 1 2 3", 200, 900, b"x\0", b"/opt/\xff\xfe/tool (deleted)")
    fake_process(proc, 301, b"", 200, 901, b"noexe\0")  # empty comm (PR_SET_NAME "")
    fake_process(proc, 400, b"orphan", 99999, 1000, b"o\0", b"/bin/o")  # parent not in /proc
    # Not processes, or gone between listing and reading:
    (proc / "self").mkdir()
    (proc / "sys").mkdir()
    (proc / "12345").mkdir()
    (proc / "cpuinfo").write_text("processor: 0\n")
    return proc


def test_seed_reads_every_process(fake_proc):
    table = ProcessTable()
    assert table.seed_from_proc(fake_proc) == 7
    assert len(table) == 7
    assert table.get(12345) is None


def test_seed_comm_with_parentheses_and_spaces(fake_proc):
    table = ProcessTable()
    table.seed_from_proc(fake_proc)
    assert table.get(100).comm == b"a) (b"
    assert table.get(200).comm == b"Web Content"
    assert table.get(300).comm == b") S 1 2 3"
    assert table.get(301).comm == b""
    # The fields after a tricky comm are still read right.
    assert (table.get(100).ppid, table.get(100).start_ticks) == (1, 500)
    assert (table.get(300).ppid, table.get(300).start_ticks) == (200, 900)
    assert table.get(300).key == "300:900"


def test_seed_cmdline_exe_and_uid(fake_proc):
    table = ProcessTable()
    table.seed_from_proc(fake_proc)
    agent = table.get(100)
    assert agent.argv == [b"agent", b"--flag", b"", b"last"]
    assert agent.exe == b"/opt/agent/bin/agent"
    assert agent.uid == os.getuid()
    assert table.get(300).exe == b"/opt/\xff\xfe/tool (deleted)"  # not UTF-8: bytes kept
    assert table.get(2).argv == []
    assert table.get(2).exe is None
    assert table.get(301).exe is None
    assert all(p.alive for p in (table.get(pid) for pid in (1, 2, 100, 200, 300, 301, 400)))


def test_seed_links_parents_by_current_ppid(fake_proc):
    table = ProcessTable()
    table.seed_from_proc(fake_proc)
    assert table.get(300).parent is table.get(200)
    assert [p.pid for p in table.get(300).ancestry()] == [200, 100, 1]
    assert table.get(1).parent is None
    assert table.get(400).parent is None  # its parent is not in /proc
    assert table.get(400).ppid == 99999


def test_seed_descendants(fake_proc):
    table = ProcessTable()
    table.seed_from_proc(fake_proc)
    assert sorted(p.pid for p in table.descendants(100)) == [200, 300, 301]
    assert sorted(p.pid for p in table.descendants(200)) == [300, 301]
    assert table.descendants(300) == []
    assert {p.pid for p in table.descendants(1)} == {100, 200, 300, 301}


def test_read_stat_gone_process(tmp_path):
    assert read_stat(42, tmp_path) is None


def test_read_stat_of_this_process():
    st = read_stat(os.getpid())
    assert st is not None
    assert st.pid == os.getpid()
    assert st.ppid == os.getppid()
    assert st.uid == os.getuid()
    assert st.comm == Path("/proc/self/comm").read_bytes().rstrip(b"\n")


# --------------------------------------------------------------------------
# Events.


@pytest.fixture
def table() -> ProcessTable:
    return ProcessTable()


def test_lookup_creates_then_finds_the_same_process(table):
    p = table.lookup(P + 1, 50, ppid=P, comm=b"bash", uid=1000)
    assert (p.pid, p.start_ticks, p.ppid, p.comm, p.uid) == (P + 1, 50, P, b"bash", 1000)
    assert p.key == f"{P + 1}:50"
    assert p.exe is None and p.argv == []  # nothing in /proc, no parent to borrow from
    assert table.lookup(P + 1, 50) is p
    assert len(table) == 1


def test_lookup_borrows_the_parents_image_when_proc_has_none(table):
    parent = table.lookup(P, 10, comm=b"sh")
    table.new_image(parent, b"sh", b"/bin/sh", [b"sh", b"-c", b"x"], False)
    child = table.lookup(P + 1, 20, ppid=P, comm=b"sh")
    assert child.parent is parent
    assert (child.exe, child.argv) == (b"/bin/sh", [b"sh", b"-c", b"x"])


def test_fork_inherits_the_parents_image(table):
    parent = table.lookup(P, 10, comm=b"bash", uid=1000)
    table.new_image(parent, b"bash", b"/bin/bash", [b"bash", b"-l"], True)
    child = table.fork(parent, P + 1, 20, agent_id=3)
    assert table.get(P + 1) is child
    assert child.parent is parent
    assert (child.ppid, child.uid, child.comm, child.exe) == (P, 1000, b"bash", b"/bin/bash")
    assert child.argv == [b"bash", b"-l"] and child.argv_truncated
    assert child.agent_id == 3
    assert child.key == f"{P + 1}:20"


def test_exec_changes_only_that_process(table):
    parent = table.lookup(P, 10)
    table.new_image(parent, b"bash", b"/bin/bash", [b"bash"], False)
    child = table.fork(parent, P + 1, 20, 0)
    table.new_image(child, b"curl", b"/usr/bin/curl", [b"curl", b"https://example.com"], False)
    assert (child.comm, child.exe, child.argv) == (b"curl", b"/usr/bin/curl", [b"curl", b"https://example.com"])
    assert (parent.comm, parent.exe, parent.argv) == (b"bash", b"/bin/bash", [b"bash"])


def test_exit_removes_the_process(table):
    parent = table.lookup(P, 10)
    child = table.fork(parent, P + 1, 20, 0)
    table.exit(child)
    assert not child.alive
    assert table.get(P + 1) is None
    assert table.get(P) is parent and parent.alive


def test_pid_reuse_by_fork(table):
    parent = table.lookup(P, 10)
    first = table.fork(parent, P + 1, 20, 0)
    second = table.fork(parent, P + 1, 30, 0)  # exit of the first was never seen
    assert not first.alive
    assert second.alive and table.get(P + 1) is second
    assert first.key != second.key == f"{P + 1}:30"


def test_pid_reuse_by_lookup(table):
    old = table.lookup(P + 1, 20, comm=b"old")
    new = table.lookup(P + 1, 21, comm=b"new")
    assert new is not old
    assert not old.alive and new.alive
    assert table.get(P + 1) is new
    assert (old.key, new.key) == (f"{P + 1}:20", f"{P + 1}:21")


def test_exit_of_a_stale_process_keeps_the_new_one(table):
    old = table.lookup(P + 1, 20)
    new = table.lookup(P + 1, 21)
    table.exit(old)
    assert table.get(P + 1) is new and new.alive


def test_ancestry_is_fixed_at_fork_time(table):
    root = table.lookup(P, 10, comm=b"agent")
    shell = table.fork(root, P + 1, 20, 1)
    daemon = table.fork(shell, P + 2, 30, 1)
    # The shell exits; the daemon is reparented to init and its later events say ppid 1.
    table.exit(shell)
    again = table.lookup(P + 2, 30, ppid=1, comm=b"daemon")
    assert again is daemon
    assert [p.pid for p in daemon.ancestry()] == [P + 1, P]
    assert daemon.ancestry()[0] is shell and not shell.alive
    # The root exits too: the chain is still there.
    table.exit(root)
    assert [p.key for p in daemon.ancestry()] == [f"{P + 1}:20", f"{P}:10"]


def test_ancestry_survives_reuse_of_the_parents_pid(table):
    root = table.lookup(P, 10)
    child = table.fork(root, P + 1, 20, 0)
    table.exit(root)
    stranger = table.lookup(P, 99)
    assert child.ancestry() == [root]
    assert child.ancestry()[0] is not stranger


def test_ancestry_depth(table):
    node = table.lookup(P, 1)
    chain = [node]
    for i in range(1, 25):
        node = table.fork(node, P + i, i + 1, 0)
        chain.append(node)
    assert len(node.ancestry()) == proctree.ANCESTRY_DEPTH == 16
    assert node.ancestry() == chain[-2:-18:-1]
    assert node.ancestry(depth=3) == chain[-2:-5:-1]
    assert chain[0].ancestry() == []


def test_descendants_breadth_first(table):
    root = table.lookup(P, 1)
    a = table.fork(root, P + 1, 2, 0)
    b = table.fork(root, P + 2, 3, 0)
    a1 = table.fork(a, P + 3, 4, 0)
    b1 = table.fork(b, P + 4, 5, 0)
    a11 = table.fork(a1, P + 5, 6, 0)
    table.lookup(P + 50, 7)  # unrelated
    assert table.descendants(P) == [a, b, a1, b1, a11]
    assert table.descendants(P + 1) == [a1, a11]
    table.exit(b1)
    assert table.descendants(P) == [a, b, a1, a11]  # live ones only


def test_descendants_below_an_exited_process(table):
    root = table.lookup(P, 1)
    middle = table.fork(root, P + 1, 2, 0)
    grandchild = table.fork(middle, P + 2, 3, 0)
    table.exit(middle)  # double fork: the middle process is gone
    assert root in grandchild.ancestry()
    assert table.descendants(P) == [grandchild]


def test_descendants_after_pid_reuse(table):
    old = table.lookup(P, 10)
    orphan = table.fork(old, P + 1, 20, 0)
    table.exit(old)
    new = table.lookup(P, 99)  # same pid, another process
    assert new is not old
    assert orphan not in table.descendants(P)


# --------------------------------------------------------------------------
# Start times: the kernel's nanoseconds against /proc's clock ticks.


def test_start_ticks_arithmetic():
    tick_ns = 1_000_000_000 // CLOCK_TICKS
    assert start_ticks_from_ns(0) == 0
    assert start_ticks_from_ns(tick_ns - 1) == 0  # truncated, like the kernel's nsec_to_clock_t
    assert start_ticks_from_ns(tick_ns) == 1
    assert start_ticks_from_ns(5 * 10**9 + 3 * tick_ns + 1) == 5 * CLOCK_TICKS + 3
    # Months of uptime: integer arithmetic, no float rounding.
    year = 365 * 86400 * 10**9 + 7 * tick_ns + tick_ns - 1
    assert start_ticks_from_ns(year) == 365 * 86400 * CLOCK_TICKS + 7
    assert isinstance(start_ticks_from_ns(year), int)


def test_start_ticks_matches_proc_for_a_new_process():
    """A child started between two CLOCK_BOOTTIME readings has a /proc
    starttime between their tick conversions (start_boottime is CLOCK_BOOTTIME)."""
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    child = subprocess.Popen(["sleep", "30"])
    try:
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        st = read_stat(child.pid)
        assert st is not None
        assert start_ticks_from_ns(before) <= st.start_ticks <= start_ticks_from_ns(after)
    finally:
        child.kill()
        child.wait()


def test_start_ticks_of_this_process_is_in_the_past():
    fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
    starttime = int(fields[19])
    assert read_stat(os.getpid()).start_ticks == starttime
    assert 0 < starttime <= start_ticks_from_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
