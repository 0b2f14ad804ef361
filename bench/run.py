"""make bench: every benchmark, one after the other, figures printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = ["drain_rate.py"]

if __name__ == "__main__":
    code = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        code |= subprocess.run([sys.executable, str(HERE / name)]).returncode
    sys.exit(code)
