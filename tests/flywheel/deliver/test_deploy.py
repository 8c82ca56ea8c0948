"""Deploy hooks against real local HTTP servers: a webhook receiver and a faithful fake vLLM server,
including deploys whose answer was lost after the server applied them (taken back, or reported)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flywheel.deliver.deploy import NoDeploy, PromotionContext, VllmDeploy, WebhookDeploy, deploy, deploy_hook
from flywheel.deliver.registry import VersionInfo
from flywheel.errors import DeployError, DeployUncertainError

if TYPE_CHECKING:
    from vllm_server import VllmServer

# The servers' fixtures: loaded as a plugin (not imported here) so that pytest rewrites its asserts.
pytest_plugins = ["vllm_server"]

TOKEN = "deploy-s3cret-token"


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Defines an Airflow http connection as an AIRFLOW_CONN_<ID> JSON environment variable."""

    def define(conn_id: str, **fields: Any) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))

    return define


@pytest.fixture
def adapter_dir(tmp_path: Path) -> str:
    """A LoRA adapter directory as the trainer writes it (the fake vLLM checks adapter_config.json)."""
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    return str(path)


def version(
    number: int = 3, adapter_uri: str | None = "s3://flywheel/models/router/v3/adapter", **overrides: Any
) -> VersionInfo:
    """The registry's snapshot of version ``number`` of the router's smollm2-135m candidate."""
    fields: dict[str, Any] = {
        "id": number,
        "workload_id": "router",
        "version": number,
        "candidate_id": "smollm2-135m",
        "eval_type": "customized",
        "base_model": "smollm2-135m-instruct",
        "adapter_uri": adapter_uri,
        "model": {"base_model": "smollm2-135m-instruct", "adapter": adapter_uri},
        "dataset_id": "ds-1",
        "run_id": 5,
        "metrics": None,
        "created_at": datetime(2026, 12, 6, tzinfo=UTC),
    }
    return VersionInfo(**{**fields, **overrides})


PROMOTION = PromotionContext(
    previous=version(2, "s3://flywheel/models/router/v2/adapter"),
    decision_id=17,
    dag_run_id="scheduled__2026-12-06T02:00:00+00:00",
)

PAYLOAD = {
    "event": "promote",
    "workload_id": "router",
    "version": 3,
    "candidate_id": "smollm2-135m",
    "eval_type": "customized",
    "base_model": "smollm2-135m-instruct",
    "adapter_uri": "s3://flywheel/models/router/v3/adapter",
    "model": {"base_model": "smollm2-135m-instruct", "adapter": "s3://flywheel/models/router/v3/adapter"},
    "previous_version": 2,
    "decision_id": 17,
    "dag_run_id": "scheduled__2026-12-06T02:00:00+00:00",
    "idempotency_key": "router/v3/decision-17",
}
"""What the webhook hook POSTs for version 3 replacing version 2 (the wire format serving reads)."""


def test_none_only_moves_the_registry() -> None:
    assert deploy(NoDeploy(), version(), PROMOTION) == {
        "type": "none",
        "status": "skipped",
        "workload_id": "router",
        "version": 3,
    }


def test_webhook_posts_the_champion_with_the_bearer_token(connection, http_server) -> None:
    connection(
        "promote_hook",
        host=http_server.url,
        schema="hooks/promote",
        password=TOKEN,
        extra={"headers": {"X-Team": "ml"}},
    )

    result = deploy(WebhookDeploy(conn_id="promote_hook"), version(), PROMOTION)

    assert result == {
        "type": "webhook",
        "status": "deployed",
        "url": f"{http_server.url}/hooks/promote",
        "http_status": 200,
        "attempts": 1,
        "idempotency_key": "router/v3/decision-17",
        "response": "ok",
    }
    (request,) = http_server.requests
    assert (request.method, request.path) == ("POST", "/hooks/promote")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["x-team"] == "ml"
    assert request.headers["idempotency-key"] == "router/v3/decision-17"
    assert request.body == PAYLOAD
    assert request.body["adapter_uri"] == "s3://flywheel/models/router/v3/adapter"


def test_deploy_hook_deploys_the_registry_champion_and_keeps_the_result(connection, http_server) -> None:
    connection("promote_hook", host=http_server.url)
    results: dict[str, Any] = {}
    hook = deploy_hook(
        WebhookDeploy(conn_id="promote_hook"),
        decision_id=17,
        dag_run_id="scheduled__2026-12-06T02:00:00+00:00",
        results=results,
    )

    hook(
        version(3, "s3://flywheel/models/router/v3/adapter"),
        version(2, "s3://flywheel/models/router/v2/adapter"),
    )

    assert http_server.requests[0].body == PAYLOAD
    assert (results["type"], results["status"]) == ("webhook", "deployed")
    http_server.faults.append({"status": 400, "body": "no"})
    with pytest.raises(DeployError, match="HTTP 400: no"):  # raised inside the registry's transaction
        hook(version(3, "s3://x"), None)


