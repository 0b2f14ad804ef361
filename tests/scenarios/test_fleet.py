"""Fleet mode: `agentwatch daemon` watching many sandboxes (cgroups) through many episodes.

Real cgroups under a slice of the test's own, real tools in the scenario's network namespaces
(a web server, a stratum pool and an sshd in "internet"), the daemon started as an operator
starts it, episodes marked over its control socket with the harness API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import orjson
import pytest

from fleet import DaemonRun, clear_slice, in_sandbox, run_in_sandbox
from sandbox import AGENTWATCH, DEMO, NET_IP, PY, REPO, RULES

from tracer import cgroups

POLICY = REPO / "policies" / "rl-sandbox.yaml"
SEVERITIES = ["info", "low", "medium", "high", "critical"]
BENIGN = [PY, "-c", f"import urllib.request; urllib.request.urlopen('http://{NET_IP}/', timeout=5).read()"]


@pytest.fixture
def fleet_slice():
    mount = cgroups.require_mount()
    top = mount / f"aw-fleet-{uuid.uuid4().hex[:6]}.slice"
    top.mkdir()
    yield top
    clear_slice(top)


@pytest.fixture
def daemons(net):
    # Control sockets in a directory any uid may traverse (pytest's tmp dirs are 0700), so that
    # the refusal of a peer is the daemon's peer-credential check, not the file system's.
    sockets = Path(f"/run/aw-fleet-test-{uuid.uuid4().hex[:6]}")
    sockets.mkdir(mode=0o755)
    started: list[DaemonRun] = []

    def make(config_text: str, name: str = "daemon") -> DaemonRun:
        d = DaemonRun(net.tmp, config_text, f"{name}-{uuid.uuid4().hex[:6]}", sockets)
        started.append(d)
        return d

    yield make
    for d in started:
        try:
            d.stop()
        except Exception:  # noqa: BLE001  (cleanup goes on for the others)
            pass
    shutil.rmtree(sockets, ignore_errors=True)


def config(d: DaemonRun, rel_slice: str, extra_sandboxes: str = "") -> str:
    """A daemon config for sandboxes under rel_slice; records to a file, the control socket open to all
    (the peer-credential check is what the tests exercise), no Docker. extra_sandboxes: YAML list
    items that come before the catch-all one (the first match wins)."""
    head = textwrap.dedent(f"""\
        control:
          socket: {d.socket}
          mode: "0666"
        output: {d.output}
        state: {d.tmp}/{d.name}.state
        events: true
        docker_socket: /nonexistent/docker.sock
        rules: [{RULES}]
        alert_rate: "off"   # the tests compare every alert of an episode with the output
        sandboxes:
        """)
    tail = textwrap.dedent(f"""\
        - match: {rel_slice}/*
          on_alert: report
          labels: {{fleet: test}}
        """)
    return head + textwrap.indent(extra_sandboxes + tail, "  ")


def start_daemon(daemons, net, fleet_slice, extra: str = "") -> DaemonRun:
    d = daemons("")
    d.config_text = config(d, str(fleet_slice.relative_to(cgroups.require_mount())), extra)
    return d.start()


def wait_sandboxes(d: DaemonRun, names: set[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    with d.client() as c:
        while True:
            st = c.status()
            have = {s["name"] for s in st["sandboxes"]}
            if names <= have:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"sandboxes {sorted(names - have)} not picked up; have {sorted(have)}")
            time.sleep(0.05)


def episode_of(rec: dict) -> str | None:
    return ((rec.get("agent") or {}).get("episode") or {}).get("id")


def sandbox_of(rec: dict) -> str | None:
    return ((rec.get("agent") or {}).get("sandbox") or {}).get("name")


def test_twenty_sandboxes_alerts_land_in_their_sandbox_and_episode(net, web, pool, sshd, local_service,
                                                                   daemons, fleet_slice):
    names = [f"sb-{i:02d}" for i in range(20)]
    for n in names[:10]:
        (fleet_slice / n).mkdir()  # these exist at start: adopted
    d = start_daemon(daemons, net, fleet_slice)
    t0 = time.monotonic()
    for n in names[10:]:
        (fleet_slice / n).mkdir()  # these appear later: picked up as they come
    wait_sandboxes(d, set(names))
    pickup = time.monotonic() - t0
    assert pickup < 5, pickup
    miner = [PY, str(DEMO / "fake_miner.py"), NET_IP, "3333", "--stay", "1"]
    bad = {("sb-03", 2): ("miner", miner), ("sb-17", 1): ("miner", miner),
           ("sb-11", 3): ("tunnel", ["timeout", "3", *sshd.ssh("-N", "-R", f"2311:127.0.0.1:{local_service}",
                                                               f"root@{NET_IP}")])}
    replies: dict[tuple[str, str], list[dict]] = {}

    def rollout(name: str) -> None:
        with d.client() as c:
            for ep in (1, 2, 3):
                eid = f"{name}-e{ep}"
                c.begin(name, episode=eid, task=f"task-{name}", step=str(ep))
                out = run_in_sandbox(fleet_slice / name, net, BENIGN)
                assert out.returncode == 0, out.stderr
                if (name, ep) in bad:
                    run_in_sandbox(fleet_slice / name, net, bad[name, ep][1])
                result = c.end(name)
                assert result.episode["id"] == eid
                replies[name, eid] = result.alerts

    with ThreadPoolExecutor(len(names)) as pool_:
        list(pool_.map(rollout, names))

    alerts = d.alerts()
    serious = [a for a in alerts if SEVERITIES.index(a["severity"]) >= SEVERITIES.index("medium")]
    where = {(sandbox_of(a), episode_of(a)) for a in serious}
    want = {(name, f"{name}-e{ep}") for name, ep in bad}
    assert where == want, "\n".join(f"{sandbox_of(a)} {episode_of(a)} {a['rule']}" for a in serious)
    rules_in = {k: {a["rule"] for a in serious if (sandbox_of(a), episode_of(a)) == k} for k in want}
    assert "stratum-protocol" in rules_in["sb-03", "sb-03-e2"] and "stratum-protocol" in rules_in["sb-17", "sb-17-e1"]
    assert "ssh-remote-forward" in rules_in["sb-11", "sb-11-e3"]
    for a in alerts:
        # An alert and every record that made it belong to one sandbox, with that sandbox's labels.
        assert {e["agent"]["id"] for e in a["evidence"] if e.get("agent")} == {a["agent"]["id"]}
        assert a["agent"]["labels"] == {"fleet": "test"}
        if episode_of(a):
            assert episode_of(a).startswith(sandbox_of(a) + "-e")
    # What `end` returned is what the output holds for that episode, nothing missing.
    for (name, eid), got in replies.items():
        mine = [a for a in alerts if (sandbox_of(a), episode_of(a)) == (name, eid)]
        assert sorted((a["rule"], a["time"]) for a in got) == sorted((a["rule"], a["time"]) for a in mine), eid
    # Every benign connect was attributed to its own sandbox and episode.
    connects = [r for r in d.records() if r.get("type") == "connect" and r["network"]["dport"] == 80]
    assert {(sandbox_of(r), episode_of(r)) for r in connects} == {(n, f"{n}-e{ep}") for n in names for ep in (1, 2, 3)}
    with d.client() as c:
        st = c.status()
    assert all(s["episodes"] == 3 and s["episode"] is None for s in st["sandboxes"] if s["name"] in names)
    assert sum(st["daemon"]["lost"].values()) == 0
    # Every record the daemon wrote keeps the contract of docs/event.schema.json.
    validator = jsonschema.Draft202012Validator(json.loads((REPO / "docs" / "event.schema.json").read_text()))
    for record in d.records():
        errors = [e.message for e in validator.iter_errors(record)]
        assert not errors, (record.get("type") or record.get("status") or record.get("rule"), errors)


BOUNDARY = textwrap.dedent(f"""\
    import socket, sys
    for step in ("first", "second"):
        sys.stdin.readline()
        socket.create_connection(("{NET_IP}", 80), timeout=5).close()
        print(step, flush=True)
    """)


def test_a_boundary_between_two_connects_of_one_process_splits_them(net, web, daemons, fleet_slice):
    (fleet_slice / "sb-split").mkdir()
    d = start_daemon(daemons, net, fleet_slice)
    wait_sandboxes(d, {"sb-split"})
    c = d.client()
    c.begin("sb-split", episode="ep-a")
    worker = subprocess.Popen(in_sandbox(fleet_slice / "sb-split", net, [PY, "-c", BOUNDARY]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=net.env)
    try:
        # The daemon is stopped while the first connect happens: its record waits unread in the
        # ring buffer, and is read only after the boundary below has been placed.
        d.signal(signal.SIGSTOP)
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "first"
        d.signal(signal.SIGCONT)
        c.begin("sb-split", episode="ep-b")
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "second"
        worker.wait(10)
        result = c.end("sb-split")
    finally:
        d.signal(signal.SIGCONT)
        worker.kill()
        c.close()
    assert result.episode["id"] == "ep-b"
    pid = worker.pid
    connects = [r for r in d.records() if r.get("type") == "connect" and r["network"]["dport"] == 80
                and r["process"]["comm"].startswith("python")]
    assert [episode_of(r) for r in connects] == ["ep-a", "ep-b"], connects
    assert len({r["process"]["pid"] for r in connects}) == 1 and pid > 0


def test_per_sandbox_actions_and_policies(net, pool, sshd, daemons, fleet_slice):
    for n in ("freeze-1", "policed-1", "plain-1"):
        (fleet_slice / n).mkdir()
    rel = str(fleet_slice.relative_to(cgroups.require_mount()))
    extra = textwrap.dedent(f"""\
        - match: {rel}/freeze-*
          on_alert: freeze_agent
          min_severity: high
        - match: {rel}/policed-*
          policy: {POLICY}
        """)
    d = start_daemon(daemons, net, fleet_slice, extra)
    wait_sandboxes(d, {"freeze-1", "policed-1", "plain-1"})
    got: list[dict] = []
    subscribed = threading.Event()

    def listen() -> None:
        with d.client() as c:
            stream = c.alerts(sandbox="freeze-1", timeout=30)
            subscribed.set()
            for alert in stream:
                got.append(alert)
                if alert["rule"] == "stratum-protocol":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(10)
    time.sleep(0.2)
    with d.client() as c:
        c.begin("freeze-1", episode="f1")
        c.begin("policed-1", episode="p1")
    miner = subprocess.Popen(in_sandbox(fleet_slice / "freeze-1", net,
                                        [PY, str(DEMO / "fake_miner.py"), NET_IP, "3333", "--stay", "30"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=net.env)
    try:
        listener.join(30)
        stratum = [a for a in got if a["rule"] == "stratum-protocol"]
        assert stratum, got
        a = stratum[0]
        assert (a["action"], a["action_result"]) == ("freeze_agent", "frozen")
        assert sandbox_of(a) == "freeze-1" and episode_of(a) == "f1"
        assert (fleet_slice / "freeze-1" / "cgroup.freeze").read_text().strip() == "1"
        deadline = time.monotonic() + 5  # freezing completes asynchronously (cgroup.events says when)
        while "frozen 1" not in (fleet_slice / "freeze-1" / "cgroup.events").read_text():
            assert time.monotonic() < deadline, "the sandbox did not reach frozen"
            time.sleep(0.02)
        assert a["process"]["pid"] in cgroups.procs_recursive(fleet_slice / "freeze-1")  # stopped, not killed
    finally:
        (fleet_slice / "freeze-1" / "cgroup.freeze").write_text("0\n")
        miner.kill()
        miner.wait(10)
    # The policy of policed-*: outbound ssh is refused in the kernel, and the denial names the sandbox.
    out = run_in_sandbox(fleet_slice / "policed-1", net, sshd.ssh(f"root@{NET_IP}", "true"))
    assert out.returncode != 0
    denied = d.wait_for(lambda r: r.get("rule") == "egress-policy", what="egress-policy alert")
    assert sandbox_of(denied[0]) == "policed-1" and episode_of(denied[0]) == "p1"
    assert denied[0]["policy"]["name"] == "rl-sandbox" and denied[0]["network"]["dport"] == 22
    # The same ssh from an unpoliced sandbox connects.
    assert run_in_sandbox(fleet_slice / "plain-1", net, sshd.ssh(f"root@{NET_IP}", "true")).returncode == 0


def test_bad_input_is_refused_and_the_daemon_keeps_watching(net, web, daemons, fleet_slice, tmp_path):
    # A malformed config at start: one line naming the file, the line and the field; exit code 2.
    bad = tmp_path / "bad.yaml"
    bad.write_text("sandboxes:\n  - match: a/*\n    on_alert: nuke\n")
    proc = subprocess.run([AGENTWATCH, "daemon", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"agentwatch: {bad}:3: sandboxes[0].on_alert: 'nuke' is not one of rule, report, kill_process, "
        "kill_agent, freeze_agent"]
    (fleet_slice / "sb-x").mkdir()
    d = start_daemon(daemons, net, fleet_slice)
    wait_sandboxes(d, {"sb-x"})
    # Malformed control messages: an error reply each, naming the field.
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socket)
    s.settimeout(10)
    s.sendall(b'{"op":"begin","sandbox":"sb-x","labels":{"k":1}}\n{"op":"nope"}\n\xff\xfe\n')
    lines = []
    while len(lines) < 3:
        lines += s.recv(65536).splitlines()
    replies = [orjson.loads(x) for x in lines]
    assert [r["ok"] for r in replies] == [False, False, False]
    assert replies[0]["error"].startswith("field 'labels.k'") and replies[1]["error"].startswith("field 'op'")
    s.close()
    # A peer that is neither root nor in the control group is refused, and the refusal is logged.
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            from tracer.harness import Client, DaemonError  # noqa: PLC0415

            try:
                Client(d.socket, timeout=5).status()
                os._exit(1)
            except DaemonError as exc:
                os._exit(0 if str(exc).startswith("permission denied") else 3)
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"refused-peer child: {exc!r}\n".encode())
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    refused = d.wait_for(lambda r: r.get("status") == "control_refused", what="control_refused record")
    assert refused[0]["peer"]["uid"] == 65534
    # A config made malformed while running, then SIGHUP: reported, nothing reloaded, still watching.
    good = d.config.read_text()
    d.config.write_text(good.replace("on_alert: report", "on_alert: [report"))
    d.signal(signal.SIGHUP)
    err = d.wait_for(lambda r: r.get("status") == "config_error", what="config_error record")
    assert err[0]["error"].startswith(f"{d.config}:") and "YAML" in err[0]["error"]
    assert run_in_sandbox(fleet_slice / "sb-x", net, BENIGN).returncode == 0
    d.wait_for(lambda r: r.get("type") == "connect" and sandbox_of(r) == "sb-x", what="connect after the bad reload")
    assert d.proc.poll() is None
    with d.client() as c:
        assert [s["name"] for s in c.status()["sandboxes"]] == ["sb-x"]


def test_a_restart_readopts_sandboxes_and_carries_the_episode_without_double_counting(net, pool, daemons,
                                                                                       fleet_slice):
    (fleet_slice / "sb-r").mkdir()
    d = start_daemon(daemons, net, fleet_slice)
    wait_sandboxes(d, {"sb-r"})
    miner = [PY, str(DEMO / "fake_miner.py"), NET_IP, "3333", "--stay", "0"]
    with d.client() as c:
        c.begin("sb-r", episode="long-ep", task="t")
    run_in_sandbox(fleet_slice / "sb-r", net, miner)
    d.wait_for(lambda r: r.get("rule") == "stratum-protocol", what="the first stratum alert")
    time.sleep(0.3)
    with d.client() as c:
        before = next(s for s in c.status()["sandboxes"] if s["name"] == "sb-r")
    assert d.stop() == 0
    d.start()  # the same config and state file
    with d.client() as c:
        after = next(s for s in c.status()["sandboxes"] if s["name"] == "sb-r")
    assert (after["agent"], after["episode"]["id"], after["alerts"], after["events"]) == (
        before["agent"], "long-ep", before["alerts"], before["events"])
    adopted = [r for r in d.statuses("sandbox_adopted") if sandbox_of(r) == "sb-r"]
    assert len(adopted) == 2 and adopted[-1]["restarted"] is True and episode_of(adopted[-1]) == "long-ep"
    run_in_sandbox(fleet_slice / "sb-r", net, miner)
    with d.client() as c:
        result = c.end("sb-r")
    stratum = [a for a in d.alerts() if a["rule"] == "stratum-protocol"]
    assert len(stratum) == 2 and {episode_of(a) for a in stratum} == {"long-ep"}
    assert result.episode["alerts"] == before["alerts"] + sum(1 for a in result.alerts)


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    """A Docker daemon: the one running, or one started here the way fleet facts say (no iptables, no
    bridge: the root namespace is left as it is) and stopped at the end."""
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is missing: `make setup` installs Debian's docker.io")
    started = None
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        with open(log, "wb") as out:
            started = subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none"],
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
            if started.poll() is not None or time.monotonic() > deadline:
                started.kill()
                pytest.skip(f"dockerd cannot run on this machine: {log.read_text(errors='replace')[-600:]}")
            time.sleep(0.2)

    def alive() -> str:
        """'' while the Docker daemon answers, else what its log says."""
        if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
            return ""
        state = f"exited {started.poll()}" if started is not None else "not ours"
        return f"dockerd ({state}) stopped answering: {log.read_text(errors='replace')[-1500:] if log.exists() else ''}"

    yield alive
    if started is not None:
        started.send_signal(signal.SIGTERM)
        try:
            started.wait(20)
        except subprocess.TimeoutExpired:
            started.kill()


@pytest.fixture(scope="module")
def busybox_image(dockerd, tmp_path_factory):
    """A local image from Debian's busybox-static (no registry is reachable): sh, echo, sleep, and
    busybox again as /bin/xmrig, a name the miner rules know."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing: `make setup` installs busybox-static")
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "echo", "sleep", "true", "xmrig"):
        (root / "bin" / applet).symlink_to("busybox")
    tag = f"agentwatch-test/busybox:{uuid.uuid4().hex[:6]}"
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
    subprocess.run(["docker", "import", "-", tag], input=tar, capture_output=True, check=True, timeout=60)
    # One container first, so that Docker's parent cgroup exists before the daemon starts (see README, Limits).
    subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "/bin/true"], capture_output=True,
                   check=True, timeout=60)
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def test_a_docker_container_is_discovered_labelled_from_docker_and_its_rules_fire(net, daemons, dockerd,
                                                                                  busybox_image):
    d = daemons("")
    d.config_text = textwrap.dedent(f"""\
        control: {{socket: {d.socket}, mode: "0600"}}
        output: {d.output}
        state: {d.tmp}/{d.name}.state
        events: true
        rules: [{RULES}]
        sandboxes:
          - match: [system.slice/docker-*.scope, docker/*]
            runtime: docker
            on_alert: report
            labels: {{fleet: docker-test}}
        """)
    d.start()
    assert not dockerd(), dockerd()
    name = f"aw-fleet-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", "--name", name, "--label", "task=42",
                           "--label", "trainer=ppo", busybox_image, "/bin/xmrig", "-o", "stratum+tcp://pool.example:3333"],
                          capture_output=True, text=True, timeout=60)
    assert "applet not found" in proc.stderr  # busybox as xmrig: it ran, as the container's first process
    found = d.wait_for(lambda r: r.get("rule") == "miner-binary-name" and sandbox_of(r) == name,
                       what="miner-binary-name alert of the container")
    agent = found[0]["agent"]
    assert agent["sandbox"]["runtime"] == "docker" and agent["sandbox"]["image"] == busybox_image
    assert len(agent["sandbox"]["container_id"]) == 64
    assert agent["labels"] == {"fleet": "docker-test", "task": "42", "trainer": "ppo"}
    assert found[0]["process"]["argv"][0] == "/bin/xmrig"
    added = [r for r in d.statuses("sandbox_added") if sandbox_of(r) == name]
    assert len(added) == 1 and "runtime_note" not in added[0]
    d.wait_for(lambda r: r.get("status") == "sandbox_removed" and sandbox_of(r) == name,
               what="sandbox_removed once the container is gone")


def test_the_daemon_delivers_to_its_sinks_in_their_formats(net, web, daemons, fleet_slice):
    """sinks: in the daemon's config, each with its own format: the same records as the output, in order,
    as ECS and as OCSF, naming the host."""
    (fleet_slice / "sb-sinks").mkdir()
    d = daemons("")
    ecs_file, ocsf_file = d.tmp / f"{d.name}.ecs.jsonl", d.tmp / f"{d.name}.ocsf.jsonl"
    text = config(d, str(fleet_slice.relative_to(cgroups.require_mount())))
    d.config_text = text.replace("sandboxes:\n", f"sinks:\n  - file:{ecs_file}?format=ecs\n"
                                               f"  - file:{ocsf_file}?format=ocsf&max_bytes=10M\nsandboxes:\n", 1)
    d.start()
    wait_sandboxes(d, {"sb-sinks"})
    done = run_in_sandbox(fleet_slice / "sb-sinks", net, ["curl", "-s", "-o", "/dev/null", web])
    assert done.returncode == 0, done.stderr
    d.wait_for(lambda r: r.get("type") == "connect" and sandbox_of(r) == "sb-sinks", what="the curl connect")
    assert d.stop() == 0
    records = d.records()
    ecs = [json.loads(x) for x in ecs_file.read_bytes().splitlines()]
    ocsf = [json.loads(x) for x in ocsf_file.read_bytes().splitlines()]
    assert len(ecs) == len(ocsf) == len(records) > 0
    assert [e["@timestamp"] for e in ecs] == [r["time"] for r in records]
    connect = next(i for i, r in enumerate(records) if r.get("type") == "connect" and sandbox_of(r) == "sb-sinks")
    assert ecs[connect]["destination"]["ip"] == NET_IP and ecs[connect]["destination"]["port"] == 80
    assert ecs[connect]["host"]["name"] == socket.gethostname()
    assert ocsf[connect]["class_uid"] == 4001 and ocsf[connect]["dst_endpoint"]["ip"] == NET_IP
