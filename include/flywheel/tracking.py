"""Recording runs, their stages and their outputs in the metadata database: every outcome leaves a trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from flywheel.config import MetadataConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import RawPartition, Run, RunStage, utcnow

if TYPE_CHECKING:
    from flywheel.extract import ExtractionResult


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


def record_partition(metadata: MetadataConfig, result: ExtractionResult, run_id: int) -> None:
    """Insert or replace the ``raw_partitions`` row of the extracted workload and day."""
    with session_scope(metadata) as session:
        row = session.scalar(
            select(RawPartition).where(
                RawPartition.workload_id == result.workload_id, RawPartition.day == result.day
            )
        ) or RawPartition(workload_id=result.workload_id, day=result.day)
        row.interval_start = result.interval_start
        row.interval_end = result.interval_end
        row.record_count = result.records
        row.part_count = result.parts
        row.byte_count = result.bytes
        row.uri = result.uri
        row.version = result.version
        row.read_method = result.read_method
        row.run_id = run_id
        row.extracted_at = utcnow()
        session.add(row)
