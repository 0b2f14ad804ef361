"""Containment, proven on real tools in the namespace sandbox (issue 5).

`agentwatch run --contain` puts the agent in its own cgroup with the RL-sandbox egress policy
(policies/rl-sandbox.yaml): ssh -R to the "internet" sshd fails in the kernel and sshd never sees
a connection; metadata addresses are refused over TCP and UDP, IPv4 and IPv6; allowlisted traffic
passes. Rule actions kill a stratum client the moment it logs in and a double-forked setsid
daemon with the rest of its agent; --kill-on-exit leaves nothing behind; the cgroup is gone
afterwards. Each run loads the BPF programs (seconds), so related checks share a run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox import DEMO, LOCAL_SERVICE_PORT, NET_IP, PY

pytestmark = pytest.mark.scenario

CONTAIN = ["--contain"]


def released(run) -> dict:
    [rec] = [r for r in run.records if r.get("status") == "containment_released"]
    return rec


def contained(run) -> dict:
    [rec] = [r for r in run.records if r.get("status") == "contained"]
    return rec


def blocked(run, rule: str | None = None) -> list[dict]:
    return [a for a in run.alerts_of("egress-policy") if rule is None or a["policy"]["rule"] == rule]


def assert_cgroup_gone(run) -> None:
    rel = released(run)
    assert rel["cgroup"]["removed"] and rel["remaining"] == [], rel
    assert not Path(rel["cgroup"]["path"]).exists()
    assert Path(contained(run)["cgroup"]["path"]) == Path(rel["cgroup"]["path"])


def _gone_or_zombie(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie its new parent (init here) has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def exit_of(run, pid: int) -> dict:
    [rec] = [r for r in run.events if r["type"] == "exit" and r["process"]["pid"] == pid]
    return rec


# --- the RL-sandbox policy -----------------------------------------------------------------------

METADATA = textwrap.dedent("""\
    import socket
    for family, kind, addr, port in [
            (socket.AF_INET, socket.SOCK_STREAM, "169.254.169.254", 80),
            (socket.AF_INET, socket.SOCK_DGRAM, "169.254.169.254", 53),
            (socket.AF_INET6, socket.SOCK_STREAM, "fd00:ec2::254", 80),
            (socket.AF_INET6, socket.SOCK_DGRAM, "::ffff:169.254.169.254", 53)]:
        s = socket.socket(family, kind)
        s.settimeout(2)
        try:
            if kind == socket.SOCK_DGRAM:
                s.sendto(b"metadata?", (addr, port))
            else:
                s.connect((addr, port))
            print("REACHED", addr, port)
        except OSError as exc:
            print(f"REFUSED {addr} {port} errno={exc.errno}.")
""")
WEB = textwrap.dedent("""\
    import urllib.request
    print("WEB", urllib.request.urlopen("http://198.18.0.1/", timeout=5).read().decode().strip())