def test_webhook_retries_5xx_then_succeeds(connection, http_server) -> None:
    connection("promote_hook", host=http_server.url.removeprefix("http://"), schema="http")
    http_server.faults.extend([{"status": 503, "body": "warming up"}, {"status": 502, "body": "bad gateway"}])

    result = deploy(WebhookDeploy(conn_id="promote_hook", max_retries=2), version(), PROMOTION)

    assert (result["status"], result["attempts"], result["http_status"]) == ("deployed", 3, 200)
    assert len(http_server.requests) == 3
    assert "authorization" not in http_server.requests[0].headers
    # Every attempt carries the same key: a receiver that deduplicates deploys once.
    assert {r.headers["idempotency-key"] for r in http_server.requests} == {"router/v3/decision-17"}


def test_a_persons_promotion_has_no_idempotency_key(connection, http_server) -> None:
    connection("promote_hook", host=http_server.url)
    manual = PromotionContext(previous=version(2), decision_id=None, dag_run_id=None)

    result = deploy(WebhookDeploy(conn_id="promote_hook"), version(), manual)

    assert (result["status"], result["idempotency_key"]) == ("deployed", None)
    (request,) = http_server.requests
    assert "idempotency-key" not in request.headers
    assert request.body["idempotency_key"] is None


def test_webhook_4xx_is_not_retried(connection, http_server) -> None:
    connection("promote_hook", host=http_server.url, password=TOKEN)
    http_server.faults.append({"status": 422, "body": {"detail": f"unknown workload router (token {TOKEN})"}})

    with pytest.raises(
        DeployError, match=r"HTTP 422: unknown workload router \(token \*\*\*\) \(not retried\)"
    ) as raised:
        deploy(WebhookDeploy(conn_id="promote_hook", max_retries=3), version(), PROMOTION)

    assert raised.value.http_status == 422
    assert len(http_server.requests) == 1
    assert TOKEN not in str(raised.value)


def test_webhook_connection_refused_fails_after_retries(connection, refused_url) -> None:
    connection("promote_hook", host=refused_url, password=TOKEN)

    with pytest.raises(DeployError, match="after 2 attempts: ConnectError") as raised:
        deploy(WebhookDeploy(conn_id="promote_hook", max_retries=1), version(), PROMOTION)

    assert type(raised.value) is DeployError  # nothing was sent, so nothing can have been applied
    assert raised.value.http_status is None
    assert TOKEN not in str(raised.value)


APPLIED_UNANSWERED = {
    "timeout": ({"apply": True, "delay_s": 10}, "ReadTimeout"),
    "dropped": ({"apply": True, "drop": True}, "RemoteProtocolError: Server disconnected"),
    "gateway-timeout": ({"apply": True, "status": 504, "body": "upstream timed out"}, "HTTP 504"),
}
"""Ways a server applies a request and its answer is lost: fault, and what the error names."""


@pytest.mark.parametrize(("fault", "names"), APPLIED_UNANSWERED.values(), ids=APPLIED_UNANSWERED.keys())
def test_webhook_applied_but_unanswered_is_uncertain(connection, http_server, fault, names) -> None:
    connection("promote_hook", host=http_server.url, password=TOKEN)
    http_server.faults.append(fault)

    with pytest.raises(DeployUncertainError, match="attempt 1 got no answer after it was sent") as raised:
        deploy(WebhookDeploy(conn_id="promote_hook", timeout_s=0.3, max_retries=0), version(), PROMOTION)

    assert names in str(raised.value)
    assert raised.value.sent == {"url": http_server.url, "body": PAYLOAD}
    assert TOKEN not in str(raised.value)


def test_webhook_retries_an_unanswered_request_with_the_same_key(connection, http_server) -> None:
    """The webhook contract: a receiver that deduplicates on the idempotency key answers the retry of a
    request it applied with success, and the deploy is done once."""
    connection("promote_hook", host=http_server.url)
    http_server.faults.append({"apply": True, "delay_s": 10})

    result = deploy(WebhookDeploy(conn_id="promote_hook", timeout_s=0.3, max_retries=1), version(), PROMOTION)

    assert (result["status"], result["attempts"]) == ("deployed", 2)
    assert [r.headers["idempotency-key"] for r in http_server.requests] == ["router/v3/decision-17"] * 2


