"""The run report's data: what one run recorded, read back from the metadata database and artifact store.

:func:`report_data` assembles it as one JSON-safe dict (docs/report.md). Any block may be missing or
malformed when its stage did not run or failed, so the plots and the page read it only through the
helpers below, which turn anything unexpected into "no value" instead of an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from flywheel import artifacts
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
        curve = read_job_file(candidate["output_uri"], artifacts.LOSS_CURVE, options)
        training.append(candidate | {"loss_curve": curve})
    evaluations = []
    with session_scope(config.metadata) as session:
        rows = session.scalars(
            select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)
        ).all()
    for row in rows:
        result = (
            read_job_file(row.result_uri.rsplit("/", 1)[0], artifacts.RESULT, options)
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
                "truncated_examples": (result or {}).get("truncated_examples"),
                "max_new_tokens": as_dict((result or {}).get("answer_limits")).get("max_new_tokens"),
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
        "metrics": metric_views(evaluations, decision_data, workload.evaluation.settings.metrics),
    }


# ---------------------------------------------------------------- reading the data safely


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else {}."""
    return value if isinstance(value, dict) else {}


def dicts(value: Any) -> list[dict[str, Any]]:
    """The dicts of a list (anything else: [])."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def number(value: Any) -> float | None:
    """``value`` as a finite float; None for None, booleans, text and NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def metric_of(evaluation: dict[str, Any], name: str) -> dict[str, Any]:
    """An evaluation's summary of metric ``name`` (``value``, ``ci_low``, ``ci_high``, ``n``), or {}."""
    return as_dict(as_dict(evaluation.get("metrics")).get(name))


def tool_count(champion: dict[str, Any], challenger: dict[str, Any], label: str) -> int:
    """Examples of ``label`` in two ``per_tool`` blocks (the larger count; the two normally agree)."""
    counts = [number(as_dict(side.get(label)).get("n")) for side in (champion, challenger)]
    return int(max((c for c in counts if c is not None), default=0))


def curve_points(training: dict[str, Any], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` of a training run's loss curve where both are numbers (``key``: ``loss``, ...)."""
    points = []
    for point in dicts(training.get("loss_curve")):
        step, value = number(point.get("step")), number(point.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    return points


def variant_name(row: dict[str, Any]) -> str:
    """``candidate/eval_type``, or just the eval type when the candidate id repeats it (the champion)."""
    candidate, eval_type = row.get("candidate_id"), row.get("eval_type")
    if candidate in (None, "", eval_type):
        return str(eval_type)
    return f"{candidate}/{eval_type}"


MetricViews = Mapping[str, Mapping[str, Any]]
"""How each metric is shown, by name (the report data's ``metrics``: label, direction, per-tool key, unit)."""


def higher_is_better(metric: str, views: MetricViews) -> bool:
    """Whether a larger value of ``metric`` is better (a metric without a view counts as such)."""
    return bool(views.get(metric, {}).get("higher_is_better", True))


def metric_views(
    evaluations: list[dict[str, Any]], decision: dict[str, Any] | None, own: list[str]
) -> list[dict[str, Any]]:
    """How the report shows each metric the run's evaluations and decision name, in report order.

    Derived from the metric definitions (:func:`flywheel.evaluate.metrics.report_metrics`), with the
    workload's own metrics (``own``, dotted paths) describing the names that are not built-in.
    """
    from dataclasses import asdict

    from flywheel.evaluate.metrics import report_metrics

    names = [name for e in evaluations for name in e.get("metrics") or {}]
    names += list(((decision or {}).get("comparisons")) or {})
    return [asdict(view) for view in report_metrics(names, own)]
