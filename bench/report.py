"""results.json and the Markdown table (results.md, and stdout)."""

from __future__ import annotations

import json
from pathlib import Path

from stats import fmt_spread

TRACER_ORDER = ["aw-run", "aw-watch", "bpftrace", "auditd"]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _num(v, digits=1, unit=""):
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def targets(res: dict) -> list[dict]:
    """Each target with what was measured and whether it was met (None: not measured)."""
    out = []
    ov = res.get("overhead", {}).get("summary", {}).get("aw-run", {})

    def ratio(w):
        s = (ov.get(w) or {}).get("ratio")
        return s["median"] if s else None

    for w, limit in (("connect-tcp", 1.10), ("connect-udp", 1.10), ("exec", 1.02)):
        r = ratio(w)
        out.append({"target": f"aw-run slowdown, {w} <= {limit:.2f}x", "measured": _num(r, 2, "x"),
                    "met": None if r is None else r <= limit})
    loss = res.get("loss", {}).get("summary", {})
    udp = loss.get("connect-udp")
    if udp:
        missing = udp["missing"]["max"]
        lost = udp["lost_records"]["max"]
        out.append({"target": "no loss at the highest rate (UDP connect storm, "
                              f"{udp['offered_rate']['median'] / 1000:.0f}k/s)",
                    "measured": f"{missing} of {udp['expected']} missing (worst run), kernel lost {lost}",
                    "met": missing == 0 and lost == 0})
    else:
        out.append({"target": "no loss at the highest rate", "measured": "n/a", "met": None})
    lat = res.get("latency", {}).get("scenarios", {})
    worst = [v["p99_ms"] for v in lat.values() if isinstance(v, dict) and v.get("p99_ms") is not None]
    idle = (lat.get("connect") or {}).get("p99_ms")
    steady = [v["steady_p99_ms"] for v in lat.values() if isinstance(v, dict) and v.get("steady_p99_ms") is not None]
    out.append({"target": "detection latency p99 < 50 ms",
                "measured": f"{_num(idle, 1, ' ms')} (tunnel connect, idle); worst scenario "
                            f"{_num(max(worst) if worst else None, 1, ' ms')}; after each run's first second "
                            f"{_num(max(steady) if steady else None, 1, ' ms')} (worst)",
                "met": None if not worst else max(worst) < 50})
    rp = (res.get("replay") or {}).get("events_per_s")
    out.append({"target": "replay >= 200k events/s", "measured": _num(rp["median"] / 1000, 1, "k/s") if rp else "n/a",
                "met": None if not rp else rp["median"] >= 200_000})
    mem = (res.get("memory") or {}).get("loaded")
    pd = max(mem["peak_private_dirty_mb"], mem.get("live_private_dirty_mb") or 0) if mem and mem.get("ok") else None
    out.append({"target": f"Private_Dirty < 100 MB with {res.get('memory', {}).get('n', '10k')} live processes",
                "measured": _num(pd, 1, " MB"), "met": None if pd is None else pd < 100})
    armed = res.get("armed", {}).get("all")
    out.append({"target": "start to armed < 3 s", "measured": fmt_spread(armed, 2, " s") if armed else "n/a",
                "met": None if not armed else armed["median"] < 3})
    return out


