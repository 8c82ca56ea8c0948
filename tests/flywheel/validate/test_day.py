"""Validating a day: real extracted data from osmem-server, quarantine, accounting, expectations, JSONL."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.config import DataQualityConfig, load_config
from flywheel.demo.seed import seed_logs
from flywheel.demo.traffic import NoiseKind, generate_traffic
from flywheel.errors import DataQualityError
from flywheel.extract.partition import RAW_SCHEMA, PartWriter, extract_interval
from flywheel.intervals import latest_intervals
from flywheel.storage import ArtifactStore
from flywheel.validate.day import CLEAN_SCHEMA, QUARANTINE_SCHEMA, validate_day, validate_jsonl
from logdocs import END, START, WORKLOAD, clean_doc

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


@pytest.fixture
def extracted_days(log_store, tmp_path, monkeypatch):
    """Three days of both demo workloads seeded into their own indices, extracted; config and store."""
    from conftest import write_config
    from flywheel.db.engine import get_engine
    from flywheel.db.migrate import upgrade

    index = f"logs-{uuid.uuid4().hex[:8]}-*"  # this test's documents only, in the shared log store
    path = write_config(tmp_path, log_source={"conn_id": "flywheel_logs", "index": index})
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
    config = load_config(path)
    upgrade(get_engine(config.metadata))
    seed_logs(config, days=3, records_per_day=400, now=NOW, seed=3)
    store = ArtifactStore(config.artifact_store.root)
    for workload in config.workloads:
        for start, end in latest_intervals(workload.schedule, 3, NOW):
            extract_interval(
                workload.log_source, store, workload_id=workload.workload_id, start=start, end=end
            )
    return config, store


def test_accounting_invariant_on_real_extracted_data(extracted_days):
    config, store = extracted_days
    workload = config.workload("customer_support_router")
    for start, end in latest_intervals(workload.schedule, 3, NOW):
        result = validate_day(
            store, workload_id=workload.workload_id, start=start, end=end, rules=workload.data_quality
        )
        raw = store.read_partition_record(workload.workload_id, start.date())
        clean = store.read_partition_record(workload.workload_id, start.date(), "clean")
        quarantine = store.read_partition_record(workload.workload_id, start.date(), "quarantine")

        assert result.extracted == raw["records"] == result.clean + result.quarantined
        assert clean["accounting"] == {
            "extracted": raw["records"],
            "clean": result.clean,
            "quarantined": result.quarantined,
            "duplicates_in_day": result.duplicates_in_day,
        }
        clean_rows = pq.ParquetDataset(
            store.partition_files(workload.workload_id, start.date(), "clean"), filesystem=store.fs
        ).read()
        rejected_rows = pq.ParquetDataset(
            store.partition_files(workload.workload_id, start.date(), "quarantine"), filesystem=store.fs
        ).read()
        assert clean_rows.num_rows == clean["records"] == result.clean
        assert rejected_rows.num_rows == quarantine["records"] == result.quarantined
        assert clean_rows.schema.equals(CLEAN_SCHEMA, check_metadata=False)
        assert rejected_rows.schema.equals(QUARANTINE_SCHEMA, check_metadata=False)
        raw_ids = set(
            pq.ParquetDataset(store.partition_files(workload.workload_id, start.date()), filesystem=store.fs)
            .read(columns=["record_id"])
            .column("record_id")
            .to_pylist()
        )
        assert raw_ids == set(clean_rows.column("record_id").to_pylist()) | set(
            rejected_rows.column("record_id").to_pylist()
        )
        assert Counter(rejected_rows.column("reason").to_pylist()) == result.reasons
        assert result.success, result.failed_expectations
        assert result.data_docs_uri.endswith("index.html")
        assert store.fs.exists(result.data_docs_uri.removeprefix("file://"))
        assert json.loads(store.fs.cat(result.validation_uri.removeprefix("file://")))


def test_bfcl_workload_passes_with_the_expected_counts(extracted_days):
    config, store = extracted_days
    workload = config.workload("bfcl_live_assistant")
    start, end = latest_intervals(workload.schedule, 1, NOW)[0]
    # The same documents, generated again: the ground truth of what the demo seeded in this interval.
    truth = list(
        generate_traffic(
            kind="bfcl_live",
            workload_id=workload.workload_id,
            start=start,
            end=end,
            count=100,  # 400 records per day x the workload's 0.25 volume share
            seed=3,
            client_ids=["web-shop", "mobile-app", "partner-api"],
        )
    )
    outside = sum(r.noise is NoiseKind.OUTSIDE_WINDOW for r in truth)
    defective = sum(
        r.noise not in (None, NoiseKind.OUTSIDE_WINDOW, NoiseKind.EXACT_DUPLICATE, NoiseKind.NEAR_DUPLICATE)
        for r in truth
    )

    result = validate_day(
        store, workload_id=workload.workload_id, start=start, end=end, rules=workload.data_quality
    )

    assert result.success, result.failed_expectations
    # Defects never move a record out of its interval; strays from the day before are clean records.
    assert result.quarantined == defective
    assert result.clean == result.extracted - defective
    assert result.extracted >= len(truth) - outside
    assert sum(result.reasons.values()) == defective
    assert result.labels
    assert "<no_tool>" in result.labels


def test_failed_batch_commits_evidence_and_fails_the_task(extracted_days):
    from sqlalchemy import select

    from flywheel.context import RunContext
    from flywheel.db.engine import session_scope
    from flywheel.db.models import RunStage, ValidatedPartition
    from flywheel.validate.tasks import validate

    config, store = extracted_days
    workload = config.workload("customer_support_router")
    start, end = latest_intervals(workload.schedule, 1, NOW)[0]
    strict = workload.model_copy(
        update={"data_quality": DataQualityConfig(min_clean_records=10_000, max_quarantine_rate=0.0)}
    )
    strict_config = config.model_copy(update={"workloads": [strict]})

    with pytest.raises(DataQualityError, match="failed: expect_column_sum_to_be_between"):
        validate(
            RunContext.of(
                strict_config,
                workload.workload_id,
                interval_start=start,
                interval_end=end,
                dag_run_id="manual__strict",
            )
        )

    committed = store.read_partition_record(workload.workload_id, start.date(), "clean")
    assert committed["success"] is False
    assert "expect_column_values_to_be_null(reason)" in committed["failed_expectations"]
    with session_scope(config.metadata) as session:
        stage = session.scalars(select(RunStage).where(RunStage.stage == "validate")).one()
        verdict = session.scalars(select(ValidatedPartition)).one()
    assert stage.status == "failed"
    assert "DataQualityError" in stage.error
    assert verdict.success is False
    assert verdict.clean + verdict.quarantined == verdict.extracted


def test_tool_shift_is_measured_against_previous_days(extracted_days):
    config, store = extracted_days
    workload = config.workload("customer_support_router")
    intervals = latest_intervals(workload.schedule, 3, NOW)
    shifts = [
        validate_day(
            store, workload_id=workload.workload_id, start=s, end=e, rules=workload.data_quality
        ).tool_shift
        for s, e in intervals
    ]
    assert shifts[0] is None  # no earlier validated day
    assert all(0 <= shift < workload.data_quality.max_tool_shift for shift in shifts[1:])

    skewed = DataQualityConfig(max_tool_shift=1e-9, tool_shift_action="fail")
    last = validate_day(
        store, workload_id=workload.workload_id, start=intervals[-1][0], end=intervals[-1][1], rules=skewed
    )
    assert "expect_column_kl_divergence_to_be_less_than(label)" in last.failed_expectations


@pytest.mark.parametrize("action", ["alert", "fail"])
def test_an_api_change_is_a_flagged_tool_shift_that_fails_the_batch_only_under_fail(make_config, action):
    """The router's traffic before and after its API change (``track_shipment`` renamed, ``cancel_order``
    new) through the ``validate`` task: the shift is measured and flagged either way; under ``alert``
    the day passes and enters the next day's baseline, under ``fail`` it fails and stays out."""
    from sqlalchemy import select

    from flywheel.context import RunContext
    from flywheel.db.engine import session_scope
    from flywheel.db.models import RunStage, ValidatedPartition
    from flywheel.demo.seed import write_raw_partition
    from flywheel.validate.day import baseline_labels
    from flywheel.validate.tasks import validate

    config = make_config(data_quality={"tool_shift_action": action})
    workload = config.workload("customer_support_router")
    before, after = (
        RunContext.of(
            config, workload.workload_id, interval_start=s, interval_end=e, dag_run_id=f"manual__{s}"
        )
        for s, e in latest_intervals(workload.schedule, 2, NOW)
    )
    for ctx, api_changed in ((before, False), (after, True)):
        write_raw_partition(
            ctx.store,
            workload,
            start=ctx.interval_start,
            end=ctx.interval_end,
            count=300,
            seed=5,
            api_changed=api_changed,
        )
    assert validate(before)["tool_shift"] is None  # no baseline yet
    if action == "alert":
        validate(after)
    else:
        with pytest.raises(DataQualityError, match=r"failed: expect_column_kl_divergence_to_be_less_than"):
            validate(after)

    shift = "expect_column_kl_divergence_to_be_less_than(label)"
    with session_scope(config.metadata) as session:
        stage = session.scalars(
            select(RunStage).where(RunStage.run_id == after.run_id, RunStage.stage == "validate")
        ).one()
        verdict = session.scalars(select(ValidatedPartition).where(ValidatedPartition.day == after.day)).one()
        summary = stage.summary
        assert (stage.status, verdict.success) == (
            ("succeeded", True) if action == "alert" else ("failed", False)
        )
        assert verdict.tool_shift == summary["tool_shift"] > workload.data_quality.max_tool_shift
    committed = after.store.read_partition_record(workload.workload_id, after.day, "clean")
    assert summary["tool_shift_exceeded"] is committed["tool_shift_exceeded"] is True
    assert committed["tool_shift"] == summary["tool_shift"]
    assert (committed["failed_expectations"], committed["warnings"]) == (
        ([], [shift]) if action == "alert" else ([shift], [])
    )
    assert {"track_package", "cancel_order"} <= set(summary["labels"])
    # The next day's baseline holds the changed API's tools only when the day passed.
    next_baseline = baseline_labels(after.store, workload.workload_id, after.day + timedelta(days=1), 7)
    assert ("track_package" in next_baseline) is (action == "alert")


