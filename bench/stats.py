"""Small statistics: medians with their spread, percentiles, pairwise ratios."""

from __future__ import annotations

import math
import statistics


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None if empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> dict | None:
    """Median, min, max and n of a sample (None when there is none)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def ratios(traced: list[float | None], baseline: list[float | None]) -> list[float]:
    """traced[i] / baseline[i] for each pair where both were measured."""
    return [t / b for t, b in zip(traced, baseline) if t is not None and b]


def fmt_spread(s: dict | None, digits: int = 2, unit: str = "") -> str:
    """'1.05 [1.01-1.09]' (median [min-max]), or 'n/a'."""
    if not s:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if s["n"] == 1:
        return f.format(s["median"]) + unit
    return f"{f.format(s['median'])}{unit} [{f.format(s['min'])}-{f.format(s['max'])}]"
