"""Extraction against a real Elasticsearch-compatible server (osmem-server) started by the tests."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flywheel.extract.partition import RAW_SCHEMA, extract_interval
from flywheel.extract.sources.elasticsearch import ElasticsearchSource
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore
from logdocs import END, START, WORKLOAD, index_docs, iso, log_doc


@pytest.fixture
def source(log_store) -> ElasticsearchSource:
    """A log source on its own index pattern, so tests sharing the server never see each other's data."""
    return ElasticsearchSource(index=f"logs-{uuid.uuid4().hex[:10]}-*", page_size=50)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def run_extract(source: ElasticsearchSource, store: ArtifactStore, **kwargs):
    return extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END, **kwargs)


def read_partition(store: ArtifactStore):
    files = store.partition_files(WORKLOAD, partition_day(START))
    return pq.ParquetDataset(files, filesystem=store.fs).read()


def test_window_includes_start_and_excludes_end(source, store):
    ms = timedelta(milliseconds=1)
    docs = {
        "at_start": log_doc(START, 1),
        "just_before_end": log_doc(END - ms, 2),
        "middle": log_doc(START + timedelta(hours=7), 3),
        "just_before_start": log_doc(START - ms, 4),
        "at_end": log_doc(END, 5),
        "other_workload": log_doc(START + timedelta(hours=1), 6, workload="billing"),
    }
    index_docs(source, list(docs.values()))

    result = run_extract(source, store)

    table = read_partition(store)
    orders = sorted(json.loads(r)["messages"][0]["content"] for r in table.column("request_json").to_pylist())
    assert orders == ["where is order A-1?", "where is order A-2?", "where is order A-3?"]
    assert result.records == 3 == table.num_rows
    assert min(table.column("timestamp").to_pylist()) == START
    assert max(table.column("timestamp").to_pylist()) == END - ms
    assert result.day == START.date()


def test_client_filter(source, store):
    docs = [
        log_doc(START + timedelta(minutes=i), i, client=c)
        for i, c in enumerate(["web", "mobile", "email"] * 4)
    ]
    index_docs(source, docs)

    result = run_extract(source, store, client_ids=["web", "email"])

    assert result.records == 8
    assert result.client_counts == {"web": 4, "email": 4}
    assert set(read_partition(store).column("client_id").to_pylist()) == {"web", "email"}


def test_pagination_across_many_pages(source, store):
    docs = [log_doc(START + timedelta(seconds=37 * i), i) for i in range(437)]
    index_docs(source, docs)
    progress: list[tuple[int, int]] = []

    result = run_extract(source, store, page_size=20, on_page=lambda p, r: progress.append((p, r)))

    table = read_partition(store)
    assert result.records == 437 == table.num_rows
    assert result.pages == 22 == len(progress)
    assert progress[-1] == (22, 437)
    assert len(set(table.column("record_id").to_pylist())) == 437
    assert len(set(table.column("request_json").to_pylist())) == 437
    assert table.schema.equals(RAW_SCHEMA, check_metadata=False)


def test_rerun_replaces_partition_with_same_content(source, store):
    index_docs(source, [log_doc(START + timedelta(minutes=i), i) for i in range(120)])

    first = run_extract(source, store)
    first_rows = sorted(read_partition(store).to_pylist(), key=lambda r: r["record_id"])
    second = run_extract(source, store)
    second_rows = sorted(read_partition(store).to_pylist(), key=lambda r: r["record_id"])

    assert first.version != second.version
    assert first_rows == second_rows
    assert len(second_rows) == 120
    day_dir = store.raw_day_path(WORKLOAD, START.date())
    versions = [p for p in store.fs.ls(day_dir, detail=False) if Path(p).name.startswith(("v-", "_tmp-"))]
    assert [Path(p).name for p in versions] == [f"v-{second.version}"]


