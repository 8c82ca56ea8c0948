"""Heavy jobs (training, evaluation) as one ``flywheel`` command line that runs anywhere.

A :class:`JobSpec` is the whole contract between the DAG and a job: the ``flywheel`` sub-command and its
arguments, a non-secret environment, labels, and the artifact-store URI where the job writes its outputs
(``result.json``) or its failure (``error.json``). The ``kubernetes`` backend hands it to a pod
(:mod:`flywheel.compute.kubernetes`); the ``local`` backend (:mod:`flywheel.compute.local`) runs the
identical command line as a subprocess with the same environment on top of the worker's allow-listed
variables, streaming its output into the task log. Either way, results come back through the artifact
store, never through XCom."""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from flywheel import artifacts
from flywheel.config import CandidateConfig, FlywheelConfig, ModelConfig, WorkloadConfig
from flywheel.errors import (
    JobFailedError,
    JobTimeoutError,
    NonRetryableJobError,
    OutOfMemoryJobError,
    StaleResultError,
    TransientJobError,
)
from flywheel.jobs import EXIT_OUT_OF_MEMORY, check_result, dataset_id_of
from flywheel.redact import split_secret_options
from flywheel.storage import STORAGE_OPTIONS_ENV, STORAGE_SECRET_OPTIONS_ENV

log = logging.getLogger(__name__)

JOB_ENTRYPOINT = "flywheel"
"""The job image's entrypoint, and the console script the local backend runs."""

EXIT_CODES_NOT_RETRIED = {2: "bad configuration or inputs", 3: "out of memory"}
"""Exit codes of ``flywheel`` jobs that retrying the same job cannot fix (see flywheel.train.trainer)."""

SIGKILL_EXIT_CODES = frozenset({-signal.SIGKILL, 128 + signal.SIGKILL})
"""How a process killed by SIGKILL exits: -9 as a subprocess, 137 through a shell or a container runtime."""

OUT_OF_MEMORY_ADVICE = (
    "lower batch_size or max_seq_length in its settings, set training.memory_budget_mb, "
    "or give the job more memory"
)
"""What to do about a job that ran out of memory, at the end of its error message."""

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
    init_from: dict[str, Any] | None = None
    """Where a training job's adapter starts, as planned: ``{"parent_version": N, "adapter": URI}`` (a warm
    start from the champion's; with ``tools_changed``, after a tool-set change) or ``{"base": why not}``
    (:func:`flywheel.train.tasks.warm_start`)."""
    dataset_id: str | None = None
    """The dataset the job runs on; a ``result.json`` for another dataset is rejected (None: not checked)."""

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
    init_from: dict[str, Any] | None = None,
) -> JobSpec:
    """The training job of one candidate on the run's dataset.

    ``init_from`` (see :attr:`JobSpec.init_from`) with an ``adapter``: the job starts from that adapter
    (``--init-adapter``) and records its ``--parent-version``, with the settings of a warm start after a
    tool-set change when ``init_from`` says the tools changed; otherwise it trains a fresh LoRA.
    """
    settings = workload.training.settings_for(candidate)
    if init_from and init_from.get("tools_changed"):
        settings = settings.after_tool_change()
    output_uri = train_output_uri(config, workload.workload_id, day, candidate.candidate_id)
    warm_start = (
        ["--init-adapter", init_from["adapter"], "--parent-version", str(init_from["parent_version"])]
        if init_from and "adapter" in init_from
        else []
    )
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
            *warm_start,
        ],
        output_uri=output_uri,
        env=job_env(config),
        labels=job_labels(workload.workload_id, dag_run_id, candidate.candidate_id, "train"),
        init_from=init_from,
        dataset_id=dataset_id_of(dataset_uri),
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
        dataset_id=dataset_id_of(dataset_uri),
    )


def job_env(config: FlywheelConfig) -> dict[str, str]:
    """The non-secret environment of every job: ``compute.env`` and the artifact store's non-secret
    options. It travels in the job's spec (XCom) and into pod specs as plain values, so the secret
    options stay out (:func:`job_secret_env`)."""
    env = dict(config.compute.env)
    plain, _ = split_secret_options(config.artifact_store.storage_options)
    if plain:
        env[STORAGE_OPTIONS_ENV] = json.dumps(plain, sort_keys=True)
    return env


