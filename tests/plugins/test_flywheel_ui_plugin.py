"""plugins/flywheel_ui.py: Airflow loads it from the plugins folder, mounts the Flywheel app and lists
its page in the UI's navigation; importing it stays cheap (every Airflow component does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ui_seed import token

pytest_plugins = ["ui_seed"]

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def test_airflow_loads_the_plugin_from_the_plugins_folder() -> None:
    from airflow import plugins_manager, settings

    plugins, errors = plugins_manager._get_plugins()
    assert errors == {}
    (plugin,) = [p for p in plugins if p.name == "flywheel_ui"]
    assert (Path(settings.PLUGINS_FOLDER), plugin.source.path) == (PLUGINS, "flywheel_ui.py")
    assert [(a["url_prefix"], a["name"]) for a in plugin.fastapi_apps] == [("/flywheel", "Flywheel")]
    assert plugin.external_views == [
        {"name": "Flywheel", "href": "flywheel/", "destination": "nav", "url_route": "flywheel"}
    ]


def test_the_api_server_lists_the_page_for_the_ui(airflow_api) -> None:
    response = airflow_api.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token()}"})

    assert response.status_code == 200
    (plugin,) = [p for p in response.json()["plugins"] if p["name"] == "flywheel_ui"]
    (view,) = plugin["external_views"]
    assert (view["name"], view["href"], view["url_route"]) == ("Flywheel", "flywheel/", "flywheel")


def test_importing_the_plugin_imports_neither_the_app_nor_the_flywheel_config() -> None:
    # Run in a fresh interpreter: this test process has imported everything already.
    heavy = ["fastapi", "flywheel.ui.server", "flywheel.config", "flywheel.deliver.registry", "matplotlib"]
    code = (
        f"import sys; sys.path.insert(0, {str(PLUGINS)!r}); import flywheel_ui; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
