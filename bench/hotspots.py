"""Where agentwatch spends its time: py-spy over three runs (not part of make bench).

  .venv/bin/python bench/hotspots.py [replay|live|startup ...]

replay   `agentwatch replay` of 100k records (the replay phase's file)
live     `agentwatch run --events` around a 100k UDP connect storm, then a 2000 exec storm
startup  `agentwatch run -- exec_storm 0`: start to exit, no events
kernel   run time of each BPF program per call (kernel.bpf_stats_enabled and bpftool)

Needs py-spy (`.venv/bin/pip install py-spy`). Prints, per run, the functions
with the most samples on the stack (total) and at the top (self), from
py-spy's collapsed stacks; --native adds BCC/libc frames for `live`.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build  # noqa: E402
import replay  # noqa: E402
from awcli import ROOT, Agentwatch  # noqa: E402
import kernelcost  # noqa: E402

PYSPY = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")


def top(collapsed: Path, n: int = 25) -> str:
    total: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        samples += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        for f in set(frames):
            total[f] += c
        self_[frames[-1]] += c
    out = [f"{samples} samples", "  total%  self%  function"]
    for f, c in total.most_common(n):
        out.append(f"  {100 * c / samples:6.1f} {100 * self_[f] / samples:6.1f}  {f}")
    out.append("  -- most self time --")
    for f, c in self_.most_common(12):
        out.append(f"  {100 * total[f] / samples:6.1f} {100 * c / samples:6.1f}  {f}")
    return "\n".join(out)


def spy(argv: list[str], out: Path, native: bool = False) -> None:
    # --nonblocking: py-spy's default pauses the process (ptrace) for each sample, and a
    # pending stop makes the BPF verifier give up with EAGAIN while agentwatch loads.
    cmd = [PYSPY, "record", "--format", "raw", "--rate", "250", "--nonblocking", "--subprocesses", "-o", str(out)]
    if native:
        cmd.append("--native")
    subprocess.run([*cmd, "--", *argv], check=False, stdout=subprocess.DEVNULL)


def main(modes: list[str]) -> None:
    aw = Agentwatch()
    with tempfile.TemporaryDirectory(prefix="awbench-prof-") as d:
        d = Path(d)
        progs, _ = build.build_all(d)
        if "replay" in modes:
            rec = d / "rec.jsonl"
            replay.record(aw, progs, None, None, rec, d)
            lines = [ln for ln in rec.read_bytes().splitlines() if ln and b'"kind":"alert"' not in ln]
            big = d / "big.jsonl"
            replay.build_file(replay.Template(lines), 100_000, big)
            spy([*aw.replay(str(big)), "--output", "/dev/null"], d / "replay.txt")
            print("== replay of 100k records\n" + top(d / "replay.txt"))
        if "live" in modes:
            script = f"{progs['net_storm']} udp 100000; {progs['exec_storm']} 2000"
            spy(aw.run(["/bin/sh", "-c", script], output="/dev/null", events=True), d / "live.txt",
                native="--native" in modes)
            print("== live: 100k UDP connects + 2000 execs\n" + top(d / "live.txt"))
        if "kernel" in modes:
            # The consumer keeps up with the slow storms (each record wakes it) and falls
            # behind the UDP storm (few wake-ups): the per-call costs differ accordingly.
            for what, script in (
                ("100k UDP connects", f"{progs['net_storm']} udp 100000"),
                ("2000 execs", f"{progs['exec_storm']} 2000"),
                ("300 TCP connects 10 ms apart", f"{progs['tunnel']} connect 2222 300 10 2>/dev/null"),
                ("1M ioctls on a simulated GPU fd", f"{progs['gpu_storm']} 1000000"),
            ):
                print(f"== kernel: BPF run time per program, {what}\n" + kernel_costs(aw, progs, script))
        if "startup" in modes:
            spy(aw.run([progs["exec_storm"], "0"], output="/dev/null"), d / "startup.txt")
            print("== startup\n" + top(d / "startup.txt"))


def kernel_costs(aw: Agentwatch, progs: dict[str, str], script: str) -> str:
    """Run time per call of each agentwatch BPF program over a shell script (kernelcost.py)."""
    k = kernelcost.of_agent(aw, ["/bin/sh", "-c", script])
    if "unavailable" in k:
        return f"n/a: {k['unavailable']}"
    lines = ["program (hook)                    calls   ns/call   total ms"]
    for p in k["programs"]:
        lines.append(f"{p['hook'][:30]:30s} {p['calls']:9d} {p['ns_per_call']:9.0f} "
                     f"{p['calls'] * p['ns_per_call'] / 1e6:10.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:] or ["replay", "live", "startup"])
