"""Every path in the artifact store: the one module that builds them (docs/artifact-store.md).

The functions return paths relative to the store's root (``/``-separated, no leading ``/``), except
where a name says ``uri``: those take the URI of a directory already in the store (a dataset, a job's
output) or the configured root. :class:`flywheel.storage.ArtifactStore` turns a relative path into a
filesystem path (``store.path``) and a full URL (``store.uri``)::

    <root>/
      <layer>/<workload_id>/<YYYY-MM-DD>/                 day_dir: a day partition of one of LAYERS
        _partition.json                                   PARTITION_MARKER: the commit record
        v-<version>/part-00000.parquet ...                version_dir, part_name
        _tmp-<version>/...                                staging_dir: a version being written
      reports/<workload_id>/<YYYY-MM-DD>/                 reports_dir
        validation.json                                   validation_result: Great Expectations result
        data_docs/index.html                              data_docs_dir, data_docs_index
        run-report.html                                   report_path (REPORT_NAME)
      reports/<workload_id>/timeline.html                 timeline_path (TIMELINE_NAME): every night
      alerts/<workload_id>/<YYYY-MM-DD>/<stamp>-<event>.json    alert_path: the local notification sink
      datasets/<workload_id>/                             datasets_dir
        <dataset_id>/{train,validation,evaluation}.jsonl  dataset_dir; split_uri (split_name)
        <dataset_id>/manifest.json                        manifest_uri (MANIFEST)
        golden/evaluation.jsonl                           golden_path
        latest.json                                       latest_path
        _tmp-<8 hex digits>/...                           dataset_staging_dir
      runs/<workload_id>/<YYYY-MM-DD>/                    run_dir
        train/<candidate_id>/                             train_dir; job_uri (RESULT ...), adapter_uri
          adapter/  loss_curve.json  result.json  error.json  attempt.json
        evaluate/<candidate_id>/<eval_type>/              evaluate_dir
          examples.jsonl  result.json  error.json  attempt.json
      models/<workload_id>/                               models_dir
        <sha256 of the adapter's files>/                  model_dir: a registered adapter, never rewritten
          adapter_config.json ...  _model.json            MODEL_MARKER: its commit record (written last)
        _tmp-<8 hex digits>/...                           model_staging_dir

``flywheel validate`` (the CLI) writes the same day layout into a store rooted at its output
directory, plus QUARANTINE_EXPORT at that root. Only this module spells these names; a change to the
layout is a change here (and in tests/flywheel/test_artifacts.py, which pins it).
"""

from __future__ import annotations

import posixpath
from datetime import date

LAYERS = ("raw", "clean", "quarantine")
"""Day-partitioned layers: extracted records, validated records, rejected records."""

PARTITION_MARKER = "_partition.json"
"""The commit record of a day partition: replacing it is the single commit point."""
VERSION_PREFIX = "v-"
"""A committed version directory of a day partition."""
STAGING_PREFIX = "_tmp-"
"""A directory being written; readers (pyarrow, Spark) skip names that start with ``_``."""

VALIDATION_RESULT = "validation.json"
DATA_DOCS = "data_docs"
DATA_DOCS_INDEX = "index.html"
REPORT_NAME = "run-report.html"
TIMELINE_NAME = "timeline.html"
"""The workload's timeline report: every recorded night on one page (:mod:`flywheel.report.timeline`)."""
QUARANTINE_EXPORT = "quarantine.jsonl"
"""Rejected records as JSON lines, at the root of the store ``flywheel validate`` writes."""

MANIFEST = "manifest.json"
LATEST = "latest.json"
GOLDEN_DIR = "golden"

RESULT = "result.json"
"""A job's last output: it succeeded."""
ERROR = "error.json"
"""A job's output instead of ``result.json``: why it failed."""
ATTEMPT = "attempt.json"
"""Which attempt last started the job (local backend): a ``result.json`` of another attempt is stale."""
RECOUNT = "recount.json"
"""A run's late-logs recount of the previous days (``runs/<workload>/<day>/``)."""
RETRAIN = "retrain.json"
"""Whether a run trains and why, as ``plan_training`` decided (``runs/<workload>/<day>/``)."""
LOSS_CURVE = "loss_curve.json"
"""A training job's curve: one point per optimiser step with ``step``, :data:`TRAIN_LOSS` and ``lr``,
and :data:`VALIDATION_LOSS` at each step the validation split was scored."""
TRAIN_LOSS = "train_loss"
VALIDATION_LOSS = "validation_loss"
ADAPTER = "adapter"
OPTIMIZER_STATE = "optimizer.pt"
"""Inside a trained adapter's directory: the optimizer's moments at its last step, which a warm start
from that adapter resumes (``training.warm_start_optimizer``)."""
EXAMPLES = "examples.jsonl"
"""An evaluation's per-example outcomes."""
MODEL_MARKER = "_model.json"
"""The commit record of a registered adapter directory: its digest and files; written last."""


# ---------------------------------------------------------------- day partitions and their reports


def day_dir(layer: str, workload_id: str, day: date) -> str:
    """``<layer>/<workload_id>/<day>``: one day partition of a layer."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(LAYERS)}")
    return posixpath.join(layer, workload_id, day.isoformat())


def version_dir(day_path: str, version: str) -> str:
    """The committed version ``version`` of the day partition at ``day_path``."""
    return posixpath.join(day_path, VERSION_PREFIX + version)


def staging_dir(day_path: str, version: str) -> str:
    """Where version ``version`` of the day partition at ``day_path`` is written before its commit."""
    return posixpath.join(day_path, STAGING_PREFIX + version)


def marker(day_path: str) -> str:
    """The commit record of the day partition at ``day_path``."""
    return posixpath.join(day_path, PARTITION_MARKER)


def part_name(index: int) -> str:
    """File name of the ``index``-th Parquet part of a version (``part-00000.parquet``, ...)."""
    return f"part-{index:05d}.parquet"


def reports_dir(workload_id: str, day: date) -> str:
    """``reports/<workload_id>/<day>``: the day's validation evidence and run report."""
    return posixpath.join("reports", workload_id, day.isoformat())


