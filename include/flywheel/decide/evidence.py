"""The decision stage of one run: read the run's evidence, decide, register the challenger, record it.

The evidence is what earlier stages recorded, never XCom: the run's stage rows (did extraction, data
quality, the dataset, training and evaluation succeed?), its ``evaluations`` rows and each
evaluation's per-example ``examples.jsonl`` in the artifact store. So the stage also runs, and
decides ``alert``, when an upstream task failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import select

from flywheel import artifacts
from flywheel.config import DataQualityConfig, FlywheelConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision as DecisionRow
from flywheel.db.models import Evaluation, Run, RunStage, utcnow
from flywheel.decide.policy import UPSTREAM_FAILURES, Decision, Outcomes, Reason, decide, tool_shift_reason
from flywheel.deliver.registry import VersionInfo, get_version, register_version

log = logging.getLogger(__name__)


def latest_stages(config: FlywheelConfig, run_id: int) -> dict[str, RunStage]:
    """The last attempt of each stage of the run, by stage name."""
    with session_scope(config.metadata) as session:
        rows = session.scalars(select(RunStage).where(RunStage.run_id == run_id).order_by(RunStage.id)).all()
        return {row.stage: row for row in rows}


def upstream_failures(stages: dict[str, RunStage]) -> list[Reason]:
    """Why the run has nothing trustworthy to compare: the first failed (or missing) stage, if any."""
    for stage, code in UPSTREAM_FAILURES.items():
        row = stages.get(stage)
        if row is None:
            return [
                Reason("run_incomplete", f"the {stage} stage did not run (its task failed before starting)")
            ]
        if row.status != "succeeded":
            error = (row.error or "no error recorded")[:500]
            return [Reason(code, f"{stage} {row.status}: {error}")]
    return []


def data_alerts(stages: dict[str, RunStage], rules: DataQualityConfig) -> list[Reason]:
    """What the run's validated data alerts about: a tool shift its ``validate`` stage flagged."""
    row = stages.get("validate")
    summary = (row.summary or {}) if row is not None else {}
    if not summary.get("tool_shift_exceeded"):
        return []
    day = date.fromisoformat(summary["day"])
    return [tool_shift_reason(day, summary["tool_shift"], rules.max_tool_shift)]


def evaluated_outcomes(
    config: FlywheelConfig, run_id: int, metrics: Sequence[str] = ()
) -> tuple[list[Evaluation], dict[int, Outcomes]]:
    """The run's evaluation rows and, for each that succeeded, its per-example outcomes.

    ``metrics``: the workload's own metrics (``evaluation.settings.metrics``), read besides the built-ins.
    """
    with session_scope(config.metadata) as session:
        rows = session.scalars(
            select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id)
        ).all()
    options = config.artifact_store.storage_options
    return rows, {
        row.id: outcomes_of(row, options, metrics)
        for row in rows
        if row.status == "succeeded" and row.examples_uri
    }


def outcomes_of(row: Evaluation, storage_options: dict[str, Any], metrics: Sequence[str] = ()) -> Outcomes:
    """A succeeded evaluation's per-example outcomes, read from its ``examples.jsonl``."""
    import fsspec

    with fsspec.open(row.examples_uri, "rt", encoding="utf-8", **storage_options) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    info = {
        "evaluation_id": row.id,
        "model": row.model,
        "version": row.model.get("version"),
        "metrics": {name: entry.get("value") for name, entry in (row.metrics or {}).items()},
        "latency_p95_s": row.latency_p95_s,
    }
    return Outcomes.from_examples(
        row.candidate_id, row.eval_type, records, latency_p95_s=row.latency_p95_s, info=info, metrics=metrics
    )


