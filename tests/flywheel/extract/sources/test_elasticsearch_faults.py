"""Faults of the log store during a read, and documents that no decoder can hold: each read returns the
whole window or fails (retryably, committing nothing), and a bad document is quarantined, never fatal.

Everything runs against the real test server (osmem-server). Faults that a healthy single-node server
never produces (a failed shard, a timed-out search, an answer lost after the cluster served it) are
injected by the gateway of ``tests/es_gateway.py`` in front of it, which always lets the server serve
the call first.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from conftest import write_config
from es_gateway import connection_json, start_gateway
from flywheel.config import load_config
from flywheel.errors import ConfigError, RetryableError
from flywheel.extract.documents import (
    TOO_DEEP,
    UNPARSEABLE_DETAIL_FIELD,
    UNPARSEABLE_FIELD,
    UNPARSEABLE_REASON_FIELD,
    split_array,
    split_object,
)
from flywheel.extract.partition import extract_interval
from flywheel.extract.sources import IncompleteReadError
from flywheel.extract.sources.elasticsearch import (
    ElasticsearchSource,
    PageTooLargeError,
    connect,
    decode_deep_page,
    raw_hits_serializer,
)
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore
from logdocs import END, START, WORKLOAD, clean_doc, index_docs, log_doc

GATEWAY_CONN = "flywheel_logs_gateway"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture(params=["scroll", "pit"])
def gateway(request, log_store, monkeypatch: pytest.MonkeyPatch):
    """The scripted gateway in front of the session's server, through ``flywheel_logs_gateway``: once
    read with scroll (no ``_pit`` endpoint, like OpenSearch) and once with a point in time."""
    with start_gateway(log_store.url, pit=request.param == "pit") as (handler, port):
        monkeypatch.setenv(f"AIRFLOW_CONN_{GATEWAY_CONN.upper()}", connection_json(port))
        handler.method = request.param
        yield handler


def seeded_source(
    docs: int | list[dict], *, conn_id: str = GATEWAY_CONN, **options: object
) -> ElasticsearchSource:
    """A source on a fresh index pattern (its own template and daily index) holding ``docs`` (a number:
    that many documents of the window)."""
    source = ElasticsearchSource(conn_id=conn_id, index=f"logs-{uuid.uuid4().hex[:10]}-*", **options)
    if isinstance(docs, int):
        docs = [log_doc(START + timedelta(minutes=i), i) for i in range(docs)]
    index_docs(source, docs)
    return source


def daily_index(source: ElasticsearchSource) -> str:
    """The index :func:`logdocs.index_docs` wrote the source's documents to."""
    return source.index[:-1] + "2026.11.20"


def add_docs(source: ElasticsearchSource, docs: list[dict]) -> None:
    """Index more documents into the source's existing daily index, searchable at once."""
    from elasticsearch.helpers import bulk

    client = connect("flywheel_logs")
    bulk(client, ({"_index": daily_index(source), "_source": d} for d in docs), refresh=True)


def extract(source: ElasticsearchSource, store: ArtifactStore, **kwargs: object):
    return extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END, **kwargs)


def nothing_committed(store: ArtifactStore) -> bool:
    with pytest.raises(FileNotFoundError):
        store.partition_files(WORKLOAD, partition_day(START))
    return store.fs.ls(store.raw_day_path(WORKLOAD, START.date()), detail=False) == []


def read_rows(store: ArtifactStore, layer: str = "raw") -> list[dict]:
    files = store.partition_files(WORKLOAD, partition_day(START), layer)
    return pq.ParquetDataset(files, filesystem=store.fs).read().to_pylist()


# ---- partial results


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("shard_failure", r"1 of 2 shards failed \(shard 1 of logs-.*: node_disconnected_exception"),
        ("timed_out", "the search timed out on the cluster"),
    ],
)
def test_a_partial_page_fails_the_attempt_and_the_retry_reads_all(gateway, store, fault, message):
    source = seeded_source(35, page_size=10)
    gateway.faults = {"page 2": fault}  # a scroll continuation, or the second point-in-time search

    with pytest.raises(IncompleteReadError, match=message) as failure:
        extract(source, store)

    assert isinstance(failure.value, RetryableError)
    assert nothing_committed(store)
    page_calls = [query for kind, query, _ in gateway.requests if kind in ("search", "search_pit")]
    assert page_calls and all("allow_partial_search_results=false" in q for q in page_calls)
    gateway.faults = {}
    assert extract(source, store).records == 35  # the task's retry: the whole window


def test_failed_shards_in_the_count_fail_the_attempt(gateway, store):
    source = seeded_source(12, page_size=10)
    gateway.faults = {"count 1": "shard_failure"}

    with pytest.raises(IncompleteReadError, match=r"count of 'logs-.*': 1 of 2 shards failed"):
        extract(source, store)

    assert nothing_committed(store)


