"""The run report shows the late-logs recount: each earlier day's records at extraction, the log store's
count now, whether it moved and the alert sent. From a real night: day folders of the ``files`` source,
the DAG's own extract and recount task bodies, the report's data read back and rendered."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from flywheel.context import RunContext
from flywheel.extract import tasks
from flywheel.report.data import report_data
from flywheel.report.render import render_report
from logdocs import START, log_doc

WORKLOAD = "customer_support_router"
CLIENT = "web-shop"  # one of the workload's configured client_ids


def night(config, day_offset: int) -> RunContext:
    start = START + timedelta(days=day_offset)
    return RunContext.of(
        config,
        WORKLOAD,
        interval_start=start,
        interval_end=start + timedelta(days=1),
        dag_run_id=f"scheduled__{start.isoformat()}",
    )


def write_logs(folder: Path, name: str, first: int, count: int) -> None:
    docs = [
        log_doc(START + timedelta(minutes=5 * n), n, client=CLIENT, workload=WORKLOAD)
        for n in range(first, first + count)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(doc) + "\n" for doc in docs))


def late_logs(page: str) -> str:
    """The late-logs part of the data-quality section: from its heading to the next heading."""
    match = re.search(r'<h3 id="late-logs">(.*?)(?=<h3|</section>)', page, re.S)
    assert match, "no late-logs part"
    return match[1]


def cells(part: str) -> list[list[str]]:
    """The text of each body row's cells."""
    body = part.split("<tbody>", 1)[1]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_the_report_shows_a_recount_that_moved_and_the_alert(tmp_path, make_config):
    logs = tmp_path / "logs"
    day_folder = logs / "dt=2026-11-20"
    write_logs(day_folder, "part-0.jsonl", 0, 8)
    config = make_config(log_source={"type": "files", "url": str(logs), "recount_days": 2})
    assert tasks.extract(night(config, 0))["records"] == 8
    write_logs(day_folder, "part-1.jsonl", 100, 3)  # a buffered shipper's file, after the extraction
    tomorrow = night(config, 1)
    tasks.extract(tomorrow)
    tasks.recount(tomorrow)

    data = report_data(config, WORKLOAD, tomorrow.dag_run_id)

    assert data is not None and data["recount_days"] == 2
    assert [(r["day"], r["status"]) for r in data["recount"]["recounts"]] == [
        ("2026-11-19", "not_extracted"),
        ("2026-11-20", "grew"),
    ]
    part = late_logs(render_report(data))
    assert cells(part) == [
        ["2026-11-19", "—", "—", "—", "not extracted", "no", "—"],
        ["2026-11-20", "8", "11", "+3", "grew", '<span class="fail">yes</span>', "local"],
    ]
    assert "re-run that day (the alert names the backfill)" in part


def test_an_unchanged_recount_says_no_count_moved(tmp_path, make_config):
    logs = tmp_path / "logs"
    write_logs(logs / "dt=2026-11-20", "part-0.jsonl", 0, 5)
    config = make_config(log_source={"type": "files", "url": str(logs)})
    tasks.extract(night(config, 0))
    tomorrow = night(config, 1)
    tasks.extract(tomorrow)
    tasks.recount(tomorrow)

    part = late_logs(render_report(report_data(config, WORKLOAD, tomorrow.dag_run_id)))

    assert cells(part) == [["2026-11-20", "5", "5", "+0", "unchanged", "no", "—"]]
    assert "No count moved: no late logs." in part


def report_without_recount(recount_days: Any) -> str:
    data = {"workload_id": WORKLOAD, "recount": None, "recount_days": recount_days}
    return late_logs(render_report(data))


def test_a_run_without_a_recount_says_why():
    assert "No recount: log_source.recount_days is 0" in report_without_recount(0)
    assert "No recount recorded: the recount task did not run" in report_without_recount(1)
    # A malformed recount block renders as none recorded, never as an error.
    data = {"recount": {"recounts": "garbage", "alerts": 3}, "recount_days": 1}
    assert "No recount recorded" in late_logs(render_report(data))
