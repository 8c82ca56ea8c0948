"""The Flywheel page of the Airflow UI and the run reports it serves (docs/ui.md).

``plugins/flywheel_ui.py`` mounts :func:`app` on the Airflow api-server at :data:`URL_PREFIX` and adds
the page to the UI's navigation. Airflow imports the plugins folder in every component (scheduler,
DAG processor, each task), so this module stays cheap: FastAPI, the database models and the page
are imported by :mod:`flywheel.ui.server` on the first request the api-server routes here.
"""

from __future__ import annotations

import posixpath
from datetime import date
from typing import Any

from flywheel import artifacts

URL_PREFIX = "/flywheel"
"""Where the api-server mounts the app: the page is ``/flywheel/``, reports ``/flywheel/reports/...``."""


def report_link(report_uri: str) -> str | None:
    """The UI URL of the run report stored at ``report_uri``, or None when it is not a run report's URI.

    The URL is relative and has no leading ``/``: the Airflow UI resolves it against its
    ``<base href>`` (the api-server's base URL), so it also works behind a proxy that serves Airflow
    under a path. A run report is ``.../reports/<workload>/<day>/run-report.html`` whatever the store
    (:func:`flywheel.artifacts.report_path`), which is all this reads of the URI.
    """
    parts = report_uri.rstrip("/").split("/")[-4:]
    if len(parts) != 4:
        return None
    try:
        day = date.fromisoformat(parts[2])
    except ValueError:
        return None
    relative = artifacts.report_path(parts[1], day)
    if "/".join(parts) != relative:
        return None
    return posixpath.join(URL_PREFIX.lstrip("/"), relative)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app the plugin mounts: it hands each request to :data:`flywheel.ui.server.app`, imported
    on the first one (only the api-server ever calls this)."""
    from flywheel.ui.server import app as server

    await server(scope, receive, send)
