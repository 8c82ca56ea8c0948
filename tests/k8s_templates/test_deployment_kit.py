"""The Kubernetes deployment kit (deploy/) is least-privilege and agrees with the code that uses it.

Manifests are read with PyYAML and deserialised into the ``kubernetes`` client's models (a misspelt
field would be dropped, so the round trip must keep every key). The pods they are checked against are
rendered by the real operator code path without a cluster (``build_pod_request_obj(dry_run=True)``),
and the Role is checked against the API calls the real operator makes on tests/fake_kubernetes.py.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from airflow.sdk import DAG
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from structlog.testing import capture_logs

from conftest import PROJECT_ROOT, write_config
from flywheel.compute import JobSpec, evaluate_job, train_job
from flywheel.compute.kubernetes import FlywheelJobPodOperator, job_pod_arguments, job_pod_defaults
from flywheel.config import DEFAULT_CONFIG_PATH, FlywheelConfig, ModelConfig, load_config
from flywheel.errors import JobFailedError
from podspec import key_paths
from test_fake_kubernetes import RUN_ID as FAKE_RUN_ID
from test_fake_kubernetes import _TaskInstance

if TYPE_CHECKING:
    from fake_kubernetes import FakeKubernetes, RecordedRequest

pytest_plugins = ["fake_kubernetes"]

DEPLOY = PROJECT_ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
VALUES: dict[str, Any] = yaml.safe_load((DEPLOY / "helm" / "airflow-values.yaml").read_text())
CHART_KEYS: dict[str, str] = yaml.safe_load((DEPLOY / "helm" / "chart-keys.yaml").read_text())
RUN_ID = "scheduled__2026-11-20T02:00:00+00:00"

# kind -> the kubernetes client model it must deserialise into. Any other kind fails the tests: no
# ClusterRole, ClusterRoleBinding or anything else cluster-wide.
MODELS = {
    "Namespace": "V1Namespace",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "NetworkPolicy": "V1NetworkPolicy",
}

# What FlywheelJobPodOperator needs, as (resource, verb); deploy/kubernetes/rbac.yaml says why for each.
NEEDED = {
    ("pods", "create"),
    ("pods", "get"),
    ("pods", "list"),
    ("pods", "patch"),
    ("pods", "delete"),
    ("pods/log", "get"),
    ("events", "list"),
}
# Discovery URLs any authenticated client may read (system:discovery); not resources.
DISCOVERY = {"/version", "/api", "/apis", "/api/v1"}


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def deserialize(value: Any, model: str) -> Any:
    """``value`` (parsed YAML) as the kubernetes client's ``model``, the way the client reads a reply."""
    return ApiClient().deserialize(SimpleNamespace(data=json.dumps(value)), model)


def objects(kind: str) -> list[Any]:
    return [deserialize(doc, MODELS[kind]) for doc in documents() if doc["kind"] == kind]


def only(kind: str) -> Any:
    [found] = objects(kind)
    return found


def values_env() -> dict[str, str]:
    """The plain environment the Helm values give every Airflow container."""
    return {item["name"]: item["value"] for item in VALUES["env"]}


@pytest.fixture
def deployed_config(monkeypatch: pytest.MonkeyPatch) -> FlywheelConfig:
    """The shipped configuration file as Airflow's containers load it with the Helm values' environment."""
    for name, value in values_env().items():
        monkeypatch.setenv(name, value)
    return load_config(DEFAULT_CONFIG_PATH)


def jobs(config: FlywheelConfig) -> dict[str, JobSpec]:
    """A training and an evaluation job of the first workload, as the planning tasks make them."""
    workload = config.workloads[0]
    candidate = workload.training.candidates[0]
    planned = {"dataset_uri": f"{config.artifact_store.root}/datasets/x", "day": date(2026, 11, 20)}
    return {
        "train": train_job(config, workload, candidate, dag_run_id=RUN_ID, **planned),
        "evaluate": evaluate_job(
            config,
            workload,
            ModelConfig(base_model=candidate.base_model),
            eval_type="base",
            candidate_id=candidate.candidate_id,
            dag_run_id=RUN_ID,
            **planned,
        ),
    }


def rendered_pods(config: FlywheelConfig) -> dict[str, k8s.V1Pod]:
    """The pod of each kind of job, rendered by the operator as the DAG's mapped tasks build it."""
    kubernetes = config.compute.kubernetes
    assert kubernetes is not None
    return {
        kind: FlywheelJobPodOperator(
            task_id=kind, **job_pod_defaults(kubernetes, kind), **job_pod_arguments(job.to_dict())
        ).build_pod_request_obj(dry_run=True)
        for kind, job in jobs(config).items()
    }


# -- the manifests --------------------------------------------------------------------------------


