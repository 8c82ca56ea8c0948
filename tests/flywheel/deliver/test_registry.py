"""The model registry on SQLite and on a real PostgreSQL server: versions, promotion, history, rollback,
manual promotion with audit rows, atomicity when a step or the deploy hook fails, immutable
(content-addressed) adapters that survive a re-run of their day, and promotion races."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from flywheel import artifacts
from flywheel.config import MetadataConfig
from flywheel.db.engine import get_engine, session_scope
from flywheel.db.migrate import upgrade
from flywheel.db.models import AliasEvent
from flywheel.deliver.registry import (
    AlreadyPromotedError,
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
from flywheel.storage import ArtifactStore
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

    assert sorted(outcomes.values()) in (
        ["OperationalError", "promoted"],
        ["AlreadyPromotedError", "promoted"],
    )
    winner = next(v for v, outcome in outcomes.items() if outcome == "promoted")
    assert champion(metadata, WORKLOAD).version == winner
    assert [r.version for r in history(metadata, WORKLOAD)] == [1, winner]


# --- immutable champion adapters -----------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    """The artifact store: a local directory, or fsspec's in-memory filesystem (any fsspec root)."""
    if request.param == "local":
        yield ArtifactStore(str(tmp_path / "artifacts"))
        return
    memory = ArtifactStore(f"memory://flywheel-{uuid.uuid4().hex[:8]}")
    yield memory
    if memory.fs.exists(memory.root):
        memory.fs.rm(memory.root, recursive=True)


def train_adapter(store: ArtifactStore, day: int, seed: bytes) -> tuple[str, dict[str, bytes]]:
    """Write an adapter into the day's training output as the train job does; its URI and files."""
    files = {
        "adapter_config.json": b'{"peft_type": "LORA", "r": 16}',
        "adapter_model.safetensors": seed * 4096,
    }
    uri = artifacts.adapter_uri(artifacts.train_dir(WORKLOAD, date(2026, 11, day), "smollm2-135m"))
    for name, data in files.items():
        store.write_bytes_atomic(store.path(uri, name), data)
    return artifacts.uri(store.url, uri), files


def register_trained(
    metadata: MetadataConfig, store: ArtifactStore, day: int, seed: bytes
) -> tuple[VersionInfo, dict[str, bytes]]:
    """The day's run trains an adapter and registers it (as the decide stage does)."""
    run_id = ensure_run(
        metadata,
        workload_id=WORKLOAD,
        dag_id=f"flywheel_{WORKLOAD}",
        dag_run_id=f"scheduled__2026-11-{day:02d}",
        interval_start=datetime(2026, 11, day, 2, tzinfo=UTC),
        interval_end=datetime(2026, 11, day + 1, 2, tzinfo=UTC),
    )
    adapter, files = train_adapter(store, day, seed)
    version = register_version(
        metadata,
        workload_id=WORKLOAD,
        run_id=run_id,
        candidate_id="smollm2-135m",
        eval_type="customized",
        model={"base_model": "smollm2-135m-instruct", "adapter": adapter},
        dataset_id=f"ds-{day}",
        store=store,
    )
    return version, files


def files_at(store: ArtifactStore, uri: str) -> dict[str, bytes]:
    """Every file under the directory ``uri`` (its commit record aside), by relative path."""
    fs, root = store.resolve(uri)
    return {
        path[len(root) + 1 :]: fs.cat_file(path)
        for path in fs.find(root)
        if not path.endswith(artifacts.MODEL_MARKER)
    }


def clear_day(store: ArtifactStore, day: int) -> None:
    """What a re-run of the day does first: its run directory is deleted."""
    store.fs.rm(store.path(artifacts.run_dir(WORKLOAD, date(2026, 11, day))), recursive=True)


def test_a_registered_adapter_is_a_content_addressed_copy_that_a_rerun_cannot_touch(
    metadata: MetadataConfig, store: ArtifactStore
) -> None:
    v1, trained = register_trained(metadata, store, 1, b"night-1")
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first", store=store)

    assert v1.adapter_uri == f"{store.url}/models/{WORKLOAD}/{v1.adapter_sha256}"
    assert v1.model["adapter"] == v1.adapter_uri and len(v1.adapter_sha256 or "") == 64
    assert files_at(store, v1.adapter_uri) == trained

    # The day is re-run: its run directory is cleared and a new adapter trained into the same path.
    clear_day(store, 1)
    again, retrained = register_trained(metadata, store, 1, b"night-1, re-run")

    assert again.version == 2 and again.adapter_sha256 != v1.adapter_sha256
    assert get_version(metadata, WORKLOAD, 1) == v1  # the row is untouched
    assert champion(metadata, WORKLOAD) == v1
    assert files_at(store, champion(metadata, WORKLOAD).adapter_uri) == trained  # byte-identical
    assert store.check_model(WORKLOAD, v1.adapter_sha256 or "") is None
    # Registering the same bytes again (a re-decision, a retry) finds the same version.
    assert register_trained(metadata, store, 1, b"night-1, re-run")[0].id == again.id
    assert files_at(store, again.adapter_uri or "") == retrained


