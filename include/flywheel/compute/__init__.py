"""Heavy jobs (training, evaluation) as one ``flywheel`` command line that runs anywhere.

A :class:`JobSpec` is the whole contract between the DAG and a job: the ``flywheel`` sub-command and its
arguments, a non-secret environment, labels, and the artifact-store URI where the job writes its outputs
(``result.json``) or its failure (``error.json``). The ``kubernetes`` backend hands it to a pod
(:mod:`flywheel.compute.kubernetes`); the ``local`` backend (:mod:`flywheel.compute.local`) runs the
identical command line as a subprocess with the same environment on top of the worker's, streaming its
output into the task log. Either way, results come back through the artifact store, never through XCom."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from flywheel import artifacts
from flywheel.config import CandidateConfig, FlywheelConfig, ModelConfig, WorkloadConfig
from flywheel.errors import JobFailedError, NonRetryableJobError, TransientJobError
from flywheel.storage import STORAGE_OPTIONS_ENV

log = logging.getLogger(__name__)

JOB_ENTRYPOINT = "flywheel"
"""The job image's entrypoint, and the console script the local backend runs."""

EXIT_CODES_NOT_RETRIED = {2: "bad configuration or inputs", 3: "out of memory"}
"""Exit codes of ``flywheel`` jobs that retrying the same job cannot fix (see flywheel.train.trainer)."""

LABEL_PREFIX = "flywheel.io/"
_LABEL_VALUE_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class JobSpec:
    """One job: what to run, with which environment, labelled how, writing its outputs where."""

    kind: str
    """What the job does: ``train`` or ``evaluate``; picks the pod template ``<kind>-pod.yaml``."""
    name: str
    """Readable, DNS-safe name: the pod name's prefix."""
    arguments: list[str]
    """Arguments after the ``flywheel`` entrypoint."""
    output_uri: str
    """Artifact-store directory of the job's ``result.json`` or ``error.json``."""
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    """The evaluated model as planned (an evaluation job's; recorded when the job writes no result)."""

    @property
    def command(self) -> list[str]:
        """The full command line, identical on both backends."""
        return [JOB_ENTRYPOINT, *self.arguments]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**data)


def train_output_uri(config: FlywheelConfig, workload_id: str, day: date, candidate_id: str) -> str:
    """Where the candidate's training job of the day writes its adapter: ``runs/<wl>/<day>/train/<c>``."""
    return artifacts.uri(config.artifact_store.root, artifacts.train_dir(workload_id, day, candidate_id))


def train_job(
    config: FlywheelConfig,
    workload: WorkloadConfig,
    candidate: CandidateConfig,
    *,
    dataset_uri: str,
    day: date,
    dag_run_id: str,
) -> JobSpec:
    """The training job of one candidate on the run's dataset."""
    settings = workload.training.settings_for(candidate)
    output_uri = train_output_uri(config, workload.workload_id, day, candidate.candidate_id)
    return JobSpec(
        kind="train",
        name=dns_label(f"train-{workload.workload_id}-{candidate.candidate_id}"),
        arguments=[
            "train",
            "--dataset",
            dataset_uri,
            "--base-model",
            candidate.base_model,
            "--training-config",
            _compact_json(settings.model_dump(mode="json")),
            "--output",
            output_uri,
        ],
        output_uri=output_uri,
        env=job_env(config),
        labels=job_labels(workload.workload_id, dag_run_id, candidate.candidate_id, "train"),
    )


CHAMPION_CANDIDATE_ID = "champion"
"""The candidate id under which the champion's evaluation is planned, stored and labelled."""


def evaluate_output_uri(
    config: FlywheelConfig, workload_id: str, day: date, candidate_id: str, eval_type: str
) -> str:
    """Where an evaluation writes: ``runs/<wl>/<day>/evaluate/<candidate>/<eval_type>``."""
    relative = artifacts.evaluate_dir(workload_id, day, candidate_id, eval_type)
    return artifacts.uri(config.artifact_store.root, relative)


def evaluate_job(
    config: FlywheelConfig,
    workload: WorkloadConfig,
    model: ModelConfig,
    *,
    eval_type: str,
    candidate_id: str,
    dataset_uri: str,
    day: date,
    dag_run_id: str,
) -> JobSpec:
    """The evaluation job of one model (a candidate's variant or the champion) on the run's dataset."""
    output_uri = evaluate_output_uri(config, workload.workload_id, day, candidate_id, eval_type)
    if model.endpoint is not None:
        model_arguments = ["--endpoint", _compact_json(model.endpoint.model_dump(mode="json"))]
        planned = {"endpoint": {"base_url": model.endpoint.base_url, "model": model.endpoint.model}}
    else:
        assert model.base_model is not None
        model_arguments = ["--base-model", model.base_model]
        model_arguments += ["--adapter", model.adapter] if model.adapter else []
        planned = {"base_model": model.base_model} | ({"adapter": model.adapter} if model.adapter else {})
    labels = job_labels(workload.workload_id, dag_run_id, candidate_id, "evaluate")
    return JobSpec(
        kind="evaluate",
        name=dns_label(f"eval-{workload.workload_id}-{candidate_id}-{eval_type}"),
        arguments=[
            "evaluate",
            "--dataset",
            dataset_uri,
            "--eval-type",
            eval_type,
            *model_arguments,
            "--candidate-id",
            candidate_id,
            "--evaluation-config",
            _compact_json(workload.evaluation.settings.model_dump(mode="json")),
            "--output",
            output_uri,
            # Last: a flag without a value (readers pair the arguments before it as option, value).
            *(["--few-shot"] if model.few_shot else []),
        ],
        output_uri=output_uri,
        env=job_env(config),
        labels=labels | {f"{LABEL_PREFIX}eval-type": label_value(eval_type)},
        model=planned,
    )