def test_manifests_are_namespaced_objects_the_kubernetes_models_read_whole() -> None:
    docs = documents()
    assert {doc["kind"] for doc in docs} == set(MODELS)
    for doc in docs:
        obj = deserialize(doc, MODELS[doc["kind"]])
        assert key_paths(ApiClient().sanitize_for_serialization(obj)) == key_paths(doc), doc["kind"]


def test_everything_is_in_the_jobs_namespace_the_code_starts_pods_in(deployed_config: FlywheelConfig) -> None:
    namespace = deployed_config.compute.kubernetes.namespace
    assert only("Namespace").metadata.name == namespace
    for doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    assert {pod.metadata.namespace for pod in rendered_pods(deployed_config).values()} == {namespace}


def granted(role: k8s.V1Role) -> set[tuple[str, str]]:
    """(resource, verb) pairs of the core API group the role grants."""
    pairs = set()
    for rule in role.rules:
        assert rule.api_groups == [""], rule  # the core group (pods, pods/log, events) only
        assert not rule.resource_names and not rule.non_resource_urls, rule
        for name in [*rule.resources, *rule.verbs]:
            assert "*" not in name, rule
        pairs |= {(resource, verb) for resource in rule.resources for verb in rule.verbs}
    return pairs


def test_the_role_grants_what_the_operator_needs_and_nothing_else() -> None:
    role = only("Role")
    # Exactly: no watch, no pods/exec or pods/attach (XCom and Istio sidecars), no secrets or configmaps.
    assert granted(role) == NEEDED


def test_the_role_is_bound_to_airflows_task_pods_only() -> None:
    role, binding = only("Role"), only("RoleBinding")
    assert (binding.role_ref.kind, binding.role_ref.name) == ("Role", role.metadata.name)
    [subject] = binding.subjects
    assert (subject.kind, subject.name) == ("ServiceAccount", VALUES["workers"]["serviceAccount"]["name"])
    # The Helm release's namespace, as deploy/README.md installs it.
    readme = (DEPLOY / "README.md").read_text()
    assert f"helm upgrade --install airflow apache-airflow/airflow --namespace {subject.namespace}" in readme


def test_job_pods_run_as_a_service_account_with_no_permissions_and_no_token(
    deployed_config: FlywheelConfig, tmp_path: Path
) -> None:
    account = only("ServiceAccount")
    assert account.automount_service_account_token is False
    subjects = [(s.kind, s.name) for binding in objects("RoleBinding") for s in binding.subjects]
    assert ("ServiceAccount", account.metadata.name) not in subjects
    for kind, pod in rendered_pods(deployed_config).items():
        assert pod.spec.service_account_name == account.metadata.name, kind
        assert pod.spec.automount_service_account_token is False, kind
    # Without compute.kubernetes.service_account_name the pod templates' account is used.
    kubernetes = {"image": "registry.example/flywheel-job:1.4.2"}
    unset = load_config(write_config(tmp_path, compute={"backend": "kubernetes", "kubernetes": kubernetes}))
    assert unset.compute.kubernetes.service_account_name is None
    for pod in rendered_pods(unset).values():
        assert pod.spec.service_account_name == account.metadata.name


# -- what the operator really calls -----------------------------------------------------------------


def api_call(request: RecordedRequest) -> tuple[str, str, str] | None:
    """(namespace, resource, verb) of a request as RBAC authorises it; None for a discovery URL."""
    if request.path in DISCOVERY:
        return None
    match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/([^/]+)(?:/([^/]+)(?:/([^/]+))?)?", request.path)
    assert match, f"a call outside the core API of one namespace: {request.method} {request.path}"
    namespace, resource, name, subresource = match.groups()
    watch = request.query.get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[request.method]
    return namespace, f"{resource}/{subresource}" if subresource else resource, verb