def decide_run(
    config: FlywheelConfig, workload_id: str, run_id: int, *, dry_run: bool = False
) -> dict[str, Any]:
    """Decide the run, register its challenger, upsert its ``decisions`` row; return the summary.

    ``dry_run``: a manual run's dry run; the row and the summary carry the mark, and the delivery
    tasks then move nothing (:func:`flywheel.deliver.tasks.promote`).
    """
    workload = config.workload(workload_id)
    policy = workload.decision
    stages = latest_stages(config, run_id)
    failures = upstream_failures(stages)
    own_metrics = workload.evaluation.settings.metrics
    rows, outcomes = ([], {}) if failures else evaluated_outcomes(config, run_id, own_metrics)
    champion_rows = [r for r in rows if r.eval_type == "champion"]
    champion_outcomes = next((outcomes[r.id] for r in champion_rows if r.id in outcomes), None)
    variants = [outcomes[r.id] for r in rows if r.eval_type != "champion" and r.id in outcomes]
    decision = decide(
        policy,
        champion=champion_outcomes,
        variants=variants,
        champion_expected=bool(champion_rows),
        upstream_failures=failures,
        data_alerts=data_alerts(stages, workload.data_quality),
    )
    dataset = stages.get("build_dataset")
    dataset_id = (
        (dataset.summary or {}).get("dataset_id") if dataset and dataset.status == "succeeded" else None
    )
    challenger = _register_challenger(config, workload_id, run_id, decision, dataset_id, stages)
    with session_scope(config.metadata) as session:
        run = session.get_one(Run, run_id)
        day = run.interval_start.date()
        report_uri = _artifact_uri(config, artifacts.report_path(workload_id, day))
        row = session.scalar(select(DecisionRow).where(DecisionRow.run_id == run_id)) or DecisionRow(
            run_id=run_id
        )
        session.add(row)
        evidence = decision.to_dict()
        row.workload_id = workload_id
        row.dataset_id = dataset_id
        row.outcome = decision.outcome
        row.reasons = evidence["reasons"]
        row.primary_metric = decision.primary_metric
        row.champion = evidence["champion"]
        row.champion_version_id = _version_id(config, workload_id, evidence["champion"])
        row.challenger = evidence["challenger"] and evidence["challenger"] | {
            "version": challenger.version if challenger else None
        }
        row.challenger_version_id = challenger.id if challenger else None
        row.examples = decision.examples
        row.comparisons = _json_safe(decision.comparisons)
        row.candidates = _json_safe(decision.candidates)
        row.policy = policy.model_dump(mode="json")
        row.report_uri = report_uri
        row.promotion = None
        row.dry_run = dry_run
        row.decided_at = utcnow()
        session.flush()
        decision_id = row.id
    summary = decision_summary(
        decision, decision_id=decision_id, challenger=challenger, report_uri=report_uri, dry_run=dry_run
    )
    log.info(
        "decision for %s: %s (%s)",
        workload_id,
        decision.outcome,
        "; ".join(r.message for r in decision.reasons),
    )
    return summary


def decision_summary(
    decision: Decision,
    *,
    decision_id: int,
    challenger: VersionInfo | None,
    report_uri: str,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The small JSON the ``decide`` task returns (its XCom) and notifications quote."""
    primary = decision.comparisons.get(decision.primary_metric, {})
    champion = decision.champion
    return {
        "decision_id": decision_id,
        "outcome": decision.outcome,
        "reasons": [r.to_dict() for r in decision.reasons],
        "primary_metric": decision.primary_metric,
        "examples": decision.examples,
        "champion": champion.name if champion else None,
        "champion_version": champion.info.get("version") if champion else None,
        "challenger": decision.challenger.name if decision.challenger else None,
        "challenger_version": challenger.version if challenger else None,
        "figures": {
            key: primary.get(key)
            for key in ("champion", "challenger", "difference", "ci_low", "ci_high", "p_value", "n")
            if primary.get(key) is not None
        },
        "report_uri": report_uri,
        "dry_run": dry_run,
    }


def _register_challenger(
    config: FlywheelConfig,
    workload_id: str,
    run_id: int,
    decision: Decision,
    dataset_id: str | None,
    stages: dict[str, RunStage],
) -> VersionInfo | None:
    """Every run's challenger becomes a model version, promoted or not (a person may promote it later).

    Its adapter is copied into the store's ``models/`` under its digest: a re-run of the day rewrites
    the run directory it was trained in, never the registered version.
    """
    from flywheel.storage import ArtifactStore

    challenger = decision.challenger
    if challenger is None:
        return None
    training = next(
        (
            c
            for c in (stages["train"].summary or {}).get("candidates", [])
            if c.get("candidate_id") == challenger.candidate_id
        ),
        None,
    )
    model = {k: v for k, v in challenger.info["model"].items() if k != "version"}
    if challenger.eval_type == "icl":
        model["few_shot"] = True  # served (and re-evaluated as the champion) with its few-shot prompts
    customized = training if challenger.eval_type == "customized" else None
    # A warm start's adapter descends from the champion it started from (collect_training's init_from).
    parent_version = ((customized or {}).get("init_from") or {}).get("parent_version")
    return register_version(
        config.metadata,
        workload_id=workload_id,
        run_id=run_id,
        candidate_id=challenger.candidate_id,
        eval_type=challenger.eval_type,
        model=model,
        dataset_id=dataset_id,
        evaluation_id=challenger.info["evaluation_id"],
        metrics=challenger.info["metrics"],
        training=customized,
        parent_version=parent_version,
        store=ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options),
    )


def _version_id(config: FlywheelConfig, workload_id: str, side: dict[str, Any] | None) -> int | None:
    """The registry id of the champion version that was evaluated (None for a configured endpoint)."""
    if not side or side.get("version") is None:
        return None
    return get_version(config.metadata, workload_id, side["version"]).id


def _artifact_uri(config: FlywheelConfig, path: str) -> str:
    from flywheel.storage import ArtifactStore

    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    return store.uri(store.path(path))


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON so numpy scalars and infinities never reach the database."""
    return json.loads(json.dumps(value, default=float, allow_nan=False))
