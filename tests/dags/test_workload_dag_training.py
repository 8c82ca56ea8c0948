"""Training and evaluation in the workload DAG through ``dag.test()`` on the local backend.

Real jobs, real processes: one mapped ``train`` task per candidate runs ``flywheel train`` as a
subprocess on the tiny model, then one mapped ``evaluate`` task per model variant runs ``flywheel
evaluate``; a job that cannot succeed (bad input) fails without a retry, a job stopped from outside
(SIGTERM) is retried and succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import TEST_EVALUATION, TEST_TRAINING, workload_dag, write_config
from flywheel.config import FlywheelConfig, load_config
from flywheel.db.engine import get_engine, session_scope
from flywheel.db.migrate import upgrade
from flywheel.db.models import Evaluation, RunStage
from flywheel.demo.seed import seed_logs
from flywheel.intervals import latest_intervals

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
WORKLOAD = "customer_support_router"
# Retries after about a second, so that dag.test() does not sit out the production backoff.
FAST_RETRIES = {"retries": 2, "retry_delay_minutes": 0.01, "max_retry_delay_minutes": 0.05}


def configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training: dict, **overrides: object
) -> FlywheelConfig:
    path = write_config(tmp_path, airflow=FAST_RETRIES, training=training, **overrides)
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
    config = load_config(path)
    upgrade(get_engine(config.metadata))
    return config


def run_latest_day(config: FlywheelConfig):
    workload = config.workload(WORKLOAD)
    seed_logs(config, days=1, records_per_day=300, now=NOW, workloads=[WORKLOAD])
    ((_, end),) = latest_intervals(workload.schedule, 1, NOW)
    return workload_dag(config, WORKLOAD).test(logical_date=end)


def train_instances(dag_run) -> dict[str, object]:
    return mapped_instances(dag_run, "train")


def mapped_instances(dag_run, task_id: str) -> dict[str, object]:
    return {ti.rendered_map_index: ti for ti in dag_run.get_task_instances() if ti.task_id == task_id}


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_each_candidate_trains_its_adapter_and_a_bad_one_fails_without_retry(
    dagbag, airflow_db, empty_log_store, tiny_model, tmp_path, monkeypatch
):
    training = {
        "settings": TEST_TRAINING["settings"],
        "candidates": [
            {"candidate_id": "tiny", "base_model": tiny_model},
            {"candidate_id": "tiny-r4", "base_model": tiny_model, "settings": {"lora": {"r": 4}}},
            {"candidate_id": "missing", "base_model": str(tmp_path / "no-such-model")},
        ],
    }
    evaluation = {**TEST_EVALUATION, "eval_types": ["base", "icl", "customized"]}
    config = configure(tmp_path, monkeypatch, training, evaluation=evaluation)

    dag_run = run_latest_day(config)

    trained = train_instances(dag_run)
    assert set(trained) == {"tiny", "tiny-r4", "missing"}  # the map index shows the candidate
    assert trained["tiny"].state == trained["tiny-r4"].state == "success"
    assert trained["missing"].state == "failed"
    assert trained["missing"].try_number == 1  # a bad input is not retried
    collect = dag_run.get_task_instance("collect_training")
    assert collect.state == "success"

    root = Path(config.artifact_store.root) / "runs" / WORKLOAD / "2026-11-20" / "train"
    results = {c: json.loads((root / c / "result.json").read_text()) for c in ("tiny", "tiny-r4")}
    for candidate, result in results.items():
        assert (root / candidate / "adapter" / "adapter_model.safetensors").is_file()
        assert (root / candidate / "adapter" / "adapter_config.json").is_file()
        assert (root / candidate / "loss_curve.json").is_file()
        assert result["steps"] == 2
    assert json.loads((root / "tiny-r4" / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert results["tiny"]["trainable_parameters"] > results["tiny-r4"]["trainable_parameters"]
    error = json.loads((root / "missing" / "error.json").read_text())
    assert (error["exit_code"], error["retryable"]) == (2, False)
    assert not (root / "missing" / "result.json").exists()

    with session_scope(config.metadata) as session:
        stage = session.scalars(select(RunStage).where(RunStage.stage == "train")).one()
        assert stage.status == "succeeded"
        summary = {c["candidate_id"]: c for c in stage.summary["candidates"]}
    assert (stage.summary["succeeded"], stage.summary["failed"]) == (2, 1)
    assert summary["tiny"]["adapter_uri"].endswith("train/tiny/adapter")
    assert summary["tiny"]["best_validation_loss"] == results["tiny"]["best_validation_loss"]
    assert summary["missing"]["error"]["error"] == "ModelNotFound"

    # Evaluation: base and icl of every candidate, customized where training produced an adapter.
    evaluated = mapped_instances(dag_run, "evaluate")
    variants = {f"{c}/{t}" for c in ("tiny", "tiny-r4") for t in ("base", "icl", "customized")}
    assert set(evaluated) == variants | {"missing/base", "missing/icl"}
    assert {name for name, ti in evaluated.items() if ti.state == "success"} == variants
    assert evaluated["missing/base"].try_number == 1  # the missing model is not retried
    assert dag_run.get_task_instance("collect_evaluation").state == "success"
    evaluations_root = root.parent / "evaluate"
    results = {v: json.loads((evaluations_root / v / "result.json").read_text()) for v in variants}
    assert len({r["examples_hash"] for r in results.values()}) == 1  # every model saw the same examples
    assert {r["examples"] for r in results.values()} == {4}
    assert results["tiny/customized"]["model"]["adapter"].endswith("train/tiny/adapter")
    lines = (evaluations_root / "tiny" / "icl" / "examples.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["icl_shots"] for line in lines)
    with session_scope(config.metadata) as session:
        rows = session.scalars(select(Evaluation)).all()
        stage = session.scalars(select(RunStage).where(RunStage.stage == "evaluate")).one()
        assert {(r.candidate_id, r.eval_type, r.status) for r in rows} == {
            *((v.split("/")[0], v.split("/")[1], "succeeded") for v in variants),
            ("missing", "base", "failed"),
            ("missing", "icl", "failed"),
        }
        assert all(r.metrics["function_name_accuracy"]["n"] == 4 for r in rows if r.status == "succeeded")
        assert (stage.summary["succeeded"], stage.summary["failed"], stage.summary["same_examples"]) == (
            6,
            2,
            True,
        )


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_a_terminated_training_job_is_retried(
    dagbag, airflow_db, empty_log_store, tiny_model, tmp_path, monkeypatch
):
    config = configure(
        tmp_path,
        monkeypatch,
        {**TEST_TRAINING, "candidates": [{"candidate_id": "tiny", "base_model": tiny_model}]},
        evaluation={**TEST_EVALUATION, "eval_types": ["customized"], "champion": {"base_model": tiny_model}},
    )
    output = f"{config.artifact_store.root}/runs/{WORKLOAD}/2026-11-20/train/tiny"
    killed: list[int] = []
    # Like a worker shutting down or a pod evicted: the first attempt's process dies from SIGTERM.
    # (SIGKILL would be taken for the kernel's OOM killer, and not retried: tests/flywheel/compute.)
    killer = threading.Thread(target=kill_first_job, args=(output, killed), daemon=True)
    killer.start()

    dag_run = run_latest_day(config)

    killer.join(timeout=1)
    assert len(killed) == 1
    ti = train_instances(dag_run)["tiny"]
    assert (ti.state, ti.try_number) == ("success", 2)
    assert dag_run.state == "success"
    assert (Path(output) / "result.json").is_file()
    assert not (Path(output) / "error.json").exists()
    # The champion is evaluated on the same examples as the retried candidate's adapter.
    evaluated = mapped_instances(dag_run, "evaluate")
    assert {name: ti.state for name, ti in evaluated.items()} == {
        "champion/champion": "success",
        "tiny/customized": "success",
    }
    evaluations = Path(output).parent.parent / "evaluate"
    hashes = {
        json.loads((evaluations / variant / "result.json").read_text())["examples_hash"]
        for variant in ("champion/champion", "tiny/customized")
    }
    assert len(hashes) == 1


def test_a_users_own_compute_backend_runs_the_jobs(
    dagbag, airflow_db, empty_log_store, tiny_model, tmp_path, monkeypatch
):
    from flywheel.config import flywheel_home
    from my_flywheel.compute import GpuLockBackend

    config = configure(
        tmp_path,
        monkeypatch,
        {**TEST_TRAINING, "candidates": [{"candidate_id": "tiny", "base_model": tiny_model}]},
        compute={"backend": "my_flywheel.compute:GpuLockBackend"},
    )
    (flywheel_home() / "gpu.lock").unlink(missing_ok=True)

    dag_run = run_latest_day(config)

    assert GpuLockBackend.doc in workload_dag(config, WORKLOAD).doc_md
    assert train_instances(dag_run)["tiny"].state == "success"
    assert mapped_instances(dag_run, "evaluate")["tiny/customized"].state == "success"
    assert dag_run.state == "success"
    output = Path(config.artifact_store.root) / "runs" / WORKLOAD / "2026-11-20"
    assert json.loads((output / "train" / "tiny" / "result.json").read_text())["steps"] == 2
    assert (output / "evaluate" / "tiny" / "customized" / "result.json").is_file()
    # The last job to hold the GPU lock was the evaluation.
    assert (flywheel_home() / "gpu.lock").read_text() == "eval-customer-support-router-tiny-custom"


def kill_first_job(output: str, killed: list[int], timeout: float = 300) -> None:
    """SIGTERM the first ``flywheel train`` process that writes to ``output``, once it has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in argv and output.encode() in argv:
                time.sleep(1.0)  # let it get going, as a real failure would
                os.kill(int(entry.name), signal.SIGTERM)
                killed.append(int(entry.name))
                return
        time.sleep(0.05)
