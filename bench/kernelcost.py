"""The kernel side of the overhead: BPF run time per workload operation.

kernel.bpf_stats_enabled makes the kernel count, for every BPF program,
its runs and their total time (run_cnt, run_time_ns in the program fd's
fdinfo). Turned on only around these runs (it costs two clock reads per
program run) and put back after. Deltas over one workload run, divided
by the operations it did, give "BPF ns per op", and per hook the calls per
op and ns per call: the profile that says where the kernel time goes, and
a figure steadier than a wall-clock ratio on a noisy VM (it counts only
what the programs themselves run, not the tracepoint's own dispatch, and
not the cache lines they take from the workload).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from procmon import bpf_fdinfo
from workloads import parse_bench

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextmanager
def bpf_stats():
    before = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        yield
    finally:
        STATS.write_text(before)


def snapshot(pid: int) -> dict[int, tuple[int, int]]:
    """prog id -> (run_cnt, run_time_ns) of every BPF program pid holds open."""
    out: dict[int, tuple[int, int]] = {}
    ids = bpf_fdinfo(pid, "prog", "prog_id") or []
    cnts = bpf_fdinfo(pid, "prog", "run_cnt") or []
    times = bpf_fdinfo(pid, "prog", "run_time_ns") or []
    if len(ids) == len(cnts) == len(times):
        for i, c, t in zip(ids, cnts, times):
            out[i] = (c, t)
    return out


def hooks(ids: set[int]) -> dict[int, str]:
    """prog id -> the tracepoint it is attached to (program names are cut to 15 characters)."""
    if not shutil.which("bpftool"):
        return {}
    proc = subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True, text=True)
    try:
        rows = json.loads(proc.stdout or "[]")
    except ValueError:
        return {}
    return {r["prog_id"]: r["tracepoint"] for r in rows if r.get("prog_id") in ids and r.get("tracepoint")}


def delta(before: dict, after: dict, names: dict[int, str], ops: int) -> dict:
    rows = []
    total = 0
    for pid_, (cnt, ns) in after.items():
        c0, t0 = before.get(pid_, (0, 0))
        dc, dt = cnt - c0, ns - t0
        if dc <= 0:
            continue
        total += dt
        rows.append({"hook": names.get(pid_, f"prog {pid_}"), "calls": dc, "ns_per_call": dt / dc,
                     "calls_per_op": dc / ops if ops else None, "ns_per_op": dt / ops if ops else None})
    rows.sort(key=lambda r: -r["calls"] * r["ns_per_call"])
    return {"ops": ops, "ns_per_op": total / ops if ops else None, "programs": rows}


def of_agent(aw, argv: list[str], timeout: float = 120) -> dict:
    """`agentwatch run` around argv (the agent): BPF time over the whole run, per op of argv.
    A second's sleep after argv keeps agentwatch up to be read once argv is done; the run's
    own start (a shell, a sleep) adds a few dozen calls, nothing beside a storm."""
    wrapped = aw.run(["/bin/sh", "-c", '"$@"; sleep 1', "sh", *argv], output="/dev/null")
    with bpf_stats():
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        last: dict = {}
        names: dict = {}
        asked: set = set()  # ids bpftool was asked about (tail-call targets are attached nowhere)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            snap = snapshot(proc.pid)
            if snap:
                last = snap
                if set(snap) - set(names) - asked:  # while attached: bpftool lists only live ones
                    asked |= set(snap)
                    names.update(hooks(set(snap)))
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    bench = parse_bench(out) or {}  # no BENCH line: calls and ns per call only, no per-op figure
    if not last:
        return {"unavailable": "no run counts read (agentwatch did not run)"}
    return delta({}, last, names, bench.get("ops", 0))


def of_outsider(holder_pid: int, argv: list[str]) -> dict:
    """argv run outside every agent while holder_pid (a daemon) has its programs attached."""
    with bpf_stats():
        before = snapshot(holder_pid)
        proc = subprocess.run(argv, capture_output=True)
        after = snapshot(holder_pid)
    bench = parse_bench(proc.stdout) or {}
    if not after or not bench:
        return {"unavailable": "no run counts read"}
    return delta(before, after, hooks(set(after)), bench["ops"])