def test_records_written_into_the_window_during_the_read_fail_it(gateway, store):
    source = seeded_source(40, page_size=10)
    late = [log_doc(START + timedelta(hours=5, minutes=i), 100 + i) for i in range(3)]

    def late_writes(pages: int, records: int) -> None:
        if pages == 1:
            add_docs(source, late)

    with pytest.raises(IncompleteReadError, match=r"read 40 records .* but the store counts 43"):
        extract(source, store, on_page=late_writes)

    assert nothing_committed(store)
    assert extract(source, store).records == 43


# ---- scroll calls are never retried


def test_a_lost_scroll_answer_fails_the_attempt_instead_of_skipping_a_page(log_store, store, monkeypatch):
    with start_gateway(log_store.url, pit=False) as (gateway, port):
        monkeypatch.setenv(f"AIRFLOW_CONN_{GATEWAY_CONN.upper()}", connection_json(port))
        source = seeded_source(35, page_size=10)
        gateway.faults = {"scroll 2": "drop_answer"}  # page 3 served, its answer lost

        with pytest.raises(IncompleteReadError, match=r"scroll page 3 of .* failed") as failure:
            extract(source, store)

        assert gateway.calls.count("scroll") == 2  # the lost call was not retried
        assert "clear_scroll" in gateway.calls
        assert "Connection" in type(failure.value.__cause__).__name__
        assert nothing_committed(store)
        assert extract(source, store).records == 35  # the task's retry


def test_why_a_retried_scroll_call_is_unsafe(log_store, monkeypatch):
    """The same fault with the client's automatic retry (what a scroll read used to do): the retried
    call returns the page after the lost one, and a page is skipped without any error."""
    with start_gateway(log_store.url, pit=False) as (gateway, port):
        monkeypatch.setenv(f"AIRFLOW_CONN_{GATEWAY_CONN.upper()}", connection_json(port))
        source = seeded_source(35)
        client = connect(GATEWAY_CONN, raw_hits=True)  # max_retries=3
        gateway.faults = {"scroll 2": "drop_answer"}

        response = client.search(index=source.index, size=10, scroll="1m", sort=["_doc"])
        seen = 0
        while hits := response["hits"]["hits"]:
            seen += len(hits)
            response = client.scroll(scroll_id=response["_scroll_id"], scroll="1m")
        client.clear_scroll(scroll_id=response["_scroll_id"])

    assert gateway.calls.count("scroll") == 4  # pages 2, 3 (its answer lost), 3 again: page 4, the end
    assert seen == 25  # 35 documents, the page of 10 whose answer was lost is skipped without an error


# ---- documents no decoder can hold, and the page's byte budget


def deep_document(levels: int) -> bytes:
    """A log document of the window whose ``request`` nests ``levels`` arrays (no JSON library can
    write it: they all recurse)."""
    return (
        b'{"timestamp": "2026-11-20T05:00:00.000Z", "workload_id": "router", "client_id": "web", '
        b'"request": ' + b"[" * levels + b"]" * levels + b"}"
    )


