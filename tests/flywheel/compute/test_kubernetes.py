"""Training pods rendered by the real operator carry the template's guarantees and the job's command.

``build_pod_request_obj(dry_run=True)`` renders a pod without a cluster. A killed pod's failure is
classified on the fake cluster (tests/fake_kubernetes.py); the full path (create, log streaming, exit
codes, retries) runs against it in tests/dags/test_workload_dag_pods.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from airflow.sdk import DAG
from kubernetes.client import models as k8s
from structlog.testing import capture_logs

from conftest import write_config
from flywheel.compute import JobSpec, label_value, read_job_file, train_job
from flywheel.compute.kubernetes import (
    FlywheelJobPodOperator,
    base_container_termination,
    job_pod_arguments,
    job_pod_defaults,
)
from flywheel.config import (
    ComputeConfig,
    FlywheelConfig,
    KubernetesComputeConfig,
    SecretEnvConfig,
    TrainingConfig,
    load_config,
)
from flywheel.errors import JobTimeoutError, OutOfMemoryJobError, TransientJobError
from flywheel.jobs import load_settings
from podspec import assert_gpu_job_pod, base_container
from test_fake_kubernetes import RUN_ID as FAKE_RUN_ID
from test_fake_kubernetes import _TaskInstance

if TYPE_CHECKING:
    from fake_kubernetes import FakeKubernetes

pytest_plugins = ["fake_kubernetes"]

RUN_ID = "scheduled__2026-11-20T02:00:00+00:00"
IMAGE = "registry.example/flywheel-job:1.4.2"


def kubernetes_config(tmp_path: Path, **kubernetes: object) -> FlywheelConfig:
    config = load_config(write_config(tmp_path))
    compute = ComputeConfig(
        backend="kubernetes",
        env={"FLYWHEEL_LOG_LEVEL": "INFO"},
        kubernetes=KubernetesComputeConfig(
            image=IMAGE,
            secret_env=[SecretEnvConfig(env="WANDB_API_KEY", secret="wandb", key="api-key")],
            **kubernetes,
        ),
    )
    return config.model_copy(update={"compute": compute})


def training_job(config: FlywheelConfig, candidate_index: int = 0) -> JobSpec:
    workload = config.workload("customer_support_router")
    candidate = workload.training.candidates[candidate_index]
    return train_job(
        config,
        workload,
        candidate,
        dataset_uri="s3://flywheel/dataset/build/customer_support_router/2026-11-20-abc",
        day=date(2026, 11, 20),
        dag_run_id=RUN_ID,
    )


def operator_for(config: FlywheelConfig, job: JobSpec) -> FlywheelJobPodOperator:
    """The operator as the DAG's mapped ``train`` task builds it: partial defaults + per-job kwargs."""
    defaults = job_pod_defaults(config.compute.kubernetes, "train")
    return FlywheelJobPodOperator(task_id="train", **defaults, **job_pod_arguments(job.to_dict()))


def render(config: FlywheelConfig, job: JobSpec) -> k8s.V1Pod:
    return operator_for(config, job).build_pod_request_obj(dry_run=True)


def test_rendered_training_pod_keeps_gpu_security_secrets_and_volumes(tmp_path: Path) -> None:
    config = kubernetes_config(tmp_path)
    pod = render(config, training_job(config))

    assert_gpu_job_pod(pod)
    assert pod.metadata.namespace == "flywheel"
    assert pod.metadata.labels["app.kubernetes.io/component"] == "train"
    assert pod.spec.active_deadline_seconds == 21600  # the template's, not overridden
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    container = base_container(pod)
    assert container.image == IMAGE
    env = {e.name: e for e in container.env}
    wandb = env["WANDB_API_KEY"]
    assert wandb.value is None
    assert (wandb.value_from.secret_key_ref.name, wandb.value_from.secret_key_ref.key) == ("wandb", "api-key")
    assert env["FLYWHEEL_LOG_LEVEL"].value == "INFO"  # compute.env reaches the pod as plain values
    assert env["FLYWHEEL_MODEL_CACHE"].value == "/models"


