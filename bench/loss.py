"""Events generated vs received, agentwatch's own `lost` records, and what
agentwatch costs doing it: CPU seconds per 1k events, peak RSS and
Private_Dirty, and time from start to armed.

Each storm runs under `agentwatch run --events --output FILE` (FILE on
tmpfs). The storms know exactly how many events they cause; every record of
those types attributed to the agent is counted (a connect summary for the
identical calls it folds), and the last `lost` record's `lost_total` is what
the kernel could not hand over.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

from awcli import Agentwatch
from procmon import Sampler
from stats import summary
from tracers import SHM
from workloads import Workload, run_once


class ArmedWatch:
    """Time from the start of a process to the first byte in its output file."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.monotonic()
        self.armed_s: float | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, proc) -> None:
        self.pid = proc.pid  # never proc.poll() here: it would reap the child the caller waits for
        self._thread.start()

    def _loop(self) -> None:
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() - self.t0 < 120:
            try:
                if self.path.stat().st_size > 0:
                    self.armed_s = time.monotonic() - self.t0
                    return
            except OSError:
                pass
            time.sleep(0.002)


def count_output(path: Path) -> dict:
    """Records per event type attributed to an agent, and the kernel's lost totals."""
    by_type: dict[str, int] = {}  # the calls the records account for
    records: dict[str, int] = {}
    lost: dict[str, int] = {}
    alerts = 0
    with path.open("rb") as f:
        for line in f:
            rec = orjson.loads(line)
            kind = rec.get("kind")
            if kind == "alert":
                alerts += 1
                continue
            if kind != "event":
                continue
            t = rec.get("type")
            if t == "lost":
                lost = rec.get("lost_total") or lost
            elif rec.get("agent"):
                by_type[t] = by_type.get(t, 0) + 1
                records[t] = records.get(t, 0) + 1
                if t == "connect":  # a summary of folded identical calls stands for `repeats` calls
                    repeats = rec["network"]["repeats"]
                    by_type[t] += repeats - 1 if repeats else 0
    return {"by_type": by_type, "records": records, "lost": lost, "alerts": alerts}


def one_run(aw: Agentwatch, w: Workload, sample_every: float = 0.1) -> dict | None:
    out = SHM / f"awbench-loss-{os.getpid()}.jsonl"
    out.unlink(missing_ok=True)
    armed = ArmedWatch(out)
    holder = {}

    def on_start(proc):
        armed.start(proc)
        holder["sampler"] = Sampler(proc.pid, sample_every).start()

    res = run_once(aw.run(w.argv, output=str(out), events=True), on_start=on_start)
    sampler: Sampler = holder["sampler"]
    sampler.stop()
    try:
        counts = count_output(out) if out.exists() else {"by_type": {}, "records": {}, "lost": {}, "alerts": 0}
    finally:
        out.unlink(missing_ok=True)
    if not res["ok"]:
        return {"ok": False, "error": res.get("stderr", "")[-300:]}
    expected = sum(w.expected.values())
    received = sum(counts["by_type"].get(t, 0) for t in w.expected)
    lost = sum(counts["lost"].values())
    events = sum(counts["by_type"].values())
    # agentwatch's rusage covers the workload it reaped: take the workload's own away.
    aw_cpu = max(0.0, res["tree_cpu_s"] - res.get("cpu_s", 0.0))
    return {
        "ok": True,
        "expected": expected,
        "received": received,
        "by_type": counts["by_type"],
        "records": sum(counts["records"].values()),
        "lost_records": lost,
        "lost_by_type": {k: v for k, v in counts["lost"].items() if v},
        "missing": max(0, expected - received),
        "alerts": counts["alerts"],
        "offered_rate": w.expected and (expected / res["elapsed_s"]),
        "workload_s": res["elapsed_s"],
        "ops": res.get("ops"),
        "aw_wall_s": res["wall_s"],
        "aw_cpu_s": aw_cpu,
        "events": events,
        "peak_rss": max(sampler.vm_hwm, sampler.peak_rss),
        "peak_private_dirty": sampler.peak_private_dirty,
        "armed_s": armed.armed_s,
    }


