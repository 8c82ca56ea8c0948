"""Log sources: where the extract stage reads a workload's production logs from.

A log source reads one data interval ``[start, end)`` of one workload (optionally only some clients) as
pages of raw records: each record is one log document, its top-level fields kept as undecoded JSON,
with the id the source itself gives it. Everything after the read (the raw Parquet partition, its
atomic commit, the accounting) is shared by every source: see
:func:`flywheel.extract.partition.extract_interval`.

A source is its own ``log_source`` config block: a :class:`LogSource` subclass declares its options as
fields and reads with them. ``log_source.type`` names it in :data:`LOG_SOURCES`: ``elasticsearch`` (the
default) and ``files`` are built in; the user's own is named by its dotted path. The config is validated
at DAG parse time, so the modules of sources import nothing heavy at module level.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field, ValidationInfo, field_validator

from flywheel.config import PluginConfig
from flywheel.errors import PermanentError, RetryableError
from flywheel.plugins import Registry

if TYPE_CHECKING:
    import msgspec


class SourceRecord(Protocol):
    """One log document as a source read it: its top-level fields as raw JSON, and the source's own id."""

    @property
    def source_record_id(self) -> str:
        """The document's id in its source, stable across re-reads (an index and ``_id``, a file and line)."""
        ...

    @property
    def document(self) -> Mapping[str, msgspec.Raw]:
        """The document's top-level fields, each value its undecoded JSON text."""
        ...


@dataclass(frozen=True)
class LogWindow:
    """What one read selects: a workload's records with ``start <= timestamp < end``, some clients or all."""

    workload_id: str
    start: datetime
    end: datetime
    client_ids: list[str] | None = None


@dataclass
class ReadReport:
    """What a source tells about one read, filled in while it reads.

    ``method`` names how it read (``pit``, ``scroll``, ``jsonl``...; 1 to 16 characters) for the run's
    summary; ``details`` what it selected and saw, for the raw partition's record. ``expected_records``
    is the store's own count of the window's records, where it can count them: extraction fails (and
    commits nothing) when the records it wrote differ, rather than commit a day with records missing.
    """

    method: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    expected_records: int | None = None


class LogSource(PluginConfig):
    """A place logs are read from, configured by a workload's ``log_source`` block.

    Subclass it to add one: declare the source's options as fields (``type`` included) and implement
    :meth:`pages` (and :meth:`count` where the store counts faster than it reads). The fields here are
    the names of the routing fields of a log document, which every source filters by and the raw
    partition's writer reads, the page size, and the settle delay and recount of late logs.
    """

    timestamp_field: str = Field(
        "timestamp", description="Top-level field with each record's time (ISO 8601 or epoch milliseconds)."
    )
    workload_field: str = Field("workload_id", description="Top-level field with the workload id.")
    client_field: str = Field("client_id", description="Top-level field with the client id.")
    page_size: int = Field(
        1000, ge=10, le=10_000, description="Records per page read (memory holds about three pages)."
    )
    settle_minutes: int = Field(
        30,
        ge=0,
        le=720,
        description="Minutes a night's extraction waits after its window ends before reading, so that "
        "logs indexed late (ingest lag, refresh interval, buffered shippers) are in the store.",
    )
    recount_days: int = Field(
        1,
        ge=0,
        le=30,
        description="Each run counts the windows of this many previous days in the store again and alerts "
        "when a count moved since extraction (late logs); 0: no recount.",
    )

    @property
    def location(self) -> str:
        """What the source reads, in a few plain words (``flywheel config check``, the DAG's docs)."""
        return self.type

    @abstractmethod
    def pages(self, window: LogWindow, page_size: int, report: ReadReport) -> Iterator[list[SourceRecord]]:
        """The window's records, a page (a list of at most ``page_size`` records) at a time.

        A record whose timestamp cannot be read is yielded anyway, never dropped: validation quarantines
        it with a reason. Set ``report.method`` once the read has begun. Closing the iterator early (a
        failed write) must release whatever the read holds open. May run on a background thread.
        """

    def count(self, window: LogWindow) -> int:
        """How many records the store holds in ``window`` now: exactly the records :meth:`pages` would yield.

        The late-logs recount (:mod:`flywheel.extract.recount`) compares it with the records extracted
        earlier. This default reads the window through :meth:`pages`; a store that can count without
        reading (Elasticsearch's ``_count``) overrides it.
        """
        return sum(len(page) for page in self.pages(window, self.page_size, ReadReport()))


class BudgetedLogSource(LogSource):
    """A log source that holds what it reads to byte budgets, so that a few huge documents cannot exhaust
    the worker: a page's documents to ``max_page_bytes``, and a document over ``max_document_bytes`` is
    kept as unparseable (its opening bytes and why, :func:`flywheel.extract.documents.within_budget`), for
    validation to quarantine as ``document_too_large``. Both built-in sources are such sources; how a
    page is held to its budget is each one's own (see theirs)."""

    max_page_bytes: int = Field(
        50_000_000,
        ge=1_000_000,
        description="Byte budget of one page of documents. elasticsearch: the point-in-time read asks for "
        "fewer documents per page to fit, a scroll page over it fails the read; files: a page ends before "
        "it would exceed it.",
    )
    max_document_bytes: int = Field(
        1_000_000,
        ge=1_000,
        description="A larger document is kept as unparseable (its first 1,000 bytes) and quarantined "
        "(document_too_large).",
    )

    @field_validator("max_document_bytes")
    @classmethod
    def _document_fits_a_page(cls, value: int, info: ValidationInfo) -> int:
        page = info.data.get("max_page_bytes")
        if page is not None and value > page:
            raise ValueError(f"{value} must not exceed max_page_bytes ({page})")
        return value


class LogSourceError(PermanentError):
    """A log source broke its contract: a page larger than asked for, no or too long a read method."""


class IncompleteReadError(RetryableError):
    """The read did not return the whole window: the store answered with partial results (failed shards,
    a timed-out search), a page was lost, or the records read differ from the store's own count.

    Nothing is committed; a retry of the task re-reads the window from its start.
    """


LOG_SOURCES: Registry[type[LogSource]] = Registry(
    "log source",
    {
        "elasticsearch": "flywheel.extract.sources.elasticsearch:ElasticsearchSource",
        "files": "flywheel.extract.sources.files:FilesSource",
    },
    base=LogSource,
)
"""``log_source.type`` -> its :class:`LogSource`; the user's own by dotted path."""