def test_rendered_pod_runs_the_local_backends_command_line(tmp_path: Path) -> None:
    config = kubernetes_config(tmp_path)
    job = training_job(config)
    container = base_container(render(config, job))

    assert [*container.command, *container.args] == job.command
    assert job.command[:2] == ["flywheel", "train"]
    arguments = dict(zip(job.arguments[1::2], job.arguments[2::2], strict=True))
    assert arguments["--output"] == job.output_uri
    assert arguments["--output"].endswith("runs/customer_support_router/2026-11-20/train/tiny")
    settings = config.workload("customer_support_router").training.settings_for(
        config.workload("customer_support_router").training.candidates[0]
    )
    # The inline settings are the candidate's merged settings, read back exactly as `flywheel train` does.
    assert load_settings(arguments["--training-config"], TrainingConfig, "--training-config") == settings


def test_rendered_pod_is_labelled_for_cleanup_by_workload_run_and_candidate(tmp_path: Path) -> None:
    config = kubernetes_config(tmp_path)
    pod = render(config, training_job(config))

    labels = pod.metadata.labels
    assert labels["flywheel.io/workload"] == "customer_support_router"
    assert labels["flywheel.io/candidate"] == "tiny"
    assert labels["flywheel.io/dag-run"] == label_value(RUN_ID) == "scheduled__2026-11-20T02_00_00_00_00"
    assert labels["flywheel.io/job"] == "train"
    assert labels["app.kubernetes.io/part-of"] == "flywheel"  # the template's labels are kept
    assert pod.metadata.name.startswith("train-customer-support-router-tiny")


def test_cluster_settings_override_the_template(tmp_path: Path) -> None:
    config = kubernetes_config(
        tmp_path,
        namespace="ml-jobs",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        active_deadline_seconds=3600,
        service_account_name="trainer",
    )
    pod = render(config, training_job(config))

    assert pod.metadata.namespace == "ml-jobs"
    assert pod.spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod.spec.active_deadline_seconds == 3600
    assert pod.spec.service_account_name == "trainer"
    assert_gpu_job_pod(pod)


def test_operator_defaults_are_carried_once(tmp_path: Path) -> None:
    config = kubernetes_config(tmp_path)
    job = training_job(config)
    operator = FlywheelJobPodOperator(
        task_id="train",
        **job_pod_defaults(config.compute.kubernetes, "train"),
        **job_pod_arguments(job.to_dict()),
    )

    assert operator.durable is True
    assert operator.on_finish_action.value == "delete_succeeded_pod"
    assert operator.get_logs is True
    assert operator.log_events_on_failure is True
    assert operator.do_xcom_push is False
    assert operator.deferrable is False
    assert operator.termination_message_policy == "FallbackToLogsOnError"
    assert operator.startup_timeout_seconds == 900
    assert operator.schedule_timeout_seconds == 3600
    assert operator.output_uri == job.output_uri


@pytest.mark.parametrize(
    ("exit_code", "reason"), [(2, "Error"), (137, "OOMKilled"), (137, "Error"), (None, None)]
)
def test_exit_code_and_reason_are_read_from_the_base_container(
    exit_code: int | None, reason: str | None
) -> None:
    state = (
        k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code, reason=reason))
        if exit_code is not None
        else k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ContainerCreating"))
    )
    sidecar = k8s.V1ContainerStatus(
        name="airflow-xcom-sidecar",
        image="alpine",
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=0)),
    )
    base = k8s.V1ContainerStatus(
        name="base", image="x", image_id="", ready=False, restart_count=0, state=state
    )
    pod = k8s.V1Pod(status=k8s.V1PodStatus(phase="Failed", container_statuses=[sidecar, base]))
    assert base_container_termination(pod) == (exit_code, reason)


