"""Start to armed, and a whole short run, for `agentwatch run` and `run --contain`.

Armed: from the start of `agentwatch run --events --output F -- exec_storm 0`
to the first byte in F (the agent's exec record: the probes are attached and
the agent has been let go). Whole: the same run from start to its exit, as a
harness wrapping one short tool call waits for it. Each mode warm (the
compiled object from /var/cache/agentwatch/bpf, as every run after the
first) and cold (AGENTWATCH_BPF_CACHE pointing at an empty folder: BCC
compiles, as the first run after a kernel or agentwatch update), rounds
interleaved. Each run starts once the previous one's detaching process
(tracer/detach.py) is gone: back to back, a run's attach waits for it (the
kernel's event_mutex), which is the price of handing the detach off, and
not start-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from loss import ArmedWatch
from stats import summary
from tracers import SHM
from workloads import run_once

MODES = {"run": [], "run --contain": ["--contain"]}


def wait_detached(timeout: float = 20) -> None:
    """Until the previous run's detaching process (tracer/detach.py) is gone: while it
    unregisters it holds the kernel's event_mutex, which the next run's attach needs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    busy = Path(f"/proc/{name}/comm").read_text().strip() == "agentwatch-deta"
                except OSError:
                    continue
                if busy:
                    break
        if not busy:
            return
        time.sleep(0.05)


def _one(aw, exec_storm: str, extra: list[str], env: dict) -> dict | None:
    wait_detached()
    out = SHM / f"awbench-start-{os.getpid()}.jsonl"
    out.unlink(missing_ok=True)
    armed = ArmedWatch(out)
    argv = aw.run([exec_storm, "0"], output=str(out), events=True)
    at = argv.index("run") + 1
    argv = argv[:at] + extra + argv[at:]
    try:
        res = run_once(argv, timeout=120, env=env, on_start=armed.start)
    finally:
        out.unlink(missing_ok=True)
    if not res["ok"]:
        return {"error": res.get("stderr", "")[-300:]}
    return {"armed_s": armed.armed_s, "whole_s": res["wall_s"]}


def measure(aw, progs: dict[str, str], rounds: int, log) -> dict:
    if "exec_storm" not in progs:
        return {"unavailable": "exec_storm did not build"}
    data = {m: {"warm": [], "cold": []} for m in MODES}
    errors: list[str] = []
    for r in range(rounds):
        log(f"  start-up round {r + 1}/{rounds}")
        for mode, extra in MODES.items():
            for kind in ("warm", "cold"):
                env = dict(os.environ)
                empty = None
                if kind == "cold":
                    empty = tempfile.mkdtemp(prefix="awbench-bpfcache-")
                    env["AGENTWATCH_BPF_CACHE"] = empty
                try:
                    one = _one(aw, progs["exec_storm"], extra, env)
                finally:
                    if empty:
                        shutil.rmtree(empty, ignore_errors=True)
                if one is None or "error" in one:
                    errors.append(f"{mode} {kind}: {(one or {}).get('error', 'failed')}")
                    continue
                data[mode][kind].append(one)
    out: dict = {"rounds": rounds, "errors": errors[:5]}
    for mode in MODES:
        out[mode] = {kind: {"armed_s": summary([x["armed_s"] for x in runs if x["armed_s"] is not None]),
                            "whole_s": summary([x["whole_s"] for x in runs])}
                     for kind, runs in data[mode].items()}
    return out
