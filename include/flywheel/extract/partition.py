"""Extraction: one workload's logs for one data interval, from its log source into a raw Parquet partition.

The source (:mod:`flywheel.extract.sources`) only reads; everything else is shared by every source.
Each page of records becomes one Arrow record batch with the full request and response kept as JSON
text and the flat columns later stages need. Pages are fetched one ahead on a background thread, so
the source and this process work at the same time; memory holds at most three pages whatever the
size of the day. The partition is committed atomically (see :mod:`flywheel.storage`).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.extract.documents import as_text, decode_or_none, epoch_ms
from flywheel.extract.sources import (
    IncompleteReadError,
    LogSource,
    LogSourceError,
    LogWindow,
    ReadReport,
    SourceRecord,
)
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore

log = logging.getLogger(__name__)

RAW_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("workload_id", pa.string()),
        pa.field("client_id", pa.string()),
        pa.field("first_tool_name", pa.string()),
        pa.field("request_json", pa.string()),
        pa.field("response_json", pa.string()),
        pa.field("extra_json", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_record_id", pa.string(), nullable=False),
    ],
    metadata={"flywheel.schema": "raw/v2"},
)
"""Columns of a raw partition. ``request_json`` / ``response_json`` hold the logged objects verbatim
(null when the key is absent); ``extra_json`` any other top-level fields of the log document.
``source`` names the log source and ``source_record_id`` is the document's id there (``<index>/<_id>``
in Elasticsearch, ``<file URL>/line-<n>`` or ``/row-<n>`` in files). ``record_id`` is stable across
re-extractions: a hash of ``source_record_id``.