def markdown(res: dict) -> str:
    info = res["system"]
    L = ["# agentwatch benchmarks", ""]
    L.append(f"{info['date']} on {info['cpu']} ({info['cpus']} CPUs, {info['memory_gib']} GiB), {info['os']}, "
             f"kernel {info['kernel']}. agentwatch {res['agentwatch']['version']}, Python {info['python']}, "
             f"bcc {info['bcc']}, {info['bpftrace']}, {info['auditd']}. Load average at start "
             f"{info['loadavg_start'][0]:.2f}, at end {info.get('loadavg_end', [0])[0]:.2f}. "
             f"Took {res['duration_s']:.0f} s.")
    L.append("")
    L.append("Workloads time themselves (CLOCK_MONOTONIC around the work only). Figures are medians "
             "[min-max] over interleaved rounds; ratios are taken pair by pair (each traced run against "
             "the untraced run right before it), then the median.")
    L += ["", "## Targets", ""]
    L += _md_table(["target", "measured", "met"],
                   [[t["target"], t["measured"], {True: "met", False: "**missed**", None: "n/a"}[t["met"]]]
                    for t in targets(res)])

    ov = res.get("overhead")
    if ov:
        L += ["", f"## Slowdown vs no tracing ({ov['rounds']} rounds)", ""]
        names = [t for t in TRACER_ORDER if t in ov["summary"]]
        rows = []
        for w in ov["workloads"]:
            base = None
            for t in names:
                base = base or ov["summary"][t][w["name"]]["base_s"]
            row = [f"{w['name']} ({w['description']})", fmt_spread(base, 3, " s")]
            for t in names:
                row.append(fmt_spread(ov["summary"][t][w["name"]]["ratio"], 2, "x"))
            rows.append(row)
        L += _md_table(["workload", "untraced"] + names, rows)
        L.append("")
        for t in names:
            L.append(f"- **{t}**: {ov['tracers'][t]['description']}"
                     + (f" (not run: {ov['tracers'][t]['unavailable']})" if ov["tracers"][t]["unavailable"] else ""))
        cpu_rows = []
        for w in ov["workloads"]:
            s = ov["summary"].get("aw-run", {}).get(w["name"], {}).get("tracer_cpu_s")
            cpu_rows.append(fmt_spread(s, 2, " s"))
        if any(c != "n/a" for c in cpu_rows):
            L.append("- agentwatch run's own CPU per run (start and compile included): " + ", ".join(
                f"{w['name']} {c}" for w, c in zip(ov["workloads"], cpu_rows)))
        for t in ("aw-watch", "bpftrace", "auditd"):
            blocks = ov["tracers"].get(t, {}).get("blocks") or []
            if blocks:
                cpu = [b.get("cpu_s") for b in blocks if b.get("cpu_s") is not None]
                extra = ""
                if "records" in blocks[0]:
                    extra = (f", records per block {int(sorted(b['records'] for b in blocks)[len(blocks) // 2])}"
                             f", lost {max(b.get('lost', 0) for b in blocks)} (worst block)")
                L.append(f"- {t} host-wide, per block of all workloads: CPU "
                         f"{fmt_spread({'median': sorted(cpu)[len(cpu) // 2], 'min': min(cpu), 'max': max(cpu), 'n': len(cpu)}, 2, ' s') if cpu else 'n/a'}{extra}")
        for n in ov.get("notes", []):
            L.append(f"- {n}")

    loss = res.get("loss")
    if loss and loss.get("summary"):
        L += ["", "## Events and loss, agentwatch run --events (tmpfs file)", ""]
        rows = []
        for name, s in loss["summary"].items():
            if name.startswith("_") or not s:
                continue
            rate_k = {k: (v / 1000 if k != "n" else v) for k, v in s["offered_rate"].items()}
            rows.append([name, fmt_spread(rate_k, 1, "k/s"),
                         s["expected"], fmt_spread(s["received"], 0), fmt_spread(s.get("records"), 0),
                         fmt_spread(s["missing"], 0),
                         fmt_spread(s["lost_records"], 0), fmt_spread(s["cpu_per_1k"], 3, " s"),
                         fmt_spread(s["peak_rss_mb"], 0, " MB"), fmt_spread(s["peak_private_dirty_mb"], 0, " MB")])
        L += _md_table(["storm", "offered rate", "events expected", "received", "records", "missing",
                        "lost (kernel count)",
                        "agentwatch CPU per 1k events", "peak RSS", "peak Private_Dirty"], rows)
        sweep = loss.get("sweep")
        if sweep:
            L.append("")
            L.append(f"Paced UDP connects ({sweep['seconds']} s each, root-namespace loopback), agentwatch run "
                     "--events: " + "; ".join(
                         f"{r['rate'] / 1000:g}k/s: {r['received']}/{r['made']} received, {r['lost_records']} lost"
                         if r.get("ok") else f"{r['rate'] / 1000:g}k/s: failed" for r in sweep["rows"])
                     + f". Highest rate drained with no loss: **{_num(sweep['highest_clean_rate'], 0, '/s')}**.")
        idle = loss["summary"].get("_idle")
        if idle:
            L.append("")
            L.append(f"Idle run (`agentwatch run --events -- exec_storm 0`): CPU {fmt_spread(idle['aw_cpu_s'], 2, ' s')}, "
                     f"wall {fmt_spread(idle['aw_wall_s'], 2, ' s')}, peak Private_Dirty "
                     f"{fmt_spread(idle['peak_private_dirty_mb'], 0, ' MB')}; CPU per 1k events above is net of it.")

    lat = res.get("latency")
    if lat:
        L += ["", "## Detection latency (syscall kernel time to alert line read)", ""]
        if lat.get("unavailable"):
            L.append(f"n/a: {lat['unavailable']}")
        else:
            rows = []
            for name, s in lat["scenarios"].items():
                rows.append([name, s["rule"], f"{s['alerts']}/{s['expected']}", _num(s["p50_ms"], 2, " ms"),
                             _num(s["p99_ms"], 1, " ms"), _num(s["max_ms"], 1, " ms"),
                             _num(s.get("steady_p99_ms"), 1, " ms"), _num(s["clock_check_us_p50"], 0, " us")])
            L += _md_table(["scenario", "rule", "alerts", "p50", "p99", "max", "p99 after the first 1 s",
                            "clock check"], rows)
            L.append("")
            L.append("Clock check: the record's kernel time minus CLOCK_REALTIME read by the stand-in just "
                     "before the syscall (exec: before fork); small and positive means the conversion holds.")

    mem = res.get("memory")
    if mem and not mem.get("unavailable"):
        L += ["", "## Memory with live processes in the agent", ""]
        rows = []
        for label, key in (("0 processes", "base"), (f"{mem['n']} sleeping processes", "loaded")):
            m = mem[key]
            rows.append([label, m.get("forks_recorded", "n/a"), _num(m["peak_rss_mb"], 0, " MB"),
                         _num(m["peak_private_dirty_mb"], 1, " MB"), _num(m.get("live_private_dirty_mb"), 1, " MB"),
                         _num(m["bpf_maps_mb"], 1, " MB"), "ok" if m["ok"] else f"failed: {m['error']}"])
        L += _md_table(["agent holds", "fork records", "peak RSS", "peak Private_Dirty",
                        "Private_Dirty with them live", "BPF maps (memlock)", "run"], rows)
        if mem.get("private_dirty_per_process_bytes") is not None:
            L.append("")
            L.append(f"Private_Dirty per tracked process: {mem['private_dirty_per_process_bytes']:.0f} bytes "
                     "(live minus base, over the processes). The peak is set by the BPF compile (clang/LLVM) at start.")

    armed = res.get("armed")
    if armed:
        L += ["", "## Start to armed", ""]
        L.append("From the start of the process to the first record it writes (agentwatch), the BEGIN probe "
                 "(bpftrace), rules loaded (auditd):")
        L.append("")
        L += _md_table(["tracer", "armed"], [[k, fmt_spread(v, 2, " s")] for k, v in armed.items() if k != "all"])

    rp = res.get("replay")
    if rp:
        L += ["", "## Rule engine offline (agentwatch replay, default rules)", ""]
        if rp.get("unavailable"):
            L.append(f"n/a: {rp['unavailable']}")
        else:
            L.append(f"{rp['records']} records ({rp['file_mb']:.0f} MB; copies of a {rp['template_records']}-record "
                     f"recording: {', '.join(f'{k} {v}' for k, v in rp['template_types'].items())}), "
                     f"{rp['alerts']} alerts: **{fmt_spread({k: (v / 1000 if k != 'n' else v) for k, v in rp['events_per_s'].items()}, 1, 'k events/s')}** "
                     f"(net of {rp['startup_s']:.2f} s start), wall {fmt_spread(rp['wall_s'], 2, ' s')}. {rp.get('note', '')}")

    notes = res.get("notes") or []
    if notes:
        L += ["", "## Notes", ""]
        L += [f"- {n}" for n in notes]
    return "\n".join(L) + "\n"


def write(res: dict, here: Path) -> str:
    md = markdown(res)
    (here / "results.md").write_text(md)
    (here / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return md
