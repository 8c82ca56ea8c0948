"""The bodies of the workload DAG's tasks: plain functions from config and data interval to results.

DAG files call these and nothing heavier, so the same code runs under Airflow, from the CLI and in
tests. Each function records its stage in the metadata database and returns a small JSON summary
(the task's XCom), never record data.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from flywheel.config import FlywheelConfig, ModelConfig
from flywheel.tracking import (
    ensure_run,
    record_dataset,
    record_partition,
    record_stage,
    record_validation,
)

if TYPE_CHECKING:
    from flywheel.storage import ArtifactStore

log = logging.getLogger(__name__)


def extract(
    config: FlywheelConfig,
    workload_id: str,
    *,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str,
    try_number: int = 1,
    page_size: int | None = None,
    client_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Extract the workload's logs of one data interval into its raw partition and record it.

    ``client_ids`` overrides the workload's configured client filter for this run (a manual run's
    param); ``None`` keeps the configured one.
    """
    from flywheel.extract import extract_interval
    from flywheel.logstore import connect

    workload = config.workload(workload_id)
    source = workload.log_source
    clients = client_ids if client_ids is not None else workload.client_ids
    run_id = _run_id(config, workload_id, dag_run_id, interval_start, interval_end)
    store = _store(config)
    with record_stage(config.metadata, run_id, "extract", try_number) as stage:
        client = connect(source.conn_id, source.request_timeout_s, raw_hits=True)
        log.info(
            "extracting %s [%s, %s) from %s (clients: %s)",
            workload_id,
            interval_start.isoformat(),
            interval_end.isoformat(),
            source.index,
            ", ".join(clients) if clients else "all",
        )
        result = extract_interval(
            client,
            store,
            workload_id=workload_id,
            source=source,
            start=interval_start,
            end=interval_end,
            client_ids=clients,
            page_size=page_size,
            on_page=_log_progress,
        )
        record_partition(config.metadata, result, run_id)
        stage.summary = result.to_dict()
    log.info(
        "extracted %d records into %s (%s, %.1f s)",
        result.records,
        result.uri,
        result.read_method,
        result.seconds,
    )
    return stage.summary


def validate(
    config: FlywheelConfig,
    workload_id: str,
    *,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str,
    try_number: int = 1,
) -> dict[str, Any]:
    """Validate the interval's raw partition into clean and quarantine partitions and record the verdict.

    Raises DataQualityError when a batch expectation fails, after committing the partitions and the
    evidence (validation result, Data Docs) so an operator can inspect them.
    """
    from flywheel.errors import DataQualityError
    from flywheel.validate import validate_day

    workload = config.workload(workload_id)
    run_id = _run_id(config, workload_id, dag_run_id, interval_start, interval_end)
    with record_stage(config.metadata, run_id, "validate", try_number) as stage:
        result = validate_day(
            _store(config),
            workload_id=workload_id,
            start=interval_start,
            end=interval_end,
            rules=workload.data_quality,
        )
        record_validation(config.metadata, result, run_id)
        stage.summary = result.to_dict()
        log.info(
            "validated %s %s: %d extracted = %d clean + %d quarantined (%s); %d duplicates in the day; "
            "data docs: %s",
            workload_id,
            result.day,
            result.extracted,
            result.clean,
            result.quarantined,
            result.reasons or "no quarantine",
            result.duplicates_in_day,
            result.data_docs_uri,
        )
        if not result.success:
            raise DataQualityError(
                f"batch of {workload_id} {result.day} failed: {', '.join(result.failed_expectations)}; "
                f"evidence: {result.data_docs_uri or result.validation_uri}"
            )
    return stage.summary


def build_dataset(
    config: FlywheelConfig,
    workload_id: str,
    *,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str,
    try_number: int = 1,
) -> dict[str, Any]:
    """Build the dataset of the training window that ends with the interval's day, and record it."""
    from flywheel.datasets import build_dataset as build
    from flywheel.extract import partition_day

    workload = config.workload(workload_id)
    run_id = _run_id(config, workload_id, dag_run_id, interval_start, interval_end)
    with record_stage(config.metadata, run_id, "build_dataset", try_number) as stage:
        result = build(_store(config), workload, partition_day(interval_start))
        record_dataset(config.metadata, result, run_id)
        stage.summary = {
            **result.to_dict(),
            "interval_start": interval_start.isoformat(),
            "interval_end": interval_end.isoformat(),
        }
    log.info(
        "dataset %s: %s, %d duplicates removed", result.dataset_id, result.counts, result.duplicates_removed
    )
    return stage.summary


