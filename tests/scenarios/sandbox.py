"""The sandbox the scenarios run in: two network namespaces, processes inside them, and
what one `agentwatch run` printed. The fixtures that build it are in conftest.py.

Everything lives in network namespaces created by the fixtures: "agent" (198.18.0.2, fd99::2)
and "internet" (198.18.0.1, fd99::1), joined by a veth pair that is created inside them and
never exists in the host's namespace. 198.18.0.0/15 is external to agentwatch, so the
"internet" namespace stands for the outside world. Nothing is added to the root namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENTWATCH = str(Path(sys.executable).parent / "agentwatch")
RULES = str(REPO / "rules")
DEMO = REPO / "demo"
PY = "/usr/bin/python3"  # the agent's python: the distro's, as a user's agent would run it

AGENT_IP, NET_IP = "198.18.0.2", "198.18.0.1"
AGENT_IP6, NET_IP6 = "fd99::2", "fd99::1"
LOCAL_SERVICE_PORT = 8000  # a service on the agent's own loopback that tunnels lead back to
SEVERITIES = ["info", "low", "medium", "high", "critical"]


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def _listening(ns: str, needle: str) -> bool:
    out = _run("ip", "netns", "exec", ns, "ss", "-Htln", check=False).stdout
    return needle in out


@dataclass
class Net:
    """The agent and internet namespaces, and the background processes started in them."""

    agent: str
    internet: str
    tmp: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The agent's environment: a home of its own (root's dotfiles would add noise), no pyenv shims."""
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
                "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}

    def in_agent(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.agent, *argv]

    def in_internet(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.internet, *argv]

    def spawn(self, ns: str, argv: list[str], name: str, ready: str | None = None,
              timeout: float = 10) -> subprocess.Popen:
        """Start a background process in ns; with ready, wait until `ss -tln` shows it.

        `ip netns exec` execs the command itself, so the Popen pid is the service's pid.
        """
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=self.tmp)
        log.close()
        self.procs.append(proc)
        if ready is not None:
            deadline = time.monotonic() + timeout
            while not _listening(ns, ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (self.tmp / f"{name}.log").read_text(errors="replace")
                    raise RuntimeError(f"{name} did not listen on {ready} in {ns}: {text}")
                time.sleep(0.05)
        return proc

    def kill_everything_inside(self) -> None:
        for ns in (self.agent, self.internet):
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


@dataclass
class Sshd:
    """A real OpenSSH server in the internet namespace and a client configuration for root."""

    config: Path  # ssh_config for the client: key, known_hosts, batch mode
    key: Path
    host: str = NET_IP

    def ssh(self, *args: str) -> list[str]:
        return ["ssh", "-F", str(self.config), *args]


LISTENER = (
    "import socket, sys, threading, time\n"
    "host, port, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[4])\n"
    "greeting = sys.argv[3].encode().decode('unicode_escape')\n"
    "def serve(c):\n"
    "    with c:\n"
    "        c.sendall(greeting.encode('latin-1')); c.settimeout(hold)\n"
    "        end = time.monotonic() + hold\n"
    "        try:\n"
    "            while time.monotonic() < end and c.recv(4096): pass\n"
    "        except OSError: pass\n"
    "s = socket.create_server((host, port), reuse_port=False)\n"
    "while True:\n"
    "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
)


def listener(net: Net, port: int, greeting: str, hold: float, name: str) -> tuple[str, int]:
    """A TCP listener in the internet namespace: sends greeting to each client, then reads for hold s."""
    net.spawn(net.internet, [PY, "-c", LISTENER, NET_IP, str(port), greeting, str(hold)], name,
              ready=f"{NET_IP}:{port}")
    return (NET_IP, port)


class Poker:
    """A remote user in the internet namespace who keeps connecting to a forwarded port.

    The connections travel down the reverse tunnel and make the agent's tunnel process
    connect to its own loopback: the behavioural signal of a reverse tunnel.
    """

    SCRIPT = (
        "import socket, sys, time\n"
        "port = int(sys.argv[1])\n"
        "while True:\n"
        "    try:\n"
        "        with socket.create_connection(('127.0.0.1', port), timeout=1) as s:\n"
        "            s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); s.recv(256)\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.1)\n"
    )

    def __init__(self, net: Net) -> None:
        self.net = net

    def __call__(self, port: int) -> subprocess.Popen:
        return self.net.spawn(self.net.internet, [PY, "-c", self.SCRIPT, str(port)], f"poker-{port}")


@dataclass
class Run:
    """One `agentwatch run` and what it printed."""

    returncode: int
    records: list[dict]
    stderr: str
    output: str  # what the agent itself printed

    @property
    def agent_id(self) -> str:
        return next(r for r in self.records if r.get("status") == "agent_started")["agent"]["id"]

    @property
    def alerts(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "alert"]

    @property
    def events(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "event"]

    def alerts_of(self, rule: str) -> list[dict]:
        return [a for a in self.alerts if a["rule"] == rule]

    def execs(self, predicate=lambda p: True) -> list[dict]:
        return [r for r in self.events
                if r["type"] == "exec" and r["exec"]["result"] == "ok" and predicate(r["process"])]

    def pids_that_exec(self, predicate) -> set[int]:
        return {r["process"]["pid"] for r in self.execs(predicate)}

    def survivors(self) -> list[int]:
        pids = set()
        for r in self.records:
            for s in r.get("survivors") or []:
                pids.add(s["pid"])
        return sorted(pids)

    def at_least(self, severity: str) -> list[dict]:
        floor = SEVERITIES.index(severity)
        return [a for a in self.alerts if SEVERITIES.index(a["severity"]) >= floor]

    def describe(self) -> str:
        return "\n".join(
            f"  {a['severity']:8} {a['rule']:32} pid {a['process']['pid']} {' '.join(a['process']['argv'])[:120]}"
            for a in self.alerts
        ) or "  (no alerts)"


def build_wheel(dest: Path, name: str = "awdemo", version: str = "0.1") -> Path:
    """A tiny pure-Python wheel, written by hand (no build backend, no network)."""
    tag = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": "def hello():\n    return 'hello'\n",
        f"{tag}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{tag}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{tag}.dist-info/RECORD,,\n"
    files[f"{tag}.dist-info/RECORD"] = record
    wheel = dest / f"{tag}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel
