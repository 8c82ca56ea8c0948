"""The ``files`` log source on real files (JSONL, gzip, Parquet) in day folders, through the shared extractor,
and a user's own source named by dotted path."""

from __future__ import annotations

import gzip
import io
import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter

from conftest import write_config
from flywheel.config import DataQualityConfig, LogSourceConfig, load_config
from flywheel.errors import ConfigError
from flywheel.extract.documents import TOO_DEEP
from flywheel.extract.partition import RAW_SCHEMA, extract_interval
from flywheel.extract.sources import files
from flywheel.extract.sources.files import FilesSource, bounded_lines
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore
from flywheel.validate.day import validate_day
from logdocs import END, START, WORKLOAD, clean_doc, log_doc

MS = timedelta(milliseconds=1)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def write_day(root: Path, day: str, name: str, docs: list[dict | bytes], *, compress: bool = False) -> Path:
    """``docs`` as JSONL lines (bytes are written as they are) in ``root/dt=<day>/<name>``."""
    folder = root / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n" for d in docs)
    path = folder / name
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def read_partition(store: ArtifactStore) -> pa.Table:
    files = store.partition_files(WORKLOAD, partition_day(START))
    return pq.ParquetDataset(files, filesystem=store.fs).read()


def orders(table: pa.Table) -> list[str]:
    requests = (json.loads(r) for r in table.column("request_json").to_pylist() if r is not None)
    return sorted(r["messages"][0]["content"].split()[-1].rstrip("?") for r in requests)


def test_window_edges_across_two_day_folders(tmp_path, store):
    logs = tmp_path / "logs"
    # The window [11-20 02:00, 11-21 02:00) spans the day folders of 11-20 and 11-21.
    write_day(
        logs,
        "2026-11-20",
        "part-0.jsonl",
        [
            log_doc(START - MS, 1),  # just before the window
            log_doc(START, 2),  # at its start: in
            log_doc(START + timedelta(hours=7), 3),
            log_doc(START + timedelta(hours=1), 4, workload="billing"),  # another workload
        ],
    )
    write_day(logs, "2026-11-21", "part-0.jsonl", [log_doc(END - MS, 5), log_doc(END, 6)])
    write_day(logs, "2026-11-19", "part-0.jsonl", [log_doc(START - timedelta(hours=3), 7)])
    source = FilesSource(url=str(logs), page_size=10)

    result = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)

    table = read_partition(store)
    assert orders(table) == ["A-2", "A-3", "A-5"]
    assert result.records == 3 == table.num_rows
    assert min(table.column("timestamp").to_pylist()) == START
    assert max(table.column("timestamp").to_pylist()) == END - MS
    assert result.read_method == "jsonl"
    assert table.schema.equals(RAW_SCHEMA, check_metadata=False)
    assert set(table.column("source").to_pylist()) == {"files"}
    record = store.read_partition_record(WORKLOAD, START.date())
    assert record["source"] == "files"
    assert [Path(f).name for f in record["day_folders"]] == ["dt=2026-11-20", "dt=2026-11-21"]
    assert record["files_read"] == 2 and record["documents_read"] == 6
    assert record["missing_day_folders"] == []


def test_client_filter(tmp_path, store):
    docs = [
        log_doc(START + timedelta(minutes=i), i, client=c)
        for i, c in enumerate(["web", "mobile", "email"] * 4)
    ]
    write_day(tmp_path / "logs", "2026-11-20", "part-0.jsonl", docs)
    source = FilesSource(url=str(tmp_path / "logs"))

    result = extract_interval(
        source, store, workload_id=WORKLOAD, start=START, end=END, client_ids=["web", "email"]
    )

    assert result.records == 8
    assert result.client_counts == {"web": 4, "email": 4}
    assert set(read_partition(store).column("client_id").to_pylist()) == {"web", "email"}


def test_gzip_jsonl_pages_and_stable_record_ids(tmp_path, store):
    logs = tmp_path / "logs"
    docs = [log_doc(START + timedelta(seconds=37 * i), i) for i in range(137)]
    plain = write_day(logs, "2026-11-20", "a.jsonl", docs[:60])
    packed = write_day(logs, "2026-11-20", "b.jsonl.gz", docs[60:], compress=True)
    write_day(logs, "2026-11-20", "_SUCCESS", [b"not a log"])  # an export's marker, not a log file
    source = FilesSource(url=f"file://{logs}")
    progress: list[tuple[int, int]] = []

    first = extract_interval(
        source,
        store,
        workload_id=WORKLOAD,
        start=START,
        end=END,
        page_size=20,
        on_page=lambda p, r: progress.append((p, r)),
    )
    first_table = read_partition(store)
    second = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)
    second_table = read_partition(store)

    assert first.records == 137 == first_table.num_rows
    assert first.pages == 7 == len(progress) and progress[-1] == (7, 137)
    assert second.pages == 1
    own_ids = first_table.column("source_record_id").to_pylist()
    assert own_ids[0] == f"file://{plain}/line-1"
    assert own_ids[-1] == f"file://{packed}/line-77"
    assert sorted(first_table.column("record_id").to_pylist()) == sorted(
        second_table.column("record_id").to_pylist()
    )
    assert len(set(own_ids)) == 137


def test_parquet_files_with_json_text_and_nested_columns(tmp_path, store):
    folder = tmp_path / "logs" / "2026" / "11" / "20"
    folder.mkdir(parents=True)
    docs = [log_doc(START + timedelta(minutes=i), i) for i in range(5)]
    as_text = pa.table(
        {
            "timestamp": pa.array(
                [START + timedelta(minutes=i) for i in range(3)], pa.timestamp("ms", tz="UTC")
            ),
            "workload_id": [WORKLOAD] * 3,
            "client_id": ["web", None, "web"],
            "request": [json.dumps(d["request"]) for d in docs[:3]],
            "response": [json.dumps(d["response"]) for d in docs[:3]],
            "latency_ms": [12, 15, 19],
        }
    )
    pq.write_table(as_text, folder / "part-0.parquet", row_group_size=2)
    nested = pa.Table.from_pylist([*docs[3:], log_doc(END + MS, 9)])
    pq.write_table(nested, folder / "part-1.parquet")
    source = FilesSource(url=str(tmp_path / "logs"), format="parquet", layout="{year}/{month}/{day}")

    result = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)

    rows = read_partition(store).to_pylist()
    assert result.read_method == "parquet" and result.records == 5
    assert orders(read_partition(store)) == ["A-0", "A-1", "A-2", "A-3", "A-4"]
    assert {r["first_tool_name"] for r in rows} == {"get_order_status"}
    assert rows[0]["timestamp"] == START
    assert rows[1]["client_id"] is None  # a null cell is an absent field
    assert json.loads(rows[2]["extra_json"]) == {"latency_ms": 19}
    assert rows[2]["source_record_id"] == f"file://{folder}/part-0.parquet/row-3"
    assert json.loads(rows[4]["request_json"]) == docs[4]["request"]


def test_malformed_lines_are_kept_once_and_quarantined(tmp_path, store):
    logs = tmp_path / "logs"
    moment = START + timedelta(hours=3)
    write_day(
        logs,
        "2026-11-20",
        "part-0.jsonl",
        [
            clean_doc(moment, 1),
            b"{truncated",
            {
                "timestamp": "yesterday-ish",
                **{k: v for k, v in clean_doc(moment, 2).items() if k != "timestamp"},
            },
            {k: v for k, v in clean_doc(moment, 3).items() if k != "timestamp"},
            {**clean_doc(moment, 4, workload="billing"), "timestamp": None},  # another workload's: not ours
        ],
    )
    # The next day's folder belongs to the next window: its broken lines are that window's to keep.
    write_day(logs, "2026-11-21", "part-0.jsonl", [b"also broken", clean_doc(END - MS, 5)])
    source = FilesSource(url=str(logs))

    result = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)

    record = store.read_partition_record(WORKLOAD, START.date())
    assert result.records == 5
    assert record["kept_unparseable"] == 1 and record["kept_without_timestamp"] == 2
    rows = read_partition(store).to_pylist()
    broken = next(r for r in rows if r["extra_json"] and "unparseable_line" in r["extra_json"])
    assert json.loads(broken["extra_json"]) == {"unparseable_line": "{truncated"}
    assert broken["source_record_id"].endswith("dt=2026-11-20/part-0.jsonl/line-2")

    next_window = extract_interval(
        source, store, workload_id=WORKLOAD, start=END, end=END + timedelta(days=1)
    )
    assert next_window.records == 1  # the other broken line; END - MS belonged to the first window

    validation = validate_day(
        store, workload_id=WORKLOAD, start=START, end=END, rules=DataQualityConfig(), build_docs=False
    )
    assert validation.extracted == 5 == validation.clean + validation.quarantined
    assert validation.reasons == {"workload_mismatch": 1, "timestamp_missing": 2}


