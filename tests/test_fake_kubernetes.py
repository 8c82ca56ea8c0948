"""The fake Kubernetes is faithful enough for the real ``KubernetesPodOperator`` (sync mode) to run pods.

The operator runs through its own ``execute(context)`` against the fake over HTTP, through the
``kubernetes_default`` connection. ``context`` is built by hand with what the operator reads: the task
instance's identity (pod labels) and ``xcom_push``, the run id and the DAG. A few checks drive the
fake with the plain ``kubernetes`` client for behaviour the operator does not reach on a happy path.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.common.compat.sdk import AirflowException
from airflow.sdk import DAG
from kubernetes import client, config
from structlog.testing import capture_logs

if TYPE_CHECKING:
    from fake_kubernetes import FakeKubernetes

# The fixture; loading the module as a plugin (not importing it here) lets pytest rewrite its asserts.
pytest_plugins = ["fake_kubernetes"]

NAMESPACE = "flywheel"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


class _TaskInstance:
    """The part of a running task instance that ``KubernetesPodOperator.execute`` reads and writes."""

    def __init__(self, dag_id: str, task_id: str) -> None:
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = RUN_ID
        self.try_number = 1
        self.map_index = -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class _ExitCodeOperator(KubernetesPodOperator):
    """Records the base container's exit code in ``cleanup``, as a project subclass would read it."""

    exit_code: int | None = None

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None) -> None:
        statuses = remote_pod.status.container_statuses or []
        base = next(s for s in statuses if s.name == self.base_container_name)
        self.exit_code = base.state.terminated.exit_code if base.state.terminated else None
        super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)


def _operator(task_id: str, cls: type[KubernetesPodOperator] = KubernetesPodOperator, **kwargs: Any):
    with DAG(dag_id="fake_kubernetes", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
        return cls(
            task_id=task_id,
            namespace=NAMESPACE,
            image="registry.example/flywheel-job:1.0",
            kubernetes_conn_id="kubernetes_default",
            in_cluster=False,
            get_logs=True,
            on_finish_action="delete_succeeded_pod",
            deferrable=False,
            startup_check_interval_seconds=1,
            **kwargs,
        )


def _python(code: str) -> list[str]:
    return ["python", "-c", code]


def _execute(op: KubernetesPodOperator, ti: _TaskInstance | None = None) -> list[str]:
    """Run ``op.execute``; return what it logged (Airflow 3 logs through structlog, which caplog misses)."""
    ti = ti or _TaskInstance(op.dag_id, op.task_id)
    context = {"ti": ti, "task_instance": ti, "run_id": RUN_ID, "dag": op.dag, "task": op}
    with capture_logs() as events:
        op.execute(context)
    return [str(event["event"]).rstrip("\n") for event in events]


def test_pod_output_reaches_the_task_log_and_succeeded_pod_is_deleted(
    fake_kubernetes: FakeKubernetes,
) -> None:
    op = _operator("hello", cmds=_python("print('hello'); print('from the pod')"), labels={"team": "ml"})
    ti = _TaskInstance(op.dag_id, op.task_id)
    messages = _execute(op, ti)

    assert "[base] hello" in messages
    assert "[base] from the pod" in messages
    [sent] = fake_kubernetes.created_pods
    name = sent["metadata"]["name"]
    assert ti.xcoms == {"pod_name": name, "pod_namespace": NAMESPACE}
    assert sent["spec"]["containers"][0]["image"] == "registry.example/flywheel-job:1.0"
    assert sent["spec"]["restartPolicy"] == "Never"
    labels = sent["metadata"]["labels"]
    assert labels["dag_id"] == "fake_kubernetes" and labels["task_id"] == "hello" and labels["team"] == "ml"
    assert labels["try_number"] == "1" and labels["kubernetes_pod_operator"] == "True"
    assert fake_kubernetes.get_pod(NAMESPACE, name) is None  # delete_succeeded_pod
    reasons = [e["reason"] for e in fake_kubernetes.events(NAMESPACE, name)]
    assert reasons[:4] == ["Scheduled", "Pulled", "Created", "Started"]


def test_a_failing_pod_fails_the_task_with_its_exit_code(fake_kubernetes: FakeKubernetes) -> None:
    op = _operator(
        "fails",
        cls=_ExitCodeOperator,
        cmds=_python("import sys; print('about to fail'); sys.exit(3)"),
        termination_message_policy="FallbackToLogsOnError",
    )
    with pytest.raises(AirflowException, match="returned a failure") as failure:
        _execute(op)

    assert op.exit_code == 3
    assert "about to fail" in str(failure.value)  # FallbackToLogsOnError: the log is the message
    terminated = op.remote_pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    kept = fake_kubernetes.get_pod(NAMESPACE, op.pod.metadata.name)  # a failed pod is kept ...
    assert kept["status"]["phase"] == "Failed"
    assert kept["metadata"]["labels"]["already_checked"] == "True"  # ... and marked as seen


def test_env_from_secrets_and_configmaps_reaches_the_process(fake_kubernetes: FakeKubernetes) -> None:
    fake_kubernetes.add_secret(NAMESPACE, "creds", {"token": "s3cret"})
    fake_kubernetes.add_secret(NAMESPACE, "bulk", {"BULK_A": "alpha", "BULK_B": "beta"})
    fake_kubernetes.add_config_map(NAMESPACE, "settings", {"MODE": "nightly"})
    code = (
        "import os; e = os.environ; "
        "print('token=' + e['TOKEN']); print('bulk=' + e['BULK_A'] + ',' + e['BULK_B']); "
        "print('mode=' + e['MODE']); print('plain=' + e['PLAIN']); print('pod=' + e['HOSTNAME'])"
    )
    op = _operator(
        "env",
        cmds=_python(code),
        env_vars={"PLAIN": "value"},
        secrets=[Secret("env", "TOKEN", "creds", "token"), Secret("env", None, "bulk")],
        configmaps=["settings"],
    )
    messages = _execute(op)

    for line in ("token=s3cret", "bulk=alpha,beta", "mode=nightly", "plain=value"):
        assert f"[base] {line}" in messages
    assert f"[base] pod={op.pod.metadata.name}" in messages
    container = fake_kubernetes.created_pods[0]["spec"]["containers"][0]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"key": "token", "name": "creds"}}} in container[
        "env"
    ]
    assert {"secretRef": {"name": "bulk"}} in container["envFrom"]


