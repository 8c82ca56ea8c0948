"""Assertions on Kubernetes pod specs shared by the template tests and the operator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes.client import models as k8s


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every mapping key of a YAML/JSON tree as a dotted path (list items by index): a manifest and its
    round trip through the kubernetes models must have the same, or a misspelt field was dropped."""
    if isinstance(value, dict):
        paths = set()
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths |= {path} | key_paths(child, path)
        return paths
    if isinstance(value, list):
        return set().union(*(key_paths(child, f"{prefix}[{i}]") for i, child in enumerate(value)))
    return set()


def base_container(pod: k8s.V1Pod) -> k8s.V1Container:
    [container] = [c for c in pod.spec.containers if c.name == "base"]
    return container


def assert_gpu_job_pod(pod: k8s.V1Pod) -> None:
    """What every flywheel job pod must keep, whether read from a template or rendered by the operator."""
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.active_deadline_seconds and pod.spec.active_deadline_seconds > 0
    assert pod.spec.automount_service_account_token is False
    assert pod.metadata.labels["app.kubernetes.io/part-of"] == "flywheel"
    security = pod.spec.security_context
    assert security.run_as_non_root is True
    assert security.run_as_user not in (None, 0)
    assert security.seccomp_profile.type == "RuntimeDefault"

    container = base_container(pod)
    assert str(container.resources.limits["nvidia.com/gpu"]) == "1"
    assert container.resources.requests["cpu"]
    assert container.resources.requests["memory"]
    assert container.resources.limits["memory"]
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]

    assert pod.spec.node_selector
    [gpu_toleration] = [t for t in pod.spec.tolerations if t.key == "nvidia.com/gpu"]
    assert (gpu_toleration.effect, gpu_toleration.operator) == ("NoSchedule", "Exists")

    volumes = {v.name: v for v in pod.spec.volumes}
    mounts = {m.mount_path: m for m in container.volume_mounts}
    assert volumes[mounts["/dev/shm"].name].empty_dir.medium == "Memory"
    # A read-only root filesystem needs every path the job writes to be a volume.
    env = {e.name: e for e in container.env}
    for writable in ("/tmp", "/scratch", env["FLYWHEEL_MODEL_CACHE"].value):
        assert not mounts[writable].read_only, writable
    assert env["TMPDIR"].value == "/tmp"
    for variable in ("HOME", "HF_HOME", "FLYWHEEL_HOME"):
        assert env[variable].value.startswith("/scratch"), variable
    cache = volumes[mounts[env["FLYWHEEL_MODEL_CACHE"].value].name]
    assert cache.persistent_volume_claim.claim_name == "flywheel-model-cache"

    # Secrets come from Kubernetes Secrets only: no literal value of a secret-looking variable.
    assert env["HF_TOKEN"].value is None
    assert env["HF_TOKEN"].value_from.secret_key_ref.name == "flywheel-hf-token"
    secret_sources = {e.secret_ref.name: e.secret_ref for e in container.env_from if e.secret_ref}
    assert secret_sources["flywheel-artifact-store"].optional is True
    for name, variable in env.items():
        if any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD")):
            assert variable.value is None and variable.value_from.secret_key_ref, name

    config_path = Path(env["FLYWHEEL_CONFIG"].value)
    config_volume = volumes[mounts[str(config_path.parent)].name]
    assert mounts[str(config_path.parent)].read_only is True
    assert config_volume.config_map.name == "flywheel-config"
    assert [item.path for item in config_volume.config_map.items] == [config_path.name]