def validation_result(workload_id: str, day: date) -> str:
    """The Great Expectations result of the day's batch."""
    return posixpath.join(reports_dir(workload_id, day), VALIDATION_RESULT)


def data_docs_dir(workload_id: str, day: date) -> str:
    """The Data Docs site of the day's validation (its page: ``DATA_DOCS_INDEX`` inside)."""
    return posixpath.join(reports_dir(workload_id, day), DATA_DOCS)


def data_docs_index(docs_path: str) -> str:
    """The front page of the Data Docs site at ``docs_path``."""
    return posixpath.join(docs_path, DATA_DOCS_INDEX)


def report_path(workload_id: str, day: date) -> str:
    """The HTML report of the run of ``day`` (next to the day's Data Docs)."""
    return posixpath.join(reports_dir(workload_id, day), REPORT_NAME)


def timeline_path(workload_id: str) -> str:
    """The workload's timeline report, next to its days' report folders (rewritten whole each time)."""
    return posixpath.join("reports", workload_id, TIMELINE_NAME)


def alert_path(workload_id: str, day: date, stamp: str, event: str) -> str:
    """One notification of the local sink: ``alerts/<workload_id>/<day>/<stamp>-<event>.json``."""
    return posixpath.join("alerts", workload_id, day.isoformat(), f"{stamp}-{event}.json")


# ---------------------------------------------------------------- datasets


def datasets_dir(workload_id: str) -> str:
    """``datasets/<workload_id>``: every dataset of a workload, its golden set and latest pointer."""
    return posixpath.join("datasets", workload_id)


def dataset_dir(workload_id: str, dataset_id: str) -> str:
    return posixpath.join(datasets_dir(workload_id), dataset_id)


def dataset_staging_dir(workload_id: str, token: str) -> str:
    """Where a dataset is written before it is renamed to its content-addressed id."""
    return posixpath.join(datasets_dir(workload_id), STAGING_PREFIX + token)


def golden_path(workload_id: str) -> str:
    """The workload's frozen golden evaluation set."""
    return posixpath.join(datasets_dir(workload_id), GOLDEN_DIR, split_name("evaluation"))


def latest_path(workload_id: str) -> str:
    """The pointer to the dataset of the latest window built."""
    return posixpath.join(datasets_dir(workload_id), LATEST)


def split_name(split: str) -> str:
    """File name of a dataset split (``train``, ``validation``, ``evaluation``)."""
    return f"{split}.jsonl"


def split_uri(dataset_uri: str, split: str) -> str:
    """A split's file in the dataset (or dataset staging directory) at ``dataset_uri``."""
    return posixpath.join(dataset_uri.rstrip("/"), split_name(split))


def manifest_uri(dataset_uri: str) -> str:
    """The manifest of the dataset at ``dataset_uri``."""
    return posixpath.join(dataset_uri.rstrip("/"), MANIFEST)


# ---------------------------------------------------------------- training and evaluation jobs


def run_dir(workload_id: str, day: date) -> str:
    """``runs/<workload_id>/<day>``: the outputs of that day's run after the dataset."""
    return posixpath.join("runs", workload_id, day.isoformat())


def recount_path(workload_id: str, day: date) -> str:
    """The late-logs recount of the run of ``day``: the earlier days' windows counted again."""
    return posixpath.join(run_dir(workload_id, day), RECOUNT)


def retrain_path(workload_id: str, day: date) -> str:
    """Whether the run of ``day`` trains and why (:mod:`flywheel.train.retrain`)."""
    return posixpath.join(run_dir(workload_id, day), RETRAIN)


def train_dir(workload_id: str, day: date, candidate_id: str) -> str:
    """Where the candidate's training job of the day writes its adapter."""
    return posixpath.join(run_dir(workload_id, day), "train", candidate_id)


def evaluate_dir(workload_id: str, day: date, candidate_id: str, eval_type: str) -> str:
    """Where one evaluation of the day writes (the champion's: ``evaluate/champion/champion``)."""
    return posixpath.join(run_dir(workload_id, day), "evaluate", candidate_id, eval_type)


def job_uri(output_uri: str, name: str) -> str:
    """The output ``name`` (``RESULT``, ``ERROR``, ``EXAMPLES``, ...) of the job writing at ``output_uri``."""
    return posixpath.join(output_uri, name)


def adapter_uri(output_uri: str) -> str:
    """The adapter a training job writing to ``output_uri`` leaves."""
    return job_uri(output_uri, ADAPTER)


def uri(root: str, relative: str) -> str:
    """``relative`` under the configured root URL as written in the configuration (jobs get these)."""
    return posixpath.join(root.rstrip("/"), relative)


# ---------------------------------------------------------------- registered models


def models_dir(workload_id: str) -> str:
    """``models/<workload_id>``: the adapters of the workload's registered model versions."""
    return posixpath.join("models", workload_id)


def model_dir(workload_id: str, sha256: str) -> str:
    """A registered adapter, addressed by the digest of its files: a re-run of a day never touches it."""
    return posixpath.join(models_dir(workload_id), sha256)


def model_staging_dir(workload_id: str, token: str) -> str:
    """Where an adapter is copied (and hashed) before it moves to its content-addressed directory."""
    return posixpath.join(models_dir(workload_id), STAGING_PREFIX + token)
