"""Recording runs, their stages and their outputs in the metadata database: every outcome leaves a trace."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Date, DateTime, select

from flywheel.config import MetadataConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import (
    Base,
    Dataset,
    Decision,
    Evaluation,
    RawPartition,
    Run,
    RunStage,
    ValidatedPartition,
    utcnow,
)
from flywheel.redact import redact_text

if TYPE_CHECKING:
    from flywheel.dataset.build import DatasetResult
    from flywheel.extract.partition import ExtractionResult
    from flywheel.validate.day import DayValidation


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
        # An exception's text can quote a URL with its credentials (a connection's host, a driver's DSN).
        row.error = redact_text(error)[:4000] if error else None


def record_partition(metadata: MetadataConfig, result: ExtractionResult, run_id: int) -> None:
    """Insert or replace the ``raw_partitions`` row of the extracted workload and day."""
    _record(
        metadata,
        RawPartition,
        result,
        key=("workload_id", "day"),
        renamed={"record_count": "records", "part_count": "parts", "byte_count": "bytes"},
        run_id=run_id,
        extracted_at=utcnow(),
    )


def record_validation(metadata: MetadataConfig, result: DayValidation, run_id: int | None) -> None:
    """Insert or replace the ``validated_partitions`` row of the validated workload and day."""
    _record(
        metadata, ValidatedPartition, result, key=("workload_id", "day"), run_id=run_id, validated_at=utcnow()
    )


def record_dataset(metadata: MetadataConfig, result: DatasetResult, run_id: int | None) -> None:
    """Insert (or, for an identical rebuild, refresh) the ``datasets`` row."""
    _record(
        metadata,
        Dataset,
        result,
        key=("dataset_id",),
        run_id=run_id,
        created_at=utcnow(),
        **{f"{split}_records": count for split, count in result.counts.items()},
    )


def _record(
    metadata: MetadataConfig,
    table: type[Base],
    result: Any,
    *,
    key: tuple[str, ...],
    renamed: Mapping[str, str] | None = None,
    **values: Any,
) -> None:
    """Insert or replace the row of ``table`` that holds ``result`` (a dataclass), found by ``key`` columns.

    Every column takes the result's field of the same name (or the field ``renamed`` names for it),
    converted to the column's type where the result keeps it as text (ISO dates); ``values`` add the
    columns the result does not hold. The table's own row id is never taken from a result.
    """
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    row: dict[str, Any] = {}
    for column in table.__table__.columns:
        name = column.key if column.key in fields else (renamed or {}).get(column.key)
        if name in fields and (column.key in key or not column.primary_key):
            row[column.key] = _as_column_type(column, fields[name])
    row |= values
    _upsert(metadata, table, {column: row.pop(column) for column in key}, **row)


def _as_column_type(column: Column[Any], value: Any) -> Any:
    """``value`` as ``column`` stores it: ISO text becomes a date or datetime for such columns."""
    if isinstance(value, str) and isinstance(column.type, Date | DateTime):
        return (date if isinstance(column.type, Date) else datetime).fromisoformat(value)
    return value


def _upsert(metadata: MetadataConfig, table: type[Base], key: dict[str, Any], /, **values: Any) -> None:
    """Update the row of ``table`` identified by ``key`` with ``values``, creating it if absent."""
    with session_scope(metadata) as session:
        conditions = [getattr(table, column) == value for column, value in key.items()]
        row = session.scalar(select(table).where(*conditions)) or table(**key)
        for column, value in values.items():
            setattr(row, column, value)
        session.add(row)


def record_evaluation(
    metadata: MetadataConfig,
    run_id: int,
    *,
    workload_id: str,
    dataset_id: str,
    candidate_id: str,
    eval_type: str,
    model: dict[str, Any],
    result_uri: str,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> None:
    """Insert or replace the ``evaluations`` row of one model's evaluation in a run."""
    failure = error or {"error": "NoOutput", "message": "the job wrote no result.json"}
    _upsert(
        metadata,
        Evaluation,
        {"run_id": run_id, "candidate_id": candidate_id, "eval_type": eval_type},
        workload_id=workload_id,
        dataset_id=dataset_id,
        model=model,
        status="succeeded" if result else "failed",
        examples=result["examples"] if result else None,
        examples_hash=result["examples_hash"] if result else None,
        metrics=result["metrics"] if result else None,
        judge=result.get("judge") if result else None,
        latency_p95_s=result["latency_s"]["p95"] if result else None,
        result_uri=result_uri,
        examples_uri=result["examples_uri"] if result else None,
        error=None if result else redact_text(f"{failure.get('error')}: {failure.get('message', '')}"),
        evaluated_at=utcnow(),
    )


def record_promotion(
    metadata: MetadataConfig, decision_id: int, promotion: dict[str, Any], *, replace: bool = True
) -> None:
    """What the ``promote`` task did with a decision (promoted, superseded, or failed and why).

    ``replace=False`` keeps what an earlier attempt recorded (a retry finding its work done).
    """
    with session_scope(metadata) as session:
        row = session.get_one(Decision, decision_id)
        if replace or row.promotion is None:
            row.promotion = promotion
