"""What the benchmarks share: summary statistics and a record of the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..1); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), digits),
        "p95": round(percentile(values, 0.95), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def machine(load_before: tuple[float, float, float], **extra: Any) -> dict[str, Any]:
    """The machine and its load around a run: figures mean little without the load they met."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **extra,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
