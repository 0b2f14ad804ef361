#!/usr/bin/env python3
"""Kill delay: how long a stratum client lives after its first bytes, under the default rules.

One `agentwatch run` (the BPF load costs seconds, once) whose agent starts the fake miner
(demo/fake_miner.py, xmrig's login line) RUNS times, one after another, against the demo pool in a
private network namespace. The default rule stratum-protocol carries `action: kill_process`, so
each miner is killed as soon as its first bytes are seen. For each miner, from the raw records:

    to kill   the alert's action_latency_s: the send record's kernel time (its first bytes) to the
              SIGKILL being sent
    to death  the send record's kernel time to the exit record's (the process gone)

and the median and worst of each. Root only; the namespace and every process are removed on exit.

    bench/kill_delay.py [--runs 20] [--contain] [--json]
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENTWATCH = str(Path(sys.executable).parent / "agentwatch")
PY = "/usr/bin/python3"
PORT = 3333


def _ns(t: str) -> int:
    """RFC 3339 with nanoseconds to integer ns (exact)."""
    whole = calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole * 1_000_000_000 + int(t[20:29])


def _wait_listening(ns: str, needle: str, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while needle not in subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln"], capture_output=True,
                                       text=True).stdout:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not start in {ns}")
        time.sleep(0.05)


def measure(runs: int, contain: bool) -> dict:
    ns = f"aw-bench-kill-{uuid.uuid4().hex[:6]}"
    pool = None
    with tempfile.TemporaryDirectory(prefix="aw-kill-delay-") as tmp:
        out = Path(tmp) / "records.jsonl"
        try:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            pool = subprocess.Popen(["ip", "netns", "exec", ns, PY, str(REPO / "demo" / "stratum_server.py"),
                                     "--bind", "127.0.0.1", "--port", str(PORT)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_listening(ns, f"127.0.0.1:{PORT}", pool)
            miner = f"{PY} {REPO / 'demo' / 'fake_miner.py'} 127.0.0.1 {PORT} --stay 30"
            script = f"for i in $(seq {runs}); do {miner}; done; exit 0"
            cmd = [AGENTWATCH, "run", "--format", "json", "--events", "--output", str(out), "--linger", "0",
                   *(["--contain"] if contain else []), "--", "ip", "netns", "exec", ns, "sh", "-c", script]
            started = time.monotonic()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60 + 35 * runs)
            wall = time.monotonic() - started
        finally:
            if pool is not None:
                pool.kill()
                pool.wait()
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

    exits = {r["process"]["key"]: r for r in records if r.get("kind") == "event" and r.get("type") == "exit"}
    samples = []
    for a in records:
        if a.get("kind") != "alert" or a.get("rule") != "stratum-protocol":
            continue
        first = a["evidence"][-1]
        death = exits.get(a["process"]["key"])
        samples.append({
            "pid": a["process"]["pid"],
            "result": a.get("action_result"),
            "to_kill_s": a.get("action_latency_s"),
            "to_death_s": (_ns(death["time"]) - _ns(first["time"])) / 1e9 if death else None,
            "signal": death.get("signal") if death else None,
        })
    killed = [s for s in samples if s["result"] == "killed" and s["to_death_s"] is not None]
    to_kill = [s["to_kill_s"] for s in killed]
    to_death = [s["to_death_s"] for s in killed]
    return {
        "runs": runs,
        "contain": contain,
        "alerts": len(samples),
        "killed": len(killed),
        "wall_s": round(wall, 2),
        "to_kill_ms": {"median": _ms(statistics.median(to_kill)) if to_kill else None,
                       "worst": _ms(max(to_kill)) if to_kill else None},
        "to_death_ms": {"median": _ms(statistics.median(to_death)) if to_death else None,
                        "worst": _ms(max(to_death)) if to_death else None},
        "samples": samples,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="miners started, one after another (default 20)")
    ap.add_argument("--contain", action="store_true", help="run the agent with --contain")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("kill_delay: needs root (BPF, network namespaces)", file=sys.stderr)
        return 2
    result = measure(args.runs, args.contain)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"stratum clients: {result['runs']} started, {result['alerts']} alerts, {result['killed']} killed "
              f"({'contained' if result['contain'] else 'not contained'}; {result['wall_s']} s)")
        print(f"  first bytes -> SIGKILL sent : median {result['to_kill_ms']['median']} ms, "
              f"worst {result['to_kill_ms']['worst']} ms")
        print(f"  first bytes -> process gone : median {result['to_death_ms']['median']} ms, "
              f"worst {result['to_death_ms']['worst']} ms")
    return 0 if result["killed"] == result["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
