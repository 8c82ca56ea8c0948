"""Tests of the data intervals of a daily schedule (the ones CronDataIntervalTimetable would run)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from flywheel.intervals import latest_intervals, run_interval

DAILY = "0 2 * * *"


def utc(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def test_newest_interval_ends_at_the_last_fire() -> None:
    assert latest_intervals(DAILY, 1, now=utc(11, 21, 8)) == [(utc(11, 20, 2), utc(11, 21, 2))]


def test_fire_exactly_at_now_counts() -> None:
    assert latest_intervals(DAILY, 1, now=utc(11, 21, 2)) == [(utc(11, 20, 2), utc(11, 21, 2))]


def test_just_before_the_fire_gives_the_previous_interval() -> None:
    assert latest_intervals(DAILY, 1, now=utc(11, 21, 1, 59, 59)) == [(utc(11, 19, 2), utc(11, 20, 2))]


def test_several_intervals_are_contiguous_and_oldest_first() -> None:
    intervals = latest_intervals(DAILY, 3, now=utc(11, 21, 8))

    assert intervals == [
        (utc(11, 18, 2), utc(11, 19, 2)),
        (utc(11, 19, 2), utc(11, 20, 2)),
        (utc(11, 20, 2), utc(11, 21, 2)),
    ]
    for (start, end), (next_start, _) in itertools.pairwise(intervals):
        assert end - start == timedelta(hours=24)
        assert end == next_start
    assert all(start.tzinfo is not None and end.utcoffset() == timedelta(0) for start, end in intervals)


def test_intervals_cross_a_month_boundary() -> None:
    assert latest_intervals(DAILY, 2, now=utc(12, 1, 3)) == [
        (utc(11, 29, 2), utc(11, 30, 2)),
        (utc(11, 30, 2), utc(12, 1, 2)),
    ]


def test_now_in_another_timezone_is_converted_to_utc() -> None:
    # 09:30 in UTC+7 is 02:30 UTC: the 02:00 UTC fire of that day has happened.
    now = datetime(2026, 11, 21, 9, 30, tzinfo=timezone(timedelta(hours=7)))

    assert latest_intervals(DAILY, 1, now=now) == [(utc(11, 20, 2), utc(11, 21, 2))]


def test_default_now_is_the_current_time() -> None:
    [(start, end)] = latest_intervals(DAILY, 1)

    now = datetime.now(UTC)
    assert end <= now < end + timedelta(days=1)
    assert (end.hour, end.minute) == (2, 0)
    assert end - start == timedelta(days=1)


@pytest.mark.parametrize("count", [0, -1])
def test_count_below_one_raises(count: int) -> None:
    with pytest.raises(ValueError, match="count must be at least 1"):
        latest_intervals(DAILY, count, now=utc(11, 21, 8))


def test_run_interval_keeps_the_runs_own_interval():
    start = datetime(2026, 11, 19, 2, tzinfo=UTC)
    end = datetime(2026, 11, 20, 2, tzinfo=UTC)
    assert run_interval(start, end, datetime(2026, 11, 21, 9, tzinfo=UTC), "0 2 * * *") == (start, end)


def test_manual_run_without_logical_date_owns_the_latest_complete_interval():
    run_after = datetime(2026, 11, 21, 10, 30, tzinfo=UTC)
    assert run_interval(None, None, run_after, "0 2 * * *") == (
        datetime(2026, 11, 20, 2, tzinfo=UTC),
        datetime(2026, 11, 21, 2, tzinfo=UTC),
    )
