"""Delivery as users run it: Prometheus metrics scraped from a live `agentwatch run`, an HTTP collector
that goes away mid-attack, and a hung one that must not slow the BPF drain."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.request

import jsonschema

from sandbox import AGENTWATCH, NET_IP, PY, REPO, RULES
from tracer.sinks import record_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_of_a_live_run_are_scraped(net):
    port = free_port()
    out = net.tmp / "metrics-run.jsonl"
    agent = [PY, "-c", "import subprocess, time\nfor _ in range(5): subprocess.run(['/bin/true'])\ntime.sleep(4)"]
    proc = subprocess.Popen([AGENTWATCH, "run", "--rules", RULES, "--output", str(out), "--metrics",
                             f"127.0.0.1:{port}", "--", *net.in_agent(*agent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=net.env)
    try:
        text = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.1)
                continue
            if 'type="exit"' in text and "agentwatch_records_total" in text:
                break
            time.sleep(0.1)
        assert "agentwatch_agents 1.0" in text, text[-2000:]
        execs = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith('agentwatch_records_total{kind="event",type="exec"}'))
        assert execs >= 5  # counted although --events is off: records built, not only written
        assert "agentwatch_kernel_lost_total" in text and "agentwatch_drain_lag_seconds" in text
    finally:
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read().decode()


# --- an HTTP collector that goes away while the agent attacks ------------------------------------

SCAN = ("import socket, time\n"
        "end = time.monotonic() + {secs}\n"
        "port = 1000\n"
        "while time.monotonic() < end:\n"
        "    s = socket.socket(); s.settimeout(0.2)\n"
        "    try: s.connect(('{host}', port))\n"
        "    except OSError: pass\n"
        "    s.close(); port += 1; time.sleep(0.01)\n")


class Collector:
    """An HTTP receiver on 127.0.0.1 (the root namespace's loopback: nothing is added to it) that keeps
    every POSTed body, can be stopped and started again on the same port, and checks the bearer token."""

    def __init__(self, token: str) -> None:
        self.port = free_port()
        self.token = token
        self.bodies: list[bytes] = []
        self.bad_auth = 0
        self.server = None

    def start(self) -> None:
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Authorization") != f"Bearer {collector.token}":
                    collector.bad_auth += 1
                    self.send_response(401)
                else:
                    collector.bodies.append(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def records(self) -> list[dict]:
        return [json.loads(line) for body in self.bodies for line in body.splitlines() if line]


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_http_receiver_down_while_the_agent_attacks_loses_nothing(net):
    """The collector is stopped 1.5 s into a 7 s outside port scan and started again 2.5 s later: every
    record agentwatch wrote reaches it once deduplicated by id, in order, and no kernel record is lost."""
    token = net.tmp / "token"
    token.write_text("s3cret-token\n")
    collector = Collector("s3cret-token")
    collector.start()
    out, spool = net.tmp / "down.jsonl", net.tmp / "spool-down"
    sink = f"http:http://127.0.0.1:{collector.port}/ingest?spool={spool}&token_file={token}&flush_s=0.2"
    agent = [PY, "-c", SCAN.format(secs=7, host=NET_IP)]
    proc = subprocess.Popen([AGENTWATCH, "run", "--events", "--rules", RULES, "--output", str(out), "--sink", sink,
                             "--", *net.in_agent(*agent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=net.env)
    try:
        deadline = time.monotonic() + 20
        while not collector.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
        assert collector.bodies, "nothing delivered before the outage"
        time.sleep(1.0)
        collector.stop()
        during = len(collector.records())
        time.sleep(2.5)
        collector.start()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.stop()
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 0, stderr
    written = _records(out)
    assert not [r for r in written if r.get("type") == "lost" or r.get("status") == "sink_dropped"], stderr
    assert sum(r.get("type") == "connect" for r in written) > 200  # the scan ran through the outage
    got = collector.records()
    assert len(got) > during  # records of the outage came after it
    first_seen: dict[str, dict] = {}
    for r in got:
        first_seen.setdefault(r["id"], r)
    assert list(first_seen) == [record_id(r) for r in written]  # all, once, in order
    assert all({k: v for k, v in first_seen[record_id(r)].items() if k != "id"} == r for r in written)
    schema = json.loads((REPO / "docs" / "event.schema.json").read_text())
    for r in first_seen.values():  # with its id, still a record of the schema
        jsonschema.validate(r, schema)
    assert collector.bad_auth == 0
    assert any(a["rule"] == "external-port-scan" for a in written if a.get("kind") == "alert")
    assert list(spool.glob("*.seg")) == []  # delivered, nothing left waiting


def test_hung_sinks_do_not_slow_the_drain(net):
    """An HTTP collector that takes connections and never answers, and a syslog receiver that never reads:
    3000 execs in a burst are all written to the output with no kernel loss; the HTTP records wait in the
    spool (said on stderr), and what the small syslog queue could not hold is counted and told."""
    hung_http, deaf_syslog = socket.socket(), socket.socket()
    try:
        for s in (hung_http, deaf_syslog):
            s.bind(("127.0.0.1", 0))
            s.listen(64)  # connections complete in the kernel's backlog; nobody accepts or reads
        out, spool = net.tmp / "hung.jsonl", net.tmp / "spool-hung"
        sinks = [f"http:http://127.0.0.1:{hung_http.getsockname()[1]}/x?spool={spool}&timeout_s=30",
                 f"syslog:tcp:127.0.0.1:{deaf_syslog.getsockname()[1]}?queue_max=50"]
        agent = [PY, "-c", "import os\nfor _ in range(3000):\n"
                           "    pid = os.fork()\n"
                           "    if pid == 0: os.execv('/bin/true', ['true'])\n"
                           "    os.waitpid(pid, 0)\n"]
        argv = [AGENTWATCH, "run", "--events", "--rules", RULES, "--output", str(out), "--linger", "0.5"]
        for spec in sinks:
            argv += ["--sink", spec]
        started = time.monotonic()
        proc = subprocess.run([*argv, "--", *net.in_agent(*agent)], capture_output=True, env=net.env, timeout=120)
        took = time.monotonic() - started
    finally:
        hung_http.close()
        deaf_syslog.close()
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    written = _records(out)
    assert not [r for r in written if r.get("type") == "lost"], stderr
    execs = [r for r in written if r.get("type") == "exec" and r["exec"]["filename"] == "/bin/true"]
    assert len(execs) == 3000
    http_name = sinks[0].split("?")[0]
    waiting = [line for line in stderr.splitlines() if line.startswith(f"agentwatch: {http_name}: ")]
    assert len(waiting) == 1 and "records wait in" in waiting[0], stderr
    assert int(waiting[0].split(": ")[2].split()[0]) >= len(written)  # every record is in the spool
    notices = [r for r in written if r.get("status") == "sink_dropped"]
    assert notices and all(n["sink"].startswith("syslog:tcp:") and n["reason"] == "queue_full" for n in notices)
    # Shutting down waits at most the close timeout (5 s) for the hung sinks, not their 30 s timeout.
    assert took < 60, took
