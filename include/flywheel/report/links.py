"""Extra links of the workload DAG's tasks in the Airflow UI."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)


class RunReportLink(BaseOperatorLink):
    """The "Run report" button of the ``report`` task: the run's report on the Flywheel page's server.

    The task returns the report's URI in the artifact store (None when it wrote none); the button
    opens that report through the Flywheel plugin (``flywheel/reports/<workload>/<day>/run-report.html``,
    relative to the api-server's base URL: docs/ui.md), which serves it to signed-in users whatever the
    store. Airflow 3 computes extra links when the task finishes and keeps them as XCom; the button is
    empty when no report was written.
    """

    name: ClassVar[str] = "Run report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from flywheel.ui import report_link

        uri = XCom.get_value(ti_key=ti_key, key="return_value")
        if not uri:
            return ""
        link = report_link(uri)
        if link is None:
            log.warning("%s is not a run report's URI; the Run report button stays empty", uri)
        return link or ""
