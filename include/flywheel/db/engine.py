"""Where the metadata database is and how to open it: a URL, or an Airflow connection in production."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from flywheel.config import MetadataConfig
from flywheel.errors import ConfigError


def resolve_url(metadata: MetadataConfig) -> URL:
    """The SQLAlchemy URL of the metadata database: from ``conn_id`` when set, else ``url``."""
    if metadata.conn_id is None:
        return make_url(metadata.url)
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(metadata.conn_id)
    if conn.conn_type in ("postgres", "postgresql"):
        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
            query={k: str(v) for k, v in conn.extra_dejson.items() if k in ("sslmode", "options")},
        )
    if conn.conn_type == "sqlite":
        return make_url(f"sqlite:///{conn.host}")
    raise ConfigError(
        f"metadata.conn_id: connection {metadata.conn_id!r} has conn_type {conn.conn_type!r}; "
        "use a postgres or sqlite connection"
    )


@cache
def _engine_for(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # Enforce foreign keys; WAL lets the Airflow task and a CLI reader work side by side.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True)


def get_engine(metadata: MetadataConfig) -> Engine:
    """A process-wide engine for the configured metadata database."""
    return _engine_for(resolve_url(metadata).render_as_string(hide_password=False))


@contextmanager
def session_scope(metadata: MetadataConfig) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with sessionmaker(get_engine(metadata), expire_on_commit=False).begin() as session:
        yield session
