"""The settle wait: extraction starts `log_source.settle_minutes` after its window ends (deferred)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk.exceptions import TaskDeferred

from flywheel.extract.settle import SettleWait

SCHEDULE = "0 2 * * *"


def context(start: datetime | None, end: datetime | None, run_after: datetime) -> dict:
    """The parts of an Airflow task context the wait reads (a manual run may have no data interval)."""
    return {
        "data_interval_start": start,
        "data_interval_end": end,
        "dag_run": SimpleNamespace(run_after=run_after),
    }


def wait(minutes: int = 30) -> SettleWait:
    return SettleWait(
        task_id="settle", schedule=SCHEDULE, settle_minutes=minutes, execution_timeout=timedelta(hours=3)
    )


def test_a_night_run_defers_until_its_window_has_settled():
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    with pytest.raises(TaskDeferred) as deferred:
        wait(30).execute(context(end - timedelta(days=1), end, end))

    trigger = deferred.value.trigger
    assert isinstance(trigger, DateTimeTrigger)  # the triggerer waits: no worker slot is held
    assert trigger.moment == end + timedelta(minutes=30)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(hours=3)
    target = (end + timedelta(minutes=30)).isoformat()
    assert wait(30).execute_complete({}, event=None, **deferred.value.kwargs) == target


def test_a_backfilled_day_has_settled_long_ago():
    end = datetime(2026, 11, 21, 2, tzinfo=UTC)

    assert (
        wait(30).execute(context(end - timedelta(days=1), end, datetime.now(UTC)))
        == "2026-11-21T02:30:00+00:00"
    )


def test_a_manual_run_without_interval_waits_for_the_latest_complete_window_only():
    # Triggered at 05:00 without a logical date: it owns the window that ended at 02:00, settled at 02:30.
    run_after = datetime(2026, 11, 21, 5, tzinfo=UTC)

    assert wait(30).execute(context(None, None, run_after)) == "2026-11-21T02:30:00+00:00"
