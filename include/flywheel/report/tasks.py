"""Body of the DAG's ``report`` task."""

from __future__ import annotations

import logging
from datetime import datetime

from flywheel.context import RunContext

log = logging.getLogger(__name__)


def report(ctx: RunContext) -> str | None:
    """Render the run's HTML report (whatever stages ran) into the artifact store; return its URI."""
    from flywheel.artifacts import report_path
    from flywheel.report.data import report_data
    from flywheel.report.render import render_report, write_report

    data = report_data(ctx.config, ctx.workload_id, ctx.dag_run_id)
    if data is None:
        log.warning("%s: no run recorded for %s; nothing to report", ctx.workload_id, ctx.dag_run_id)
        return None
    day = datetime.fromisoformat(data["interval_start"]).date()
    uri = write_report(ctx.store, report_path(ctx.workload_id, day), render_report(data))
    log.info("run report: %s", uri)
    return uri
