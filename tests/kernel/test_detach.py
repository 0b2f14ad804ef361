"""tracer/detach.py through the real kernel: the slow unregistering handed to a process of its own.

Probes(detach_in_background=True).close() returns with the tracepoints (perf
events, raw tracepoint links) still held by that process, which keeps nothing
else (no pipe a reader waits on); once it has exited the programs are gone
from the kernel.
"""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer import bpfobject
from tracer.probes import ProbeConfig, ProbeError, Probes

BPF_PROG_GET_FD_BY_ID = 13
ROOT = Path(__file__).resolve().parents[2]


class _IdAttr(ct.Structure):
    _fields_ = [("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32)]


def prog_exists(prog_id: int) -> bool:
    fd = bpfobject._bpf_syscall(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False


def own_prog_ids() -> set[int]:
    ids = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/self/fdinfo/{name}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except OSError:
            continue
    return ids


def fd_targets(pid: int) -> list[str]:
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return out


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


def test_close_hands_the_tracepoints_to_a_process_that_holds_only_them():
    before = own_prog_ids()  # other tests' probes may be loaded in this process
    try:
        probes = Probes(ProbeConfig(self_tgid=os.getpid(), detach_in_background=True))
    except ProbeError as exc:
        pytest.fail(f"probes do not load: {exc}")
    ids = own_prog_ids() - before
    assert ids, "the probes hold no BPF program fds"
    r, w = os.pipe()  # a pipe of ours, open when close() forks: the detacher must not keep it
    try:
        probes.close()
        pid = probes.detacher_pid
        assert pid, "close() did not hand off"
        assert not own_prog_ids() & ids  # ours are closed
        held = fd_targets(pid)  # read before it exits (it may already be exiting: then empty)
        ours = {os.readlink(f"/proc/self/fd/{r}"), os.readlink(f"/proc/self/fd/{w}")}
        assert not ours & set(held), held
        # Besides the tracepoints, at most the pipe it waits on for our release, about to close.
        assert all(t in ("anon_inode:[perf_event]", "anon_inode:bpf_link") or t.startswith("pipe:")
                   for t in held), held
        assert sum(t.startswith("pipe:") for t in held) <= 1, held
        assert wait_gone(pid, 60), "the detaching process did not finish"
        time.sleep(0.2)  # the last release after its exit
        assert not [i for i in ids if prog_exists(i)]  # every program gone from the kernel
    finally:
        os.close(r)
        os.close(w)


def test_a_pipe_reader_sees_eof_when_agentwatch_exits_not_after_the_detach():
    """`agentwatch run -- true | reader`: the reader's EOF comes from agentwatch's exit; the
    detaching process left behind has no copy of the pipe."""
    cmd = [str(ROOT / ".venv" / "bin" / "agentwatch"), "run", "--format", "json", "--", "/bin/true"]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "tracer", *cmd[1:]]
    before = set(detachers())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pipes = {os.readlink(f"/proc/self/fd/{proc.stdout.fileno()}"),
             os.readlink(f"/proc/self/fd/{proc.stderr.fileno()}")}
    out, err = proc.communicate(timeout=60)  # returns at EOF of both pipes
    assert proc.returncode == 0, err.decode(errors="replace")
    for pid in set(detachers()) - before:
        assert not pipes & set(fd_targets(pid))


def detachers() -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/comm").read_text().strip() == "agentwatch-deta":  # comm: 15 chars
                    out.append(int(name))
            except OSError:
                pass
    return out