def validate(store: ArtifactStore):
    return validate_day(
        store, workload_id=WORKLOAD, start=START, end=END, rules=DataQualityConfig(), build_docs=False
    )


def quarantined(store: ArtifactStore) -> list[dict]:
    files = store.partition_files(WORKLOAD, partition_day(START), "quarantine")
    return pq.ParquetDataset(files, filesystem=store.fs).read().to_pylist()


def test_a_line_nested_1000_levels_deep_is_kept_unparseable_and_quarantined(tmp_path, store):
    """No JSON decoder here can read it (they all recurse): it must not fail the day on every retry."""
    deep = b'{"timestamp": "2026-11-20T05:00:00Z", "workload_id": "router", "request": ' + b"[" * 1_000
    deep += b"]" * 1_000 + b"}"
    write_day(tmp_path / "logs", "2026-11-20", "part-0.jsonl", [clean_doc(START, 1), deep])

    result = extract_interval(
        FilesSource(url=str(tmp_path / "logs")), store, workload_id=WORKLOAD, start=START, end=END
    )

    record = store.read_partition_record(WORKLOAD, START.date())
    assert result.records == 2 and record["kept_unparseable"] == 1
    kept = next(r for r in read_partition(store).to_pylist() if r["workload_id"] is None)
    assert json.loads(kept["extra_json"]) == {
        "unparseable_line": deep.decode(),
        "unparseable_reason": "document_too_deep",
        "unparseable_detail": TOO_DEEP,
    }
    validation = validate(store)
    assert validation.clean == 1 and validation.reasons == {"document_too_deep": 1}
    (row,) = quarantined(store)
    assert (row["reason"], row["field"], row["detail"]) == ("document_too_deep", "document", TOO_DEEP)


def test_a_line_over_max_document_bytes_is_never_held_whole_and_is_quarantined(tmp_path, store):
    """A 3 MB line (longer than a read block) in a gzip file, under a budget of 1 MB: its record keeps
    the opening 1,000 bytes and why; the next line is read as usual."""
    huge = clean_doc(START + timedelta(hours=1), 2)
    huge["request"]["messages"][0]["content"] = "x" * 3_000_000
    logs = tmp_path / "logs"
    write_day(
        logs, "2026-11-20", "part-0.jsonl.gz", [clean_doc(START, 1), huge, clean_doc(START, 3)], compress=True
    )
    source = FilesSource(url=str(logs), max_document_bytes=1_000_000)

    result = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)

    record = store.read_partition_record(WORKLOAD, START.date())
    assert result.records == 3 and record["kept_unparseable"] == 1
    rows = read_partition(store).to_pylist()
    stub = next(r for r in rows if r["workload_id"] is None)
    assert stub["source_record_id"].endswith("part-0.jsonl.gz/line-2")
    extra = json.loads(stub["extra_json"])
    assert extra["unparseable_line"] == json.dumps(huge)[:1_000]
    assert extra["unparseable_reason"] == "document_too_large"
    assert "larger than log_source.max_document_bytes (1000000)" in extra["unparseable_detail"]
    assert orders(read_partition(store)) == ["A-1", "A-3"]
    validation = validate(store)
    assert validation.clean == 2 and validation.reasons == {"document_too_large": 1}
    (row,) = quarantined(store)
    assert (row["reason"], row["field"]) == ("document_too_large", "document")


def test_a_parquet_row_over_max_document_bytes_is_kept_unparseable(tmp_path, store):
    docs = [clean_doc(START + timedelta(minutes=i), i) for i in range(3)]
    docs[1]["request"]["messages"][0]["content"] = "y" * 5_000
    folder = tmp_path / "logs" / "dt=2026-11-20"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(docs), folder / "part-0.parquet")
    source = FilesSource(url=str(tmp_path / "logs"), format="parquet", max_document_bytes=2_000)

    assert extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END).records == 3

    assert orders(read_partition(store)) == ["A-0", "A-2"]
    assert validate(store).reasons == {"document_too_large": 1}


def test_a_parquet_request_text_nested_1000_levels_deep_is_quarantined(tmp_path, store):
    """A JSON text column too deep to check is kept as it is (not a RecursionError): validation says why."""
    folder = tmp_path / "logs" / "dt=2026-11-20"
    folder.mkdir(parents=True)
    doc = clean_doc(START, 1)
    rows = {
        "timestamp": pa.array([START, START], pa.timestamp("ms", tz="UTC")),
        "workload_id": [WORKLOAD] * 2,
        "request": [json.dumps(doc["request"]), '{"messages": ' + "[" * 1_000 + "]" * 1_000 + "}"],
        "response": [json.dumps(doc["response"])] * 2,
    }
    pq.write_table(pa.table(rows), folder / "part-0.parquet")
    source = FilesSource(url=str(tmp_path / "logs"), format="parquet")

    assert extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END).records == 2

    validation = validate(store)
    assert validation.clean == 1 and validation.reasons == {"unreadable_json": 1}
    assert "nested too deep" in quarantined(store)[0]["detail"]


