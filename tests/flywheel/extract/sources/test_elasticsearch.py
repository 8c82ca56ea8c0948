"""Reading pages from the log store: point in time + search_after, scroll fallback, client options.

osmem-server speaks OpenSearch's point-in-time API, not Elasticsearch's ``_pit`` endpoints. To run the
production PIT path against a real search engine, ``es_pit_gateway`` is a small HTTP gateway that
serves Elasticsearch's two PIT endpoints by calling OpenSearch's equivalents on osmem-server and
passes every other request through unchanged (the search itself, with ``pit`` and ``search_after``
in its body, is the same in both APIs).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import urlsplit

import pytest

from flywheel.errors import ConfigError
from flywheel.extract.partition import extract_interval
from flywheel.extract.sources.elasticsearch import ElasticsearchSource, HitPages, connect, interval_query
from flywheel.storage import ArtifactStore
from logdocs import END, START, WORKLOAD, index_docs, log_doc


class _Gateway(BaseHTTPRequestHandler):
    upstream = ""
    calls: ClassVar[list[str]] = []
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

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        parts = urlsplit(self.path)
        if method == "POST" and parts.path.endswith("/_pit"):
            index = parts.path[: -len("/_pit")]
            status, payload = self._forward("POST", f"{index}/_search/point_in_time?{parts.query}", None)
            if status == 200:
                payload = json.dumps({"id": json.loads(payload)["pit_id"]}).encode()
            self.calls.append("open_pit")
        elif method == "DELETE" and parts.path == "/_pit":
            pit_id = json.loads(body or b"{}")["id"]
            status, payload = self._forward(
                "DELETE", "/_search/point_in_time", json.dumps({"pit_id": [pit_id]}).encode()
            )
            self.calls.append("close_pit")
        else:
            if body and b'"pit"' in body:
                self.calls.append("search_pit")
            elif "scroll" in parts.path or "scroll=" in parts.query:
                self.calls.append("scroll")
            status, payload = self._forward(method, self.path, body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if self.product:  # the Elasticsearch client checks which product answered
            self.send_header("x-elastic-product", self.product)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture
def es_pit_gateway(log_store, monkeypatch: pytest.MonkeyPatch):
    """An Elasticsearch-PIT-speaking gateway in front of the session's osmem-server."""
    handler = type("Gateway", (_Gateway,), {"upstream": log_store.url, "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn = {"conn_type": "elasticsearch", "host": "127.0.0.1", "port": server.server_port, "schema": "http"}
    conn["extra"] = {"node_class": "flywheel.embedded:CompatibleMediaTypeNode"}
    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_LOGS_ES", json.dumps(conn))
    yield handler
    server.shutdown()


def test_point_in_time_with_search_after_when_cluster_has_pit(es_pit_gateway, tmp_path):
    source = ElasticsearchSource(
        conn_id="flywheel_logs_es", index=f"logs-{uuid.uuid4().hex[:8]}-*", page_size=15
    )
    index_docs(source, [log_doc(START + timedelta(minutes=3 * i), i) for i in range(100)])

    result = extract_interval(
        source, ArtifactStore(str(tmp_path)), workload_id=WORKLOAD, start=START, end=END
    )

    assert result.read_method == "pit"
    assert result.records == 100
    assert result.pages == 7
    calls = es_pit_gateway.calls
    assert calls[0] == "open_pit" and calls[-1] == "close_pit"
    assert calls.count("search_pit") == 8  # seven full pages and the empty one that ends the read
    assert "scroll" not in calls


def test_scroll_when_cluster_has_no_pit(log_store):
    source = ElasticsearchSource(index=f"logs-{uuid.uuid4().hex[:8]}-*", page_size=10)
    index_docs(source, [log_doc(START + timedelta(minutes=i), i) for i in range(35)])
    query = interval_query(source, WORKLOAD, START, END, None)
    pages = HitPages(connect(source.conn_id, raw_hits=True), source.index, query, 10, "1m")

    sizes = [len(page) for page in pages]

    assert pages.method == "scroll"
    assert sizes == [10, 10, 10, 5]


def test_abandoned_read_releases_its_context(log_store):
    source = ElasticsearchSource(index=f"logs-{uuid.uuid4().hex[:8]}-*", page_size=10)
    index_docs(source, [log_doc(START + timedelta(minutes=i), i) for i in range(30)])
    pages = iter(HitPages(connect(source.conn_id, raw_hits=True), source.index, {"match_all": {}}, 10, "1m"))

    first = next(pages)
    pages.close()

    assert len(first) == 10
    with pytest.raises(StopIteration):
        next(pages)


def test_missing_concrete_index_is_an_error_not_a_fallback(log_store):
    from elasticsearch import NotFoundError

    pages = HitPages(connect("flywheel_logs", raw_hits=True), "no-such-index", {"match_all": {}}, 10, "1m")
    with pytest.raises(NotFoundError):
        list(pages)


def test_hit_pages_needs_a_raw_hits_client(log_store):
    with pytest.raises(TypeError, match="raw_hits=True"):
        HitPages(connect("flywheel_logs"), "logs-*", {"match_all": {}}, 10, "1m")


def test_interval_query_filters_workload_window_and_clients():
    source = ElasticsearchSource(index="logs-*", timestamp_field="@timestamp", client_field="app")
    start = datetime(2026, 11, 20, 2, tzinfo=UTC)

    query = interval_query(source, "router", start, start + timedelta(days=1), ["web"])

    filters = query["bool"]["filter"]
    assert {"term": {"workload_id": "router"}} in filters
    assert {"terms": {"app": ["web"]}} in filters
    window = next(f["range"]["@timestamp"] for f in filters if "range" in f)
    assert window["gte"] == "2026-11-20T02:00:00+00:00" and window["lt"] == "2026-11-21T02:00:00+00:00"


def test_connection_extra_with_unknown_option_names_it(monkeypatch: pytest.MonkeyPatch):
    conn = {"conn_type": "elasticsearch", "host": "es.example", "port": 9200, "extra": {"verify_cert": False}}
    monkeypatch.setenv("AIRFLOW_CONN_BAD_ES", json.dumps(conn))
    with pytest.raises(ConfigError, match=r"'bad_es': extra key 'verify_cert'"):
        connect("bad_es")


def test_connection_with_unimportable_node_class(monkeypatch: pytest.MonkeyPatch):
    conn = {"conn_type": "elasticsearch", "host": "es.example", "extra": {"node_class": "nowhere:Node"}}
    monkeypatch.setenv("AIRFLOW_CONN_BAD_NODE", json.dumps(conn))
    with pytest.raises(ConfigError, match="node_class 'nowhere:Node' cannot be imported"):
        connect("bad_node")


def test_connection_builds_https_url_with_basic_auth(monkeypatch: pytest.MonkeyPatch):
    conn = {
        "conn_type": "elasticsearch",
        "host": "es.prod.example",
        "port": 9243,
        "schema": "https",
        "login": "flywheel",
        "password": "s3cret",
        "extra": {"verify_certs": True},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PROD_ES", json.dumps(conn))

    client = connect("prod_es")

    node = next(iter(client.transport.node_pool.all()))
    assert node.base_url == "https://es.prod.example:9243"
    assert client._headers["authorization"].startswith("Basic ")
