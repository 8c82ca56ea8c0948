"""Validation: one day's raw partition into clean and quarantine partitions, judged by batch expectations.

Every raw record goes through the record-level rules (:mod:`flywheel.validate.records`). A record that
breaks one goes to the day's quarantine partition with its reason code, field and detail; a clean
record is PII-scrubbed, keyed for de-duplication and written to the clean partition. Records stream
through in chunks, so memory is bounded by the chunk size plus one small summary row per record,
which the batch expectations (:mod:`flywheel.validate.expectations`) then judge. The accounting
invariant ``extracted = clean + quarantined`` is checked before anything is committed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel import artifacts
from flywheel.config import DataQualityConfig
from flywheel.errors import AccountingError
from flywheel.extract.partition import (
    RAW_SCHEMA,
    PartWriter,
    cyclic_gc_paused,
    upgrade_raw_batch,
    upgrade_raw_schema,
)
from flywheel.extract.sources import LogSource
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore, PartitionNotFound
from flywheel.validate.keys import conversation_key
from flywheel.validate.pii import PiiScrubber
from flywheel.validate.records import Conversation, Violation, check_record

log = logging.getLogger(__name__)

CHUNK_ROWS = 5_000

CLEAN_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("workload_id", pa.string(), nullable=False),
        pa.field("client_id", pa.string()),
        pa.field("label", pa.string(), nullable=False),
        pa.field("conversation_key", pa.string(), nullable=False),
        pa.field("messages_json", pa.string(), nullable=False),
        pa.field("tools_json", pa.string(), nullable=False),
        pa.field("tool_calls_json", pa.string(), nullable=False),
        pa.field("content", pa.string()),
        pa.field("pii_json", pa.string()),
    ],
    metadata={"flywheel.schema": "clean/v1"},
)
"""A validated record. ``label`` is the first tool called or ``<no_tool>``; ``tool_calls_json`` the
teacher's calls with parsed arguments (``[{"name", "arguments"}]``); text fields are PII-scrubbed;
``pii_json`` counts what scrubbing replaced in this record (null when nothing)."""

QUARANTINE_SCHEMA = pa.schema(
    [
        *RAW_SCHEMA,
        pa.field("reason", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ],
    metadata={"flywheel.schema": "quarantine/v1"},
)
"""A rejected record exactly as extracted, with the rule it broke."""


@dataclass
class DayValidation:
    """What validating one day produced and concluded."""

    workload_id: str
    day: date
    interval_start: str
    interval_end: str
    extracted: int
    clean: int
    quarantined: int
    duplicates_in_day: int
    reasons: dict[str, int]
    labels: dict[str, int]
    pii: dict[str, int]
    success: bool
    failed_expectations: list[str]
    warnings: list[str]
    """Failed expectations that do not fail the batch (the tool shift under ``tool_shift_action: alert``)."""
    tool_shift: float | None
    tool_shift_exceeded: bool
    """The tool shift is above ``max_tool_shift``: the batch failed for it, or (``alert``) is flagged."""
    expectations: list[dict[str, Any]]
    clean_uri: str
    quarantine_uri: str
    validation_uri: str
    data_docs_uri: str | None
    seconds: float
    gx_seconds: float
    source_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["day"] = self.day.isoformat()
        return out


def validate_day(
    store: ArtifactStore,
    *,
    workload_id: str,
    start: datetime,
    end: datetime,
    rules: DataQualityConfig,
    build_docs: bool = True,
) -> DayValidation:
    """Validate the day's committed raw partition; commit its clean and quarantine partitions.

    A batch that fails its expectations is still committed (``success`` false, so the evidence can be
    inspected and dataset builds skip the day); the caller decides to fail. Raises AccountingError,
    before committing anything, if a record went missing or was counted twice.
    """
    day = partition_day(start)
    raw_record = store.read_partition_record(workload_id, day)
    files = store.partition_files(workload_id, day)
    parquet = pq.ParquetDataset(files, filesystem=store.fs)
    raw_columns = list(upgrade_raw_schema(parquet.schema).names)  # partitions of every schema version read
    batches = (
        upgrade_raw_batch(b)
        for f in files
        for b in pq.ParquetFile(f, filesystem=store.fs).iter_batches(CHUNK_ROWS)
    )
    result = validate_batches(
        store,
        batches,
        workload_id=workload_id,
        day=day,
        start=start,
        end=end,
        rules=rules,
        raw_columns=raw_columns,
        expected_records=raw_record["records"],
        baseline_labels=baseline_labels(store, workload_id, day, rules.shift_baseline_days),
        build_docs=build_docs,
    )
    result.source_version = raw_record["version"]
    return result


def baseline_labels(store: ArtifactStore, workload_id: str, day: date, days: int) -> dict[str, int]:
    """Clean label counts of the ``days`` days before ``day`` whose batches passed (the shift baseline)."""
    totals: Counter[str] = Counter()
    for offset in range(1, days + 1):
        try:
            record = store.read_partition_record(workload_id, day - timedelta(days=offset), "clean")
        except PartitionNotFound:
            continue
        if record.get("success"):
            totals.update(record["labels"])
    return dict(totals)


def validate_batches(
    store: ArtifactStore,
    batches: Iterable[pa.RecordBatch],
    *,
    workload_id: str,
    day: date,
    start: datetime,
    end: datetime,
    rules: DataQualityConfig,
    raw_columns: list[str],
    expected_records: int | None,
    baseline_labels: dict[str, int],
    build_docs: bool = True,
) -> DayValidation:
    """Validate raw record batches of one day and commit the day's clean and quarantine partitions."""
    from flywheel.validate.expectations import validate_batch

    started = time.perf_counter()
    scrubber = PiiScrubber(rules.pii.kinds) if rules.pii.enabled else None
    summary = _Summary()
    with (
        cyclic_gc_paused(),
        store.stage_partition(workload_id, day, "clean") as clean_stage,
        store.stage_partition(workload_id, day, "quarantine") as quarantine_stage,
    ):
        clean_writer = PartWriter(store, clean_stage.part_path, CLEAN_SCHEMA)
        quarantine_writer = PartWriter(store, quarantine_stage.part_path, QUARANTINE_SCHEMA)
        try:
            for batch in batches:
                clean_batch, quarantine_batch = _split_batch(
                    batch,
                    workload_id=workload_id,
                    start=start,
                    end=end,
                    rules=rules,
                    scrubber=scrubber,
                    summary=summary,
                )
                if clean_batch is not None:
                    clean_writer.write(clean_batch)
                if quarantine_batch is not None:
                    quarantine_writer.write(quarantine_batch)
        finally:
            clean_writer.close()
            quarantine_writer.close()

        extracted = summary.rows
        if expected_records is not None and extracted != expected_records:
            raise AccountingError(f"raw partition holds {expected_records} records but {extracted} were read")
        # Every record read was counted once, as clean or under its reason, and written once.
        clean, quarantined = summary.clean, sum(summary.reasons.values())
        if (
            clean + quarantined != extracted
            or quarantine_writer.rows != quarantined
            or clean_writer.rows != clean
        ):
            raise AccountingError(
                f"extracted {extracted} != clean {clean_writer.rows} + quarantined {quarantine_writer.rows}"
            )
        frame = summary.frame()
        docs_path = store.path(artifacts.data_docs_dir(workload_id, day))
        verdict = validate_batch(
            frame,
            raw_columns,
            expected_raw_columns=RAW_SCHEMA.names,
            rules=rules,
            interval=(start, end),
            baseline_labels=baseline_labels,
            docs_target=(store, docs_path) if build_docs else None,
        )
        validation_path = store.path(artifacts.validation_result(workload_id, day))
        store.write_json_atomic(validation_path, verdict.result_json)
        accounting = {
            "extracted": extracted,
            "clean": clean,
            "quarantined": quarantined,
            "duplicates_in_day": summary.duplicates,
        }
        common = {
            "interval_start": start.isoformat(),
            "interval_end": end.isoformat(),
            "accounting": accounting,
            "success": verdict.success,
            "validation": store.uri(validation_path),
        }
        quarantine_commit = store.commit_partition(
            quarantine_stage, {**common, "records": quarantined, "reasons": dict(summary.reasons)}
        )
        clean_commit = store.commit_partition(
            clean_stage,
            {
                **common,
                "records": clean,
                "labels": dict(summary.labels),
                "pii": dict(summary.pii),
                "failed_expectations": verdict.failed,
                "warnings": verdict.warnings,
                "tool_shift": verdict.tool_shift,
                "tool_shift_exceeded": verdict.tool_shift_exceeded,
                "data_docs": verdict.data_docs_uri,
            },
        )
    return DayValidation(
        workload_id=workload_id,
        day=day,
        interval_start=start.isoformat(),
        interval_end=end.isoformat(),
        extracted=extracted,
        clean=clean,
        quarantined=quarantined,
        duplicates_in_day=summary.duplicates,
        reasons=dict(summary.reasons),
        labels=dict(summary.labels),
        pii=dict(summary.pii),
        success=verdict.success,
        failed_expectations=verdict.failed,
        warnings=verdict.warnings,
        tool_shift=verdict.tool_shift,
        tool_shift_exceeded=verdict.tool_shift_exceeded,
        expectations=[asdict(o) for o in verdict.outcomes],
        clean_uri=clean_commit["path"],
        quarantine_uri=quarantine_commit["path"],
        validation_uri=store.uri(validation_path),
        data_docs_uri=verdict.data_docs_uri,
        seconds=round(time.perf_counter() - started, 3),
        gx_seconds=verdict.seconds,
    )


SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string()),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("label", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("is_clean", pa.bool_()),
        pa.field("is_duplicate", pa.bool_()),
    ]
)


class _Summary:
    """One small row per record for the batch expectations, plus the day's counters.

    Rows are gathered per chunk and kept as Arrow batches (about 60 bytes a record), not Python
    objects; the conversation keys seen are kept as 16-byte digests to flag duplicates within the day.
    """

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self._chunk: dict[str, list[Any]] = {name: [] for name in SUMMARY_SCHEMA.names}
        self.keys: set[bytes] = set()
        self.rows = self.clean = self.duplicates = 0
        self.reasons: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.pii: Counter[str] = Counter()

    def add(self, row: dict[str, Any], label: str | None, reason: str | None, key: str | None) -> None:
        duplicate = False
        if key is not None:
            digest = bytes.fromhex(key)
            duplicate = digest in self.keys
            self.keys.add(digest)
        chunk = self._chunk
        chunk["record_id"].append(row["record_id"])
        chunk["timestamp"].append(row["timestamp"])
        chunk["label"].append(label)
        chunk["reason"].append(reason)
        chunk["is_clean"].append(reason is None)
        chunk["is_duplicate"].append(duplicate)
        self.rows += 1
        self.duplicates += duplicate
        if reason is None:
            self.clean += 1
            self.labels[label or ""] += 1
        else:
            self.reasons[reason] += 1

    def end_chunk(self) -> None:
        if self._chunk["record_id"]:
            self.batches.append(pa.RecordBatch.from_pydict(self._chunk, schema=SUMMARY_SCHEMA))
            self._chunk = {name: [] for name in SUMMARY_SCHEMA.names}

    def frame(self) -> Any:
        """The summary as a pandas DataFrame (Arrow-backed strings) for Great Expectations."""
        self.end_chunk()
        return pa.Table.from_batches(self.batches, schema=SUMMARY_SCHEMA).to_pandas()


