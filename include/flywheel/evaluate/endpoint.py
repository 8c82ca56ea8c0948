"""Answers from an OpenAI-compatible chat-completions endpoint (vLLM, NIM, the teacher model, a judge).

:class:`ChatClient` sends one request and retries what a retry can fix (408, 409, 429, 5xx, lost
connections, timeouts) with exponential backoff; any other 4xx or a malformed response fails at once.
:class:`EndpointGenerator` is the :class:`~flywheel.evaluate.generation.Generator` of a served model:
it answers many prompts with bounded concurrency, in order, and turns a request that keeps failing into
a :class:`~flywheel.evaluate.generation.Generation` with ``error`` set rather than an exception.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from flywheel.config import EndpointConfig, GenerationConfig
from flywheel.errors import RetryableError
from flywheel.evaluate.examples import openai_call
from flywheel.evaluate.generation import AnswerLimits, Generation, Prompt

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, *range(500, 600)})
"""HTTP statuses worth another attempt: timeouts, conflicts, rate limits and server errors."""

MAX_RETRY_AFTER_S = 60.0
"""A ``Retry-After`` header is honoured up to this many seconds."""

PROGRESS_EVERY = 50
"""A progress line is logged every this many completed requests."""

_BODY_EXCERPT = 300


class EndpointError(RetryableError):
    """A chat-completions request failed for good: the message says why and after how many attempts.

    ``status`` is the last HTTP status (``None`` when the last attempt got no response).
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True)
class ChatResult:
    """One successful chat completion: the answer message and what it cost."""

    message: dict[str, Any]
    """``choices[0].message`` as the endpoint returned it (``role``, ``content``, ``tool_calls``)."""
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    """Seconds the successful attempt took (earlier failed attempts and backoff excluded)."""
    attempts: int
    """Requests sent, the successful one included (1 when the first attempt succeeded)."""


