"""Compile the workload programs (bench/progs/*.c) into a scratch folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROGS = HERE / "progs"
GPU_SIM_DIR = ROOT / "tests" / "kernel" / "progs"

# program -> extra gcc flags
PROGRAMS = {
    "exec_storm": [],
    "net_storm": [],
    "agent_mix": [],
    "sleepers": [],
    "tunnel": [],
    "connect_storm": [],
    "gpu_storm": [f"-I{GPU_SIM_DIR}", "-Wno-unused-function"],
}


def build_all(out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Compile every program; returns ({name: path}, {name: why it did not build})."""
    built, failed = {}, {}
    for name, flags in PROGRAMS.items():
        if name == "gpu_storm" and not (GPU_SIM_DIR / "gpu_sim.c").exists():
            failed[name] = f"{GPU_SIM_DIR / 'gpu_sim.c'} not found"
            continue
        exe = out / name
        cmd = ["gcc", "-O2", "-Wall", f"-I{PROGS}", *flags, "-o", str(exe), str(PROGS / f"{name}.c")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            failed[name] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "gcc failed"
        else:
            built[name] = str(exe)
    return built, failed