def test_active_deadline_kills_a_sleeping_pod(fake_kubernetes: FakeKubernetes) -> None:
    op = _operator(
        "deadline",
        cmds=_python("import time; print('sleeping', flush=True); time.sleep(60)"),
        active_deadline_seconds=1,
    )
    started = time.monotonic()
    with pytest.raises(AirflowException, match="returned a failure"):
        _execute(op)

    assert time.monotonic() - started < 10
    status = op.remote_pod.status
    assert (status.phase, status.reason) == ("Failed", "DeadlineExceeded")
    terminated = status.container_statuses[0].state.terminated
    assert terminated.exit_code == 143 and terminated.reason == "Error"  # SIGTERM, like the kubelet
    reasons = {e["reason"] for e in fake_kubernetes.events(NAMESPACE, op.pod.metadata.name)}
    assert {"DeadlineExceeded", "Killing"} <= reasons


# The same fake, through the plain kubernetes client: behaviour the operator's happy path does not reach.


@pytest.fixture
def core_v1(fake_kubernetes: FakeKubernetes, tmp_path) -> client.CoreV1Api:
    api_client = config.new_client_from_config(str(fake_kubernetes.write_kubeconfig(tmp_path / "kubeconfig")))
    return client.CoreV1Api(api_client)


def _pod(name: str, code: str, **container: Any) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(name="base", image="python:3.11", command=_python(code), **container)
            ],
        ),
    )


def test_missing_secret_blocks_the_container_until_it_exists(
    fake_kubernetes: FakeKubernetes, core_v1: client.CoreV1Api
) -> None:
    ref = client.V1EnvVarSource(secret_key_ref=client.V1SecretKeySelector(name="late", key="k"))
    core_v1.create_namespaced_pod(
        NAMESPACE, _pod("late", "print('ok')", env=[client.V1EnvVar(name="K", value_from=ref)])
    )

    def waiting_reason() -> str | None:
        pod = fake_kubernetes.get_pod(NAMESPACE, "late")
        statuses = pod["status"].get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting", {}).get("reason")

    fake_kubernetes.wait_for(lambda: waiting_reason() == "CreateContainerConfigError")
    pod = core_v1.read_namespaced_pod("late", NAMESPACE)
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "late" not found'

    fake_kubernetes.add_secret(NAMESPACE, "late", {"k": "v"})  # the kubelet retries and starts it
    fake_kubernetes.wait_for(
        lambda: fake_kubernetes.get_pod(NAMESPACE, "late")["status"]["phase"] == "Succeeded"
    )


def test_deleting_a_running_pod_kills_its_process(
    fake_kubernetes: FakeKubernetes, core_v1: client.CoreV1Api
) -> None:
    code = (
        "import os, time; open('pid', 'w').write(str(os.getpid())); print('up', flush=True); time.sleep(60)"
    )
    core_v1.create_namespaced_pod(NAMESPACE, _pod("sleeper", code))
    pid_file = fake_kubernetes.container_root(NAMESPACE, "sleeper") / "pid"
    fake_kubernetes.wait_for(lambda: pid_file.is_file() and pid_file.read_text() != "")
    pid = int(pid_file.read_text())

    deleted = core_v1.delete_namespaced_pod("sleeper", NAMESPACE, grace_period_seconds=5)

    assert deleted.metadata.deletion_timestamp is not None
    fake_kubernetes.wait_for(lambda: fake_kubernetes.get_pod(NAMESPACE, "sleeper") is None)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_followed_log_streams_lines_while_the_process_runs(
    fake_kubernetes: FakeKubernetes, core_v1: client.CoreV1Api
) -> None:
    code = "import time\nfor i in range(3):\n    print(f'line {i}', flush=True); time.sleep(0.4)"
    core_v1.create_namespaced_pod(NAMESPACE, _pod("talker", code))
    fake_kubernetes.wait_for(
        lambda: fake_kubernetes.get_pod(NAMESPACE, "talker")["status"]["phase"] != "Pending"
    )

    response = core_v1.read_namespaced_pod_log(
        "talker", NAMESPACE, container="base", follow=True, timestamps=True, _preload_content=False
    )
    arrivals = [(time.monotonic(), chunk) for chunk in response.stream(amt=None)]

    text = b"".join(chunk for _, chunk in arrivals).decode()
    assert [line.split(" ", 1)[1] for line in text.splitlines()] == ["line 0", "line 1", "line 2"]
    assert arrivals[-1][0] - arrivals[0][0] > 0.5  # streamed as printed, not all at the end
    assert core_v1.read_namespaced_pod("talker", NAMESPACE).status.phase == "Succeeded"
    tail = core_v1.read_namespaced_pod_log("talker", NAMESPACE, tail_lines=1, _preload_content=False)
    assert tail.data == b"line 2\n"
