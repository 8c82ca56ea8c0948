"""Compute backends: where the DAG's mapped ``train`` and ``evaluate`` tasks run their jobs.

``compute.backend`` names one in :data:`COMPUTE_BACKENDS`: ``local`` (a subprocess of the worker,
:mod:`flywheel.compute.local`) and ``kubernetes`` (a pod per job, :mod:`flywheel.compute.kubernetes`)
are built in; the user's own is a :class:`ComputeBackend` subclass named by its dotted path. A backend
turns the planned jobs (the XCom of ``plan_training`` / ``plan_evaluation``: a list of
:class:`~flywheel.compute.JobSpec` dicts) into the mapped task that runs one job each; however it
runs them, a job writes its ``result.json`` or ``error.json`` to its ``output_uri``, where the
``collect_*`` tasks read it. This module imports nothing heavy: the DAG file resolves the configured
backend at parse time, and only that backend's module is imported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar

from flywheel.plugins import Registry

if TYPE_CHECKING:
    from airflow.sdk import XComArg
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from flywheel.config import FlywheelConfig


class ComputeBackend(ABC):
    """A place heavy jobs run; subclass it (and name it by dotted path in ``compute.backend``) to add one.

    Made from the whole configuration (``self.config``), at DAG parse time: keep the constructor and
    :meth:`mapped_task` cheap, and import clients inside the task that runs a job.
    """

    doc: ClassVar[str]
    """One line for the DAG's documentation: where a job runs and where its log goes."""

    def __init__(self, config: FlywheelConfig) -> None:
        self.config = config

    @abstractmethod
    def mapped_task(self, kind: str, jobs: XComArg, *, doc_md: str) -> XComArg | MappedOperator:
        """The task ``kind`` (``train`` or ``evaluate``) mapped over ``jobs``, one task instance per job.

        ``jobs`` is the planning task's XCom (JobSpec dicts); a task instance fails when its job fails,
        with :func:`flywheel.compute.job_failure`'s error so that the DAG's retry policy applies. The
        map index should read ``<candidate_id>`` (``<candidate_id>/<eval_type>`` for evaluations), and
        its ``execution_timeout`` :meth:`task_timeout` (the DAG's default is meant for light tasks).
        """

    task_timeout_margin: ClassVar[timedelta] = timedelta(minutes=10)
    """How much longer than its job a job task may run: the job's own time limit ends it first, with
    a clear error, and Airflow's ``execution_timeout`` is the backstop."""

    def task_timeout(self, kind: str) -> timedelta:
        """The ``execution_timeout`` of the ``kind`` job tasks: the job's time limit plus a margin."""
        job = self.config.compute.job_timeout(kind)
        if job is None:
            raise ValueError(f"no time limit is configured for {kind!r} jobs (only train and evaluate)")
        return job + self.task_timeout_margin


COMPUTE_BACKENDS: Registry[type[ComputeBackend]] = Registry(
    "compute backend",
    {
        "local": "flywheel.compute.local:LocalBackend",
        "kubernetes": "flywheel.compute.kubernetes:KubernetesBackend",
    },
    base=ComputeBackend,
)
"""``compute.backend`` -> its :class:`ComputeBackend`; the user's own by dotted path."""


def compute_backend(config: FlywheelConfig) -> ComputeBackend:
    """The backend ``config.compute.backend`` names, made from ``config`` (importing its module now)."""
    return COMPUTE_BACKENDS.resolve(config.compute.backend)(config)
