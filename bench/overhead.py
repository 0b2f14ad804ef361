"""Slowdown of each workload under each tracer, against no tracing.

Interleaved pairs: for every traced configuration, in every round, a block
of untraced runs comes right before the traced block (for aw-run, which
needs no start, untraced and traced runs alternate workload by workload), so
each ratio compares runs minutes, not tens of minutes, apart. The figure is
the median of the per-round ratios, with their min and max.
"""

from __future__ import annotations

import time

from stats import ratios, summary
from tracers import Tracer
from workloads import Workload, run_once


def _run(argv: list[str], log) -> dict | None:
    res = run_once(argv)
    if not res["ok"]:
        log(f"    run failed (exit {res['exit']}): {res.get('stderr', '')[-200:]}")
        return None
    return res


def measure(tracers: list[Tracer], workloads: list[Workload], rounds: int, deadline: float, log) -> dict:
    """Returns {tracer: {workload: {"base": [s], "traced": [s], "tracer_cpu": [s]}}} plus notes."""
    data = {t.name: {w.name: {"base": [], "traced": [], "tracer_cpu_s": []} for w in workloads} for t in tracers}
    notes: list[str] = []
    # One untraced warm-up pass: page cache, first-run effects.
    for w in workloads:
        run_once(w.argv)
    done_rounds = 0
    round_times = []
    for r in range(rounds):
        if done_rounds >= 3 and round_times and time.monotonic() + max(round_times) > deadline:
            notes.append(f"overhead: stopped after {done_rounds} rounds to stay within the time budget")
            break
        t_round = time.monotonic()
        order = tracers[r % len(tracers):] + tracers[: r % len(tracers)]
        for t in order:
            if t.unavailable:
                continue
            log(f"  round {r + 1}/{rounds}: {t.name}")
            if not t.host_wide:
                for w in workloads:
                    base = _run(w.argv, log)
                    traced = _run(t.wrap(w.argv), log)
                    _record(data[t.name][w.name], base, traced, per_run_cpu=True)
                continue
            base_block = {w.name: _run(w.argv, log) for w in workloads}
            try:
                t.start()
            except RuntimeError as exc:
                t.unavailable = str(exc)
                notes.append(f"{t.name}: {exc}")
                continue
            except BaseException:  # interrupted while starting: undo what was started
                t.stop()
                raise
            try:
                traced_block = {w.name: _run(w.argv, log) for w in workloads}
            finally:
                t.stop()
            for w in workloads:
                _record(data[t.name][w.name], base_block[w.name], traced_block[w.name], per_run_cpu=False)
        done_rounds += 1
        round_times.append(time.monotonic() - t_round)
    return {"data": data, "rounds": done_rounds, "round_s": round_times, "notes": notes}


def _record(slot: dict, base: dict | None, traced: dict | None, per_run_cpu: bool) -> None:
    slot["base"].append(base["elapsed_s"] if base else None)
    slot["traced"].append(traced["elapsed_s"] if traced else None)
    if per_run_cpu and traced:
        # agentwatch run's rusage covers the workload it reaped: take the workload's own away.
        slot["tracer_cpu_s"].append(max(0.0, traced["tree_cpu_s"] - traced["cpu_s"]))


def summarize(result: dict) -> dict:
    out = {}
    for tracer, per_w in result["data"].items():
        out[tracer] = {}
        for w, slot in per_w.items():
            out[tracer][w] = {
                "ratio": summary(ratios(slot["traced"], slot["base"])),
                "base_s": summary(slot["base"]),
                "traced_s": summary(slot["traced"]),
                "tracer_cpu_s": summary(slot["tracer_cpu_s"]),
            }
    return out
