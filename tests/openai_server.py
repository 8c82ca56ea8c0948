"""A local OpenAI-compatible chat-completions server, for tests of endpoint clients (no HTTP mocks).

``OpenAIServer`` serves ``POST /v1/chat/completions`` over real HTTP/1.1 (keep-alive) on 127.0.0.1,
validates requests the way vLLM and the OpenAI API do (a JSON object, the served ``model`` else 404,
a non-empty ``messages`` list, assistant ``tool_calls`` with ``arguments`` as JSON text,
``tool_choice`` only with ``tools``, the bearer key when one is required) and answers with the real
response shape. A ``responder(body) -> message`` callable writes each answer; ``faults`` scripts
failures, one entry consumed per request, in order::

    def test_retry(openai_server):          # the fixture below
        openai_server.faults.extend([{"status": 503}, {"status": 429, "retry_after": "0"}])
        openai_server.responder = lambda body: {"content": "hi"}
        ...                                 # the third request is answered
        assert len(openai_server.requests) == 3

Fault keys (combinable): ``delay_s`` (sleep first, e.g. past the client's timeout), ``status`` (answer
with that status and an OpenAI error object), ``retry_after`` (the ``Retry-After`` header), ``body``
(this raw text as the body, status 200 unless ``status`` is given), ``drop`` (close the connection
without answering).

Not faithful: no streaming, no ``n`` > 1, no logprobs; token counts are whitespace-separated words.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Responder = Callable[[dict[str, Any]], dict[str, Any]]
"""Writes the answer to a validated request: the response ``message`` (``content``, ``tool_calls``)."""

VALID_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (every request, faulted or invalid ones included)."""

    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: Any
    """The decoded JSON body, or the raw text when it was not JSON."""
    received_at: float


class _ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"error": {"message": message, "type": type_, "param": param, "code": status}}


def echo_responder(body: dict[str, Any]) -> dict[str, Any]:
    """The default answer: the last user message's text, echoed."""
    users = [m for m in body["messages"] if m.get("role") == "user"]
    return {"content": f"echo: {users[-1].get('content') if users else ''}"}


class OpenAIServer:
    """A threaded OpenAI-compatible server on 127.0.0.1 (a free port) serving one model."""

    def __init__(self, model: str = "served-model", *, api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        """When set, requests must carry ``Authorization: Bearer <api_key>`` (else 401)."""
        self.responder: Responder = echo_responder
        self.faults: collections.deque[dict[str, Any]] = collections.deque()
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        """Exceptions raised inside the server (a responder bug): the fixture fails the test on any."""
        self.in_flight = 0
        self.max_concurrent = 0
        """The most requests the server was handling at once."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="openai-server", daemon=True
        )

    @property
    def base_url(self) -> str:
        """The API root a client is configured with (``http://127.0.0.1:<port>/v1``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def bodies(self) -> list[Any]:
        """The recorded request bodies, in arrival order."""
        with self._lock:
            return [r.body for r in self.requests]

    def start(self) -> OpenAIServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still sleeping in a ``delay_s`` fault are cut short."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Called from handler threads.

    def _record(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[Any, dict[str, Any] | None]:
        try:
            body: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body, time.time()))
            fault = self.faults.popleft() if self.faults else None
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
        return body, fault

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _validate(self, path: str, headers: dict[str, str], body: Any) -> dict[str, Any]:
        if path != "/v1/chat/completions":
            raise _ApiError(404, f"Not Found: {path}", type_="NotFoundError")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            raise _ApiError(401, "Incorrect API key provided.", type_="invalid_request_error")
        if not isinstance(body, dict):
            raise _ApiError(400, "The request body is not a JSON object.", type_="BadRequestError")
        if body.get("model") != self.model:
            raise _ApiError(
                404, f"The model `{body.get('model')}` does not exist.", type_="NotFoundError", param="model"
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(
                400, "'messages' must be a non-empty list.", type_="BadRequestError", param="messages"
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in VALID_ROLES:
                raise _ApiError(
                    400, f"messages[{i}]: invalid role", type_="BadRequestError", param="messages"
                )
            for j, call in enumerate(message.get("tool_calls") or []):
                arguments = call.get("function", {}).get("arguments") if isinstance(call, dict) else None
                if not isinstance(arguments, str):
                    raise _ApiError(
                        400,
                        f"messages[{i}].tool_calls[{j}].function.arguments: Input should be a valid string",
                        type_="BadRequestError",
                        param="messages",
                    )
        tools = body.get("tools")
        if tools is not None and (not isinstance(tools, list) or not tools):
            raise _ApiError(400, "'tools' must be a non-empty list.", type_="BadRequestError", param="tools")
        if "tool_choice" in body and not tools:
            raise _ApiError(
                400,
                "When using `tool_choice`, `tools` must be set.",
                type_="BadRequestError",
                param="tool_choice",
            )
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _ApiError(400, "max_tokens must be at least 1", type_="BadRequestError", param="max_tokens")
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise _ApiError(
                400, "temperature must be in [0, 2]", type_="BadRequestError", param="temperature"
            )
        return body

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = dict(self.responder(body))
        finish_reason = answer.pop("finish_reason", None)
        calls = [
            {
                "id": call.get("id") or f"chatcmpl-tool-{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": _as_text(call["function"].get("arguments", {})),
                },
            }
            for call in answer.get("tool_calls") or []
        ]
        message = {"role": "assistant", "content": answer.get("content"), "tool_calls": calls}
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        completion_tokens = len(str(message["content"] or "").split()) + sum(
            len(c["function"]["arguments"].split()) for c in calls
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _as_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _handler_class(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                created = int(time.time())
                model = {"id": server.model, "object": "model", "created": created, "owned_by": "test"}
                self._send(200, json.dumps({"object": "list", "data": [model]}))
            else:
                self._send_error(_ApiError(404, f"Not Found: {self.path}", type_="NotFoundError"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            body, fault = server._record(self.path, headers, raw)
            try:
                self._answer(body, headers, fault or {})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout) before the answer came
            except Exception:
                server.errors.append(traceback.format_exc())
                self._send(
                    500, json.dumps({"error": {"message": "responder failed", "type": "InternalError"}})
                )
            finally:
                server._leave()

        def _answer(self, body: Any, headers: dict[str, str], fault: dict[str, Any]) -> None:
            if fault.get("delay_s") and server._stopping.wait(fault["delay_s"]):
                return
            if fault.get("drop"):
                self.close_connection = True
                return
            extra = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            if "body" in fault:
                self._send(fault.get("status", 200), fault["body"], extra)
                return
            if "status" in fault:
                status = fault["status"]
                message = fault.get("message", f"scripted fault {status}")
                self._send_error(_ApiError(status, message, type_="ScriptedFault"), extra)
                return
            try:
                valid = server._validate(self.path, headers, body)
            except _ApiError as exc:
                self._send_error(exc)
                return
            self._send(200, json.dumps(server._completion(valid)))

        def _send_error(self, error: _ApiError, extra: dict[str, str] | None = None) -> None:
            self._send(error.status, json.dumps(error.payload), extra)

        def _send(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A running :class:`OpenAIServer` serving ``served-model``; the test fails on a server-side exception."""
    with OpenAIServer() as server:
        yield server
    assert not server.errors, "\n".join(server.errors)
