"""The Flywheel page and its report server, mounted by the plugin in Airflow's real api-server app
(``create_app``, SimpleAuthManager) over a real SQLite metadata database and a local artifact store."""

from __future__ import annotations

import base64
import re

import pytest

from flywheel import artifacts
from ui_seed import (
    DATA_DOCS_PAGE,
    FIRST_NIGHT,
    PROMOTED_DAY,
    UNDECIDED_DAY,
    WORKLOAD,
    Seeded,
    dag_run_id,
    page_sections,
    token,
)

pytest_plugins = ["ui_seed"]

OTHER = "bfcl_live_assistant"
REPORTS = f"/flywheel/reports/{WORKLOAD}/{PROMOTED_DAY}"


@pytest.fixture
def admin(airflow_api):
    """The api-server client signed in as an admin (the JWT cookie the Airflow UI sets at login)."""
    airflow_api.cookies.set("_token", token())
    yield airflow_api
    airflow_api.cookies.clear()


def test_the_page_shows_each_workloads_champion_history_trend_and_runs(admin, seeded: Seeded) -> None:
    response = admin.get("/flywheel/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    sections = page_sections(response.text)
    assert list(sections) == [WORKLOAD, OTHER]  # the configuration's order
    router = sections[WORKLOAD]
    promoted = router.terms.pop("promoted")
    assert router.terms == {
        "version": "v2 (smollm2-135m/customized)",
        "base model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "function_name_and_args_accuracy": "0.815 (evaluated when registered)",
    }
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d UTC by flywheel_{WORKLOAD}/{re.escape(dag_run_id(PROMOTED_DAY))} "
        r"\(promote\): challenger_superior",
        promoted,
    )
    # The trend plot: the primary metric per night, an SVG image.
    (trend,) = router.images
    svg = base64.b64decode(trend.removeprefix("data:image/svg+xml;base64,")).decode()
    assert svg.startswith("<svg") and "champion" in svg and "challenger" in svg

    runs = router.tables["runs"]
    assert [row[0] for row in runs] == [str(UNDECIDED_DAY), str(PROMOTED_DAY), "2026-11-19", str(FIRST_NIGHT)]
    undecided, promoted, unchanged, first = runs
    assert undecided[1:3] == ["no decision", "—"]
    assert "no report" in undecided[10]
    assert promoted[1] == "promote"
    assert "challenger_superior the challenger beats the champion by +0.105" in promoted[2]
    assert promoted[3:10] == [
        "smollm2-135m/customized v1",
        "smollm2-135m/customized v2",
        "0.710",
        "0.815",
        "+0.105 [+0.075, +0.135]",
        "< 0.0001",
        "200",
    ]
    assert promoted[11] == dag_run_id(PROMOTED_DAY)
    assert unchanged[1] == "no_change" and unchanged[8] == "0.2100"
    assert first[1] == "promote" and "first_champion" in first[2]
    # Pages of the run that wrote them, relative to /flywheel/: the file's path in the store.
    assert router.links == {
        "report": [artifacts.report_path(WORKLOAD, PROMOTED_DAY)],
        "data-docs": [artifacts.data_docs_index(artifacts.data_docs_dir(WORKLOAD, PROMOTED_DAY))],
    }

    history = router.tables["history"]  # newest first
    assert [row[1:6] for row in history] == [
        ["promote", "v2", "v1", f"flywheel_{WORKLOAD}/{dag_run_id(PROMOTED_DAY)}", "challenger_superior"],
        ["promote", "v1", "—", f"flywheel_{WORKLOAD}/{dag_run_id(FIRST_NIGHT)}", "first_champion"],
    ]

    idle = " ".join(sections[OTHER].text.split())
    assert "No champion yet" in idle
    assert "No decision recorded yet." in idle
    assert "No run recorded yet." in idle
    assert "The alias never moved." in idle


def test_the_report_links_of_the_page_serve_the_stored_files(admin, seeded: Seeded) -> None:
    links = page_sections(admin.get("/flywheel/").text)[WORKLOAD].links

    report = admin.get(f"/flywheel/{links['report'][0]}")
    assert report.status_code == 200
    assert report.headers["content-type"] == "text/html; charset=utf-8"
    assert report.text == seeded.report_html
    assert f"Flywheel run report: {WORKLOAD}" in report.text
    # Served on Airflow's origin, the store's pages run sandboxed.
    assert report.headers["content-security-policy"].startswith("sandbox")
    assert report.headers["x-content-type-options"] == "nosniff"

    docs = admin.get(f"/flywheel/{links['data-docs'][0]}")
    assert docs.status_code == 200
    assert "<h1>Data Docs</h1>" in docs.text
    # The Data Docs' own relative links resolve under the same route.
    page = admin.get(f"{REPORTS}/{artifacts.DATA_DOCS}/{DATA_DOCS_PAGE}")
    assert page.status_code == 200
    assert "Expectation suite" in page.text

    result = admin.get(f"{REPORTS}/{artifacts.VALIDATION_RESULT}")
    assert result.headers["content-type"] == "application/json"
    assert result.json() == {"success": True}


