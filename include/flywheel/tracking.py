"""Recording runs and their stages in the metadata database, so every outcome leaves a queryable trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select

from flywheel.config import MetadataConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Run, RunStage, utcnow


def ensure_run(
    metadata: MetadataConfig,
    *,
    workload_id: str,
    dag_id: str,
    dag_run_id: str,
    interval_start: datetime,
    interval_end: datetime,
) -> int:
    """Id of the run row for this DAG run, created on first use (task retries reuse it)."""
    with session_scope(metadata) as session:
        run = session.scalar(select(Run).where(Run.dag_id == dag_id, Run.dag_run_id == dag_run_id))
        if run is None:
            run = Run(
                workload_id=workload_id,
                dag_id=dag_id,
                dag_run_id=dag_run_id,
                interval_start=interval_start,
                interval_end=interval_end,
            )
            session.add(run)
            session.flush()
        return run.id


class StageRecord:
    """Handle on a running stage row; set ``summary`` before the block ends to store it."""

    def __init__(self, stage_id: int) -> None:
        self.id = stage_id
        self.summary: dict[str, Any] | None = None


@contextmanager
def record_stage(
    metadata: MetadataConfig, run_id: int, stage: str, try_number: int = 1
) -> Iterator[StageRecord]:
    """Write a ``running`` stage row now, and ``succeeded`` or ``failed`` (with the error) at the end."""
    with session_scope(metadata) as session:
        row = RunStage(run_id=run_id, stage=stage, try_number=try_number, status="running")
        session.add(row)
        session.flush()
        handle = StageRecord(row.id)
    try:
        yield handle
    except BaseException as exc:
        _finish(metadata, handle, "failed", f"{type(exc).__name__}: {exc}")
        raise
    _finish(metadata, handle, "succeeded", None)


def _finish(metadata: MetadataConfig, handle: StageRecord, status: str, error: str | None) -> None:
    with session_scope(metadata) as session:
        row = session.get_one(RunStage, handle.id)
        row.status = status
        row.finished_at = utcnow()
        row.summary = handle.summary
        row.error = error[:4000] if error else None
