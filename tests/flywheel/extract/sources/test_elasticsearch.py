"""Reading pages from the log store: point in time + search_after, scroll fallback, client options.

osmem-server speaks OpenSearch's point-in-time API, not Elasticsearch's ``_pit`` endpoints. To run the
production PIT path against a real search engine, ``es_pit_gateway`` is a small HTTP gateway
(``tests/es_gateway.py``) that serves Elasticsearch's two PIT endpoints by calling OpenSearch's
equivalents on osmem-server and passes every other request through unchanged (the search itself,
with ``pit`` and ``search_after`` in its body, is the same in both APIs).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from es_gateway import connection_json, start_gateway
from flywheel.errors import ConfigError
from flywheel.extract.partition import extract_interval
from flywheel.extract.sources.elasticsearch import ElasticsearchSource, HitPages, connect, interval_query
from flywheel.storage import ArtifactStore
from logdocs import END, START, WORKLOAD, index_docs, log_doc


@pytest.fixture
def es_pit_gateway(log_store, monkeypatch: pytest.MonkeyPatch):
    """An Elasticsearch-PIT-speaking gateway in front of the session's osmem-server (tests/es_gateway.py),
    reachable through the ``flywheel_logs_es`` connection."""
    with start_gateway(log_store.url) as (gateway, port):
        monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_LOGS_ES", connection_json(port))
        yield gateway


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
    assert calls[0] == "open_pit" and calls[-2:] == ["close_pit", "count"]  # then reconciled by a count
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