def run_job(fake: FakeKubernetes, tmp_path: Path, code: str) -> None:
    """Run a training pod whose job is ``python -c code`` through FlywheelJobPodOperator."""
    tmp_path.mkdir()
    config = load_config(write_config(tmp_path, compute={"backend": "kubernetes"}))
    kubernetes = config.compute.kubernetes.model_copy(update={"in_cluster": False})
    job = jobs(config)["train"]
    with DAG(dag_id="flywheel_rbac", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
        operator = FlywheelJobPodOperator(
            task_id="train",
            **job_pod_defaults(kubernetes, "train"),
            **job_pod_arguments(job.to_dict()) | {"arguments": ["-c", code]},
            cmds=["python"],
            startup_check_interval_seconds=1,
        )
    ti = _TaskInstance(operator.dag_id, operator.task_id)
    context = {"ti": ti, "task_instance": ti, "run_id": FAKE_RUN_ID, "dag": operator.dag, "task": operator}
    with capture_logs():
        operator.execute(context)


def test_the_role_allows_every_call_the_operator_makes_and_each_grant_is_used(
    fake_kubernetes: FakeKubernetes, tmp_path: Path
) -> None:
    # A job that succeeds (its pod is deleted) and one that fails (its pod is kept and labelled).
    run_job(fake_kubernetes, tmp_path / "ok", "print('trained', flush=True)")
    with pytest.raises(JobFailedError):
        run_job(fake_kubernetes, tmp_path / "failed", "import sys; sys.exit(1)")

    role = only("Role")
    calls = {call for request in fake_kubernetes.requests if (call := api_call(request))}
    assert {namespace for namespace, _, _ in calls} == {role.metadata.namespace}
    used = {(resource, verb) for _, resource, verb in calls}
    assert used <= granted(role), f"calls the Role does not allow: {used - granted(role)}"
    assert granted(role) <= used, f"granted but never used: {granted(role) - used}"


# -- network policies -------------------------------------------------------------------------------


def selects(policy: k8s.V1NetworkPolicy, pod: k8s.V1Pod) -> bool:
    selector = policy.spec.pod_selector
    assert not selector.match_expressions  # labels only, checked below against the rendered pods
    return (selector.match_labels or {}).items() <= pod.metadata.labels.items()


def test_network_policies_select_job_pods_by_the_labels_the_code_puts_on_them(
    deployed_config: FlywheelConfig,
) -> None:
    pods = rendered_pods(deployed_config)
    policies = {policy.metadata.name: policy for policy in objects("NetworkPolicy")}
    every_job = policies["flywheel-job"]
    assert selects(every_job, pods["train"]) and selects(every_job, pods["evaluate"])
    endpoints = policies["flywheel-evaluate-endpoints"]
    assert selects(endpoints, pods["evaluate"]) and not selects(endpoints, pods["train"])


def test_job_pods_accept_no_connection_and_open_only_the_ones_each_rule_names() -> None:
    policies = {policy.metadata.name: policy for policy in objects("NetworkPolicy")}
    every_job = policies["flywheel-job"].spec
    assert set(every_job.policy_types) == {"Ingress", "Egress"}
    assert not every_job.ingress  # default deny: no rule admits anything
    for policy in policies.values():
        assert "Ingress" not in policy.spec.policy_types or not policy.spec.ingress
        for rule in policy.spec.egress:
            # A rule without destinations or ports would allow everything in that dimension.
            assert rule.to and rule.ports, policy.metadata.name
            assert all(port.port and port.protocol in ("TCP", "UDP") for port in rule.ports)

    dns, https = every_job.egress
    assert {(port.protocol, port.port) for port in dns.ports} == {("UDP", 53), ("TCP", 53)}
    [dns_peer] = dns.to
    assert dns_peer.namespace_selector.match_labels == {"kubernetes.io/metadata.name": "kube-system"}
    assert dns_peer.pod_selector.match_labels == {"k8s-app": "kube-dns"}
    assert [(port.protocol, port.port) for port in https.ports] == [("TCP", 443)]
    [block] = [peer.ip_block for peer in https.to]
    # Nothing inside the cluster or the private network, and not the instance-metadata service.
    assert block.cidr == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(block._except)

    [endpoint] = policies["flywheel-evaluate-endpoints"].spec.egress
    [peer] = endpoint.to
    assert peer.pod_selector.match_labels == {"flywheel.io/evaluation-endpoint": "true"}
    assert [(port.protocol, port.port) for port in endpoint.ports] == [("TCP", 8000)]


# -- the pods themselves ----------------------------------------------------------------------------

# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "config_map",
    "csi",
    "downward_api",
    "empty_dir",
    "ephemeral",
    "persistent_volume_claim",
    "projected",
    "secret",
}


