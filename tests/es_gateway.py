"""An HTTP gateway in front of the test log store (osmem-server) for what that server cannot do itself.

Every request passes through to the real server unchanged, except:

- Elasticsearch's point-in-time endpoints (``POST <index>/_pit``, ``DELETE /_pit``), which osmem-server
  lacks: they are served by calling OpenSearch's equivalents, so the production PIT path runs against
  a real search engine (the search itself, with ``pit`` and ``search_after`` in its body, is the same
  in both APIs). ``start_gateway(..., pit=False)`` passes them through instead: reads fall back to
  scroll, as on OpenSearch.
- Scripted faults of a cluster, or of the network between it and the worker, which a healthy
  single-node server never produces. ``faults`` maps a call to a fault, e.g. ``{"scroll 2":
  "drop_answer", "page 3": "shard_failure"}``. Calls are counted per kind from 1: ``search`` (a search
  that is not a point-in-time one: the scroll's first page), ``search_pit``, ``scroll`` (a scroll
  continuation), ``count``, and ``page`` (any call that returns a page: the first three together).

Faults (the real server always serves the call first, so its state moves on as it would):

- ``drop_answer``: the connection is closed without an answer, as when a load balancer or the network
  loses a response the cluster already produced; a scroll's cursor has then moved past the lost page.
- ``shard_failure``: the answer reports one failed shard (``_shards.failed: 1``, a
  ``node_disconnected_exception`` failure) and lacks that shard's hits (the second half of them): what
  a scroll continuation returns when a shard fails, and a search on a server that does not honour
  ``allow_partial_search_results=false`` (Elasticsearch would answer that search with a 503).
- ``timed_out``: the answer says ``timed_out: true`` and holds only the hits found in time (the first
  half).

``calls`` lists the kind of every call named above (and ``open_pit``, ``close_pit``, ``clear_scroll``)
in order; ``requests`` holds ``(kind, query string, JSON body)`` of each page and count call.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

PAGE_KINDS = ("search", "search_pit", "scroll")


class Gateway(BaseHTTPRequestHandler):
    """The request handler; :func:`start_gateway` makes a subclass with its own state per gateway."""

    upstream = ""
    calls: ClassVar[list[str]] = []
    requests: ClassVar[list[tuple[str, str, Any]]] = []
    faults: ClassVar[dict[str, str]] = {}
    counts: ClassVar[Counter[str]] = Counter()
    serves_pit = True
    product: str | None = None

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _forward(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        content_type = self.headers.get("content-type") or "application/json"
        request = urllib.request.Request(
            self.upstream + path, data=body, method=method, headers={"content-type": content_type}
        )
        try:
            with urllib.request.urlopen(request) as response:
                self.product = response.headers.get("x-elastic-product")
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            self.product = error.headers.get("x-elastic-product")
            return error.code, error.read()

    def _kind(self, method: str, path: str, body: bytes | None) -> str:
        if path.endswith("/_search/scroll") or path == "/_search/scroll":
            return "clear_scroll" if method == "DELETE" else "scroll"
        if path.endswith("/_count"):
            return "count"
        if path.endswith("/_search"):
            return "search_pit" if body and b'"pit"' in body else "search"
        return "other"

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        parts = urlsplit(self.path)
        fault = None
        if self.serves_pit and method == "POST" and parts.path.endswith("/_pit"):
            index = parts.path[: -len("/_pit")]
            status, payload = self._forward("POST", f"{index}/_search/point_in_time?{parts.query}", None)
            if status == 200:
                payload = json.dumps({"id": json.loads(payload)["pit_id"]}).encode()
            self.calls.append("open_pit")
        elif self.serves_pit and method == "DELETE" and parts.path == "/_pit":
            pit_id = json.loads(body or b"{}")["id"]
            status, payload = self._forward(
                "DELETE", "/_search/point_in_time", json.dumps({"pit_id": [pit_id]}).encode()
            )
            self.calls.append("close_pit")
        else:
            kind = self._kind(method, parts.path, body)
            if kind != "other":
                self.calls.append(kind)
            fault = self._count(kind)
            if kind in (*PAGE_KINDS, "count"):
                self.requests.append((kind, parts.query, json.loads(body) if body else None))
            status, payload = self._forward(method, self.path, body)
        if fault == "drop_answer":
            self.close_connection = True  # the answer is lost: the client sees the connection close
            return
        if fault in ("shard_failure", "timed_out") and status == 200:
            payload = _partial(json.loads(payload), fault)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if self.product:  # the Elasticsearch client checks which product answered
            self.send_header("x-elastic-product", self.product)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _count(self, kind: str) -> str | None:
        """Count the call; the fault scripted for it, if any."""
        keys = [kind, "page"] if kind in PAGE_KINDS else [kind]
        fault = None
        for key in keys:
            self.counts[key] += 1
            fault = fault or self.faults.get(f"{key} {self.counts[key]}")
        return fault

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def _partial(answer: dict[str, Any], fault: str) -> bytes:
    hits = answer.get("hits", {}).get("hits", [])
    if fault == "timed_out":
        answer["timed_out"] = True
        del hits[(len(hits) + 1) // 2 :]
    else:
        shards = answer.setdefault("_shards", {"total": 1, "successful": 1, "skipped": 0, "failed": 0})
        shards["total"] = shards.get("total", 1) + 1
        shards["failed"] = 1
        shards["failures"] = [
            {
                "shard": 1,
                "index": hits[0]["_index"] if hits else "logs",
                "node": "node-2",
                "reason": {"type": "node_disconnected_exception", "reason": "[node-2] disconnected"},
            }
        ]
        del hits[len(hits) // 2 :]
    return json.dumps(answer).encode()


@contextmanager
def start_gateway(upstream: str, *, pit: bool = True) -> Iterator[tuple[type[Gateway], int]]:
    """A gateway in front of ``upstream`` (the log store's URL): its handler class (state, faults), port.

    ``pit=False`` passes Elasticsearch's ``_pit`` requests through too, so the server refuses them and a
    read falls back to scroll (as on OpenSearch).
    """
    state = {"calls": [], "requests": [], "faults": {}, "counts": Counter()}
    handler: type[Gateway] = type(
        "ScriptedGateway", (Gateway,), {"upstream": upstream, "serves_pit": pit, **state}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server.server_port
    finally:
        server.shutdown()
        server.server_close()


def connection_json(port: int) -> str:
    """An ``AIRFLOW_CONN_...`` value for the gateway on ``port`` (with the test-only node class)."""
    conn = {"conn_type": "elasticsearch", "host": "127.0.0.1", "port": port, "schema": "http"}
    conn["extra"] = {"node_class": "flywheel.embedded:CompatibleMediaTypeNode"}
    return json.dumps(conn)
