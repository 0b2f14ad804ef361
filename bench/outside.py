"""What processes outside every agent pay while a daemon watches a fleet.

One `agentwatch daemon` watching 100 sandbox cgroups (fleet.FleetRun, no
processes in them), and the storms in a cgroup of the benchmark's own at
depth 3, as a login session's processes are on a systemd host
(user.slice/user-0.slice/session-1.scope): in no sandbox, so in no agent.
Every probe still runs for them and has to find that out (the tgid map,
then the cgroup and its ancestors: the deeper, the more to ask).
Rounds alternate: the storms with no daemon, then the daemon started and
the same storms, then it is stopped; the figure per storm is the median of
the per-round ratios (traced / untraced), as in the overhead phase. In the
first round each storm runs once more under kernel.bpf_stats_enabled
(kernelcost.py): BPF ns per operation, and which hooks take them.
"""

from __future__ import annotations

import os
from pathlib import Path

import fleet
import kernelcost
from stats import ratios, summary
from workloads import run_once, scale

from tracer import cgroups

DEPTH = ("user.slice", "user-0.slice", "session-1.scope")


def storms(progs: dict[str, str]) -> list[tuple[str, list[str]]]:
    out = []
    if "exec_storm" in progs:
        out.append(("exec", [progs["exec_storm"], str(scale(1000))]))
    if "net_storm" in progs:
        out.append(("connect-udp-new", [progs["net_storm"], "udpnew", str(scale(30000))]))
        out.append(("connect-tcp", [progs["net_storm"], "tcp", str(scale(10000))]))
    return out


def _elapsed(argv: list[str], log) -> float | None:
    res = run_once(argv)
    if not res["ok"]:
        log(f"    outside: run failed (exit {res['exit']}): {res.get('stderr', '')[-200:]}")
        return None
    return res["elapsed_s"]


def measure(aw, progs: dict[str, str], n_sandboxes: int, rounds: int, log) -> dict:
    work = storms(progs)
    if not work:
        return {"unavailable": "exec_storm and net_storm did not build"}
    top = cgroups.require_mount() / f"awbench-outside-{os.getpid()}.slice"
    session = top.joinpath(*DEPTH)
    session.mkdir(parents=True)
    try:
        return _measure(aw, work, session, n_sandboxes, rounds, log)
    finally:
        cgroups.kill_all(top)
        cgroups.wait_empty(top, timeout=10)
        if not cgroups.remove(top):
            log(f"  outside cleanup: {top} could not be removed")


def _measure(aw, work: list[tuple[str, list[str]]], session: Path, n_sandboxes: int, rounds: int, log) -> dict:
    # The storm moves itself into the session cgroup, then execs (the move is not timed).
    work = [(name, ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(session), *argv])
            for name, argv in work]
    data = {name: {"base": [], "traced": []} for name, _ in work}
    for name, argv in work:  # warm-up: page cache, first-run effects
        run_once(argv)
    res: dict = {"sandboxes": n_sandboxes, "rounds": 0, "cgroup_depth": len(DEPTH)}
    for r in range(rounds):
        log(f"  outside round {r + 1}/{rounds}")
        base = {name: _elapsed(argv, log) for name, argv in work}
        run = fleet.FleetRun(aw, n_sandboxes)
        try:
            run.make_sandboxes()
            res.setdefault("start_s", []).append(round(run.start_daemon(), 2))
            traced = {name: _elapsed(argv, log) for name, argv in work}
            if r == 0:  # the kernel's side, once: BPF run time per op (not timed: bpf_stats costs)
                res["kernel"] = {name: kernelcost.of_outsider(run.daemon.pid, argv) for name, argv in work}
        except (RuntimeError, OSError) as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  outside failed: {res['error']}")
            break
        finally:
            run.stop()
        for name, _ in work:
            data[name]["base"].append(base[name])
            data[name]["traced"].append(traced[name])
        res["rounds"] += 1
    res["storms"] = {
        name: {"argv": " ".join([Path(argv[5]).name, *argv[6:]]),
               "ratio": summary(ratios(data[name]["traced"], data[name]["base"])),
               "base_s": summary(data[name]["base"]), "traced_s": summary(data[name]["traced"])}
        for name, argv in work
    }
    return res
