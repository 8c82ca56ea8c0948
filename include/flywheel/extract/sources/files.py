"""The ``files`` log source: day-partitioned JSONL or Parquet request logs under any fsspec URL.

Gateways and proxies commonly export their request logs to object storage, one folder per UTC day
(``s3://gateway-logs/chat/dt=2026-11-20/part-0001.jsonl.gz``). Each JSONL line or Parquet row is one
log document of the shape the Elasticsearch index holds: the OpenAI chat-completions ``request`` and
``response`` objects and the timestamp, workload and client fields the config names.

A read of ``[start, end)`` scans the day folders the window overlaps (``{url}/{layout}``, subfolders
included, files sorted by path) and keeps the workload's records whose timestamp is inside the window
(and whose client is asked for), exactly the selection the Elasticsearch query makes. Two kinds of
records cannot be placed by timestamp and are kept rather than dropped, so that validation quarantines
them with a reason: lines that are not JSON objects and the workload's records whose timestamp cannot
be read. Each is kept by exactly one window, the one whose partition day is its folder's day, so a
re-read or the next day's run never counts it twice. A record's own id is its file's URL and its
1-based line (``<url>/line-<n>``) or row (``<url>/row-<n>``), stable across re-reads.

What a read holds is bounded as in the Elasticsearch source (:class:`BudgetedLogSource`): a JSONL line
is read a block at a time and never held past ``max_document_bytes`` (a longer one, or a Parquet row
over it, is kept as unparseable: its opening bytes and why), a line nested too deeply to decode is kept
as unparseable too, and a page ends before its documents would take more than ``max_page_bytes``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, timedelta
from typing import Any, Literal

import msgspec
from pydantic import Field, field_validator

from flywheel.extract.documents import (
    OPENING_BYTES,
    RawRecord,
    as_text,
    decode_document,
    field_epoch_ms,
    is_unparseable,
    too_large_document,
    within_budget,
)
from flywheel.extract.sources import BudgetedLogSource, LogWindow, ReadReport
from flywheel.intervals import partition_day

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_is_json = msgspec.json.Decoder().decode


class FilesSource(BudgetedLogSource):
    """The ``files`` log source: a workload's logs read from day folders of JSONL or Parquet files."""

    type: Literal["files"] = "files"
    url: str = Field(
        ..., min_length=1, description="Root of the day folders: a path or fsspec URL (s3://bucket/logs)."
    )
    format: Literal["jsonl", "parquet"] = Field(
        "jsonl", description="jsonl: a JSON document per line; .gz, .bz2, .xz, .zst files are decompressed."
    )
    layout: str = Field(
        "dt={date}",
        min_length=1,
        description="Day folder under url: {date} (2026-11-20), {year}, {month}, {day}.",
    )
    pattern: str | None = Field(
        None, description="Glob of the file names to read; null: every file not starting with '_' or '.'."
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec filesystem options.")

    @field_validator("layout")
    @classmethod
    def _layout_names_the_day(cls, value: str) -> str:
        try:
            filled = value.format(date="2026-11-20", year="2026", month="11", day="20")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{date}}, {{year}}, {{month}} and {{day}} may be used ({exc})") from None
        if filled == value:
            raise ValueError("must name the day, e.g. 'dt={date}' or '{year}/{month}/{day}'")
        return value

    @property
    def location(self) -> str:
        return f"{self.url.rstrip('/')}/{self.layout} ({self.format})"

    def day_folder(self, day: date) -> str:
        """The folder of a UTC day's files, relative to ``url``."""
        return self.layout.format(
            date=day.isoformat(), year=f"{day.year:04d}", month=f"{day.month:02d}", day=f"{day.day:02d}"
        ).strip("/")

    def pages(self, window: LogWindow, page_size: int, report: ReadReport) -> Iterator[list[RawRecord]]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        report.method = self.format
        counts: Counter[str] = Counter()
        day_folders: list[str] = []
        missing: list[str] = []
        report.details.update(url=self.url, day_folders=day_folders, missing_day_folders=missing)
        select = _Selection(self, window)
        owner_day = partition_day(window.start)
        page: list[RawRecord] = []
        page_bytes = 0
        for day in _days(window):
            folder = f"{root.rstrip('/')}/{self.day_folder(day)}"
            day_folders.append(fs.unstrip_protocol(folder))
            paths = self._files(fs, folder)
            if paths is None:
                missing.append(fs.unstrip_protocol(folder))
                log.warning("no day folder %s: no logs of %s", folder, day.isoformat())
                continue
            for path in paths:
                counts["files_read"] += 1
                for record, size in self._records(fs, path, page_size):
                    counts["documents_read"] += 1
                    kept = select.keep(record.document, owns_unplaceable=day == owner_day)
                    if kept is None:
                        continue
                    counts[kept] += 1
                    if page and page_bytes + size > self.max_page_bytes:
                        yield page
                        page, page_bytes = [], 0
                    page.append(record)
                    page_bytes += size
                    if len(page) == page_size:
                        yield page
                        page, page_bytes = [], 0
        if page:
            yield page
        report.details.update({key: counts[key] for key in ("files_read", "documents_read", *_KEPT_UNPLACED)})

    def _files(self, fs: Any, folder: str) -> list[str] | None:
        """The day folder's files to read, sorted; None when the folder does not exist."""
        if not fs.isdir(folder):
            return None
        pattern = self.pattern
        paths = []
        for path in sorted(fs.find(folder)):
            relative = path[len(folder) :].strip("/").split("/")
            # Markers and temporary output (_SUCCESS, _temporary/, .part files) are not logs.
            if any(part.startswith(("_", ".")) for part in relative):
                continue
            if pattern is None or fnmatch.fnmatch(relative[-1], pattern):
                paths.append(path)
        return paths

    def _records(self, fs: Any, path: str, batch_rows: int) -> Iterator[tuple[RawRecord, int]]:
        """The file's records, each with the bytes of its document as read; a document over
        ``max_document_bytes`` comes as its stand-in."""
        url = fs.unstrip_protocol(path)
        limit = self.max_document_bytes
        if self.format == "parquet":
            for record in _parquet_records(fs, path, url, batch_rows):
                document, size = within_budget(record.document, limit)
                yield RawRecord(record.source_record_id, document), size
            return
        with fs.open(path, "rb", compression="infer") as stream:
            for number, (line, size) in enumerate(bounded_lines(stream, limit), start=1):
                if size > limit:
                    opening = line[:OPENING_BYTES].decode("utf-8", errors="replace")
                    yield RawRecord(f"{url}/line-{number}", too_large_document(opening, size, limit)), size
                elif line.strip():
                    yield RawRecord(f"{url}/line-{number}", decode_document(line)), size


