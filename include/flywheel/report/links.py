"""Extra links of the workload DAG's tasks in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class RunReportLink(BaseOperatorLink):
    """The "Run report" button of the ``report`` task: the URI of the HTML report it wrote.

    Airflow 3 computes extra links when the task finishes and keeps them as XCom, so the button works
    without a plugin; it is empty when no report was written.
    """

    name: ClassVar[str] = "Run report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key="return_value") or ""
