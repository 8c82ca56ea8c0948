"""The ``local`` compute backend: a job's command line as a subprocess of the Airflow worker.

The job runs under a guard (:mod:`flywheel.compute.jobguard`) in its own session and process group,
so that it never outlives its task: the group is killed when the task is interrupted (Airflow's
``execution_timeout``, a task marked failed), when the job runs past its time limit
(``compute.<kind>_timeout_minutes``), when the worker process dies (the guard sees its parent go), and,
for whatever the job left behind, when it ends. Otherwise a job of a killed worker would race its
task's retry, writing to the same output URI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel

from flywheel import artifacts
from flywheel.compute import (
    LABEL_PREFIX,
    JobSpec,
    job_failure,
    job_secret_env,
    read_job_file,
    read_job_result,
    write_job_file,
)
from flywheel.compute.backend import ComputeBackend
from flywheel.config import EndpointConfig
from flywheel.errors import JobTimeoutError
from flywheel.jobs import ATTEMPT_ENV
from flywheel.storage import storage_options_from_env

if TYPE_CHECKING:
    from airflow.sdk import XComArg

    from flywheel.config import FlywheelConfig

log = logging.getLogger(__name__)

GUARD = str(Path(__file__).with_name("jobguard.py"))
"""The guard script each local job runs under (by path, with ``python -I -S``)."""


class LocalBackend(ComputeBackend):
    """Each job as a subprocess of the worker that runs its task (:func:`run_local`).

    Subclass it and override :meth:`run` to change how a job runs on the worker and keep the task.
    """

    doc = "a subprocess of the worker, output streamed into this log"

    def mapped_task(self, kind: str, jobs: XComArg, *, doc_md: str) -> XComArg:
        """A ``@task`` mapped over the jobs; the map index is read from the job's labels."""
        from airflow.sdk import get_current_context, task

        label = "{{ candidate_id }}" + ("/{{ eval_type }}" if kind == "evaluate" else "")

        @task(
            task_id=kind,
            doc_md=doc_md,
            map_index_template=label,
            execution_timeout=self.task_timeout(kind),
            max_active_tis_per_dagrun=self.config.compute.local_parallel_jobs,
        )
        def run_job(job: dict[str, Any]) -> None:
            context = get_current_context()
            context["candidate_id"] = job["labels"][f"{LABEL_PREFIX}candidate"]
            context["eval_type"] = job["labels"].get(f"{LABEL_PREFIX}eval-type")
            self.run(JobSpec.from_dict(job))

        return run_job.expand(job=jobs)

    def run(self, job: JobSpec) -> None:
        """Run one job in the task instance that owns it (the body of the mapped task), within its time
        limit, as the attempt of the running task try, with the worker variables it needs."""
        limit = self.config.compute.job_timeout(job.kind)
        run_local(
            job,
            timeout_s=limit.total_seconds() if limit else None,
            attempt_id=task_attempt_id(job.name),
            pass_env=job_pass_env(self.config),
            secret_env=job_secret_env(self.config),
        )


PASSED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "PYTHON*",
    "FLYWHEEL_*",
    "HF_*",
    "HUGGINGFACE_*",
    "TRANSFORMERS_*",
    "TOKENIZERS_PARALLELISM",
    "OMP_*",
    "MKL_*",
    "OPENBLAS_NUM_THREADS",
    "KMP_*",
    "TORCH*",
    "PYTORCH_*",
    "CUDA_*",
    "NVIDIA_*",
    "HIP_VISIBLE_DEVICES",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "COVERAGE_*",
)
"""The worker variables every local job gets (a name, or a prefix ending in ``*``): what a Python
process, the model libraries and their thread settings need. The rest of the worker's environment
(Airflow's connections and database URL, cloud keys the job does not use) stays with the worker."""

STORAGE_CREDENTIAL_ENV = {
    "s3": ("AWS_*",),
    "s3a": ("AWS_*",),
    "gs": ("GOOGLE_*", "GCE_*", "CLOUDSDK_*"),
    "gcs": ("GOOGLE_*", "GCE_*", "CLOUDSDK_*"),
    "abfs": ("AZURE_*",),
    "abfss": ("AZURE_*",),
    "az": ("AZURE_*",),
    "adl": ("AZURE_*",),
}
"""The artifact store's protocol -> the variables its fsspec filesystem reads credentials from."""


def job_pass_env(config: FlywheelConfig) -> list[str]:
    """The worker variables a local job of ``config`` needs beyond :data:`PASSED_ENV`: the artifact
    store's credential variables, every endpoint's ``api_key_env`` and ``compute.pass_env``."""
    import fsspec

    protocol = fsspec.utils.get_protocol(config.artifact_store.root)
    keys = sorted({endpoint.api_key_env for endpoint in _endpoints(config) if endpoint.api_key_env})
    return [*STORAGE_CREDENTIAL_ENV.get(protocol, ()), *keys, *config.compute.pass_env]


