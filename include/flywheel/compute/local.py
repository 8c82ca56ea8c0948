"""The ``local`` compute backend: a job's command line as a subprocess of the Airflow worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
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
    running interpreter's environment. Raises :class:`JobFailedError` (or its non-retryable subclass)
    when the job exits non-zero.
    """
    out = logger or log
    env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1"}
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    out.info("running %s locally: %s", job.name, " ".join(_shown(job.command)))
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
        try:
            for line in process.stdout:
                out.info("%s", line.rstrip("\n"))
        except BaseException:
            # The task was killed or interrupted: do not leave the job running without an owner.
            process.kill()
            raise
        code = process.wait()
    if code != 0:
        raise job_failure(code, job.output_uri, f"local job {job.name}", storage_options_from_env(job.env))
    out.info("%s finished; outputs in %s", job.name, job.output_uri)


def _shown(command: list[str]) -> list[str]:
    # The inline training config is long JSON: quote it so the logged line can be pasted into a shell.
    import shlex

    return [shlex.quote(part) for part in command]
