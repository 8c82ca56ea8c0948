"""The job pod templates parse as the cncf provider parses them and carry every job pod's guarantees.

Rendering through the operator is tested in tests/flywheel/compute/test_kubernetes.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes.client import models as k8s

from podspec import assert_gpu_job_pod, base_container, key_paths

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((PROJECT_ROOT / "k8s_templates").glob("*-pod.yaml"))


def load_template(path: Path) -> k8s.V1Pod:
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    # deserialize_model_file only warns and returns an empty pod when the file is missing.
    assert path.is_file(), path
    return PodGenerator.deserialize_model_file(str(path))


def test_train_and_evaluate_templates_exist() -> None:
    assert [p.name for p in TEMPLATES] == ["evaluate-pod.yaml", "train-pod.yaml"]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_has_no_field_the_kubernetes_model_drops(template: Path) -> None:
    """A misspelt key would be dropped silently by deserialisation; the round trip must keep every key."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    raw = yaml.safe_load(template.read_text())
    assert key_paths(PodGenerator.serialize_pod(load_template(template))) == key_paths(raw)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_is_a_gpu_job_pod(template: Path) -> None:
    pod = load_template(template)
    assert pod.kind == "Pod"
    assert [c.name for c in pod.spec.containers] == ["base"]
    assert base_container(pod).image == "flywheel-job:0.1.0"  # a placeholder the operator replaces
    assert pod.metadata.labels["app.kubernetes.io/component"] == template.name.removesuffix("-pod.yaml")
    assert_gpu_job_pod(pod)


def test_training_pods_get_more_time_and_memory_than_evaluation_pods() -> None:
    train = load_template(PROJECT_ROOT / "k8s_templates" / "train-pod.yaml")
    evaluate = load_template(PROJECT_ROOT / "k8s_templates" / "evaluate-pod.yaml")

    def memory_gib(pod: k8s.V1Pod) -> int:
        return int(base_container(pod).resources.limits["memory"].removesuffix("Gi"))

    assert train.spec.active_deadline_seconds > evaluate.spec.active_deadline_seconds
    assert memory_gib(train) > memory_gib(evaluate)
