"""Prometheus metrics (`--metrics ADDR:PORT`, the daemon's `metrics:`), with prometheus-client.

    agentwatch_records_total{kind,type}            records built (events, status, alerts), shown or not
    agentwatch_alerts_total{rule,severity}         alerts raised (before any rate limit)
    agentwatch_alerts_suppressed_total{rule}       alerts held back by the rate limit
    agentwatch_kernel_lost_total{type}             records the kernel could not hand over (ring buffer full)
    agentwatch_ring_buffer_records_total           raw records read from the ring buffer
    agentwatch_drain_lag_seconds                   age of the newest record of the last batch when it was read
    agentwatch_agents                              agents (sandboxes) watched now
    agentwatch_sink_queue_depth{sink}              records waiting in a sink (memory or spool)
    agentwatch_sink_delivered_total{sink}          records a sink delivered
    agentwatch_sink_failures_total{sink}           failed delivery attempts
    agentwatch_sink_dropped_total{sink}            records a sink dropped (bounded queue or spool full)

Everything is updated on the drain thread; the scrape runs in prometheus-client's own HTTP
thread and reads only counters and small callbacks (lengths, sink stats snapshots).
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class MetricsError(ValueError):
    pass


def parse_address(text: str) -> tuple[str, int]:
    """"ADDR:PORT" (or ":PORT", or "[v6]:PORT") to (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise MetricsError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9464)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _SinkCollector:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def collect(self):
        depth = GaugeMetricFamily("agentwatch_sink_queue_depth", "Records waiting in a sink", labels=["sink"])
        delivered = CounterMetricFamily("agentwatch_sink_delivered", "Records a sink delivered", labels=["sink"])
        failures = CounterMetricFamily("agentwatch_sink_failures", "Failed delivery attempts", labels=["sink"])
        dropped = CounterMetricFamily("agentwatch_sink_dropped", "Records a sink dropped", labels=["sink"])
        for name, st in (self.stats() or {}).items():
            depth.add_metric([name], st.get("queued", 0))
            delivered.add_metric([name], st.get("delivered", 0))
            failures.add_metric([name], st.get("failed", 0))
            dropped.add_metric([name], st.get("dropped", 0))
        yield from (depth, delivered, failures, dropped)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.records = Counter("agentwatch_records", "Records built, by kind and type", ["kind", "type"], registry=r)
        self.alerts = Counter("agentwatch_alerts", "Alerts raised, by rule and severity", ["rule", "severity"],
                              registry=r)
        self.suppressed = Counter("agentwatch_alerts_suppressed", "Alerts held back by the rate limit", ["rule"],
                                  registry=r)
        self.lost = Counter("agentwatch_kernel_lost", "Records the kernel could not hand over, by type", ["type"],
                            registry=r)
        self.raw = Counter("agentwatch_ring_buffer_records", "Raw records read from the ring buffer", registry=r)
        self.lag = Gauge("agentwatch_drain_lag_seconds", "Age of the newest record of the last batch when read",
                         registry=r)
        self.agents = Gauge("agentwatch_agents", "Agents (sandboxes) watched now", registry=r)
        self._server = None

    def observe(self, record: dict) -> None:
        kind = record.get("kind") or "?"
        if kind == "alert":
            self.alerts.labels(str(record.get("rule")), str(record.get("severity"))).inc()
            self.records.labels("alert", "alert").inc()
        elif kind == "status":
            self.records.labels("status", str(record.get("status"))).inc()
        else:
            self.records.labels(kind, str(record.get("type"))).inc()

    def drained(self, count: int, newest_ktime_ns: int | None) -> None:
        if count:
            self.raw.inc(count)
        if newest_ktime_ns is not None:
            self.lag.set(max(0.0, (time.monotonic_ns() - newest_ktime_ns) / 1e9))

    def lost_delta(self, delta: dict[str, int]) -> None:
        for kind, n in delta.items():
            if n > 0:
                self.lost.labels(kind).inc(n)

    def suppressed_alert(self, rule: str) -> None:
        self.suppressed.labels(rule).inc()

    def agents_from(self, count: Callable[[], int]) -> None:
        self.agents.set_function(count)

    def sinks_from(self, stats: Callable[[], dict]) -> None:
        """stats() -> {sink name: {queued, delivered, failed, dropped}} (tracer.sinks.SinkSet.stats)."""
        self.registry.register(_SinkCollector(stats))

    def serve(self, address: str) -> tuple[str, int]:
        host, port = parse_address(address)
        self._server = start_http_server(port, host, registry=self.registry)
        return host, port

    def close(self) -> None:
        server = self._server
        if isinstance(server, tuple):  # prometheus-client >= 0.17: (server, thread)
            server[0].shutdown()
            server[0].server_close()
        self._server = None
