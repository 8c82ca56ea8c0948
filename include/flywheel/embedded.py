"""The embedded default's log store: a local Elasticsearch-compatible server for the demo and the tests.

`osmem-server` (an in-memory OpenSearch 3.x REST server, see ENVIRONMENT.md) stands in for the
production Elasticsearch cluster. The official Elasticsearch client announces
``application/vnd.elasticsearch+json; compatible-with=N``, which that server rejects, so the demo's
Airflow connection names :class:`CompatibleMediaTypeNode` as its ``node_class``. This module is the
only difference between the embedded default and production: nothing else imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from elastic_transport import Urllib3HttpNode

NODE_CLASS_PATH = "flywheel.embedded:CompatibleMediaTypeNode"


class CompatibleMediaTypeNode(Urllib3HttpNode):
    """HTTP node that sends plain JSON media types instead of Elasticsearch's vendor types."""

    def perform_request(
        self, method: str, target: str, body: bytes | None = None, headers: Any = None, **kw: Any
    ):  # type: ignore[no-untyped-def,override]
        if headers:
            headers = headers.copy()
            for name in ("content-type", "accept"):
                value = headers.get(name)
                if value and "vnd.elasticsearch+" in value:
                    headers[name] = "application/x-ndjson" if "x-ndjson" in value else "application/json"
        return super().perform_request(method, target, body=body, headers=headers, **kw)


@dataclass
class LocalLogStore:
    """A running local log store process; stop it with :meth:`close` or a ``with`` block."""

    server: Any  # osmem_server.OsmemServer

    @classmethod
    def start(cls, addr: str = "127.0.0.1:0") -> LocalLogStore:
        """Start an empty server on ``addr`` (port 0 picks a free port); it dies with this process."""
        from osmem_server import OsmemServer

        return cls(OsmemServer.start(addr=addr, japanese=False))

    @property
    def url(self) -> str:
        return self.server.url

    def connection_env(self, conn_id: str) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` environment entry that points the Elasticsearch connection here."""
        host_port = self.url.split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        conn = {
            "conn_type": "elasticsearch",
            "host": host,
            "port": int(port),
            "schema": "http",
            "extra": {"node_class": NODE_CLASS_PATH},
        }
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> LocalLogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
