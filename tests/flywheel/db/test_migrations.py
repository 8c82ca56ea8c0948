"""Tests of the metadata database: migrations on SQLite and a real PostgreSQL server, URL resolution from an
Airflow connection, and run/stage tracking.

The PostgreSQL server is started once per session from the local binaries (``make test`` installs them).
"""

from __future__ import annotations

import glob
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.config import MetadataConfig
from flywheel.db.engine import get_engine, resolve_url, session_scope
from flywheel.db.migrate import MIGRATIONS_DIR, current_revision, head_revision, upgrade
from flywheel.db.models import Base, Evaluation, Run, RunStage
from flywheel.errors import ConfigError
from flywheel.tracking import StageRecord, ensure_run, record_evaluation, record_stage
from postgres import PostgresServer, pg_binary

TABLES = {
    "runs",
    "run_stages",
    "raw_partitions",
    "validated_partitions",
    "datasets",
    "evaluations",
    "model_versions",
    "model_aliases",
    "alias_events",
    "decisions",
}
START = datetime(2026, 11, 20, 2, tzinfo=UTC)
END = datetime(2026, 11, 21, 2, tzinfo=UTC)


def airflow_connection_env(server: PostgresServer, database: str, **extra: object) -> str:
    payload: dict[str, object] = {
        "conn_type": "postgres",
        "host": server.host,
        "port": server.port,
        "login": "postgres",
        "schema": database,
    }
    if extra:
        payload["extra"] = extra
    return json.dumps(payload)


# --- engines on both backends -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The engine of an empty metadata database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'metadata.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    engine = get_engine(MetadataConfig(url=url))
    yield engine
    engine.dispose()


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_single_head_revision() -> None:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = ScriptDirectory.from_config(cfg).get_heads()

    assert heads == [head_revision()]
    assert head_revision() is not None


def test_upgrade_fresh_database_reaches_head(fresh_engine: Engine) -> None:
    assert current_revision(fresh_engine) is None
    assert TABLES.isdisjoint(inspect(fresh_engine).get_table_names())

    revision = upgrade(fresh_engine)

    assert revision == head_revision()
    assert current_revision(fresh_engine) == head_revision()
    assert {*TABLES, "alembic_version"} <= set(inspect(fresh_engine).get_table_names())
    if fresh_engine.dialect.name == "sqlite":
        assert Path(fresh_engine.url.database or "").is_file()


def test_upgrade_twice_is_a_no_op(fresh_engine: Engine) -> None:
    upgrade(fresh_engine)
    with Session(fresh_engine) as session, session.begin():
        session.add(
            Run(workload_id="w", dag_id="flywheel_w", dag_run_id="r1", interval_start=START, interval_end=END)
        )
    tables_before = sorted(inspect(fresh_engine).get_table_names())

    assert upgrade(fresh_engine) == head_revision()

    assert sorted(inspect(fresh_engine).get_table_names()) == tables_before
    with fresh_engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            head_revision()
        ]
        assert conn.execute(select(Run.dag_run_id)).scalars().all() == ["r1"]


def test_migrated_schema_matches_models(fresh_engine: Engine) -> None:
    upgrade(fresh_engine)

    assert schema_differences(fresh_engine) == []


def test_empty_database_differs_from_models(fresh_engine: Engine) -> None:
    # The comparison above is meaningful: without the migrations every table is reported missing.
    added = {diff[1].name for diff in schema_differences(fresh_engine) if diff[0] == "add_table"}

    assert added == TABLES


def test_migrations_downgrade_to_base_and_back(fresh_engine: Engine) -> None:
    from alembic import command

    from flywheel.db.migrate import _alembic_config

    upgrade(fresh_engine)
    command.downgrade(_alembic_config(fresh_engine), "base")

    assert current_revision(fresh_engine) is None
    assert TABLES.isdisjoint(inspect(fresh_engine).get_table_names())
    assert upgrade(fresh_engine) == head_revision()
    assert schema_differences(fresh_engine) == []


def test_foreign_keys_are_enforced(fresh_engine: Engine) -> None:
    upgrade(fresh_engine)

    with pytest.raises(IntegrityError), Session(fresh_engine) as session, session.begin():
        session.add(RunStage(run_id=424242, stage="extract", try_number=1, status="running"))


# --- resolve_url from an Airflow connection ------------------------------------------------------


def test_resolve_url_without_conn_id_uses_url() -> None:
    url = resolve_url(MetadataConfig(url="sqlite:////srv/flywheel/flywheel.db"))

    assert url.drivername == "sqlite"
    assert url.database == "/srv/flywheel/flywheel.db"