def plan_training(
    config: FlywheelConfig, workload_id: str, dataset: dict[str, Any], *, dag_run_id: str
) -> list[dict[str, Any]]:
    """One training job per candidate of the workload, on the dataset ``build_dataset`` summarised.

    Returns the jobs as plain dicts (the XCom that the mapped ``train`` task expands over).
    """
    from flywheel.compute import train_job

    workload = config.workload(workload_id)
    day = date.fromisoformat(dataset["last_day"])
    jobs = [
        train_job(config, workload, candidate, dataset_uri=dataset["uri"], day=day, dag_run_id=dag_run_id)
        for candidate in workload.training.candidates
    ]
    for job in jobs:
        log.info("%s: %s -> %s", job.name, job.labels["flywheel.io/candidate"], job.output_uri)
    return [job.to_dict() for job in jobs]


def collect_training(
    config: FlywheelConfig,
    workload_id: str,
    dataset: dict[str, Any],
    jobs: list[dict[str, Any]],
    *,
    dag_run_id: str,
    try_number: int = 1,
) -> dict[str, Any]:
    """Read every candidate's ``result.json`` (or ``error.json``) from the artifact store and record them.

    Runs once all training jobs have finished, whatever their outcome. Raises TrainingFailedError when
    no candidate produced an adapter; a run with some failed candidates goes on with the others.
    """
    from flywheel.compute import JobSpec, read_job_file
    from flywheel.errors import TrainingFailedError

    interval_start = datetime.fromisoformat(dataset["interval_start"])
    interval_end = datetime.fromisoformat(dataset["interval_end"])
    run_id = _run_id(config, workload_id, dag_run_id, interval_start, interval_end)
    with record_stage(config.metadata, run_id, "train", try_number) as stage:
        candidates = []
        options = config.artifact_store.storage_options
        for spec in map(JobSpec.from_dict, jobs):
            result = read_job_file(spec.output_uri, "result.json", options)
            error = None if result else read_job_file(spec.output_uri, "error.json", options)
            entry: dict[str, Any] = {
                "candidate_id": spec.labels["flywheel.io/candidate"],
                "output_uri": spec.output_uri,
                "status": "succeeded" if result else "failed",
            }
            if result:
                entry |= {
                    "adapter_uri": f"{spec.output_uri}/adapter",
                    **{key: result[key] for key in _TRAIN_FIGURES},
                }
            else:
                entry["error"] = error or {"error": "NoOutput", "message": "the job wrote no result.json"}
            candidates.append(entry)
            log.info(
                "candidate %s: %s", entry["candidate_id"], {k: v for k, v in entry.items() if k != "error"}
            )
        stage.summary = {
            "dataset_id": dataset["dataset_id"],
            "candidates": candidates,
            "succeeded": sum(c["status"] == "succeeded" for c in candidates),
            "failed": sum(c["status"] == "failed" for c in candidates),
        }
        if not stage.summary["succeeded"]:
            failures = "; ".join(f"{c['candidate_id']}: {c['error'].get('message', '')}" for c in candidates)
            raise TrainingFailedError(f"no candidate of {workload_id} produced an adapter ({failures})")
    return stage.summary


def plan_evaluation(
    config: FlywheelConfig,
    workload_id: str,
    dataset: dict[str, Any],
    train_jobs: list[dict[str, Any]],
    *,
    dag_run_id: str,
) -> list[dict[str, Any]]:
    """The run's evaluation jobs, all on the same dataset: the champion, and per candidate its variants.

    ``base`` and ``icl`` need only the candidate's base model; ``customized`` needs the adapter its
    training job published (a candidate whose training failed gets no customized evaluation). The
    champion, when the workload has one, is evaluated on the same examples.
    """
    from flywheel.compute import CHAMPION, JobSpec, evaluate_job, read_job_file

    workload = config.workload(workload_id)
    day = date.fromisoformat(dataset["last_day"])
    options = config.artifact_store.storage_options
    trained = {
        spec.labels["flywheel.io/candidate"]: spec.output_uri
        for spec in map(JobSpec.from_dict, train_jobs)
        if read_job_file(spec.output_uri, "result.json", options)
    }
    planned: list[tuple[str, str, ModelConfig]] = []
    champion, version = current_champion(config, workload_id)
    if champion is not None:
        planned.append((CHAMPION, "champion", champion))
    for candidate in workload.training.candidates:
        name, base_model = candidate.candidate_id, candidate.base_model
        for eval_type in workload.evaluation.eval_types:
            if eval_type != "customized":
                planned.append((name, eval_type, ModelConfig(base_model=base_model)))
            elif name in trained:
                model = ModelConfig(base_model=base_model, adapter=f"{trained[name]}/adapter")
                planned.append((name, eval_type, model))
            else:
                log.warning("%s: no adapter from training, so no customized evaluation", name)
    jobs = [
        evaluate_job(
            config,
            workload,
            model,
            eval_type=eval_type,
            candidate_id=candidate_id,
            dataset_uri=dataset["uri"],
            day=day,
            dag_run_id=dag_run_id,
        )
        for candidate_id, eval_type, model in planned
    ]
    for job in jobs:
        if version is not None and job.labels["flywheel.io/candidate"] == CHAMPION:
            # Which registry version was evaluated as the champion (collect_evaluation records it).
            job.labels["flywheel.io/champion-version"] = str(version)
        log.info("%s -> %s", job.name, job.output_uri)
    return [job.to_dict() for job in jobs]


