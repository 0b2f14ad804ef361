"""Kernel tier: loads the real BPF programs and runs real programs under them.

Skipped, with the reason, when not root or when the kernel lacks what the
programs need; never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tracer.gpu import GpuMonitor
from tracer.launcher import GatedChild
from tracer.output import MemoryWriter
from tracer.probes import ProbeConfig, ProbeError, Probes
from tracer.session import Pipeline, StopFlag, run_agent

PROGS = Path(__file__).parent / "progs"


@dataclass
class Trace:
    exit_code: int
    records: list[dict]
    agent_id: str = ""
    events: list[dict] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.events if r["type"] == kind]

    def execs(self, ok_only: bool = True) -> list[dict]:
        return [r for r in self.of_type("exec") if not ok_only or r["exec"]["result"] == "ok"]


@pytest.fixture(scope="session")
def probes():
    try:
        p = Probes(ProbeConfig(self_tgid=os.getpid()))
    except ProbeError as exc:
        pytest.fail(f"probes do not load: {exc}")
    yield p
    p.close()


@pytest.fixture
def trace(probes):
    """trace(argv, linger=...) -> Trace of one agent run through the real kernel."""

    def run(argv: list, linger: float = 2.0, labels: dict | None = None) -> Trace:
        writer = MemoryWriter()
        pipeline = Pipeline(probes, writer, gpu=GpuMonitor(probes))
        pipeline.table.seed_from_proc()
        stop = StopFlag()
        try:
            code = run_agent(pipeline, GatedChild([os.fsdecode(a) for a in argv]), labels or {}, linger, stop)
        finally:
            stop.restore()
        started = next(r for r in writer.records if r.get("status") == "agent_started")
        agent_id = started["agent"]["id"]
        evs = [r for r in writer.records if r["kind"] == "event"]
        return Trace(code, writer.records, agent_id, evs)

    return run


@pytest.fixture(scope="session")
def progs(tmp_path_factory):
    """The C test programs, compiled once."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the kernel test programs (make setup installs it)")
    out = tmp_path_factory.mktemp("progs")
    built = {}
    for src in PROGS.glob("*.c"):
        exe = out / src.stem
        subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True)
        built[src.stem] = str(exe)
    return built


@pytest.fixture
def netns():
    """A fresh network namespace with only lo up; deleted afterwards."""
    name = f"aw-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
