"""The contract of a job process (``flywheel train``, ``flywheel evaluate``) with its orchestrator.

A job writes its outputs under one output URI and finishes with ``result.json`` (written last, the
completion marker), or writes ``error.json`` and exits with a code that says whether a retry can
help. A new attempt first removes what an earlier attempt left there. Both backends (local process,
Kubernetes pod) read the outcome from the artifact store, never from the process itself.

``result.json`` names the attempt that wrote it (``attempt_id``, from ``$FLYWHEEL_ATTEMPT_ID``, which
the local backend sets per try) and the dataset it was computed on (``dataset_id``), so that a reader
can reject a result an earlier attempt's straggling process wrote over this attempt's
(:func:`check_result`).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from flywheel import artifacts
from flywheel.config import format_validation_error
from flywheel.errors import ConfigError, PermanentError, StaleResultError
from flywheel.redact import redact_text
from flywheel.storage import storage_options_from_env

log = logging.getLogger(__name__)

EXIT_FAILED = 1
"""Any other failure, possibly transient (a lost node, a storage hiccup): worth a retry."""
EXIT_CONFIG = 2
"""Bad configuration or inputs: retrying cannot help."""
EXIT_OUT_OF_MEMORY = 3
"""The accelerator ran out of memory: retrying the same job cannot help."""

ATTEMPT_ENV = "FLYWHEEL_ATTEMPT_ID"
"""The environment variable naming the attempt a job process belongs to (written into ``result.json``)."""

Settings = TypeVar("Settings", bound=BaseModel)


class JobInputError(PermanentError, ValueError):
    """The job's inputs cannot be used as given (empty split, unreadable file, missing model...)."""


def exit_code_for(exc: BaseException) -> int:
    """The exit code of a failed job: the orchestrator fails fast on codes retrying cannot fix."""
    if isinstance(exc, ConfigError | JobInputError | FileNotFoundError):
        return EXIT_CONFIG
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return EXIT_OUT_OF_MEMORY
    return EXIT_FAILED


def run_job(output_uri: str, outputs: Iterable[str], body: Callable[[], Any], *, what: str) -> int:
    """Clear ``outputs`` at ``output_uri`` and run ``body``; on failure write ``error.json``.

    Returns the process exit code: 0 on success, :func:`exit_code_for` the failure otherwise.
    """
    try:
        clear_outputs(output_uri, outputs)
        body()
    except BaseException as exc:
        code = exit_code_for(exc)
        write_error(output_uri, exc, code)
        log.error("%s failed (exit %d): %s: %s", what, code, type(exc).__name__, exc)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return code
    return 0


def clear_outputs(output_uri: str, outputs: Iterable[str]) -> None:
    """Remove the named outputs (and ``error.json``) a previous attempt left at ``output_uri``."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options_from_env())
    for name in {*outputs, artifacts.RESULT, artifacts.ERROR}:
        path = artifacts.job_uri(root, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def write_error(output_uri: str, exc: BaseException, code: int) -> None:
    """Write the machine-readable ``error.json`` of a failed job (best effort: never masks the failure)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(output_uri, **storage_options_from_env())
        fs.makedirs(root, exist_ok=True)
        # URLs lose their credentials: error.json reaches the task log, reports and alerts.
        payload = {
            "error": type(exc).__name__,
            "message": redact_text(str(exc))[:2000],
            "exit_code": code,
            "retryable": code == EXIT_FAILED,
            "traceback": [redact_text(line) for line in traceback.format_exception(exc)[-5:]],
        }
        fs.pipe_file(artifacts.job_uri(root, artifacts.ERROR), json.dumps(payload, indent=2).encode())
    except Exception as write_error:
        log.error("could not write error.json to %s: %s", output_uri, write_error)


def write_result(
    output_uri: str, result: dict[str, Any], *, dataset_uri: str | None = None
) -> dict[str, Any]:
    """Write ``result.json``: the last output of a successful job, its completion marker; return what
    was written.

    It carries the ``attempt_id`` of this process (``$FLYWHEEL_ATTEMPT_ID``, which a backend sets; not
    when run by hand) and the ``dataset_id`` of ``dataset_uri``, which readers check (:func:`check_result`).
    """
    import fsspec

    ids = {
        "attempt_id": os.environ.get(ATTEMPT_ENV),
        "dataset_id": dataset_uri and dataset_id_of(dataset_uri),
    }
    result = result | {key: value for key, value in ids.items() if value}
    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options_from_env())
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(
        artifacts.job_uri(root, artifacts.RESULT), json.dumps(result, indent=2, default=str).encode()
    )
    return result


def dataset_id_of(dataset_uri: str) -> str:
    """The id of the dataset at ``dataset_uri``: the name of its directory, ``datasets/<wl>/<dataset_id>``."""
    return posixpath.basename(dataset_uri.rstrip("/"))


def check_result(
    result: dict[str, Any], *, where: str, attempt_id: str | None = None, dataset_id: str | None = None
) -> None:
    """Raise :class:`~flywheel.errors.StaleResultError` when ``result`` (a job's ``result.json``) was
    written by another attempt than ``attempt_id`` or for another dataset than ``dataset_id``.

    A straggler of an earlier attempt (a job its killed worker left running) can finish after the
    retry cleared the output directory and overwrite the retry's result. An id is not checked where it
    is not known: None here (a backend that sets no attempt id, a job planned without a dataset id), or
    absent from ``result`` (a job run by hand, a job image older than these ids).
    """
    for what, key, expected in (("attempt", "attempt_id", attempt_id), ("dataset", "dataset_id", dataset_id)):
        found = result.get(key)
        if expected is not None and key in result and found != expected:
            raise StaleResultError(
                f"{where}: result.json belongs to {what} {found!r}, not to this job's {what} {expected!r}; "
                "rejected as the outcome of another job",
                exit_code=0,
            )


def load_settings(source: str | None, model: type[Settings], flag: str) -> Settings:
    """Job settings from a YAML/JSON file or an inline JSON object; errors name the flag and the key."""
    import yaml

    if source is None:
        return model()
    inline = source.lstrip().startswith("{")
    where = flag if inline else source
    try:
        raw = json.loads(source) if inline else yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        return model.model_validate(raw or {})
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {flag.lstrip('-')} ({exc.strerror})") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: invalid {'JSON' if inline else 'YAML'}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid {flag.lstrip('-')}\n{format_validation_error(exc)}") from None


def read_jsonl(uri: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each JSON object line of a dataset file; JobInputError names the line."""
    import fsspec

    try:
        with fsspec.open(uri, "rb", **storage_options_from_env()) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{uri}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise JobInputError(f"{where}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise JobInputError(f"{where}: not a JSON object")
                yield where, record
    except FileNotFoundError:
        raise JobInputError(f"{uri} does not exist") from None
