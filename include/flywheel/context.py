"""The run context: what every task of one DAG run shares (config, workload, data interval, run ids).

DAG files build it once per task with :meth:`RunContext.current`; stage code takes it instead of the
same five arguments, and the CLI and tests build it with :meth:`RunContext.of`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from flywheel.config import FlywheelConfig, WorkloadConfig, load_config
from flywheel.intervals import partition_day, run_interval

if TYPE_CHECKING:
    from flywheel.storage import ArtifactStore
    from flywheel.tracking import StageRecord


@dataclass(frozen=True)
class RunContext:
    """One DAG run of one workload, as a stage sees it."""

    config: FlywheelConfig
    workload: WorkloadConfig
    interval_start: datetime
    interval_end: datetime
    dag_run_id: str
    try_number: int = field(default=1, compare=False)

    @classmethod
    def of(
        cls,
        config: FlywheelConfig,
        workload_id: str,
        *,
        interval_start: datetime,
        interval_end: datetime,
        dag_run_id: str,
        try_number: int = 1,
    ) -> RunContext:
        """The context of ``workload_id``'s run ``dag_run_id`` over ``[interval_start, interval_end)``."""
        return cls(config, config.workload(workload_id), interval_start, interval_end, dag_run_id, try_number)

    @classmethod
    def current(cls, workload_id: str) -> RunContext:
        """The context of the Airflow task that is running now (config read afresh from its file)."""
        from airflow.sdk import get_current_context

        airflow = get_current_context()
        config = load_config()
        start, end = run_interval(
            airflow["data_interval_start"],
            airflow["data_interval_end"],
            airflow["dag_run"].run_after,
            config.workload(workload_id).schedule,
        )
        return cls.of(
            config,
            workload_id,
            interval_start=start,
            interval_end=end,
            dag_run_id=airflow["run_id"],
            try_number=airflow["ti"].try_number,
        )

    @property
    def workload_id(self) -> str:
        return self.workload.workload_id

    @property
    def day(self) -> date:
        """The day the run's outputs are filed under."""
        return partition_day(self.interval_start)

    @cached_property
    def store(self) -> ArtifactStore:
        from flywheel.storage import ArtifactStore

        return ArtifactStore(self.config.artifact_store.root, self.config.artifact_store.storage_options)

    @cached_property
    def run_id(self) -> int:
        """The ``runs`` row of this DAG run, created on first use (task retries reuse it)."""
        from flywheel.tracking import ensure_run

        return ensure_run(
            self.config.metadata,
            workload_id=self.workload_id,
            dag_id=self.workload.dag_id,
            dag_run_id=self.dag_run_id,
            interval_start=self.interval_start,
            interval_end=self.interval_end,
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """Record the stage ``name`` of this run (running, then succeeded or failed with the error)."""
        from flywheel.tracking import record_stage

        with record_stage(self.config.metadata, self.run_id, name, self.try_number) as stage:
            yield stage

    def interval_summary(self) -> dict[str, str]:
        """The interval as a task's XCom carries it."""
        return {
            "interval_start": self.interval_start.isoformat(),
            "interval_end": self.interval_end.isoformat(),
        }
