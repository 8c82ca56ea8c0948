"""The artifact store: one fsspec URL root holding every file the flywheel produces.

The layout under the root is built in :mod:`flywheel.artifacts` (``docs/artifact-store.md`` explains
each part); this module turns its relative paths into filesystem paths and URLs and commits atomically.

A day partition (of any layer) is written as a new version directory whose name starts with
``_tmp-`` (readers such as pyarrow and Spark skip ``_``-prefixed paths), renamed to ``v-<version>``
when complete and made visible by replacing ``_partition.json``, the single commit point. Older
versions are then deleted. A failed attempt therefore leaves the previous partition untouched, and a
re-run replaces the day instead of appending to it.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from flywheel import artifacts

STORAGE_OPTIONS_ENV = "FLYWHEEL_STORAGE_OPTIONS"
"""Hands ``artifact_store.storage_options`` (non-secret, JSON) to job processes, which read no config file."""


class PartitionNotFound(FileNotFoundError):
    """No committed partition exists for this layer, workload and day."""


@dataclass(frozen=True)
class StagedPartition:
    """A raw partition being written: parts go under ``path`` until :meth:`ArtifactStore.commit`."""

    layer: str
    workload_id: str
    day: date
    version: str
    path: str

    def part_path(self, index: int) -> str:
        return posixpath.join(self.path, artifacts.part_name(index))


class ArtifactStore:
    """Paths and atomic commits in the artifact store rooted at an fsspec URL."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs: AbstractFileSystem
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.url = root.rstrip("/")

    def path(self, *parts: str) -> str:
        """Filesystem path (without protocol) of ``parts`` under the root."""
        return posixpath.join(self.root, *parts)

    def uri(self, path: str) -> str:
        """Full URL of a filesystem path returned by this store (for logs, the UI and the database)."""
        return self.fs.unstrip_protocol(path)

    def day_path(self, workload_id: str, day: date, layer: str = "raw") -> str:
        """Filesystem path of the day partition of ``layer`` (ValueError for an unknown layer)."""
        return self.path(artifacts.day_dir(layer, workload_id, day))

    def raw_day_path(self, workload_id: str, day: date) -> str:
        return self.day_path(workload_id, day, "raw")

    @contextmanager
    def stage_partition(self, workload_id: str, day: date, layer: str = "raw") -> Iterator[StagedPartition]:
        """Yield a staging directory for a new version of a day partition of ``layer``.

        If the body raises, the staging directory is deleted and the committed partition (if any)
        is left exactly as it was. Commit with :meth:`commit_partition` inside the body.
        """
        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        staged = StagedPartition(
            layer,
            workload_id,
            day,
            version,
            artifacts.staging_dir(self.day_path(workload_id, day, layer), version),
        )
        self.fs.makedirs(staged.path, exist_ok=True)
        try:
            yield staged
        except BaseException:
            self._remove(staged.path)
            raise

    def commit_partition(self, staged: StagedPartition, record: dict[str, Any]) -> dict[str, Any]:
        """Publish a staged partition as the day's partition and delete every other version.

        ``record`` (counts, interval, query, ...) is stored in the commit record together with the
        version and the part files; the complete commit record is returned.
        """
        day_path = self.day_path(staged.workload_id, staged.day, staged.layer)
        final = artifacts.version_dir(day_path, staged.version)
        self.fs.mv(staged.path, final, recursive=True)
        parts = sorted(p for p in self.fs.ls(final, detail=False) if p.endswith(".parquet"))
        commit = {
            **record,
            "layer": staged.layer,
            "workload_id": staged.workload_id,
            "day": staged.day.isoformat(),
            "version": staged.version,
            "path": self.uri(final),
            "parts": [posixpath.basename(p) for p in parts],
            "committed_at": datetime.now(UTC).isoformat(),
        }
        self.write_json_atomic(artifacts.marker(day_path), commit)
        kept = posixpath.basename(final)
        for entry in self.fs.ls(day_path, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if name.startswith((artifacts.VERSION_PREFIX, artifacts.STAGING_PREFIX)) and name != kept:
                self._remove(entry)
        return commit

    def read_partition_record(self, workload_id: str, day: date, layer: str = "raw") -> dict[str, Any]:
        """The commit record of the day's partition; PartitionNotFound if none was committed."""
        marker = artifacts.marker(self.day_path(workload_id, day, layer))
        try:
            with self.fs.open(marker, "rb") as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise PartitionNotFound(f"no {layer} partition for workload {workload_id!r} on {day}") from None

    def partition_files(self, workload_id: str, day: date, layer: str = "raw") -> list[str]:
        """Paths of the committed Parquet parts of the day's partition, in order."""
        record = self.read_partition_record(workload_id, day, layer)
        base = artifacts.version_dir(self.day_path(workload_id, day, layer), record["version"])
        return [posixpath.join(base, name) for name in record["parts"]]

    def write_json_atomic(self, path: str, payload: dict[str, Any]) -> None:
        """Write JSON so readers see the old or the new file, never a partial one."""
        self.write_bytes_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write a file so readers see the old or the new content, never a partial one."""
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def storage_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Storage options from FLYWHEEL_STORAGE_OPTIONS in ``env`` (default: os.environ); {} when unset."""
    from flywheel.errors import ConfigError

    text = (os.environ if env is None else env).get(STORAGE_OPTIONS_ENV)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{STORAGE_OPTIONS_ENV}: not JSON ({exc.msg})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{STORAGE_OPTIONS_ENV}: must be a JSON object, got {type(options).__name__}")
    return options
