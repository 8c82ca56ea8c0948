"""The run report's data: what one run recorded, read back from the metadata database and artifact store.

:func:`report_data` assembles it as one JSON-safe dict (docs/report.md). Any block may be missing or
malformed when its stage did not run or failed, so the plots and the page read it only through the
helpers below, which turn anything unexpected into "no value" instead of an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
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
    from flywheel.extract.recount import read_recount
    from flywheel.intervals import partition_day
    from flywheel.report.savings import read_teacher_usage, savings, student_usage
    from flywheel.storage import ArtifactStore

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
    evaluations, students = [], []
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
        if result:
            identity = {"candidate_id": row.candidate_id, "eval_type": row.eval_type}
            students.append((identity, student_usage(result)))
    store = ArtifactStore(config.artifact_store.root, options)
    day = partition_day(as_utc(start))
    teacher = read_teacher_usage(store, workload_id, day, workload.report.teacher_latency_field)
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
        "trend": champion_trend(config, workload_id, until=end),
        "savings": savings(teacher, students, workload.report.prices),
        "recount": read_recount(store, workload_id, day),
        "recount_days": workload.log_source.recount_days,
    }


def champion_trend(
    config: FlywheelConfig, workload_id: str, until: datetime | None = None
) -> list[dict[str, Any]]:
    """The workload's recorded decisions in data-interval order: how the champion and the challenger scored.

    One JSON-safe point per ``decisions`` row of the workload whose run's interval ends at or before
    ``until`` (all of them without it), ordered by interval, then by when it was decided (a re-run of a
    night under another DAG run id is a point of its own)::

        {"night": "2026-11-21",              # the date the run's data interval ends
         "interval_start": ISO, "interval_end": ISO, "dag_run_id": str, "decided_at": ISO,
         "outcome": "promote" | "alert" | "no_change",
         "primary_metric": str,               # the decision's primary metric, named as in the metrics
         "champion": {"value", "ci_low", "ci_high", "n", "version"} | None,
         "challenger": {"value", "ci_low", "ci_high", "n", "version", "candidate_id", "eval_type"} | None}

    ``champion`` and ``challenger`` are the primary metric of that run's evaluation of each (value
    and 95% interval; a value may be None when no example applied); ``champion`` is None when the
    run evaluated none (no champion yet, or its evaluation failed), ``challenger`` when the decision
    named none.
    """
    query = (
        select(DecisionRow, Run)
        .join(Run, Run.id == DecisionRow.run_id)
        .where(DecisionRow.workload_id == workload_id)
        .order_by(Run.interval_start, Run.interval_end, DecisionRow.decided_at, DecisionRow.id)
    )
    if until is not None:
        # SQLite keeps timestamps as naive UTC text, so the bound is compared in UTC.
        query = query.where(Run.interval_end <= as_utc(until).astimezone(UTC))
    with session_scope(config.metadata) as session:
        rows = session.execute(query).all()
        evaluations = session.scalars(
            select(Evaluation).where(
                Evaluation.run_id.in_([run.id for _, run in rows]), Evaluation.status == "succeeded"
            )
        ).all()
        scored = {(e.run_id, e.candidate_id, e.eval_type): e.metrics for e in evaluations}
        champions = {e.run_id: e.metrics for e in evaluations if e.eval_type == "champion"}
        points = []
        for decision, run in rows:
            primary = decision.primary_metric
            challenger = as_dict(decision.challenger)
            champion_metrics = champions.get(run.id)
            challenger_metrics = scored.get(
                (run.id, challenger.get("candidate_id"), challenger.get("eval_type"))
            )
            points.append(
                {
                    "night": as_utc(run.interval_end).date().isoformat(),
                    "interval_start": as_utc(run.interval_start).isoformat(),
                    "interval_end": as_utc(run.interval_end).isoformat(),
                    "dag_run_id": run.dag_run_id,
                    "decided_at": as_utc(decision.decided_at).isoformat(),
                    "outcome": decision.outcome,
                    "primary_metric": primary,
                    "champion": None
                    if champion_metrics is None
                    else _trend_side(champion_metrics, primary)
                    | {"version": as_dict(decision.champion).get("version")},
                    "challenger": None
                    if not challenger or challenger_metrics is None
                    else _trend_side(challenger_metrics, primary)
                    | {
                        "version": challenger.get("version"),
                        "candidate_id": challenger.get("candidate_id"),
                        "eval_type": challenger.get("eval_type"),
                    },
                }
            )
    return points


def _trend_side(metrics: Any, primary: str) -> dict[str, Any]:
    """The primary metric's value, interval and count in an evaluation's ``metrics`` (None where absent)."""
    summary = metric_of({"metrics": metrics}, primary)
    return {key: number(summary.get(key)) for key in ("value", "ci_low", "ci_high")} | {
        "n": summary.get("n") if isinstance(summary.get("n"), int) else None
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
    """``(step, value)`` of a training run's loss curve where both are numbers.

    ``key``: :data:`flywheel.artifacts.TRAIN_LOSS` or :data:`~flywheel.artifacts.VALIDATION_LOSS`, the
    names the trainer writes each point's losses under.
    """
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
