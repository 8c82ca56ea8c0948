"""The model registry in the metadata database: model versions, the ``champion`` alias and its history.

Every move of the alias (a promotion by a run, a person's promotion, a rollback) happens in one
database transaction that also writes its audit row (``alias_events``), and the deploy hook runs
inside that transaction before it commits: if the hook or any step fails, the transaction rolls back
and the previous champion stays in place. Old champions are never deleted, so a rollback is another
move of the alias.

A registered version never changes: given the artifact store, :func:`register_version` copies the
adapter into ``models/<workload>/<sha256 of its files>/`` and the row points there, so a re-run of
the day that trained it (which clears ``runs/<workload>/<day>/``) cannot alter the champion, and a
rollback serves exactly the bytes that were promoted. Promotion and rollback check those bytes against
the digest before the alias moves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.config import MetadataConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import AliasEvent, ModelAlias, ModelVersion, Run, as_utc, utcnow
from flywheel.errors import PermanentError

if TYPE_CHECKING:
    from flywheel.storage import ArtifactStore

CHAMPION_ALIAS = "champion"
"""The alias the serving side follows: the workload's production model."""


class RegistryError(PermanentError):
    """A registry operation cannot be done as asked (unknown version, nothing to roll back to, a race)."""


class AlreadyPromotedError(RegistryError):
    """Another move of the alias got there first (a concurrent or earlier promotion); nothing changed.

    ``champion`` is the version that holds the alias now, so a caller that wanted the same version
    can tell "already done" from "someone chose another one".
    """

    def __init__(self, message: str, *, champion: int | None) -> None:
        super().__init__(message)
        self.champion = champion


class _LostFirstPromotion(Exception):
    """The alias row this move meant to create was created by a concurrent move that committed first."""


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
    adapter_sha256: str | None = None
    """The digest of the adapter's files in ``models/<workload>/<digest>/``; None: no adapter, or its
    path was recorded as given (registered without the artifact store, or before migration 0006)."""
    model_sha256: str | None = None
    """The digest of ``model`` as registered (canonical JSON)."""

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
            row.adapter_sha256,
            row.model_sha256,
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
    deployment: dict[str, Any] | None = None
    """What serving was told: the deploy hook's result, the ``--no-deploy`` mark, or None (no hook)."""

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
    store: ArtifactStore | None = None,
) -> VersionInfo:
    """Register one variant of a run as a model version; the same run's variant and model map to the same
    version, and a registered version's model never changes.

    ``store``: the artifact store; the adapter (``model["adapter"]``) is then committed into it under
    the digest of its files (:meth:`~flywheel.storage.ArtifactStore.commit_model`) and the version
    points at that copy. Without it the adapter path is recorded as given and nothing vouches for its
    bytes (adapters that serving owns, tests). A variant registered again with other bytes (a re-run
    that trained anew) becomes a new version. ``parent_version``: the version of the champion whose
    adapter the variant's training started from.

    Versions count up per workload; two runs registering at once are serialised by the unique
    constraint (the loser retries with the next number).
    """
    model = dict(model)
    adapter_sha256 = None
    if store is not None and model.get("adapter"):
        try:
            committed = store.commit_model(workload_id, model["adapter"])
        except FileNotFoundError as exc:
            raise RegistryError(
                f"cannot register {workload_id} {candidate_id}/{eval_type}: its adapter is gone ({exc})"
            ) from None
        model["adapter"], adapter_sha256 = committed.uri, committed.sha256
    model_sha256 = hashlib.sha256(
        json.dumps(model, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    for _attempt in range(5):
        try:
            with session_scope(metadata) as session:
                row = session.scalar(
                    select(ModelVersion).where(
                        ModelVersion.run_id == run_id,
                        ModelVersion.candidate_id == candidate_id,
                        ModelVersion.eval_type == eval_type,
                        ModelVersion.model_sha256 == model_sha256,
                    )
                )
                if row is None:
                    latest = session.scalar(
                        select(func.max(ModelVersion.version)).where(ModelVersion.workload_id == workload_id)
                    )
                    row = ModelVersion(workload_id=workload_id, version=(latest or 0) + 1, run_id=run_id)
                    row.candidate_id = candidate_id
                    row.eval_type = eval_type
                    row.base_model = model.get("base_model")
                    row.adapter_uri = model.get("adapter")
                    row.adapter_sha256 = adapter_sha256
                    row.model = model
                    row.model_sha256 = model_sha256
                session.add(row)
                # The evidence about the (unchanged) model may be refreshed by a re-decision.
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


def chosen_on(metadata: MetadataConfig, version: VersionInfo) -> datetime | None:
    """The end of the data interval of the run that evaluated and registered ``version``.

    The newest data the version was chosen on; None for a version registered outside a run.
    """
    if version.run_id is None:
        return None
    with session_scope(metadata) as session:
        run = session.get(Run, version.run_id)
        return as_utc(run.interval_end) if run is not None else None


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
                e.deployment,
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
    store: ArtifactStore | None = None,
) -> AliasMove:
    """Make ``version`` the workload's champion, in one transaction with its audit row.

    ``expected_champion``: the version number (or None for "no champion") the caller compared against;
    if the alias moved since (someone promoted by hand during the run, or a concurrent promotion won),
    nothing changes and AlreadyPromotedError says so. ``before_commit`` (the deploy hook) runs last
    inside the transaction; a dict it returns is recorded in the audit row. ``store``: check the
    version's adapter against its digest first (RegistryError when it was altered or is gone).
    """
    try:
        with session_scope(metadata) as session:
            target = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.workload_id == workload_id, ModelVersion.version == version
                )
            )
            if target is None:
                raise RegistryError(f"{workload_id} has no model version {version}")
            _check_adapter(store, target)
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
    except _LostFirstPromotion:
        # No alias row existed to lock: a concurrent first promotion inserted it and committed first.
        now = champion(metadata, workload_id)
        held = now.version if now is not None else None
        raise AlreadyPromotedError(
            f"{workload_id}: already promoted: a concurrent promotion made version {held} the first "
            f"champion while this one (version {version}) ran; nothing changed",
            champion=held,
        ) from None


