"""Tables of the flywheel's own records. Every change here ships with an Alembic migration."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored timestamp with its time zone: SQLite hands them back naive, and every one is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names, so migrations are portable."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Run(Base):
    """One flywheel DAG run of one workload over one data interval (a backfill makes one per day)."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("dag_id", "dag_run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64), index=True)
    dag_id: Mapped[str] = mapped_column(String(250))
    dag_run_id: Mapped[str] = mapped_column(String(250))
    interval_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    interval_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    stages: Mapped[list[RunStage]] = relationship(back_populates="run", order_by="RunStage.id")


class RunStage(Base):
    """One attempt of one stage (extract, validate, train, ...) of a run, with its outcome."""

    __tablename__ = "run_stages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    try_number: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="stages")


class RawPartition(Base):
    """The committed raw partition of one workload and day; a re-extraction replaces the row."""

    __tablename__ = "raw_partitions"
    __table_args__ = (UniqueConstraint("workload_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64))
    day: Mapped[date] = mapped_column(Date)
    interval_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    interval_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    record_count: Mapped[int] = mapped_column(Integer)
    part_count: Mapped[int] = mapped_column(Integer)
    byte_count: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(64))
    read_method: Mapped[str] = mapped_column(String(16))  # the log source's: pit, scroll, jsonl, parquet...
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    extracted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ValidatedPartition(Base):
    """The validation verdict of one workload's day: accounting, batch success and the evidence."""

    __tablename__ = "validated_partitions"
    __table_args__ = (UniqueConstraint("workload_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64))
    day: Mapped[date] = mapped_column(Date)
    extracted: Mapped[int] = mapped_column(Integer)
    clean: Mapped[int] = mapped_column(Integer)
    quarantined: Mapped[int] = mapped_column(Integer)
    duplicates_in_day: Mapped[int] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean)
    failed_expectations: Mapped[list[str]] = mapped_column(JSON)
    reasons: Mapped[dict[str, int]] = mapped_column(JSON)
    tool_shift: Mapped[float | None] = mapped_column(Float)
    clean_uri: Mapped[str] = mapped_column(Text)
    quarantine_uri: Mapped[str] = mapped_column(Text)
    validation_uri: Mapped[str] = mapped_column(Text)
    data_docs_uri: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    validated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """A built dataset (train / validation / evaluation files and their manifest)."""

    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64), index=True)
    uri: Mapped[str] = mapped_column(Text)
    manifest_uri: Mapped[str] = mapped_column(Text)
    train_records: Mapped[int] = mapped_column(Integer)
    validation_records: Mapped[int] = mapped_column(Integer)
    evaluation_records: Mapped[int] = mapped_column(Integer)
    duplicates_removed: Mapped[int] = mapped_column(Integer)
    first_day: Mapped[date] = mapped_column(Date)
    last_day: Mapped[date] = mapped_column(Date)
    content_hash: Mapped[str] = mapped_column(String(64))
    config_hash: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    """One evaluation of one model (a candidate's base / icl / customized variant, or the champion) in a run.

    A re-run of the same run's evaluation replaces the row. ``metrics`` holds each metric's value, 95%
    interval and count; the per-example outcomes stay in ``examples_uri`` for paired comparisons.
    """

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("run_id", "candidate_id", "eval_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    workload_id: Mapped[str] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(String(64))
    candidate_id: Mapped[str] = mapped_column(String(64))  # "champion" for the champion
    eval_type: Mapped[str] = mapped_column(String(16))  # base | icl | customized | champion
    model: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # succeeded | failed
    examples: Mapped[int | None] = mapped_column(Integer)
    examples_hash: Mapped[str | None] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    judge: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    latency_p95_s: Mapped[float | None] = mapped_column(Float)
    result_uri: Mapped[str] = mapped_column(Text)
    examples_uri: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A model the registry knows: one variant (base, icl or customized) of one candidate from one run.

    ``version`` counts up per workload, and a version's model never changes: its adapter is a copy
    addressed by the digest of its files (``adapter_sha256``), and ``model_sha256`` hashes the whole
    model config. A run registers only its challenger; re-deciding the same run with the same model
    finds the same row again (unique per run, candidate, eval type and model), while a re-run that
    trained different bytes registers a new version and leaves the old one (maybe the champion) alone.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("workload_id", "version"),
        UniqueConstraint(
            "run_id", "candidate_id", "eval_type", "model_sha256", name="uq_model_versions_run_variant_model"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    candidate_id: Mapped[str] = mapped_column(String(64))
    eval_type: Mapped[str] = mapped_column(String(16))  # base | icl | customized
    base_model: Mapped[str | None] = mapped_column(Text)
    adapter_uri: Mapped[str | None] = mapped_column(Text)
    model: Mapped[dict[str, Any]] = mapped_column(JSON)  # the evaluated model config (ModelConfig)
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    training: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the candidate's training figures
    # Lineage: the version (number) of the champion whose adapter training started from; null: a fresh LoRA.
    parent_version: Mapped[int | None] = mapped_column(Integer)
    # The digest of the adapter's files (artifacts.model_dir); null: no adapter, or registered before 0006.
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))
    # sha256 of the model config as registered (canonical JSON); null only for rows from before 0006.
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelAlias(Base):
    """Which model version currently holds an alias (``champion``) of a workload."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("workload_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64))
    alias: Mapped[str] = mapped_column(String(32))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model_version: Mapped[ModelVersion] = relationship()


class AliasEvent(Base):
    """The audit trail of an alias: every move, who made it, why, and what held the alias before."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String(64), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))  # promote | manual_promote | rollback
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    actor: Mapped[str] = mapped_column(String(250))
    reason: Mapped[str] = mapped_column(Text)
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id", ondelete="SET NULL"))
    # What serving was told: the deploy hook's result, {"status": "skipped", "by": "--no-deploy", ...}
    # when a person moved the alias only; null when no hook ran (a library call, rows before 0006).
    deployment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Decision(Base):
    """The champion/challenger decision of one run and its evidence; a re-run replaces the row.

    ``comparisons`` holds, per metric, both values, the paired difference with its interval, the
    test statistic and p-value (primary metric) and whether it passed; ``reasons`` the codes and
    messages that led to ``outcome`` (promote | alert | no_change).
    """

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    workload_id: Mapped[str] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    primary_metric: Mapped[str] = mapped_column(String(64))
    champion_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    champion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    challenger_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    challenger: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    examples: Mapped[int | None] = mapped_column(Integer)
    comparisons: Mapped[dict[str, Any]] = mapped_column(JSON)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # every variant ranked
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    report_uri: Mapped[str | None] = mapped_column(Text)
    promotion: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # what the promote branch did
    # A manual run's dry run (its `dry_run` param): decided and notified, the champion alias never moved.
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
