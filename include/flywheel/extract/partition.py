"""Extraction: one workload's logs for one data interval, from Elasticsearch into a raw Parquet partition.

Each page of hits becomes one Arrow record batch with the full request and response kept as JSON text
and the flat columns later stages need. Pages are fetched one ahead on a background thread, so the
cluster and this process work at the same time; memory holds at most three pages whatever the size
of the day. The partition is committed atomically (see :mod:`flywheel.storage`).
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
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.config import LogSourceConfig
from flywheel.extract.sources.elasticsearch import Hit, HitPages, interval_query
from flywheel.intervals import partition_day
from flywheel.storage import ArtifactStore

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

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
        pa.field("es_index", pa.string(), nullable=False),
        pa.field("es_id", pa.string(), nullable=False),
    ],
    metadata={"flywheel.schema": "raw/v1"},
)
"""Columns of a raw partition. ``request_json`` / ``response_json`` hold the logged objects verbatim
(null when the key is absent); ``extra_json`` any other top-level fields of the log document.
``record_id`` is stable across re-extractions: a hash of the document's index and id."""

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
    client: Elasticsearch,
    store: ArtifactStore,
    *,
    workload_id: str,
    source: LogSourceConfig,
    start: datetime,
    end: datetime,
    client_ids: list[str] | None = None,
    page_size: int | None = None,
    on_page: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Extract ``[start, end)`` of one workload into its day's raw partition, replacing any earlier one.

    ``on_page(pages, records)`` is called after each page is written (progress logging).
    Raises on any read or write error, leaving the previously committed partition as it was.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware datetimes")
    if not start < end:
        raise ValueError(f"empty interval: start {start.isoformat()} is not before end {end.isoformat()}")
    started = time.perf_counter()
    query = interval_query(source, workload_id, start, end, client_ids)
    pages = HitPages(client, source.index, query, page_size or source.page_size, source.keep_alive)
    day = partition_day(start)
    fields = SourceFields(source)
    clients: Counter[str] = Counter()
    records = page_count = 0
    with cyclic_gc_paused(), store.stage_partition(workload_id, day) as staged:
        writer = PartWriter(store, staged.part_path)
        try:
            for hits in _prefetch(pages):
                batch = fields.to_batch(hits)
                writer.write(batch)
                clients.update(
                    c if c is not None else "<none>" for c in batch.column("client_id").to_pylist()
                )
                records += len(hits)
                page_count += 1
                if on_page is not None:
                    on_page(page_count, records)
        finally:
            writer.close()
        assert pages.method is not None  # set as soon as iteration began
        commit = store.commit_partition(
            staged,
            {
                "interval_start": start.isoformat(),
                "interval_end": end.isoformat(),
                "records": records,
                "pages": page_count,
                "bytes": writer.bytes_written,
                "read_method": pages.method,
                "index": source.index,
                "query": query,
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
        read_method=pages.method,
        seconds=round(time.perf_counter() - started, 3),
        client_counts=dict(clients),
    )


class SourceFields:
    """Turns a page of hits into an Arrow batch in RAW_SCHEMA, tolerating any shape of ``_source``.

    ``request`` and ``response`` are copied as the raw JSON text the cluster returned; only the
    small routing fields and the response (for the first tool name) are decoded.
    """

    def __init__(self, source: LogSourceConfig) -> None:
        self.ts_field = source.timestamp_field
        self.workload_field = source.workload_field
        self.client_field = source.client_field
        self.known = {self.ts_field, self.workload_field, self.client_field, "request", "response"}

    def to_batch(self, hits: list[Hit]) -> pa.RecordBatch:
        n = len(hits)
        record_id: list[str] = [""] * n
        ts: list[int | None] = [None] * n
        workload: list[str | None] = [None] * n
        client: list[str | None] = [None] * n
        tool: list[str | None] = [None] * n
        request: list[str | None] = [None] * n
        response: list[str | None] = [None] * n
        extra: list[str | None] = [None] * n
        es_index: list[str] = [""] * n
        es_id: list[str] = [""] * n
        for i, hit in enumerate(hits):
            src = hit.source
            es_index[i] = hit.index
            es_id[i] = hit.id
            record_id[i] = hashlib.blake2b(f"{hit.index}/{hit.id}".encode(), digest_size=16).hexdigest()
            if (raw := src.get(self.ts_field)) is not None:
                ts[i] = _epoch_ms(_decode(raw))
            if (raw := src.get(self.workload_field)) is not None:
                workload[i] = _as_text(raw)
            if (raw := src.get(self.client_field)) is not None:
                client[i] = _as_text(raw)
            if (raw := src.get("request")) is not None:
                request[i] = bytes(raw).decode()
            if (raw := src.get("response")) is not None:
                response[i] = bytes(raw).decode()
                tool[i] = _first_tool_name(_decode(raw))
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
                pa.array(es_index, pa.string()),
                pa.array(es_id, pa.string()),
            ],
            schema=RAW_SCHEMA,
        )


_decode = msgspec.json.Decoder().decode
_json_text = msgspec.json.Encoder().encode


def batches_of_hits(
    hits: Iterable[Hit], source: LogSourceConfig, chunk_rows: int = 5_000
) -> Iterator[pa.RecordBatch]:
    """Raw batches (RAW_SCHEMA) from hits that did not come out of a search (a JSONL file, generated
    demo traffic), converted exactly as extraction converts a page."""
    fields = SourceFields(source)
    page: list[Hit] = []
    for hit in hits:
        page.append(hit)
        if len(page) == chunk_rows:
            yield fields.to_batch(page)
            page = []
    if page:
        yield fields.to_batch(page)


def _as_text(raw: msgspec.Raw) -> str | None:
    """A routing field as text: strings as they are, JSON null as None, anything else as its JSON."""
    value = _decode(raw)
    if value is None or isinstance(value, str):
        return value
    return bytes(raw).decode()


def _epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds of a logged timestamp (ISO 8601 text or epoch millis); None if unreadable."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return int(value) if value.isdigit() else None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


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


def _prefetch(pages: Iterable[list[Hit]]) -> Iterator[list[Hit]]:
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