""")


def _sshd_connections(sshd_log: Path, since: int) -> list[str]:
    with open(sshd_log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if "Connection from" in line]


@pytest.fixture(scope="module")
def sandbox_run(agentwatch, sshd, local_service, web, pool, net):
    """ssh -R to the real sshd on :22, the metadata addresses over TCP and UDP, a web fetch that must
    pass, and a stratum client that must die: one contained run with the default policy."""
    log = net.tmp / "sshd.log"
    before = log.stat().st_size
    tunnel = " ".join(sshd.ssh("-N", "-R", f"2301:127.0.0.1:{local_service}", f"root@{NET_IP}"))
    miner = f"{PY} {DEMO / 'fake_miner.py'} {pool} 3333 --stay 10"
    script = "; ".join([
        f"{tunnel}; echo ssh-exit=$?",
        f"{PY} -c '{METADATA}'",
        f"{PY} -c '{WEB}'",
        f"{miner}; echo miner-exit=$?",
    ])
    run = agentwatch(["sh", "-c", script], options=CONTAIN, labels={"scenario": "contain"})
    run.sshd_seen = _sshd_connections(log, before)
    return run


def test_ssh_reverse_tunnel_is_refused_in_the_kernel(sandbox_run):
    run = sandbox_run
    [ssh] = run.pids_that_exec(lambda p: p["comm"] == "ssh" and "-R" in p["argv"])
    connects = [r for r in run.events if r["type"] == "connect" and r["process"]["pid"] == ssh
                and r["network"]["dport"] == 22]
    assert connects and all(r["network"]["result"] == "EPERM" for r in connects)
    [alert, *_] = [a for a in blocked(run, "outbound-ssh") if a["process"]["pid"] == ssh]
    assert alert["action"] == "blocked" and alert["action_result"] == "denied"
    assert alert["network"]["daddr"] == NET_IP and alert["network"]["dport"] == 22
    assert alert["network"]["protocol"] == "tcp"
    assert alert["policy"] == {"name": "rl-sandbox", "rule": "outbound-ssh", "hook": "connect", "action": "deny"}
    assert alert["agent"]["id"] == run.agent_id and alert["agent"]["labels"] == {"scenario": "contain"}
    assert alert["process"]["ancestry"][0]["pid"] == alert["agent"]["root_pid"]
    assert "ssh-exit=255" in run.output


def test_sshd_sees_no_connection_at_all(sandbox_run):
    assert sandbox_run.sshd_seen == []


def test_the_tunnel_never_carries_anything(sandbox_run):
    """No connection records for :22: not even a SYN left the agent's namespace."""
    assert not [r for r in sandbox_run.events if r["type"] == "connection" and r["network"]["dport"] == 22]
    assert not sandbox_run.alerts_of("reverse-tunnel-behaviour")


@pytest.mark.parametrize("daddr, dport, protocol, hook", [
    ("169.254.169.254", 80, "tcp", "connect"),
    ("169.254.169.254", 53, "udp", "sendmsg"),   # a denied UDP sendto
    ("fd00:ec2::254", 80, "tcp", "connect"),
])
def test_metadata_is_blocked(sandbox_run, daddr, dport, protocol, hook):
    run = sandbox_run
    hits = [a for a in blocked(run, "cloud-metadata") if a["network"]["daddr"] == daddr
            and a["network"]["dport"] == dport and a["network"]["protocol"] == protocol]
    assert hits and all(a["policy"]["hook"] == hook for a in hits)
    assert hits[0]["network"]["scope"] == "metadata"
    assert f"REFUSED {daddr} {dport} errno=1." in run.output
    assert "REACHED" not in run.output


def test_v4_mapped_metadata_is_judged_as_ipv4(sandbox_run):
    mapped = [a for a in blocked(sandbox_run, "cloud-metadata") if a["network"]["v4_mapped"]]
    assert mapped and mapped[0]["network"]["family"] == "ipv6"
    assert "REFUSED ::ffff:169.254.169.254 53 errno=1." in sandbox_run.output


def test_allowed_traffic_passes(sandbox_run):
    assert "WEB hello from the internet" in sandbox_run.output
    assert not [a for a in blocked(sandbox_run) if a["network"]["dport"] == 80 and a["network"]["daddr"] == NET_IP]


def test_stratum_client_is_killed_by_rule_action(sandbox_run):
    run = sandbox_run
    [miner] = run.pids_that_exec(lambda p: p["comm"].startswith("python") and "fake_miner.py" in " ".join(p["argv"]))
    [alert] = [a for a in run.alerts_of("stratum-protocol") if a["process"]["pid"] == miner]
    assert alert["action"] == "kill_process" and alert["action_result"] == "killed"
    assert alert["action_targets"] == [miner]
    first_bytes = alert["evidence"][-1]
    assert first_bytes["type"] == "send" and '"method":"login"' in first_bytes["payload"]["text"]
    # The delay from its first bytes to the kill, as the alert records it.
    assert 0 < alert["action_latency_s"] < 1.0
    death = exit_of(run, miner)
    assert death["signal"] == 9
    assert "miner-exit=137" in run.output  # it was to stay 10 s


def test_contained_run_removes_its_cgroup(sandbox_run):
    rec = contained(sandbox_run)
    assert rec["cgroup"]["owned"] and "/agentwatch.slice/agent-" in rec["cgroup"]["path"]
    assert rec["policy"]["name"] == "rl-sandbox"
    assert_cgroup_gone(sandbox_run)
    rel = released(sandbox_run)
    assert rel["policy_state"] == "detached"
    assert rel["denied"]["outbound-ssh"] >= 1 and rel["denied"]["cloud-metadata"] >= 4