_BLOCK_BYTES = 1 << 20
"""How much of a file is read at a time."""


def bounded_lines(stream: Any, limit: int) -> Iterator[tuple[bytes, int]]:
    """Each line of a binary stream (without its newline) and its length in bytes; a line longer than
    ``limit`` comes cut to its first ``limit`` bytes (its length says how long it was).

    The stream is read :data:`_BLOCK_BYTES` at a time, so a line of any length never takes more than
    ``limit`` bytes of memory (iterating over a file's lines would hold a whole line, however long).
    """
    head = b""  # the start of a line that goes on in the next block (at most limit bytes)
    size = 0  # that line's bytes so far
    while block := stream.read(_BLOCK_BYTES):
        *ended, rest = block.split(b"\n")
        for piece in ended:
            if size:
                yield head + piece[: max(0, limit - len(head))], size + len(piece)
                head, size = b"", 0
            else:
                yield piece[:limit], len(piece)
        if len(head) < limit:
            head += rest[: limit - len(head)]
        size += len(rest)
    if size:
        yield head, size


_IN_WINDOW = "in_window"
_UNPARSEABLE = "kept_unparseable"
_NO_TIMESTAMP = "kept_without_timestamp"
_KEPT_UNPLACED = (_UNPARSEABLE, _NO_TIMESTAMP)
"""Counts of records kept although no timestamp places them in the window (validation quarantines them)."""


class _Selection:
    """The Elasticsearch query's selection (workload term, clients terms, timestamp range) on a document."""

    def __init__(self, source: FilesSource, window: LogWindow) -> None:
        self.source = source
        self.workload_id = window.workload_id
        self.client_ids = set(window.client_ids) if window.client_ids else None
        self.start_ms = int(window.start.timestamp() * 1000)
        self.end_ms = int(window.end.timestamp() * 1000)

    def keep(self, document: dict[str, msgspec.Raw], *, owns_unplaceable: bool) -> str | None:
        """Why the document is this window's (in it, or kept unplaced); None when it is not."""
        if is_unparseable(document):
            return _UNPARSEABLE if owns_unplaceable else None
        if _text(document, self.source.workload_field) != self.workload_id:
            return None
        if self.client_ids is not None and _text(document, self.source.client_field) not in self.client_ids:
            return None
        moment = field_epoch_ms(document, self.source.timestamp_field)
        if moment is None:
            return _NO_TIMESTAMP if owns_unplaceable else None
        return _IN_WINDOW if self.start_ms <= moment < self.end_ms else None


def _text(document: dict[str, msgspec.Raw], field: str) -> str | None:
    raw = document.get(field)
    return None if raw is None else as_text(raw)


def _days(window: LogWindow) -> Iterator[date]:
    """The UTC days ``[start, end)`` overlaps, in order."""
    day = window.start.astimezone(UTC).date()
    last = (window.end - timedelta(microseconds=1)).astimezone(UTC).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


_JSON_TEXT_COLUMNS = ("request", "response")
"""Columns that exports often store as JSON text rather than as nested Parquet types."""


def _parquet_records(fs: Any, path: str, url: str, batch_rows: int) -> Iterator[RawRecord]:
    """The rows of a Parquet file as documents, ``batch_rows`` rows in memory at a time.

    Null cells are absent fields. Nested columns become JSON objects and arrays; a ``request`` or
    ``response`` string that holds JSON is taken as that JSON (exports often store them as text), and so
    is one nested too deeply to check (validation quarantines it as ``unreadable_json``).
    """
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        number = 0
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                number += 1
                document = {column: _raw(column, v) for column, v in row.items() if v is not None}
                yield RawRecord(f"{url}/row-{number}", document)


def _raw(column: str, value: Any) -> msgspec.Raw:
    if column in _JSON_TEXT_COLUMNS and isinstance(value, str) and _holds_json(value):
        return msgspec.Raw(value.encode())
    return msgspec.Raw(_encode(value))


def _holds_json(text: str) -> bool:
    """Whether ``text`` is JSON; text nested too deeply to check counts as JSON (validation judges it)."""
    try:
        _is_json(text)
    except msgspec.DecodeError:
        return False
    except RecursionError:
        return True
    return True