def current_champion(config: FlywheelConfig, workload_id: str) -> tuple[ModelConfig | None, int | None]:
    """The model to evaluate as the champion and its registry version.

    The registry's ``champion`` alias wins; while the registry has none, the workload's configured
    ``evaluation.champion`` (an endpoint serving the current production model) stands in, unversioned.
    """
    from flywheel.config import ModelConfig
    from flywheel.registry import champion

    version = champion(config.metadata, workload_id)
    if version is None:
        return config.workload(workload_id).evaluation.champion, None
    return ModelConfig.model_validate(version.model), version.version


def run_job_locally(job: dict[str, Any]) -> None:
    """Run one planned job (training or evaluation) as a local process (the ``local`` compute backend)."""
    from flywheel.compute import JobSpec, run_local

    run_local(JobSpec.from_dict(job), logger=log)


def collect_evaluation(
    config: FlywheelConfig,
    workload_id: str,
    dataset: dict[str, Any],
    jobs: list[dict[str, Any]],
    *,
    dag_run_id: str,
    try_number: int = 1,
) -> dict[str, Any]:
    """Read every evaluation's ``result.json`` (or ``error.json``), record each, and summarise them.

    Runs once all evaluation jobs have finished, whatever their outcome. Raises EvaluationFailedError
    when none succeeded. ``same_examples`` says whether every succeeded evaluation scored the same
    examples (the precondition of a paired comparison).
    """
    from flywheel.compute import JobSpec, read_job_file
    from flywheel.errors import EvaluationFailedError
    from flywheel.evaluation.runner import headline
    from flywheel.tracking import record_evaluation

    interval_start = datetime.fromisoformat(dataset["interval_start"])
    interval_end = datetime.fromisoformat(dataset["interval_end"])
    run_id = _run_id(config, workload_id, dag_run_id, interval_start, interval_end)
    options = config.artifact_store.storage_options
    with record_stage(config.metadata, run_id, "evaluate", try_number) as stage:
        evaluations = []
        for spec in map(JobSpec.from_dict, jobs):
            arguments = dict(zip(spec.arguments[1::2], spec.arguments[2::2], strict=False))
            result = read_job_file(spec.output_uri, "result.json", options)
            error = None if result else read_job_file(spec.output_uri, "error.json", options)
            candidate_id = spec.labels["flywheel.io/candidate"]
            eval_type = spec.labels["flywheel.io/eval-type"]
            record_evaluation(
                config.metadata,
                run_id,
                workload_id=workload_id,
                dataset_id=dataset["dataset_id"],
                candidate_id=candidate_id,
                eval_type=eval_type,
                model=(result["model"] if result else _model_arguments(arguments))
                | _version_label(spec.labels),
                result_uri=f"{spec.output_uri}/result.json",
                result=result,
                error=error,
            )
            entry: dict[str, Any] = {
                "candidate_id": candidate_id,
                "eval_type": eval_type,
                "output_uri": spec.output_uri,
                "status": "succeeded" if result else "failed",
            }
            if result:
                entry |= headline(result) | {"examples_hash": result["examples_hash"]}
            else:
                entry["error"] = error or {"error": "NoOutput", "message": "the job wrote no result.json"}
            evaluations.append(entry)
            log.info("%s/%s: %s", candidate_id, eval_type, {k: v for k, v in entry.items() if k != "error"})
        hashes = {e["examples_hash"] for e in evaluations if e["status"] == "succeeded"}
        stage.summary = {
            "dataset_id": dataset["dataset_id"],
            "evaluations": evaluations,
            "succeeded": sum(e["status"] == "succeeded" for e in evaluations),
            "failed": sum(e["status"] == "failed" for e in evaluations),
            "same_examples": len(hashes) <= 1,
        }
        if len(hashes) > 1:
            log.error("evaluations scored different example sets (%s): they cannot be compared", hashes)
        if not stage.summary["succeeded"]:
            failures = "; ".join(
                f"{e['candidate_id']}/{e['eval_type']}: {e['error'].get('message', '')}" for e in evaluations
            )
            raise EvaluationFailedError(f"no evaluation of {workload_id} succeeded ({failures})")
    return stage.summary


