"""The ``local`` compute backend: a job's command line as a subprocess of the Airflow worker."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.compute import LABEL_PREFIX, JobSpec, job_failure
from flywheel.compute.backend import ComputeBackend
from flywheel.storage import storage_options_from_env

if TYPE_CHECKING:
    from airflow.sdk import XComArg

log = logging.getLogger(__name__)


class LocalBackend(ComputeBackend):
    """Each job as a subprocess of the worker that runs its task (:func:`run_local`).

    Subclass it and override :meth:`run` to change how a job runs on the worker and keep the task.
    """

    doc = "a subprocess of the worker, output streamed into this log"

    def mapped_task(self, kind: str, jobs: XComArg, *, doc_md: str) -> XComArg:
        """A ``@task`` mapped over the jobs; the map index is read from the job's labels."""
        from airflow.sdk import get_current_context, task

        label = "{{ candidate_id }}" + ("/{{ eval_type }}" if kind == "evaluate" else "")

        @task(task_id=kind, doc_md=doc_md, map_index_template=label)
        def run_job(job: dict[str, Any]) -> None:
            context = get_current_context()
            context["candidate_id"] = job["labels"][f"{LABEL_PREFIX}candidate"]
            context["eval_type"] = job["labels"].get(f"{LABEL_PREFIX}eval-type")
            self.run(JobSpec.from_dict(job))

        return run_job.expand(job=jobs)

    def run(self, job: JobSpec) -> None:
        """Run one job in the task instance that owns it (the body of the mapped task)."""
        run_local(job)


def run_local(job: JobSpec, *, logger: logging.Logger | None = None) -> None:
    """Run the job's command as a subprocess of this worker and stream its output to ``logger``.

    The environment is the worker's plus the job's; ``flywheel`` resolves to the console script of the
    running interpreter's environment. Raises :func:`~flywheel.compute.job_failure`'s error when the
    job exits non-zero: :class:`~flywheel.errors.OutOfMemoryJobError` (not retried) when it was killed
    by SIGKILL without writing ``error.json``, as the kernel's OOM killer ends a process. The job's peak
    memory (RSS) is logged and, for such a job, named in the error.
    """
    out = logger or log
    env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1"}
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    out.info("running %s locally: %s", job.name, " ".join(_shown(job.command)))
    # A child starts with this process's peak RSS in its ru_maxrss: only a higher one is its own.
    worker_peak = _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    with subprocess.Popen(
        job.command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        sampler = _HighWaterMark(process.pid)
        try:
            for line in process.stdout:
                out.info("%s", line.rstrip("\n"))
        except BaseException:
            # The task was killed or interrupted: do not leave the job running without an owner.
            process.kill()
            raise
        finally:
            sampled = sampler.stop()
        _, status, usage = os.wait4(process.pid, 0)
        code = process.returncode = os.waitstatus_to_exitcode(status)
    maxrss = _maxrss_bytes(usage.ru_maxrss)
    peak = max(sampled or 0, maxrss if maxrss > worker_peak else 0) or None
    shown = f"{peak / 2**20:,.0f} MiB" if peak else "unknown"
    if code != 0:
        out.error("%s exited with code %d (peak RSS %s)", job.name, code, shown)
        options = storage_options_from_env(job.env)
        raise job_failure(code, job.output_uri, f"local job {job.name}", options, peak_rss_bytes=peak)
    out.info("%s finished (peak RSS %s); outputs in %s", job.name, shown, job.output_uri)


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
        """Stop sampling (before the process is reaped, so its pid cannot be reused); the last peak."""
        self._stopped.set()
        self._thread.join()
        return self._peak


def _shown(command: list[str]) -> list[str]:
    # The inline training config is long JSON: quote it so the logged line can be pasted into a shell.
    import shlex

    return [shlex.quote(part) for part in command]
