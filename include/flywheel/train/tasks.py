"""Bodies of the DAG's ``plan_training`` and ``collect_training`` tasks.

The mapped ``train`` task between them runs each planned job on the compute backend
(:mod:`flywheel.compute.local`, :mod:`flywheel.compute.kubernetes`); the job itself is
``flywheel train`` (:mod:`flywheel.train.trainer`).
"""

from __future__ import annotations

import logging
from typing import Any

from flywheel import artifacts
from flywheel.context import RunContext

log = logging.getLogger(__name__)

TRAIN_FIGURES = (
    "base_model",
    "steps",
    "best_validation_loss",
    "final_validation_loss",
    "tokens_per_s",
    "wall_seconds",
    "config_hash",
)
"""The figures of each candidate's result.json that the train stage summary (and the task XCom) carries."""


def plan_training(ctx: RunContext, dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """One training job per candidate of the workload, on the dataset ``build_dataset`` summarised.

    Returns the jobs as plain dicts (the XCom that the mapped ``train`` task expands over).
    """
    from flywheel.compute import train_job

    jobs = [
        train_job(
            ctx.config,
            ctx.workload,
            candidate,
            dataset_uri=dataset["uri"],
            day=ctx.day,
            dag_run_id=ctx.dag_run_id,
        )
        for candidate in ctx.workload.training.candidates
    ]
    for job in jobs:
        log.info("%s: %s -> %s", job.name, job.labels["flywheel.io/candidate"], job.output_uri)
    return [job.to_dict() for job in jobs]


def collect_training(ctx: RunContext, dataset: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Read every candidate's ``result.json`` (or ``error.json``) from the artifact store and record them.

    Runs once all training jobs have finished, whatever their outcome. Raises TrainingFailedError when
    no candidate produced an adapter; a run with some failed candidates goes on with the others.
    """
    from flywheel.compute import JobOutcome, failures_of, outcome_entry, read_outcomes, stage_summary
    from flywheel.errors import TrainingFailedError

    def figures(outcome: JobOutcome) -> dict[str, Any]:
        assert outcome.result is not None
        return {
            "adapter_uri": artifacts.adapter_uri(outcome.spec.output_uri),
            **{key: outcome.result[key] for key in TRAIN_FIGURES},
        }

    with ctx.stage("train") as stage:
        outcomes = read_outcomes(jobs, ctx.config.artifact_store.storage_options)
        candidates = [outcome_entry(outcome, figures) for outcome in outcomes]
        stage.summary = stage_summary(dataset["dataset_id"], "candidates", candidates)
        if not stage.summary["succeeded"]:
            raise TrainingFailedError(
                f"no candidate of {ctx.workload_id} produced an adapter ({failures_of(candidates)})"
            )
    return stage.summary
