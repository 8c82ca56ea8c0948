"""The workload DAG under a real Airflow: ``airflow standalone`` (scheduler, dag-processor, api-server,
triggerer; LocalExecutor; SQLite), the real log store and the tiny model, driven as an operator does.

A backfill over two nights is created, then the DAG is unpaused, so the scheduler also creates the
latest night's scheduled run and runs it next to the backfill. Every run must end green, and the three
nights must train, evaluate and decide in interval order with the champion carried from night to
night. The retrain policy is ``on_trigger``: night 1 has no champion and trains; nights 2 and 3 find
it healthy, train nothing and evaluate it on their fresh data.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import select

from conftest import TEST_TRAINING
from flywheel.config import load_config
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Evaluation, Run, RunStage
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
    make_config(training={**TEST_TRAINING, "retrain": {"policy": "on_trigger"}})
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
        # Alone it takes about 3.5 minutes; next to the rest of the suite on 2 cores it once took over 10.
        runs = airflow.wait_for_runs(DAG_ID, NIGHTS, timeout_s=900)

    assert [(r["run_type"], r["state"]) for r in runs] == [("backfill", "success")] * (NIGHTS - 1) + [
        ("scheduled", "success")
    ], runs
    with session_scope(config.metadata) as session:
        nights = session.execute(
            select(Run, Decision).join(Decision, Decision.run_id == Run.id).order_by(Decision.id)
        ).all()
        order = [run.interval_end.replace(tzinfo=UTC) for run, _ in nights]
        outcomes = [(d.outcome, [r["code"] for r in d.reasons]) for _, d in nights]
        champions = [d.champion_version_id for _, d in nights]
        retrain = [
            session.scalar(
                select(RunStage).where(RunStage.run_id == run.id, RunStage.stage == "train")
            ).summary["retrain"]
            for run, _ in nights
        ]
        evaluated = [
            sorted(
                e.eval_type for e in session.scalars(select(Evaluation).where(Evaluation.run_id == run.id))
            )
            for run, _ in nights
        ]
    # Decided in interval order, each from the champion the night before chose.
    assert order == [end for _, end in intervals], order
    assert outcomes[0] == ("promote", ["first_champion"])
    assert [outcome for outcome, _ in outcomes[1:]] == ["no_change", "no_change"], outcomes
    first = history(config.metadata, WORKLOAD)
    assert [(m.version, m.actor.split("/")[1].split("__")[0]) for m in first] == [(1, "backfill")]
    assert champions[1:] == [champions[1]] * 2 and champions[1] is not None
    assert [r["train"] for r in retrain] == [True, False, False], retrain
    assert retrain[0]["reasons"][0]["code"] == "no_champion"
    assert evaluated[0] == ["customized"] and evaluated[1:] == [["champion"], ["champion"]], evaluated
