"""The ``elasticsearch`` log source: production logs read out of Elasticsearch, page by page, through the
Elasticsearch provider's hook.

The client is built from an Airflow connection (host, port, ``schema`` as URL scheme, login/password,
and client options in the connection's extra). Reads use a point in time with ``search_after`` where
the cluster has the ``_pit`` API (Elasticsearch 7.10+), and fall back to the scroll API otherwise
(OpenSearch and ES-compatible servers). Either way only one page of hits is held at a time.

A read either returns the whole window or fails, so that a retry re-reads it: searches ask for no partial
results and every page's ``_shards.failed`` and ``timed_out`` are checked; a scroll call is never retried
inside a read (:class:`HitPages`); and the records read are reconciled with a ``_count`` of the same
window (:attr:`ReadReport.expected_records`). A document the decoder cannot read (nested too deeply) or
larger than ``max_document_bytes`` is kept as unparseable, for validation to quarantine, and pages are
held to ``max_page_bytes``.

The config is validated (at DAG parse time) by importing this module: the Elasticsearch client, which
takes seconds to import, is imported on first use only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from pydantic import Field

from flywheel.errors import ConfigError, PermanentError
from flywheel.extract.documents import (
    TOO_DEEP,
    UnparseableReason,
    split_array,
    split_object,
    unparseable_document,
    within_budget,
)
from flywheel.extract.sources import BudgetedLogSource, IncompleteReadError, LogWindow, ReadReport

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch
    from elasticsearch.serializer import OrjsonSerializer

log = logging.getLogger(__name__)


class Hit(msgspec.Struct):
    """One search hit whose ``_source`` fields are kept as raw JSON text, undecoded (a SourceRecord)."""

    index: str = msgspec.field(name="_index")
    id: str = msgspec.field(name="_id")
    document: dict[str, msgspec.Raw] = msgspec.field(name="_source", default_factory=dict)
    sort: list[Any] | None = None

    @property
    def source_record_id(self) -> str:
        """``<index>/<_id>``: the concrete index and the document's id (``GET <index>/_doc/<_id>``)."""
        return f"{self.index}/{self.id}"


class _Hits(msgspec.Struct):
    hits: list[Hit] = msgspec.field(default_factory=list)


class _Envelope(msgspec.Struct):
    """The parts of search, scroll, count, point-in-time and error responses that a HitPages read uses."""

    hits: _Hits | None = None
    scroll_id: str | None = msgspec.field(name="_scroll_id", default=None)
    pit_id: str | None = None
    id: str | None = None
    shards: dict[str, Any] | None = msgspec.field(name="_shards", default=None)
    timed_out: bool | None = None
    count: int | None = None
    error: Any = None
    status: int | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_hit_decoder = msgspec.json.Decoder(Hit)


def decode_deep_page(data: bytes) -> _Envelope:
    """A response whose fast decode hit the recursion limit: each hit decoded on its own, and one whose
    ``_source`` is too deep kept as unparseable (``document_too_deep``) instead of failing the page.

    Found without recursion (:func:`flywheel.extract.documents.split_object`); raises ``ValueError`` when
    ``data`` is not a JSON object.
    """
    members = split_object(data)
    hits_member = members.pop("hits", None)
    envelope = _envelope_decoder.decode(msgspec.json.encode(members))
    if hits_member is not None:
        array = split_object(bytes(hits_member)).get("hits")
        hits = [] if array is None else [_decode_hit(bytes(hit)) for hit in split_array(bytes(array))]
        envelope.hits = _Hits(hits)
    return envelope


def _decode_hit(text: bytes) -> Hit:
    try:
        return _hit_decoder.decode(text)
    except RecursionError:
        pass
    members = split_object(text)  # _index, _id, sort... are shallow: only _source can be this deep
    source = members.pop("_source", None)
    hit = _hit_decoder.decode(msgspec.json.encode(members))
    if source is not None:
        text = bytes(source).decode("utf-8", errors="replace")
        hit.document = unparseable_document(text, UnparseableReason.document_too_deep, TOO_DEEP)
    return hit


