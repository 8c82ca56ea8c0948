"""The ``elasticsearch`` log source: production logs read out of Elasticsearch, page by page, through the
Elasticsearch provider's hook.

The client is built from an Airflow connection (host, port, ``schema`` as URL scheme, login/password,
and client options in the connection's extra). Reads use a point in time with ``search_after`` where
the cluster has the ``_pit`` API (Elasticsearch 7.10+), and fall back to the scroll API otherwise
(OpenSearch and ES-compatible servers). Either way only one page of hits is held at a time.

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

from flywheel.errors import ConfigError
from flywheel.extract.sources import LogSource, LogWindow, ReadReport

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
    """The parts of search, scroll, point-in-time and error responses that a HitPages read uses."""

    hits: _Hits | None = None
    scroll_id: str | None = msgspec.field(name="_scroll_id", default=None)
    pit_id: str | None = None
    id: str | None = None
    error: Any = None
    status: int | None = None


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

        _decoder = msgspec.json.Decoder(_Envelope)

        def loads(self, data: bytes) -> dict[str, Any]:
            try:
                envelope = self._decoder.decode(data)
            except msgspec.DecodeError:
                return super().loads(data)  # not a search envelope (e.g. a proxy's error page)
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


class HitPages:
    """Iterate over every hit of a query, one page (list of hits) at a time.

    The client must come from ``connect(..., raw_hits=True)``. ``method`` tells which API served the
    read (``"pit"`` or ``"scroll"``) once iteration started.
    The point in time or scroll context is released when iteration ends, fails or is abandoned.
    """

    def __init__(
        self, client: Elasticsearch, index: str, query: dict[str, Any], page_size: int, keep_alive: str
    ) -> None:
        serializer = client.transport.serializers.get_serializer("application/json")
        if not isinstance(serializer, raw_hits_serializer()):
            raise TypeError("HitPages needs a client made by connect(..., raw_hits=True)")
        self.client = client
        self.index = index
        self.query = query
        self.page_size = page_size
        self.keep_alive = keep_alive
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
        try:
            while True:
                response = self.client.search(
                    pit={"id": pit_id, "keep_alive": self.keep_alive},
                    query=self.query,
                    size=self.page_size,
                    sort=[{"_shard_doc": "asc"}],
                    search_after=search_after,
                    track_total_hits=False,
                )
                pit_id = response.get("pit_id", pit_id)
                hits = response["hits"]["hits"]
                if not hits:
                    return
                yield hits
                search_after = hits[-1].sort
        finally:
            self._release(lambda: self.client.close_point_in_time(id=pit_id))

    def _scroll_pages(self) -> Iterator[list[Hit]]:
        response = self.client.search(
            index=self.index,
            query=self.query,
            size=self.page_size,
            scroll=self.keep_alive,
            sort=["_doc"],
        )
        scroll_id = response.get("_scroll_id")
        try:
            while hits := response["hits"]["hits"]:
                yield hits
                response = self.client.scroll(scroll_id=scroll_id, scroll=self.keep_alive)
                scroll_id = response.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                self._release(lambda: self.client.clear_scroll(scroll_id=scroll_id))

    @staticmethod
    def _release(close: Any) -> None:
        # Contexts expire on their own after keep_alive; failing to close one early is not an error.
        try:
            close()
        except Exception as exc:
            log.warning("could not release search context early: %s", exc)


class ElasticsearchSource(LogSource):
    """The ``elasticsearch`` log source: one term + range (+ terms) query over an index, read by
    :class:`HitPages` through the Airflow connection ``conn_id``."""

    type: Literal["elasticsearch"] = "elasticsearch"
    conn_id: str = Field("flywheel_logs", description="Airflow connection id of the Elasticsearch cluster.")
    index: str = Field(..., min_length=1, description="Index, alias or pattern, e.g. 'llm-logs-*'.")
    keep_alive: str = Field(
        "5m", pattern=r"^\d+[smh]$", description="PIT / scroll context lifetime per page."
    )
    request_timeout_s: float = Field(120.0, gt=0)

    @property
    def location(self) -> str:
        return self.index

    def pages(self, window: LogWindow, page_size: int, report: ReadReport) -> Iterator[list[Hit]]:
        client = connect(self.conn_id, self.request_timeout_s, raw_hits=True)
        query = interval_query(self, window.workload_id, window.start, window.end, window.client_ids)
        report.details.update(index=self.index, query=query)
        hit_pages = HitPages(client, self.index, query, page_size, self.keep_alive)
        iterator = iter(hit_pages)  # opens the point in time (or the scroll) and so sets its method
        report.method = hit_pages.method or ""
        yield from iterator
