"""Paired statistics of two models scored on the same examples (the challenger against the champion).

Both tests use the per-example outcomes, not only the two accuracies: the examples both models get
right or both get wrong say nothing about which is better, and pairing removes that noise.

* :func:`mcnemar_exact`: the exact McNemar test for binary outcomes. Under the null hypothesis (equal
  accuracy) each discordant example (one model right, the other wrong) is equally likely to favour
  either model, so the count that favours the challenger is Binomial(discordant, 1/2).
* :func:`paired_bootstrap_interval`: a percentile bootstrap interval of the mean per-example
  difference (challenger minus champion), resampling examples (pairs) with replacement; it works for
  binary outcomes and for scores such as judge ratings or latencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Alternative = Literal["greater", "two-sided"]


def discordant_counts(challenger: Sequence[bool], champion: Sequence[bool]) -> tuple[int, int]:
    """``(challenger_only, champion_only)``: examples only the challenger / only the champion got right."""
    if len(challenger) != len(champion):
        raise ValueError(f"paired outcomes differ in length: {len(challenger)} and {len(champion)}")
    challenger_only = sum(1 for a, b in zip(challenger, champion, strict=True) if a and not b)
    champion_only = sum(1 for a, b in zip(challenger, champion, strict=True) if b and not a)
    return challenger_only, champion_only


def mcnemar_exact(challenger_only: int, champion_only: int, alternative: Alternative = "greater") -> float:
    """The exact McNemar p-value from the discordant counts.

    ``greater``: the probability, with equal accuracies, of the challenger winning at least
    ``challenger_only`` of the discordant examples (the superiority test). ``two-sided``: twice the
    smaller tail, capped at 1. No discordant example gives 1.0.
    """
    if challenger_only < 0 or champion_only < 0:
        raise ValueError("discordant counts cannot be negative")
    n = challenger_only + champion_only
    if n == 0:
        return 1.0
    if alternative == "greater":
        return _binomial_upper_tail(challenger_only, n)
    smaller = min(challenger_only, champion_only)
    return min(1.0, 2 * _binomial_upper_tail(n - smaller, n))


def paired_bootstrap_interval(
    challenger: Sequence[float],
    champion: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(challenger - champion) over resampled example pairs."""
    if len(challenger) != len(champion):
        raise ValueError(f"paired outcomes differ in length: {len(challenger)} and {len(champion)}")
    if not challenger:
        raise ValueError("no paired outcomes to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    import numpy as np

    differences = np.asarray(challenger, dtype=float) - np.asarray(champion, dtype=float)
    n = len(differences)
    rng = np.random.default_rng(seed)
    # Resample in blocks so 10,000 resamples of thousands of examples stay within a few MB.
    block = max(1, 2_000_000 // n)
    means = np.concatenate(
        [
            differences[rng.integers(0, n, size=(min(block, resamples - start), n))].mean(axis=1)
            for start in range(0, resamples, block)
        ]
    )
    means.sort()
    tail = (1 - confidence) / 2
    low = means[max(0, math.floor(tail * resamples))]
    high = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return float(low), float(high)


def _binomial_upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, then one division)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
