"""The alert branch through ``dag.test()`` for each reason, with a real registry database: the champion's
drift and a regressed challenger (the champion is an endpoint on a local OpenAI-compatible server whose
answers the test writes), and a failed data-quality, training or evaluation stage.

Every run ends with its decision recorded, the alert in the local sink and the run report written; a
run whose stage failed is failed by the watcher, so it shows red."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import TEST_EVALUATION, TEST_TRAINING, workload_dag
from flywheel.config import FlywheelConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Dataset, Decision, Evaluation, Run
from flywheel.deliver.registry import champion
from flywheel.demo.seed import seed_logs
from flywheel.evaluate.examples import load_examples
from flywheel.intervals import latest_intervals
from flywheel.storage import ArtifactStore

pytest_plugins = ["openai_server"]

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
WORKLOAD = "customer_support_router"
DAG_ID = f"flywheel_{WORKLOAD}"
EXAMPLES = 16
"""Evaluated per model: the tiny model gets at most the requests that need no tool right, so the
champion alone gets at least six right once it answers like the teacher (six are significant, p = 2/64)."""


def run_night(dag, config: FlywheelConfig, end: datetime) -> tuple[str, Decision]:
    dag_run = dag.test(logical_date=end)
    with session_scope(config.metadata) as session:
        run = session.scalar(select(Run).where(Run.dag_id == DAG_ID).order_by(Run.id.desc()))
        decision = session.scalar(select(Decision).where(Decision.run_id == run.id))
        session.expunge(decision)
    return dag_run.state, decision


def sink_events(config: FlywheelConfig, start: datetime) -> list[dict[str, Any]]:
    store = ArtifactStore(config.artifact_store.root)
    folder = Path(store.path("alerts", WORKLOAD, start.date().isoformat()))
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def report_of(config: FlywheelConfig, start: datetime) -> str:
    store = ArtifactStore(config.artifact_store.root)
    return Path(store.path("reports", WORKLOAD, start.date().isoformat(), "run-report.html")).read_text()


def reference_answers(config: FlywheelConfig) -> dict[str, list[dict[str, Any]]]:
    """The latest dataset's reference tool calls, by the conversation they answer."""
    with session_scope(config.metadata) as session:
        uri = session.scalar(select(Dataset.uri).order_by(Dataset.created_at.desc()))
    return {conversation(e.messages): e.reference_calls for e in load_examples(uri)}


def conversation(messages: list[dict[str, Any]]) -> str:
    return json.dumps([(m["role"], m.get("content")) for m in messages if m["role"] in ("user", "assistant")])


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_champion_drift_then_a_regressed_challenger_alert(
    dagbag, airflow_db, empty_log_store, make_config, tiny_model, openai_server
):
    endpoint = {"base_url": openai_server.base_url, "model": "served-model", "timeout_s": 30}
    config = make_config(
        evaluation={
            **TEST_EVALUATION,
            "settings": {**TEST_EVALUATION["settings"], "max_examples": EXAMPLES},
            "champion": {"endpoint": endpoint},
        },
        decision={"floor": 0.5, "min_examples": EXAMPLES, "bootstrap_resamples": 200, "guardrails": {}},
    )
    seed_logs(config, days=2, records_per_day=300, now=NOW, workloads=[WORKLOAD])
    (first, _), (second, _) = intervals = latest_intervals("0 2 * * *", 2, NOW)

    # Night 1: the production model has drifted (it answers every request in prose, calling no tool).
    openai_server.responder = lambda body: {"content": "Sorry, I cannot help with that today."}
    state, decision = run_night(dagbag.dags[DAG_ID], config, intervals[0][1])

    assert state == "success"  # the alert is the run's result, not a failure
    assert decision.outcome == "alert"
    assert decision.reasons[0]["code"] == "champion_drift"
    assert decision.comparisons["function_name_and_args_accuracy"]["champion"] < 0.5
    assert decision.champion_version_id is None  # a configured endpoint, not a registry version
    (alert,) = [e for e in sink_events(config, first) if e["event"] == "alert"]
    assert alert["reasons"][0]["code"] == "champion_drift"
    assert alert["report_uri"].endswith(f"reports/{WORKLOAD}/{first.date()}/run-report.html")
    assert "champion_drift" in report_of(config, first)

    # Night 2: the champion answers like the teacher; the freshly trained tiny challenger is far worse.
    answers: dict[str, list[dict[str, Any]]] = {}

    def teacher(body: dict[str, Any]) -> dict[str, Any]:
        if not answers:
            answers.update(reference_answers(config))
        calls = answers[conversation(body["messages"])]
        return {"tool_calls": calls} if calls else {"content": "Happy to help!"}

    openai_server.responder = teacher
    state, decision = run_night(dagbag.dags[DAG_ID], config, intervals[1][1])

    assert state == "success"
    assert decision.outcome == "alert"
    assert decision.reasons[0]["code"] == "challenger_regressed"
    primary = decision.comparisons["function_name_and_args_accuracy"]
    assert primary["champion"] == 1.0 and primary["champion_only"] >= 6
    assert decision.challenger["candidate_id"] == "tiny"
    (alert,) = [e for e in sink_events(config, second) if e["event"] == "alert"]
    assert alert["figures"]["function_name_and_args_accuracy.champion"] == 1.0
    assert champion(config.metadata, WORKLOAD) is None  # nothing was promoted


BROKEN = {
    "data_quality_failed": {"data_quality": {"min_clean_records": 1_000_000}},
    "training_failed": {
        "training": {
            **TEST_TRAINING,
            "candidates": [{"candidate_id": "tiny", "base_model": "/no/such/model"}],
        }
    },
    "evaluation_failed": {
        "evaluation": {
            "settings": {
                **TEST_EVALUATION["settings"],
                "icl": {"similarity": "embedding", "embedding_model": "/no/such/embedding-model"},
            },
            "eval_types": ["icl"],
        }
    },
}


@pytest.mark.parametrize("reason", list(BROKEN))
def test_a_failed_stage_alerts_and_fails_the_run(
    reason: str, dagbag, airflow_db, empty_log_store, make_config, tiny_model
):
    # Parsed with no retries: a failed job ends the attempt at once (dag.test would sit out the delay).
    config = make_config(airflow={"retries": 0}, **BROKEN[reason])
    seed_logs(config, days=1, records_per_day=300, now=NOW, workloads=[WORKLOAD])
    ((start, end),) = latest_intervals("0 2 * * *", 1, NOW)

    state, decision = run_night(workload_dag(config, WORKLOAD), config, end)

    assert state == "failed"  # the watcher fails a run with a failed task
    assert decision.outcome == "alert"
    assert [r["code"] for r in decision.reasons] == [reason]
    assert decision.comparisons == {}
    events = sink_events(config, start)
    assert [e["reasons"][0]["code"] for e in events if e["event"] == "alert"] == [reason]
    assert any(e["event"] == "task_failure" for e in events)
    assert reason in report_of(config, start)
    # The report task's "Run report" button (an extra link, kept as XCom when the task finished): the
    # report on the Flywheel plugin's route, relative to the api-server's base URL (docs/ui.md).
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        link = session.scalar(
            select(XComModel.value)
            .where(
                XComModel.dag_id == DAG_ID,
                XComModel.task_id == "report",
                XComModel.key == "_link_RunReportLink",
            )
            .order_by(XComModel.timestamp.desc())
        )
    assert link == f"flywheel/reports/{WORKLOAD}/{start.date()}/run-report.html"
    with session_scope(config.metadata) as session:
        assert session.scalars(select(Evaluation).where(Evaluation.status == "succeeded")).all() == []