def test_pages_end_before_they_exceed_max_page_bytes(tmp_path, store):
    docs = [clean_doc(START + timedelta(minutes=i), i) for i in range(12)]
    for doc in docs:
        doc["request"]["messages"][0]["content"] += " " + "z" * 240_000
    write_day(tmp_path / "logs", "2026-11-20", "part-0.jsonl", docs)
    source = FilesSource(url=str(tmp_path / "logs"), page_size=10, max_page_bytes=1_000_000)
    sizes: list[int] = []

    result = extract_interval(
        source, store, workload_id=WORKLOAD, start=START, end=END, on_page=lambda _, n: sizes.append(n)
    )

    assert result.records == 12 and result.pages == 3  # 1 MB holds four documents of 240 KB
    assert sizes == [4, 8, 12]


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_bounded_lines_cut_long_lines_across_read_blocks(block, monkeypatch):
    monkeypatch.setattr(files, "_BLOCK_BYTES", block)
    data = b"short\n\n" + b"a" * 20 + b"\r\n" + b"exactly10!\n" + b"tail without newline"

    lines = list(bounded_lines(io.BytesIO(data), 10))

    assert lines == [
        (b"short", 5),
        (b"", 0),
        (b"a" * 10, 21),  # cut to the limit; its length is the whole line's (with its \r)
        (b"exactly10!", 10),
        (b"tail witho", 20),
    ]
    assert list(bounded_lines(io.BytesIO(b"one\ntwo\n"), 10)) == [(b"one", 3), (b"two", 3)]
    assert list(bounded_lines(io.BytesIO(b""), 10)) == []


def test_rerun_replaces_the_partition(tmp_path, store):
    logs = tmp_path / "logs"
    write_day(
        logs, "2026-11-20", "part-0.jsonl", [log_doc(START + timedelta(minutes=i), i) for i in range(40)]
    )
    source = FilesSource(url=str(logs))
    first = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)
    # Late logs arrive; the day is extracted again.
    write_day(
        logs,
        "2026-11-20",
        "part-1.jsonl",
        [log_doc(START + timedelta(hours=5, minutes=i), 100 + i) for i in range(10)],
    )

    second = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)

    assert (first.records, second.records) == (40, 50)
    assert second.version != first.version
    assert read_partition(store).num_rows == 50
    day_dir = store.raw_day_path(WORKLOAD, START.date())
    assert sorted(Path(p).name for p in store.fs.ls(day_dir, detail=False)) == [
        "_partition.json",
        f"v-{second.version}",
    ]


def test_missing_day_folders_are_recorded(tmp_path, store):
    source = FilesSource(url=str(tmp_path / "nothing-yet"))

    result = extract_interval(source, store, workload_id=WORKLOAD, start=START, end=END)

    record = store.read_partition_record(WORKLOAD, START.date())
    assert result.records == 0
    assert [Path(f).name for f in record["missing_day_folders"]] == ["dt=2026-11-20", "dt=2026-11-21"]


def test_files_options_are_validated_naming_the_key(tmp_path):
    adapter = TypeAdapter(LogSourceConfig)
    assert isinstance(adapter.validate_python({"type": "files", "url": "s3://logs/chat"}), FilesSource)
    for block, key in [
        ({"type": "files"}, "url"),
        ({"type": "files", "url": "s3://x", "layout": "static"}, "layout"),
        ({"type": "files", "url": "s3://x", "layout": "{hour}"}, "layout"),
        ({"type": "files", "url": "s3://x", "format": "csv"}, "format"),
        ({"type": "files", "url": "s3://x", "index": "logs-*"}, "index"),
        ({"type": "files", "url": "s3://x", "max_document_bytes": 60_000_000}, "max_document_bytes"),
        ({"type": "files", "url": "s3://x", "max_page_bytes": 1_000}, "max_page_bytes"),
    ]:
        path = write_config(tmp_path, log_source=block)
        with pytest.raises(ConfigError, match=rf"workloads\[0\]\.log_source\.{key}: "):
            load_config(path)
