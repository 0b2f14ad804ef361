"""Delivery as users run it: Prometheus metrics scraped from a live `agentwatch run`."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

from sandbox import AGENTWATCH, PY, RULES


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