def test_resolve_url_from_airflow_postgres_connection(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_METADATA", airflow_connection_env(postgres_server, "postgres"))
    metadata = MetadataConfig(conn_id="flywheel_metadata", url="sqlite:///never-used.db")

    url = resolve_url(metadata)

    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.host, url.port, url.database) == (
        "postgres",
        "127.0.0.1",
        postgres_server.port,
        "postgres",
    )
    assert url.password is None
    assert url.render_as_string(hide_password=False) == postgres_server.url()
    with get_engine(metadata).connect() as conn:
        assert conn.execute(text("SELECT current_database()")).scalar_one() == "postgres"


def test_resolve_url_keeps_only_ssl_and_options_extras(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FLYWHEEL_METADATA_SSL",
        airflow_connection_env(postgres_server, "flywheel", sslmode="disable", cursor="dict"),
    )

    url = resolve_url(MetadataConfig(conn_id="flywheel_metadata_ssl", url="sqlite://"))

    assert dict(url.query) == {"sslmode": "disable"}
    assert url.database == "flywheel"


def test_resolve_url_from_airflow_sqlite_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "meta.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_FLYWHEEL_METADATA_LITE", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )

    url = resolve_url(MetadataConfig(conn_id="flywheel_metadata_lite", url="sqlite://"))

    assert url.drivername == "sqlite"
    assert url.database == str(path)


def test_resolve_url_rejects_other_connection_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FLYWHEEL_METADATA_MYSQL", json.dumps({"conn_type": "mysql", "host": "db"})
    )

    with pytest.raises(ConfigError) as info:
        resolve_url(MetadataConfig(conn_id="flywheel_metadata_mysql", url="sqlite://"))

    assert str(info.value).startswith(
        "metadata.conn_id: connection 'flywheel_metadata_mysql' has conn_type 'mysql'"
    )


