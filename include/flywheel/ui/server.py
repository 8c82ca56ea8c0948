"""The Flywheel UI's FastAPI app, mounted on the Airflow api-server at ``/flywheel`` (docs/ui.md).

``GET /`` is the Flywheel page (every workload's champion, alias history and latest runs with their
decisions); ``GET /reports/<workload>/<day>/<file>`` serves a file of the artifact store's
``reports/`` tree (run reports, Data Docs, validation results): the URL after the prefix is the file's
path in the store, so the pages' relative links between each other keep working.

Every request is authenticated the way Airflow's own API is (``get_user``: the ``Authorization:
Bearer`` header, else the JWT cookie the Airflow UI sets at login), and authorised per workload by the
auth manager: a user sees a workload, and may open its files, when Airflow lets them read the runs
of its DAG. The configuration is read on every request, so the page follows edits without a restart.
"""

from __future__ import annotations

import base64
import functools
import mimetypes
import posixpath
from datetime import date

import jinja2
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.models.dag import DagModel
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from flywheel import artifacts
from flywheel.config import load_config
from flywheel.errors import ConfigError
from flywheel.report.plots import p_value_text
from flywheel.storage import ArtifactStore
from flywheel.ui.overview import workload_overview

SERVED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # The store's pages come from jobs and data: served on Airflow's origin, they run sandboxed (an
    # opaque origin, so no script in them can use the user's Airflow session); links still open.
    "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox",
    "Cache-Control": "no-cache",
}
"""Headers of every file served from the store."""

app = FastAPI(title="Flywheel", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(ConfigError)
def _configuration_error(request: Request, exc: ConfigError) -> PlainTextResponse:
    return PlainTextResponse(f"flywheel configuration error: {exc}", status_code=500)


@app.get("/", response_class=HTMLResponse)
def flywheel_page(user: GetUserDep) -> HTMLResponse:
    """The Flywheel page: the workloads the user may read, each with its champion, history and runs."""
    config = load_config()
    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    visible = [w for w in config.workloads if may_read_runs(user, w.dag_id)]
    overviews = [workload_overview(config, w.workload_id, store) for w in visible]
    html = _template().render(overviews=overviews, hidden=len(config.workloads) - len(visible))
    return HTMLResponse(html)


@app.get("/reports/{workload_id}/{day}/{name:path}")
def report_file(workload_id: str, day: str, name: str, user: GetUserDep) -> Response:
    """A file under ``reports/<workload_id>/<day>/`` of the artifact store, with its content type.

    400 for a path with ``.``, ``..`` or empty segments (nothing outside that directory is reachable);
    404 for an unknown workload or day, or a file the store does not hold; 403 when the user may not
    read the workload's runs.
    """
    segments = [workload_id, day, *name.split("/")]
    if any(s in ("", ".", "..") or "\\" in s or "\x00" in s for s in segments):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a path under reports/")
    config = load_config()
    workload = next((w for w in config.workloads if w.workload_id == workload_id), None)
    if workload is None or not _is_day(day):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report")
    if not may_read_runs(user, workload.dag_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    path = store.path(artifacts.reports_dir(workload_id, date.fromisoformat(day)), *segments[2:])
    try:
        content = store.fs.cat_file(path)  # reports and Data Docs pages are small: read whole
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report") from None
    media_type = mimetypes.guess_type(posixpath.basename(path))[0] or "application/octet-stream"
    return Response(content, media_type=media_type, headers=SERVED_HEADERS)


def may_read_runs(user: BaseUser, dag_id: str) -> bool:
    """Whether Airflow's auth manager lets ``user`` read the runs of DAG ``dag_id`` (the check the Airflow
    API makes before it lists them, team included)."""
    return get_auth_manager().is_authorized_dag(
        method="GET",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)),
        user=user,
    )


def _data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _is_day(text: str) -> bool:
    try:
        return date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


@functools.cache
def _template() -> jinja2.Template:
    """The page template, loaded from the package once per process; autoescaping on."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flywheel.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(p_value=p_value_text, data_uri=_data_uri)
    return environment.get_template("flywheel.html")