def test_requests_without_a_valid_token_are_refused(airflow_api, seeded: Seeded) -> None:
    report = f"{REPORTS}/{artifacts.REPORT_NAME}"
    for url in ("/flywheel/", report):
        assert airflow_api.get(url).status_code == 401
        assert airflow_api.get(url, cookies={"_token": "not-a-jwt"}).status_code == 403
        assert airflow_api.get(url, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    # The API's bearer token works as well as the UI's cookie.
    assert airflow_api.get(report, headers={"Authorization": f"Bearer {token()}"}).status_code == 200


def test_a_user_who_may_not_read_the_dag_runs_sees_no_workload_and_no_report(airflow_api, seeded) -> None:
    # SimpleAuthManager lets a user without a role read nothing: the auth manager decides, per DAG.
    cookies = {"_token": token("visitor", role=None)}

    page = airflow_api.get("/flywheel/", cookies=cookies)
    assert page.status_code == 200
    assert page_sections(page.text) == {}
    assert "you may not read the runs of any flywheel DAG" in page.text
    assert airflow_api.get(f"{REPORTS}/{artifacts.REPORT_NAME}", cookies=cookies).status_code == 403


REFUSED = {
    f"{REPORTS}/..%2F..%2F..%2F..%2Fflywheel.yaml": 400,
    f"{REPORTS}/%2E%2E/%2E%2E/%2E%2E/%2E%2E/flywheel.yaml": 400,
    f"/flywheel/reports/{WORKLOAD}/%2E%2E/%2E%2E/%2E%2E/flywheel.yaml": 400,
    "/flywheel/reports/%2E%2E/%2E%2E/%2E%2E/flywheel.yaml": 400,
    f"{REPORTS}/data_docs//index.html": 400,
    f"{REPORTS}/.%2Frun-report.html": 400,
    f"{REPORTS}/..%5C..%5C..%5C..%5Cflywheel.yaml": 400,
    f"/flywheel/reports/{WORKLOAD}/2026-11-20T00:00/run-report.html": 404,  # not a day
    f"/flywheel/reports/{WORKLOAD}/20261120/run-report.html": 404,
    f"/flywheel/reports/no_such_workload/{PROMOTED_DAY}/run-report.html": 404,
    f"/flywheel/reports/{WORKLOAD}/{UNDECIDED_DAY}/run-report.html": 404,  # none written
    f"{REPORTS}/{artifacts.DATA_DOCS}": 404,  # a directory
    f"{REPORTS}/{artifacts.REPORT_NAME}/x": 404,
    "/flywheel/flywheel.yaml": 404,
    "/flywheel/artifacts/models": 404,
}
"""Paths that reach for something outside ``reports/<workload>/<day>/`` or that the store lacks: the
configuration file is four levels above a day's reports."""


def test_only_files_under_a_days_reports_are_served(admin, seeded: Seeded) -> None:
    responses = {path: admin.get(path) for path in REFUSED}

    assert {path: r.status_code for path, r in responses.items()} == REFUSED
    assert not [path for path, r in responses.items() if "workloads" in r.text]  # no byte of the config


def test_a_broken_configuration_is_an_error_that_names_the_key(admin, tmp_path, monkeypatch) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("artifact_store: {root: /tmp/x}\nmetadata: {url: 'sqlite://'}\nworkloads: []\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(broken))

    response = admin.get("/flywheel/")

    assert response.status_code == 500
    assert "flywheel configuration error" in response.text
    assert "workloads" in response.text


def test_a_dry_run_and_a_promotion_nobody_approved_are_marked_under_their_outcome(
    admin, seeded: Seeded
) -> None:
    from sqlalchemy import select

    from flywheel.db.engine import session_scope
    from flywheel.db.models import Decision, Run

    with session_scope(seeded.config.metadata) as session:
        decisions = {
            run.dag_run_id: decision
            for run, decision in session.execute(
                select(Run, Decision).join(Decision, Decision.run_id == Run.id)
            )
        }
        decisions[dag_run_id(FIRST_NIGHT)].promotion = {
            "status": "not_approved",
            "reason": "rejected",
            "approval": {"status": "rejected", "by": {"id": "bob", "name": "bob"}, "comment": "not yet"},
        }
        decisions[dag_run_id(PROMOTED_DAY)].dry_run = True

    runs = page_sections(admin.get("/flywheel/").text)[WORKLOAD].tables["runs"]

    _, promoted, unchanged, first = runs
    assert promoted[1] == "promote (dry run)"
    assert unchanged[1] == "no_change"
    assert first[1] == "promote (not approved: rejected by bob)"
