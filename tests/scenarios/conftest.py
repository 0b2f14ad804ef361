"""Fixtures for scenarios with real tools: a two-namespace network, a real sshd, pools, listeners.

The topology is built entirely inside network namespaces created here (see sandbox.py): nothing
is added to the root namespace, and every namespace, process and file made here is removed at
the end of the session, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from sandbox import (
    AGENT_IP, AGENT_IP6, AGENTWATCH, DEMO, LOCAL_SERVICE_PORT, NET_IP, NET_IP6, PY, RULES, Net, Poker, Run, Sshd,
    _run, listener,
)


@pytest.fixture(scope="session")
def net(tmp_path_factory):
    """Two namespaces joined by a veth pair; torn down (with whatever runs inside) always."""
    tag = uuid.uuid4().hex[:6]
    n = Net(agent=f"aw-sc-agent-{tag}", internet=f"aw-sc-inet-{tag}", tmp=tmp_path_factory.mktemp("net"))
    created = []
    try:
        for ns in (n.agent, n.internet):
            _run("ip", "netns", "add", ns)
            created.append(ns)
        # The veth pair is created inside the agent namespace with its peer moved at once.
        _run("ip", "-n", n.agent, "link", "add", "veth-agent", "type", "veth", "peer", "name", "veth-net",
             "netns", n.internet)
        _run("ip", "-n", n.agent, "addr", "add", f"{AGENT_IP}/24", "dev", "veth-agent")
        _run("ip", "-n", n.agent, "addr", "add", f"{AGENT_IP6}/64", "dev", "veth-agent", "nodad")
        _run("ip", "-n", n.internet, "addr", "add", f"{NET_IP}/24", "dev", "veth-net")
        _run("ip", "-n", n.internet, "addr", "add", f"{NET_IP6}/64", "dev", "veth-net", "nodad")
        for ns, dev in ((n.agent, "veth-agent"), (n.internet, "veth-net")):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", n.agent, "route", "add", "default", "via", NET_IP)
        _run("ip", "-n", n.agent, "-6", "route", "add", "default", "via", NET_IP6)
        yield n
    finally:
        for proc in n.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in n.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        n.kill_everything_inside()
        for ns in created:
            _run("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="session")
def sshd(net):
    d = net.tmp / "ssh"
    d.mkdir()
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id_ed25519"))
    shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"{NET_IP} {host_pub[0]} {host_pub[1]}\n")
    (d / "sshd_config").write_text(
        f"ListenAddress {NET_IP}:22\n"
        f"ListenAddress {NET_IP}:8443\n"  # SSH on a web port, as tunnel services run it
        f"ListenAddress {NET_IP}:2222\n"  # and on an unusual one
        f"HostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PidFile none\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "AllowTcpForwarding yes\n"
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )
    (d / "ssh_config").write_text(
        "Host *\n"
        f"  IdentityFile {d / 'id_ed25519'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  LogLevel ERROR\n"
    )
    # sshd insists on its privilege separation directory (the openssh-server package's
    # service creates the same one at start).
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    net.spawn(net.internet, ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], "sshd",
              ready=f"{NET_IP}:22")
    return Sshd(config=d / "ssh_config", key=d / "id_ed25519")


@pytest.fixture(scope="session")
def local_service(net):
    """The agent's own web server on its loopback (what a reverse tunnel exposes)."""
    www = net.tmp / "agent-www"
    www.mkdir()
    (www / "index.html").write_text("the agent's dev server\n")
    net.spawn(net.agent, [PY, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www),
                          str(LOCAL_SERVICE_PORT)], "local-service", ready=f"127.0.0.1:{LOCAL_SERVICE_PORT}")
    return LOCAL_SERVICE_PORT


@pytest.fixture(scope="session")
def pool(net):
    """A stratum pool in the internet namespace on 3333 (the classic port) and 443 (evasion)."""
    net.spawn(net.internet, [PY, str(DEMO / "stratum_server.py"), "--bind", NET_IP, "--port", "3333",
                             "--port", "443"], "pool", ready=f"{NET_IP}:443")
    return NET_IP


@pytest.fixture(scope="session")
def web(net):
    """A plain web server in the internet namespace on port 80."""
    www = net.tmp / "internet-www"
    www.mkdir()
    (www / "index.html").write_text("hello from the internet\n")
    net.spawn(net.internet, [PY, "-m", "http.server", "--bind", NET_IP, "--directory", str(www), "80"], "web",
              ready=f"{NET_IP}:80")
    return f"http://{NET_IP}/"


@pytest.fixture(scope="session")
def attacker(net):
    """An attacker's listener on 198.18.0.1:4444: sends commands to whatever shell connects."""
    return listener(net, 4444, "echo pwned\\nexit\\n", 3, "attacker")


@pytest.fixture(scope="session")
def relay_server(net):
    """The far end of a socat relay on 198.18.0.1:7001: sends an HTTP request down the relay."""
    return listener(net, 7001, "GET / HTTP/1.0\\r\\n\\r\\n", 3, "relay-server")


@pytest.fixture(scope="session")
def poker(net):
    return Poker(net)


@pytest.fixture(scope="session")
def agentwatch(net):
    """agentwatch(argv, linger=2, labels=...) -> Run: the agent runs in the agent namespace.

    Rules come from the repository's rules/; --events keeps the raw records, so a test can
    check that an alert names the process that really did it.
    """

    def run(argv: list[str], linger: float = 1.0, labels: dict | None = None, timeout: float = 60,
            events: bool = True, options: list[str] | tuple = (), rules: list[str] | tuple = ()) -> Run:
        """options: more `agentwatch run` options (--contain, --policy F, ...); rules: more rules files."""
        out = net.tmp / f"run-{uuid.uuid4().hex[:8]}.jsonl"
        # Records go to a file: the agent inherits stdout and prints there.
        cmd = [AGENTWATCH, "run", "--format", "json", "--output", str(out), "--rules", RULES,
               "--linger", str(linger), *options]
        for extra in rules:
            cmd += ["--rules", str(extra)]
        if events:
            cmd.append("--events")
        for k, v in (labels or {"scenario": "test"}).items():
            cmd += ["--label", f"{k}={v}"]
        cmd += ["--", *net.in_agent(*argv)]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=net.tmp, env=net.env)
        text = out.read_text() if out.exists() else ""
        out.unlink(missing_ok=True)
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        result = Run(proc.returncode, records, proc.stderr.decode(errors="replace"),
                     proc.stdout.decode(errors="replace"))
        # Whatever the agent left behind (a detached tunnel) goes now, not at the session's end.
        for pid in result.survivors():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return result

    return run


