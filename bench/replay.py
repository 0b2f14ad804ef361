"""Rule-engine throughput offline: `agentwatch replay` of a large recorded file.

A real recording first: `agentwatch run --events` around the agent-like mix,
a small exec storm, TCP connects and the tunnel stand-ins (so the file holds
exec, fork, exit, connect and the newer record types in realistic
proportions, and some records the default rules fire on). The recording is
then copied end to end until it holds the target count: each copy moves
every time forward past the previous copy and gives every process a new pid
(and key) and the agent a new id, so to the engine it is a long run of one
host with many agents. Throughput is records / (wall time - the time to
replay a 10-record file), with the default rules, alerts to a tmpfs file.
Each repetition replays the file with --jobs 1 (the keys without a prefix)
and, where the command has it, --jobs 2 (the jobs2_* keys; jobs2_same_output
says whether the two outputs are byte for byte the same).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from awcli import Agentwatch, parse_time_ns
from stats import summary
from tracers import SHM

# Spots in an orjson-written record that a copy changes.
_HOLES = re.compile(
    rb'"(time)":"([0-9T:.Z-]+)"'
    rb'|"(pid|ppid|root_pid)":(\d+)'
    rb'|"(key)":"(\d+):(\d+)"'
    rb'|"(id)":"agent-([0-9a-f]+)"'
)
PID_STRIDE = 1 << 12


class Template:
    """A recording cut into literal bytes and holes, so a copy is a join."""

    def __init__(self, lines: list[bytes]):
        self.records = []
        times = []
        for line in lines:
            parts: list = []
            last = 0
            for m in _HOLES.finditer(line):
                parts.append(line[last:m.start()])
                if m.group(1):
                    t = parse_time_ns(m.group(2).decode())
                    times.append(t)
                    parts.append(("time", t))
                elif m.group(3):
                    parts.append(("num", m.group(3), int(m.group(4))))
                elif m.group(5):
                    parts.append(("key", int(m.group(6)), int(m.group(7))))
                else:
                    parts.append(("id", m.group(9)))
                last = m.end()
            parts.append(line[last:])
            self.records.append(parts)
        self.t_min, self.t_max = min(times), max(times)
        self._prefix: dict[int, bytes] = {}

    def _rfc3339(self, ns: int) -> bytes:
        sec, frac = divmod(ns, 1_000_000_000)
        p = self._prefix.get(sec)
        if p is None:
            p = self._prefix[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        return b'"time":"%s.%09dZ"' % (p, frac)

    def copy(self, k: int) -> list[bytes]:
        dt = k * (self.t_max - self.t_min + 1_000_000_000)
        dpid = k * PID_STRIDE
        dticks = k * ((self.t_max - self.t_min) // 10_000_000 + 100)
        agent = b"%012x" % (0xB0000000 + k)
        out = []
        for parts in self.records:
            buf = []
            for p in parts:
                if p.__class__ is bytes:
                    buf.append(p)
                elif p[0] == "time":
                    buf.append(self._rfc3339(p[1] + dt))
                elif p[0] == "num":
                    v = p[2]
                    buf.append(b'"%s":%d' % (p[1], v + dpid if v > 1 else v))
                elif p[0] == "key":
                    buf.append(b'"key":"%d:%d"' % (p[1] + dpid, p[2] + dticks))
                else:
                    buf.append(b'"id":"agent-%s"' % agent)
            out.append(b"".join(buf))
        return out


def record(aw: Agentwatch, progs: dict[str, str], mix_dir: str | None, mix_script: str | None,
           path: Path, workdir: Path) -> tuple[bool, str]:
    fake_ssh = workdir / "ssh"
    shutil.copy("/bin/true", fake_ssh)
    steps = []
    if mix_dir and "agent_mix" in progs:
        steps.append(f"{progs['agent_mix']} {mix_dir} {mix_script}")
    if "exec_storm" in progs:
        steps.append(f"{progs['exec_storm']} 200")
    if "net_storm" in progs:
        steps.append(f"{progs['net_storm']} tcp 300")
    if "tunnel" in progs:
        steps.append(f"{progs['tunnel']} connect 2222 20 1")
        steps.append(f"{progs['tunnel']} exec 10 1 {fake_ssh} ssh -N -R 8080:localhost:80 tunnel@198.51.100.7")
    script = "; ".join(steps) + " > /dev/null 2>&1"
    proc = subprocess.run(aw.run(["/bin/sh", "-c", script], output=str(path), events=True),
                          capture_output=True, timeout=300)
    return proc.returncode == 0, proc.stderr.decode(errors="replace")[-300:]


def build_file(template: Template, target: int, path: Path) -> int:
    n = 0
    with path.open("wb") as f:
        k = 0
        while n < target:
            lines = template.copy(k)[: target - n]
            f.write(b"\n".join(lines) + b"\n")
            n += len(lines)
            k += 1
    return n


def timed_replay(aw: Agentwatch, path: Path, timeout: float, jobs: int = 1) -> tuple[float | None, int, str]:
    wall, alerts, err, _ = timed_replay_digest(aw, path, timeout, jobs)
    return wall, alerts, err


def timed_replay_digest(aw: Agentwatch, path: Path, timeout: float, jobs: int = 1):
    """(wall s or None, alerts, error, sha1 of the output) of one `agentwatch replay`."""
    out = SHM / f"awbench-replay-out-{os.getpid()}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [*aw.replay(str(path)), "--output", str(out)] + (["--jobs", str(jobs)] if jobs != 1 else [])
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        out.unlink(missing_ok=True)
        return None, 0, f"timed out after {timeout:.0f} s", ""
    wall = time.monotonic() - t0
    alerts = 0
    digest = hashlib.sha1()
    if out.exists():
        with out.open("rb") as f:
            for line in f:
                digest.update(line)
                alerts += b'"kind":"alert"' in line
        out.unlink()
    if proc.returncode:
        return None, alerts, proc.stderr.decode(errors="replace")[-300:], ""
    return wall, alerts, "", digest.hexdigest()


def has_jobs(aw: Agentwatch) -> bool:
    try:
        proc = subprocess.run([*aw.cmd, "replay", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--jobs" in proc.stdout


def measure(aw: Agentwatch, progs: dict[str, str], mix, target: int, time_cap: float, reps: int, log) -> dict:
    if not aw.has_replay:
        return {"unavailable": "agentwatch has no replay command yet"}
    with tempfile.TemporaryDirectory(prefix="awbench-replay-", dir=SHM) as d:
        d = Path(d)
        rec = d / "recorded.jsonl"
        log("  recording the template run")
        ok, err = record(aw, progs, str(mix.dir) if mix and not mix.error else None,
                         str(mix.script) if mix and not mix.error else None, rec, d)
        lines = [ln for ln in rec.read_bytes().splitlines() if ln and b'"kind":"alert"' not in ln] if rec.exists() else []
        if not ok or not lines:
            return {"unavailable": f"recording failed: {err}"}
        types: dict[str, int] = {}
        for ln in lines:
            r = orjson.loads(ln)
            t = r.get("type") or r.get("status") or r.get("kind")
            types[t] = types.get(t, 0) + 1
        template = Template(lines)
        tiny = d / "tiny.jsonl"
        build_file(template, 10, tiny)
        startup = [timed_replay(aw, tiny, 120)[0] for _ in range(2)]
        startup_s = min(s for s in startup if s is not None) if any(startup) else 0.0
        # A first pass on 50k records tells whether the full file fits the time cap.
        probe = d / "probe.jsonl"
        n_probe = build_file(template, min(50_000, target), probe)
        log(f"  replay of {n_probe} records (rate probe)")
        wall, _, err = timed_replay(aw, probe, time_cap)
        if wall is None:
            return {"unavailable": f"replay failed: {err}"}
        rate = n_probe / max(1e-6, wall - startup_s)
        jobs2 = has_jobs(aw)
        passes = reps * (2 if jobs2 else 1)  # jobs 2 is not slower than jobs 1: a bound
        size = target
        note = ""
        if size / rate * passes > time_cap:
            size = max(n_probe, int(rate * time_cap / passes))
            note = f"file cut to {size} records to fit {time_cap:.0f} s (projected {target / rate:.0f} s per replay)"
        big = d / "big.jsonl"
        t0 = time.monotonic()
        n = build_file(template, size, big)
        gen_s = time.monotonic() - t0
        runs, runs2 = [], []
        same = True
        for i in range(reps):
            log(f"  replay of {n} records {i + 1}/{reps}")
            wall, alerts, err, digest = timed_replay_digest(aw, big, time_cap)
            if wall is None:
                return {"unavailable": f"replay failed: {err}"}
            runs.append({"wall_s": wall, "alerts": alerts})
            if jobs2:
                log(f"  replay of {n} records {i + 1}/{reps}, --jobs 2")
                wall2, alerts2, err2, digest2 = timed_replay_digest(aw, big, time_cap, jobs=2)
                if wall2 is None:
                    jobs2 = False
                    note = (note + "; " if note else "") + f"--jobs 2 failed: {err2}"
                    runs2 = []
                else:
                    runs2.append({"wall_s": wall2, "alerts": alerts2})
                    same = same and digest2 == digest
        size_mb = big.stat().st_size / 2**20
    multi = {}
    if runs2:
        multi = {
            "jobs2_wall_s": summary([r["wall_s"] for r in runs2]),
            "jobs2_events_per_s": summary([n / max(1e-6, r["wall_s"] - startup_s) for r in runs2]),
            "jobs2_events_per_s_gross": summary([n / r["wall_s"] for r in runs2]),
            "jobs2_alerts": runs2[0]["alerts"],
            "jobs2_same_output": same,
            "cpus": os.cpu_count(),
        }
    return {
        "records": n,
        "template_records": len(lines),
        "template_types": types,
        "file_mb": size_mb,
        "generate_s": gen_s,
        "startup_s": startup_s,
        "wall_s": summary([r["wall_s"] for r in runs]),
        "events_per_s": summary([n / max(1e-6, r["wall_s"] - startup_s) for r in runs]),
        "events_per_s_gross": summary([n / r["wall_s"] for r in runs]),
        "alerts": runs[0]["alerts"],
        "note": note,
        **multi,
    }