def test_validate_jsonl_debugs_a_batch_without_airflow(tmp_path: Path):
    config = load_config()
    workload = config.workload("customer_support_router")
    start = datetime(2026, 11, 20, 2, tzinfo=UTC)
    end = start + timedelta(days=1)
    records = list(
        generate_traffic(
            kind="support_router",
            workload_id=workload.workload_id,
            start=start,
            end=end,
            count=300,
            seed=5,
            client_ids=["web-shop"],
        )
    )
    lines = [json.dumps(r.source).encode() for r in records] + [b"{not json", b"[1, 2]", b"", b'"text"']
    source = tmp_path / "batch.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = ArtifactStore(str(tmp_path / "out"))

    result = validate_jsonl(
        source,
        out,
        workload_id=workload.workload_id,
        start=start,
        end=end,
        rules=workload.data_quality,
        source=workload.log_source,
        build_docs=False,
    )

    assert result.extracted == 303  # 300 documents and three junk lines (the empty one is skipped)
    assert result.clean + result.quarantined == 303
    rejected = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert len(rejected) == result.quarantined
    junk_ids = {f"batch.jsonl/line-{n}" for n in (301, 302, 304)}
    junk = [r for r in rejected if r["source_record_id"] in junk_ids]
    assert len(junk) == 3
    assert all(r["reason"] == "workload_mismatch" for r in junk)
    expected_bad = sum(
        r.noise not in (None, NoiseKind.EXACT_DUPLICATE, NoiseKind.NEAR_DUPLICATE) for r in records
    )
    assert result.quarantined == expected_bad + 3


