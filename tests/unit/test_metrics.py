"""Prometheus metrics: what the pipeline counts, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tracer import session
from tracer.metrics import Metrics, MetricsError, parse_address
from tracer.session import Pipeline

from test_pipeline import ZERO_LOST, FakeProbes, ListWriter, child_hdr, root_hdr, CHILD, CHILD_START, SEC


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OneAlert:
    def evaluate(self, rec):
        if rec.get("type") == "exec":
            return [{"kind": "alert", "rule": "test-rule", "severity": "high", "time": rec["time"], "agent": rec["agent"],
                     "process": rec["process"], "action": "none", "evidence": [rec]}]
        return []


def test_records_alerts_losses_and_lag_are_scraped(raw, monkeypatch):
    monkeypatch.setattr(session, "LOST_CHECK_SECONDS", 0.0)
    probes = FakeProbes()
    metrics = Metrics()
    pipe = Pipeline(probes, ListWriter(), rules=OneAlert(), metrics=metrics)
    pipe.agents.new(1, {}, agent_id="agent-m")
    metrics.agents_from(lambda: sum(1 for _ in pipe.agents))
    metrics.sinks_from(lambda: {"http": {"queued": 7, "delivered": 3, "failed": 2, "dropped": 1}})
    probes.lost = dict(ZERO_LOST, exec=4)
    probes.batches.append([
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, ktime_ns=10 * SEC, **root_hdr()),
        raw.exec(filename=b"/bin/x", argv=[b"x"], ktime_ns=11 * SEC, **child_hdr()),
    ])
    pipe.drain(0)
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert 'agentwatch_records_total{kind="event",type="fork"} 1.0' in text
    assert 'agentwatch_records_total{kind="event",type="exec"} 1.0' in text
    assert 'agentwatch_alerts_total{rule="test-rule",severity="high"} 1.0' in text
    assert 'agentwatch_kernel_lost_total{type="exec"} 4.0' in text
    assert "agentwatch_ring_buffer_records_total 2.0" in text
    assert "agentwatch_agents 1.0" in text
    assert 'agentwatch_sink_queue_depth{sink="http"} 7.0' in text
    assert 'agentwatch_sink_dropped_total{sink="http"} 1.0' in text
    lag = next(line for line in text.splitlines() if line.startswith("agentwatch_drain_lag_seconds "))
    assert float(lag.split()[1]) > 0  # the records' kernel times are long past


@pytest.mark.parametrize("text, want", [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("0.0.0.0", 9464)),
                                        ("[::1]:9", ("::1", 9))])
def test_addresses(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("bad", ["9464", "host:", "h:0", "h:70000", "h:x"])
def test_bad_addresses(bad):
    with pytest.raises(MetricsError):
        parse_address(bad)