def rollback(
    metadata: MetadataConfig,
    workload_id: str,
    *,
    actor: str,
    reason: str,
    before_commit: Hook | None = None,
    store: ArtifactStore | None = None,
) -> AliasMove:
    """Give the champion alias back to the version that held it before the current champion got it.

    Repeated rollbacks walk further back: each version's predecessor is the one it displaced when it
    was last promoted, not the one it displaced by a rollback. ``store``: check that version's adapter
    against its digest first, so the rollback serves exactly what was promoted.
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
        _check_adapter(store, target)
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
        raise AlreadyPromotedError(
            f"{workload_id}: the champion is version {held}, not {expected_champion} as this decision "
            "assumed (it moved during the run); nothing changed",
            champion=held,
        )
    if previous is not None and previous.id == target.id:
        raise AlreadyPromotedError(
            f"{workload_id}: version {target.version} already is the champion", champion=held
        )
    if alias is None:
        alias = ModelAlias(workload_id=workload_id, alias=CHAMPION_ALIAS, model_version_id=target.id)
        session.add(alias)
        try:
            # PostgreSQL: with no row to lock, a concurrent first promotion waits here for the other
            # transaction and fails on the unique key if it committed.
            session.flush()
        except IntegrityError as exc:
            raise _LostFirstPromotion from exc
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
        outcome = before_commit(
            VersionInfo.of(target), VersionInfo.of(previous) if previous is not None else None
        )
        if isinstance(outcome, dict):
            event.deployment = json.loads(json.dumps(outcome, default=str))
            session.flush()
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
        event.deployment,
    )


def _check_adapter(store: ArtifactStore | None, target: ModelVersion) -> None:
    """RegistryError when the version's committed adapter no longer matches its digest (or is gone)."""
    if store is None or target.adapter_sha256 is None:
        return
    problem = store.check_model(target.workload_id, target.adapter_sha256)
    if problem is not None:
        raise RegistryError(
            f"{target.workload_id}: version {target.version}'s adapter is not what was registered: "
            f"{problem}; nothing changed"
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
