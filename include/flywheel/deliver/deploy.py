"""Deploy hooks: what happens on the serving side when the champion alias moves.

The registry alias is always the source of truth; the workload's ``deploy`` block then names a hook in
:data:`DEPLOY_HOOKS` that tells serving: ``none`` does nothing more, ``webhook`` POSTs the new
champion as JSON to an HTTP endpoint (retrying connection errors and 5xx answers), ``vllm`` loads the
champion's LoRA adapter into a running vLLM server (``POST /v1/load_lora_adapter``). Loading a name
vLLM already holds counts as success, so a retried task is idempotent. The user's own hook is a
:class:`DeployHook` subclass named by its dotted path. A hook is its own options model: the keys of
the ``deploy`` block are its fields, validated when the config is read (so this module imports
nothing heavy at the top).

A hook receives the registry's snapshot of the new champion (:class:`~flywheel.deliver.registry.
VersionInfo`) and the :class:`PromotionContext`, and runs inside the alias transaction
(:func:`deploy_hook`): raising rolls the move back, and its result is kept in the move's audit row.
A run's promotion carries an idempotency key (workload, version and decision): a retried task sends the
same key, so a webhook receiver that deduplicates does not deploy twice.

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
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator

from flywheel.config import PluginConfig
from flywheel.errors import DeployError
from flywheel.plugins import Registry

if TYPE_CHECKING:
    import httpx

    from flywheel.deliver.registry import VersionInfo

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.5
"""First delay between webhook attempts; doubles per retry."""

MAX_MESSAGE_CHARS = 300
"""Server messages quoted in errors and results are cut to this many characters."""

_RETRYABLE_STATUS = 429
"""Besides 5xx, the one 4xx answer worth retrying (too many requests)."""


@dataclass(frozen=True)
class PromotionContext:
    """Why the champion alias moves, beside the new champion itself.

    ``previous`` is the champion it replaces (None for the first one); ``decision_id`` and
    ``dag_run_id`` name the run's decision (None for a person's promotion or a rollback).
    """

    previous: VersionInfo | None = None
    decision_id: int | None = None
    dag_run_id: str | None = None


def idempotency_key(champion: VersionInfo, promotion: PromotionContext) -> str | None:
    """One key for every attempt to deliver a decision's promotion: ``<workload>/v<version>/decision-<id>``.

    None for a person's promotion or rollback, each a new intent (the same key again could make a
    deduplicating receiver skip a re-promotion after a rollback).
    """
    if promotion.decision_id is None:
        return None
    return f"{champion.workload_id}/v{champion.version}/decision-{promotion.decision_id}"


class DeployHook(PluginConfig):
    """Tells serving about a new champion; subclass it (and name it by dotted path in ``deploy.type``)
    to add one. Its fields are the options of the ``deploy`` block."""

    @abstractmethod
    def deploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        """Tell serving that ``champion`` is the new champion; the result says what was done (JSON-safe:
        it is recorded with the decision). Raise DeployError when serving did not accept it."""


class NoDeploy(DeployHook):
    """Promotion moves the registry alias only (the serving side polls the registry)."""

    type: Literal["none"] = "none"

    def deploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        log.info(
            "Deploy type none: %s v%s is promoted in the registry only",
            champion.workload_id,
            champion.version,
        )
        return {"status": "skipped", "workload_id": champion.workload_id, "version": champion.version}


class WebhookDeploy(DeployHook):
    """Promotion POSTs the new champion (JSON) to an HTTP endpoint named by an Airflow connection."""

    type: Literal["webhook"] = "webhook"
    conn_id: str = Field(..., min_length=1, description="Airflow connection (http) of the webhook URL.")
    timeout_s: float = Field(30.0, gt=0, description="Timeout of each request, in seconds.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries after a connection error or a 5xx.")

    def deploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        import httpx

        target = _target(self.conn_id)
        payload = promotion_payload(champion, promotion)
        key = payload["idempotency_key"]
        headers = target.headers | ({"Idempotency-Key": key} if key else {})
        attempts = 0
        while True:
            attempts += 1
            retry_reason = None
            try:
                response = httpx.post(target.url, json=payload, headers=headers, timeout=self.timeout_s)
            except httpx.TransportError as exc:
                retry_reason = f"{type(exc).__name__}: {target.redact(str(exc))}"
                status = None
            else:
                status = response.status_code
                if response.is_success:
                    log.info(
                        "Deploy webhook %s accepted %s v%s (HTTP %s, attempt %s)",
                        target.safe_url,
                        champion.workload_id,
                        champion.version,
                        status,
                        attempts,
                    )
                    return {
                        "status": "deployed",
                        "url": target.safe_url,
                        "http_status": status,
                        "attempts": attempts,
                        "idempotency_key": key,
                        "response": _server_message(response, target) if response.text.strip() else None,
                    }
                if status < 500 and status != _RETRYABLE_STATUS:
                    raise DeployError(
                        f"deploy webhook {target.safe_url} (connection {self.conn_id!r}) rejected "
                        f"{champion.workload_id} v{champion.version}: HTTP {status}: "
                        f"{_server_message(response, target)} (not retried)",
                        http_status=status,
                    )
                retry_reason = f"HTTP {status}: {_server_message(response, target)}"
            if attempts > self.max_retries:
                raise DeployError(
                    f"deploy webhook {target.safe_url} (connection {self.conn_id!r}) failed for "
                    f"{champion.workload_id} v{champion.version} after {attempts} attempts: {retry_reason}",
                    http_status=status,
                )
            delay = RETRY_BACKOFF_S * 2 ** (attempts - 1)
            log.warning("Deploy webhook %s: %s; retrying in %.1f s", target.safe_url, retry_reason, delay)
            time.sleep(delay)


class VllmDeploy(DeployHook):
    """Promotion loads the champion's adapter into a running vLLM server (``POST /v1/load_lora_adapter``).

    The server must run with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; it reads the adapter from
    ``adapter_uri`` as it sees that path (a shared volume or a URL its resolver understands).
    """

    type: Literal["vllm"] = "vllm"
    conn_id: str = Field(..., min_length=1, description="Airflow connection (http) of the vLLM server.")
    adapter_name: str = Field(
        "{workload_id}-v{version}",
        min_length=1,
        description="Name the adapter is served under; {workload_id} and {version} are filled in.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Timeout of the load request, in seconds.")

    @field_validator("adapter_name")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            value.format(workload_id="w", version=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{workload_id}} and {{version}} may be used ({exc})") from None
        return value

    def deploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        import httpx

        name = self.adapter_name.format(workload_id=champion.workload_id, version=champion.version)
        if not champion.adapter_uri:
            raise DeployError(
                f"cannot deploy {champion.workload_id} v{champion.version} to vLLM: its "
                f"{champion.eval_type!r} variant of candidate {champion.candidate_id!r} has no LoRA adapter, "
                f"and vLLM loads only adapters at runtime; serve base model {champion.base_model!r} "
                "(with its few-shot prompt for 'icl') yourself, or use deploy type 'webhook' or 'none'"
            )
        target = _target(self.conn_id)
        base = target.url.rstrip("/")
        url = f"{base}/load_lora_adapter" if base.endswith("/v1") else f"{base}/v1/load_lora_adapter"
        where = f"vLLM {_safe_url(url)} (connection {self.conn_id!r})"
        body = {"lora_name": name, "lora_path": champion.adapter_uri}
        try:
            response = httpx.post(url, json=body, headers=target.headers, timeout=self.timeout_s)
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
                f"{where} refused adapter {name!r} from {champion.adapter_uri!r}: "
                f"HTTP {response.status_code}: {message}{hint}",
                http_status=response.status_code,
            )
        if already_loaded:
            _check_loaded_path(target, base, name, champion.adapter_uri, where)
        log.info(
            "%s: adapter %s %s (%s)",
            where,
            name,
            "was already loaded" if already_loaded else "loaded",
            champion.adapter_uri,
        )
        return {
            "status": "deployed",
            "adapter_name": name,
            "already_loaded": already_loaded,
            "url": _safe_url(url),
            "http_status": response.status_code,
            "message": message,
        }


DEPLOY_HOOKS: Registry[type[DeployHook]] = Registry(
    "deploy hook",
    {
        "none": "flywheel.deliver.deploy:NoDeploy",
        "webhook": "flywheel.deliver.deploy:WebhookDeploy",
        "vllm": "flywheel.deliver.deploy:VllmDeploy",
    },
    base=DeployHook,
)
"""``deploy.type`` -> its :class:`DeployHook`; the user's own by dotted path."""


