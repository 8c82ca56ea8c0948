"""The run report's data: what one run recorded, read back from the metadata database and artifact store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from flywheel.config import FlywheelConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision as DecisionRow
from flywheel.db.models import Evaluation, Run, as_utc, utcnow
from flywheel.decide.evidence import latest_stages


def report_data(config: FlywheelConfig, workload_id: str, dag_run_id: str) -> dict[str, Any] | None:
    """Everything the run report shows, read back from the metadata database and the artifact store.

    None when the run never reached the point of being recorded (its first task failed early).
    """
    from flywheel.compute import read_job_file

    workload = config.workload(workload_id)
    options = config.artifact_store.storage_options
    with session_scope(config.metadata) as session:
        run = session.scalar(select(Run).where(Run.dag_id == workload.dag_id, Run.dag_run_id == dag_run_id))
        if run is None:
            return None
        run_id, start, end = run.id, run.interval_start, run.interval_end
        decision = session.scalar(select(DecisionRow).where(DecisionRow.run_id == run_id))
        decision_data = (
            None
            if decision is None
            else {
                "outcome": decision.outcome,
                "reasons": decision.reasons,
                "primary_metric": decision.primary_metric,
                "examples": decision.examples,
                "champion": decision.champion,
                "challenger": decision.challenger,
                "comparisons": decision.comparisons,
                "candidates": decision.candidates,
                "policy": decision.policy,
                "promotion": decision.promotion,
            }
        )
    stages = latest_stages(config, run_id)
    train = stages.get("train")
    training = []
    for candidate in (train.summary or {}).get("candidates", []) if train else []:
        curve = read_job_file(candidate["output_uri"], "loss_curve.json", options)
        training.append(candidate | {"loss_curve": curve})
    evaluations = []
    with session_scope(config.metadata) as session:
        rows = session.scalars(
            select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)
        ).all()
    for row in rows:
        result = (
            read_job_file(row.result_uri.rsplit("/", 1)[0], "result.json", options)
            if row.status == "succeeded"
            else None
        )
        evaluations.append(
            {
                "candidate_id": row.candidate_id,
                "eval_type": row.eval_type,
                "status": row.status,
                "examples": row.examples,
                "metrics": row.metrics,
                "latency_p95_s": row.latency_p95_s,
                "per_tool": (result or {}).get("per_tool"),
                "error": row.error,
            }
        )
    return {
        "workload_id": workload_id,
        "dag_id": workload.dag_id,
        "dag_run_id": dag_run_id,
        "interval_start": as_utc(start).isoformat(),
        "interval_end": as_utc(end).isoformat(),
        "generated_at": utcnow().isoformat(),
        "stages": [
            {"stage": row.stage, "status": row.status, "summary": row.summary, "error": row.error}
            for row in stages.values()
        ],
        "training": training,
        "evaluations": evaluations,
        "decision": decision_data,
    }