def test_a_later_failure_after_an_unanswered_attempt_is_still_uncertain(connection, http_server) -> None:
    connection("promote_hook", host=http_server.url)
    http_server.faults.extend([{"apply": True, "drop": True}, {"status": 409, "body": "key already used"}])

    with pytest.raises(DeployUncertainError, match=r"HTTP 409: key already used .*attempt 1 got no answer"):
        deploy(WebhookDeploy(conn_id="promote_hook", max_retries=1), version(), PROMOTION)


def test_an_uncertain_webhook_deploy_cannot_be_taken_back_and_says_so(connection, http_server) -> None:
    connection("promote_hook", host=http_server.url)
    http_server.faults.append({"apply": True, "delay_s": 10})
    results: dict[str, Any] = {}
    hook = deploy_hook(
        WebhookDeploy(conn_id="promote_hook", timeout_s=0.3, max_retries=0),
        decision_id=17,
        dag_run_id=PROMOTION.dag_run_id,
        results=results,
    )

    with pytest.raises(DeployUncertainError, match="SERVING MAY RUN router v3 while the registry keeps v2"):
        hook(version(), PROMOTION.previous)

    assert results == {
        "type": "webhook",
        "status": "uncertain",
        "version": 3,
        "idempotency_key": "router/v3/decision-17",
        "sent": {"url": http_server.url, "body": PAYLOAD},
        "error": results["error"],
        "undeploy": {
            "status": "failed",
            "error": "DeployError: deploy type 'webhook' cannot take a deploy back (it has no undeploy)",
        },
        "serving_agrees": False,
    }
    assert "ReadTimeout" in results["error"]


def test_vllm_loads_the_adapter_and_a_repeat_is_idempotent(connection, vllm_server, adapter_dir) -> None:
    vllm_server.api_key = TOKEN
    connection("vllm_router", host=vllm_server.url, password=TOKEN)
    hook = VllmDeploy(conn_id="vllm_router")

    first = deploy(hook, version(3, adapter_dir), PROMOTION)
    again = deploy(hook, version(3, adapter_dir), PROMOTION)  # a retried task

    assert first == {
        "type": "vllm",
        "status": "deployed",
        "adapter_name": "router-v3",
        "already_loaded": False,
        "url": f"{vllm_server.url}/v1/load_lora_adapter",
        "http_status": 200,
        "message": "Success: LoRA adapter 'router-v3' added successfully.",
    }
    assert (again["status"], again["already_loaded"], again["http_status"]) == ("deployed", True, 400)
    assert vllm_server.loaded == {"router-v3": adapter_dir}
    request = vllm_server.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/load_lora_adapter")
    assert request.body == {"lora_name": "router-v3", "lora_path": adapter_dir}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_vllm_refuses_a_name_loaded_from_another_path(connection, vllm_server, adapter_dir) -> None:
    vllm_server.loaded["router-v3"] = "/adapters/an-older-router-v3"
    connection("vllm_router", host=vllm_server.url)

    with pytest.raises(
        DeployError, match="already serves an adapter named 'router-v3' from '/adapters/an-older"
    ):
        deploy(VllmDeploy(conn_id="vllm_router"), version(3, adapter_dir), PROMOTION)


def test_vllm_adapter_name_template_and_v1_base_url(connection, vllm_server, adapter_dir) -> None:
    connection("vllm_router", host=f"{vllm_server.url}/v1")
    hook = VllmDeploy(conn_id="vllm_router", adapter_name="flywheel-{workload_id}-{version}")

    assert deploy(hook, version(3, adapter_dir), PROMOTION)["adapter_name"] == "flywheel-router-3"
    assert vllm_server.requests[0].path == "/v1/load_lora_adapter"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            {"status": 500, "body": {"error": {"message": "CUDA error: out of memory", "code": 500}}},
            r"HTTP 500: CUDA error: out of memory$",
        ),
        (None, r"HTTP 404: Loading lora router-v3 failed: No adapter found for /no/such/adapter$"),
    ],
    ids=["server-error", "missing-adapter"],
)
def test_vllm_errors_carry_status_and_message(connection, vllm_server, fault, expected) -> None:
    connection("vllm_router", host=vllm_server.url, password=TOKEN)
    if fault:
        vllm_server.faults.append(fault)

    with pytest.raises(DeployError, match=expected) as raised:
        deploy(VllmDeploy(conn_id="vllm_router"), version(3, "/no/such/adapter"), PROMOTION)

    assert raised.value.http_status == (500 if fault else 404)
    assert vllm_server.loaded == {}
    assert TOKEN not in str(raised.value)


