"""make bench: agentwatch's overhead, loss, latency, memory, start time and
rule-engine throughput, side by side with bpftrace and auditd.

One concern per module: build (compile progs/*.c), workloads (the programs
and the agent-mix fixture), tracers (the configurations), overhead, loss,
latency, memory, replay, fleet, sinks, kernelcost (bpf_stats), startup, outside
(the phases), report (results.md, results.json).

Environment knobs (all optional):
  BENCH_ROUNDS=5        interleaved rounds of the overhead phase (at least 3 are kept)
  BENCH_SCALE=1         multiply workload counts (e.g. 0.1 while developing)
  BENCH_PHASES=...      comma list of overhead,kernel,startup,loss,latency,memory,replay,fleet,outside,sinks
  BENCH_BUDGET_S=1000   the overhead phase gives up rounds to end the whole run in time
  BENCH_WAIT_QUIET=0    wait up to this many seconds for load average < BENCH_QUIET_LOAD (0.5)
  AGENTWATCH=CMD        the agentwatch command (default .venv/bin/agentwatch)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build  # noqa: E402
import fleet  # noqa: E402
import kernelcost  # noqa: E402
import latency  # noqa: E402
import loss  # noqa: E402
import memory  # noqa: E402
import outside  # noqa: E402
import overhead  # noqa: E402
import replay  # noqa: E402
import report  # noqa: E402
import sinks  # noqa: E402
import startup  # noqa: E402
import sysinfo  # noqa: E402
from awcli import Agentwatch  # noqa: E402
from stats import summary  # noqa: E402
from tracers import Auditd, AwRun, AwWatch, Bpftrace  # noqa: E402
from workloads import MixFixture, make_workloads, scale  # noqa: E402

PHASES = ["overhead", "kernel", "startup", "loss", "latency", "memory", "replay", "fleet", "outside", "sinks"]
# Seconds the phases after overhead take at full scale on a 2-CPU VM (measured), so that
# the overhead phase knows when to stop adding rounds.
RESERVE_S = {"kernel": 40, "startup": 60, "loss": 150, "latency": 40, "memory": 45, "replay": 90, "fleet": 30,
             "outside": 60, "sinks": 45}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main() -> int:
    if os.geteuid() != 0:
        log("bench: needs root (BPF, auditd, network namespaces)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    t_start = time.monotonic()
    phases = [p for p in os.environ.get("BENCH_PHASES", ",".join(PHASES)).split(",") if p in PHASES]
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    budget = float(os.environ.get("BENCH_BUDGET_S", "1000"))
    wait = float(os.environ.get("BENCH_WAIT_QUIET", "0"))
    if wait > 0:
        sysinfo.wait_quiet(wait, float(os.environ.get("BENCH_QUIET_LOAD", "0.5")), log)

    res: dict = {"system": sysinfo.collect(), "notes": []}
    notes = res["notes"]
    aw = Agentwatch()
    res["agentwatch"] = {"command": aw.cmd, "version": aw.version(), "usable": aw.usable,
                         "rules": aw.has_rules, "events_flag": aw.has_events_flag, "replay": aw.has_replay}
    if not aw.usable:
        log(f"bench: {' '.join(aw.cmd)} does not run; run `make setup` first")
        return 1
    for feature, flag in (("--rules", aw.has_rules), ("--events", aw.has_events_flag), ("replay", aw.has_replay)):
        if not flag:
            notes.append(f"agentwatch has no {feature} yet: the figures that need it are n/a")
    info = res["system"]
    if not info["kprobes"]:
        notes.append("bcc's execsnoop and tcpconnect attach kprobes (execve syscall, tcp_v4/v6_connect); this "
                     "kernel has no kprobe support (no kprobe_events in tracefs), so they cannot run here and "
                     "are not compared.")

    mix = None
    with tempfile.TemporaryDirectory(prefix="awbench-progs-") as d:
        progs, failed = build.build_all(Path(d))
        for name, why in failed.items():
            notes.append(f"{name} not built: {why}")
        mix = MixFixture()
        try:
            if not mix.setup():
                notes.append(f"agent-mix not run: {mix.error}")
            workloads = make_workloads(progs, mix)
            run_phases(res, aw, progs, mix, workloads, phases, rounds, t_start + budget)
        finally:
            mix.teardown()
    res["system"]["loadavg_end"] = sysinfo.loadavg()
    res["duration_s"] = time.monotonic() - t_start
    md = report.write(res, HERE)
    print(md)
    log(f"bench: wrote {HERE / 'results.md'} and {HERE / 'results.json'} in {res['duration_s']:.0f} s")
    return 0


def run_phases(res, aw, progs, mix, workloads, phases, rounds, deadline) -> None:
    armed: dict[str, list[float]] = {}
    res["phase_s"] = timings = {}
    t = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        timings[name] = round(now - t, 1)
        log(f"   ({name}: {now - t:.0f} s)")
        t = now

    if "overhead" in phases:
        log("== overhead")
        tracers = [AwRun(aw), AwWatch(aw), Bpftrace(), Auditd()]
        reserve = sum(RESERVE_S[p] for p in phases if p in RESERVE_S)
        result = overhead.measure(tracers, workloads, rounds, deadline - reserve, log)
        res["overhead"] = {
            "rounds": result["rounds"],
            "round_s": result["round_s"],
            "notes": result["notes"],
            "workloads": [{"name": w.name, "description": w.description, "argv": w.argv} for w in workloads],
            "tracers": {t.name: {"description": t.description, "unavailable": t.unavailable,
                                 "armed_s": t.armed_s, "blocks": t.blocks} for t in tracers},
            "summary": overhead.summarize(result),
            "raw": result["data"],
        }
        for tr in tracers:
            if tr.armed_s:
                armed[tr.name] = tr.armed_s
        lap("overhead")
    if "kernel" in phases:
        log("== kernel (bpf_stats)")
        res["kernel"] = {w.name: kernelcost.of_agent(aw, w.argv) for w in workloads if w.name != "agent-mix"}
        lap("kernel")
    if "startup" in phases:
        log("== startup")
        res["startup"] = startup.measure(aw, progs, 3, log)
        lap("startup")
    if "loss" in phases and "exec_storm" in progs:
        log("== loss")
        storms = [w for w in workloads if w.name in ("exec", "connect-tcp", "connect-udp")]
        raw = loss.measure(aw, storms, progs["exec_storm"], 3, log)
        res["loss"] = {"raw": raw, "summary": loss.summarize(raw)}
        if "connect_storm" in progs:
            res["loss"]["sweep"] = loss.drain_sweep(aw, progs["connect_storm"], [10_000, 25_000, 50_000, 100_000],
                                                    1.5, log)
        lap("loss")
        runs = [r for name, rs in raw.items() if not name.startswith("_") for r in rs if r and r.get("armed_s")]
        armed["aw-run"] = [r["armed_s"] for r in runs]
    if "latency" in phases:
        log("== latency")
        lat = latency.measure(aw, progs, scale(300), log)
        res["latency"] = {"unavailable": lat["unavailable"]} if "unavailable" in lat else {"scenarios": lat}
        lap("latency")
    if "memory" in phases:
        log("== memory")
        res["memory"] = memory.measure(aw, progs, scale(10000), log)
        lap("memory")
    if "replay" in phases:
        log("== replay")
        cap = max(30.0, min(120.0, deadline - time.monotonic()))
        res["replay"] = replay.measure(aw, progs, mix, scale(500_000), cap, 2, log)
        lap("replay")
    if "fleet" in phases:
        log("== fleet")
        res["fleet"] = fleet.measure(aw, progs, 100, scale(10_000), 30, 200, log)
        lap("fleet")
    if "outside" in phases:
        log("== outside every agent (daemon, 100 sandboxes)")
        res["outside"] = outside.measure(aw, progs, 100, 3, log)
        lap("outside")
    if "sinks" in phases:
        log("== sinks")
        res["sinks"] = sinks.measure(scale(sinks.N), sinks.RUNS, log)
        lap("sinks")
    res["armed"] = {k: summary(v) for k, v in armed.items()}
    aw_all = armed.get("aw-watch", []) + armed.get("aw-run", [])
    if aw_all:
        res["armed"]["all"] = summary(aw_all)


if __name__ == "__main__":
    sys.exit(main())