def idle_cost(aw: Agentwatch, exec_storm: str, reps: int = 2) -> dict:
    """agentwatch around a workload that does nothing (exec_storm 0): the CPU and
    memory of starting, compiling and stopping."""
    runs = [one_run(aw, Workload("idle", [exec_storm, "0"], {"exec": 1, "exit": 1})) for _ in range(reps)]
    ok = [r for r in runs if r and r["ok"]]
    return {
        "aw_cpu_s": summary([r["aw_cpu_s"] for r in ok]),
        "aw_wall_s": summary([r["aw_wall_s"] for r in ok]),
        "armed_s": summary([r["armed_s"] for r in ok if r["armed_s"] is not None]),
        "peak_private_dirty_mb": summary([r["peak_private_dirty"] / 2**20 for r in ok]),
        "peak_rss_mb": summary([r["peak_rss"] / 2**20 for r in ok]),
    }


def measure(aw: Agentwatch, storms: list[Workload], exec_storm: str, reps: int, log) -> dict:
    """Per storm, reps runs; CPU per 1k events is net of the idle run's CPU (start, compile, stop)."""
    log("  idle")
    idle = idle_cost(aw, exec_storm)
    idle_cpu = idle["aw_cpu_s"]["median"] if idle["aw_cpu_s"] else 0.0
    out = {"_idle": idle}
    for w in storms:
        runs = []
        for i in range(reps):
            log(f"  {w.name} {i + 1}/{reps}")
            r = one_run(aw, w)
            if r and not r["ok"]:
                log(f"    failed: {r['error']}")
            elif r:
                records = r["records"]  # what agentwatch handled (folded connect calls are not records)
                # Under 1000 records (a folded storm) the idle run's spread swamps the figure.
                r["cpu_per_1k"] = max(0.0, r["aw_cpu_s"] - idle_cpu) / records * 1000 if records >= 1000 else None
            runs.append(r)
        out[w.name] = runs
    return out


def drain_sweep(aw: Agentwatch, connect_storm: str, rates: list[int], seconds: float, log) -> dict:
    """UDP connects paced at each rate (root namespace loopback, 127.0.0.1:9) under
    `agentwatch run --events`: the highest rate agentwatch drains with nothing lost."""
    rows = []
    for rate in rates:
        log(f"  drain sweep {rate}/s")
        n = int(rate * seconds)
        w = Workload(f"paced-{rate}", [connect_storm, str(rate), str(seconds)], {"connect": n})
        r = one_run(aw, w)
        if not r or not r["ok"]:
            rows.append({"rate": rate, "ok": False})
            continue
        made = r["ops"]  # the storm's own count (pacing may fall short of rate x seconds)
        rows.append({"rate": rate, "ok": True, "made": made, "received": r["by_type"].get("connect", 0),
                     "lost_records": r["lost_records"], "offered_rate": made / r["workload_s"],
                     "aw_cpu_s": r["aw_cpu_s"]})
    clean = [row["rate"] for row in rows if row.get("ok") and row["lost_records"] == 0
             and row["received"] >= row["made"]]
    return {"seconds": seconds, "rows": rows, "highest_clean_rate": max(clean) if clean else None}


def summarize(result: dict) -> dict:
    out = {"_idle": result.get("_idle")}
    for name, runs in result.items():
        if name.startswith("_"):
            continue
        ok = [r for r in runs if r and r["ok"]]
        if not ok:
            out[name] = None
            continue
        out[name] = {
            "expected": ok[0]["expected"],
            "received": summary([r["received"] for r in ok]),
            "records": summary([r["records"] for r in ok]),
            "missing": summary([r["missing"] for r in ok]),
            "lost_records": summary([r["lost_records"] for r in ok]),
            "loss_pct": summary([100.0 * r["missing"] / r["expected"] for r in ok if r["expected"]]),
            "offered_rate": summary([r["offered_rate"] for r in ok]),
            "cpu_per_1k": summary([r["cpu_per_1k"] for r in ok if r["cpu_per_1k"] is not None]),
            "aw_cpu_s": summary([r["aw_cpu_s"] for r in ok]),
            "aw_wall_s": summary([r["aw_wall_s"] for r in ok]),
            "peak_rss_mb": summary([r["peak_rss"] / 2**20 for r in ok]),
            "peak_private_dirty_mb": summary([r["peak_private_dirty"] / 2**20 for r in ok]),
            "armed_s": summary([r["armed_s"] for r in ok if r["armed_s"] is not None]),
        }
    return out
