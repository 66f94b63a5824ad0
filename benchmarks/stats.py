"""Small statistics helpers: percentiles and rounding for the printed figures."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0–100) of ``values``, linear between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def r(value: float, digits: int = 1) -> float:
    """Round a figure for the report."""
    return round(value, digits)


def summary(values: Sequence[float]) -> str:
    """``p50 … p95 … p99 … max …`` of millisecond values, for a human line."""
    return (f"p50 {percentile(values, 50):.1f} ms, p95 {percentile(values, 95):.1f} ms, "
            f"p99 {percentile(values, 99):.1f} ms, max {max(values):.1f} ms "
            f"(n={len(values)})")