def test_validation_reads_a_raw_partition_of_the_old_schema(tmp_path: Path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    """A raw/v1 partition (es_index, es_id) validates as it did: records keep their ids and sources."""
    import hashlib

    v1 = pa.schema(
        [f for f in RAW_SCHEMA if f.name not in ("source", "source_record_id")]
        + [pa.field("es_index", pa.string(), nullable=False), pa.field("es_id", pa.string(), nullable=False)],
        metadata={"flywheel.schema": "raw/v1"},
    )
    docs = [clean_doc(START + timedelta(minutes=i), i) for i in range(3)]
    rows = [
        {
            "record_id": hashlib.blake2b(f"logs-2026.11.20/{i}".encode(), digest_size=16).hexdigest(),
            "timestamp": START + timedelta(minutes=i),
            "workload_id": WORKLOAD,
            "client_id": "web",
            "first_tool_name": "get_order_status",
            "request_json": json.dumps(d["request"]),
            "response_json": json.dumps(d["response"]) if i else None,  # one broken record
            "extra_json": None,
            "es_index": "logs-2026.11.20",
            "es_id": str(i),
        }
        for i, d in enumerate(docs)
    ]
    with store.stage_partition(WORKLOAD, START.date()) as staged:
        writer = PartWriter(store, staged.part_path, v1)
        writer.write(pa.RecordBatch.from_pylist(rows, schema=v1))
        writer.close()
        store.commit_partition(staged, {"records": 3, "interval_start": START.isoformat()})

    result = validate_day(
        store, workload_id=WORKLOAD, start=START, end=END, rules=DataQualityConfig(), build_docs=False
    )

    assert (result.extracted, result.clean, result.quarantined) == (3, 2, 1)
    assert "raw_schema" not in " ".join(result.failed_expectations)
    (quarantined,) = pq.read_table(store.partition_files(WORKLOAD, START.date(), "quarantine")).to_pylist()
    assert quarantined["source"] == "elasticsearch"
    assert quarantined["source_record_id"] == "logs-2026.11.20/0"
    assert quarantined["record_id"] == rows[0]["record_id"]
    assert quarantined["reason"] == "missing_response"