@pytest.mark.parametrize(
    ("code", "failure", "reason"),
    [
        # Over the container's memory limit: the cgroup's OOM killer ends it, the kubelet says OOMKilled.
        ("import time; block = b'x' * (256 << 20); time.sleep(30)", OutOfMemoryJobError, "OOMKilled"),
        # SIGKILLed, but not for memory (as the kubelet does after a deadline's grace period): retried.
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", TransientJobError, "Error"),
    ],
    ids=["over-its-memory-limit", "sigkill"],
)
def test_a_pod_is_out_of_memory_and_not_retried_only_when_oom_killed(
    fake_kubernetes: FakeKubernetes, tmp_path: Path, code: str, failure: type, reason: str
) -> None:
    fake_kubernetes.add_secret("flywheel", "wandb", {"api-key": "not-a-key"})
    config = kubernetes_config(tmp_path, in_cluster=False)
    job = training_job(config)
    with DAG(dag_id="flywheel_test", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
        operator = FlywheelJobPodOperator(
            task_id="train",
            **job_pod_defaults(config.compute.kubernetes, "train"),
            **job_pod_arguments(job.to_dict()) | {"arguments": ["-c", code]},
            cmds=["python"],
            container_resources=k8s.V1ResourceRequirements(limits={"memory": "64Mi"}),
            startup_check_interval_seconds=1,
        )
    ti = _TaskInstance(operator.dag_id, operator.task_id)
    context = {"ti": ti, "task_instance": ti, "run_id": FAKE_RUN_ID, "dag": operator.dag, "task": operator}
    with capture_logs(), pytest.raises(failure) as raised:
        operator.execute(context)

    assert base_container_termination(operator.remote_pod) == (137, reason)
    pod = f"pod {operator.pod.metadata.name}"
    if failure is TransientJobError:
        assert str(raised.value) == f"{pod} failed with exit code 137: no error.json written"
        assert read_job_file(job.output_uri, "error.json") is None
        return
    assert str(raised.value) == (
        f"{pod} ran out of memory: its container was OOMKilled (exit code 137), over its memory limit; "
        "not retried. To fix it, lower batch_size or max_seq_length in its settings, set "
        "training.memory_budget_mb, or give the job more memory."
    )
    error = read_job_file(job.output_uri, "error.json")
    assert error == raised.value.error
    assert (error["error"], error["reason"], error["exit_code"], error["retryable"]) == (
        "OutOfMemory",
        "OOMKilled",
        137,
        False,
    )


def _run_pod(
    fake_kubernetes: FakeKubernetes,
    tmp_path: Path,
    code: str,
    *,
    disrupt: Callable[[str], None] | None = None,
    **operator: object,
) -> tuple[FlywheelJobPodOperator, JobSpec, BaseException]:
    """Run a training pod whose job is ``python -c code`` on the fake cluster; ``disrupt(pod name)`` is
    called from another thread once the pod runs. The operator, the job and what it raised."""
    fake_kubernetes.add_secret("flywheel", "wandb", {"api-key": "not-a-key"})
    config = kubernetes_config(tmp_path, in_cluster=False)
    job = training_job(config)
    with DAG(dag_id="flywheel_test", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
        op = FlywheelJobPodOperator(
            task_id="train",
            **job_pod_defaults(config.compute.kubernetes, "train"),
            **job_pod_arguments(job.to_dict()) | {"arguments": ["-c", code]},
            cmds=["python"],
            startup_check_interval_seconds=1,
            **operator,
        )

    def running() -> str | None:
        pods = [p for p in fake_kubernetes.pods("flywheel") if p["status"].get("phase") == "Running"]
        return pods[0]["metadata"]["name"] if pods else None

    def disrupt_when_running() -> None:
        fake_kubernetes.wait_for(lambda: running() is not None, timeout=30)
        name = running()
        assert name is not None and disrupt is not None
        disrupt(name)

    thread = threading.Thread(target=disrupt_when_running, daemon=True) if disrupt else None
    if thread:
        thread.start()
    ti = _TaskInstance(op.dag_id, op.task_id)
    context = {"ti": ti, "task_instance": ti, "run_id": FAKE_RUN_ID, "dag": op.dag, "task": op}
    with capture_logs(), pytest.raises(TransientJobError) as raised:
        op.execute(context)
    if thread:
        thread.join(timeout=30)
    return op, job, raised.value


def test_an_evicted_pod_is_retried_and_not_counted_as_out_of_memory(
    fake_kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    op, job, error = _run_pod(
        fake_kubernetes,
        tmp_path,
        "import time; print('training', flush=True); time.sleep(60)",
        disrupt=lambda name: fake_kubernetes.evict_pod("flywheel", name, resource="memory"),
    )

    pod = fake_kubernetes.get_pod("flywheel", op.pod.metadata.name)
    assert pod is not None  # an evicted pod stays, Failed, until garbage-collected
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "Evicted")
    disruption = next(c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget")
    assert disruption["reason"] == "TerminationByKubelet"
    assert type(error) is TransientJobError  # retried: RetryableError, not OutOfMemoryJobError
    assert str(error).startswith(
        f"pod {op.pod.metadata.name} was evicted by its node's kubelet (node-pressure eviction) "
        "(The node was low on resource: memory. Threshold quantity: 100Mi"
    )
    assert str(error).endswith(", exit code 143; not the job's fault, retried.")
    written = read_job_file(job.output_uri, "error.json")
    assert written == error.error
    assert (written["error"], written["reason"], written["retryable"]) == ("Evicted", "Evicted", True)


def test_a_preempted_pod_is_retried_with_the_reason_though_the_pod_is_gone(
    fake_kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    op, job, error = _run_pod(
        fake_kubernetes,
        tmp_path,
        "import time; print('training', flush=True); time.sleep(60)",
        disrupt=lambda name: fake_kubernetes.preempt_pod("flywheel", name),
    )

    name = op.pod.metadata.name
    assert fake_kubernetes.get_pod("flywheel", name) is None  # deleted by the scheduler
    assert [e["reason"] for e in fake_kubernetes.events("flywheel", name) if e["reason"] == "Preempted"]
    assert type(error) is TransientJobError
    # Read from the Preempted event once the pod is gone (or, if the operator read the pod in the
    # moment before it was removed, from its DisruptionTarget condition).
    assert str(error).startswith(
        f"pod {name} was preempted: the scheduler gave its node to a higher-priority pod ("
    )
    assert str(error).endswith("; not the job's fault, retried.")
    assert "Preempted by pod " in str(error) or "preempting to accommodate" in str(error)
    written = read_job_file(job.output_uri, "error.json")
    assert (written["error"], written["reason"], written["retryable"]) == (
        "Preempted",
        "PreemptionByScheduler",
        True,
    )


def test_a_pod_past_its_active_deadline_is_a_retried_timeout(
    fake_kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    op, job, error = _run_pod(
        fake_kubernetes, tmp_path, "import time; time.sleep(60)", active_deadline_seconds=1
    )

    assert op.remote_pod.status.reason == "DeadlineExceeded"
    assert type(error) is JobTimeoutError  # a TransientJobError: retried
    assert str(error) == (
        f"pod {op.pod.metadata.name} timed out: it ran past its activeDeadlineSeconds and was killed "
        "(Pod was active on the node longer than the specified deadline), exit code 143; retried. "
        "A job that is merely slow needs a longer compute.kubernetes.active_deadline_seconds."
    )
    assert read_job_file(job.output_uri, "error.json")["error"] == "Timeout"


def test_secret_storage_options_never_reach_the_pod_spec(tmp_path: Path) -> None:
    import json

    from flywheel.config import ArtifactStoreConfig

    planted = "PLANTED-storage-secret"
    config = kubernetes_config(tmp_path)
    options = {"key": "AKIAEXAMPLE", "secret": planted, "client_kwargs": {"region_name": "eu-west-1"}}
    store = ArtifactStoreConfig(root=config.artifact_store.root, storage_options=options)
    config = config.model_copy(update={"artifact_store": store})
    pod = render(config, training_job(config))

    rendered = json.dumps(pod.to_dict(), default=str)
    assert planted not in rendered and "AKIAEXAMPLE" not in rendered
    env = {e.name: e for e in base_container(pod).env}
    assert json.loads(env["FLYWHEEL_STORAGE_OPTIONS"].value) == {
        "client_kwargs": {"region_name": "eu-west-1"}
    }
    assert "FLYWHEEL_STORAGE_SECRET_OPTIONS" not in env  # a pod reads it from a Secret, if at all
