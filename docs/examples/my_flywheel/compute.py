"""A compute backend: ``compute: {backend: "my_flywheel.compute:GpuLockBackend"}``."""

from __future__ import annotations

import fcntl

from flywheel.compute import JobSpec
from flywheel.compute.local import LocalBackend
from flywheel.config import flywheel_home


class GpuLockBackend(LocalBackend):
    """Local jobs that take turns on the machine's one GPU: each holds a file lock while it runs, so
    jobs of every task and DAG run queue up instead of running out of GPU memory together."""

    doc = "a subprocess of the worker, one job at a time (`$FLYWHEEL_HOME/gpu.lock`)"

    def run(self, job: JobSpec) -> None:
        flywheel_home().mkdir(parents=True, exist_ok=True)
        with open(flywheel_home() / "gpu.lock", "a+", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the job that holds the GPU
            lock.truncate(0)
            lock.write(job.name)  # who holds it, for a person looking at a stuck queue
            lock.flush()
            super().run(job)
