"""Late logs: the windows of earlier days counted again in the log store, and an alert when a count moved.

A night's extraction reads its window once, after the settle delay (``log_source.settle_minutes``).
Logs indexed later still (a shipper that buffered for hours, a replayed queue) are not in that day's
raw partition. The next night's run counts the previous day's window again
(``log_source.recount_days``) with the source's :meth:`~flywheel.extract.sources.LogSource.count`
and the selection the extraction recorded in the partition's commit record; when the store's count
is not the number of records extracted, the workload's alert channels hear of it, with the command
that re-runs the day (a re-run replaces the day's partition, so it picks the late logs up).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from flywheel.config import FlywheelConfig, WorkloadConfig
from flywheel.errors import AlertDeliveryError
from flywheel.extract.sources import LogSource, LogWindow
from flywheel.storage import ArtifactStore, PartitionNotFound

log = logging.getLogger(__name__)

RecountStatus = Literal["unchanged", "grew", "shrank", "not_extracted", "source_changed"]


@dataclass(frozen=True)
class DayRecount:
    """One earlier day's window counted again: the records extracted then, the store's count now."""

    workload_id: str
    day: date
    status: RecountStatus
    extracted: int | None = None
    counted: int | None = None
    interval_start: datetime | None = None
    interval_end: datetime | None = None
    extracted_at: str | None = None

    @property
    def moved(self) -> bool:
        """The store's count is no longer the number of records extracted."""
        return self.status in ("grew", "shrank")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            day=self.day.isoformat(),
            interval_start=self.interval_start.isoformat() if self.interval_start else None,
            interval_end=self.interval_end.isoformat() if self.interval_end else None,
        )
        return out


def recount_day(
    source: LogSource,
    store: ArtifactStore,
    workload_id: str,
    day: date,
    client_ids: list[str] | None = None,
) -> DayRecount:
    """Count ``day``'s extracted window in ``source`` again, with the clients the extraction selected
    (``client_ids`` for a partition committed before its record named them).

    A day never extracted (the first run, a failed night) or extracted from another kind of source is
    reported as such, not counted.
    """
    try:
        record = store.read_partition_record(workload_id, day)
    except PartitionNotFound:
        return DayRecount(workload_id, day, "not_extracted")
    start = datetime.fromisoformat(record["interval_start"])
    end = datetime.fromisoformat(record["interval_end"])
    extracted = int(record["records"])
    extracted_at = record.get("committed_at")
    if record.get("source") != source.type:
        return DayRecount(workload_id, day, "source_changed", extracted, None, start, end, extracted_at)
    counted = source.count(LogWindow(workload_id, start, end, record.get("client_ids", client_ids)))
    status: RecountStatus = (
        "unchanged" if counted == extracted else "grew" if counted > extracted else "shrank"
    )
    return DayRecount(workload_id, day, status, extracted, counted, start, end, extracted_at)


def rerun_command(workload: WorkloadConfig, interval_start: datetime) -> str:
    """The backfill that re-runs the day whose window starts at ``interval_start`` (and only that day):
    a backfill selects interval starts, both dates included."""
    start = interval_start.strftime("%Y-%m-%dT%H:%M:%S")
    return (
        f"airflow backfill create --dag-id {workload.dag_id} --from-date {start} --to-date {start} "
        "--reprocess-behavior completed"
    )