def test_vllm_without_runtime_lora_updating_says_so(connection, http_server) -> None:
    http_server.faults.append({"status": 404, "body": {"detail": "Not Found"}})  # the route is not registered
    connection("vllm_router", host=http_server.url)

    with pytest.raises(DeployError, match=r"HTTP 404: Not Found .*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        deploy(VllmDeploy(conn_id="vllm_router"), version(), PROMOTION)


def test_vllm_cannot_deploy_a_variant_without_adapter(connection, vllm_server) -> None:
    connection("vllm_router", host=vllm_server.url)

    with pytest.raises(DeployError, match="'icl' variant of candidate 'smollm2-135m' has no LoRA adapter"):
        deploy(VllmDeploy(conn_id="vllm_router"), version(3, None, eval_type="icl"), PROMOTION)

    assert vllm_server.requests == []


def test_vllm_unreachable(connection, refused_url) -> None:
    connection("vllm_router", host=refused_url)

    with pytest.raises(DeployError, match="cannot load adapter 'router-v3': ConnectError") as raised:
        deploy(VllmDeploy(conn_id="vllm_router"), version(), PROMOTION)

    assert type(raised.value) is DeployError  # refused: a plain failure, nothing to take back


def test_a_vllm_load_applied_but_unanswered_is_unloaded(connection, vllm_server, adapter_dir) -> None:
    """vLLM loads the adapter, and the answer is lost: deploy_hook lists what vLLM serves, unloads it,
    and the error says that serving agrees with the registry again."""
    vllm_server.api_key = TOKEN
    connection("vllm_router", host=vllm_server.url, password=TOKEN)
    vllm_server.loaded["router-v2"] = "/adapters/router-v2"  # the registry's champion, served
    vllm_server.faults.append({"apply": True, "delay_s": 10})
    results: dict[str, Any] = {}
    hook = deploy_hook(VllmDeploy(conn_id="vllm_router", timeout_s=0.3), decision_id=17, results=results)

    with pytest.raises(
        DeployUncertainError,
        match=r"ReadTimeout.*; serving ran router v3 and it was taken back, so serving agrees with the "
        r"registry \(v2\)$",
    ):
        hook(version(3, adapter_dir), PROMOTION.previous)

    assert vllm_server.loaded == {"router-v2": "/adapters/router-v2"}
    assert [(r.method, r.path) for r in vllm_server.requests] == [
        ("POST", "/v1/load_lora_adapter"),
        ("GET", "/v1/models"),
        ("POST", "/v1/unload_lora_adapter"),
    ]
    assert vllm_server.requests[2].body == {"lora_name": "router-v3"}
    assert (results["status"], results["serving_agrees"], results["idempotency_key"]) == (
        "uncertain",
        True,
        "router/v3/decision-17",
    )
    assert results["sent"] == {
        "url": f"{vllm_server.url}/v1/load_lora_adapter",
        "body": {"lora_name": "router-v3", "lora_path": adapter_dir},
    }
    assert results["undeploy"] == {
        "status": "undeployed",
        "adapter_name": "router-v3",
        "served": {"router-v2": "/adapters/router-v2", "router-v3": adapter_dir},
        "http_status": 200,
        "message": "Success: LoRA adapter 'router-v3' removed successfully.",
    }


def test_a_vllm_load_lost_before_it_applied_leaves_nothing_to_unload(connection, vllm_server) -> None:
    connection("vllm_router", host=vllm_server.url)
    vllm_server.faults.append({"drop": True})  # the connection drops before vLLM loads anything
    results: dict[str, Any] = {}

    with pytest.raises(
        DeployUncertainError, match="serving did not run router v3 when asked, so serving agrees"
    ):
        deploy_hook(VllmDeploy(conn_id="vllm_router"), results=results)(version(), None)

    assert vllm_server.loaded == {}
    assert results["undeploy"] == {"status": "not_served", "adapter_name": "router-v3", "served": {}}
    assert results["serving_agrees"] is True
    assert [r.path for r in vllm_server.requests] == ["/v1/load_lora_adapter", "/v1/models"]


def test_a_vllm_load_that_cannot_be_taken_back_says_serving_may_run_it(
    connection, vllm_server, adapter_dir
) -> None:
    connection("vllm_router", host=vllm_server.url)
    vllm_server.faults.extend([{"apply": True, "delay_s": 10}, {"drop": True}])  # then the listing drops
    results: dict[str, Any] = {}
    hook = deploy_hook(VllmDeploy(conn_id="vllm_router", timeout_s=0.3), decision_id=17, results=results)

    with pytest.raises(
        DeployUncertainError,
        match=r"SERVING MAY RUN router v3 while the registry keeps v2: undeploy failed: DeployError: .*"
        r"cannot list the served adapters \(GET /v1/models\) to take 'router-v3' back: RemoteProtocolError",
    ):
        hook(version(3, adapter_dir), PROMOTION.previous)

    assert vllm_server.loaded == {"router-v3": adapter_dir}
    assert results["serving_agrees"] is False


def test_the_fake_vllm_server_answers_like_vllm(vllm_server: VllmServer, adapter_dir) -> None:
    import httpx

    load = f"{vllm_server.url}/v1/load_lora_adapter"
    assert httpx.post(load, json={"lora_name": "a"}).json()["error"] == {
        "message": "Both 'lora_name' and 'lora_path' must be provided.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    assert httpx.post(load, json={"lora_name": "a", "lora_path": adapter_dir}).status_code == 200
    models = httpx.get(f"{vllm_server.url}/v1/models").json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [("base-model", None), ("a", "base-model")]
    unload = f"{vllm_server.url}/v1/unload_lora_adapter"
    assert (
        httpx.post(unload, json={"lora_name": "a"}).text == "Success: LoRA adapter 'a' removed successfully."
    )
    missing = httpx.post(unload, json={"lora_name": "a"})
    assert (missing.status_code, missing.json()["error"]["message"]) == (
        404,
        "The lora adapter 'a' cannot be found.",
    )
    assert httpx.get(f"{vllm_server.url}/v1/nothing").json() == {"detail": "Not Found"}


def test_a_users_own_hook_deploys_inside_a_real_promotion(tmp_path: Path, monkeypatch) -> None:
    from conftest import write_config
    from flywheel.config import load_config
    from flywheel.db.engine import get_engine
    from flywheel.db.migrate import upgrade
    from flywheel.deliver.registry import champion, promote, register_version
    from flywheel.tracking import ensure_run
    from my_flywheel.deploy import ChampionFile

    served = tmp_path / "champion.json"
    hook_block = {"type": "my_flywheel.deploy:ChampionFile", "path": str(served)}
    config = load_config(write_config(tmp_path, deploy=hook_block))  # SQLite metadata in tmp_path
    upgrade(get_engine(config.metadata))
    workload = config.workloads[0]
    assert workload.deploy == ChampionFile(type="my_flywheel.deploy:ChampionFile", path=str(served))
    run_id = ensure_run(
        config.metadata,
        workload_id=workload.workload_id,
        dag_id=workload.dag_id,
        dag_run_id="manual",
        interval_start=datetime(2026, 12, 5, 2, tzinfo=UTC),
        interval_end=datetime(2026, 12, 6, 2, tzinfo=UTC),
    )
    v1, v2 = (
        register_version(
            config.metadata,
            workload_id=workload.workload_id,
            run_id=run_id,
            candidate_id="smollm2-135m",
            eval_type=eval_type,
            model={"base_model": "smollm2-135m-instruct", "adapter": f"/adapters/{eval_type}"},
            dataset_id="ds-1",
        )
        for eval_type in ("base", "customized")
    )
    promote(config.metadata, workload.workload_id, v1.version, actor="dag", reason="first")

    results: dict[str, Any] = {}
    hook = deploy_hook(workload.deploy, decision_id=None, dag_run_id="manual", results=results)
    move = promote(
        config.metadata, workload.workload_id, v2.version, actor="dag", reason="better", before_commit=hook
    )

    assert (move.version, move.previous_version) == (2, 1)
    assert results == {"type": "my_flywheel.deploy:ChampionFile", "status": "deployed", "path": str(served)}
    assert json.loads(served.read_text()) == {
        "workload_id": workload.workload_id,
        "version": 2,
        "base_model": "smollm2-135m-instruct",
        "adapter_uri": "/adapters/customized",
        "previous_version": 1,
    }
    # The hook fails (its folder is gone): the alias move rolls back and the champion stays.
    broken = ChampionFile(type="my_flywheel.deploy:ChampionFile", path=str(tmp_path / "gone" / "c.json"))
    with pytest.raises(FileNotFoundError):
        promote(
            config.metadata,
            workload.workload_id,
            v1.version,
            actor="dag",
            reason="back",
            before_commit=deploy_hook(broken),
        )
    assert champion(config.metadata, workload.workload_id).version == 2
