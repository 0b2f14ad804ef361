"""tracer/detach.py's hand-off without BPF: the process keeps its copies until released.

Were it to exit first, the caller's own close would be the last reference
again, and the kernel's slow release the caller's wait (which is what a
first version did about one run in three).
"""

from __future__ import annotations

import os
import time

from tracer import detach


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def test_it_holds_the_fds_until_released_and_nothing_else():
    r, w = os.pipe()
    other_r, other_w = os.pipe()
    try:
        handoff = detach.hand_off([r])
        assert handoff is not None and handoff.pid != os.getpid()
        time.sleep(0.3)
        assert alive(handoff.pid)  # not released: still holding
        held = {os.readlink(f"/proc/{handoff.pid}/fd/{n}") for n in os.listdir(f"/proc/{handoff.pid}/fd")}
        assert os.readlink(f"/proc/self/fd/{r}") in held
        assert os.readlink(f"/proc/self/fd/{other_r}") not in held  # (a pipe's two ends read alike)
        os.close(r)
        r = -1
        handoff.release()
        assert wait_gone(handoff.pid)
    finally:
        for fd in (r, w, other_r, other_w):
            if fd >= 0:
                os.close(fd)


def test_nothing_to_hand_off_starts_nothing():
    assert detach.hand_off([]) is None
