"""The settle wait: a night's extraction starts ``log_source.settle_minutes`` after its window ends.

A run fires when its window ends, but logs of the window's last minutes are still on their way
(ingest lag, the index's refresh interval, shippers that buffer): read at once, they would be missed.
:class:`SettleWait` holds the run until ``interval_end + settle`` by deferring to Airflow's triggerer,
so no worker slot waits; a backfill or a re-run of an old day finds the moment passed and goes on at
once. Logs later still are caught by the next night's recount (:mod:`flywheel.extract.recount`).

This module is imported by the DAG file: it imports nothing heavy (the trigger on first use).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from flywheel.intervals import run_interval

if TYPE_CHECKING:
    from airflow.sdk import Context


def settled_at(interval_end: datetime, settle_minutes: int) -> datetime:
    """When the window ending at ``interval_end`` may be read."""
    return interval_end + timedelta(minutes=settle_minutes)


class SettleWait(BaseOperator):
    """Wait, deferred, until the run's data interval ended ``settle_minutes`` ago.

    The interval is the one the run owns (:func:`flywheel.intervals.run_interval`): a manual run without
    a logical date waits for the end of the latest complete interval, not for its trigger time.
    Returns the moment it waited for (ISO text).
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, schedule: str, settle_minutes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schedule = schedule
        self.settle_minutes = settle_minutes

    def execute(self, context: Context) -> str | None:
        _, end = run_interval(
            context.get("data_interval_start"),
            context.get("data_interval_end"),
            context["dag_run"].run_after,
            self.schedule,
        )
        target = settled_at(end, self.settle_minutes)
        if datetime.now(UTC) >= target:
            self.log.info("window ended %s, settled at %s: reading now", end.isoformat(), target.isoformat())
            return target.isoformat()
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.log.info(
            "window ended %s: waiting %d minutes for late logs, until %s",
            end.isoformat(),
            self.settle_minutes,
            target.isoformat(),
        )
        self.defer(
            trigger=DateTimeTrigger(moment=target),
            method_name="execute_complete",
            kwargs={"target": target.isoformat()},
            timeout=self.execution_timeout,
        )
        return None  # not reached: defer() raises

    def execute_complete(self, context: Context, event: Any = None, target: str | None = None) -> str | None:
        """The trigger fired: the window has settled."""
        self.log.info("settled at %s: reading now", target)
        return target
