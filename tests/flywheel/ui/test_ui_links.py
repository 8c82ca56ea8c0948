"""The UI URL of a run report: the plugin's route for the report's path in the artifact store."""

from __future__ import annotations

from datetime import date

import pytest

from flywheel import artifacts
from flywheel.ui import URL_PREFIX, report_link

DAY = date(2026, 11, 20)
REPORT = artifacts.report_path("customer_support_router", DAY)


@pytest.mark.parametrize(
    "root", ["file:///srv/flywheel/artifacts", "/srv/flywheel/artifacts", "s3://bucket/flywheel", "gs://b"]
)
def test_a_run_reports_uri_in_any_store_links_to_the_plugins_route(root: str) -> None:
    link = report_link(artifacts.uri(root, REPORT))

    # Relative, without a leading slash: the Airflow UI resolves it against its <base href>.
    assert link == f"{URL_PREFIX.lstrip('/')}/{REPORT}"
    assert link == "flywheel/reports/customer_support_router/2026-11-20/run-report.html"


@pytest.mark.parametrize(
    "uri",
    [
        artifacts.uri("s3://bucket", artifacts.validation_result("customer_support_router", DAY)),
        "s3://bucket/reports/customer_support_router/2026-11-31/run-report.html",
        "s3://bucket/logs/customer_support_router/2026-11-20/run-report.html",
        "run-report.html",
        "",
    ],
)
def test_anything_but_a_run_reports_uri_has_no_link(uri: str) -> None:
    assert report_link(uri) is None