# --- tracking on PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
def pg_metadata(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> MetadataConfig:
    """A migrated PostgreSQL metadata database reached through the Airflow connection, like production."""
    database = postgres_server.create_database()
    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_METADATA", airflow_connection_env(postgres_server, database))
    metadata = MetadataConfig(conn_id="flywheel_metadata", url="sqlite:///never-used.db")
    engine = get_engine(metadata)
    assert engine.dialect.name == "postgresql"
    assert engine.url.database == database
    upgrade(engine)
    return metadata


def new_run(metadata: MetadataConfig, dag_run_id: str = "scheduled__2026-11-20T02:00:00+00:00") -> int:
    return ensure_run(
        metadata,
        workload_id="customer_support_router",
        dag_id="flywheel_customer_support_router",
        dag_run_id=dag_run_id,
        interval_start=START,
        interval_end=END,
    )


def fail_in_stage(
    metadata: MetadataConfig, run_id: int, error: BaseException, handles: list[StageRecord]
) -> None:
    """Record an ``extract`` stage that sets a summary and then fails with ``error``."""
    with record_stage(metadata, run_id, "extract") as handle:
        handles.append(handle)
        handle.summary = {"pages": 2}
        raise error


def test_ensure_run_twice_returns_the_same_id(pg_metadata: MetadataConfig) -> None:
    first = new_run(pg_metadata)
    again = new_run(pg_metadata)
    other = new_run(pg_metadata, dag_run_id="backfill__2026-11-19T02:00:00+00:00")

    assert again == first
    assert other != first
    with session_scope(pg_metadata) as session:
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        assert [r.id for r in runs] == [first, other]
        assert runs[0].interval_start == START
        assert runs[0].interval_end == END
        assert runs[0].created_at.tzinfo is not None


def test_record_stage_success_stores_summary(pg_metadata: MetadataConfig) -> None:
    run_id = new_run(pg_metadata)

    with record_stage(pg_metadata, run_id, "extract", try_number=2) as handle:
        with session_scope(pg_metadata) as session:
            assert session.get_one(RunStage, handle.id).status == "running"
        handle.summary = {"records": 1234, "read_method": "pit"}

    with session_scope(pg_metadata) as session:
        row = session.get_one(RunStage, handle.id)
        assert (row.run_id, row.stage, row.try_number, row.status) == (run_id, "extract", 2, "succeeded")
        assert row.summary == {"records": 1234, "read_method": "pit"}
        assert row.error is None
        assert row.finished_at is not None
        assert row.finished_at >= row.started_at


def test_record_stage_failure_stores_error_and_reraises(pg_metadata: MetadataConfig) -> None:
    run_id = new_run(pg_metadata)

    handles: list[StageRecord] = []
    with pytest.raises(ValueError, match="page 3 had no sort values"):
        fail_in_stage(pg_metadata, run_id, ValueError("page 3 had no sort values"), handles)
    [handle] = handles

    with session_scope(pg_metadata) as session:
        row = session.get_one(RunStage, handle.id)
        assert row.status == "failed"
        assert row.error == "ValueError: page 3 had no sort values"
        assert row.summary == {"pages": 2}
        assert row.finished_at is not None


def test_record_stage_truncates_long_errors(pg_metadata: MetadataConfig) -> None:
    run_id = new_run(pg_metadata)

    handles: list[StageRecord] = []
    with pytest.raises(RuntimeError):
        fail_in_stage(pg_metadata, run_id, RuntimeError("x" * 10_000), handles)
    [handle] = handles

    with session_scope(pg_metadata) as session:
        error = session.get_one(RunStage, handle.id).error
        assert error is not None
        assert len(error) == 4000
        assert error.startswith("RuntimeError: xxx")


def test_missing_postgres_binaries_fail_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(glob, "glob", lambda _pattern: [])

    with pytest.raises(pytest.fail.Exception, match=r"Run `make test`, which installs PostgreSQL"):
        pg_binary("initdb")


def test_record_evaluation_replaces_the_row_of_a_rerun(pg_metadata: MetadataConfig) -> None:
    run_id = new_run(pg_metadata)
    metrics = {"function_name_accuracy": {"value": 0.5, "ci_low": 0.2, "ci_high": 0.8, "n": 8}}
    failed = {"error": "JobFailedError", "message": "endpoint kept failing"}
    common = {
        "workload_id": "customer_support_router",
        "dataset_id": "2026-11-20-39c6a67447",
        "candidate_id": "smollm2-135m",
        "eval_type": "icl",
        "model": {"base_model": "smollm2-135m-instruct"},
        "result_uri": "s3://bucket/runs/x/result.json",
    }
    record_evaluation(pg_metadata, run_id, **common, result=None, error=failed)
    result = {
        "examples": 8,
        "examples_hash": "0123456789abcdef",
        "metrics": metrics,
        "latency_s": {"mean": 0.4, "p50": 0.3, "p95": 0.9},
        "examples_uri": "s3://bucket/runs/x/examples.jsonl",
    }
    record_evaluation(pg_metadata, run_id, **common, result=result, error=None)

    with session_scope(pg_metadata) as session:
        [row] = session.scalars(select(Evaluation)).all()
        assert (row.status, row.examples, row.error, row.latency_p95_s) == ("succeeded", 8, None, 0.9)
        assert row.metrics == metrics
        assert row.judge is None


def test_record_evaluation_of_a_job_without_output(pg_metadata: MetadataConfig) -> None:
    run_id = new_run(pg_metadata)
    record_evaluation(
        pg_metadata,
        run_id,
        workload_id="customer_support_router",
        dataset_id="2026-11-20-39c6a67447",
        candidate_id="champion",
        eval_type="champion",
        model={"endpoint": {"base_url": "http://vllm:8000/v1", "model": "router-student"}},
        result_uri="s3://bucket/runs/x/result.json",
        result=None,
        error=None,
    )
    with session_scope(pg_metadata) as session:
        row = session.scalars(select(Evaluation)).one()
        assert (row.status, row.metrics) == ("failed", None)
        assert row.error.startswith("NoOutput: ")


def test_upgrade_from_0005_keeps_registered_versions_and_lets_a_rerun_register_anew(
    fresh_engine: Engine,
) -> None:
    """0006: versions registered before keep their adapter path (no digests), the audit trail gains
    ``deployment``, and a run's variant may now hold several versions (one per model content)."""
    from sqlalchemy import insert

    from flywheel.db.models import ModelVersion

    upgrade(fresh_engine, "0005")
    versions = ModelVersion.__table__
    old = {"workload_id": "w", "candidate_id": "c", "eval_type": "customized", "created_at": START}
    with fresh_engine.begin() as conn:
        run_id = conn.execute(
            insert(Run.__table__)
            .values(
                workload_id="w", dag_id="flywheel_w", dag_run_id="r1", interval_start=START, interval_end=END
            )
            .returning(Run.__table__.c.id)
        ).scalar_one()
        adapter = {"adapter_uri": "/runs/w/adapter", "model": {"adapter": "/runs/w/adapter"}}
        conn.execute(insert(versions).values(**old, **adapter, version=1, run_id=run_id))

    assert upgrade(fresh_engine) == head_revision()

    assert {"adapter_sha256", "model_sha256"} <= {
        c["name"] for c in inspect(fresh_engine).get_columns("model_versions")
    }
    assert "deployment" in {c["name"] for c in inspect(fresh_engine).get_columns("alias_events")}
    with fresh_engine.begin() as conn:
        row = conn.execute(
            select(versions.c.adapter_uri, versions.c.adapter_sha256, versions.c.model_sha256)
        ).one()
        assert tuple(row) == ("/runs/w/adapter", None, None)
        for version, digest in ((2, "a" * 64), (3, "b" * 64)):  # the same run variant, other content
            conn.execute(
                insert(versions).values(**old, model={}, version=version, model_sha256=digest, run_id=run_id)
            )
    with pytest.raises(IntegrityError), fresh_engine.begin() as conn:  # the same content twice is refused
        conn.execute(
            insert(versions).values(**old, model={}, version=4, model_sha256="a" * 64, run_id=run_id)
        )
