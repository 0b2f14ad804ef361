"""Detaching without making anyone wait: the slow part handed to a process of its own.

Closing the last reference to a tracepoint's perf event unregisters it, and
the kernel serialises those: each takes event_mutex and then waits for
tracepoint_synchronize_unregister (an RCU grace period), ~37 ms here, so
2 s for agentwatch's 56 tracepoints, from one thread or from 56 alike. That
used to be the last 2 s of every `agentwatch run`, paid by whoever waits
for it: a shell, a pipe's reader, an RL harness wrapping short tool calls.

hand_off(fds) double-forks a process that keeps a copy of those fds and
closes everything else (stdout, stderr, pipes, sockets: a pipe's reader
sees EOF when agentwatch itself exits), waits until we have closed ours
(HandOff.release, or our exit), then exits; its exit does the
unregistering. Our own closes then only drop a reference and return at
once. Until it is done (about 2 s) the programs still run, writing records
nobody reads; nothing else is kept (it holds no map but through the
programs, and no ring buffer reader).
"""

from __future__ import annotations

import ctypes as ct
import os

PR_SET_NAME = 15
NAME = b"agentwatch-detach"


class HandOff:
    """The process that closes the fds last (pid), and the caller's side of the pipe it waits
    on: release() once the caller has closed its own copies (its exit does it too). Until then
    the process keeps its copies: were it to close them first, the caller's close would be the
    last reference again, and the wait the caller's."""

    def __init__(self, pid: int, release_fd: int):
        self.pid = pid
        self._fd = release_fd

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def hand_off(fds: list[int]) -> HandOff | None:
    """Start the process that will close `fds` last, or None if it could not start (then the
    caller's own closes do the waiting, as before)."""
    keep = {fd for fd in fds if fd >= 0}
    if not keep:
        return None
    try:
        r, w = os.pipe()
    except OSError:
        return None
    try:
        done_r, done_w = os.pipe()  # the grandchild reads until EOF: the caller's release()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    try:
        child = os.fork()
    except OSError:
        for fd in (r, w, done_r, done_w):
            os.close(fd)
        return None
    if child == 0:  # pragma: no cover  (a forked child: only os calls, then _exit)
        try:
            os.close(r)
            os.setsid()  # the terminal's ^C and hang-up are for agentwatch, not for this
            grandchild = os.fork()
            if grandchild:
                os.write(w, str(grandchild).encode())
                os._exit(0)
            _linger(keep, done_r)
        finally:
            os._exit(0)
    os.close(w)
    os.close(done_r)
    try:
        data = os.read(r, 32)
    finally:
        os.close(r)
        os.waitpid(child, 0)
    if not data.isdigit():
        os.close(done_w)
        return None
    return HandOff(int(data), done_w)


def _linger(keep: set[int], done: int) -> None:  # pragma: no cover  (runs in the grandchild)
    try:
        ct.CDLL(None, use_errno=True).prctl(PR_SET_NAME, NAME, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        os.chdir("/")  # holds no directory of the caller's
    except OSError:
        pass
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd != done:
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        while os.read(done, 64):  # EOF: the caller has closed its copies (or is gone)
            pass
    except OSError:
        pass
    os.close(done)
    # The caller's _exit closes the perf fds, now the last references: the slow part.
