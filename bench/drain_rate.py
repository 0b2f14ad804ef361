"""How many events per second the frontend drains without loss.

Runs `agentwatch run` (the real CLI, JSON to a file) around a program that
makes UDP connects at a fixed rate, for rising rates, and reports for each
the events received, the events the kernel counted as lost, and agentwatch's
CPU time. The figure is the highest rate with zero loss.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENTWATCH = ROOT / ".venv" / "bin" / "agentwatch"


def build(tmp: Path) -> str:
    exe = tmp / "connect_storm"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "bench" / "progs" / "connect_storm.c")], check=True)
    return str(exe)


def one_run(storm: str, rate: int, seconds: float, tmp: Path) -> dict:
    out = tmp / f"run-{rate}.jsonl"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(
        [str(AGENTWATCH), "run", "--format", "json", "--output", str(out), "--", storm, str(rate), str(seconds)],
        capture_output=True, text=True, check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    made, storm_seconds = proc.stdout.split()
    connects = lost = 0
    with out.open("rb") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("type") == "connect":
                connects += 1
            elif rec.get("type") == "lost":
                lost += sum(rec["lost"].values())
    out.unlink()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "target_rate": rate,
        "made": int(made),
        "offered_rate": int(made) / float(storm_seconds),
        "received": connects,
        "lost": lost,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def main() -> int:
    if os.geteuid() != 0:
        print("drain_rate: needs root", file=sys.stderr)
        return 2
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    rates = [int(r) for r in os.environ.get("BENCH_RATES", "5000,10000,20000,40000,80000,0").split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        storm = build(tmp)
        rows = [one_run(storm, r, seconds, tmp) for r in rates]
    print(f"{'target/s':>9} {'offered/s':>10} {'made':>8} {'received':>9} {'lost':>7} {'cpu s':>6}")
    for r in rows:
        target = "max" if r["target_rate"] == 0 else r["target_rate"]
        print(f"{target:>9} {r['offered_rate']:>10.0f} {r['made']:>8} {r['received']:>9} {r['lost']:>7} {r['cpu_s']:>6.2f}")
    clean = [r for r in rows if r["lost"] == 0 and r["received"] == r["made"]]
    best = max((r["offered_rate"] for r in clean), default=0)
    print(f"highest rate drained without loss: {best:.0f} events/s")
    json.dump(rows, sys.stderr) if os.environ.get("BENCH_JSON") else None
    return 0


if __name__ == "__main__":
    sys.exit(main())
