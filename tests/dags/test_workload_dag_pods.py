"""Training and evaluation on the ``kubernetes`` backend through ``dag.test()``: real operator, real HTTP.

The workload DAG's mapped ``train`` and ``evaluate`` tasks are FlywheelJobPodOperators, one per job.
They create pods from k8s_templates/train-pod.yaml and evaluate-pod.yaml on tests/fake_kubernetes.py,
whose "kubelet" runs each pod's command (``flywheel train ...``, ``flywheel evaluate ...``) as a local
process; logs stream back over the API and the results are read from the artifact store by
``collect_training`` and ``collect_evaluation``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_workload_dag_training import FAST_RETRIES, WORKLOAD, run_latest_day, train_instances

from conftest import TEST_EVALUATION, TEST_TRAINING, write_config
from flywheel.compute import JOB_ENTRYPOINT
from flywheel.config import load_config
from flywheel.db.engine import get_engine
from flywheel.db.migrate import upgrade

if TYPE_CHECKING:
    from fake_kubernetes import FakeKubernetes

pytest_plugins = ["fake_kubernetes"]


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_candidates_train_in_pods_and_a_bad_job_fails_without_retry(
    dagbag, airflow_db, empty_log_store, tiny_model, fake_kubernetes: FakeKubernetes, tmp_path, monkeypatch
):
    training = {
        "settings": TEST_TRAINING["settings"],
        "candidates": [
            {"candidate_id": "tiny", "base_model": tiny_model},
            {"candidate_id": "missing", "base_model": str(tmp_path / "no-such-model")},
        ],
    }
    compute = {
        "backend": "kubernetes",
        "kubernetes": {"namespace": "flywheel", "image": "registry.example/flywheel-job:1.4.2"},
    }
    evaluation = {**TEST_EVALUATION, "eval_types": ["base", "icl", "customized"]}
    path = write_config(
        tmp_path, airflow=FAST_RETRIES, compute=compute, training=training, evaluation=evaluation
    )
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
    config = load_config(path)
    upgrade(get_engine(config.metadata))

    dag_run = run_latest_day(config)

    trained = train_instances(dag_run)
    assert trained["tiny"].state == "success"
    assert (trained["missing"].state, trained["missing"].try_number) == ("failed", 1)
    assert dag_run.get_task_instance("collect_training").state == "success"

    created = fake_kubernetes.created_pods
    pods = {p["metadata"]["labels"]["flywheel.io/candidate"]: p for p in jobs_of(created, "train")}
    assert set(pods) == {"tiny", "missing"}  # one pod each: the failed job was not retried
    for candidate, pod in pods.items():
        labels = pod["metadata"]["labels"]
        assert labels["flywheel.io/workload"] == WORKLOAD
        assert labels["flywheel.io/dag-run"] and labels["dag_id"] == dag_run.dag_id
        [container] = pod["spec"]["containers"]
        assert container["image"] == "registry.example/flywheel-job:1.4.2"
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        command = [*container["command"], *container["args"]]
        assert command[:2] == [JOB_ENTRYPOINT, "train"]
        assert command[command.index("--output") + 1].endswith(f"/train/{candidate}")
    # The succeeded pod was deleted, the failed one kept for inspection.
    assert fake_kubernetes.get_pod("flywheel", pods["tiny"]["metadata"]["name"]) is None
    kept = fake_kubernetes.get_pod("flywheel", pods["missing"]["metadata"]["name"])
    assert kept["status"]["phase"] == "Failed"

    root = Path(config.artifact_store.root) / "runs" / WORKLOAD / "2026-11-20" / "train"
    assert (root / "tiny" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((root / "tiny" / "result.json").read_text())["steps"] == 2
    assert json.loads((root / "missing" / "error.json").read_text())["exit_code"] == 2

    # Evaluation pods: one per model variant, the bad model's not retried, results in the store.
    evaluations = {variant_of(p): p for p in jobs_of(created, "evaluate")}
    assert sorted(evaluations) == ["missing/base", "missing/icl", "tiny/base", "tiny/customized", "tiny/icl"]
    [container] = evaluations["tiny/customized"]["spec"]["containers"]
    command = [*container["command"], *container["args"]]
    assert command[:2] == [JOB_ENTRYPOINT, "evaluate"]
    assert command[command.index("--adapter") + 1].endswith("/train/tiny/adapter")
    assert dag_run.get_task_instance("collect_evaluation").state == "success"
    evaluated = root.parent / "evaluate"
    for variant in ("tiny/base", "tiny/icl", "tiny/customized"):
        assert json.loads((evaluated / variant / "result.json").read_text())["examples"] == 4
    assert json.loads((evaluated / "missing" / "base" / "error.json").read_text())["exit_code"] == 2


def jobs_of(pods: list[dict], kind: str) -> list[dict]:
    return [pod for pod in pods if pod["metadata"]["labels"]["flywheel.io/job"] == kind]


def variant_of(pod: dict) -> str:
    labels = pod["metadata"]["labels"]
    return f"{labels['flywheel.io/candidate']}/{labels['flywheel.io/eval-type']}"
