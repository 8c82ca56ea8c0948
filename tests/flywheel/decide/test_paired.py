"""Paired statistics: exact McNemar p-values and the paired bootstrap interval."""

from __future__ import annotations

import math
import random

import pytest

from flywheel.decide.paired import discordant_counts, mcnemar_exact, paired_bootstrap_interval


def test_discordant_counts_ignore_agreeing_examples() -> None:
    challenger = [True, True, False, False, True]
    champion = [True, False, True, False, False]
    assert discordant_counts(challenger, champion) == (2, 1)


def test_discordant_counts_need_pairs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        discordant_counts([True], [True, False])


def test_mcnemar_one_sided_is_the_binomial_upper_tail() -> None:
    assert mcnemar_exact(10, 0) == pytest.approx(0.5**10)
    assert mcnemar_exact(0, 10) == 1.0
    # 7 of 10 discordant examples favour the challenger: P(X >= 7), X ~ Binomial(10, 1/2) = 176/1024.
    assert mcnemar_exact(7, 3) == pytest.approx(176 / 1024)


def test_mcnemar_two_sided_doubles_the_smaller_tail_and_is_symmetric() -> None:
    assert mcnemar_exact(7, 3, "two-sided") == pytest.approx(2 * 176 / 1024)
    assert mcnemar_exact(3, 7, "two-sided") == mcnemar_exact(7, 3, "two-sided")
    assert mcnemar_exact(5, 5, "two-sided") == 1.0


def test_mcnemar_without_discordant_examples_is_no_evidence() -> None:
    assert mcnemar_exact(0, 0) == mcnemar_exact(0, 0, "two-sided") == 1.0


def test_mcnemar_large_counts_stay_exact() -> None:
    # 600 against 400 discordant examples: far in the tail, computed without float underflow on the way.
    p = mcnemar_exact(600, 400)
    assert 0 < p < 1e-9
    assert math.isfinite(p)


def test_mcnemar_holds_its_level_under_the_null() -> None:
    # Equal accuracies: the one-sided test rejects at 5% in at most 5% of comparisons (exact tests
    # are conservative), up to simulation error.
    rng = random.Random(1)
    rejections = 0
    trials = 2000
    for _ in range(trials):
        challenger = [rng.random() < 0.7 for _ in range(200)]
        champion = [rng.random() < 0.7 for _ in range(200)]
        rejections += mcnemar_exact(*discordant_counts(challenger, champion)) < 0.05
    assert rejections / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_bootstrap_interval_covers_the_observed_difference_and_is_seeded() -> None:
    rng = random.Random(2)
    challenger = [rng.random() < 0.8 for _ in range(300)]
    champion = [rng.random() < 0.6 for _ in range(300)]
    observed = (sum(challenger) - sum(champion)) / 300
    low, high = paired_bootstrap_interval(challenger, champion, resamples=2000, seed=3)
    assert low < observed < high
    assert low > 0  # a 20-point improvement on 300 examples is clearly positive
    assert paired_bootstrap_interval(challenger, champion, resamples=2000, seed=3) == (low, high)


def test_bootstrap_interval_of_identical_outcomes_is_zero() -> None:
    outcomes = [True, False, True, True]
    assert paired_bootstrap_interval(outcomes, outcomes, resamples=500) == (0.0, 0.0)


def test_bootstrap_interval_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no paired outcomes"):
        paired_bootstrap_interval([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_interval([1.0], [0.0], confidence=1.5)
