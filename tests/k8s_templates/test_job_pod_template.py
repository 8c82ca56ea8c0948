"""The job pod template parses as the cncf provider parses it and merges into a KubernetesPodOperator pod.

Rendering uses ``build_pod_request_obj(dry_run=True)``, which needs no kubeconfig and no cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import models as k8s

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = PROJECT_ROOT / "k8s_templates" / "job-pod.yaml"
IMAGE = "registry.example/flywheel-job:1.0"


def _key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every mapping key of a YAML/JSON tree as a dotted path (list items by index)."""
    if isinstance(value, dict):
        paths = set()
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths |= {path} | _key_paths(child, path)
        return paths
    if isinstance(value, list):
        return set().union(*(_key_paths(child, f"{prefix}[{i}]") for i, child in enumerate(value)))
    return set()


def _container(pod: k8s.V1Pod) -> k8s.V1Container:
    [container] = [c for c in pod.spec.containers if c.name == "base"]
    return container


def _assert_gpu_job_spec(pod: k8s.V1Pod) -> None:
    """What every flywheel job pod must keep, whether read from the template or rendered by the operator."""
    assert pod.spec.restart_policy == "Never"
    assert pod.metadata.labels["app.kubernetes.io/part-of"] == "flywheel"
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.security_context.run_as_user not in (None, 0)

    container = _container(pod)
    assert str(container.resources.limits["nvidia.com/gpu"]) == "1"
    assert container.resources.requests["cpu"]
    assert container.resources.requests["memory"]
    assert container.security_context.allow_privilege_escalation is False

    [gpu_toleration] = [t for t in pod.spec.tolerations if t.key == "nvidia.com/gpu"]
    assert gpu_toleration.effect == "NoSchedule"
    assert gpu_toleration.operator == "Exists"

    volumes = {v.name: v for v in pod.spec.volumes}
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    assert volumes[mounts["/dev/shm"]].empty_dir.medium == "Memory"

    [secret_source] = [e.secret_ref for e in container.env_from if e.secret_ref is not None]
    assert secret_source.name == "flywheel-artifact-store"
    assert secret_source.optional is True

    env = {e.name: e.value for e in container.env}
    config_path = Path(env["FLYWHEEL_CONFIG"])
    config_volume = volumes[mounts[str(config_path.parent)]]
    assert config_volume.config_map.name == "flywheel-config"
    assert [item.path for item in config_volume.config_map.items] == [config_path.name]


@pytest.fixture(scope="module")
def template_pod() -> k8s.V1Pod:
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    # deserialize_model_file only warns and returns an empty pod when the file is missing.
    assert TEMPLATE.is_file()
    return PodGenerator.deserialize_model_file(str(TEMPLATE))


def test_template_has_no_field_the_kubernetes_model_drops(template_pod: k8s.V1Pod) -> None:
    """A misspelt key would be dropped silently by deserialisation; the round trip must keep every key."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    raw = yaml.safe_load(TEMPLATE.read_text())
    assert _key_paths(PodGenerator.serialize_pod(template_pod)) == _key_paths(raw)


def test_template_is_a_gpu_job_pod(template_pod: k8s.V1Pod) -> None:
    assert template_pod.kind == "Pod"
    assert [c.name for c in template_pod.spec.containers] == ["base"]
    assert _container(template_pod).image == "flywheel-job:latest"
    _assert_gpu_job_spec(template_pod)


def test_operator_renders_the_template_with_its_own_image_and_command() -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    op = KubernetesPodOperator(
        task_id="config_check",
        namespace="flywheel",
        pod_template_file=str(TEMPLATE),
        image=IMAGE,
        cmds=["flywheel"],
        arguments=["config", "check"],
        name="flywheel-config-check",
        env_vars={"FLYWHEEL_STAGE": "check"},
        labels={"flywheel/workload": "customer_support_router"},
    )
    pod = op.build_pod_request_obj(dry_run=True)

    assert pod.metadata.namespace == "flywheel"
    assert pod.metadata.name.startswith("flywheel-config-check")
    assert pod.metadata.labels["flywheel/workload"] == "customer_support_router"
    _assert_gpu_job_spec(pod)

    container = _container(pod)
    assert container.image == IMAGE
    assert container.command == ["flywheel"]
    assert container.args == ["config", "check"]
    env = {e.name: e.value for e in container.env}
    assert env["FLYWHEEL_STAGE"] == "check"  # the operator's env is added to the template's
    assert env["FLYWHEEL_CONFIG"] == "/etc/flywheel/flywheel.yaml"
    assert {v.name for v in pod.spec.volumes} == {"flywheel-config", "dshm", "scratch"}
