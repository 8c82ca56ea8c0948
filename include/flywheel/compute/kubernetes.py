"""The flywheel's job pods: one KubernetesPodOperator subclass that carries our defaults once.

Every heavy job (training, evaluation) of the ``kubernetes`` compute backend is a
:class:`FlywheelJobPodOperator` built from ``k8s_templates/<kind>-pod.yaml`` (GPU, security, secrets,
volumes) plus the job's :class:`~flywheel.compute.JobSpec` (command, environment, labels). Importing
this module imports the cncf-kubernetes provider; DAG files import it only when the backend is
``kubernetes``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.common.compat.sdk import AirflowException
from kubernetes.client.exceptions import ApiException

from flywheel.compute import (
    JOB_ENTRYPOINT,
    LABEL_PREFIX,
    JobSpec,
    disrupted_job_failure,
    job_failure,
)
from flywheel.compute.backend import ComputeBackend
from flywheel.config import KubernetesComputeConfig
from flywheel.redact import split_secret_options
from flywheel.storage import storage_options_from_env

if TYPE_CHECKING:
    from airflow.sdk import XComArg
    from airflow.sdk.definitions.mappedoperator import MappedOperator


class KubernetesBackend(ComputeBackend):
    """Each job in its own pod (:class:`FlywheelJobPodOperator`) from ``compute.kubernetes``'s template."""

    doc = "a GPU pod from `k8s_templates/<train|evaluate>-pod.yaml`, logs streamed into this log"

    def mapped_task(self, kind: str, jobs: XComArg, *, doc_md: str) -> MappedOperator:
        """A FlywheelJobPodOperator mapped over the jobs; the map index is read from the pod's labels."""
        kubernetes = self.config.compute.kubernetes
        assert kubernetes is not None  # the config requires the block for this backend
        label = f"{{{{ task.labels['{LABEL_PREFIX}candidate'] }}}}"
        if kind == "evaluate":
            label += f"/{{{{ task.labels['{LABEL_PREFIX}eval-type'] }}}}"
        return FlywheelJobPodOperator.partial(
            task_id=kind,
            doc_md=doc_md,
            map_index_template=label,
            execution_timeout=self.task_timeout(kind),
            **job_pod_defaults(kubernetes, kind),
        ).expand_kwargs(jobs.map(job_pod_arguments))

    def task_timeout(self, kind: str) -> timedelta:
        """The job's time limit plus the margin, plus the time a pod may take to be scheduled and start."""
        kubernetes = self.config.compute.kubernetes
        assert kubernetes is not None  # the config requires the block for this backend
        waiting = kubernetes.schedule_timeout_seconds + kubernetes.startup_timeout_seconds
        return super().task_timeout(kind) + timedelta(seconds=waiting)


