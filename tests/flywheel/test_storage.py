"""Tests of the artifact store's raw partitions: staged writes, atomic commits, replacement and clean-up;
and content-addressed model commits."""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from flywheel import artifacts
from flywheel.artifacts import PARTITION_MARKER
from flywheel.storage import ArtifactStore, PartitionNotFound, StagedPartition, tree_sha256

WORKLOAD = "customer_support_router"
DAY = date(2026, 11, 20)


@pytest.fixture(params=["local", "file_url", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    """An artifact store on a tmp directory, the same as a ``file://`` URL, and an fsspec memory root."""
    if request.param == "local":
        yield ArtifactStore(str(tmp_path / "artifacts"))
    elif request.param == "file_url":
        yield ArtifactStore(f"file://{tmp_path / 'artifacts'}")
    else:
        store = ArtifactStore(f"memory://flywheel-tests-{uuid.uuid4().hex}")
        yield store
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)


def names(store: ArtifactStore, path: str) -> list[str]:
    """Sorted base names of the entries directly under ``path``."""
    return sorted(posixpath.basename(p.rstrip("/")) for p in store.fs.ls(path, detail=False))


def write_partition(store: ArtifactStore, payloads: list[bytes], **record: object) -> dict[str, object]:
    """Stage ``payloads`` as part files of DAY's partition and commit them; return the commit record."""
    with store.stage_partition(WORKLOAD, DAY) as staged:
        for i, payload in enumerate(payloads):
            store.fs.pipe_file(staged.part_path(i), payload)
        return store.commit_partition(staged, {"record_count": len(payloads), **record})


def fail_while_staging(store: ArtifactStore, error: BaseException, attempts: list[StagedPartition]) -> None:
    """Stage a new version of DAY's partition, write part of it, then fail with ``error``."""
    with store.stage_partition(WORKLOAD, DAY) as staged:
        attempts.append(staged)
        store.fs.pipe_file(staged.part_path(0), b"half written")
        assert posixpath.basename(staged.path) in names(store, store.raw_day_path(WORKLOAD, DAY))
        raise error


def test_local_path_and_file_url_are_the_same_store(tmp_path: Path) -> None:
    plain = ArtifactStore(str(tmp_path / "artifacts") + "/")
    url = ArtifactStore(f"file://{tmp_path / 'artifacts'}")

    assert plain.root == url.root == str(tmp_path / "artifacts")
    assert plain.raw_day_path(WORKLOAD, DAY) == f"{tmp_path}/artifacts/raw/{WORKLOAD}/2026-11-20"
    assert url.uri(url.path("raw")) == f"file://{tmp_path}/artifacts/raw"


def test_memory_root_uses_memory_urls() -> None:
    store = ArtifactStore("memory://flywheel-tests-paths")

    assert type(store.fs).__name__ == "MemoryFileSystem"
    assert store.uri(store.path("raw", "a")).startswith("memory://")
    assert store.uri(store.path("raw", "a")).endswith("flywheel-tests-paths/raw/a")


def test_stage_then_commit_writes_record_and_version_directory(store: ArtifactStore) -> None:
    with store.stage_partition(WORKLOAD, DAY) as staged:
        assert posixpath.basename(staged.path) == f"_tmp-{staged.version}"
        assert store.fs.isdir(staged.path)
        store.fs.pipe_file(staged.part_path(0), b"first part")
        store.fs.pipe_file(staged.part_path(1), b"second part")
        store.fs.pipe_file(posixpath.join(staged.path, "notes.txt"), b"not a part")
        commit = store.commit_partition(staged, {"record_count": 7, "read_method": "pit"})

    day_path = store.raw_day_path(WORKLOAD, DAY)
    version_dir = posixpath.join(day_path, f"v-{staged.version}")
    assert names(store, day_path) == [PARTITION_MARKER, f"v-{staged.version}"]
    assert names(store, version_dir) == ["notes.txt", "part-00000.parquet", "part-00001.parquet"]

    assert commit["record_count"] == 7
    assert commit["read_method"] == "pit"
    assert commit["workload_id"] == WORKLOAD
    assert commit["day"] == "2026-11-20"
    assert commit["version"] == staged.version
    assert commit["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert commit["path"] == store.uri(version_dir)
    assert "committed_at" in commit

    with store.fs.open(posixpath.join(day_path, PARTITION_MARKER), "rb") as fh:
        assert json.load(fh) == commit
    assert store.read_partition_record(WORKLOAD, DAY) == commit

    files = store.partition_files(WORKLOAD, DAY)
    assert files == [
        posixpath.join(version_dir, "part-00000.parquet"),
        posixpath.join(version_dir, "part-00001.parquet"),
    ]
    assert [store.fs.cat_file(f) for f in files] == [b"first part", b"second part"]


def test_failure_inside_stage_keeps_previous_partition(store: ArtifactStore) -> None:
    first = write_partition(store, [b"one", b"two"])
    day_path = store.raw_day_path(WORKLOAD, DAY)
    before_names = names(store, day_path)
    before_files = store.partition_files(WORKLOAD, DAY)
    before_marker = store.fs.cat_file(posixpath.join(day_path, PARTITION_MARKER))

    attempts: list[StagedPartition] = []
    with pytest.raises(RuntimeError, match="Elasticsearch went away"):
        fail_while_staging(store, RuntimeError("Elasticsearch went away"), attempts)
    [staged] = attempts

    assert not store.fs.exists(staged.path)
    assert names(store, day_path) == before_names
    assert store.fs.cat_file(posixpath.join(day_path, PARTITION_MARKER)) == before_marker
    assert store.read_partition_record(WORKLOAD, DAY) == first
    assert store.partition_files(WORKLOAD, DAY) == before_files
    assert [store.fs.cat_file(f) for f in before_files] == [b"one", b"two"]


def test_failure_before_any_commit_leaves_nothing_readable(store: ArtifactStore) -> None:
    attempts: list[StagedPartition] = []
    with pytest.raises(KeyboardInterrupt):
        fail_while_staging(store, KeyboardInterrupt(), attempts)
    [staged] = attempts

    assert not store.fs.exists(staged.path)
    with pytest.raises(PartitionNotFound):
        store.read_partition_record(WORKLOAD, DAY)


def test_second_commit_replaces_the_first(store: ArtifactStore) -> None:
    first = write_partition(store, [b"old-0", b"old-1", b"old-2"])
    second = write_partition(store, [b"new-0"], record_count=1)

    day_path = store.raw_day_path(WORKLOAD, DAY)
    assert second["version"] != first["version"]
    assert names(store, day_path) == [PARTITION_MARKER, f"v-{second['version']}"]
    assert not store.fs.exists(posixpath.join(day_path, f"v-{first['version']}"))

    record = store.read_partition_record(WORKLOAD, DAY)
    assert record == second
    assert record["record_count"] == 1
    assert record["parts"] == ["part-00000.parquet"]
    assert [store.fs.cat_file(f) for f in store.partition_files(WORKLOAD, DAY)] == [b"new-0"]


def test_leftover_tmp_from_killed_attempt_is_swept(store: ArtifactStore) -> None:
    day_path = store.raw_day_path(WORKLOAD, DAY)
    leftover = posixpath.join(day_path, "_tmp-20261120T020000-deadbeef")
    store.fs.makedirs(leftover, exist_ok=True)
    store.fs.pipe_file(posixpath.join(leftover, "part-00000.parquet"), b"from a killed pod")
    # An older version directory that never got its record (killed between rename and commit).
    orphan = posixpath.join(day_path, "v-20261120T020100-cafebabe")
    store.fs.makedirs(orphan, exist_ok=True)
    store.fs.pipe_file(posixpath.join(orphan, "part-00000.parquet"), b"orphan")
    with pytest.raises(PartitionNotFound):
        store.read_partition_record(WORKLOAD, DAY)

    commit = write_partition(store, [b"fresh"])

    assert names(store, day_path) == [PARTITION_MARKER, f"v-{commit['version']}"]
    assert [store.fs.cat_file(f) for f in store.partition_files(WORKLOAD, DAY)] == [b"fresh"]


def test_other_days_and_workloads_are_untouched(store: ArtifactStore) -> None:
    other_day = date(2026, 11, 19)
    with store.stage_partition(WORKLOAD, other_day) as staged:
        store.fs.pipe_file(staged.part_path(0), b"19th")
        kept = store.commit_partition(staged, {})
    with store.stage_partition("bfcl_live_assistant", DAY) as staged:
        store.fs.pipe_file(staged.part_path(0), b"other workload")
        other = store.commit_partition(staged, {})

    write_partition(store, [b"a"])
    write_partition(store, [b"b"])

    assert store.read_partition_record(WORKLOAD, other_day) == kept
    assert store.read_partition_record("bfcl_live_assistant", DAY) == other
    assert [store.fs.cat_file(f) for f in store.partition_files(WORKLOAD, other_day)] == [b"19th"]


def test_missing_partition_raises_partition_not_found(store: ArtifactStore) -> None:
    with pytest.raises(PartitionNotFound, match=r"no raw partition for workload 'nope' on 2026-11-20"):
        store.read_partition_record("nope", DAY)
    with pytest.raises(FileNotFoundError):
        store.partition_files("nope", DAY)


def test_write_json_atomic_leaves_no_tmp_files(store: ArtifactStore) -> None:
    directory = store.path("reports", WORKLOAD, "run-1")
    store.fs.makedirs(directory, exist_ok=True)
    target = posixpath.join(directory, "summary.json")

    store.write_json_atomic(target, {"accuracy": 0.5, "day": DAY})
    store.write_json_atomic(target, {"accuracy": 0.75, "day": DAY})

    assert names(store, directory) == ["summary.json"]
    with store.fs.open(target, "rb") as fh:
        assert json.load(fh) == {"accuracy": 0.75, "day": "2026-11-20"}
    assert not [p for p in store.fs.find(store.root) if p.endswith(".tmp")]


def test_commit_leaves_no_tmp_files_anywhere(store: ArtifactStore) -> None:
    write_partition(store, [b"x", b"y"])
    write_partition(store, [b"z"])

    leftovers = [p for p in store.fs.find(store.root) if p.endswith(".tmp") or "/_tmp-" in p]
    assert leftovers == []


# --- content-addressed model commits --------------------------------------------------------------


def write_adapter(store: ArtifactStore, relative: str, files: dict[str, bytes]) -> str:
    """Write ``files`` under ``relative`` in the store; the directory's URI as jobs are given it."""
    for name, data in files.items():
        store.write_bytes_atomic(store.path(relative, name), data)
    return artifacts.uri(store.url, relative)


ADAPTER = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": b"\x00\x01" * 1000}


def test_tree_sha256_covers_bytes_names_and_presence_not_order() -> None:
    files = {"b.json": "1" * 64, "a.bin": "2" * 64}

    assert tree_sha256(files) == tree_sha256(dict(reversed(files.items())))
    assert tree_sha256(files) != tree_sha256({**files, "b.json": "3" * 64})
    assert tree_sha256(files) != tree_sha256({"c.json": "1" * 64, "a.bin": "2" * 64})
    assert tree_sha256(files) != tree_sha256({"a.bin": "2" * 64})


def test_commit_model_copies_once_under_the_digest(store: ArtifactStore) -> None:
    source = write_adapter(store, "runs/w/2026-11-20/train/c/adapter", ADAPTER)

    first = store.commit_model(WORKLOAD, source)
    again = store.commit_model(WORKLOAD, source)

    assert first == again
    assert first.path == store.path(artifacts.model_dir(WORKLOAD, first.sha256))
    assert first.uri == f"{store.url}/models/{WORKLOAD}/{first.sha256}"
    assert names(store, first.path) == sorted([*ADAPTER, artifacts.MODEL_MARKER])
    assert {n: store.fs.cat_file(posixpath.join(first.path, n)) for n in ADAPTER} == ADAPTER
    record = json.loads(store.fs.cat_file(posixpath.join(first.path, artifacts.MODEL_MARKER)))
    assert (record["sha256"], record["source"]) == (first.sha256, source)
    assert names(store, store.path(artifacts.models_dir(WORKLOAD))) == [first.sha256]  # no staging left
    assert store.check_model(WORKLOAD, first.sha256) is None


def test_a_half_written_model_directory_is_completed(store: ArtifactStore) -> None:
    source = write_adapter(store, "runs/w/2026-11-20/train/c/adapter", ADAPTER)
    committed = store.commit_model(WORKLOAD, source)
    # A commit killed before its record was written: one file, no record.
    store.fs.rm(committed.path, recursive=True)
    store.write_bytes_atomic(posixpath.join(committed.path, "adapter_config.json"), b"partial")

    assert "never completely committed" in (store.check_model(WORKLOAD, committed.sha256) or "")
    assert store.commit_model(WORKLOAD, source) == committed
    assert store.check_model(WORKLOAD, committed.sha256) is None


def test_commit_model_of_an_empty_source_is_file_not_found(store: ArtifactStore) -> None:
    with pytest.raises(FileNotFoundError, match="no files to register"):
        store.commit_model(WORKLOAD, artifacts.uri(store.url, "runs/w/nothing/adapter"))
