"""Bodies of the DAG's ``extract`` and ``recount`` tasks."""

from __future__ import annotations

import logging
from typing import Any

from flywheel.context import RunContext

log = logging.getLogger(__name__)


def extract(
    ctx: RunContext, *, page_size: int | None = None, client_ids: list[str] | None = None
) -> dict[str, Any]:
    """Extract the workload's logs of the run's data interval into its raw partition and record it.

    ``client_ids`` overrides the workload's configured client filter for this run (a manual run's
    param); ``None`` keeps the configured one.
    """
    from flywheel.extract.partition import extract_interval
    from flywheel.tracking import record_partition

    source = ctx.workload.log_source
    clients = client_ids if client_ids is not None else ctx.workload.client_ids
    with ctx.stage("extract") as stage:
        log.info(
            "extracting %s [%s, %s) from %s %s (clients: %s)",
            ctx.workload_id,
            ctx.interval_start.isoformat(),
            ctx.interval_end.isoformat(),
            source.type,
            source.location,
            ", ".join(clients) if clients else "all",
        )
        result = extract_interval(
            source,
            ctx.store,
            workload_id=ctx.workload_id,
            start=ctx.interval_start,
            end=ctx.interval_end,
            client_ids=clients,
            page_size=page_size,
            on_page=_log_progress,
        )
        record_partition(ctx.config.metadata, result, ctx.run_id)
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


def recount(ctx: RunContext) -> dict[str, Any]:
    """Count the previous days' windows in the log store again (``log_source.recount_days``) and alert,
    naming the day and the backfill that re-runs it, for each whose count moved since its extraction:
    logs that arrived after the settle delay are otherwise never read.

    The recount is recorded in ``runs/<workload>/<day>/recount.json`` (and returned) for the report.
    """
    from flywheel.extract.recount import recount_previous_days

    return recount_previous_days(ctx.config, ctx.workload_id, ctx.day, dag_run_id=ctx.dag_run_id)
