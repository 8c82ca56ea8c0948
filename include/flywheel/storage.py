"""The artifact store: one fsspec URL root holding every file the flywheel produces.

The layout under the root is built in :mod:`flywheel.artifacts` (``docs/artifact-store.md`` explains
each part); this module turns its relative paths into filesystem paths and URLs and commits atomically.

A day partition (of any layer) is written as a new version directory whose name starts with
``_tmp-`` (readers such as pyarrow and Spark skip ``_``-prefixed paths), renamed to ``v-<version>``
when complete and made visible by replacing ``_partition.json``, the single commit point. Older
versions are then deleted. A failed attempt therefore leaves the previous partition untouched, and a
re-run replaces the day instead of appending to it.

A registered model's adapter is the opposite: it is copied once into a directory named by the digest of
its files (:meth:`ArtifactStore.commit_model`) and never rewritten, so the registry can point at it for
good while the day's run directory is cleared and rewritten by re-runs.
"""

from __future__ import annotations

import hashlib
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
"""Hands the non-secret ``artifact_store.storage_options`` (JSON) to job processes, which read no config
file. It travels in the job's spec (XCom) and, on Kubernetes, as a plain pod environment variable."""

STORAGE_SECRET_OPTIONS_ENV = "FLYWHEEL_STORAGE_SECRET_OPTIONS"  # nosec B105 # a variable name, not a secret
"""The secret storage options (JSON: ``key``, ``secret``, ``token`` ...), merged over
:data:`STORAGE_OPTIONS_ENV`. Never in a job's spec: the local backend sets it in the job process's
environment only; a pod reads it from a Kubernetes Secret (``compute.kubernetes.secret_env``), or
does without it when its credentials come from the environment (``flywheel-artifact-store``)."""


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


COPY_CHUNK_BYTES = 8 * 1024 * 1024
"""Files are copied (and hashed) in chunks of this size, so an adapter of any size fits in memory."""


def tree_sha256(files: Mapping[str, str]) -> str:
    """The digest of a directory from its files' digests (relative path -> sha256).

    It hashes the ``sha256sum`` lines (``<sha256>  <relative path>``) in path order, so it changes when
    any file's bytes, name or presence does, and not with the directory's location or timestamps.
    """
    lines = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class CommittedModel:
    """An adapter directory committed under the digest of its files (:meth:`ArtifactStore.commit_model`)."""

    path: str
    """Filesystem path in the store."""
    uri: str
    """The same under the root as configured (what jobs and serving are given)."""
    sha256: str
    files: dict[str, str]
    """Relative path -> sha256 of each file."""


class ArtifactStore:
    """Paths and atomic commits in the artifact store rooted at an fsspec URL."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs: AbstractFileSystem
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(root, **self.storage_options)
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

    def resolve(self, uri: str) -> tuple[AbstractFileSystem, str]:
        """The filesystem and path of ``uri``: the store's own under its root, else fsspec's (with the
        store's options where the protocol is the store's)."""
        if uri == self.url or uri.startswith(self.url + "/"):
            return self.fs, self.path(uri[len(self.url) :].lstrip("/"))
        same = fsspec.utils.get_protocol(uri) == fsspec.utils.get_protocol(self.url)
        return fsspec.core.url_to_fs(uri, **(self.storage_options if same else {}))

    def commit_model(self, workload_id: str, source_uri: str) -> CommittedModel:
        """Copy the adapter directory at ``source_uri`` into ``models/<workload_id>/<sha256 of its files>``.

        The files are hashed while they are copied into a staging directory, then moved into the
        content-addressed one, and its commit record (MODEL_MARKER) is written last: a directory with
        a record is complete. Committing the same bytes again (a retry, two registrations at once)
        changes nothing; a committed directory that no longer matches its digest is written anew.
        FileNotFoundError when ``source_uri`` holds no files.
        """
        source_fs, source_root = self.resolve(source_uri)
        prefix = source_root.rstrip("/") + "/"
        source_fs.invalidate_cache(source_root)
        names = [
            path[len(prefix) :]
            for path in (source_fs.find(source_root, withdirs=False) if source_fs.isdir(source_root) else [])
            if path.startswith(prefix) and posixpath.basename(path) != artifacts.MODEL_MARKER
        ]
        if not names:
            raise FileNotFoundError(f"{source_uri}: no files to register as an adapter there")
        staging = self.path(artifacts.model_staging_dir(workload_id, uuid.uuid4().hex[:8]))
        try:
            files: dict[str, str] = {}
            for name in sorted(names):
                files[name] = self._copy_hashed(source_fs, prefix + name, posixpath.join(staging, name))
            sha256 = tree_sha256(files)
            final = self.path(artifacts.model_dir(workload_id, sha256))
            if self.check_model(workload_id, sha256) is not None:
                self._remove(final)  # absent, half-written, or altered: write it (again)
                for name in files:
                    target = posixpath.join(final, name)
                    self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
                    self.fs.mv(posixpath.join(staging, name), target)
                record = {
                    "sha256": sha256,
                    "files": files,
                    "source": source_uri,
                    "committed_at": datetime.now(UTC).isoformat(),
                }
                self.write_json_atomic(posixpath.join(final, artifacts.MODEL_MARKER), record)
        finally:
            self._remove(staging)
        uri = artifacts.uri(self.url, artifacts.model_dir(workload_id, sha256))
        return CommittedModel(final, uri, sha256, files)

    def check_model(self, workload_id: str, sha256: str) -> str | None:
        """None when the committed adapter ``sha256`` is complete and its files still hash to it; else
        what is wrong with it."""
        final = self.path(artifacts.model_dir(workload_id, sha256))
        self.fs.invalidate_cache(final)
        if not self.fs.exists(posixpath.join(final, artifacts.MODEL_MARKER)):
            return f"{self.uri(final)} is missing or was never completely committed"
        prefix = final + "/"
        files = {}
        for path in self.fs.find(final, withdirs=False):
            name = path[len(prefix) :]
            if name != artifacts.MODEL_MARKER:
                with self.fs.open(path, "rb") as fh:
                    files[name] = _sha256_of(fh)
        found = tree_sha256(files)
        if found != sha256:
            return f"{self.uri(final)} was altered: its files hash to {found}, not {sha256}"
        return None

    def _copy_hashed(self, source_fs: AbstractFileSystem, source: str, target: str) -> str:
        """Copy one file into the store in chunks; its sha256."""
        digest = hashlib.sha256()
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        with source_fs.open(source, "rb") as src, self.fs.open(target, "wb") as dst:
            while chunk := src.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                dst.write(chunk)
        return digest.hexdigest()

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _sha256_of(fh: Any) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(COPY_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def storage_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Storage options from FLYWHEEL_STORAGE_OPTIONS, with FLYWHEEL_STORAGE_SECRET_OPTIONS over them, in
    ``env`` (default: os.environ); {} when neither is set."""
    source = os.environ if env is None else env
    return _options_from(source, STORAGE_OPTIONS_ENV) | _options_from(source, STORAGE_SECRET_OPTIONS_ENV)


def _options_from(env: Mapping[str, str], name: str) -> dict[str, Any]:
    from flywheel.errors import ConfigError

    text = env.get(name)
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not JSON ({exc.msg})") from None  # never the text: it may hold a secret
    if not isinstance(options, dict):
        raise ConfigError(f"{name}: must be a JSON object, got {type(options).__name__}")
    return options
