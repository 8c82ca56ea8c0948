"""The ``local`` compute backend: a job's command line as a subprocess of the Airflow worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flywheel.compute import JobSpec, job_failure
from flywheel.storage import storage_options_from_env

log = logging.getLogger(__name__)


def run_job(job: dict[str, Any]) -> None:
    """Body of the mapped ``train`` / ``evaluate`` task on the ``local`` backend: run one planned job."""
    run_local(JobSpec.from_dict(job))


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
