"""Detection latency: from the kernel's time of the syscall to the alert line
being read from agentwatch's stdout.

A tunnel stand-in (progs/tunnel.c) repeats what a reverse tunnel's client
does, every 10 ms: (a) a TCP connect to the tunnel port, caught by the
benchmark rule bench-tunnel-port-connect (bench/rules/latency.yaml), and (b)
an exec of `ssh -N -R 8080:localhost:80 ...` (a copy of /bin/true named
ssh), caught by the default rule ssh-remote-forward. Both run idle and
again beside an exec storm in the same agent. The latency of one alert is
the wall-clock time its line was read minus its `time` (the kernel
timestamp of the evidence record, which agentwatch converts to wall time
with an offset taken at its start); the stand-in prints CLOCK_REALTIME just
before each syscall, which checks that conversion.
"""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from awcli import ROOT, Agentwatch, parse_time_ns
from stats import percentile

HERE = Path(__file__).resolve().parent
BENCH_RULES = HERE / "rules" / "latency.yaml"
TUNNEL_PORT = 2222


def default_rules_dir() -> str:
    return os.environ.get("BENCH_DEFAULT_RULES", str(ROOT / "rules"))


def read_alerts(argv: list[str], timeout: float) -> tuple[list[tuple[int, dict]], bytes, int]:
    """Run argv; every stdout line that is an alert, with the wall-clock ns it was read."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, bufsize=0)
        fd = proc.stdout.fileno()
        stamped: list[tuple[int, bytes]] = []
        pending = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = os.read(fd, 1 << 16)
            now = time.time_ns()
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            stamped.extend((now, line) for line in lines)
        else:
            proc.kill()
        code = proc.wait()
        err.seek(0)
        errtext = err.read()
    alerts = []
    for t, line in stamped:
        if line.startswith(b"{"):
            rec = orjson.loads(line)
            if rec.get("kind") == "alert":
                alerts.append((t, rec))
    return alerts, errtext, code


def scenario(aw: Agentwatch, progs: dict[str, str], kind: str, count: int, load: list[str] | None,
             workdir: Path) -> dict:
    tunnel = progs["tunnel"]
    if kind == "connect":
        rule = "bench-tunnel-port-connect"
        cmd = [tunnel, "connect", str(TUNNEL_PORT), str(count), "10"]
    else:
        rule = "ssh-remote-forward"
        fake_ssh = workdir / "ssh"
        if not fake_ssh.exists():
            shutil.copy("/bin/true", fake_ssh)
        cmd = [tunnel, "exec", str(count), "10", str(fake_ssh), "ssh", "-N", "-R", "8080:localhost:80",
               "tunnel@198.51.100.7"]
    if load:
        script = " ".join(load) + " > /dev/null & " + " ".join(cmd) + "; wait"
        cmd = ["/bin/sh", "-c", script]
    argv = aw.run(cmd, output=None, rules=[default_rules_dir(), str(BENCH_RULES)])
    alerts, errtext, code = read_alerts(argv, timeout=120)
    marks = sorted(int(line.split()[1]) for line in errtext.splitlines() if line.startswith(b"T "))
    lat_ms, clock_us, steady_ms = [], [], []
    first_ns = None
    for read_ns, rec in alerts:
        if rec.get("rule") != rule:
            continue
        t_ns = parse_time_ns(rec["time"])
        first_ns = first_ns or t_ns
        lat_ms.append((read_ns - t_ns) / 1e6)
        if t_ns - first_ns >= 1_000_000_000:
            steady_ms.append((read_ns - t_ns) / 1e6)
        i = bisect.bisect_right(marks, t_ns) - 1
        if i >= 0:
            clock_us.append((t_ns - marks[i]) / 1e3)
    return {
        "rule": rule,
        "expected": count,
        "alerts": len(lat_ms),
        "other_alerts": sorted({r.get("rule") for _, r in alerts if r.get("rule") != rule}),
        "exit": code,
        "p50_ms": percentile(lat_ms, 50),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": max(lat_ms) if lat_ms else None,
        # alerts whose syscall came 1 s or more after the first one: without start-up effects
        "steady_p99_ms": percentile(steady_ms, 99),
        # kernel time of the syscall minus the stand-in's clock just before it: should be
        # small and positive if the kernel-to-wall conversion is right
        "clock_check_us_p50": percentile(clock_us, 50),
        "stderr": errtext.decode(errors="replace")[-300:] if not lat_ms else "",
        "samples_ms": lat_ms,
    }


def measure(aw: Agentwatch, progs: dict[str, str], count: int, log) -> dict:
    if not aw.has_rules:
        return {"unavailable": "agentwatch has no --rules flag yet"}
    if "tunnel" not in progs:
        return {"unavailable": "tunnel program did not build"}
    out = {}
    load = [progs["exec_storm"], "2000"] if "exec_storm" in progs else None
    with tempfile.TemporaryDirectory(prefix="awbench-lat-") as d:
        for kind in ("connect", "exec"):
            for loaded in (False, True):
                if loaded and not load:
                    continue
                name = f"{kind}{' + exec storm' if loaded else ''}"
                log(f"  {name}")
                out[name] = scenario(aw, progs, kind, count, load if loaded else None, Path(d))
    return out