@functools.cache
def raw_hits_serializer() -> type[OrjsonSerializer]:
    """The serializer class of clients made for :class:`HitPages` (defined on first use, see above)."""
    from elasticsearch.serializer import OrjsonSerializer

    class RawHitsSerializer(OrjsonSerializer):
        """Decodes responses so that each hit's ``_source`` values stay raw JSON (:class:`Hit`).

        A page of log records is mostly request/response JSON that extraction stores as text anyway:
        keeping it raw avoids building and re-serialising a Python object tree per record, which is
        about ten times faster than a full decode. Only for clients used by :class:`HitPages`.
        """

        def loads(self, data: bytes) -> dict[str, Any]:
            try:
                envelope = _envelope_decoder.decode(data)
            except msgspec.DecodeError:
                return super().loads(data)  # not a search envelope (e.g. a proxy's error page)
            except RecursionError as too_deep:
                try:
                    envelope = decode_deep_page(bytes(data))
                except (ValueError, msgspec.DecodeError):
                    raise too_deep from None
            out = {f.encode_name: getattr(envelope, f.name) for f in msgspec.structs.fields(envelope)}
            out = {key: value for key, value in out.items() if value is not None}
            if envelope.hits is not None:
                out["hits"] = {"hits": envelope.hits.hits}
            return out

    return RawHitsSerializer


# Client options a connection's extra may carry, passed through to elasticsearch.Elasticsearch.
_CLIENT_OPTIONS = frozenset(
    {
        "api_key",
        "ca_certs",
        "verify_certs",
        "ssl_assert_fingerprint",
        "ssl_show_warn",
        "client_cert",
        "client_key",
        "http_compress",
        "max_retries",
        "retry_on_timeout",
        "node_class",
    }
)


def connect(conn_id: str, request_timeout_s: float = 120.0, *, raw_hits: bool = False) -> Elasticsearch:
    """An Elasticsearch client for the Airflow connection ``conn_id``, made by ElasticsearchPythonHook.

    ``raw_hits=True`` gives the client :class:`HitPages` needs: search hits come back as :class:`Hit`.
    """
    from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchPythonHook
    from airflow.sdk import BaseHook
    from elasticsearch.serializer import OrjsonSerializer

    conn = BaseHook.get_connection(conn_id)
    host = conn.host or "localhost"
    url = host if "://" in host else f"{conn.schema or 'http'}://{host}:{conn.port or 9200}"
    args: dict[str, Any] = {
        "request_timeout": request_timeout_s,
        "max_retries": 3,
        "retry_on_timeout": True,
        "serializer": raw_hits_serializer()() if raw_hits else OrjsonSerializer(),
    }
    if conn.login:
        args["basic_auth"] = (conn.login, conn.password or "")
    for key, value in conn.extra_dejson.items():
        if key not in _CLIENT_OPTIONS:
            raise ConfigError(
                f"connection {conn_id!r}: extra key {key!r} is not a supported client option "
                f"({', '.join(sorted(_CLIENT_OPTIONS))})"
            )
        args[key] = _import_object(value, conn_id) if key == "node_class" else value
    return ElasticsearchPythonHook(hosts=[url], es_conn_args=args).get_conn


def _import_object(path: str, conn_id: str) -> Any:
    from flywheel.plugins import PluginNotFoundError, import_object

    try:
        return import_object(str(path))
    except PluginNotFoundError as exc:
        raise ConfigError(f"connection {conn_id!r}: node_class {path!r} cannot be imported ({exc})") from None


def interval_query(
    source: ElasticsearchSource,
    workload_id: str,
    start: datetime,
    end: datetime,
    client_ids: list[str] | None,
) -> dict[str, Any]:
    """The bool filter selecting one workload's records in ``[start, end)``, optionally some clients."""
    filters: list[dict[str, Any]] = [
        {"term": {source.workload_field: workload_id}},
        {
            "range": {
                source.timestamp_field: {
                    "gte": start.isoformat(),
                    "lt": end.isoformat(),
                    "format": "strict_date_optional_time",
                }
            }
        },
    ]
    if client_ids:
        filters.append({"terms": {source.client_field: list(client_ids)}})
    return {"bool": {"filter": filters}}


class PageTooLargeError(PermanentError):
    """A scroll page took more bytes than ``max_page_bytes``: a scroll cannot change its page size
    mid-read, and a retry would fetch the same page. Lower the page size or raise the budget."""


