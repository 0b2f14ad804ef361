"""Start the agent root held at a gate, so it is watched before its first exec.

subprocess.Popen cannot be used: it waits for the exec to succeed, and the
child must instead wait for us to add its pid to the kernel's membership map.
"""

from __future__ import annotations

import os
import shutil
import signal


class LaunchError(RuntimeError):
    pass


class GatedChild:
    """A forked child that execs argv only when released."""

    def __init__(self, argv: list[str]):
        if not argv:
            raise LaunchError("no command given")
        # Resolve the PATH search here, not with execvp in the child: its failed
        # tries would be watched execs whose process is still agentwatch, with
        # agentwatch's command line (which holds the agent's command) as argv.
        path = shutil.which(argv[0]) if "/" not in argv[0] else argv[0]
        if path is None:
            raise LaunchError(f"cannot run {argv[0]!r}: not found in PATH")
        gate_r, gate_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(gate_w)
                os.close(err_r)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                if os.read(gate_r, 1) != b"x":
                    os._exit(126)  # agentwatch went away before releasing us
                os.close(gate_r)
                os.execv(path, argv)
            except OSError as exc:
                os.write(err_w, f"{exc.errno}".encode())
            finally:
                os._exit(127)
        os.close(gate_r)
        os.close(err_w)
        self.pid = pid
        self.argv = argv
        self._gate = gate_w
        self._err = err_r

    def release(self) -> None:
        """Let the child exec; raise LaunchError if the exec fails."""
        os.write(self._gate, b"x")
        os.close(self._gate)
        data = os.read(self._err, 64)  # EOF on a successful exec (O_CLOEXEC)
        os.close(self._err)
        if data:
            code = int(data)
            raise LaunchError(f"cannot run {self.argv[0]!r}: {os.strerror(code)}")

    def abandon(self) -> None:
        """Never release: the child exits without running anything."""
        os.close(self._gate)
        os.close(self._err)
        os.waitpid(self.pid, 0)