def _version_label(labels: dict[str, str]) -> dict[str, int]:
    """``{"version": N}`` for the evaluation of registry version N as the champion, else nothing."""
    version = labels.get("flywheel.io/champion-version")
    return {"version": int(version)} if version else {}


def _model_arguments(arguments: dict[str, str]) -> dict[str, Any]:
    """The evaluated model as named on a job's command line (for a job that wrote no result)."""
    if "--endpoint" in arguments:
        import json

        endpoint = json.loads(arguments["--endpoint"])
        return {"endpoint": {"base_url": endpoint["base_url"], "model": endpoint["model"]}}
    model = {"base_model": arguments["--base-model"]}
    return model | ({"adapter": arguments["--adapter"]} if "--adapter" in arguments else {})


_TRAIN_FIGURES = (
    "base_model",
    "steps",
    "best_validation_loss",
    "final_validation_loss",
    "tokens_per_s",
    "wall_seconds",
    "config_hash",
)
"""The figures of each candidate's result.json that the train stage summary (and the task XCom) carries."""


def _run_id(
    config: FlywheelConfig,
    workload_id: str,
    dag_run_id: str,
    interval_start: datetime,
    interval_end: datetime,
) -> int:
    return ensure_run(
        config.metadata,
        workload_id=workload_id,
        dag_id=config.workload(workload_id).dag_id,
        dag_run_id=dag_run_id,
        interval_start=interval_start,
        interval_end=interval_end,
    )


def _store(config: FlywheelConfig) -> ArtifactStore:
    from flywheel.storage import ArtifactStore

    return ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)


def _log_progress(pages: int, records: int) -> None:
    if pages % 50 == 0:
        log.info("%d pages, %d records", pages, records)


def decide(
    config: FlywheelConfig,
    workload_id: str,
    *,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str,
    try_number: int = 1,
) -> dict[str, Any]:
    """Decide promote / alert / no_change from the run's recorded evidence and record the decision.

    Runs whatever happened upstream: a failed stage is itself the evidence (an alert).
    """
    from flywheel.decision.run import decide_run

    run_id = _run_id(config, workload_id, dag_run_id, interval_start, interval_end)
    with record_stage(config.metadata, run_id, "decide", try_number) as stage:
        stage.summary = decide_run(config, workload_id, run_id) | {
            "interval_start": interval_start.isoformat(),
            "interval_end": interval_end.isoformat(),
        }
    return stage.summary


