"""End to end: a real ``airflow api-server`` (its own home, this project's plugins folder, SimpleAuthManager
with every local request an admin's) serves the Flywheel page over a seeded metadata database and artifact
store; headless Chromium renders it, inside the Airflow UI too, and the page's report link is followed
over HTTP. The screenshot of the page in the Airflow UI is kept under the test's tmp dir (path printed).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from contextlib import closing
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from flywheel.demo.local_airflow import LocalAirflow
from ui_seed import PROMOTED_DAY, UNDECIDED_DAY, WORKLOAD, Seeded, dag_run_id, page_sections

pytest_plugins = ["ui_seed"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(*args: str, profile: Path) -> str:
    """Headless Chromium's stdout for ``args`` (a fresh profile each time; no sandbox as root)."""
    done = subprocess.run(  # nosec B603 # the system Chromium, arguments built here
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


class _Frames(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "iframe":
            self.frames.append(dict(attrs))


@pytest.fixture
def api_server(seeded: Seeded, airflow_db, tmp_path: Path):
    """``airflow api-server`` in its own home over a copy of the session's migrated Airflow database."""
    from airflow import settings

    home = tmp_path / "airflow"
    home.mkdir()
    # SQLite's backup API: a consistent copy, whatever the session's connections left in its journal.
    with (
        closing(sqlite3.connect(settings.engine.url.database)) as source,
        closing(sqlite3.connect(home / "airflow.db")) as copy,
    ):
        source.backup(copy)
    server = LocalAirflow(home, command=("api-server", "--workers", "1"))
    with server:
        yield server


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium: `make install` installs it")
def test_the_flywheel_page_in_a_real_airflow_ui(api_server: LocalAirflow, seeded: Seeded, tmp_path) -> None:
    page_url = f"{api_server.url}/flywheel/"

    # The page as Chromium renders it: the champion and the latest decision.
    router = page_sections(chromium("--dump-dom", page_url, profile=tmp_path / "profile-page"))[WORKLOAD]
    assert router.terms["version"] == "v2 (smollm2-135m/customized)"
    latest, decided = router.tables["runs"][:2]
    assert latest[0] == str(UNDECIDED_DAY) and latest[1] == "no decision"
    assert decided[0] == str(PROMOTED_DAY) and decided[1] == "promote"
    assert decided[11] == dag_run_id(PROMOTED_DAY)

    # Its report link, followed over HTTP, is the run's report from the artifact store.
    report = httpx.get(urljoin(page_url, router.links["report"][0]), timeout=30)
    assert report.status_code == 200
    assert report.headers["content-type"] == "text/html; charset=utf-8"
    assert report.text == seeded.report_html

    # In the Airflow UI the page is a navigation entry, shown in a frame at /plugin/flywheel.
    ui = chromium(
        "--virtual-time-budget=15000",
        "--dump-dom",
        f"{api_server.url}/plugin/flywheel",
        profile=tmp_path / "profile-ui",
    )
    frames = _Frames()
    frames.feed(ui)
    assert [(f.get("title"), f.get("src")) for f in frames.frames] == [("Flywheel", "flywheel/")]

    screenshot = tmp_path / "flywheel-page-in-airflow-ui.png"
    chromium(
        "--window-size=1600,1000",
        "--hide-scrollbars",
        "--virtual-time-budget=15000",
        f"--screenshot={screenshot}",
        f"{api_server.url}/plugin/flywheel",
        profile=tmp_path / "profile-shot",
    )
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the Flywheel page in the Airflow UI: {screenshot}")