def job_secret_env(config: FlywheelConfig) -> dict[str, str]:
    """The artifact store's secret options (``key``, ``secret``, ``token`` ...) as the job reads them,
    for a backend to set in the job process's own environment, never in its spec: the local backend
    does; a pod gets them from a Kubernetes Secret or its own environment instead."""
    _, secret = split_secret_options(config.artifact_store.storage_options)
    return {STORAGE_SECRET_OPTIONS_ENV: json.dumps(secret, sort_keys=True)} if secret else {}


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
    exit_code: int | None,
    output_uri: str,
    where: str,
    storage_options: dict[str, Any] | None = None,
    *,
    reason: str | None = None,
    peak_rss_bytes: int | None = None,
) -> JobFailedError:
    """The error for a job that exited with ``exit_code``: not retried for failures retrying cannot fix.

    The job's ``error.json`` (when it wrote one) supplies the message and is attached to the error.
    ``reason`` is why the platform says the job ended (a Kubernetes container's ``OOMKilled``,
    ``Error`` ...), None where it has no say (a local process); ``peak_rss_bytes`` is the job's peak
    memory where it was measured. A job that ran out of memory fails with :class:`OutOfMemoryJobError`:
    one that exited 3 (it caught the error itself), one ``OOMKilled``, and one killed by SIGKILL with
    no ``reason`` that wrote neither ``result.json`` nor ``error.json``, which is how the kernel's OOM
    killer ends a process. For the last two an ``error.json`` is written on the job's behalf.
    """
    error = read_job_file(output_uri, artifacts.ERROR, storage_options)
    if reason == "OOMKilled" or (
        reason is None
        and exit_code in SIGKILL_EXIT_CODES
        and error is None
        and read_job_file(output_uri, artifacts.RESULT, storage_options) is None
    ):
        return _killed_out_of_memory(
            exit_code, output_uri, where, storage_options, reason, peak_rss_bytes, error
        )
    detail = f"{error['error']}: {error['message']}" if error else "no error.json written"
    if exit_code in EXIT_CODES_NOT_RETRIED:
        kind = OutOfMemoryJobError if exit_code == EXIT_OUT_OF_MEMORY else NonRetryableJobError
        return kind(
            f"{where} failed with exit code {exit_code} ({EXIT_CODES_NOT_RETRIED[exit_code]}; "
            f"not retried): {detail}",
            exit_code=exit_code,
            error=error,
        )
    return TransientJobError(
        f"{where} failed with exit code {exit_code}: {detail}", exit_code=exit_code, error=error
    )


DISRUPTIONS = {
    "Evicted": ("Evicted", "was evicted by its node's kubelet (node-pressure eviction)"),
    "TerminationByKubelet": ("Evicted", "was evicted by its node's kubelet (node-pressure eviction)"),
    "PreemptionByScheduler": (
        "Preempted",
        "was preempted: the scheduler gave its node to a higher-priority pod",
    ),
    "EvictionByEvictionAPI": ("Evicted", "was evicted through the Eviction API (a node drain)"),
    "DeletionByTaintManager": ("NodeLost", "was deleted because its node became unreachable or not ready"),
    "DeletionByPodGC": ("NodeLost", "was deleted because its node no longer exists"),
    "Deleted": ("Deleted", "was deleted before it finished (by a user or a controller)"),
}
"""Why the platform, not the job, ended a pod (``status.reason`` or the ``DisruptionTarget`` condition's
reason) -> the ``error`` of its ``error.json`` and how the message says it. Such a job is retried."""


def disrupted_job_failure(
    reason: str,
    detail: str | None,
    exit_code: int | None,
    output_uri: str,
    where: str,
    storage_options: dict[str, Any] | None = None,
) -> TransientJobError:
    """The error of a job the platform ended for reasons of its own: retried, never out of memory.

    ``reason`` is a key of :data:`DISRUPTIONS` or ``DeadlineExceeded`` (the pod ran past its
    ``activeDeadlineSeconds``: a :class:`~flywheel.errors.JobTimeoutError`); ``detail`` is the
    platform's own message. An ``error.json`` is written on the job's behalf unless it wrote one.
    """
    said = f" ({detail.strip()})" if detail and detail.strip() else ""
    code = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    if reason == "DeadlineExceeded":
        kind, error_name = JobTimeoutError, "Timeout"
        message = (
            f"{where} timed out: it ran past its activeDeadlineSeconds and was killed{said}, {code}; "
            "retried. A job that is merely slow needs a longer compute.kubernetes.active_deadline_seconds."
        )
    else:
        kind = TransientJobError
        error_name, how = DISRUPTIONS.get(reason, (reason, f"was ended by the platform ({reason})"))
        message = f"{where} {how}{said}, {code}; not the job's fault, retried."
    error = read_job_file(output_uri, artifacts.ERROR, storage_options)
    if error is None:
        error = {
            "error": error_name,
            "message": message,
            "exit_code": exit_code,
            "retryable": True,
            "reason": reason,
        }
        write_job_file(output_uri, artifacts.ERROR, error, storage_options)
    return kind(message, exit_code=exit_code, error=error)