_encode = msgspec.json.Encoder().encode


def _split_batch(
    batch: pa.RecordBatch,
    *,
    workload_id: str,
    start: datetime,
    end: datetime,
    rules: DataQualityConfig,
    scrubber: PiiScrubber | None,
    summary: _Summary,
) -> tuple[pa.RecordBatch | None, pa.RecordBatch | None]:
    """Check every row of a raw batch; return its clean and quarantine batches (None when empty)."""
    clean: dict[str, list[Any]] = {name: [] for name in CLEAN_SCHEMA.names}
    rejected: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        checked = check_record(
            row, workload_id=workload_id, start=start, end=end, max_record_bytes=rules.max_record_bytes
        )
        if isinstance(checked, Violation):
            rejected.append(
                {**row, "reason": checked.reason.value, "field": checked.field, "detail": checked.detail}
            )
            summary.add(row, None, checked.reason.value, None)
            continue
        key = _append_clean(clean, row, checked, scrubber, summary.pii)
        summary.add(row, checked.label, None, key)
    summary.end_chunk()
    return (
        pa.RecordBatch.from_pydict(clean, schema=CLEAN_SCHEMA) if clean["record_id"] else None,
        pa.RecordBatch.from_pylist(rejected, schema=QUARANTINE_SCHEMA) if rejected else None,
    )