class FlywheelJobPodOperator(KubernetesPodOperator):
    """Runs one flywheel job in a pod; its results are read from the artifact store, not XCom.

    Defaults (each can still be overridden per task): ``durable`` (a restarted worker re-attaches to
    the running pod instead of starting a second one), failed pods kept for inspection
    (``delete_succeeded_pod``), logs streamed into the task log, pod events logged on failure, the
    container's log tail as its termination message, no XCom sidecar, and synchronous execution
    (deferrable mode loses XCom and logs in provider 10.x). A pod whose job exits with a code that
    retrying cannot fix (``flywheel.compute.EXIT_CODES_NOT_RETRIED``), or whose container was
    ``OOMKilled``, raises :class:`~flywheel.errors.NonRetryableJobError`, which the DAG's retry policy
    fails at once (:func:`~flywheel.compute.job_failure` decides). A pod the platform ended (evicted,
    preempted, its node lost, past ``activeDeadlineSeconds``: :func:`pod_disruption`) raises a
    retried error that names why (:func:`~flywheel.compute.disrupted_job_failure`).

    ``output_uri`` is where the job writes ``result.json`` / ``error.json``; ``secret_env`` lists
    ``{"env", "secret", "key"}`` mappings turned into environment variables read from Kubernetes
    Secrets (plain data, so a mapped task's partial arguments serialise).
    """

    template_fields = (*KubernetesPodOperator.template_fields, "output_uri")

    def __init__(
        self,
        *,
        output_uri: str,
        secret_env: list[dict[str, str]] | None = None,
        cmds: list[str] | None = None,
        durable: bool = True,
        on_finish_action: str = "delete_succeeded_pod",
        get_logs: bool = True,
        log_events_on_failure: bool = True,
        termination_message_policy: str = "FallbackToLogsOnError",
        do_xcom_push: bool = False,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        secrets = [Secret("env", item["env"], item["secret"], item["key"]) for item in secret_env or []]
        super().__init__(
            cmds=cmds or [JOB_ENTRYPOINT],
            durable=durable,
            on_finish_action=on_finish_action,
            get_logs=get_logs,
            log_events_on_failure=log_events_on_failure,
            termination_message_policy=termination_message_policy,
            do_xcom_push=do_xcom_push,
            deferrable=deferrable,
            secrets=[*kwargs.pop("secrets", []), *secrets],
            **kwargs,
        )
        self.output_uri = output_uri

    def cleanup(
        self, pod: Any, remote_pod: Any, xcom_result: dict | None = None, context: Any = None
    ) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowException as exc:
            # The remote pod handed in may predate the failure (read before the pod started, when the
            # pod was deleted under the operator): read it again, and its events, to learn why it ended.
            latest, gone = self._read_final_pod(pod)
            final = latest or remote_pod
            code, reason = base_container_termination(final, self.base_container_name)
            name = pod.metadata.name if pod is not None and pod.metadata else self.name
            env = {var.name: var.value for var in self.env_vars or [] if var.value is not None}
            options = storage_options_from_env(env) | worker_secret_storage_options()
            where = f"pod {name}"
            disruption = None if reason == "OOMKilled" else pod_disruption(final, self._read_events(pod))
            if disruption is None and gone and code is None:  # not deleted by on_finish_action after it ended
                disruption = ("Deleted", None)
            if disruption is not None:
                raise disrupted_job_failure(*disruption, code, self.output_uri, where, options) from exc
            raise job_failure(code, self.output_uri, where, options, reason=reason) from exc

    def _read_final_pod(self, pod: Any) -> tuple[Any, bool]:
        """The pod as the API has it now, and whether it is gone (404); (None, False) when unreadable."""
        if pod is None or pod.metadata is None:
            return None, False
        try:
            return self.pod_manager.read_pod(pod), False
        except ApiException as exc:
            return None, exc.status == 404
        except Exception:  # the failure is being reported: a lookup must not replace it
            return None, False

    def _read_events(self, pod: Any) -> list[Any]:
        """The pod's events, oldest first; [] when they cannot be read (best effort)."""
        if pod is None or pod.metadata is None:
            return []
        try:
            return list(self.pod_manager.read_pod_events(pod).items or [])
        except Exception:  # events are best effort on a real cluster too
            return []


def worker_secret_storage_options() -> dict[str, Any]:
    """The secret artifact-store options of this worker's configuration ({} when it cannot be read):
    the pod's environment does not carry them, but reading its ``error.json`` here may need them."""
    try:
        from flywheel.config import load_config

        options = load_config().artifact_store.storage_options
    except Exception:  # reporting the pod's failure must not fail on the configuration
        return {}
    return split_secret_options(options)[1]


PREEMPTED_EVENT = "Preempted"
"""The reason of the event the scheduler records on a pod it preempts (before deleting it)."""


def pod_disruption(remote_pod: Any, events: Sequence[Any] = ()) -> tuple[str, str | None] | None:
    """Why the platform ended the pod, if it did: (reason, its message), else None.

    Read, in this order, from ``status.reason`` (``Evicted`` by the kubelet under node pressure,
    ``DeadlineExceeded`` past ``activeDeadlineSeconds``), from a ``DisruptionTarget`` condition
    (``PreemptionByScheduler``, ``TerminationByKubelet``, ``EvictionByEvictionAPI``,
    ``DeletionByTaintManager``, ``DeletionByPodGC``), then from the pod's events: a preempted pod is
    deleted at once, so its ``Preempted`` event may be all that is left of it.
    """
    status = remote_pod.status if remote_pod is not None else None
    if status is not None and status.reason in ("Evicted", "DeadlineExceeded"):
        return status.reason, status.message
    for condition in (status.conditions if status is not None else None) or []:
        if condition.type == "DisruptionTarget" and condition.status == "True" and condition.reason:
            return condition.reason, condition.message
    for event in events:
        if event.reason == PREEMPTED_EVENT:
            return "PreemptionByScheduler", event.message
        if event.reason in ("Evicted", "DeadlineExceeded"):
            return event.reason, event.message
    return None


def base_container_termination(
    remote_pod: Any, container_name: str = "base"
) -> tuple[int | None, str | None]:
    """Exit code and reason (``Error``, ``OOMKilled`` ...) of the pod's job container; (None, None)
    while it has not terminated (or never started)."""
    statuses = (remote_pod.status.container_statuses if remote_pod and remote_pod.status else None) or []
    for status in statuses:
        if status.name == container_name and status.state and status.state.terminated:
            return status.state.terminated.exit_code, status.state.terminated.reason
    return None, None


def job_pod_defaults(kubernetes: KubernetesComputeConfig, kind: str) -> dict[str, Any]:
    """The operator arguments every ``kind`` job pod shares, from the ``compute.kubernetes`` config."""
    arguments: dict[str, Any] = {
        "kubernetes_conn_id": kubernetes.conn_id,
        "namespace": kubernetes.namespace,
        "image": kubernetes.image,
        "pod_template_file": posixpath.join(kubernetes.pod_template_dir, f"{kind}-pod.yaml"),
        "startup_timeout_seconds": kubernetes.startup_timeout_seconds,
        "schedule_timeout_seconds": kubernetes.schedule_timeout_seconds,
        "on_finish_action": kubernetes.on_finish_action,
        "secret_env": [item.model_dump() for item in kubernetes.secret_env],
    }
    optional = {
        "in_cluster": kubernetes.in_cluster,
        "service_account_name": kubernetes.service_account_name,
        # Unset leaves the template's nodeSelector; the operator replaces it as a whole when set.
        "node_selector": kubernetes.node_selector or None,
        "active_deadline_seconds": kubernetes.active_deadline_seconds,
    }
    return arguments | {key: value for key, value in optional.items() if value is not None}


def job_pod_arguments(job: dict[str, Any]) -> dict[str, Any]:
    """The per-job operator arguments of a JobSpec (as the XCom dict a planning task returns)."""
    spec = JobSpec.from_dict(job)
    return {
        "name": spec.name,
        "arguments": spec.arguments,
        "env_vars": spec.env,
        "labels": spec.labels,
        "output_uri": spec.output_uri,
    }
