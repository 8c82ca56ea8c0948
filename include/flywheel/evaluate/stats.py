"""Confidence intervals for the evaluation summary: every metric is reported with its 95% interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (sound at 0 %, 100 % and small n); None when n is 0."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Pinned at the ends: float noise must not leave 0 % or 100 % just outside its own interval.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float] | None:
    """A normal-approximation interval of a mean (judge ratings); None with fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = z * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def proportion(flags: Sequence[bool]) -> dict[str, float | int | None]:
    """``{"value", "ci_low", "ci_high", "n"}`` of the share of True flags (value None when n is 0)."""
    n, hits = len(flags), sum(flags)
    interval = wilson_interval(hits, n)
    return {
        "value": hits / n if n else None,
        "ci_low": round(interval[0], 6) if interval else None,
        "ci_high": round(interval[1], 6) if interval else None,
        "n": n,
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