# --- a default-deny policy with an allowlist ---------------------------------------------------

ALLOWLIST = """\
name: allowlist-only
default: deny
rules:
  - name: loopback
    action: allow
    to: [127.0.0.0/8]
  - name: allowlist
    action: allow
    to: [198.18.0.1/32]
    ports: [80]
    protocol: tcp
"""
PROBES = textwrap.dedent("""\
    import socket, urllib.request
    print("WEB", urllib.request.urlopen("http://198.18.0.1/", timeout=5).read().decode().strip())
    for kind, port in ((socket.SOCK_STREAM, 443), (socket.SOCK_DGRAM, 53)):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.sendto(b"q", ("198.18.0.1", port)) if kind == socket.SOCK_DGRAM else s.connect(("198.18.0.1", port))
            print("REACHED", port)
        except OSError as exc:
            print(f"REFUSED {port} errno={exc.errno}.")
""")


@pytest.fixture(scope="module")
def allowlist_run(agentwatch, web, pool, net):
    policy = net.tmp / "allowlist.yaml"
    policy.write_text(ALLOWLIST)
    return agentwatch([PY, "-c", PROBES], options=[*CONTAIN, "--policy", str(policy)],
                      labels={"scenario": "allowlist"})


def test_allowlisted_destination_passes_and_the_rest_is_denied(allowlist_run):
    run = allowlist_run
    assert "WEB hello from the internet" in run.output
    assert "REFUSED 443 errno=1." in run.output and "REFUSED 53 errno=1." in run.output
    by_port = {a["network"]["dport"]: a for a in blocked(run)}
    assert set(by_port) == {443, 53}
    assert by_port[443]["policy"]["rule"] == "default" and by_port[443]["policy"]["hook"] == "connect"
    assert by_port[53]["policy"]["hook"] == "sendmsg" and by_port[53]["network"]["protocol"] == "udp"
    assert_cgroup_gone(run)


# --- kill_agent reaches a double-forked setsid daemon ------------------------------------------

KILL_AGENT_RULE = """\
- rule: test-kill-agent
  title: The test's trigger for kill_agent
  description: A marker command; its agent is ended whole.
  severity: critical
  tags: [T1496]
  events: [exec]
  condition: proc.cmdline = "/bin/true kill-this-agent"
  output: "kill the agent of %proc.pid"
  action: kill_agent
"""


@pytest.fixture(scope="module")
def kill_agent_run(agentwatch, net):
    rules = net.tmp / "kill-agent.yaml"
    rules.write_text(KILL_AGENT_RULE)
    # The daemon: a double fork (the subshell exits), setsid, and a new session; it would sleep
    # 60 s. Then the trigger; the root would wait 30 s more.
    script = ("(setsid sh -c 'exec sleep 60' & ); sleep 0.5; "
              "/bin/true kill-this-agent; sleep 30; echo root-survived")
    return agentwatch(["sh", "-c", script], options=CONTAIN, rules=[rules], linger=5, timeout=60,
                      labels={"scenario": "kill-agent"})


def test_kill_agent_kills_the_setsid_daemon_and_the_root(kill_agent_run):
    run = kill_agent_run
    [daemon] = run.pids_that_exec(lambda p: p["argv"] == ["sleep", "60"])
    [alert] = run.alerts_of("test-kill-agent")
    assert alert["action"] == "kill_agent" and alert["action_result"] == "killed"
    root = run.records[0]["agent"]["root_pid"]
    assert daemon in alert["action_targets"] and root in alert["action_targets"]
    assert exit_of(run, daemon)["signal"] == 9 and exit_of(run, root)["signal"] == 9
    detached = [r for r in run.execs() if r["process"]["pid"] == daemon][0]["process"]
    assert detached["ppid"] != detached["ancestry"][0]["pid"]  # it had left the agent's tree
    assert "root-survived" not in run.output and run.returncode == 128 + 9
    assert not [r for r in run.records if r.get("status") == "linger_expired"]
    assert_cgroup_gone(run)


