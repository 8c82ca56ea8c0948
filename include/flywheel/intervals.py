"""Data intervals of a workload's daily schedule, computed the way CronDataIntervalTimetable does."""

from __future__ import annotations

from datetime import UTC, date, datetime

from croniter import croniter

Interval = tuple[datetime, datetime]


def latest_intervals(schedule: str, count: int, now: datetime | None = None) -> list[Interval]:
    """The ``count`` most recent complete data intervals ``[start, end)`` before ``now``, oldest first.

    The newest one is the interval a scheduled run at the last cron fire at or before ``now`` owns.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    latest_end = now if croniter.match(schedule, now) else croniter(schedule, now).get_prev(datetime)
    it = croniter(schedule, latest_end)
    ends = [latest_end.astimezone(UTC)] + [it.get_prev(datetime).astimezone(UTC) for _ in range(count)]
    return [(ends[i + 1], ends[i]) for i in reversed(range(count))]


def run_interval(
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime,
    schedule: str,
) -> Interval:
    """The data interval a DAG run owns.

    Scheduled runs, backfills and manual runs with a logical date carry their interval. A manual run
    triggered without a logical date has none: it owns the latest complete interval before it was
    triggered (``run_after``), as a manual run with logical date "now" would.
    """
    if data_interval_start is not None and data_interval_end is not None:
        return data_interval_start, data_interval_end
    return latest_intervals(schedule, 1, run_after)[0]


def partition_day(interval_start: datetime) -> date:
    """The day a data interval's outputs are filed under: the UTC date the interval starts on."""
    return interval_start.astimezone(UTC).date()