def _killed_out_of_memory(
    exit_code: int | None,
    output_uri: str,
    where: str,
    storage_options: dict[str, Any] | None,
    reason: str | None,
    peak_rss_bytes: int | None,
    error: dict[str, Any] | None,
) -> OutOfMemoryJobError:
    """The error of a job an OOM killer ended; writes its ``error.json`` unless the job wrote one."""
    if reason == "OOMKilled":
        how = f"its container was OOMKilled (exit code {exit_code}), over its memory limit"
    else:
        how = (
            f"killed by SIGKILL (exit code {exit_code}) without writing error.json, "
            "most likely by the kernel's OOM killer"
        )
    peak_rss_mb = round(peak_rss_bytes / 2**20, 1) if peak_rss_bytes else None
    peak = f" (peak RSS {peak_rss_mb:,.0f} MiB)" if peak_rss_mb else ""
    message = f"{where} ran out of memory: {how}{peak}; not retried. To fix it, {OUT_OF_MEMORY_ADVICE}."
    if error is None:
        error = {
            "error": "OutOfMemory",
            "message": message,
            "exit_code": exit_code,
            "retryable": False,
            "reason": reason or "SIGKILL",
            "peak_rss_mb": peak_rss_mb,
        }
        write_job_file(output_uri, artifacts.ERROR, error, storage_options)
    return OutOfMemoryJobError(message, exit_code=exit_code, error=error)


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


def write_job_file(
    output_uri: str, name: str, content: dict[str, Any], storage_options: dict[str, Any] | None = None
) -> None:
    """Write a job's file on its behalf (best effort: logs, never raises, so it cannot mask a failure)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(output_uri, **(storage_options or {}))
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(artifacts.job_uri(root, name), json.dumps(content, indent=2).encode())
    except Exception as exc:
        log.error("could not write %s to %s: %s", name, output_uri, exc)


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
    """The outcome of every planned job (``JobSpec.to_dict`` form), in plan order.

    A ``result.json`` of another attempt than the last one started (``attempt.json``) or of another
    dataset than the planned one is not the job's outcome: the job counts as failed with a
    ``StaleResult`` error that names both (:func:`read_job_result`).
    """
    outcomes = []
    for spec in map(JobSpec.from_dict, jobs):
        error = None
        try:
            result = read_job_result(spec, storage_options)
        except StaleResultError as exc:
            log.error("%s", exc)
            result, error = None, {"error": "StaleResult", "message": str(exc), "retryable": True}
        if result is None and error is None:
            error = read_job_file(spec.output_uri, artifacts.ERROR, storage_options)
        outcomes.append(JobOutcome(spec, result, error))
    return outcomes


def read_job_result(
    spec: JobSpec, storage_options: dict[str, Any] | None = None, *, attempt_id: str | None = None
) -> dict[str, Any] | None:
    """The job's ``result.json`` (None when there is none), checked to be this job's own.

    ``attempt_id`` defaults to the attempt recorded in the job's ``attempt.json`` (the local backend
    writes it as each try starts; where there is none, the attempt is not checked). Raises
    :class:`~flywheel.errors.StaleResultError`, naming both ids, for the result of another attempt or
    of another dataset than ``spec.dataset_id``.
    """
    result = read_job_file(spec.output_uri, artifacts.RESULT, storage_options)
    if result is None:
        return None
    if attempt_id is None:
        attempt_id = (read_job_file(spec.output_uri, artifacts.ATTEMPT, storage_options) or {}).get(
            "attempt_id"
        )
    where = f"job {spec.name} ({spec.output_uri})"
    check_result(result, where=where, attempt_id=attempt_id, dataset_id=spec.dataset_id)
    return result


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