def deploy(hook: DeployHook, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
    """Tell serving about ``champion`` with ``hook``; the hook's result, its ``type`` first.

    Raises DeployError when the serving side did not accept it.
    """
    return {"type": hook.type, **hook.deploy(champion, promotion)}


def deploy_hook(
    hook: DeployHook,
    *,
    decision_id: int | None = None,
    dag_run_id: str | None = None,
    results: dict[str, Any] | None = None,
) -> Callable[[VersionInfo, VersionInfo | None], dict[str, Any]]:
    """The registry's ``before_commit`` hook: deploy the new champion while the alias move is uncommitted.

    The hook receives ``(new champion, previous champion)``, deploys the new one with :func:`deploy`,
    puts the result into ``results`` and returns it (the registry keeps it in the audit row); its
    DeployError rolls the alias move back.
    """

    def before_commit(champion: VersionInfo, previous: VersionInfo | None) -> dict[str, Any]:
        promotion = PromotionContext(previous=previous, decision_id=decision_id, dag_run_id=dag_run_id)
        outcome = deploy(hook, champion, promotion)
        if results is not None:
            results.update(outcome)
        return outcome

    return before_commit


def skipped_deploy(hook: DeployHook, by: str) -> Callable[[VersionInfo, VersionInfo | None], dict[str, Any]]:
    """A ``before_commit`` hook that tells serving nothing and says so in the audit row (``--no-deploy``)."""

    def before_commit(champion: VersionInfo, previous: VersionInfo | None) -> dict[str, Any]:
        log.warning(
            "%s v%s: deploy hook %r skipped (%s): serving is not told",
            champion.workload_id,
            champion.version,
            hook.type,
            by,
        )
        return {"status": "skipped", "by": by, "configured": hook.type}

    return before_commit


def promotion_payload(champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
    """The JSON a ``webhook`` hook POSTs: the ``promote`` event, the champion as serving needs it (its
    model description, adapter and origin), the promotion context and its idempotency key (also sent as
    the ``Idempotency-Key`` header)."""
    return {
        "event": "promote",
        "workload_id": champion.workload_id,
        "version": champion.version,
        "candidate_id": champion.candidate_id,
        "eval_type": champion.eval_type,
        "base_model": champion.base_model,
        "adapter_uri": champion.adapter_uri,
        "model": champion.model,
        "previous_version": promotion.previous.version if promotion.previous is not None else None,
        "decision_id": promotion.decision_id,
        "dag_run_id": promotion.dag_run_id,
        "idempotency_key": idempotency_key(champion, promotion),
    }


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


def _check_loaded_path(target: _Target, base: str, name: str, adapter_uri: str, where: str) -> None:
    """Raise DeployError when vLLM serves ``name`` from another path than ``adapter_uri``.

    vLLM lists each loaded adapter in ``GET /v1/models`` with its path as ``root``; a listing that
    cannot be read leaves the name's presence as the answer (it is loaded).
    """
    import httpx

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