def job_env(config: FlywheelConfig) -> dict[str, str]:
    """The non-secret environment of every job: ``compute.env`` and the artifact store's options."""
    env = dict(config.compute.env)
    if config.artifact_store.storage_options:
        env[STORAGE_OPTIONS_ENV] = json.dumps(config.artifact_store.storage_options, sort_keys=True)
    return env


def _compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def job_labels(workload_id: str, dag_run_id: str, candidate_id: str, kind: str) -> dict[str, str]:
    """Kubernetes labels that find every pod of a workload, DAG run or candidate (for cleanup and cost)."""
    return {
        f"{LABEL_PREFIX}workload": label_value(workload_id),
        f"{LABEL_PREFIX}dag-run": label_value(dag_run_id),
        f"{LABEL_PREFIX}candidate": label_value(candidate_id),
        f"{LABEL_PREFIX}job": label_value(kind),
    }


def label_value(text: str) -> str:
    """``text`` as a valid Kubernetes label value: at most 63 of ``[A-Za-z0-9_.-]``, alphanumeric ends.

    Run ids such as ``scheduled__2026-11-20T02:00:00+00:00`` become ``scheduled__2026-11-20T02_00_00_00_00``.
    """
    value = _LABEL_VALUE_INVALID.sub("_", text)
    if len(value) > 63:
        import hashlib

        value = value[:54] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return value.strip("_.-")


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label prefix: lower case, digits and dashes, 40 characters at most."""
    value = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return value[:40].rstrip("-") or "job"


def job_failure(
    exit_code: int | None, output_uri: str, where: str, storage_options: dict[str, Any] | None = None
) -> JobFailedError:
    """The error for a job that exited with ``exit_code``: not retried for codes retrying cannot fix.

    The job's ``error.json`` (when it wrote one) supplies the message and is attached to the error.
    """
    error = read_job_file(output_uri, artifacts.ERROR, storage_options)
    detail = f"{error['error']}: {error['message']}" if error else "no error.json written"
    if exit_code in EXIT_CODES_NOT_RETRIED:
        return NonRetryableJobError(
            f"{where} failed with exit code {exit_code} ({EXIT_CODES_NOT_RETRIED[exit_code]}; "
            f"not retried): {detail}",
            exit_code=exit_code,
            error=error,
        )
    return TransientJobError(
        f"{where} failed with exit code {exit_code}: {detail}", exit_code=exit_code, error=error
    )


def read_job_file(
    output_uri: str, name: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A job's ``result.json`` or ``error.json`` from the artifact store; None when it is not there."""
    import fsspec

    try:
        with fsspec.open(artifacts.job_uri(output_uri, name), "rb", **(storage_options or {})) as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class JobOutcome:
    """What one finished job left in the artifact store: its ``result.json``, else its ``error.json``."""

    spec: JobSpec
    result: dict[str, Any] | None
    error: dict[str, Any] | None

    @property
    def status(self) -> str:
        return "succeeded" if self.result else "failed"

    @property
    def failure(self) -> dict[str, Any]:
        """The job's ``error.json``, or a record that it wrote neither file."""
        return self.error or {"error": "NoOutput", "message": "the job wrote no result.json"}


def read_outcomes(
    jobs: list[dict[str, Any]], storage_options: dict[str, Any] | None = None
) -> list[JobOutcome]:
    """The outcome of every planned job (``JobSpec.to_dict`` form), in plan order."""
    outcomes = []
    for spec in map(JobSpec.from_dict, jobs):
        result = read_job_file(spec.output_uri, artifacts.RESULT, storage_options)
        error = None if result else read_job_file(spec.output_uri, artifacts.ERROR, storage_options)
        outcomes.append(JobOutcome(spec, result, error))
    return outcomes


def outcome_entry(outcome: JobOutcome, figures: Callable[[JobOutcome], dict[str, Any]]) -> dict[str, Any]:
    """One job's line in its stage summary: who it ran for, where, its status, and ``figures(outcome)``
    when it succeeded or its error when it failed."""
    labels = outcome.spec.labels
    entry: dict[str, Any] = {"candidate_id": labels[f"{LABEL_PREFIX}candidate"]}
    if f"{LABEL_PREFIX}eval-type" in labels:
        entry["eval_type"] = labels[f"{LABEL_PREFIX}eval-type"]
    entry |= {"output_uri": outcome.spec.output_uri, "status": outcome.status}
    entry |= figures(outcome) if outcome.result else {"error": outcome.failure}
    log.info("%s: %s", entry_name(entry), {key: value for key, value in entry.items() if key != "error"})
    return entry


def entry_name(entry: dict[str, Any]) -> str:
    """``candidate`` or ``candidate/eval_type``: how a job is named in logs and failure messages."""
    return "/".join(filter(None, (entry["candidate_id"], entry.get("eval_type"))))


def stage_summary(dataset_id: str, key: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``train`` / ``evaluate`` stage summary: every job's entry under ``key`` and the counts."""
    return {
        "dataset_id": dataset_id,
        key: entries,
        "succeeded": sum(e["status"] == "succeeded" for e in entries),
        "failed": sum(e["status"] == "failed" for e in entries),
    }


def failures_of(entries: list[dict[str, Any]]) -> str:
    """Every failed job's name and message, for the error raised when none succeeded."""
    return "; ".join(f"{entry_name(e)}: {e['error'].get('message', '')}" for e in entries if "error" in e)