class ChatClient:
    """A client of one OpenAI-compatible endpoint: ``POST {base_url}/chat/completions`` with retries.

    One connection pool per client, sized to the endpoint's concurrency, shared by every thread that
    calls :meth:`complete`. Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, endpoint: EndpointConfig, api_key: str | None = None) -> None:
        self.endpoint = endpoint
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        key = api_key if api_key is not None else _api_key_from_env(endpoint)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(endpoint.timeout_s),
            limits=httpx.Limits(
                max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency
            ),
        )

    def complete(self, body: dict[str, Any]) -> ChatResult:
        """Send one chat-completions request (``model`` and ``extra_body`` filled in) and return the answer.

        Raises :class:`EndpointError` when a non-retryable status or a malformed response comes back,
        or when every attempt (``1 + max_retries``) failed.
        """
        payload = {**body, **self.endpoint.extra_body, "model": self.endpoint.model}
        total = self.endpoint.max_retries + 1
        last_status: int | None = None
        reason = "no attempt made"
        for attempt in range(total):
            retry_after: float | None = None
            started = time.perf_counter()
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TimeoutException as exc:
                last_status = None
                reason = f"timed out after {self.endpoint.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last_status = None
                reason = f"{type(exc).__name__}: {exc}"
            else:
                latency = time.perf_counter() - started
                last_status = response.status_code
                if response.is_success:
                    return _parse_result(response, self.url, latency=latency, attempts=attempt + 1)
                excerpt = response.text[:_BODY_EXCERPT]
                if response.status_code not in RETRYABLE_STATUS:
                    raise EndpointError(
                        f"HTTP {response.status_code} from {self.url} (not retried): {excerpt}",
                        status=response.status_code,
                        attempts=attempt + 1,
                    )
                reason = f"HTTP {response.status_code}: {excerpt}"
                retry_after = _retry_after_s(response)
            if attempt + 1 < total:
                delay = self._backoff_s(attempt, retry_after)
                log.warning(
                    "%s attempt %d/%d failed (%s); retrying in %.2f s",
                    self.url,
                    attempt + 1,
                    total,
                    reason,
                    delay,
                )
                time.sleep(delay)
        raise EndpointError(
            f"{self.url}: gave up after {total} attempt{'s' if total != 1 else ''}; last error: {reason}",
            status=last_status,
            attempts=total,
        )

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        base = self.endpoint.retry_backoff_s * 2**attempt
        delay = base + random.uniform(0, 0.1 * base)  # nosec B311 # retry jitter, not a secret
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EndpointGenerator:
    """The :class:`~flywheel.evaluate.generation.Generator` of a served model: one request per prompt.

    Requests run ``endpoint.concurrency`` at a time; answers come back in prompt order. A prompt whose
    request fails for good gets a :class:`Generation` with ``error`` set (never an exception). The
    token cap is sent as ``max_tokens``; the response's ``finish_reason`` (``length``: the cap cut
    the answer) is kept. Where an answer ends is the server's business: ``stop_after_tool_call``
    does not apply.
    """

    def __init__(
        self, endpoint: EndpointConfig, generation: GenerationConfig, api_key: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.generation = generation
        self.client = ChatClient(endpoint, api_key=api_key)

    def request_body(self, prompt: Prompt, limits: AnswerLimits | None = None) -> dict[str, Any]:
        """The chat-completions request of one prompt (without ``model``, which the client adds)."""
        limits = limits or AnswerLimits.of(self.generation)
        body: dict[str, Any] = {
            "messages": wire_messages(prompt.messages),
            "temperature": self.generation.temperature,
            "max_tokens": limits.max_new_tokens,
        }
        if prompt.tools:
            body["tools"] = prompt.tools
            body["tool_choice"] = self.generation.tool_choice
        return body

    def generate(self, prompts: list[Prompt], limits: AnswerLimits | None = None) -> list[Generation]:
        """Answer every prompt (bounded concurrency), in the prompts' order, within ``limits``."""
        limits = limits or AnswerLimits.of(self.generation)
        results: list[Generation | None] = [None] * len(prompts)
        progress = _Progress(f"{self.endpoint.model} at {self.endpoint.base_url}", len(prompts))
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency, thread_name_prefix="endpoint") as pool:
            futures = {pool.submit(self._generate_one, prompt, limits): i for i, prompt in enumerate(prompts)}
            for future in as_completed(futures):
                generation = future.result()
                results[futures[future]] = generation
                progress.done(failed=generation.error is not None)
        progress.finish()
        return [g for g in results if g is not None]

    def _generate_one(self, prompt: Prompt, limits: AnswerLimits) -> Generation:
        started = time.perf_counter()
        try:
            result = self.client.complete(self.request_body(prompt, limits))
        except Exception as exc:  # one bad example must not fail the others
            log.warning("%s: request failed: %s", self.endpoint.model, exc)
            return Generation(
                text=None,
                latency_s=time.perf_counter() - started,
                tokens_in=0,
                tokens_out=0,
                message=None,
                error=str(exc) if isinstance(exc, EndpointError) else f"{type(exc).__name__}: {exc}",
            )
        content = result.message.get("content")
        return Generation(
            text=content if isinstance(content, str) else "",
            latency_s=result.latency_s,
            tokens_in=result.prompt_tokens,
            tokens_out=result.completion_tokens,
            message=result.message,
            finish_reason=result.finish_reason,
        )

    def close(self) -> None:
        """Close the endpoint client's connection pool."""
        self.client.close()

    def __enter__(self) -> EndpointGenerator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as OpenAI accepts them: assistant ``tool_calls`` carry ``arguments`` as JSON text."""
    wired = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [openai_call(call, i) for i, call in enumerate(calls)]}
        wired.append(message)
    return wired


class _Progress:
    """Counts completed requests from many threads and logs a line every :data:`PROGRESS_EVERY`."""

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.completed = 0
        self.failed = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()

    def done(self, *, failed: bool) -> None:
        with self._lock:
            self.completed += 1
            self.failed += int(failed)
            if self.completed % PROGRESS_EVERY == 0 and self.completed < self.total:
                self._log()

    def finish(self) -> None:
        if self.total:
            self._log()

    def _log(self) -> None:
        elapsed = time.perf_counter() - self.started
        log.info(
            "%s: %d/%d requests done, %d failed (%.1f s)",
            self.what,
            self.completed,
            self.total,
            self.failed,
            elapsed,
        )


def _api_key_from_env(endpoint: EndpointConfig) -> str | None:
    if not endpoint.api_key_env:
        return None
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise EndpointError(
            f"the API key of {endpoint.base_url} is read from the environment variable "
            f"{endpoint.api_key_env}, which is not set"
        )
    return key


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the exponential backoff applies
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _parse_result(response: httpx.Response, url: str, *, latency: float, attempts: int) -> ChatResult:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EndpointError(
            f"malformed response from {url} (not JSON): {response.text[:_BODY_EXCERPT]}",
            status=response.status_code,
            attempts=attempts,
        ) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise EndpointError(
            f"malformed response from {url} (no choices[0].message): {response.text[:_BODY_EXCERPT]}",
            status=response.status_code,
            attempts=attempts,
        )
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatResult(
        message=message,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        latency_s=latency,
        attempts=attempts,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