def test_a_document_nested_1000_levels_deep_is_kept_unparseable_and_quarantined(gateway, store):
    from flywheel.config import DataQualityConfig
    from flywheel.validate.day import validate_day

    source = seeded_source([clean_doc(START + timedelta(minutes=i), i) for i in range(19)], page_size=10)
    index = daily_index(source)
    request = urllib.request.Request(
        f"{gateway.upstream}/{index}/_doc/deep?refresh=true",
        data=deep_document(1_000),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status in (200, 201)

    result = extract(source, store)

    assert result.records == 20 and result.read_method == gateway.method
    deep = next(r for r in read_rows(store) if r["source_record_id"] == f"{index}/deep")
    assert deep["workload_id"] is None and deep["request_json"] is None
    extra = json.loads(deep["extra_json"])
    assert (extra[UNPARSEABLE_REASON_FIELD], extra[UNPARSEABLE_DETAIL_FIELD]) == (
        "document_too_deep",
        TOO_DEEP,
    )
    assert (
        extra[UNPARSEABLE_FIELD].startswith('{"timestamp"') and extra[UNPARSEABLE_FIELD].count("[") == 1_000
    )
    validation = validate_day(
        store, workload_id=WORKLOAD, start=START, end=END, rules=DataQualityConfig(), build_docs=False
    )
    assert validation.clean == 19 and validation.reasons == {"document_too_deep": 1}


def test_a_document_over_max_document_bytes_is_kept_unparseable_and_quarantined(gateway, store):
    from flywheel.config import DataQualityConfig
    from flywheel.validate.day import validate_day

    huge = clean_doc(START + timedelta(hours=1), 99)
    huge["request"]["messages"][0]["content"] = "x" * 20_000
    docs = [clean_doc(START + timedelta(minutes=i), i) for i in range(5)]
    source = seeded_source([*docs, huge], page_size=10, max_document_bytes=5_000)

    result = extract(source, store)

    assert result.records == 6
    rows = read_rows(store)
    stub = next(r for r in rows if r["workload_id"] is None)
    extra = json.loads(stub["extra_json"])
    assert extra[UNPARSEABLE_REASON_FIELD] == "document_too_large"
    assert "larger than log_source.max_document_bytes (5000)" in extra[UNPARSEABLE_DETAIL_FIELD]
    assert len(extra[UNPARSEABLE_FIELD].encode()) <= 1_000 and stub["request_json"] is None
    assert sum(r["workload_id"] == WORKLOAD for r in rows) == 5
    validation = validate_day(
        store, workload_id=WORKLOAD, start=START, end=END, rules=DataQualityConfig(), build_docs=False
    )
    assert validation.clean == 5 and validation.reasons == {"document_too_large": 1}
    (quarantined,) = read_rows(store, "quarantine")
    assert (quarantined["reason"], quarantined["field"]) == ("document_too_large", "document")
    assert quarantined["detail"].startswith("document of ") and "(5000)" in quarantined["detail"]


def big_docs(count: int, size: int) -> list[dict]:
    """Documents of the window whose user message is ``size`` characters longer."""
    docs = []
    for i in range(count):
        doc = log_doc(START + timedelta(minutes=i), i)
        doc["request"]["messages"][0]["content"] += " " + "y" * size
        docs.append(doc)
    return docs


def test_point_in_time_pages_shrink_to_the_byte_budget(log_store, store, monkeypatch):
    with start_gateway(log_store.url, pit=True) as (gateway, port):
        monkeypatch.setenv(f"AIRFLOW_CONN_{GATEWAY_CONN.upper()}", connection_json(port))
        # pages of 10 would take 2.4 MB
        source = seeded_source(big_docs(24, 240_000), page_size=10, max_page_bytes=1_000_000)

        result = extract(source, store)

    sizes = [body["size"] for kind, _, body in gateway.requests if kind == "search_pit"]
    assert sizes[0] == 10 and max(sizes[1:]) <= 4  # 1 MB holds four documents of 240 KB
    assert result.records == 24 and result.pages == 1 + 4  # 10, then 4, 4, 4, 2


def test_a_scroll_page_over_the_byte_budget_fails_clearly(log_store, store):
    source = seeded_source(
        big_docs(12, 240_000), conn_id="flywheel_logs", page_size=10, max_page_bytes=1_000_000
    )

    with pytest.raises(PageTooLargeError, match=r"over log_source.max_page_bytes \(1000000\).*page_size"):
        extract(source, store)

    assert nothing_committed(store)
    assert extract(source, store, page_size=4).records == 12  # the fix the message names


def test_byte_budgets_are_validated_naming_the_key(tmp_path):
    with pytest.raises(ValidationError) as error:
        ElasticsearchSource(index="logs-*", max_page_bytes=1_000_000, max_document_bytes=2_000_000)
    assert error.value.errors()[0]["loc"] == ("max_document_bytes",)

    with pytest.raises(
        ValidationError, match="max_page_bytes\n  Input should be greater than or equal to 1000000"
    ):
        ElasticsearchSource(index="logs-*", max_page_bytes=1_000)

    path = write_config(tmp_path, log_source={"index": "logs-*", "max_document_bytes": 60_000_000})
    with pytest.raises(
        ConfigError,
        match=r"workloads\[0\]\.log_source\.max_document_bytes: 60000000 must not exceed max_page_bytes "
        r"\(50000000\)",
    ):
        load_config(path)


def test_the_deep_page_decoder_reads_ordinary_pages_like_the_fast_one():
    page = {
        "_scroll_id": "abc",
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {
            "total": {"value": 2, "relation": "eq"},
            "hits": [
                {
                    "_index": "i",
                    "_id": "1",
                    "_score": None,
                    "_source": {"a": 'q"[{\\', "b": [1, {"c": None}]},
                },
                {"_index": "i", "_id": "2", "_source": {}, "sort": [3, "x]"]},
            ],
        },
    }
    data = json.dumps(page).encode()

    fast = raw_hits_serializer()().loads(data)
    slow = decode_deep_page(data)

    assert slow.scroll_id == fast["_scroll_id"] == "abc" and slow.shards == fast["_shards"]
    assert slow.hits is not None and slow.hits.hits == fast["hits"]["hits"]
    assert [bytes(v) for v in split_array(b' [1, "a,]", {"x": [ ]} ] ')] == [b"1", b'"a,]"', b'{"x": [ ]}']
    assert bytes(split_object(b'{"k\\"": "v}"}')['k"']) == b'"v}"'
