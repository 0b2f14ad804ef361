"""A ring buffer too small for the burst: every failed write is counted and reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema

from tracer.launcher import GatedChild
from tracer.output import MemoryWriter
from tracer.probes import ProbeConfig, Probes
from tracer.session import Pipeline


def test_tiny_ring_buffer_produces_lost_event_with_the_right_count(progs):
    n = 300  # fork + exec + exit each: 3n + 2 events with the root's own exec and exit
    with Probes(ProbeConfig(ringbuf_pages=1, self_tgid=os.getpid())) as probes:
        writer = MemoryWriter()
        pipeline = Pipeline(probes, writer)
        child = GatedChild([progs["forkexec_n"], str(n)])
        agent = pipeline.agents.new(child.pid)
        probes.watch(child.pid, agent.kernel_id)
        child.release()
        os.waitpid(child.pid, 0)  # no polling meanwhile: one 4 KiB page must overflow
        pipeline.finish()

    received = [r for r in writer.records if r["type"] in ("fork", "exec", "exit")]
    lost = [r for r in writer.records if r["type"] == "lost"]
    assert len(lost) == 1
    counts = lost[0]["lost"]
    assert sum(counts.values()) > 0
    assert len(received) + sum(counts.values()) == 3 * n + 2
    for kind in ("fork", "exec", "exit"):
        got = len([r for r in received if r["type"] == kind])
        want = n + (kind != "fork")
        assert got + counts[kind] == want, (kind, got, counts)
    assert counts["connect"] == 0
    assert lost[0]["lost_total"] == counts
    schema = json.loads((Path(__file__).parents[2] / "docs" / "event.schema.json").read_text())
    jsonschema.validate(lost[0], schema)
