"""The bodies of the workload DAG's tasks: plain functions from config and data interval to results.

DAG files call these and nothing heavier, so the same code runs under Airflow, from the CLI and in
tests. Each function records its stage in the metadata database and returns a small JSON summary
(the task's XCom), never record data.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.tracking import ensure_run, record_partition, record_stage

log = logging.getLogger(__name__)


def extract(
    config: FlywheelConfig,
    workload_id: str,
    *,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str,
    try_number: int = 1,
    page_size: int | None = None,
    client_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Extract the workload's logs of one data interval into its raw partition and record it.

    ``client_ids`` overrides the workload's configured client filter for this run (a manual run's
    param); ``None`` keeps the configured one.
    """
    from flywheel.extract import extract_interval
    from flywheel.logstore import connect
    from flywheel.storage import ArtifactStore

    workload = config.workload(workload_id)
    source = workload.log_source
    clients = client_ids if client_ids is not None else workload.client_ids
    run_id = ensure_run(
        config.metadata,
        workload_id=workload_id,
        dag_id=workload.dag_id,
        dag_run_id=dag_run_id,
        interval_start=interval_start,
        interval_end=interval_end,
    )
    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    with record_stage(config.metadata, run_id, "extract", try_number) as stage:
        client = connect(source.conn_id, source.request_timeout_s, raw_hits=True)
        log.info(
            "extracting %s [%s, %s) from %s (clients: %s)",
            workload_id,
            interval_start.isoformat(),
            interval_end.isoformat(),
            source.index,
            ", ".join(clients) if clients else "all",
        )
        result = extract_interval(
            client,
            store,
            workload_id=workload_id,
            source=source,
            start=interval_start,
            end=interval_end,
            client_ids=clients,
            page_size=page_size,
            on_page=_log_progress,
        )
        record_partition(config.metadata, result, run_id)
        stage.summary = result.to_dict()
    log.info(
        "extracted %d records into %s (%s, %.1f s)",
        result.records,
        result.uri,
        result.read_method,
        result.seconds,
    )
    return stage.summary


def _log_progress(pages: int, records: int) -> None:
    if pages % 50 == 0:
        log.info("%d pages, %d records", pages, records)
