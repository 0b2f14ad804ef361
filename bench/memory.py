"""agentwatch's memory with many live processes in the agent.

progs/sleepers forks N children that sleep, says "ready", holds them a few
seconds, then kills and reaps them, all inside `agentwatch run` (default
rules, records to a tmpfs file). agentwatch is sampled every 100 ms: peak
RSS (VmHWM), peak Private_Dirty (smaps_rollup), and the kernel memory of its
BPF maps (memlock in fdinfo). The same run with no children gives the base.
"""

from __future__ import annotations

import os
import time

from awcli import Agentwatch
from procmon import Sampler, bpf_map_memlock
from tracers import SHM
from workloads import run_once


def one(aw: Agentwatch, sleepers: str, n: int, hold: float) -> dict:
    out = SHM / f"awbench-mem-{os.getpid()}.jsonl"
    out.unlink(missing_ok=True)
    holder: dict = {}

    def on_start(proc):
        holder["sampler"] = Sampler(proc.pid, 0.1).start()
        holder["pid"] = proc.pid

    # The map memory is read once the maps exist: a second thread would be overkill,
    # so the sampler's samples carry time and the maps are read after the run starts.
    import threading  # noqa: PLC0415

    memlock: list[int] = []

    def read_maps():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and "pid" in holder:
            v = bpf_map_memlock(holder["pid"])
            if v is None and memlock:
                return
            if v:
                memlock.append(v)
            time.sleep(0.5)

    reader = threading.Thread(target=read_maps, daemon=True)

    def on_start_all(proc):
        on_start(proc)
        reader.start()

    res = run_once(aw.run([sleepers, str(n), str(hold)], output=str(out)), on_start=on_start_all, timeout=240)
    sampler: Sampler = holder["sampler"]
    sampler.stop()
    reader.join(timeout=5)
    out.unlink(missing_ok=True)
    return {
        "ok": res["ok"],
        "processes": res.get("ops"),
        "workload_s": res.get("elapsed_s"),
        "peak_rss_mb": max(sampler.vm_hwm, sampler.peak_rss) / 2**20,
        "peak_private_dirty_mb": sampler.peak_private_dirty / 2**20,
        "bpf_maps_mb": max(memlock) / 2**20 if memlock else None,
        "error": "" if res["ok"] else res.get("stderr", "")[-300:],
    }


def measure(aw: Agentwatch, progs: dict[str, str], n: int, log) -> dict:
    if "sleepers" not in progs:
        return {"unavailable": "sleepers did not build"}
    log("  base (0 live processes)")
    base = one(aw, progs["sleepers"], 0, 1)
    log(f"  {n} live processes")
    loaded = one(aw, progs["sleepers"], n, 3)
    per_proc = None
    if base["ok"] and loaded["ok"] and n:
        per_proc = (loaded["peak_private_dirty_mb"] - base["peak_private_dirty_mb"]) * 2**20 / n
    return {"base": base, "loaded": loaded, "private_dirty_per_process_bytes": per_proc, "n": n}
