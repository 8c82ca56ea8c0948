"""The model registry in the metadata database: model versions, the ``champion`` alias and its history.

Every move of the alias (a promotion by a run, a person's promotion, a rollback) happens in one
database transaction that also writes its audit row (``alias_events``), and the deploy hook runs
inside that transaction before it commits: if the hook or any step fails, the transaction rolls back
and the previous champion stays in place. Old champions are never deleted, so a rollback is another
move of the alias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.config import MetadataConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import AliasEvent, ModelAlias, ModelVersion, as_utc, utcnow
from flywheel.errors import PermanentError

CHAMPION_ALIAS = "champion"
"""The alias the serving side follows: the workload's production model."""


class RegistryError(PermanentError):
    """A registry operation cannot be done as asked (unknown version, nothing to roll back to, a race)."""


@dataclass(frozen=True)
class VersionInfo:
    """A detached snapshot of one model version (safe to use after its session closed)."""

    id: int
    workload_id: str
    version: int
    candidate_id: str
    eval_type: str
    base_model: str | None
    adapter_uri: str | None
    model: dict[str, Any]
    dataset_id: str | None
    run_id: int | None
    metrics: dict[str, Any] | None
    created_at: datetime
    parent_version: int | None = None
    """The version of the champion whose adapter this one's training started from (a warm start)."""

    @classmethod
    def of(cls, row: ModelVersion) -> VersionInfo:
        return cls(
            row.id,
            row.workload_id,
            row.version,
            row.candidate_id,
            row.eval_type,
            row.base_model,
            row.adapter_uri,
            row.model,
            row.dataset_id,
            row.run_id,
            row.metrics,
            as_utc(row.created_at),
            row.parent_version,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class AliasMove:
    """One row of an alias's history: what held it from ``created_at`` on, who moved it and why."""

    id: int
    workload_id: str
    alias: str
    action: str
    version: int
    previous_version: int | None
    actor: str
    reason: str
    decision_id: int | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"created_at": self.created_at.isoformat()}


def register_version(
    metadata: MetadataConfig,
    *,
    workload_id: str,
    run_id: int,
    candidate_id: str,
    eval_type: str,
    model: dict[str, Any],
    dataset_id: str | None,
    evaluation_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    parent_version: int | None = None,
) -> VersionInfo:
    """Register one variant of a run as a model version; the same run's variant maps to the same version.

    ``parent_version``: the version of the champion whose adapter the variant's training started from.

    Versions count up per workload; two runs registering at once are serialised by the unique
    constraint (the loser retries with the next number).
    """
    for _attempt in range(5):
        try:
            with session_scope(metadata) as session:
                row = session.scalar(
                    select(ModelVersion).where(
                        ModelVersion.run_id == run_id,
                        ModelVersion.candidate_id == candidate_id,
                        ModelVersion.eval_type == eval_type,
                    )
                )
                if row is None:
                    latest = session.scalar(
                        select(func.max(ModelVersion.version)).where(ModelVersion.workload_id == workload_id)
                    )
                    row = ModelVersion(workload_id=workload_id, version=(latest or 0) + 1, run_id=run_id)
                    row.candidate_id = candidate_id
                    row.eval_type = eval_type
                session.add(row)
                row.base_model = model.get("base_model")
                row.adapter_uri = model.get("adapter")
                row.model = model
                row.dataset_id = dataset_id
                row.evaluation_id = evaluation_id
                row.metrics = metrics
                row.training = training
                row.parent_version = parent_version
                session.flush()
                return VersionInfo.of(row)
        except IntegrityError:
            continue
    raise RegistryError(
        f"could not register a version of {workload_id}: concurrent registrations kept colliding"
    )


def get_version(metadata: MetadataConfig, workload_id: str, version: int) -> VersionInfo:
    """The workload's model version number ``version``; RegistryError naming the known ones otherwise."""
    with session_scope(metadata) as session:
        row = session.scalar(
            select(ModelVersion).where(
                ModelVersion.workload_id == workload_id, ModelVersion.version == version
            )
        )
        if row is None:
            known = session.scalars(
                select(ModelVersion.version)
                .where(ModelVersion.workload_id == workload_id)
                .order_by(ModelVersion.version)
            ).all()
            raise RegistryError(
                f"{workload_id} has no model version {version}; known: {', '.join(map(str, known)) or 'none'}"
            )
        return VersionInfo.of(row)


def champion(metadata: MetadataConfig, workload_id: str) -> VersionInfo | None:
    """The version that holds the workload's ``champion`` alias now, or None when there is none yet."""
    with session_scope(metadata) as session:
        alias = _alias(session, workload_id, CHAMPION_ALIAS)
        return VersionInfo.of(alias.model_version) if alias is not None else None


def versions(metadata: MetadataConfig, workload_id: str) -> list[VersionInfo]:
    """Every registered version of the workload, oldest first."""
    with session_scope(metadata) as session:
        rows = session.scalars(
            select(ModelVersion).where(ModelVersion.workload_id == workload_id).order_by(ModelVersion.version)
        )
        return [VersionInfo.of(row) for row in rows]


def history(metadata: MetadataConfig, workload_id: str, alias: str = CHAMPION_ALIAS) -> list[AliasMove]:
    """Every move of the alias, oldest first: each version held it from its row's time to the next row's."""
    with session_scope(metadata) as session:
        events = session.scalars(
            select(AliasEvent)
            .where(AliasEvent.workload_id == workload_id, AliasEvent.alias == alias)
            .order_by(AliasEvent.id)
        ).all()
        numbers = _version_numbers(
            session, {e.model_version_id for e in events} | {e.previous_version_id for e in events}
        )
        return [
            AliasMove(
                e.id,
                e.workload_id,
                e.alias,
                e.action,
                numbers[e.model_version_id],
                numbers.get(e.previous_version_id) if e.previous_version_id else None,
                e.actor,
                e.reason,
                e.decision_id,
                as_utc(e.created_at),
            )
            for e in events
        ]


