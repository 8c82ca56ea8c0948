"""Bodies of the DAG's ``plan_evaluation`` and ``collect_evaluation`` tasks.

The mapped ``evaluate`` task between them runs each planned job on the compute backend; the job
itself is ``flywheel evaluate`` (:mod:`flywheel.evaluate.runner`).
"""

from __future__ import annotations

import logging
from typing import Any

from flywheel import artifacts
from flywheel.config import ModelConfig
from flywheel.context import RunContext

log = logging.getLogger(__name__)


def plan_evaluation(
    ctx: RunContext, dataset: dict[str, Any], train_jobs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The run's evaluation jobs, all on the same dataset: the champion, and per candidate its variants.

    ``base`` and ``icl`` need only the candidate's base model; ``customized`` needs the adapter its
    training job published (a candidate whose training failed, or a run that does not train, gets no
    customized evaluation). The champion, when the workload has one, is evaluated on the same examples,
    and the candidates' variants are then ``evaluation.eval_types_with_champion`` when set.
    A manual run's params narrow the candidates: ``champion_only`` evaluates the champion alone,
    ``candidates`` only those (:class:`~flywheel.context.RunOptions`).
    """
    from flywheel.compute import CHAMPION_CANDIDATE_ID, evaluate_job, read_outcomes

    trained = {
        outcome.spec.labels["flywheel.io/candidate"]: outcome.spec.output_uri
        for outcome in read_outcomes(train_jobs, ctx.config.artifact_store.storage_options)
        if outcome.result
    }
    planned: list[tuple[str, str, ModelConfig]] = []
    champion, version = current_champion(ctx)
    eval_types = ctx.workload.evaluation.eval_types
    if champion is not None:
        planned.append((CHAMPION_CANDIDATE_ID, "champion", champion))
        eval_types = ctx.workload.evaluation.eval_types_with_champion or eval_types
    for candidate in ctx.options.candidates_of(ctx.workload):
        name, base_model = candidate.candidate_id, candidate.base_model
        for eval_type in eval_types:
            if eval_type != "customized":
                planned.append((name, eval_type, ModelConfig(base_model=base_model)))
            elif name in trained:
                model = ModelConfig(base_model=base_model, adapter=artifacts.adapter_uri(trained[name]))
                planned.append((name, eval_type, model))
            elif train_jobs:
                log.warning("%s: no adapter from training, so no customized evaluation", name)
            else:
                log.info("%s: this run does not train (training.retrain), so no customized evaluation", name)
    jobs = [
        evaluate_job(
            ctx.config,
            ctx.workload,
            model,
            eval_type=eval_type,
            candidate_id=candidate_id,
            dataset_uri=dataset["uri"],
            day=ctx.day,
            dag_run_id=ctx.dag_run_id,
        )
        for candidate_id, eval_type, model in planned
    ]
    for job in jobs:
        if version is not None and job.labels["flywheel.io/candidate"] == CHAMPION_CANDIDATE_ID:
            # Which registry version was evaluated as the champion (collect_evaluation records it).
            job.labels["flywheel.io/champion-version"] = str(version)
        log.info("%s -> %s", job.name, job.output_uri)
    return [job.to_dict() for job in jobs]


def current_champion(ctx: RunContext) -> tuple[ModelConfig | None, int | None]:
    """The model to evaluate as the champion and its registry version.

    The registry's ``champion`` alias wins; while the registry has none, the workload's configured
    ``evaluation.champion`` (an endpoint serving the current production model) stands in, unversioned.
    """
    from flywheel.deliver.registry import champion

    version = champion(ctx.config.metadata, ctx.workload_id)
    if version is None:
        return ctx.workload.evaluation.champion, None
    return ModelConfig.model_validate(version.model), version.version


def collect_evaluation(
    ctx: RunContext, dataset: dict[str, Any], jobs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Read every evaluation's ``result.json`` (or ``error.json``), record each, and summarise them.

    Runs once all evaluation jobs have finished, whatever their outcome. Raises EvaluationFailedError
    when none succeeded. ``same_examples`` says whether every succeeded evaluation scored the same
    examples (the precondition of a paired comparison).
    """
    from flywheel.compute import JobOutcome, failures_of, outcome_entry, read_outcomes, stage_summary
    from flywheel.errors import EvaluationFailedError
    from flywheel.evaluate.runner import headline
    from flywheel.tracking import record_evaluation

    def figures(outcome: JobOutcome) -> dict[str, Any]:
        assert outcome.result is not None
        return headline(outcome.result) | {"examples_hash": outcome.result["examples_hash"]}

    with ctx.stage("evaluate") as stage:
        evaluations = []
        for outcome in read_outcomes(jobs, ctx.config.artifact_store.storage_options):
            spec, result = outcome.spec, outcome.result
            record_evaluation(
                ctx.config.metadata,
                ctx.run_id,
                workload_id=ctx.workload_id,
                dataset_id=dataset["dataset_id"],
                candidate_id=spec.labels["flywheel.io/candidate"],
                eval_type=spec.labels["flywheel.io/eval-type"],
                model=(result["model"] if result else spec.model or {}) | _version_label(spec.labels),
                result_uri=artifacts.job_uri(spec.output_uri, artifacts.RESULT),
                result=result,
                error=outcome.error,
            )
            evaluations.append(outcome_entry(outcome, figures))
        hashes = {e["examples_hash"] for e in evaluations if e["status"] == "succeeded"}
        stage.summary = stage_summary(dataset["dataset_id"], "evaluations", evaluations) | {
            "same_examples": len(hashes) <= 1
        }
        if len(hashes) > 1:
            log.error("evaluations scored different example sets (%s): they cannot be compared", hashes)
        if not stage.summary["succeeded"]:
            raise EvaluationFailedError(
                f"no evaluation of {ctx.workload_id} succeeded ({failures_of(evaluations)})"
            )
    return stage.summary


def _version_label(labels: dict[str, str]) -> dict[str, int]:
    """``{"version": N}`` for the evaluation of registry version N as the champion, else nothing."""
    version = labels.get("flywheel.io/champion-version")
    return {"version": int(version)} if version else {}
