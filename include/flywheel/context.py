"""The run context: what every task of one DAG run shares (config, workload, data interval, run ids).

DAG files build it once per task with :meth:`RunContext.current`; stage code takes it instead of the
same five arguments, and the CLI and tests build it with :meth:`RunContext.of`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from flywheel.config import CandidateConfig, FlywheelConfig, WorkloadConfig, load_config
from flywheel.errors import RunParamError
from flywheel.intervals import partition_day, run_interval

if TYPE_CHECKING:
    from flywheel.storage import ArtifactStore
    from flywheel.tracking import StageRecord


@dataclass(frozen=True)
class RunOptions:
    """What a manual run asked for besides the nightly defaults: the DAG's ``champion_only``, ``dry_run``
    and ``candidates`` params (a scheduled run has the defaults: none of them)."""

    champion_only: bool = False
    """Re-evaluate the champion only: nothing trains, whatever the retrain policy says, and no candidate
    is evaluated; the decision judges the champion on the run's fresh data."""
    dry_run: bool = False
    """Decide, record and notify, marked as a dry run; the champion alias never moves and no approval is
    asked for."""
    candidates: tuple[str, ...] | None = None
    """Only these candidates train and are evaluated; None: every configured candidate."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], workload: WorkloadConfig) -> RunOptions:
        """The options in a DAG run's ``params``; RunParamError naming the param that does not fit."""
        flags = {}
        for name in ("champion_only", "dry_run"):
            value = params.get(name, False)
            if not isinstance(value, bool):
                raise RunParamError(f"param {name}: must be true or false, got {value!r}")
            flags[name] = value
        candidates = params.get("candidates")
        if candidates is not None:
            known = [c.candidate_id for c in workload.training.candidates]
            if not isinstance(candidates, list | tuple) or not candidates:
                raise RunParamError(
                    "param candidates: must be null or a non-empty list of candidate ids "
                    f"({', '.join(known)})"
                )
            unknown = [c for c in candidates if c not in known]
            if unknown:
                raise RunParamError(
                    f"param candidates: {', '.join(map(repr, unknown))} "
                    f"{'is not a candidate' if len(unknown) == 1 else 'are not candidates'} of workload "
                    f"{workload.workload_id}; its candidates: {', '.join(known)}"
                )
            if flags["champion_only"]:
                raise RunParamError(
                    "params champion_only and candidates: a champion-only run trains and evaluates no "
                    "candidate; set one of them"
                )
            candidates = tuple(dict.fromkeys(candidates))
        return cls(flags["champion_only"], flags["dry_run"], candidates)

    def candidates_of(self, workload: WorkloadConfig) -> list[CandidateConfig]:
        """The workload's candidates this run trains and evaluates, in the configuration's order."""
        if self.champion_only:
            return []
        return [
            c
            for c in workload.training.candidates
            if self.candidates is None or c.candidate_id in self.candidates
        ]

    def to_dict(self) -> dict[str, Any]:
        """The options as a summary or a notification quotes them."""
        return {
            "champion_only": self.champion_only,
            "dry_run": self.dry_run,
            "candidates": list(self.candidates) if self.candidates is not None else None,
        }


@dataclass(frozen=True)
class RunContext:
    """One DAG run of one workload, as a stage sees it."""

    config: FlywheelConfig
    workload: WorkloadConfig
    interval_start: datetime
    interval_end: datetime
    dag_run_id: str
    try_number: int = field(default=1, compare=False)
    options: RunOptions = field(default_factory=RunOptions)

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
        options: RunOptions | None = None,
    ) -> RunContext:
        """The context of ``workload_id``'s run ``dag_run_id`` over ``[interval_start, interval_end)``."""
        return cls(
            config,
            config.workload(workload_id),
            interval_start,
            interval_end,
            dag_run_id,
            try_number,
            options or RunOptions(),
        )

    @classmethod
    def current(cls, workload_id: str) -> RunContext:
        """The context of the Airflow task that is running now (config read afresh from its file)."""
        from airflow.sdk import get_current_context

        airflow = get_current_context()
        config = load_config()
        workload = config.workload(workload_id)
        start, end = run_interval(
            airflow["data_interval_start"],
            airflow["data_interval_end"],
            airflow["dag_run"].run_after,
            workload.schedule,
        )
        return cls.of(
            config,
            workload_id,
            interval_start=start,
            interval_end=end,
            dag_run_id=airflow["run_id"],
            try_number=airflow["ti"].try_number,
            options=RunOptions.from_params(airflow.get("params") or {}, workload),
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
