"""Pins the artifact-store layout: every path flywheel.artifacts builds for one workload and day.

A change here is a change of the layout that readers of the store (docs/artifact-store.md) rely on.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from flywheel import artifacts
from flywheel.storage import ArtifactStore

WL = "customer_support_router"
DAY = date(2026, 11, 20)


def test_every_relative_path_of_one_workload_and_day() -> None:
    raw = artifacts.day_dir("raw", WL, DAY)
    docs = artifacts.data_docs_dir(WL, DAY)
    paths = {
        "raw": raw,
        "clean": artifacts.day_dir("clean", WL, DAY),
        "quarantine": artifacts.day_dir("quarantine", WL, DAY),
        "marker": artifacts.marker(raw),
        "version": artifacts.version_dir(raw, "20261121T080910-2704831a"),
        "staging": artifacts.staging_dir(raw, "20261121T080910-2704831a"),
        "part": artifacts.part_name(1),
        "reports": artifacts.reports_dir(WL, DAY),
        "validation": artifacts.validation_result(WL, DAY),
        "data_docs": docs,
        "data_docs_index": artifacts.data_docs_index(docs),
        "report": artifacts.report_path(WL, DAY),
        "timeline": artifacts.timeline_path(WL),
        "alert": artifacts.alert_path(WL, DAY, "20261121T021409123456", "promoted"),
        "datasets": artifacts.datasets_dir(WL),
        "dataset": artifacts.dataset_dir(WL, "2026-11-20-70aea58d60"),
        "dataset_staging": artifacts.dataset_staging_dir(WL, "1a2b3c4d"),
        "golden": artifacts.golden_path(WL),
        "latest": artifacts.latest_path(WL),
        "run": artifacts.run_dir(WL, DAY),
        "train": artifacts.train_dir(WL, DAY, "smollm2-135m"),
        "evaluate": artifacts.evaluate_dir(WL, DAY, "smollm2-135m", "icl"),
        "champion": artifacts.evaluate_dir(WL, DAY, "champion", "champion"),
        "quarantine_export": artifacts.QUARANTINE_EXPORT,
    }
    assert paths == {
        "raw": "raw/customer_support_router/2026-11-20",
        "clean": "clean/customer_support_router/2026-11-20",
        "quarantine": "quarantine/customer_support_router/2026-11-20",
        "marker": "raw/customer_support_router/2026-11-20/_partition.json",
        "version": "raw/customer_support_router/2026-11-20/v-20261121T080910-2704831a",
        "staging": "raw/customer_support_router/2026-11-20/_tmp-20261121T080910-2704831a",
        "part": "part-00001.parquet",
        "reports": "reports/customer_support_router/2026-11-20",
        "validation": "reports/customer_support_router/2026-11-20/validation.json",
        "data_docs": "reports/customer_support_router/2026-11-20/data_docs",
        "data_docs_index": "reports/customer_support_router/2026-11-20/data_docs/index.html",
        "report": "reports/customer_support_router/2026-11-20/run-report.html",
        "timeline": "reports/customer_support_router/timeline.html",
        "alert": "alerts/customer_support_router/2026-11-20/20261121T021409123456-promoted.json",
        "datasets": "datasets/customer_support_router",
        "dataset": "datasets/customer_support_router/2026-11-20-70aea58d60",
        "dataset_staging": "datasets/customer_support_router/_tmp-1a2b3c4d",
        "golden": "datasets/customer_support_router/golden/evaluation.jsonl",
        "latest": "datasets/customer_support_router/latest.json",
        "run": "runs/customer_support_router/2026-11-20",
        "train": "runs/customer_support_router/2026-11-20/train/smollm2-135m",
        "evaluate": "runs/customer_support_router/2026-11-20/evaluate/smollm2-135m/icl",
        "champion": "runs/customer_support_router/2026-11-20/evaluate/champion/champion",
        "quarantine_export": "quarantine.jsonl",
    }


def test_files_inside_a_dataset_and_a_job_output() -> None:
    dataset = "s3://bucket/flywheel/datasets/customer_support_router/2026-11-20-70aea58d60"
    assert [artifacts.split_uri(dataset + "/", s) for s in ("train", "validation", "evaluation")] == [
        f"{dataset}/train.jsonl",
        f"{dataset}/validation.jsonl",
        f"{dataset}/evaluation.jsonl",
    ]
    assert artifacts.manifest_uri(dataset) == f"{dataset}/manifest.json"

    output = "s3://bucket/flywheel/runs/customer_support_router/2026-11-20/train/smollm2-135m"
    names = (artifacts.RESULT, artifacts.ERROR, artifacts.LOSS_CURVE, artifacts.EXAMPLES)
    assert [artifacts.job_uri(output, name) for name in names] == [
        f"{output}/result.json",
        f"{output}/error.json",
        f"{output}/loss_curve.json",
        f"{output}/examples.jsonl",
    ]
    assert artifacts.adapter_uri(output) == f"{output}/adapter"


@pytest.mark.parametrize("root", ["s3://bucket/flywheel", "s3://bucket/flywheel/", "/srv/flywheel/artifacts"])
def test_uris_under_the_configured_root_keep_the_root_as_written(root: str) -> None:
    relative = artifacts.train_dir(WL, DAY, "smollm2-135m")
    assert artifacts.uri(root, relative) == f"{root.rstrip('/')}/{relative}"


def test_the_store_resolves_relative_paths_under_its_root(tmp_path: Path) -> None:
    store = ArtifactStore(f"{tmp_path}/artifacts")
    assert store.day_path(WL, DAY, "clean") == f"{tmp_path}/artifacts/{artifacts.day_dir('clean', WL, DAY)}"
    assert store.uri(store.path(artifacts.report_path(WL, DAY))) == (
        f"file://{tmp_path}/artifacts/reports/{WL}/2026-11-20/run-report.html"
    )


def test_an_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown layer 'bronze'; layers: raw, clean, quarantine"):
        artifacts.day_dir("bronze", WL, DAY)


def test_registered_model_paths() -> None:
    sha256 = "ab" * 32
    assert artifacts.models_dir(WL) == "models/customer_support_router"
    assert artifacts.model_dir(WL, sha256) == f"models/customer_support_router/{sha256}"
    assert artifacts.model_staging_dir(WL, "1a2b3c4d") == "models/customer_support_router/_tmp-1a2b3c4d"
    assert artifacts.MODEL_MARKER == "_model.json"