def test_a_rollback_restores_exactly_what_was_promoted(
    metadata: MetadataConfig, store: ArtifactStore
) -> None:
    v1, night1 = register_trained(metadata, store, 1, b"night-1")
    v2, _ = register_trained(metadata, store, 2, b"night-2")
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first", store=store)
    promote(metadata, WORKLOAD, v2.version, actor="dag", reason="better", store=store)
    clear_day(store, 1)
    train_adapter(store, 1, b"a re-run of night 1 trained something else")

    move = rollback(metadata, WORKLOAD, actor="alice", reason="v2 loops", store=store)

    assert (move.version, move.previous_version) == (1, 2)
    restored = champion(metadata, WORKLOAD)
    assert restored == v1
    assert files_at(store, restored.adapter_uri or "") == night1


def test_an_altered_committed_adapter_is_refused_and_the_champion_stays(
    metadata: MetadataConfig, store: ArtifactStore
) -> None:
    v1, _ = register_trained(metadata, store, 1, b"night-1")
    v2, _ = register_trained(metadata, store, 2, b"night-2")
    promote(metadata, WORKLOAD, v1.version, actor="dag", reason="first", store=store)
    promote(metadata, WORKLOAD, v2.version, actor="dag", reason="better", store=store)
    fs, root = store.resolve(v1.adapter_uri or "")
    fs.pipe_file(f"{root}/adapter_model.safetensors", b"overwritten in place")

    with pytest.raises(
        RegistryError, match=r"version 1's adapter is not what was registered: .* was altered"
    ):
        rollback(metadata, WORKLOAD, actor="alice", reason="v2 loops", store=store)

    assert champion(metadata, WORKLOAD) == v2
    assert [m.version for m in history(metadata, WORKLOAD)] == [1, 2]
    # Registering the original bytes again repairs the content-addressed copy.
    clear_day(store, 1)
    assert register_trained(metadata, store, 1, b"night-1")[0] == v1
    assert store.check_model(WORKLOAD, v1.adapter_sha256 or "") is None


def test_registering_an_adapter_that_is_gone_is_an_error(
    metadata: MetadataConfig, store: ArtifactStore
) -> None:
    run_id = ensure_run(
        metadata,
        workload_id=WORKLOAD,
        dag_id=f"flywheel_{WORKLOAD}",
        dag_run_id="r",
        interval_start=datetime(2026, 11, 1, 2, tzinfo=UTC),
        interval_end=datetime(2026, 11, 2, 2, tzinfo=UTC),
    )
    with pytest.raises(RegistryError, match="its adapter is gone"):
        register_version(
            metadata,
            workload_id=WORKLOAD,
            run_id=run_id,
            candidate_id="smollm2-135m",
            eval_type="customized",
            model={"base_model": "b", "adapter": f"{store.url}/runs/{WORKLOAD}/nothing/adapter"},
            dataset_id="ds",
            store=store,
        )
    assert versions(metadata, WORKLOAD) == []


# --- promotion races and the audit row ------------------------------------------------------------


def race(metadata: MetadataConfig, targets: tuple[int, int]) -> tuple[dict[int, object], list[int]]:
    """Two threads make their first-ever promotion at once (each decision saw no champion).

    Each outcome is the AliasMove or the exception; the deploy hook sleeps, so the second promotion
    reads "no alias row" while the first is still uncommitted. Returns the outcomes by thread and the
    versions the deploy hook was called for.
    """
    outcomes: dict[int, object] = {}
    deployed: list[int] = []
    barrier = threading.Barrier(2)

    def hook(new: VersionInfo, _old: VersionInfo | None) -> dict[str, object]:
        deployed.append(new.version)
        time.sleep(0.5)
        return {"status": "deployed"}

    def attempt(index: int, version: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = promote(
                metadata,
                WORKLOAD,
                version,
                actor=f"run-{index}",
                reason="race",
                expected_champion=None,
                before_commit=hook,
            )
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=attempt, args=(i, v)) for i, v in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes, deployed


def test_a_first_promotion_race_ends_in_already_promoted(metadata: MetadataConfig) -> None:
    v1, v2 = new_version(metadata, 1), new_version(metadata, 2)

    outcomes, deployed = race(metadata, (v1.version, v2.version))

    errors = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert len(outcomes) == 2 and len(errors) == 1, outcomes
    (lost,) = errors
    winner = champion(metadata, WORKLOAD)
    assert isinstance(lost, AlreadyPromotedError), repr(lost)
    assert lost.champion == winner.version
    assert "nothing changed" in str(lost)
    assert deployed == [winner.version]  # the loser never told serving anything
    assert [(m.version, m.previous_version) for m in history(metadata, WORKLOAD)] == [(winner.version, None)]


def test_two_first_promotions_of_the_same_version_end_in_already_promoted(metadata: MetadataConfig) -> None:
    v1 = new_version(metadata, 1)

    outcomes, deployed = race(metadata, (v1.version, v1.version))

    errors = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], AlreadyPromotedError), outcomes
    assert errors[0].champion == v1.version  # a caller can tell "already done" from a conflict
    assert deployed == [v1.version]
    assert len(history(metadata, WORKLOAD)) == 1


def test_the_audit_row_keeps_what_the_deploy_hook_reported(metadata: MetadataConfig) -> None:
    v1 = new_version(metadata, 1)

    move = promote(
        metadata,
        WORKLOAD,
        v1.version,
        actor="ann",
        reason="first",
        before_commit=lambda new, _old: {"status": "skipped", "by": "--no-deploy", "configured": "vllm"},
    )

    assert move.deployment == {"status": "skipped", "by": "--no-deploy", "configured": "vllm"}
    assert history(metadata, WORKLOAD)[-1].deployment == move.deployment
