"""DAGs that react to the flywheel's assets: a serving team's rollout when a workload's champion changes,
and a daily export of each clean day (docs/extending.md, "React to the flywheel's outputs").

The assets come from ``flywheel.assets``, so the names cannot drift from what the workload DAG emits.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import PartitionedAssetTimetable, dag, task

from flywheel import assets

WORKLOAD = "customer_support_router"
CHAMPION = assets.champion(WORKLOAD)
CLEAN_DAY = assets.clean_day(WORKLOAD)


@dag(dag_id=f"serving_rollout_{WORKLOAD}", schedule=CHAMPION, tags=["serving"])
def serving_rollout() -> None:
    """Runs each time the workload's champion alias moves (never for a dry run or a rejected promotion)."""

    @task
    def roll_out(triggering_asset_events: Any = None) -> dict[str, Any]:
        # The newest move wins when several queued up; `extra` says what holds the alias now.
        event = triggering_asset_events[CHAMPION][-1]
        return {
            "version": event.extra["version"],
            "previous_version": event.extra["previous_version"],
            "approved_by": event.extra["approved_by"],
        }

    roll_out()


@dag(
    dag_id=f"clean_day_export_{WORKLOAD}",
    schedule=PartitionedAssetTimetable(assets=CLEAN_DAY),
    tags=["analytics"],
)
def clean_day_export() -> None:
    """One run per clean day, keyed by the day: a backfill's re-validated days arrive as their own days."""

    @task
    def export(dag_run: Any = None, triggering_asset_events: Any = None) -> dict[str, Any]:
        event = triggering_asset_events[CLEAN_DAY][-1]
        return {"day": dag_run.partition_key, "clean_uri": event.extra["clean_uri"]}

    export()


serving_rollout()
clean_day_export()