Partitions written before v2 (``raw/v1``) have ``es_index`` and ``es_id`` instead of the last two
columns; :func:`upgrade_raw_batch` reads them as v2."""

MAX_READ_METHOD_CHARS = 16
"""Longest read method a source may report (the ``raw_partitions.read_method`` column)."""

ROWS_PER_PART = 250_000


@dataclass(frozen=True)
class ExtractionResult:
    """What one extraction wrote: counts, the committed partition and how the read went."""

    workload_id: str
    day: date
    interval_start: datetime
    interval_end: datetime
    records: int
    pages: int
    parts: int
    bytes: int
    uri: str
    version: str
    read_method: str
    seconds: float
    client_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            day=self.day.isoformat(),
            interval_start=self.interval_start.isoformat(),
            interval_end=self.interval_end.isoformat(),
        )
        return out


def extract_interval(
    source: LogSource,
    store: ArtifactStore,
    *,
    workload_id: str,
    start: datetime,
    end: datetime,
    client_ids: list[str] | None = None,
    page_size: int | None = None,
    on_page: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Extract ``[start, end)`` of one workload from ``source`` into its day's raw partition, replacing
    any earlier one.

    ``page_size`` overrides the source's configured one; ``on_page(pages, records)`` is called after
    each page is written (progress logging). Raises on any read or write error, leaving the previously
    committed partition as it was; :class:`IncompleteReadError` when the source can count the window's
    records (``ReadReport.expected_records``) and the records written differ.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware datetimes")
    if not start < end:
        raise ValueError(f"empty interval: start {start.isoformat()} is not before end {end.isoformat()}")
    started = time.perf_counter()
    window = LogWindow(workload_id, start, end, client_ids)
    page_limit = page_size or source.page_size
    report = ReadReport()
    day = partition_day(start)
    fields = SourceFields(source)
    clients: Counter[str] = Counter()
    records = page_count = 0
    with cyclic_gc_paused(), store.stage_partition(workload_id, day) as staged:
        writer = PartWriter(store, staged.part_path)
        try:
            for page in _prefetch(source.pages(window, page_limit, report)):
                if len(page) > page_limit:
                    raise LogSourceError(
                        f"log source {source.type!r} returned a page of {len(page)} records; "
                        f"{page_limit} were asked for"
                    )
                batch = fields.to_batch(page)
                writer.write(batch)
                clients.update(
                    c if c is not None else "<none>" for c in batch.column("client_id").to_pylist()
                )
                records += len(page)
                page_count += 1
                if on_page is not None:
                    on_page(page_count, records)
        finally:
            writer.close()
        if report.expected_records is not None and report.expected_records != records:
            raise IncompleteReadError(
                f"log source {source.type!r} read {records} records of {workload_id} "
                f"[{start.isoformat()}, {end.isoformat()}) but the store counts {report.expected_records} "
                "in the same window (records written or deleted during the read, or a page lost); "
                "nothing was committed, a retry re-reads the window"
            )
        read_method = report.method
        if not 0 < len(read_method) <= MAX_READ_METHOD_CHARS:
            raise LogSourceError(
                f"log source {source.type!r}: read method {read_method!r} must have 1 to "
                f"{MAX_READ_METHOD_CHARS} characters"
            )
        commit = store.commit_partition(
            staged,
            {
                "interval_start": start.isoformat(),
                "interval_end": end.isoformat(),
                "records": records,
                "pages": page_count,
                "bytes": writer.bytes_written,
                "read_method": read_method,
                "source": source.type,
                "client_ids": list(client_ids) if client_ids else None,  # what a recount selects again
                **report.details,
                "client_counts": dict(clients),
                "schema": RAW_SCHEMA.metadata[b"flywheel.schema"].decode(),
            },
        )
    return ExtractionResult(
        workload_id=workload_id,
        day=day,
        interval_start=start,
        interval_end=end,
        records=records,
        pages=page_count,
        parts=len(commit["parts"]),
        bytes=writer.bytes_written,
        uri=commit["path"],
        version=commit["version"],
        read_method=read_method,
        seconds=round(time.perf_counter() - started, 3),
        client_counts=dict(clients),
    )


class SourceFields:
    """Turns a page of source records into an Arrow batch in RAW_SCHEMA, tolerating any document shape.

    ``request`` and ``response`` are copied as the raw JSON text the source returned; only the
    small routing fields and the response (for the first tool name) are decoded.
    """

    def __init__(self, source: LogSource, source_name: str | None = None) -> None:
        self.ts_field = source.timestamp_field
        self.workload_field = source.workload_field
        self.client_field = source.client_field
        self.source_name = source_name or source.type
        self.known = {self.ts_field, self.workload_field, self.client_field, "request", "response"}

    def to_batch(self, records: list[SourceRecord]) -> pa.RecordBatch:
        n = len(records)
        record_id: list[str] = [""] * n
        ts: list[int | None] = [None] * n
        workload: list[str | None] = [None] * n
        client: list[str | None] = [None] * n
        tool: list[str | None] = [None] * n
        request: list[str | None] = [None] * n
        response: list[str | None] = [None] * n
        extra: list[str | None] = [None] * n
        source_record_id: list[str] = [""] * n
        for i, record in enumerate(records):
            src = record.document
            source_record_id[i] = own_id = record.source_record_id
            record_id[i] = hashlib.blake2b(own_id.encode(), digest_size=16).hexdigest()
            if (raw := src.get(self.ts_field)) is not None:
                ts[i] = epoch_ms(decode_or_none(raw))
            if (raw := src.get(self.workload_field)) is not None:
                workload[i] = as_text(raw)
            if (raw := src.get(self.client_field)) is not None:
                client[i] = as_text(raw)
            if (raw := src.get("request")) is not None:
                request[i] = bytes(raw).decode()
            if (raw := src.get("response")) is not None:
                response[i] = bytes(raw).decode()
                tool[i] = _first_tool_name(decode_or_none(raw))
            if len(src) > len(self.known & src.keys()):
                fields_json = (  # the other top-level fields, re-assembled from their raw JSON
                    f"{_json_text(k).decode()}:{bytes(v).decode()}"
                    for k, v in src.items()
                    if k not in self.known
                )
                extra[i] = "{" + ",".join(fields_json) + "}"
        return pa.RecordBatch.from_arrays(
            [
                pa.array(record_id, pa.string()),
                pa.array(ts, RAW_SCHEMA.field("timestamp").type),
                pa.array(workload, pa.string()),
                pa.array(client, pa.string()),
                pa.array(tool, pa.string()),
                pa.array(request, pa.string()),
                pa.array(response, pa.string()),
                pa.array(extra, pa.string()),
                pa.array([self.source_name] * n, pa.string()),
                pa.array(source_record_id, pa.string()),
            ],
            schema=RAW_SCHEMA,
        )


_json_text = msgspec.json.Encoder().encode


def batches_of_records(
    records: Iterable[SourceRecord], source: LogSource, source_name: str, chunk_rows: int = 5_000
) -> Iterator[pa.RecordBatch]:
    """Raw batches (RAW_SCHEMA) from records that ``source`` did not read (a JSONL file given to
    ``flywheel validate``, generated demo traffic), converted exactly as extraction converts a page:
    field names are ``source``'s, the ``source`` column says ``source_name``."""
    fields = SourceFields(source, source_name)
    page: list[SourceRecord] = []
    for record in records:
        page.append(record)
        if len(page) == chunk_rows:
            yield fields.to_batch(page)
            page = []
    if page:
        yield fields.to_batch(page)