# --- --kill-on-exit -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kill_on_exit_run(agentwatch, net):
    script = "(setsid sh -c 'exec sleep 60' & ); nohup sleep 61 >/dev/null 2>&1 & sleep 0.3; echo root-done"
    return agentwatch(["sh", "-c", script], options=[*CONTAIN, "--kill-on-exit"], linger=30, timeout=60,
                      labels={"scenario": "kill-on-exit"})


def test_kill_on_exit_leaves_no_descendant(kill_on_exit_run):
    run = kill_on_exit_run
    sleepers = run.pids_that_exec(lambda p: p["comm"] == "sleep" and p["argv"][1:] in (["60"], ["61"]))
    assert len(sleepers) == 2
    [killed] = [r for r in run.records if r.get("status") == "survivors_killed"]
    assert killed["result"] == "killed" and sleepers <= set(killed["pids"])
    for pid in sleepers:
        assert exit_of(run, pid)["signal"] == 9
        assert _gone_or_zombie(pid)
    assert not [r for r in run.records if r.get("status") == "linger_expired"]
    assert run.returncode == 0 and "root-done" in run.output
    assert_cgroup_gone(run)


# --- --dry-run reports and does nothing -----------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(agentwatch, pool):
    code = ("import socket\ns = socket.socket(); s.settimeout(1)\n"
            "try:\n    s.connect((\"169.254.169.254\", 80))\nexcept OSError as exc:\n    print(f\"ERRNO={exc.errno}.\")\n")
    miner = f"{PY} {DEMO / 'fake_miner.py'} {pool} 3333 --stay 1"
    return agentwatch(["sh", "-c", f"{PY} -c '{code}'; {miner}; echo miner-exit=$?"],
                      options=[*CONTAIN, "--dry-run"], labels={"scenario": "dry-run"})


def test_dry_run_neither_denies_nor_kills(dry_run):
    run = dry_run
    [alert] = blocked(run, "cloud-metadata")
    assert alert["action_result"] == "dry_run" and "would be denied" in alert["message"]
    assert "ERRNO=1." not in run.output  # the connect went on (and timed out or was unreachable)
    [stratum] = run.alerts_of("stratum-protocol")
    assert stratum["action_result"] == "dry_run" and stratum["action_targets"] == [stratum["process"]["pid"]]
    assert "miner-exit=0" in run.output
    assert_cgroup_gone(run)


# --- self-protection ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tamper_run(agentwatch, net):
    """The agent signals agentwatch (its parent), ptraces it, calls bpf() and leaves its cgroup."""
    # $PPID, expanded by the root sh, is agentwatch: `ip netns exec` execs sh in agentwatch's child.
    ptrace = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); libc.ptrace(0x4206, $PPID, 0, 0)"
    bpf = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); libc.syscall(321, 11, 0, 0)"
    # `ip netns exec` gives the agent a fresh /sys without cgroupfs: it mounts the v2 hierarchy
    # itself (in its own mount namespace), as an agent with root could.
    script = "; ".join([
        "kill -TERM $PPID", "sleep 0.5",
        f"{PY} -c '{bpf}'",
        "d=$(mktemp -d)", "mount -t cgroup2 none $d",
        f"sh -c \"echo \\$\\$ > $d/cgroup.procs; exec {PY} -c '{ptrace}'\"",
        "umount $d", "echo root-finished",
    ])
    return agentwatch(["sh", "-c", script], options=CONTAIN, labels={"scenario": "tamper"})


def test_a_signal_to_agentwatch_is_reported_and_ignored(tamper_run):
    run = tamper_run
    [alert] = run.alerts_of("agentwatch-signalled")
    assert alert["evidence"][-1]["tamper"]["signal"] == "SIGTERM"
    assert alert["evidence"][-1]["tamper"]["target"] == "agentwatch"
    assert [r for r in run.records if r.get("status") == "stop_ignored"]
    assert "root-finished" in run.output and run.returncode == 0  # agentwatch watched on to the end


def test_bpf_call_is_reported(tamper_run):
    [alert] = tamper_run.alerts_of("agent-calls-bpf")
    assert alert["evidence"][-1]["tamper"]["bpf_cmd"] == "BPF_PROG_GET_NEXT_ID"