def test_failed_attempt_leaves_previous_partition_untouched(tmp_path):
    from flywheel.embedded import LocalLogStore

    with LocalLogStore.start() as private:
        source = ElasticsearchSource(conn_id="flywheel_logs_private", index="logs-private-*", page_size=25)
        env = private.connection_env(source.conn_id)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            index_docs(source, [log_doc(START + timedelta(minutes=i), i) for i in range(200)])
            store = ArtifactStore(str(tmp_path / "artifacts"))
            committed = run_extract(source, store)
            before = store.read_partition_record(WORKLOAD, START.date())

            def server_dies(pages: int, records: int) -> None:
                if pages == 2:
                    private.close()

            with pytest.raises(Exception) as failure:  # noqa: PT011 - any client error will do
                run_extract(source, store, on_page=server_dies)

    assert "Connection" in type(failure.value).__name__ or "connection" in str(failure.value).lower()
    assert store.read_partition_record(WORKLOAD, START.date()) == before
    day_dir = store.raw_day_path(WORKLOAD, START.date())
    names = sorted(Path(p).name for p in store.fs.ls(day_dir, detail=False))
    assert names == ["_partition.json", f"v-{committed.version}"]
    assert read_partition(store).num_rows == 200


def test_failed_first_attempt_leaves_nothing_visible(tmp_path):
    from flywheel.embedded import LocalLogStore

    store = ArtifactStore(str(tmp_path / "artifacts"))
    with LocalLogStore.start() as private, pytest.MonkeyPatch.context() as mp:
        source = ElasticsearchSource(conn_id="flywheel_logs_private", index="logs-private-*", page_size=25)
        for key, value in private.connection_env(source.conn_id).items():
            mp.setenv(key, value)
        index_docs(source, [log_doc(START + timedelta(minutes=i), i) for i in range(100)])
        with pytest.raises(RuntimeError, match="disk full"):
            run_extract(source, store, on_page=lambda p, r: (_ for _ in ()).throw(RuntimeError("disk full")))

    day_dir = store.raw_day_path(WORKLOAD, START.date())
    assert store.fs.ls(day_dir, detail=False) == []
    with pytest.raises(FileNotFoundError):
        store.partition_files(WORKLOAD, START.date())


def test_malformed_documents_are_kept_not_dropped(source, store):
    moment = START + timedelta(hours=3)
    docs = [
        {"timestamp": iso(moment), "workload_id": WORKLOAD, "client_id": "web", "request": "not an object"},
        {
            "timestamp": int(moment.timestamp() * 1000),
            "workload_id": WORKLOAD,
            "client_id": 42,
            "response": [],
        },
        {
            "timestamp": iso(moment),
            "workload_id": WORKLOAD,
            "request": {"messages": []},
            "response": {"choices": [{"message": {"content": "hi there", "tool_calls": None}}]},
            "latency_ms": 1234,
            "gateway": {"region": "eu-west-1"},
        },
        {
            **log_doc(moment, 7),
            "response": {"choices": [{"message": {"tool_calls": [{"function": {"name": 5}}]}}]},
        },
    ]
    index_docs(source, docs)

    result = run_extract(source, store)

    rows = sorted(
        read_partition(store).to_pylist(), key=lambda r: (r["request_json"] or "", r["client_id"] or "")
    )
    assert result.records == 4
    by_request = {r["request_json"]: r for r in rows}
    text_request = by_request['"not an object"']
    assert text_request["response_json"] is None and text_request["first_tool_name"] is None
    no_request = by_request[None]
    assert no_request["client_id"] == "42" and no_request["response_json"] == "[]"
    assert no_request["timestamp"] == moment
    plain = by_request['{"messages":[]}']
    assert plain["first_tool_name"] is None and plain["client_id"] is None
    assert json.loads(plain["extra_json"]) == {"latency_ms": 1234, "gateway": {"region": "eu-west-1"}}
    bad_name = next(r for r in rows if r["request_json"] and "A-7" in r["request_json"])
    assert bad_name["first_tool_name"] is None


def test_record_id_is_stable_and_first_tool_extracted(source, store):
    index_docs(source, [log_doc(START + timedelta(minutes=i), i) for i in range(30)])

    run_extract(source, store)
    first = read_partition(store)
    run_extract(source, store)
    second = read_partition(store)

    assert sorted(first.column("record_id").to_pylist()) == sorted(second.column("record_id").to_pylist())
    assert set(first.column("first_tool_name").to_pylist()) == {"get_order_status"}
    assert set(first.column("workload_id").to_pylist()) == {WORKLOAD}


def test_rejects_naive_or_empty_interval(source, store):
    with pytest.raises(ValueError, match="timezone-aware"):
        extract_interval(source, store, workload_id=WORKLOAD, start=START.replace(tzinfo=None), end=END)
    with pytest.raises(ValueError, match="empty interval"):
        extract_interval(source, store, workload_id=WORKLOAD, start=END, end=START)