class HitPages:
    """Iterate over every hit of a query, one page (list of hits) at a time.

    The client must come from ``connect(..., raw_hits=True)``. ``method`` tells which API served the
    read (``"pit"`` or ``"scroll"``) once iteration started.
    The point in time or scroll context is released when iteration ends, fails or is abandoned.

    Every page is whole or the read fails (:class:`IncompleteReadError`, retryable: the task's retry
    re-reads the window from the start). Searches send ``allow_partial_search_results=false``, and each
    response's ``_shards.failed`` and ``timed_out`` are checked as well, since scroll continuations take
    no such parameter and not every compatible server honours it.

    Retries of a page request differ by method. A point-in-time search names its position
    (``search_after``), so the client may retry it: the same request returns the same page. A scroll
    call does not: the server advances the cursor when it serves the call, so when the answer is lost
    (a timeout, a dropped connection, a proxy's 502) a retried call returns the *next* page and one page
    is skipped without a trace. Scroll sort values (``_doc``) are per shard, so a skip cannot be
    detected reliably either. Scroll calls therefore go out with the client's retries disabled, and a
    failed scroll call fails the whole read. (The search that opens a scroll keeps its retries: a retry
    opens a new scroll at the start, and the lost one expires after ``keep_alive``.)

    ``max_document_bytes`` keeps a larger document as unparseable (its opening bytes and why), so that
    validation quarantines it instead of it travelling through every stage. ``max_page_bytes`` bounds
    the documents' bytes per page: the point-in-time read sizes each next page to fit the bytes per
    document it has seen; a scroll, whose page size is fixed when it opens, fails with
    :class:`PageTooLargeError` on a page over the budget. The first page cannot be sized in advance.
    """

    def __init__(
        self,
        client: Elasticsearch,
        index: str,
        query: dict[str, Any],
        page_size: int,
        keep_alive: str,
        *,
        max_page_bytes: int | None = None,
        max_document_bytes: int | None = None,
    ) -> None:
        serializer = client.transport.serializers.get_serializer("application/json")
        if not isinstance(serializer, raw_hits_serializer()):
            raise TypeError("HitPages needs a client made by connect(..., raw_hits=True)")
        self.client = client
        self.index = index
        self.query = query
        self.page_size = page_size
        self.keep_alive = keep_alive
        self.max_page_bytes = max_page_bytes
        self.max_document_bytes = max_document_bytes
        self.method: str | None = None

    def __iter__(self) -> Iterator[list[Hit]]:
        pit_id = self._open_pit()
        if pit_id is not None:
            self.method = "pit"
            return self._pit_pages(pit_id)
        self.method = "scroll"
        return self._scroll_pages()

    def _open_pit(self) -> str | None:
        from elasticsearch import ApiError

        try:
            return self.client.open_point_in_time(index=self.index, keep_alive=self.keep_alive)["id"]
        except ApiError as exc:
            if exc.status_code not in (400, 404, 405) or exc.error == "index_not_found_exception":
                raise
            log.info("point in time unavailable on this cluster (%s); reading with scroll", exc.message)
            return None

    def _pit_pages(self, pit_id: str) -> Iterator[list[Hit]]:
        search_after: list[Any] | None = None
        size = self.page_size
        page = 1
        try:
            while True:
                response = self.client.search(
                    pit={"id": pit_id, "keep_alive": self.keep_alive},
                    query=self.query,
                    size=size,
                    sort=[{"_shard_doc": "asc"}],
                    search_after=search_after,
                    track_total_hits=False,
                    allow_partial_search_results=False,
                )
                pit_id = response.get("pit_id", pit_id)
                hits = self._whole_page(response, f"point-in-time page {page}")
                if not hits:
                    return
                page_bytes = self._bound_documents(hits)
                yield hits
                search_after = hits[-1].sort
                size = self._next_size(size, len(hits), page_bytes)
                page += 1
        finally:
            self._release(lambda: self.client.close_point_in_time(id=pit_id))

    def _scroll_pages(self) -> Iterator[list[Hit]]:
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        response = self.client.search(
            index=self.index,
            query=self.query,
            size=self.page_size,
            scroll=self.keep_alive,
            sort=["_doc"],
            allow_partial_search_results=False,
        )
        scroll_id = response.get("_scroll_id")
        no_retries = self.client.options(max_retries=0)  # a retried scroll call can skip a page
        page = 1
        try:
            while hits := self._whole_page(response, f"scroll page {page}"):
                page_bytes = self._bound_documents(hits)
                if self.max_page_bytes is not None and page_bytes > self.max_page_bytes:
                    raise PageTooLargeError(
                        f"scroll page {page} of {self.index!r} holds {len(hits)} documents of {page_bytes} "
                        f"bytes, over log_source.max_page_bytes ({self.max_page_bytes}); a scroll cannot "
                        "change its page size mid-read: lower log_source.page_size (or the run's page_size "
                        "param) or raise max_page_bytes"
                    )
                yield hits
                page += 1
                try:
                    response = no_retries.scroll(scroll_id=scroll_id, scroll=self.keep_alive)
                except (ApiError, TransportError) as exc:
                    raise IncompleteReadError(
                        f"scroll page {page} of {self.index!r} failed ({type(exc).__name__}: {exc}); the "
                        "cluster may have moved its cursor past that page, so the read stops instead of "
                        "retrying the call, and a retry of the task re-reads the window from the start"
                    ) from exc
                scroll_id = response.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                self._release(lambda: self.client.clear_scroll(scroll_id=scroll_id))

    def _whole_page(self, response: Any, what: str) -> list[Hit]:
        """The page's hits; :class:`IncompleteReadError` when shards failed or the search timed out."""
        check_complete(response, f"{what} of {self.index!r}")
        return response["hits"]["hits"]

    def _bound_documents(self, hits: list[Hit]) -> int:
        """The documents' bytes in the page, keeping each over ``max_document_bytes`` as unparseable."""
        total = 0
        for hit in hits:
            hit.document, size = within_budget(hit.document, self.max_document_bytes)
            total += size
        return total

    def _next_size(self, size: int, records: int, page_bytes: int) -> int:
        """The next point-in-time page's size: the page size, or fewer records where the last page's bytes
        per document would take the page over ``max_page_bytes``."""
        if self.max_page_bytes is None or page_bytes == 0:
            return self.page_size
        fitting = max(1, min(self.page_size, self.max_page_bytes * records // page_bytes))
        if fitting < size:
            log.warning(
                "a page of %d documents took %d bytes (log_source.max_page_bytes %d): asking for %d per page",
                records,
                page_bytes,
                self.max_page_bytes,
                fitting,
            )
        return fitting

    def count(self) -> int:
        """The cluster's own count of the query's documents now (``_count``), for reconciling a read."""
        response = self.client.count(index=self.index, query=self.query)
        check_complete(response, f"count of {self.index!r}")
        return int(response["count"])

    @staticmethod
    def _release(close: Any) -> None:
        # Contexts expire on their own after keep_alive; failing to close one early is not an error.
        try:
            close()
        except Exception as exc:
            log.warning("could not release search context early: %s", exc)


def check_complete(response: Any, what: str) -> None:
    """Raise :class:`IncompleteReadError` when a search, scroll or count answer is partial: failed
    shards (``_shards.failed``) or a search that timed out (``timed_out``)."""
    shards = response.get("_shards") or {}
    failed = shards.get("failed") or 0
    if failed:
        raise IncompleteReadError(
            f"{what}: {failed} of {shards.get('total', '?')} shards failed "
            f"({_shard_failure(shards.get('failures'))}); the answer is partial, so the read stops and a "
            "retry re-reads the window"
        )
    if response.get("timed_out"):
        raise IncompleteReadError(
            f"{what}: the search timed out on the cluster and answered with partial results; the read "
            "stops and a retry re-reads the window"
        )


def _shard_failure(failures: Any) -> str:
    if not isinstance(failures, list) or not failures or not isinstance(failures[0], dict):
        return "no reason given"
    first = failures[0]
    reason = first.get("reason")
    if isinstance(reason, dict):
        reason = f"{reason.get('type', '?')}: {reason.get('reason', '')}"
    return f"shard {first.get('shard', '?')} of {first.get('index', '?')}: {reason}"


class ElasticsearchSource(BudgetedLogSource):
    """The ``elasticsearch`` log source: one term + range (+ terms) query over an index, read by
    :class:`HitPages` through the Airflow connection ``conn_id``."""

    type: Literal["elasticsearch"] = "elasticsearch"
    conn_id: str = Field("flywheel_logs", description="Airflow connection id of the Elasticsearch cluster.")
    index: str = Field(..., min_length=1, description="Index, alias or pattern, e.g. 'llm-logs-*'.")
    keep_alive: str = Field(
        "5m", pattern=r"^\d+[smh]$", description="PIT / scroll context lifetime per page."
    )
    request_timeout_s: float = Field(120.0, gt=0, description="Timeout of each request to the cluster.")

    @property
    def location(self) -> str:
        return self.index

    def pages(self, window: LogWindow, page_size: int, report: ReadReport) -> Iterator[list[Hit]]:
        client = connect(self.conn_id, self.request_timeout_s, raw_hits=True)
        query = interval_query(self, window.workload_id, window.start, window.end, window.client_ids)
        report.details.update(index=self.index, query=query)
        hit_pages = HitPages(
            client,
            self.index,
            query,
            page_size,
            self.keep_alive,
            max_page_bytes=self.max_page_bytes,
            max_document_bytes=self.max_document_bytes,
        )
        iterator = iter(hit_pages)  # opens the point in time (or the scroll) and so sets its method
        report.method = hit_pages.method or ""
        yield from iterator
        # Counted after the read, so that documents written into the window meanwhile fail it too.
        report.expected_records = hit_pages.count()

    def count(self, window: LogWindow) -> int:
        """The cluster's ``_count`` of the window's query: no documents are read."""
        client = connect(self.conn_id, self.request_timeout_s)
        query = interval_query(self, window.workload_id, window.start, window.end, window.client_ids)
        response = client.count(index=self.index, query=query).body
        check_complete(response, f"count of {self.index!r}")
        return int(response["count"])