_V1_SOURCE_COLUMNS = ("es_index", "es_id")


def upgrade_raw_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a raw partition written with ``schema`` reads as (see :func:`upgrade_raw_batch`)."""
    if _V1_SOURCE_COLUMNS[0] not in schema.names:
        return schema
    kept = [f for f in schema if f.name not in _V1_SOURCE_COLUMNS]
    added = [RAW_SCHEMA.field("source"), RAW_SCHEMA.field("source_record_id")]
    return pa.schema([*kept, *added], metadata=RAW_SCHEMA.metadata)


def upgrade_raw_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of a raw partition with the current source columns, whichever version wrote it.

    ``raw/v1`` partitions (Elasticsearch only) named them ``es_index`` and ``es_id``: they read as
    source ``elasticsearch`` and ``<es_index>/<es_id>``, from which their ``record_id`` was hashed, so
    every record keeps its id. Other columns pass through as they are (drift is validation's to judge).
    """
    schema = upgrade_raw_schema(batch.schema)
    if schema is batch.schema:
        return batch
    kept = [batch.column(f.name) for f in schema if f.name not in ("source", "source_record_id")]
    source = pa.array(["elasticsearch"] * batch.num_rows, pa.string())
    own_id = pc.binary_join_element_wise(batch.column("es_index"), batch.column("es_id"), "/")
    return pa.RecordBatch.from_arrays([*kept, source, own_id], schema=schema)


def _first_tool_name(response: Any) -> str | None:
    """Name of the first tool call in ``choices[0].message.tool_calls``; None for text answers or junk."""
    try:
        name = response["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None


class PartWriter:
    """Writes batches into numbered Parquet parts of a staged partition, a new part every ROWS_PER_PART."""

    def __init__(
        self, store: ArtifactStore, part_path: Callable[[int], str], schema: pa.Schema = RAW_SCHEMA
    ) -> None:
        self.store = store
        self.part_path = part_path
        self.schema = schema
        self.part_index = 0
        self.rows_in_part = 0
        self.rows = 0
        self.bytes_written = 0
        self._file: Any = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._file = self.store.fs.open(self.part_path(self.part_index), "wb")
            self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd")
        self._writer.write_batch(batch)
        self.rows_in_part += batch.num_rows
        self.rows += batch.num_rows
        if self.rows_in_part >= ROWS_PER_PART:
            self._finish_part()

    def close(self) -> None:
        if self._writer is not None:
            self._finish_part()

    def _finish_part(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self.bytes_written += self._file.tell()
        self._file.close()
        self._writer = self._file = None
        self.part_index += 1
        self.rows_in_part = 0


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while pages of records are decoded and transformed.

    A decoded page is a tree of ~50,000 dicts, lists and strings without reference cycles, freed by
    reference counting alone; but the allocations trigger collections that rescan the whole heap
    (an Airflow worker holds ~200,000 objects), which more than halves the speed of the stage.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_DONE = object()


def _prefetch(pages: Iterable[list[SourceRecord]]) -> Iterator[list[SourceRecord]]:
    """Iterate ``pages`` with the next page fetched on a background thread while this one is processed.

    At most one page waits in the hand-off queue, so memory stays bounded by page size. Errors of the
    fetching thread are raised here; if the consumer stops early, the fetching thread is told to stop
    and the underlying iterator is closed (releasing its search context).
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(pages)
        try:
            for page in iterator:
                while not stop.is_set():
                    try:
                        handoff.put(page, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(_DONE)
        except BaseException as exc:
            handoff.put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="flywheel-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                handoff.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