def _append_clean(
    columns: dict[str, list[Any]],
    row: dict[str, Any],
    conversation: Conversation,
    scrubber: PiiScrubber | None,
    pii_totals: Counter[str],
) -> str:
    """Append one clean record to the column lists; return its conversation key."""
    messages = conversation.messages
    arguments = [call.arguments for call in conversation.tool_calls]
    content = conversation.content
    pii: Counter[str] = Counter()
    if scrubber is not None:
        messages, arguments, content, pii = scrubber.scrub_conversation(messages, arguments, content)
        pii_totals.update(pii)
    calls = [
        {"name": c.name, "arguments": a} for c, a in zip(conversation.tool_calls, arguments, strict=True)
    ]
    key = conversation_key(messages, conversation.tools)
    columns["record_id"].append(row["record_id"])
    columns["timestamp"].append(row["timestamp"])
    columns["workload_id"].append(row["workload_id"])
    columns["client_id"].append(row["client_id"])
    columns["label"].append(conversation.label)
    columns["conversation_key"].append(key)
    columns["messages_json"].append(_encode(messages).decode())
    columns["tools_json"].append(_tools_json(conversation.tools))
    columns["tool_calls_json"].append(_encode(calls).decode())
    columns["content"].append(content)
    columns["pii_json"].append(_encode(dict(pii)).decode() if pii else None)
    return key


_TOOLS_JSON: dict[int, tuple[list[Any], str]] = {}


def _tools_json(tools: list[Any]) -> str:
    """JSON of a tool list, encoded once per list object: records of a workload share their tools list
    (the record checker caches it), and a router's tool schemas are most of a record's bytes."""
    cached = _TOOLS_JSON.get(id(tools))
    if cached is not None and cached[0] is tools:
        return cached[1]
    text = _encode(tools).decode()
    if len(_TOOLS_JSON) > 256:
        _TOOLS_JSON.clear()
    _TOOLS_JSON[id(tools)] = (tools, text)  # holding the list keeps its id from being reused
    return text


def validate_jsonl(
    path: Path,
    store: ArtifactStore,
    *,
    workload_id: str,
    start: datetime,
    end: datetime,
    rules: DataQualityConfig,
    source: LogSource,
    build_docs: bool = True,
) -> DayValidation:
    """Validate a JSONL file of log documents into ``store`` exactly as the nightly stage would.

    Writes the day's clean and quarantine partitions, the GX result and Data Docs, plus
    ``quarantine.jsonl`` (the line's ``<file>/line-<n>``, record id, reason, field, detail per rejected
    line) at the store's root for reading without Parquet tools. Field names (timestamp, workload,
    client) are those of ``source``.
    Returns the verdict instead of raising when the batch fails.
    """
    day = partition_day(start)
    with path.open("rb") as lines:
        result = validate_batches(
            store,
            iter_jsonl_batches(lines, source=source, file_name=path.name),
            workload_id=workload_id,
            day=day,
            start=start,
            end=end,
            rules=rules,
            raw_columns=RAW_SCHEMA.names,
            expected_records=None,
            baseline_labels={},
            build_docs=build_docs,
        )
    columns = ["source_record_id", "record_id", "reason", "field", "detail"]
    rows = [
        row
        for part in store.partition_files(workload_id, day, "quarantine")
        for row in pq.read_table(part, columns=columns, filesystem=store.fs).to_pylist()
    ]
    store.write_bytes_atomic(
        store.path(artifacts.QUARANTINE_EXPORT), b"".join(_encode(row) + b"\n" for row in rows)
    )
    return result


def iter_jsonl_batches(
    lines: Iterable[bytes], *, source: LogSource, file_name: str, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.RecordBatch]:
    """Raw record batches from JSONL lines of log documents (``flywheel validate``).

    Each line goes through the extractor's own conversion, so a file validates exactly as the same
    documents would after extraction; a record's source is ``file`` and its id ``<file_name>/line-<n>``. A
    line that is not a JSON object becomes a record holding the line as an extra field (quarantined by
    the rules), never an exception.
    """
    from flywheel.extract.documents import RawRecord, decode_document
    from flywheel.extract.partition import batches_of_records

    records = (
        RawRecord(f"{file_name}/line-{number}", decode_document(line))
        for number, line in enumerate(lines, start=1)
        if line.strip()
    )
    return batches_of_records(records, source, "file", chunk_rows)
