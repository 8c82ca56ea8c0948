"""The workload DAG under a real Airflow: ``airflow standalone`` (scheduler, dag-processor, api-server,
triggerer; LocalExecutor; SQLite), the real log store and the tiny model, driven as an operator does.

A backfill over two nights is created, then the DAG is unpaused, so the scheduler also creates the
latest night's scheduled run and runs it next to the backfill. Every run must end green, and the three
nights must decide in interval order with the champion carried from night to night.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import select

from flywheel.config import load_config
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Run
from flywheel.deliver.registry import history
from flywheel.demo.local_airflow import LocalAirflow
from flywheel.demo.seed import seed_logs
from flywheel.intervals import latest_intervals

WORKLOAD = "customer_support_router"
DAG_ID = f"flywheel_{WORKLOAD}"
NIGHTS = 3


def test_a_backfill_next_to_the_scheduled_run_replays_the_nights_in_order(
    empty_log_store, make_config, tiny_model, tmp_path: Path
) -> None:
    make_config()
    path = Path(os.environ["FLYWHEEL_CONFIG"])
    raw = yaml.safe_load(path.read_text())
    for workload in raw["workloads"]:
        workload["log_source"]["settle_minutes"] = 0  # the latest night need not wait for late logs
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    now = datetime.now(UTC)
    seed_logs(config, days=NIGHTS, records_per_day=200, now=now, workloads=[WORKLOAD])
    intervals = latest_intervals(config.workload(WORKLOAD).schedule, NIGHTS, now)

    with LocalAirflow(tmp_path / "airflow", parallelism=3) as airflow:
        airflow.wait_for_dag(DAG_ID)
        # Created while the DAG is paused, so its runs exist before the scheduler's own run.
        airflow.backfill(DAG_ID, intervals[0][0], intervals[-2][0])
        airflow.unpause(DAG_ID)
        runs = airflow.wait_for_runs(DAG_ID, NIGHTS, timeout_s=600)

    assert [(r["run_type"], r["state"]) for r in runs] == [("backfill", "success")] * (NIGHTS - 1) + [
        ("scheduled", "success")
    ], runs
    with session_scope(config.metadata) as session:
        decided = session.execute(
            select(Run.interval_end, Decision).join(Decision, Decision.run_id == Run.id).order_by(Decision.id)
        ).all()
        order = [end.replace(tzinfo=UTC) for end, _ in decided]
        outcomes = [(d.outcome, d.reasons[0]["code"]) for _, d in decided]
    # Decided in interval order, each against the champion the night before chose.
    assert order == [end for _, end in intervals], order
    assert outcomes[0] == ("promote", "first_champion")
    assert all(outcome != ("promote", "first_champion") for outcome in outcomes[1:]), outcomes
    moves = history(config.metadata, WORKLOAD)
    assert moves[0].version == 1 and moves[0].actor.startswith(f"{DAG_ID}/backfill__")
