"""The model registry on SQLite and on a real PostgreSQL server: versions, promotion, history, rollback,
manual promotion with audit rows, and atomicity when a step or the deploy hook fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from flywheel.config import MetadataConfig
from flywheel.db.engine import get_engine, session_scope
from flywheel.db.migrate import upgrade
from flywheel.db.models import AliasEvent
from flywheel.deliver.registry import (
    RegistryError,
    VersionInfo,
    champion,
    get_version,
    history,
    promote,
    register_version,
    rollback,
    versions,
)
from flywheel.tracking import ensure_run
from postgres import PostgresServer

WORKLOAD = "router"


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataConfig]:
    if request.param == "sqlite":
        config = MetadataConfig(url=f"sqlite:///{tmp_path / 'registry.db'}")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        config = MetadataConfig(url=server.url(server.create_database()))
    upgrade(get_engine(config))
    yield config
    get_engine(config).dispose()


def new_version(
    metadata: MetadataConfig,
    day: int,
    eval_type: str = "customized",
    workload: str = WORKLOAD,
    parent_version: int | None = None,
) -> VersionInfo:
    run_id = ensure_run(
        metadata,
        workload_id=workload,
        dag_id=f"flywheel_{workload}",
        dag_run_id=f"scheduled__2026-11-{day:02d}",
        interval_start=datetime(2026, 11, day, 2, tzinfo=UTC),
        interval_end=datetime(2026, 11, day + 1, 2, tzinfo=UTC),
    )
    adapter = f"/artifacts/runs/{workload}/{day}/adapter" if eval_type == "customized" else None
    return register_version(
        metadata,
        workload_id=workload,
        run_id=run_id,
        candidate_id="smollm2-135m",
        eval_type=eval_type,
        model={"base_model": "smollm2-135m-instruct"} | ({"adapter": adapter} if adapter else {}),
        dataset_id=f"ds-{day}",
        metrics={"function_name_and_args_accuracy": {"value": day / 100}},
        parent_version=parent_version,
    )


def event_count(metadata: MetadataConfig) -> int:
    with session_scope(metadata) as session:
        return session.scalar(select(func.count()).select_from(AliasEvent)) or 0


def test_versions_count_up_per_workload_and_a_run_registers_once(metadata: MetadataConfig) -> None:
    first = new_version(metadata, 1)
    again = new_version(metadata, 1)
    second = new_version(metadata, 2)
    other = new_version(metadata, 1, workload="assistant")

    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert again.id == first.id
    assert first.adapter_uri == "/artifacts/runs/router/1/adapter"
    assert [v.version for v in versions(metadata, WORKLOAD)] == [1, 2]
    assert get_version(metadata, WORKLOAD, 2).dataset_id == "ds-2"
    with pytest.raises(RegistryError, match="no model version 9; known: 1, 2"):
        get_version(metadata, WORKLOAD, 9)


def test_a_warm_started_version_records_the_champion_it_started_from(metadata: MetadataConfig) -> None:
    parent = new_version(metadata, 1)
    promote(metadata, WORKLOAD, parent.version, actor="test", reason="first champion")

    child = new_version(metadata, 2, parent_version=parent.version)

    assert (parent.parent_version, child.parent_version) == (None, 1)
    assert get_version(metadata, WORKLOAD, child.version).parent_version == 1
    assert [v.parent_version for v in versions(metadata, WORKLOAD)] == [None, 1]
    assert champion(metadata, WORKLOAD) == parent
    assert child.to_dict()["parent_version"] == 1


def test_promotion_moves_the_alias_and_keeps_the_history(metadata: MetadataConfig) -> None:
    v1, v2 = new_version(metadata, 1), new_version(metadata, 2)
    assert champion(metadata, WORKLOAD) is None

    promote(
        metadata, WORKLOAD, v1.version, actor="dag:run-1", reason="first champion", expected_champion=None
    )
    move = promote(metadata, WORKLOAD, v2.version, actor="dag:run-2", reason="better", expected_champion=1)

    assert champion(metadata, WORKLOAD) == v2
    assert (move.version, move.previous_version, move.action) == (2, 1, "promote")
    rows = history(metadata, WORKLOAD)
    assert [(r.version, r.previous_version, r.actor, r.reason) for r in rows] == [
        (1, None, "dag:run-1", "first champion"),
        (2, 1, "dag:run-2", "better"),
    ]
    assert rows[0].created_at <= rows[1].created_at
    assert {v.version for v in versions(metadata, WORKLOAD)} == {1, 2}  # the old champion is kept


def test_rollback_restores_the_previous_champion_and_walks_back(metadata: MetadataConfig) -> None:
    for day in (1, 2, 3):
        promote(metadata, WORKLOAD, new_version(metadata, day).version, actor="dag", reason=f"night {day}")

    first = rollback(metadata, WORKLOAD, actor="alice", reason="v3 answers in the wrong language")
    second = rollback(metadata, WORKLOAD, actor="alice", reason="v2 too")

    assert (first.action, first.version, first.previous_version) == ("rollback", 2, 3)
    assert (second.version, second.previous_version) == (1, 2)
    assert champion(metadata, WORKLOAD).version == 1
    audit = history(metadata, WORKLOAD)[-2:]
    assert [(r.action, r.actor, r.reason) for r in audit] == [
        ("rollback", "alice", "v3 answers in the wrong language"),
        ("rollback", "alice", "v2 too"),
    ]
    with pytest.raises(RegistryError, match="first champion; there is no earlier one"):
        rollback(metadata, WORKLOAD, actor="alice", reason="again")
    assert champion(metadata, WORKLOAD).version == 1


def test_rollback_without_champion_is_an_error(metadata: MetadataConfig) -> None:
    with pytest.raises(RegistryError, match="no champion to roll back"):
        rollback(metadata, WORKLOAD, actor="bob", reason="?")


def test_manual_promotion_is_audited(metadata: MetadataConfig) -> None:
    v1, v2 = new_version(metadata, 1), new_version(metadata, 2, eval_type="icl")
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first")

    move = promote(
        metadata, WORKLOAD, v2.version, actor="carol", reason="icl is enough", action="manual_promote"
    )

    assert champion(metadata, WORKLOAD) == v2
    last = history(metadata, WORKLOAD)[-1]
    assert (last.action, last.actor, last.reason, last.previous_version) == (
        "manual_promote",
        "carol",
        "icl is enough",
        1,
    )
    assert move.id == last.id
    with pytest.raises(RegistryError, match="already is the champion"):
        promote(metadata, WORKLOAD, v2.version, actor="carol", reason="twice", action="manual_promote")


def test_a_failing_deploy_hook_leaves_the_previous_champion(metadata: MetadataConfig) -> None:
    v1, v2 = new_version(metadata, 1), new_version(metadata, 2)
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first")
    seen: list[tuple[int, int | None]] = []

    def failing_hook(new: VersionInfo, old: VersionInfo | None) -> None:
        seen.append((new.version, old.version if old else None))
        raise ConnectionError("vLLM refused the adapter")

    with pytest.raises(ConnectionError, match="refused"):
        promote(metadata, WORKLOAD, v2.version, actor="dag", reason="better", before_commit=failing_hook)

    assert seen == [(2, 1)]
    assert champion(metadata, WORKLOAD) == v1
    assert event_count(metadata) == 1


def test_a_failure_between_the_alias_update_and_its_audit_row_changes_nothing(
    metadata: MetadataConfig,
) -> None:
    v1, v2 = new_version(metadata, 1), new_version(metadata, 2)
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first")

    def fail(*_args: object) -> None:
        raise RuntimeError("injected: the database went away while writing the audit row")

    # The alias row is updated in the same flush, before this insert runs.
    event.listen(AliasEvent, "before_insert", fail)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            promote(metadata, WORKLOAD, v2.version, actor="dag", reason="better")
    finally:
        event.remove(AliasEvent, "before_insert", fail)

    assert champion(metadata, WORKLOAD) == v1
    assert [r.version for r in history(metadata, WORKLOAD)] == [1]


def test_a_decision_against_a_champion_that_moved_changes_nothing(metadata: MetadataConfig) -> None:
    v1, v2, v3 = new_version(metadata, 1), new_version(metadata, 2), new_version(metadata, 3)
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first")
    promote(metadata, WORKLOAD, v2.version, actor="dave", reason="by hand", action="manual_promote")

    with pytest.raises(RegistryError, match="champion is version 2, not 1"):
        promote(metadata, WORKLOAD, v3.version, actor="dag", reason="night 3", expected_champion=1)

    assert champion(metadata, WORKLOAD) == v2


def test_concurrent_promotions_against_the_same_champion_let_one_win(metadata: MetadataConfig) -> None:
    v1, v2, v3 = new_version(metadata, 1), new_version(metadata, 2), new_version(metadata, 3)
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first")
    outcomes: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def attempt(version: int) -> None:
        barrier.wait()
        try:
            promote(metadata, WORKLOAD, version, actor=f"run-{version}", reason="race", expected_champion=1)
            outcomes[version] = "promoted"
        except Exception as exc:
            outcomes[version] = type(exc).__name__

    threads = [threading.Thread(target=attempt, args=(v,)) for v in (v2.version, v3.version)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes.values()) in (["OperationalError", "promoted"], ["RegistryError", "promoted"])
    winner = next(v for v, outcome in outcomes.items() if outcome == "promoted")
    assert champion(metadata, WORKLOAD).version == winner
    assert [r.version for r in history(metadata, WORKLOAD)] == [1, winner]
