"""Local HTTP servers for tests of deploy hooks and alert channels (real sockets, no HTTP mocks).

``RecordingServer`` answers every request with ``reply(request)`` (default ``200 ok``) and records it;
``faults`` scripts answers, one entry consumed per request, in order. Fault keys (combinable, the names
of ``tests/openai_server.py``): ``status`` (answer with that status and ``body`` instead of the reply,
which then does not take effect), ``apply`` (the request takes effect first, as ``reply`` would have it),
``delay_s`` (then wait that long before answering, e.g. past the client's timeout; without ``apply`` the
request takes effect after the wait, as on a slow server), ``drop`` (close the connection without an
answer). ``{"apply": True, "delay_s": 5}`` is a server that applied a request and timed out before it
answered. Webhook and Slack tests point an Airflow connection at ``server.url``.

``VllmServer`` is a small, faithful fake of vLLM's runtime LoRA API (the server started with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), from vLLM's ``serving_models.py``:

- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 with the text body
  ``Success: LoRA adapter '<name>' added successfully.``; 400 ``InvalidUserInput`` when a field is
  missing or ``The lora adapter '<name>' has already been loaded.``; 404 ``NotFoundError`` when a
  local ``lora_path`` holds no ``adapter_config.json`` (URLs are accepted as given);
- ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200 with the text body
  ``Success: LoRA adapter '<name>' removed successfully.``; 400 ``InvalidUserInput`` without a name;
  404 ``NotFoundError`` ``The lora adapter '<name>' cannot be found.``;
- ``GET /v1/models``: the base model and the loaded adapters (each with its path as ``root``);
- any other route: 404 ``{"detail": "Not Found"}`` (FastAPI's answer);
- with ``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get 401
  ``{"error": "Unauthorized"}``.

Errors use vLLM's current shape ``{"error": {"message", "type", "param", "code"}}``. Not faithful:
no inference, no check that the adapter matches the base model.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a server received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: Any
    """The decoded JSON body, or the raw text when it was not JSON."""


Reply = tuple[int, Any]
"""An answer: status and body (a dict or list is sent as JSON, a string as text)."""


class RecordingServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port) that records requests and replies."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.faults: collections.deque[dict[str, Any]] = collections.deque()
        self.errors: list[str] = []
        """Exceptions raised while answering (a bug in ``reply``): fixtures fail the test on any."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The server's root URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def reply(self, request: RecordedRequest) -> Reply:
        """The answer to a request that no fault intercepted (override in subclasses)."""
        return 200, "ok"

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still waiting in a ``delay_s`` fault are cut short, unanswered."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> dict[str, Any] | None:
        with self._lock:
            self.requests.append(request)
            return self.faults.popleft() if self.faults else None


class VllmServer(RecordingServer):
    """A fake vLLM server with runtime LoRA updating: ``loaded`` maps adapter names to their paths."""

    def __init__(self, base_model: str = "base-model", *, api_key: str | None = None) -> None:
        super().__init__()
        self.base_model = base_model
        self.api_key = api_key
        self.loaded: dict[str, str] = {}

    def reply(self, request: RecordedRequest) -> Reply:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        route = (request.method, request.path)
        body = request.body if isinstance(request.body, dict) else {}
        if route == ("POST", "/v1/load_lora_adapter"):
            return self._load(body)
        if route == ("POST", "/v1/unload_lora_adapter"):
            return self._unload(body)
        if route == ("GET", "/v1/models"):
            cards = [{"id": self.base_model, "object": "model", "root": self.base_model, "parent": None}]
            cards += [
                {"id": name, "object": "model", "root": path, "parent": self.base_model}
                for name, path in self.loaded.items()
            ]
            return 200, {"object": "list", "data": cards}
        return 404, {"detail": "Not Found"}

    def _load(self, body: dict[str, Any]) -> Reply:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        with self._lock:
            if name in self.loaded:
                return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
            if "://" not in path and not os.path.isfile(os.path.join(path, "adapter_config.json")):
                return _error(
                    404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError"
                )
            self.loaded[name] = path
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _unload(self, body: dict[str, Any]) -> Reply:
        name = body.get("lora_name")
        if not name:
            return _error(
                400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput"
            )
        with self._lock:
            if self.loaded.pop(name, None) is None:
                return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        return 200, f"Success: LoRA adapter '{name}' removed successfully."


def _error(status: int, message: str, type_: str) -> Reply:
    return status, {"error": {"message": message, "type": type_, "param": None, "code": status}}


def _handler_class(server: RecordingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read ``server.requests`` instead."""

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body: Any = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                body = raw.decode("utf-8", "replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = RecordedRequest(self.command, self.path, headers, body)
            fault = server._record(request) or {}
            answer = self._reply(request) if fault.get("apply") else None
            if fault.get("delay_s") and server._stopping.wait(fault["delay_s"]):
                return  # the server stops
            if fault.get("drop"):
                self.close_connection = True
                return
            if "status" in fault:
                answer = (fault["status"], fault.get("body", "error"))
            elif answer is None:
                answer = self._reply(request)
            # The client may have given up (its timeout) before the answer came.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(*answer)

        def _reply(self, request: RecordedRequest) -> Reply:
            try:
                return server.reply(request)
            except Exception as exc:
                server.errors.append(f"{type(exc).__name__}: {exc}")
                return 500, "fake server error"

        def _send(self, status: int, payload: Any) -> None:
            is_json = isinstance(payload, dict | list)
            data = (json.dumps(payload) if is_json else str(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if is_json else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def vllm_server() -> Iterator[VllmServer]:
    """A running :class:`VllmServer`; the test fails if the fake itself raised."""
    with VllmServer() as server:
        yield server
    assert not server.errors, "\n".join(server.errors)


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    """A running :class:`RecordingServer` answering ``200 ok``; the test fails if it raised."""
    with RecordingServer() as server:
        yield server
    assert not server.errors, "\n".join(server.errors)


@pytest.fixture
def refused_url() -> str:
    """``http://127.0.0.1:<port>`` of a port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