def promote(
    config: FlywheelConfig, workload_id: str, decision: dict[str, Any], *, dag_run_id: str
) -> dict[str, Any]:
    """Move the champion alias to the run's challenger, deploy it, and notify.

    The alias moves in one transaction with its audit row, and the deploy hook runs inside it: a hook
    failure, or a champion that moved while the run evaluated the old one, leaves the registry as it
    was, records why, raises an alert and fails the task (PromotionFailedError).
    """
    from flywheel.deploy import deploy_hook
    from flywheel.errors import DeployError, PromotionFailedError
    from flywheel.registry import RegistryError, champion
    from flywheel.registry import promote as move_alias

    workload = config.workload(workload_id)
    current = champion(config.metadata, workload_id)
    if current is not None and current.version == decision["challenger_version"]:
        # A retry or re-run of a promotion that already happened: nothing to move, nothing to notify.
        log.info("%s: version %s already is the champion", workload_id, current.version)
        return {"status": "already_champion", "version": current.version}
    deployment: dict[str, Any] = {}
    reason = "; ".join(r["message"] for r in decision["reasons"])
    try:
        move = move_alias(
            config.metadata,
            workload_id,
            decision["challenger_version"],
            actor=f"{workload.dag_id}/{dag_run_id}",
            reason=reason,
            decision_id=decision["decision_id"],
            expected_champion=decision["champion_version"],
            before_commit=deploy_hook(
                workload.deploy,
                workload_id,
                decision_id=decision["decision_id"],
                dag_run_id=dag_run_id,
                results=deployment,
            ),
        )
    except (DeployError, RegistryError) as exc:
        _record_promotion(config, decision["decision_id"], {"status": "failed", "error": str(exc)[:2000]})
        failure = {
            "code": "promotion_failed",
            "message": f"promotion failed, the champion is unchanged: {exc}",
        }
        _notify(
            config, workload_id, "alert", decision | {"reasons": [failure, *decision["reasons"]]}, dag_run_id
        )
        raise PromotionFailedError(str(failure["message"])) from exc
    promotion = {
        "status": "promoted",
        "version": move.version,
        "previous_version": move.previous_version,
        "alias_event_id": move.id,
        "deployment": deployment or None,
    }
    _record_promotion(config, decision["decision_id"], promotion)
    log.info(
        "%s: version %s is the champion (was %s); deployment: %s",
        workload_id,
        move.version,
        move.previous_version,
        deployment or "none",
    )
    _notify(config, workload_id, "promote", decision, dag_run_id)
    return promotion


def notify_outcome(
    config: FlywheelConfig, workload_id: str, event: str, decision: dict[str, Any], *, dag_run_id: str
) -> list[dict[str, Any]]:
    """The ``alert`` and ``no_change`` branches: notify the workload's channels of the decision."""
    log.log(
        logging.WARNING if event == "alert" else logging.INFO,
        "%s: %s: %s",
        workload_id,
        event,
        "; ".join(r["message"] for r in decision["reasons"]),
    )
    return _notify(config, workload_id, event, decision, dag_run_id)


def report(config: FlywheelConfig, workload_id: str, *, dag_run_id: str) -> str | None:
    """Render the run's HTML report (whatever stages ran) into the artifact store; return its URI."""
    from flywheel.decision.run import report_data, report_path
    from flywheel.report import render_report, write_report

    data = report_data(config, workload_id, dag_run_id)
    if data is None:
        log.warning("%s: no run recorded for %s; nothing to report", workload_id, dag_run_id)
        return None
    day = datetime.fromisoformat(data["interval_start"]).date()
    uri = write_report(_store(config), report_path(workload_id, day), render_report(data))
    log.info("run report: %s", uri)
    return uri


def _record_promotion(config: FlywheelConfig, decision_id: int, promotion: dict[str, Any]) -> None:
    from flywheel.db.engine import session_scope
    from flywheel.db.models import Decision

    with session_scope(config.metadata) as session:
        session.get_one(Decision, decision_id).promotion = promotion


def _notify(
    config: FlywheelConfig, workload_id: str, event: str, decision: dict[str, Any], dag_run_id: str
) -> list[dict[str, Any]]:
    from flywheel.alerts import Notification, notify

    workload = config.workload(workload_id)
    titles = {
        "promote": f"{workload_id}: {decision['challenger']} promoted to champion",
        "alert": f"{workload_id}: ALERT ({', '.join(r['code'] for r in decision['reasons'])})",
        "no_change": f"{workload_id}: the champion stays",
    }
    figures = {
        "primary_metric": decision["primary_metric"],
        "examples": decision["examples"],
        "champion": decision["champion"],
        "champion_version": decision["champion_version"],
        "challenger": decision["challenger"],
        "challenger_version": decision["challenger_version"],
        **{f"{decision['primary_metric']}.{key}": value for key, value in decision["figures"].items()},
    }
    notification = Notification(
        workload_id=workload_id,
        event=event,
        title=titles[event],
        reasons=decision["reasons"],
        figures={key: value for key, value in figures.items() if value is not None},
        dag_id=workload.dag_id,
        dag_run_id=dag_run_id,
        interval_start=_parse(decision.get("interval_start")),
        interval_end=_parse(decision.get("interval_end")),
        run_url=_run_url(workload.dag_id, dag_run_id),
        report_uri=decision["report_uri"],
    )
    return notify(config, notification)


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _run_url(dag_id: str, dag_run_id: str) -> str | None:
    """The DAG run's page in the Airflow UI (``[api] base_url``)."""
    from urllib.parse import quote

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback=None)
    return f"{base.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(dag_run_id, safe='')}" if base else None