def test_leaving_the_cgroup_is_reported_and_the_process_stays_attributed(tamper_run):
    run = tamper_run
    [alert] = run.alerts_of("agent-leaves-cgroup")
    moved = alert["evidence"][-1]["tamper"]
    assert moved["cgroup"]["path"] == "/" and moved["cgroup"]["leaves_agent"] is True
    assert alert["agent"]["id"] == run.agent_id
    # After the move it is still the agent's: its ptrace is reported and attributed.
    [traced] = run.alerts_of("agentwatch-ptraced")
    assert traced["process"]["pid"] == moved["target_pid"] and traced["agent"]["id"] == run.agent_id


# --- watch --cgroup: an existing cgroup is the agent --------------------------------------------


@pytest.fixture(scope="module")
def watched_cgroup(net):
    """A cgroup made here (as a container runtime would), holding a process that waits for a go file."""
    import subprocess
    import uuid

    from tracer.cgroups import remove, require_mount

    cg = require_mount() / f"aw-test-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    go = net.tmp / f"go-{cg.name}"
    code = ("import socket\ns = socket.socket()\ntry:\n    s.connect((\"169.254.169.254\", 80))\n"
            "except OSError as exc:\n    print(f\"errno={exc.errno}.\", flush=True)\n")
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; {PY} -c '{code}'; /bin/true cgroup-marker"
    proc = subprocess.Popen(net.in_agent("sh", "-c", script), stdout=subprocess.PIPE, text=True)
    try:
        (cg / "cgroup.procs").write_text(f"{proc.pid}\n")
        yield cg, proc, go
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        remove(cg)


def test_watch_cgroup_adopts_a_cgroup_and_enforces_a_policy(watched_cgroup, net):
    import json
    import signal
    import subprocess
    import time

    from sandbox import AGENTWATCH

    cg, target, go = watched_cgroup
    out = net.tmp / f"watch-{cg.name}.jsonl"
    watcher = subprocess.Popen([AGENTWATCH, "watch", "--cgroup", str(cg), "--policy",
                                str(Path(__file__).resolve().parents[2] / "policies" / "rl-sandbox.yaml"),
                                "--label", "pod=p1", "--format", "json", "--events", "--output", str(out),
                                "--duration", "60"])
    try:
        deadline = time.monotonic() + 40
        while not (out.exists() and '"status":"watching"' in out.read_text()):
            assert time.monotonic() < deadline and watcher.poll() is None, "watch did not start"
            time.sleep(0.1)
        go.touch()
        assert target.wait(20) == 0
        time.sleep(0.5)
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    [watching] = [r for r in records if r.get("status") == "watching"]
    assert target.pid in watching["pids"] and watching["cgroup"]["owned"] is False  # (and its sleep)
    agent = watching["agent"]
    assert agent["labels"] == {"pod": "p1"}
    [alert] = [r for r in records if r.get("kind") == "alert" and r["rule"] == "egress-policy"]
    assert alert["policy"]["rule"] == "cloud-metadata" and alert["agent"]["id"] == agent["id"]
    assert target.pid in [a["pid"] for a in alert["process"]["ancestry"]]
    assert "errno=1." in target.stdout.read()
    marker = [r for r in records if r.get("type") == "exec" and r["process"]["argv"] == ["/bin/true", "cgroup-marker"]]
    assert marker and marker[0]["agent"]["id"] == agent["id"]
    [rel] = [r for r in records if r.get("status") == "containment_released"]
    assert rel["policy_state"] == "detached" and rel["cgroup"]["removed"] is False
    assert cg.exists()  # an adopted cgroup is never removed


def test_an_agent_that_sigkills_agentwatch_dies_first(agentwatch):
    """SIGKILL cannot be resisted: agentwatch dies. Under --contain the sender is killed in the
    kernel (bpf_send_signal) before its kill() returns, so it never runs on unwatched."""
    from tracer.cgroups import remove

    run = agentwatch(["sh", "-c", "kill -KILL $PPID; echo agent-survived"], options=CONTAIN,
                     labels={"scenario": "sigkill"})
    try:
        assert run.returncode == -9
        assert "agent-survived" not in run.output
    finally:
        remove(contained(run)["cgroup"]["path"])  # agentwatch could not: it was dead
