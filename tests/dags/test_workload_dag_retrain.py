"""The retrain policy through ``dag.test()``: under ``on_trigger``, the night after a first promotion has
a healthy champion, so it trains nothing, still evaluates the champion on its fresh data, decides
``no_change`` and stays green, and its train stage and run report say why."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import TEST_TRAINING
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Evaluation, Run, RunStage
from flywheel.deliver.registry import champion
from flywheel.demo.seed import seed_logs
from flywheel.intervals import latest_intervals
from flywheel.storage import ArtifactStore

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
WORKLOAD = "customer_support_router"
DAG_ID = f"flywheel_{WORKLOAD}"


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_on_trigger_skips_training_for_a_healthy_champion_and_still_evaluates_it(
    dagbag, airflow_db, empty_log_store, make_config, tiny_model
):
    config = make_config(training={**TEST_TRAINING, "retrain": {"policy": "on_trigger"}})
    seed_logs(config, days=2, records_per_day=300, now=NOW, workloads=[WORKLOAD])
    (_, first_end), (second, second_end) = latest_intervals("0 2 * * *", 2, NOW)
    dag = dagbag.dags[DAG_ID]

    # Night 1: no champion yet, so it trains, and its challenger is promoted (the test floor is 0).
    assert dag.test(logical_date=first_end).state == "success"
    assert champion(config.metadata, WORKLOAD).version == 1

    # Night 2: the champion is healthy and the tools have not changed: no training.
    dag_run = dag.test(logical_date=second_end)

    assert dag_run.state == "success"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.map_index < 1}
    assert states["train"] in (None, "skipped")  # mapped over no job
    assert states["collect_training"] == states["decide"] == states["no_change"] == "success"
    with session_scope(config.metadata) as session:
        run = session.scalar(select(Run).where(Run.interval_start == second))
        train = session.scalars(
            select(RunStage).where(RunStage.run_id == run.id, RunStage.stage == "train")
        ).one()
        evaluations = session.scalars(select(Evaluation).where(Evaluation.run_id == run.id)).all()
        decision = session.scalar(select(Decision).where(Decision.run_id == run.id))
        session.expunge_all()
    assert train.status == "succeeded"
    assert (train.summary["candidates"], train.summary["succeeded"]) == ([], 0)
    retrain = train.summary["retrain"]
    assert (retrain["train"], retrain["policy"]) == (False, "on_trigger")
    assert [r["code"] for r in retrain["reasons"]] == [
        "no_previous_alert",
        "champion_above_floor",
        "tool_set_unchanged",
    ]
    # Only the champion was evaluated (the test evaluates customized variants, and none was trained).
    assert [(e.eval_type, e.status, e.model.get("version")) for e in evaluations] == [
        ("champion", "succeeded", 1)
    ]
    assert decision.outcome == "no_change"
    assert [r["code"] for r in decision.reasons] == ["no_challenger", "champion_holds"]
    assert decision.champion["version"] == 1 and decision.challenger is None
    assert champion(config.metadata, WORKLOAD).version == 1
    report = ArtifactStore(config.artifact_store.root).path(
        "reports", WORKLOAD, second.date().isoformat(), "run-report.html"
    )
    html = Path(report).read_text()
    assert "this run did not train" in html and "tool_set_unchanged" in html
