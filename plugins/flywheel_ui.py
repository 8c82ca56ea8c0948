"""The Flywheel page in the Airflow UI: a FastAPI app on the api-server and its entry in the navigation.

Only the declaration lives here (Airflow imports this module in every component); the app is
``flywheel.ui`` (docs/ui.md), which imports its dependencies on its first request.
"""

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from flywheel.ui import URL_PREFIX, app


class FlywheelUiPlugin(AirflowPlugin):
    """Mounts the Flywheel app at ``/flywheel`` and adds "Flywheel" to the UI's navigation."""

    name = "flywheel_ui"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": URL_PREFIX, "name": "Flywheel"}
    ]
    # The href has no leading slash: the UI resolves it against its <base href> (the api-server's base
    # URL), so the page also works when Airflow is served under a path. url_route makes the UI show it
    # inside its own frame at /plugin/flywheel.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Flywheel",
            "href": URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "url_route": "flywheel",
        }
    ]
