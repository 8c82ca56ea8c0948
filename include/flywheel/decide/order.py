"""Nights validate, train, evaluate and decide in the order of their data intervals, each from the
days and the champion the nights before left.

A backfill runs several nights at once, and next to it the scheduler may start the latest night's
run. Their extractions may run side by side, but the rest of a night may not: validation compares a
day's tool calls with the days before it, the dataset is built from the window's validated days, and
training (warm start), the champion's evaluation and the decision must see the previous night's
decision delivered, or every night decides against the same old champion.

:class:`PreviousNightWait` is the DAG's ``previous_night`` task, between ``extract`` and ``validate``.
It has ``depends_on_past``, so Airflow starts it only once the previous run's (by logical date,
backfill or scheduled) ``previous_night`` has finished: that run has reached the same point and
recorded itself. Then it waits, in reschedule mode (no worker slot held between checks, which start
10 s apart and back off to a minute), until that night's decision is recorded and its promotion
settled. After ``decision.previous_night_wait_minutes`` it goes on anyway with a warning: ``promote``
still never replaces a champion chosen on newer data (:func:`flywheel.deliver.tasks.promote`). It
never fails, so one broken night cannot hold all later nights; Airflow's own failure of a
reschedule-mode check is retried (:data:`RETRIES`).

This module is imported by the DAG file: its database imports are made on first use.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

if TYPE_CHECKING:
    from airflow.sdk import Context

    from flywheel.context import RunContext

log = logging.getLogger(__name__)

RETRIES = 3
"""Retries of ``previous_night`` whatever the DAG's ``airflow.retries``: Airflow can fail a reschedule-mode
sensor when the executor reports its previous check's exit after the next check was queued
(apache/airflow#71172; seen in the scenario on a loaded 2-core machine). A check only reads the
metadata database, so retrying one is always safe."""
POKE_SECONDS = 10
MAX_POKE_SECONDS = 60
"""The longest wait between checks: a night starts at most this long after the one before decided
(at 5 minutes a 14-night backfill lost about 1.5 minutes a night); each check starts a task process."""


def previous_night_pending(ctx: RunContext) -> str | None:
    """What the previous night (the interval that ends where ``ctx``'s starts) has still to deliver.

    None when that night has no run here, or its latest decision is recorded and, if it promotes,
    its promotion settled (promoted, superseded or failed).
    """
    from sqlalchemy import select

    from flywheel.db.engine import session_scope
    from flywheel.db.models import Decision, Run

    with session_scope(ctx.config.metadata) as session:
        night = ctx.interval_start
        runs = select(Run.id).where(Run.workload_id == ctx.workload_id, Run.interval_end == night)
        if session.scalar(runs.limit(1)) is None:
            return None
        decision = session.scalar(
            select(Decision).where(Decision.run_id.in_(runs)).order_by(Decision.id.desc()).limit(1)
        )
        if decision is None:
            return f"the night ending {night.isoformat()} has not decided yet"
        if decision.outcome == "promote" and decision.promotion is None:
            return f"the night ending {night.isoformat()} is still promoting (decision {decision.id})"
        return None


class PreviousNightWait(BaseSensorOperator):
    """Wait until the previous night's decision is delivered (see the module's docstring).

    Returns (XCom) what it waited for: ``{"waited_for": str | None, "gave_up": bool}``.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, workload_id: str, wait_minutes: float, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", POKE_SECONDS)
        super().__init__(
            mode="reschedule",
            # Each check starts a task process: wait longer between checks the longer a night waits.
            exponential_backoff=True,
            max_wait=timedelta(seconds=MAX_POKE_SECONDS),
            depends_on_past=True,
            # Its own deadline ends the wait first; the sensor timeout only backs it up.
            timeout=(wait_minutes + 60) * 60,
            **kwargs,
            retries=RETRIES,
            retry_delay=timedelta(seconds=POKE_SECONDS),
        )
        self.workload_id = workload_id
        self.wait_minutes = wait_minutes

    def poke(self, context: Context) -> bool | PokeReturnValue:
        from flywheel.context import RunContext

        since = context["ti"].get_first_reschedule_date(context) or datetime.now(UTC)
        done = previous_night_done(RunContext.current(self.workload_id), since, self.wait_minutes)
        return False if done is None else PokeReturnValue(is_done=True, xcom_value=done)


def previous_night_done(
    ctx: RunContext, waiting_since: datetime, wait_minutes: float
) -> dict[str, Any] | None:
    """What ``previous_night`` returns when it may go on (``waited_for``, ``gave_up``); None: wait on."""
    pending = previous_night_pending(ctx)
    if pending is None:
        return {"waited_for": None, "gave_up": False}
    if datetime.now(UTC) - waiting_since < timedelta(minutes=wait_minutes):
        log.info("%s: waiting: %s", ctx.workload_id, pending)
        return None
    log.warning(
        "%s: %s after %s minutes; going on with the current champion (promote never replaces a champion "
        "chosen on newer data)",
        ctx.workload_id,
        pending,
        wait_minutes,
    )
    return {"waited_for": pending, "gave_up": True}
