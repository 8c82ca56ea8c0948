"""Nights in interval order: the ``previous_night`` wait, on a real SQLite metadata database. A night
waits while the night before has not decided or is still promoting, and goes on once that is
delivered, or after ``decision.previous_night_wait_minutes`` (it never fails)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import FlywheelConfig
from flywheel.context import RunContext
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision
from flywheel.decide.order import PreviousNightWait, previous_night_done, previous_night_pending
from flywheel.tracking import ensure_run, record_promotion

WORKLOAD = "customer_support_router"
NIGHT_1 = datetime(2026, 11, 21, 2, tzinfo=UTC)


def night(config: FlywheelConfig, number: int, run: str = "scheduled") -> RunContext:
    end = NIGHT_1 + timedelta(days=number - 1)
    return RunContext.of(
        config,
        WORKLOAD,
        interval_start=end - timedelta(days=1),
        interval_end=end,
        dag_run_id=f"{run}-{number}",
    )


def started(ctx: RunContext) -> int:
    """``ctx``'s run as the flywheel records it when its first stage starts."""
    return ensure_run(
        ctx.config.metadata,
        workload_id=WORKLOAD,
        dag_id=ctx.workload.dag_id,
        dag_run_id=ctx.dag_run_id,
        interval_start=ctx.interval_start,
        interval_end=ctx.interval_end,
    )


def decided(ctx: RunContext, outcome: str) -> int:
    """A decision of ``ctx``'s run with ``outcome``, not yet delivered."""
    run_id = started(ctx)
    with session_scope(ctx.config.metadata) as session:
        row = Decision(
            run_id=run_id,
            workload_id=WORKLOAD,
            outcome=outcome,
            reasons=[],
            primary_metric="function_name_and_args_accuracy",
            comparisons={},
            candidates=[],
            policy={},
        )
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
def config(make_config) -> FlywheelConfig:
    return make_config()


def test_a_night_waits_while_the_night_before_has_not_decided(config: FlywheelConfig) -> None:
    started(night(config, 1))

    assert (
        previous_night_pending(night(config, 2))
        == "the night ending 2026-11-21T02:00:00+00:00 has not decided yet"
    )


def test_a_night_waits_while_the_night_before_is_promoting_and_goes_on_once_it_has(
    config: FlywheelConfig,
) -> None:
    decision = decided(night(config, 1), "promote")
    now = datetime.now(UTC)

    assert previous_night_done(night(config, 2), now, wait_minutes=60) is None
    record_promotion(config.metadata, decision, {"status": "promoted", "version": 1})
    assert previous_night_done(night(config, 2), now, wait_minutes=60) == {
        "waited_for": None,
        "gave_up": False,
    }


@pytest.mark.parametrize("outcome", ["no_change", "alert"])
def test_a_decision_without_promotion_is_delivered_when_recorded(
    config: FlywheelConfig, outcome: str
) -> None:
    decided(night(config, 1), outcome)

    assert previous_night_pending(night(config, 2)) is None


def test_only_the_night_just_before_counts(config: FlywheelConfig) -> None:
    """Night 3 looks at night 2 only: an older night that never delivered, a later night's decision, or
    a gap in history (no run for the night before) holds nothing."""
    decided(night(config, 1), "promote")  # never delivered
    decided(night(config, 4), "promote")

    assert previous_night_pending(night(config, 3)) is None  # no run of night 2
    decided(night(config, 2), "no_change")
    assert previous_night_pending(night(config, 3)) is None


def test_a_re_run_of_the_night_before_counts_with_its_latest_decision(config: FlywheelConfig) -> None:
    decided(night(config, 1), "no_change")
    again = decided(night(config, 1, run="manual"), "promote")  # a later run of the night, promoting

    assert previous_night_pending(night(config, 2)) == (
        f"the night ending 2026-11-21T02:00:00+00:00 is still promoting (decision {again})"
    )


def test_after_the_wait_a_night_goes_on_with_a_warning(
    config: FlywheelConfig, caplog: pytest.LogCaptureFixture
) -> None:
    started(night(config, 1))
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)

    done = previous_night_done(night(config, 2), an_hour_ago, wait_minutes=30)

    assert done == {
        "waited_for": "the night ending 2026-11-21T02:00:00+00:00 has not decided yet",
        "gave_up": True,
    }
    assert "going on with the current champion" in caplog.text


def test_the_wait_reschedules_and_depends_on_the_previous_runs_wait() -> None:
    wait = PreviousNightWait(task_id="previous_night", workload_id=WORKLOAD, wait_minutes=30)

    assert (wait.mode, wait.depends_on_past, wait.poke_interval) == ("reschedule", True, 10)
    # A night starts at most a minute after the one before decided.
    assert wait.exponential_backoff and wait.max_wait.total_seconds() == 60
    assert wait.timeout > 30 * 60  # its own deadline ends the wait before Airflow's sensor timeout