def restricted_violations(pod: k8s.V1Pod) -> list[str]:
    """Where ``pod`` breaks the "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/
    pod-security-standards, the controls of the baseline and restricted profiles that a pod spec sets)."""
    spec, problems = pod.spec, []
    if spec.host_network or spec.host_pid or spec.host_ipc:
        problems.append("host namespaces")
    for volume in spec.volumes or []:
        kinds = {key for key, value in volume.to_dict().items() if key != "name" and value is not None}
        problems += [f"volume {volume.name}: {kind}" for kind in kinds - RESTRICTED_VOLUMES]
    pod_context = spec.security_context or k8s.V1PodSecurityContext()
    for container in [*spec.containers, *(spec.init_containers or [])]:
        context = container.security_context or k8s.V1SecurityContext()
        name = container.name
        if context.privileged:
            problems.append(f"{name}: privileged")
        if context.allow_privilege_escalation is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.capabilities or k8s.V1Capabilities()
        if "ALL" not in (capabilities.drop or []) or set(capabilities.add or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities")
        if not (context.run_as_non_root or (context.run_as_non_root is None and pod_context.run_as_non_root)):
            problems.append(f"{name}: runAsNonRoot")
        if 0 in (context.run_as_user, pod_context.run_as_user):
            problems.append(f"{name}: runs as root")
        seccomp = context.seccomp_profile or pod_context.seccomp_profile
        if seccomp is None or seccomp.type not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp profile")
        if any(port.host_port for port in container.ports or []):
            problems.append(f"{name}: host port")
    return problems


def test_rendered_job_pods_meet_the_pod_security_standard_the_namespace_enforces(
    deployed_config: FlywheelConfig,
) -> None:
    labels = only("Namespace").metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind, pod in rendered_pods(deployed_config).items():
        assert restricted_violations(pod) == [], kind
    weakened = rendered_pods(deployed_config)["train"]
    weakened.spec.containers[0].security_context.allow_privilege_escalation = True
    weakened.spec.security_context.run_as_user = 0
    assert restricted_violations(weakened) == [
        "base: allowPrivilegeEscalation is not false",
        "base: runs as root",
    ]


# -- the Helm values --------------------------------------------------------------------------------

TYPES = {"string": str, "boolean": bool, "integer": int, "list": list, "mapping": dict}


def leaves(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The values as dotted keys, down to a key the chart lists (its value as a whole) or a scalar."""
    found = {}
    for key, child in value.items():
        path = f"{prefix}.{key}" if prefix else key
        if path in CHART_KEYS or not isinstance(child, dict):
            found[path] = child
        else:
            found |= leaves(child, path)
    return found


def test_helm_values_set_only_keys_the_chart_has_with_their_types() -> None:
    set_keys = leaves(VALUES)
    unknown = sorted(set(set_keys) - set(CHART_KEYS))
    assert not unknown, f"keys the chart does not have (deploy/helm/chart-keys.yaml): {unknown}"
    for key, value in set_keys.items():
        assert isinstance(value, TYPES[CHART_KEYS[key]]), (key, value)


def test_helm_values_choose_the_executor_image_and_dag_delivery() -> None:
    assert VALUES["executor"] == "KubernetesExecutor"
    assert VALUES["multiNamespaceMode"] is False  # true makes the chart create ClusterRoles
    assert VALUES["rbac"]["create"] is True and VALUES["allowPodLaunching"] is True
    image = VALUES["images"]["airflow"]
    assert image["repository"] and image["tag"] not in ("", "latest")
    assert VALUES["airflowVersion"] == "3.3.2"  # the version the Dockerfile's airflow target builds on
    assert "apache/airflow:3.3.2-" in (PROJECT_ROOT / "Dockerfile").read_text()
    assert VALUES["dags"]["gitSync"]["enabled"] is False  # the DAGs come with the image
    assert VALUES["logs"]["persistence"]["enabled"] is True  # task pods are deleted; their logs stay


def test_every_connection_the_configuration_reads_comes_from_the_values(
    deployed_config: FlywheelConfig,
) -> None:
    kubernetes = deployed_config.compute.kubernetes
    assert deployed_config.compute.backend == "kubernetes" and kubernetes is not None
    needed = {workload.log_source.conn_id for workload in deployed_config.workloads}
    needed |= {deployed_config.metadata.conn_id, kubernetes.conn_id}
    env = values_env()
    from_secrets = {item["envName"]: item for item in VALUES["secret"]}
    for conn_id in needed:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        if variable in from_secrets:
            assert from_secrets[variable]["secretName"] and from_secrets[variable]["secretKey"]
            continue
        # A plain value must hold no credential: only a connection without one may be given so.
        connection = json.loads(env[variable])
        assert not {"login", "password"} & set(connection) and "@" not in env[variable], variable


def test_helm_values_environment_and_secret_references_are_well_formed() -> None:
    for item in VALUES["env"]:
        variable = deserialize(item, "V1EnvVar")
        assert variable.value is not None, item
        # Nothing secret in plain values (Secrets are referenced under `secret` and `extraEnvFrom`).
        assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", variable.name), variable.name
    for item in VALUES["secret"]:
        assert set(item) == {"envName", "secretName", "secretKey"}, item
    sources = [deserialize(source, "V1EnvFromSource") for source in yaml.safe_load(VALUES["extraEnvFrom"])]
    assert [(s.secret_ref.name, s.secret_ref.optional) for s in sources] == [
        ("flywheel-artifact-store", True)
    ]
    resources = deserialize(VALUES["workers"]["resources"], "V1ResourceRequirements")
    assert resources.requests["memory"] and resources.limits["memory"]