def late_logs_alert(
    config: FlywheelConfig, recount: DayRecount, *, dag_run_id: str | None = None
) -> list[dict[str, Any]]:
    """Send an ``alert`` notification about a day whose count moved, through the workload's channels.

    Returns the deliveries (:func:`flywheel.deliver.alerts.notify`), which raises when one failed.
    """
    from flywheel.deliver.alerts import Notification, airflow_run_url, notify

    workload = config.workload(recount.workload_id)
    if (
        not recount.moved
        or recount.interval_start is None
        or recount.counted is None
        or recount.extracted is None
    ):
        raise ValueError(f"the recount of {recount.day} did not move ({recount.status}): nothing to alert")
    difference = recount.counted - recount.extracted
    command = rerun_command(workload, recount.interval_start)
    if difference > 0:
        code = "late_logs"
        message = (
            f"the log store now holds {recount.counted} records in the window of {recount.day} where "
            f"{recount.extracted} were extracted: {difference} arrived after the extraction read it. "
            f"Re-run the day to pick them up: {command}"
        )
        title = f"{difference} late log records for {recount.day}"
    else:
        code = "logs_removed"
        message = (
            f"the log store now holds {recount.counted} records in the window of {recount.day} where "
            f"{recount.extracted} were extracted: {-difference} were deleted or moved since (retention, "
            f"re-indexing). The day's datasets keep the extracted records; re-run it to match: {command}"
        )
        title = f"{-difference} log records of {recount.day} gone from the log store"
    notification = Notification(
        workload_id=workload.workload_id,
        event="alert",
        title=title,
        reasons=[{"code": code, "message": message}],
        figures={
            "day": recount.day.isoformat(),
            "extracted_records": recount.extracted,
            "counted_records": recount.counted,
            "difference": difference,
            "rerun": command,
        },
        dag_id=workload.dag_id,
        dag_run_id=dag_run_id,
        interval_start=recount.interval_start,
        interval_end=recount.interval_end,
        run_url=airflow_run_url(workload.dag_id, dag_run_id) if dag_run_id else None,
    )
    return notify(config, notification)


def recount_previous_days(
    config: FlywheelConfig, workload_id: str, day: date, *, dag_run_id: str | None = None
) -> dict[str, Any]:
    """Recount the ``log_source.recount_days`` days before ``day`` and alert for each whose count moved.

    Every day is counted and recorded before any alert is sent; the summary (each day's recount and
    the alerts' deliveries) is what the run records in ``runs/<workload>/<day>/recount.json``.
    """
    from flywheel import artifacts

    workload = config.workload(workload_id)
    source = workload.log_source
    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    days = [day - timedelta(days=back) for back in range(source.recount_days, 0, -1)]
    recounts = [recount_day(source, store, workload_id, earlier, workload.client_ids) for earlier in days]
    summary: dict[str, Any] = {
        "workload_id": workload_id,
        "day": day.isoformat(),
        "recounts": [r.to_dict() for r in recounts],
        "moved_days": [r.day.isoformat() for r in recounts if r.moved],
        "alerts": [],
    }
    for recount in recounts:
        log.log(
            logging.WARNING if recount.moved else logging.INFO,
            "recount of %s %s: %s (extracted %s, counted now %s)",
            workload_id,
            recount.day,
            recount.status,
            recount.extracted,
            recount.counted,
        )
    path = store.path(artifacts.recount_path(workload_id, day))
    store.write_json_atomic(path, summary)
    failed: list[AlertDeliveryError] = []
    for recount in (r for r in recounts if r.moved):
        try:
            deliveries = late_logs_alert(config, recount, dag_run_id=dag_run_id)
        except AlertDeliveryError as exc:  # the other days' alerts still go out; raised afterwards
            deliveries = exc.deliveries
            failed.append(exc)
        summary["alerts"].append({"day": recount.day.isoformat(), "deliveries": deliveries})
    if summary["alerts"]:
        store.write_json_atomic(path, summary)
    if failed:
        raise failed[0]
    summary["uri"] = store.uri(path)
    return summary


def read_recount(store: ArtifactStore, workload_id: str, day: date) -> dict[str, Any] | None:
    """The recount the run of ``day`` recorded (:func:`recount_previous_days`); None when it recorded none."""
    from flywheel import artifacts

    path = store.path(artifacts.recount_path(workload_id, day))
    if not store.fs.exists(path):
        return None
    with store.fs.open(path, "rb") as handle:
        return json.load(handle)
