"""The intervals every evaluation metric is reported with: Wilson for shares, normal for the judge's mean."""

from __future__ import annotations

import pytest

from flywheel.evaluate.stats import mean_interval, percentile, proportion, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        (5, 10, 0.2366, 0.7634),
        (1, 2, 0.0945, 0.9055),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (95, 100, 0.8882, 0.9785),
    ],
)
def test_wilson_interval_known_values(successes: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, n)

    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=1e-4)
    assert interval[1] == pytest.approx(high, abs=1e-4)


def test_wilson_interval_stays_in_zero_one_and_contains_the_share() -> None:
    for n in (1, 2, 3, 7, 50, 1000):
        for successes in range(n + 1):
            interval = wilson_interval(successes, n)
            assert interval is not None
            # Within float noise at 0 % and 100 % (0/3 gives a lower bound of 5.6e-17).
            assert 0.0 <= interval[0] <= successes / n + 1e-12
            assert successes / n - 1e-12 <= interval[1] <= 1.0
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    # The reported (rounded) bounds are exact.
    for n in (1, 3, 7, 50):
        assert proportion([False] * n)["ci_low"] == 0.0
        assert proportion([True] * n)["ci_high"] == 1.0


def test_wilson_interval_narrows_with_more_examples_and_widens_with_z() -> None:
    small, large = wilson_interval(8, 10), wilson_interval(800, 1000)

    assert large[1] - large[0] < small[1] - small[0]
    wide = wilson_interval(8, 10, z=2.576)
    assert wide[0] < small[0] and wide[1] > small[1]


def test_wilson_interval_of_no_examples_is_none() -> None:
    assert wilson_interval(0, 0) is None


def test_proportion_shape() -> None:
    entry = proportion([True, False, True, True])

    assert set(entry) == {"value", "ci_low", "ci_high", "n"}
    assert entry["value"] == 0.75
    assert entry["n"] == 4
    low, high = wilson_interval(3, 4)
    assert entry["ci_low"] == round(low, 6)
    assert entry["ci_high"] == round(high, 6)


def test_proportion_of_nothing_has_no_value() -> None:
    assert proportion([]) == {"value": None, "ci_low": None, "ci_high": None, "n": 0}


def test_proportion_all_and_none() -> None:
    assert proportion([True] * 5)["value"] == 1.0
    assert proportion([True] * 5)["ci_high"] == 1.0
    assert proportion([False] * 5)["value"] == 0.0
    assert proportion([False] * 5)["ci_low"] == 0.0


def test_mean_interval() -> None:
    low, high = mean_interval([1, 2, 3, 4, 5])

    # mean 3, sample standard deviation sqrt(2.5), n 5
    assert (low + high) / 2 == pytest.approx(3.0)
    assert high - 3 == pytest.approx(1.959963984540054 * 2.5**0.5 / 5**0.5)
    assert mean_interval([7.0, 7.0, 7.0]) == (7.0, 7.0)


@pytest.mark.parametrize("values", [[], [8.0]])
def test_mean_interval_needs_two_values(values: list[float]) -> None:
    assert mean_interval(values) is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([4, 1, 3, 2], 50, 2.5),
        ([4, 1, 3, 2], 0, 1),
        ([4, 1, 3, 2], 100, 4),
        ([10, 20], 25, 12.5),
        (list(range(1, 21)), 95, 19.05),
        ([0.5], 95, 0.5),
    ],
)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None
