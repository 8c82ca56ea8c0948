"""Deploy hooks: what happens on the serving side when a run promotes a new champion.

The registry alias is always the source of truth; :func:`deploy` then tells serving, as the workload's
``deploy`` block says: ``none`` does nothing more, ``webhook`` POSTs the new champion as JSON to an
HTTP endpoint (retrying connection errors and 5xx answers), ``vllm`` loads the champion's LoRA adapter
into a running vLLM server (``POST /v1/load_lora_adapter``). Loading a name vLLM already holds counts
as success, so a retried task is idempotent.

Endpoints come from Airflow connections (conn_type ``http``): the host (with or without its scheme),
the port, and ``schema`` as the scheme (``http``/``https``, as HttpHook reads it) or, from a connection
URI, the path. A password is sent as a Bearer token (HTTP Basic when a login is set too), and
``extra.headers`` adds headers. Every failure raises :class:`~flywheel.errors.DeployError` with the
HTTP status and the server's message cut short; URLs in results and errors carry no credentials.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from flywheel.config import DeployConfig, NoDeployConfig, VllmDeployConfig, WebhookDeployConfig
from flywheel.errors import DeployError

if TYPE_CHECKING:
    from flywheel.deliver.registry import VersionInfo

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.5
"""First delay between webhook attempts; doubles per retry."""

MAX_MESSAGE_CHARS = 300
"""Server messages quoted in errors and results are cut to this many characters."""

_RETRYABLE_STATUS = 429
"""Besides 5xx, the one 4xx answer worth retrying (too many requests)."""


@dataclass(frozen=True)
class Deployment:
    """A promoted champion as serving needs it: which model, its adapter, and where it came from.

    ``adapter_uri`` is None for a ``base`` or ``icl`` variant (no adapter); ``model`` is the registry
    entry's model description (base model, adapter, eval type, ...).
    """

    workload_id: str
    version: int
    candidate_id: str
    eval_type: str
    base_model: str | None
    adapter_uri: str | None
    model: dict[str, Any] = field(default_factory=dict)
    previous_version: int | None = None
    decision_id: int | None = None
    dag_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Target:
    """An HTTP endpoint from an Airflow connection: the URL, headers with credentials, and the secrets."""

    conn_id: str
    url: str
    headers: dict[str, str]
    secrets: tuple[str, ...]

    @property
    def safe_url(self) -> str:
        return _safe_url(self.url)

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def deploy(config: DeployConfig, deployment: Deployment) -> dict[str, Any]:
    """Tell serving about ``deployment`` as ``config`` says; the result describes what was done.

    Raises DeployError when the serving side did not accept it.
    """
    if isinstance(config, NoDeployConfig):
        log.info(
            "Deploy type none: %s v%s is promoted in the registry only",
            deployment.workload_id,
            deployment.version,
        )
        return {
            "type": "none",
            "status": "skipped",
            "workload_id": deployment.workload_id,
            "version": deployment.version,
        }
    if isinstance(config, WebhookDeployConfig):
        return _deploy_webhook(config, deployment)
    if isinstance(config, VllmDeployConfig):
        return _deploy_vllm(config, deployment)
    raise TypeError(f"unknown deploy config {type(config).__name__}")


def deploy_hook(
    config: DeployConfig,
    workload_id: str,
    *,
    decision_id: int | None = None,
    dag_run_id: str | None = None,
    results: dict[str, Any] | None = None,
) -> Callable[[VersionInfo, VersionInfo | None], None]:
    """The registry's ``before_commit`` hook: deploy the new champion while the alias move is uncommitted.

    The hook receives ``(new champion, previous champion)``, deploys the new one with :func:`deploy`
    and puts the result into ``results``; its DeployError rolls the alias move back.
    """

    def hook(champion: VersionInfo, previous: VersionInfo | None) -> None:
        deployment = Deployment(
            workload_id=workload_id,
            version=champion.version,
            candidate_id=champion.candidate_id,
            eval_type=champion.eval_type,
            base_model=champion.base_model,
            adapter_uri=champion.adapter_uri,
            model=champion.model,
            previous_version=previous.version if previous is not None else None,
            decision_id=decision_id,
            dag_run_id=dag_run_id,
        )
        outcome = deploy(config, deployment)
        if results is not None:
            results.update(outcome)

    return hook


def _deploy_webhook(config: WebhookDeployConfig, deployment: Deployment) -> dict[str, Any]:
    target = _target(config.conn_id)
    payload = {"event": "promote", **deployment.to_dict()}
    attempts = 0
    while True:
        attempts += 1
        retry_reason = None
        try:
            response = httpx.post(target.url, json=payload, headers=target.headers, timeout=config.timeout_s)
        except httpx.TransportError as exc:
            retry_reason = f"{type(exc).__name__}: {target.redact(str(exc))}"
            status = None
        else:
            status = response.status_code
            if response.is_success:
                log.info(
                    "Deploy webhook %s accepted %s v%s (HTTP %s, attempt %s)",
                    target.safe_url,
                    deployment.workload_id,
                    deployment.version,
                    status,
                    attempts,
                )
                return {
                    "type": "webhook",
                    "status": "deployed",
                    "url": target.safe_url,
                    "http_status": status,
                    "attempts": attempts,
                }
            if status < 500 and status != _RETRYABLE_STATUS:
                raise DeployError(
                    f"deploy webhook {target.safe_url} (connection {config.conn_id!r}) rejected "
                    f"{deployment.workload_id} v{deployment.version}: HTTP {status}: "
                    f"{_server_message(response, target)} (not retried)",
                    http_status=status,
                )
            retry_reason = f"HTTP {status}: {_server_message(response, target)}"
        if attempts > config.max_retries:
            raise DeployError(
                f"deploy webhook {target.safe_url} (connection {config.conn_id!r}) failed for "
                f"{deployment.workload_id} v{deployment.version} after {attempts} attempts: {retry_reason}",
                http_status=status,
            )
        delay = RETRY_BACKOFF_S * 2 ** (attempts - 1)
        log.warning("Deploy webhook %s: %s; retrying in %.1f s", target.safe_url, retry_reason, delay)
        time.sleep(delay)


def _deploy_vllm(config: VllmDeployConfig, deployment: Deployment) -> dict[str, Any]:
    name = config.adapter_name.format(workload_id=deployment.workload_id, version=deployment.version)
    if not deployment.adapter_uri:
        raise DeployError(
            f"cannot deploy {deployment.workload_id} v{deployment.version} to vLLM: its "
            f"{deployment.eval_type!r} variant of candidate {deployment.candidate_id!r} has no LoRA adapter, "
            f"and vLLM loads only adapters at runtime; serve base model {deployment.base_model!r} "
            "(with its few-shot prompt for 'icl') yourself, or use deploy type 'webhook' or 'none'"
        )
    target = _target(config.conn_id)
    base = target.url.rstrip("/")
    url = f"{base}/load_lora_adapter" if base.endswith("/v1") else f"{base}/v1/load_lora_adapter"
    where = f"vLLM {_safe_url(url)} (connection {config.conn_id!r})"
    body = {"lora_name": name, "lora_path": deployment.adapter_uri}
    try:
        response = httpx.post(url, json=body, headers=target.headers, timeout=config.timeout_s)
    except httpx.TransportError as exc:
        raise DeployError(
            f"{where}: cannot load adapter {name!r}: {type(exc).__name__}: {target.redact(str(exc))}"
        ) from None
    message = _server_message(response, target)
    already_loaded = response.status_code == 400 and "has already been loaded" in message
    if not (response.is_success or already_loaded):
        hint = (
            " (is the server running with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora?)"
            if response.status_code == 404 and message == "Not Found"
            else ""
        )
        raise DeployError(
            f"{where} refused adapter {name!r} from {deployment.adapter_uri!r}: "
            f"HTTP {response.status_code}: {message}{hint}",
            http_status=response.status_code,
        )
    if already_loaded:
        _check_loaded_path(target, base, name, deployment.adapter_uri, where)
    log.info(
        "%s: adapter %s %s (%s)",
        where,
        name,
        "was already loaded" if already_loaded else "loaded",
        deployment.adapter_uri,
    )
    return {
        "type": "vllm",
        "status": "deployed",
        "adapter_name": name,
        "already_loaded": already_loaded,
        "url": _safe_url(url),
        "http_status": response.status_code,
        "message": message,
    }


def _check_loaded_path(target: _Target, base: str, name: str, adapter_uri: str, where: str) -> None:
    """Raise DeployError when vLLM serves ``name`` from another path than ``adapter_uri``.

    vLLM lists each loaded adapter in ``GET /v1/models`` with its path as ``root``; a listing that
    cannot be read leaves the name's presence as the answer (it is loaded).
    """
    models_url = f"{base}/models" if base.endswith("/v1") else f"{base}/v1/models"
    try:
        response = httpx.get(models_url, headers=target.headers, timeout=30.0)
        cards = response.json()["data"] if response.is_success else []
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cannot list loaded adapters to check %s (%s)", where, name, type(exc).__name__)
        return
    for card in cards:
        if isinstance(card, dict) and card.get("id") == name and card.get("root") not in (None, adapter_uri):
            raise DeployError(
                f"{where} already serves an adapter named {name!r} from {card['root']!r}, not from "
                f"{adapter_uri!r}; unload it or change deploy.adapter_name"
            )


def _target(conn_id: str) -> _Target:
    """The endpoint of an Airflow http connection (see the module docstring for the fields read)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    host = (conn.host or "").strip()
    if not host:
        raise DeployError(f"connection {conn_id!r} has no host")
    schema = (conn.schema or "").strip("/")
    if "://" not in host:
        scheme = schema if schema in ("http", "https") else "http"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    netloc = parts.netloc
    if conn.port and parts.port is None:
        netloc = f"{netloc}:{conn.port}"
    path = parts.path.rstrip("/")
    if schema and schema not in ("http", "https"):
        path = f"{path}/{schema}"
    url = urlunsplit((parts.scheme, netloc, path, parts.query, ""))

    headers = {str(k): str(v) for k, v in (conn.extra_dejson.get("headers") or {}).items()}
    if conn.password and conn.login:
        headers["Authorization"] = (
            "Basic " + base64.b64encode(f"{conn.login}:{conn.password}".encode()).decode()
        )
    elif conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    secrets = tuple(s for s in (conn.password, conn.login, parts.password) if s)
    return _Target(conn_id, url, headers, secrets)


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (fit for logs, results and errors)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def _server_message(response: httpx.Response, target: _Target) -> str:
    """The server's own message (OpenAI/vLLM or FastAPI error JSON, else the text), cut short."""
    text = response.text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
        elif body.get("message") or body.get("detail") or isinstance(error, str):
            text = str(body.get("message") or body.get("detail") or error)
    text = target.redact(text) or response.reason_phrase
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."
