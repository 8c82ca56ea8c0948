"""The manual-run params through ``dag.test()``, one night each, with the tiny model: a dry run limited to
one candidate, and a champion-only re-evaluation; and the asset events each run emits into Airflow's
database (the day-partitioned raw and clean days, the dataset; the champion only when it moved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from conftest import TEST_TRAINING, workload_dag
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Evaluation, Run, RunStage
from flywheel.deliver.registry import champion, history, promote, register_version
from flywheel.demo.seed import seed_logs
from flywheel.intervals import latest_intervals
from flywheel.tracking import ensure_run

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
WORKLOAD = "customer_support_router"
DAG_ID = f"flywheel_{WORKLOAD}"
TWO_CANDIDATES = {
    **TEST_TRAINING,
    "candidates": [
        *TEST_TRAINING["candidates"],
        {**TEST_TRAINING["candidates"][0], "candidate_id": "tiny-b"},
    ],
}
"""The tiny model twice, as two candidates: a run limited to one trains and evaluates that one alone."""


def asset_events(dag_run_id: str) -> list[dict[str, Any]]:
    """The asset events the DAG run emitted, as Airflow's database holds them, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.partition_key, AssetEvent.extra, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_dag_id == DAG_ID, AssetEvent.source_run_id == dag_run_id)
            .order_by(AssetEvent.id)
        ).all()
    return [{"asset": n, "partition_key": k, "extra": e, "task": t} for n, k, e, t in rows]


def run_of(config, dag_run_id: str) -> tuple[Run, Decision, dict[str, RunStage], list[Evaluation]]:
    with session_scope(config.metadata) as session:
        run = session.scalar(select(Run).where(Run.dag_run_id == dag_run_id))
        decision = session.scalar(select(Decision).where(Decision.run_id == run.id))
        stages = {s.stage: s for s in session.scalars(select(RunStage).where(RunStage.run_id == run.id))}
        evaluations = session.scalars(select(Evaluation).where(Evaluation.run_id == run.id)).all()
        session.expunge_all()
    return run, decision, stages, list(evaluations)


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_a_dry_run_of_one_candidate_decides_and_notifies_but_moves_nothing(
    airflow_db, empty_log_store, make_config, tiny_model
):
    config = make_config(training=TWO_CANDIDATES)
    seed_logs(config, days=1, records_per_day=300, now=NOW, workloads=[WORKLOAD])
    ((start, end),) = latest_intervals("0 2 * * *", 1, NOW)
    dag = workload_dag(config, WORKLOAD)
    day = start.date().isoformat()

    dag_run = dag.test(logical_date=end, run_conf={"dry_run": True, "candidates": ["tiny-b"]})

    assert dag_run.state == "success"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.map_index < 1}
    assert states["promote"] == "success" and states["alert"] == states["no_change"] == "skipped"
    _, decision, stages, evaluations = run_of(config, dag_run.run_id)
    # Only the candidate the run asked for trained and was evaluated.
    assert [c["candidate_id"] for c in stages["train"].summary["candidates"]] == ["tiny-b"]
    assert [(e.candidate_id, e.eval_type) for e in evaluations] == [("tiny-b", "customized")]
    # No champion yet: a promotion, decided and recorded as a dry run; the registry did not move.
    assert (decision.outcome, decision.dry_run) == ("promote", True)
    assert decision.promotion["status"] == "dry_run"
    assert champion(config.metadata, WORKLOAD) is None and history(config.metadata, WORKLOAD) == []
    # The day's outputs are assets, the days keyed by the day; a dry run never moves the champion.
    events = asset_events(dag_run.run_id)
    assert [(e["asset"], e["partition_key"], e["task"]) for e in events] == [
        (f"flywheel.{WORKLOAD}.raw_day", day, "extract"),
        (f"flywheel.{WORKLOAD}.clean_day", day, "validate"),
        (f"flywheel.{WORKLOAD}.dataset", None, "build_dataset"),
    ]
    raw, clean, dataset = (e["extra"] for e in events)
    assert raw["day"] == clean["day"] == day and raw["records"] == clean["extracted"] > 250
    assert raw["uri"] == stages["extract"].summary["uri"]
    assert clean["clean_uri"] == stages["validate"].summary["clean_uri"]
    assert dataset["dataset_id"] == decision.dataset_id and dataset["last_day"] == day


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_champion_only_re_evaluates_the_champion_without_training(
    airflow_db, empty_log_store, make_config, tiny_model
):
    config = make_config(training={**TEST_TRAINING, "retrain": {"policy": "always"}})
    seed_logs(config, days=1, records_per_day=300, now=NOW, workloads=[WORKLOAD])
    ((start, end),) = latest_intervals("0 2 * * *", 1, NOW)
    earlier = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id=DAG_ID,
        dag_run_id="earlier",
        # Not the night before, which the run would wait for (it never decided here).
        interval_start=start - timedelta(days=3),
        interval_end=start - timedelta(days=2),
    )
    version = register_version(
        config.metadata,
        workload_id=WORKLOAD,
        run_id=earlier,
        candidate_id="tiny",
        eval_type="base",
        model={"base_model": tiny_model},
        dataset_id=None,
    )
    promote(config.metadata, WORKLOAD, version.version, actor="test", reason="the champion to re-evaluate")
    dag = workload_dag(config, WORKLOAD)

    dag_run = dag.test(logical_date=end, run_conf={"champion_only": True})

    assert dag_run.state == "success"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.map_index < 1}
    assert states["train"] in (None, "skipped")  # mapped over no job
    assert states["no_change"] == "success" and states["promote"] == "skipped"
    _, decision, stages, evaluations = run_of(config, dag_run.run_id)
    # The retrain policy says `always`; the param wins, and the train stage says so.
    retrain = stages["train"].summary["retrain"]
    assert (retrain["train"], [r["code"] for r in retrain["reasons"]]) == (False, ["champion_only"])
    assert [(e.candidate_id, e.eval_type) for e in evaluations] == [("champion", "champion")]
    assert decision.outcome == "no_change"
    assert [r["code"] for r in decision.reasons] == ["no_challenger", "champion_holds"]
    assert champion(config.metadata, WORKLOAD).version == version.version
    # Raw and clean days and the dataset again; no promotion, so no champion event.
    assert [e["asset"].rsplit(".", 1)[1] for e in asset_events(dag_run.run_id)] == [
        "raw_day",
        "clean_day",
        "dataset",
    ]


def test_an_unknown_candidate_is_refused_naming_the_param(airflow_db, make_config):
    from airflow.sdk.exceptions import ParamValidationError

    config = make_config()
    dag = workload_dag(config, WORKLOAD)
    ((_, end),) = latest_intervals("0 2 * * *", 1, NOW)

    with pytest.raises(
        ParamValidationError, match=r"^Invalid input for param candidates: 'nope' is not one of"
    ):
        dag.test(logical_date=end, run_conf={"candidates": ["nope"]})
