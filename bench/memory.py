"""agentwatch's memory with many live processes in the agent.

progs/sleepers forks N children that sleep and says "ready"; it holds them
until its stdin closes, then kills and reaps them, all inside `agentwatch run
--events` (default rules, records to a tmpfs file). agentwatch is sampled
every 100 ms: peak RSS (VmHWM) and peak Private_Dirty (smaps_rollup) over
the whole run, which includes the BPF compile, and Private_Dirty while the N
processes are live, 2 s after "ready" (once their fork records are
drained); plus the kernel memory of its BPF maps (memlock in fdinfo). The
fork records in the output show how many processes agentwatch tracked. The
same run with no children gives the base.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from awcli import Agentwatch
from procmon import Sampler, bpf_map_memlock, smaps_rollup
from tracers import SHM


def one(aw: Agentwatch, sleepers: str, n: int, settle: float = 2.0) -> dict:
    out = SHM / f"awbench-mem-{os.getpid()}.jsonl"
    stdout = SHM / f"awbench-mem-{os.getpid()}.out"
    for p in (out, stdout):
        p.unlink(missing_ok=True)
    errf = tempfile.TemporaryFile()
    with stdout.open("wb") as so:
        proc = subprocess.Popen(aw.run([sleepers, str(n), "0"], output=str(out), events=True),
                                stdin=subprocess.PIPE, stdout=so, stderr=errf)
    sampler = Sampler(proc.pid, 0.1).start()
    live_dirty = memlock = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if b"ready" in stdout.read_bytes():
            time.sleep(settle)
            live_dirty = smaps_rollup(proc.pid).get("Private_Dirty")
            memlock = bpf_map_memlock(proc.pid)
            break
        time.sleep(0.05)
    proc.stdin.close()  # sleepers kills and reaps its children, then exits
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    sampler.stop()
    errf.seek(0)
    err = errf.read()
    errf.close()
    forks = 0
    if out.exists():
        with out.open("rb") as f:
            forks = sum(1 for line in f if b'"type":"fork"' in line)
    text = stdout.read_bytes().decode(errors="replace")
    for p in (out, stdout):
        p.unlink(missing_ok=True)
    ok = proc.returncode == 0 and live_dirty is not None
    return {
        "ok": ok,
        "processes": n,
        "forks_recorded": forks,
        "ready_line": next((ln for ln in text.splitlines() if ln.startswith("ready")), None),
        "peak_rss_mb": max(sampler.vm_hwm, sampler.peak_rss) / 2**20,
        "peak_private_dirty_mb": sampler.peak_private_dirty / 2**20,
        "live_private_dirty_mb": live_dirty / 2**20 if live_dirty is not None else None,
        "bpf_maps_mb": memlock / 2**20 if memlock else None,
        "error": "" if ok else err.decode(errors="replace")[-300:],
    }


def measure(aw: Agentwatch, progs: dict[str, str], n: int, log) -> dict:
    if "sleepers" not in progs:
        return {"unavailable": "sleepers did not build"}
    log("  base (0 live processes)")
    base = one(aw, progs["sleepers"], 0)
    log(f"  {n} live processes")
    loaded = one(aw, progs["sleepers"], n)
    per_proc = None
    if base["ok"] and loaded["ok"] and n:
        per_proc = (loaded["live_private_dirty_mb"] - base["live_private_dirty_mb"]) * 2**20 / n
    return {"base": base, "loaded": loaded, "private_dirty_per_process_bytes": per_proc, "n": n}
