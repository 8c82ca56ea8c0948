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

A deploy request that went out and got no answer (a read timeout, a dropped connection, a gateway's 504)
may have been applied: the hook raises DeployUncertainError, and :func:`deploy_hook` asks the hook to
take it back (:meth:`DeployHook.undeploy`; ``vllm`` unloads the adapter if vLLM lists it) before the
alias move rolls back, so serving agrees with the registry again; the error says where serving stands.
A refused connection or any other error answer is a plain DeployError: nothing was applied.

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
from flywheel.errors import DeployError, DeployUncertainError
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

_GATEWAY_TIMEOUT = 504
"""A gateway's answer that the server behind it did not answer in time: it may still apply the request."""


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
        it is recorded with the decision). Raise DeployError when serving did not accept it, and
        DeployUncertainError when a request went out but its answer was lost."""

    def undeploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        """Take back a deploy of ``champion`` that serving may have applied (its answer was lost), so that
        serving runs what the registry keeps (``promotion.previous``).

        The result (JSON-safe) says what serving reported: ``status`` ``undeployed`` (it ran the champion
        and no longer does) or ``not_served`` (it does not run it). Raise DeployError when serving cannot
        tell or undo it. The default cannot: it raises, and the alert says that serving may run it.
        """
        raise DeployError(f"deploy type {self.type!r} cannot take a deploy back (it has no undeploy)")


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
        sent = {"url": target.safe_url, "body": payload}
        attempts = 0
        # The first attempt that went out and got no answer: the receiver may have applied it.
        unanswered = None
        while True:
            attempts += 1
            retry_reason = None
            try:
                response = httpx.post(target.url, json=payload, headers=headers, timeout=self.timeout_s)
            except httpx.TransportError as exc:
                retry_reason = f"{type(exc).__name__}: {target.redact(str(exc))}"
                status = None
                if _may_have_applied(exc):
                    unanswered = unanswered or f"attempt {attempts}"
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
                if status == _GATEWAY_TIMEOUT:
                    unanswered = unanswered or f"attempt {attempts}"
                if status < 500 and status != _RETRYABLE_STATUS:
                    raise _failure(
                        f"deploy webhook {target.safe_url} (connection {self.conn_id!r}) rejected "
                        f"{champion.workload_id} v{champion.version}: HTTP {status}: "
                        f"{_server_message(response, target)} (not retried)",
                        http_status=status,
                        unanswered=unanswered,
                        sent=sent,
                    )
                retry_reason = f"HTTP {status}: {_server_message(response, target)}"
            if attempts > self.max_retries:
                raise _failure(
                    f"deploy webhook {target.safe_url} (connection {self.conn_id!r}) failed for "
                    f"{champion.workload_id} v{champion.version} after {attempts} attempts: {retry_reason}",
                    http_status=status,
                    unanswered=unanswered,
                    sent=sent,
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

        name = self._name(champion)
        if not champion.adapter_uri:
            raise DeployError(
                f"cannot deploy {champion.workload_id} v{champion.version} to vLLM: its "
                f"{champion.eval_type!r} variant of candidate {champion.candidate_id!r} has no LoRA adapter, "
                f"and vLLM loads only adapters at runtime; serve base model {champion.base_model!r} "
                "(with its few-shot prompt for 'icl') yourself, or use deploy type 'webhook' or 'none'"
            )
        target = _target(self.conn_id)
        url = _vllm_url(target, "load_lora_adapter")
        where = f"vLLM {_safe_url(url)} (connection {self.conn_id!r})"
        body = {"lora_name": name, "lora_path": champion.adapter_uri}
        sent = {"url": _safe_url(url), "body": body}
        try:
            response = httpx.post(url, json=body, headers=target.headers, timeout=self.timeout_s)
        except httpx.TransportError as exc:
            raise _failure(
                f"{where}: cannot load adapter {name!r}: {type(exc).__name__}: {target.redact(str(exc))}",
                http_status=None,
                unanswered="the load request" if _may_have_applied(exc) else None,
                sent=sent,
            ) from None
        message = _server_message(response, target)
        already_loaded = response.status_code == 400 and "has already been loaded" in message
        if not (response.is_success or already_loaded):
            hint = (
                " (is the server running with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora?)"
                if response.status_code == 404 and message == "Not Found"
                else ""
            )
            raise _failure(
                f"{where} refused adapter {name!r} from {champion.adapter_uri!r}: "
                f"HTTP {response.status_code}: {message}{hint}",
                http_status=response.status_code,
                unanswered="the load request" if response.status_code == _GATEWAY_TIMEOUT else None,
                sent=sent,
            )
        if already_loaded:
            _check_loaded_path(target, name, champion.adapter_uri, where, self.timeout_s)
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

    def undeploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        """Unload the champion's adapter if vLLM serves it from the champion's path (``GET /v1/models``,
        then ``POST /v1/unload_lora_adapter``); the result lists the adapters vLLM served (``served``)."""
        import httpx

        name = self._name(champion)
        target = _target(self.conn_id)
        url = _vllm_url(target, "unload_lora_adapter")
        where = f"vLLM {_safe_url(url)} (connection {self.conn_id!r})"
        try:
            served = _served_adapters(target, self.timeout_s)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise DeployError(
                f"{where}: cannot list the served adapters (GET /v1/models) to take {name!r} back: "
                f"{type(exc).__name__}: {target.redact(str(exc))}"
            ) from None
        if served.get(name) != champion.adapter_uri:
            return {"status": "not_served", "adapter_name": name, "served": served}
        try:
            response = httpx.post(
                url, json={"lora_name": name}, headers=target.headers, timeout=self.timeout_s
            )
        except httpx.TransportError as exc:
            raise DeployError(
                f"{where}: cannot unload adapter {name!r}: {type(exc).__name__}: {target.redact(str(exc))}"
            ) from None
        message = _server_message(response, target)
        if not response.is_success:
            raise DeployError(
                f"{where} did not unload adapter {name!r}: HTTP {response.status_code}: {message}",
                http_status=response.status_code,
            )
        log.warning("%s: adapter %s unloaded: serving runs what the registry keeps", where, name)
        return {
            "status": "undeployed",
            "adapter_name": name,
            "served": served,
            "http_status": response.status_code,
            "message": message,
        }

    def _name(self, champion: VersionInfo) -> str:
        """The name vLLM serves the champion's adapter under (``adapter_name`` filled in)."""
        return self.adapter_name.format(workload_id=champion.workload_id, version=champion.version)


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
    DeployError rolls the alias move back. A DeployUncertainError (serving may have applied the deploy)
    is taken back first with the hook's :meth:`~DeployHook.undeploy`: ``results`` then holds the record
    of it (``status: uncertain``, what was sent, the idempotency key, the error, the ``undeploy``
    outcome and ``serving_agrees``), and the error raised again says where serving stands.
    """

    def before_commit(champion: VersionInfo, previous: VersionInfo | None) -> dict[str, Any]:
        promotion = PromotionContext(previous=previous, decision_id=decision_id, dag_run_id=dag_run_id)
        try:
            outcome = deploy(hook, champion, promotion)
        except DeployUncertainError as exc:
            record, message = _take_back(hook, champion, promotion, exc)
            if results is not None:
                results.update(record)
            raise DeployUncertainError(message, sent=exc.sent, http_status=exc.http_status) from exc
        if results is not None:
            results.update(outcome)
        return outcome

    return before_commit


def _take_back(
    hook: DeployHook, champion: VersionInfo, promotion: PromotionContext, error: DeployUncertainError
) -> tuple[dict[str, Any], str]:
    """Undeploy a deploy of ``champion`` that serving may have applied; the record of it, and the error
    message that says where serving stands."""
    try:
        undone = hook.undeploy(champion, promotion)
    except Exception as exc:  # whatever went wrong, serving's state is unknown: say so, keep the first error
        undone = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]}
    kept = f"v{promotion.previous.version}" if promotion.previous is not None else "no champion"
    new = f"{champion.workload_id} v{champion.version}"
    key = idempotency_key(champion, promotion)
    agrees = undone.get("status") in ("undeployed", "not_served")
    if undone.get("status") == "undeployed":
        outcome = f"serving ran {new} and it was taken back, so serving agrees with the registry ({kept})"
    elif agrees:
        outcome = f"serving did not run {new} when asked, so serving agrees with the registry ({kept})"
    else:
        outcome = (
            f"SERVING MAY RUN {new} while the registry keeps {kept}: "
            f"undeploy failed: {undone.get('error') or undone}; "
            f"check serving, then promote again or take v{champion.version} back by hand"
            + (f" (a retry of this promotion re-sends idempotency key {key})" if key else "")
        )
    log.error("%s v%s: deploy may have been applied: %s", champion.workload_id, champion.version, outcome)
    record = {
        "type": hook.type,
        "status": "uncertain",
        "version": champion.version,
        "idempotency_key": key,
        "sent": error.sent,
        "error": str(error),
        "undeploy": undone,
        "serving_agrees": agrees,
    }
    return record, f"{error}; {outcome}"


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


def _failure(message: str, *, http_status: int | None, unanswered: str | None, sent: dict) -> DeployError:
    """The error of a failed deploy: DeployUncertainError when a request went out and got no answer
    (``unanswered`` names it), since serving may have applied it; a plain DeployError otherwise."""
    if unanswered is None:
        return DeployError(message, http_status=http_status)
    return DeployUncertainError(
        f"{message}; {unanswered} got no answer after it was sent, so serving may have applied it",
        sent=sent,
        http_status=http_status,
    )


def _may_have_applied(exc: httpx.TransportError) -> bool:
    """Whether a request that failed with ``exc`` may have reached the server: every transport error but
    those raised before anything was sent (no connection, no proxy, an unsupported or invalid request)."""
    import httpx

    unsent = (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.ProxyError,
        httpx.UnsupportedProtocol,
        httpx.LocalProtocolError,
    )
    return not isinstance(exc, unsent)


def _vllm_url(target: _Target, route: str) -> str:
    """The URL of vLLM's ``/v1/<route>`` from the connection's URL (with or without its ``/v1``)."""
    base = target.url.rstrip("/")
    return f"{base}/{route}" if base.endswith("/v1") else f"{base}/v1/{route}"


def _served_adapters(target: _Target, timeout_s: float) -> dict[str, str | None]:
    """The LoRA adapters vLLM serves, name -> path: ``GET /v1/models`` lists each with its path as
    ``root`` and its base model as ``parent``. Raises httpx.HTTPError, ValueError, KeyError or TypeError
    when the listing cannot be read."""
    import httpx

    response = httpx.get(_vllm_url(target, "models"), headers=target.headers, timeout=timeout_s)
    response.raise_for_status()
    cards = response.json()["data"]
    return {c["id"]: c.get("root") for c in cards if isinstance(c, dict) and c.get("parent")}


def _check_loaded_path(target: _Target, name: str, adapter_uri: str, where: str, timeout_s: float) -> None:
    """Raise DeployError when vLLM serves ``name`` from another path than ``adapter_uri``; a listing that
    cannot be read leaves the name's presence as the answer (it is loaded)."""
    import httpx

    try:
        served = _served_adapters(target, timeout_s)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cannot list loaded adapters to check %s (%s)", where, name, type(exc).__name__)
        return
    if served.get(name) not in (None, adapter_uri):
        raise DeployError(
            f"{where} already serves an adapter named {name!r} from {served[name]!r}, not from "
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
