"""The daemon as an operator runs it (`agentwatch daemon --config FILE`), and sandboxes as cgroups.

Sandboxes live under a slice of the test's own in the v2 hierarchy; their
processes move themselves into their cgroup and then enter the scenario's
"agent" network namespace (sandbox.py), so nothing touches the root
namespace's network. Everything made here is removed by its fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import AGENTWATCH, Net

from tracer import cgroups
from tracer.harness import Client


@dataclass
class DaemonRun:
    """One `agentwatch daemon` process, its config, output and control socket."""

    tmp: Path
    config_text: str
    name: str = "daemon"
    socket_dir: Path | None = None  # default tmp; a peer of another uid needs a directory it can traverse
    proc: subprocess.Popen | None = None
    extra_env: dict = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.tmp / f"{self.name}.yaml"

    @property
    def socket(self) -> str:
        return str((self.socket_dir or self.tmp) / f"{self.name}.sock")

    @property
    def output(self) -> Path:
        return self.tmp / f"{self.name}.jsonl"

    @property
    def log(self) -> Path:
        return self.tmp / f"{self.name}.log"

    def start(self, timeout: float = 60) -> "DaemonRun":
        self.config.write_text(self.config_text)
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([AGENTWATCH, "daemon", "--config", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.tmp,
                                     env={**os.environ, **self.extra_env})
        log.close()
        started = len(self.statuses("daemon_started"))
        deadline = time.monotonic() + timeout
        while len(self.statuses("daemon_started")) <= started:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def client(self) -> Client:
        return Client(self.socket, timeout=30)

    def records(self) -> list[dict]:
        if not self.output.exists():
            return []
        out = []
        for line in self.output.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def statuses(self, status: str) -> list[dict]:
        return [r for r in self.records() if r.get("kind") == "status" and r.get("status") == status]

    def alerts(self) -> list[dict]:
        return [r for r in self.records() if r.get("kind") == "alert"]

    def wait_for(self, predicate, timeout: float = 20, what: str = "a record"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records() if predicate(r)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s; daemon log: {self.log.read_text(errors='replace')[-2000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def in_sandbox(cgroup: Path, net: Net, argv: list[str]) -> list[str]:
    """argv run inside a sandbox: the shell moves itself into the cgroup, then enters the agent namespace.

    (`ip netns exec` remounts /sys, so the move comes first.)
    """
    return ["/bin/sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *net.in_agent(*argv)]


def run_in_sandbox(cgroup: Path, net: Net, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(in_sandbox(cgroup, net, argv), capture_output=True, timeout=timeout, env=net.env,
                          cwd=net.tmp)


def clear_slice(top: Path) -> None:
    """Kill what is left in the test's slice (thawed first), then remove its cgroups."""
    if not top.exists():
        return
    for d, _dirs, _files in os.walk(top):
        freeze = Path(d, "cgroup.freeze")
        if freeze.exists():
            try:
                freeze.write_text("0\n")
            except OSError:
                pass
    cgroups.kill_all(top)
    cgroups.wait_empty(top, timeout=5)
    cgroups.remove(top)