Hook = Callable[[VersionInfo, VersionInfo | None], Any]
"""Runs inside the alias transaction before it commits: ``(new champion, previous champion)``.
The deploy hook; raising rolls the move back."""


_UNCHECKED = object()


def promote(
    metadata: MetadataConfig,
    workload_id: str,
    version: int,
    *,
    actor: str,
    reason: str,
    action: str = "promote",
    decision_id: int | None = None,
    expected_champion: int | object | None = _UNCHECKED,
    before_commit: Hook | None = None,
) -> AliasMove:
    """Make ``version`` the workload's champion, in one transaction with its audit row.

    ``expected_champion``: the version number (or None for "no champion") the caller compared against;
    if the alias moved since (someone promoted by hand during the run), nothing changes and
    RegistryError says so. ``before_commit`` (the deploy hook) runs last inside the transaction.
    """
    with session_scope(metadata) as session:
        target = session.scalar(
            select(ModelVersion).where(
                ModelVersion.workload_id == workload_id, ModelVersion.version == version
            )
        )
        if target is None:
            raise RegistryError(f"{workload_id} has no model version {version}")
        return _move(
            session,
            target,
            action=action,
            actor=actor,
            reason=reason,
            decision_id=decision_id,
            expected_champion=expected_champion,
            before_commit=before_commit,
        )


def rollback(
    metadata: MetadataConfig,
    workload_id: str,
    *,
    actor: str,
    reason: str,
    before_commit: Hook | None = None,
) -> AliasMove:
    """Give the champion alias back to the version that held it before the current champion got it.

    Repeated rollbacks walk further back: each version's predecessor is the one it displaced when it
    was last promoted, not the one it displaced by a rollback.
    """
    with session_scope(metadata) as session:
        _lock_aliases(session, workload_id)
        current = _alias(session, workload_id, CHAMPION_ALIAS, for_update=True)
        if current is None:
            raise RegistryError(f"{workload_id} has no champion to roll back")
        promoted = session.scalar(
            select(AliasEvent)
            .where(
                AliasEvent.workload_id == workload_id,
                AliasEvent.alias == CHAMPION_ALIAS,
                AliasEvent.model_version_id == current.model_version_id,
                AliasEvent.action.in_(("promote", "manual_promote")),
            )
            .order_by(AliasEvent.id.desc())
        )
        if promoted is None or promoted.previous_version_id is None:
            raise RegistryError(
                f"{workload_id}: version {current.model_version.version} was the first champion; "
                "there is no earlier one to roll back to"
            )
        target = session.get_one(ModelVersion, promoted.previous_version_id)
        return _move(
            session,
            target,
            action="rollback",
            actor=actor,
            reason=reason,
            decision_id=None,
            expected_champion=current.model_version.version,
            before_commit=before_commit,
        )


def _move(
    session: Session,
    target: ModelVersion,
    *,
    action: str,
    actor: str,
    reason: str,
    decision_id: int | None,
    expected_champion: int | object | None,
    before_commit: Hook | None,
) -> AliasMove:
    workload_id = target.workload_id
    _lock_aliases(session, workload_id)
    alias = _alias(session, workload_id, CHAMPION_ALIAS, for_update=True)
    previous = alias.model_version if alias is not None else None
    held = previous.version if previous is not None else None
    if expected_champion is not _UNCHECKED and held != expected_champion:
        raise RegistryError(
            f"{workload_id}: the champion is version {held}, not {expected_champion} as this decision "
            "assumed (it moved during the run); nothing changed"
        )
    if previous is not None and previous.id == target.id:
        raise RegistryError(f"{workload_id}: version {target.version} already is the champion")
    if alias is None:
        alias = ModelAlias(workload_id=workload_id, alias=CHAMPION_ALIAS, model_version_id=target.id)
        session.add(alias)
    alias.model_version_id = target.id
    alias.updated_at = utcnow()
    event = AliasEvent(
        workload_id=workload_id,
        alias=CHAMPION_ALIAS,
        action=action,
        model_version_id=target.id,
        previous_version_id=previous.id if previous is not None else None,
        actor=actor,
        reason=reason,
        decision_id=decision_id,
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    if before_commit is not None:
        before_commit(VersionInfo.of(target), VersionInfo.of(previous) if previous is not None else None)
    return AliasMove(
        event.id,
        workload_id,
        CHAMPION_ALIAS,
        action,
        target.version,
        held,
        actor,
        reason,
        decision_id,
        as_utc(event.created_at),
    )


def _alias(session: Session, workload_id: str, alias: str, *, for_update: bool = False) -> ModelAlias | None:
    query = select(ModelAlias).where(ModelAlias.workload_id == workload_id, ModelAlias.alias == alias)
    # Row lock on PostgreSQL: two promotions of one workload queue up instead of both reading the old
    # champion (SQLite serialises writers anyway and ignores FOR UPDATE).
    return session.scalar(query.with_for_update() if for_update else query)


def _lock_aliases(session: Session, workload_id: str) -> None:
    """On SQLite, take the write lock before reading the alias, so two moves cannot both read the old one.

    (pysqlite starts a transaction only at the first write; PostgreSQL locks the row with FOR UPDATE.)
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(ModelAlias)
            .where(ModelAlias.workload_id == workload_id)
            .values(workload_id=ModelAlias.workload_id)
        )


def _version_numbers(session: Session, ids: set[int | None]) -> dict[int, int]:
    wanted = {i for i in ids if i is not None}
    rows = session.execute(select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(wanted)))
    return {row_id: number for row_id, number in rows}
