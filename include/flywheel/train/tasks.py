"""Bodies of the DAG's ``plan_training`` and ``collect_training`` tasks.

The mapped ``train`` task between them runs each planned job on the compute backend
(:mod:`flywheel.compute.local`, :mod:`flywheel.compute.kubernetes`); the job itself is
``flywheel train`` (:mod:`flywheel.train.trainer`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flywheel import artifacts
from flywheel.config import CandidateConfig, WorkloadConfig
from flywheel.context import RunContext

if TYPE_CHECKING:
    from flywheel.decide.policy import Reason
    from flywheel.deliver.registry import VersionInfo

log = logging.getLogger(__name__)

TRAIN_FIGURES = (
    "base_model",
    "steps",
    "best_validation_loss",
    "final_validation_loss",
    "tokens_per_s",
    "samples_per_s",
    "train_examples",
    "peak_memory_mb",
    "wall_seconds",
    "config_hash",
)
"""The figures of each candidate's result.json that the train stage summary (and the task XCom) carries."""


def plan_training(ctx: RunContext, dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """One training job per candidate of the workload, on the dataset ``build_dataset`` summarised; none
    when the workload's retrain policy says this run does not train (:mod:`flywheel.train.retrain`).

    A manual run's params override both: ``champion_only`` trains nothing (RunParamError when there is
    no champion to re-evaluate), ``candidates`` trains only those (:class:`~flywheel.context.RunOptions`).
    A candidate whose settings say ``init_from: champion`` starts from the champion's adapter when it
    can (:func:`warm_start`). Returns the jobs as plain dicts (the XCom that the mapped ``train`` task
    expands over).
    """
    from flywheel.compute import train_job
    from flywheel.deliver.registry import champion
    from flywheel.errors import RunParamError
    from flywheel.train.retrain import plan_retrain, tool_set_change

    current = champion(ctx.config.metadata, ctx.workload_id)
    if ctx.options.champion_only and current is None and ctx.workload.evaluation.champion is None:
        raise RunParamError(
            f"param champion_only: workload {ctx.workload_id} has no champion to re-evaluate (the registry "
            "holds none and evaluation.champion is not set)"
        )
    if not plan_retrain(ctx, dataset, current).train:
        return []
    candidates = ctx.options.candidates_of(ctx.workload)
    # Only a warm start depends on it: the manifests are read when a candidate asks for one.
    wants_warm = any(ctx.workload.training.settings_for(c).init_from == "champion" for c in candidates)
    changed, tools = (
        tool_set_change(ctx, dataset, current) if current is not None and wants_warm else (False, None)
    )
    jobs = []
    for candidate in candidates:
        start = warm_start(ctx.workload, candidate, current, tools_changed=tools if changed else None)
        job = train_job(
            ctx.config,
            ctx.workload,
            candidate,
            dataset_uri=dataset["uri"],
            day=ctx.day,
            dag_run_id=ctx.dag_run_id,
            init_from=start,
        )
        origin = (
            f"the champion v{start['parent_version']}'s adapter {start['adapter']}"
            + (f", to relearn changed tools ({start['tools_changed']})" if "tools_changed" in start else "")
            if "adapter" in start
            else f"a fresh LoRA ({start['base']})"
        )
        log.info("%s: %s -> %s, starting from %s", job.name, candidate.candidate_id, job.output_uri, origin)
        jobs.append(job.to_dict())
    return jobs


def warm_start(
    workload: WorkloadConfig,
    candidate: CandidateConfig,
    champion: VersionInfo | None,
    *,
    tools_changed: Reason | None = None,
) -> dict[str, Any]:
    """Where the candidate's adapter starts: the ``init_from`` of its job and of its train summary entry.

    ``{"parent_version": N, "adapter": URI}``, a warm start from the champion's adapter, when the
    candidate's settings ask for it (``init_from: champion``), ``champion`` (the registry's, version
    N) is a fine-tuned adapter (``customized``) of the candidate's base model, and the run's tools did
    not change since the champion's dataset (``tools_changed``: the ``tool_set_changed`` reason, when
    they did); when they did and ``warm_start_on_tool_change`` says to start from it anyway, the same
    with ``"tools_changed": <the reason's message>`` (the job then trains ``tool_change_steps`` at
    ``tool_change_learning_rate``); else ``{"base": why}``.
    """
    settings = workload.training.settings_for(candidate)
    if settings.init_from == "base":
        return {"base": "init_from is base"}
    if tools_changed is not None and not settings.warm_start_on_tool_change:
        return {"base": f"{tools_changed.message} (warm_start_on_tool_change is false)"}
    if champion is None:
        configured = workload.evaluation.champion
        if configured is None:
            return {"base": "no champion yet"}
        what = configured.endpoint.model if configured.endpoint else configured.base_model
        return {"base": f"the champion is evaluation.champion ({what}), not a registered adapter"}
    name = f"the champion v{champion.version} ({champion.candidate_id}/{champion.eval_type})"
    if champion.eval_type != "customized" or champion.adapter_uri is None:
        return {"base": f"{name} has no adapter"}
    if champion.base_model != candidate.base_model:
        return {"base": f"{name} adapts {champion.base_model}, not {candidate.base_model}"}
    start = {"parent_version": champion.version, "adapter": champion.adapter_uri}
    return start if tools_changed is None else start | {"tools_changed": tools_changed.message}


def collect_training(ctx: RunContext, dataset: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Read every candidate's ``result.json`` (or ``error.json``) from the artifact store and record them,
    with why the run trained or not (``retrain``, :mod:`flywheel.train.retrain`).

    Runs once all training jobs have finished, whatever their outcome. Raises TrainingFailedError when
    jobs ran and no candidate produced an adapter; a run with some failed candidates goes on with the
    others, and a run that planned no job (its retrain policy) records an empty stage.
    """
    from flywheel.compute import JobOutcome, failures_of, outcome_entry, read_outcomes, stage_summary
    from flywheel.errors import TrainingFailedError
    from flywheel.train.retrain import read_retrain

    def figures(outcome: JobOutcome) -> dict[str, Any]:
        assert outcome.result is not None
        return {
            "adapter_uri": artifacts.adapter_uri(outcome.spec.output_uri),
            **{key: outcome.result[key] for key in TRAIN_FIGURES},
        }

    with ctx.stage("train") as stage:
        outcomes = read_outcomes(jobs, ctx.config.artifact_store.storage_options)
        # Where each adapter started, as planned (a failed warm start too): the challenger's lineage.
        candidates = [
            outcome_entry(outcome, figures) | {"init_from": outcome.spec.init_from} for outcome in outcomes
        ]
        stage.summary = stage_summary(dataset["dataset_id"], "candidates", candidates)
        retrain = read_retrain(ctx)
        if retrain is not None:
            stage.summary["retrain"] = retrain
        if jobs and not stage.summary["succeeded"]:
            raise TrainingFailedError(
                f"no candidate of {ctx.workload_id} produced an adapter ({failures_of(candidates)})"
            )
    return stage.summary