def _endpoints(value: Any) -> Iterator[EndpointConfig]:
    """Every endpoint block in a configuration (models, judges, teachers), wherever it sits."""
    if isinstance(value, EndpointConfig):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _endpoints(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _endpoints(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _endpoints(item)


def job_environment(worker_env: Mapping[str, str], allowed: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``worker_env`` a local job gets: :data:`PASSED_ENV` and ``allowed`` (names, or
    prefixes ending in ``*``)."""
    patterns = [*PASSED_ENV, *allowed]
    names = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    return {k: v for k, v in worker_env.items() if k in names or k.startswith(prefixes)}


def task_attempt_id(name: str) -> str:
    """A new attempt id: the running Airflow task try's (``<run_id>/<task>[<map index>]/try-<n>``) where
    there is one, ``name`` otherwise, and a random suffix (a cleared task can repeat a try number)."""
    suffix = uuid.uuid4().hex[:8]
    if "airflow.sdk" not in sys.modules:  # not in a task; importing Airflow would reconfigure logging
        return f"{name}/{suffix}"
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # not in a running task: `flywheel` by hand, a test
        return f"{name}/{suffix}"
    return f"{ti.run_id}/{ti.task_id}[{ti.map_index}]/try-{ti.try_number}/{suffix}"


def run_local(
    job: JobSpec,
    *,
    logger: logging.Logger | None = None,
    timeout_s: float | None = None,
    attempt_id: str | None = None,
    pass_env: Iterable[str] = (),
    secret_env: Mapping[str, str] | None = None,
) -> None:
    """Run the job's command as a subprocess of this worker and stream its output to ``logger``.

    The environment is the worker's allow-listed variables (:func:`job_environment`: :data:`PASSED_ENV`
    and ``pass_env``), the job's, ``secret_env`` (what must not travel in the job's spec, such as the
    artifact store's secret options) and ``$FLYWHEEL_ATTEMPT_ID`` (``attempt_id``, a new
    one when None); ``flywheel`` resolves to the console script of the running interpreter's
    environment. Before it starts, the attempt is recorded in the job's ``attempt.json``. The job runs
    under :mod:`~flywheel.compute.jobguard` in its own process group, which is killed when this call
    is interrupted, when the job runs past ``timeout_s``, when this process dies, and (what the job
    left running) when the job ends.

    Raises :class:`~flywheel.errors.JobTimeoutError` for a job killed at ``timeout_s`` (with an
    ``error.json`` written on its behalf), :class:`~flywheel.errors.StaleResultError` when the
    ``result.json`` it left belongs to another attempt or dataset, and otherwise
    :func:`~flywheel.compute.job_failure`'s error when the job exits non-zero:
    :class:`~flywheel.errors.OutOfMemoryJobError` (not retried) when it was killed by SIGKILL without
    writing ``error.json``, as the kernel's OOM killer ends a process. The job's peak memory (RSS) is
    logged and, for such a job, named in the error.
    """
    out = logger or log
    attempt_id = attempt_id or task_attempt_id(job.name)
    secrets = dict(secret_env or {})
    options = storage_options_from_env({**job.env, **secrets})
    env = {
        **job_environment(os.environ, pass_env),
        **job.env,
        **secrets,
        "PYTHONUNBUFFERED": "1",
        ATTEMPT_ENV: attempt_id,
    }
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    started = datetime.now(UTC).isoformat(timespec="seconds")
    marker = {"attempt_id": attempt_id, "dataset_id": job.dataset_id, "job": job.name, "started_at": started}
    write_job_file(job.output_uri, artifacts.ATTEMPT, marker, options)
    limit = _duration(timeout_s) if timeout_s else "none"
    out.info("running %s locally: %s", job.name, " ".join(_shown(job.command)))
    out.info("%s: attempt %s, time limit %s, in its own process group", job.name, attempt_id, limit)
    # A child starts with this process's peak RSS in its ru_maxrss: only a higher one is its own.
    worker_peak = _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    pid_read, pid_write = os.pipe()
    try:
        process = subprocess.Popen(  # nosec B603 # our own interpreter and guard, the job's argv, no shell
            [sys.executable, "-I", "-S", GUARD, str(os.getpid()), str(pid_write), "--", *job.command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,  # the guard leads a new process group that the job joins
            pass_fds=(pid_write,),
        )
    finally:
        os.close(pid_write)
    with process:
        assert process.stdout is not None  # stdout=PIPE above
        reader = threading.Thread(
            target=_stream, args=(process.stdout, out), name=f"log-{job.name}", daemon=True
        )
        reader.start()
        deadline = _Deadline(process.pid, timeout_s)
        sampler, reaped = None, None
        try:
            job_pid = _read_pid(pid_read)
            sampler = _HighWaterMark(job_pid) if job_pid else None
            if hasattr(os, "waitid"):
                # Until the guard ends, unreaped: its pid stays the group's id, never another process's.
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            else:  # macOS before Python 3.13: reaped; what is left of the group still holds its id
                reaped = os.wait4(process.pid, 0)
        finally:
            timed_out = deadline.cancel()
            # All of the group when this task was interrupted; what the job left running when it ended.
            _kill_group(process.pid)
            sampled = sampler.stop() if sampler else None
            _, status, usage = reaped or os.wait4(process.pid, 0)
            code = process.returncode = os.waitstatus_to_exitcode(status)
            reader.join(timeout=10)
    maxrss = _maxrss_bytes(usage.ru_maxrss)
    peak = max(sampled or 0, maxrss if maxrss > worker_peak else 0) or None
    # The MiB that error.json records (to 0.1), so that the log line and the file agree.
    shown = f"{round(peak / 2**20, 1):,.0f} MiB" if peak else "unknown"
    if timed_out and code != 0:
        out.error("%s ran past its time limit of %s and was killed (peak RSS %s)", job.name, limit, shown)
        raise _timed_out(job, timeout_s or 0, code, options)
    if code != 0:
        out.error("%s exited with code %d (peak RSS %s)", job.name, code, shown)
        raise job_failure(code, job.output_uri, f"local job {job.name}", options, peak_rss_bytes=peak)
    read_job_result(job, options, attempt_id=attempt_id)  # StaleResultError: another attempt's result
    out.info("%s finished (peak RSS %s); outputs in %s", job.name, shown, job.output_uri)


def _timed_out(job: JobSpec, timeout_s: float, code: int, options: dict[str, Any]) -> JobTimeoutError:
    """The error of a job killed at its time limit; its ``error.json`` says so (the job could not)."""
    message = (
        f"local job {job.name} timed out: it ran past its time limit of {_duration(timeout_s)} and was "
        f"killed with every process it started (compute.{job.kind}_timeout_minutes)"
    )
    error = {
        "error": "Timeout",
        "message": message,
        "exit_code": code,
        "retryable": True,
        "timeout_s": timeout_s,
    }
    if read_job_file(job.output_uri, artifacts.ERROR, options) is None:
        write_job_file(job.output_uri, artifacts.ERROR, error, options)
    return JobTimeoutError(message, exit_code=code, error=error)


def _duration(seconds: float) -> str:
    """``90 s``, ``6 min``, ``360 min``: a time limit as configured (in minutes) or as tests set it."""
    return f"{seconds / 60:,.0f} min" if seconds >= 120 else f"{seconds:g} s"


def _stream(lines: IO[str], out: logging.Logger) -> None:
    """Log each line of the job's output as it comes."""
    for line in lines:
        out.info("%s", line.rstrip("\n"))


def _read_pid(fd: int) -> int | None:
    """The job's pid, as the guard writes it once the job started (None: it could not start it)."""
    with os.fdopen(fd, "rb") as pipe:
        text = pipe.read().strip()
    return int(text) if text else None


def _kill_group(group: int) -> None:
    """SIGKILL every process of the group (none left is fine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


class _Deadline:
    """Kills the job's process group when it runs past ``timeout_s`` (never, for None).

    :meth:`cancel` returns whether it fired; it cannot fire afterwards, so it never kills a group whose
    leader has been reaped (and whose id another process may then get).
    """

    def __init__(self, group: int, timeout_s: float | None) -> None:
        self._group = group
        self._lock = threading.Lock()
        self._cancelled = False
        self.expired = False
        self._timer = threading.Timer(timeout_s, self._expire) if timeout_s else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if not self._cancelled:
                self.expired = True
                _kill_group(self._group)

    def cancel(self) -> bool:
        with self._lock:
            self._cancelled = True
        if self._timer is not None:
            self._timer.cancel()
        return self.expired


def _maxrss_bytes(maxrss: int) -> int:
    """``ru_maxrss`` in bytes: macOS reports bytes, Linux KiB."""
    return maxrss if sys.platform == "darwin" else maxrss * 1024


class _HighWaterMark:
    """The peak RSS (``VmHWM``) of a running process, sampled from ``/proc`` (None where there is none).

    It misses growth after the last sample, which ``os.wait4``'s ``ru_maxrss`` covers when it is above
    the worker's own peak; below, ``ru_maxrss`` is the worker's, and the sample is all there is.
    """

    interval = 0.2

    def __init__(self, pid: int) -> None:
        self._status = Path(f"/proc/{pid}/status")
        self._stopped = threading.Event()
        self._peak: int | None = None
        self._thread = threading.Thread(target=self._sample, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            try:
                text = self._status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self._peak = int(line.split()[1]) * 1024
            if self._stopped.wait(self.interval):
                return

    def stop(self) -> int | None:
        """Stop sampling (it stops by itself once the process is gone); the last peak."""
        self._stopped.set()
        self._thread.join()
        return self._peak


def _shown(command: list[str]) -> list[str]:
    # The inline training config is long JSON: quote it so the logged line can be pasted into a shell.
    import shlex

    return [shlex.quote(part) for part in command]
