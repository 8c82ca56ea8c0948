"""Late logs: the next night's run counts the previous day's window again, in the real log store
(osmem-server) and in real day folders, and alerts through a real webhook channel when the count moved
since extraction."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from flywheel.context import RunContext
from flywheel.extract import tasks
from flywheel.extract.sources.elasticsearch import connect
from flywheel.storage import ArtifactStore
from logdocs import END, START, index_docs, log_doc

# The webhook channel's HTTP server (http_server): loaded as a plugin so that pytest rewrites its asserts.
pytest_plugins = ["vllm_server"]

WORKLOAD = "customer_support_router"
CLIENT = "web-shop"  # one of the workload's configured client_ids
DAY = START.date().isoformat()
RERUN = (
    "airflow backfill create --dag-id flywheel_customer_support_router --from-date 2026-11-20T02:00:00 "
    "--to-date 2026-11-20T02:00:00 --reprocess-behavior completed"
)


@pytest.fixture
def late_hook(http_server, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The ``alerts`` block of a workload whose alerts also go to a webhook on the recording server."""
    conn = {"conn_type": "http", "host": http_server.url}
    monkeypatch.setenv("AIRFLOW_CONN_LATE_HOOK", json.dumps(conn))
    return {"channels": [{"type": "webhook", "conn_id": "late_hook", "endpoint": "oncall"}]}


def run(config, start, dag_run_id: str) -> RunContext:
    return RunContext.of(
        config, WORKLOAD, interval_start=start, interval_end=start + timedelta(days=1), dag_run_id=dag_run_id
    )


def night(config, day_offset: int) -> RunContext:
    start = START + timedelta(days=day_offset)
    return run(config, start, f"scheduled__{start.isoformat()}")


def docs(first: int, count: int, *, client: str = CLIENT) -> list[dict]:
    moments = (START + timedelta(minutes=(7 * n) % (24 * 60)) for n in range(first, first + count))
    return [log_doc(moment, n, client=client, workload=WORKLOAD) for n, moment in enumerate(moments, first)]


def test_late_documents_in_the_log_store_raise_an_alert_naming_the_day_and_the_rerun(
    log_store, make_config, late_hook, http_server
):
    index = f"late-{uuid.uuid4().hex[:8]}-*"
    config = make_config(log_source={"index": index, "page_size": 10, "settle_minutes": 45}, alerts=late_hook)
    source = config.workload(WORKLOAD).log_source
    index_docs(source, docs(0, 30) + docs(100, 5, client="other-app"))
    extracted = tasks.extract(night(config, 0))
    assert extracted["records"] == 30

    # Documents indexed into the window after the extraction read it: shipped late, and another client's.
    client = connect(source.conn_id)
    for doc in docs(200, 4) + docs(300, 2, client="other-app"):
        client.index(index=index[:-1] + "2026.11.20", document=doc)
    client.indices.refresh(index=index)

    summary = tasks.recount(night(config, 1))

    (recount,) = summary["recounts"]
    assert recount["day"] == DAY and recount["status"] == "grew"
    assert (recount["extracted"], recount["counted"]) == (30, 34)  # the same clients as the extraction
    assert summary["moved_days"] == [DAY]
    (request,) = http_server.requests
    assert request.path == "/oncall"
    alert = request.body
    assert alert["event"] == "alert" and alert["workload_id"] == WORKLOAD
    assert alert["interval_start"] == START.isoformat() and alert["interval_end"] == END.isoformat()
    assert alert["reasons"][0]["code"] == "late_logs"
    assert RERUN in alert["reasons"][0]["message"] and DAY in alert["title"]
    assert alert["figures"] == {
        "day": DAY,
        "extracted_records": 30,
        "counted_records": 34,
        "difference": 4,
        "rerun": RERUN,
    }
    assert alert["dag_run_id"] == "scheduled__2026-11-21T02:00:00+00:00"
    # The run records its recount (for the report) and the local sink keeps the alert too.
    store = ArtifactStore(config.artifact_store.root)
    recorded = json.loads(Path(store.path("runs", WORKLOAD, "2026-11-21", "recount.json")).read_text())
    assert recorded["recounts"] == summary["recounts"]
    assert [d["channel"] for d in recorded["alerts"][0]["deliveries"]] == ["local", "webhook"]
    assert list(Path(store.path("alerts", WORKLOAD, DAY)).glob("*-alert.json"))

    # Re-running the day picks the late logs up; the next recount of it is quiet.
    assert tasks.extract(night(config, 0))["records"] == 34
    assert tasks.recount(night(config, 1))["recounts"][0]["status"] == "unchanged"
    assert len(http_server.requests) == 1


def test_an_unchanged_window_raises_no_alert(log_store, make_config, late_hook, http_server):
    config = make_config(log_source={"index": f"quiet-{uuid.uuid4().hex[:8]}-*"}, alerts=late_hook)
    index_docs(config.workload(WORKLOAD).log_source, docs(0, 12))
    tasks.extract(night(config, 0))

    summary = tasks.recount(night(config, 1))

    assert summary["recounts"][0]["status"] == "unchanged"
    assert summary["recounts"][0]["counted"] == summary["recounts"][0]["extracted"] == 12
    assert summary["moved_days"] == [] and summary["alerts"] == []
    assert http_server.requests == []


def test_files_source_recount_counts_what_a_read_keeps(tmp_path, make_config, late_hook, http_server):
    logs = tmp_path / "logs"
    folder = logs / f"dt={DAY}"
    folder.mkdir(parents=True)
    part = folder / "part-0.jsonl"
    part.write_text("".join(json.dumps(d) + "\n" for d in docs(0, 8) + docs(50, 3, client="other-app")))
    config = make_config(log_source={"type": "files", "url": str(logs), "recount_days": 2}, alerts=late_hook)

    first = tasks.recount(night(config, 0))  # nothing extracted before: nothing to count, no alert
    assert [r["status"] for r in first["recounts"]] == ["not_extracted", "not_extracted"]
    tasks.extract(night(config, 0))
    assert tasks.recount(night(config, 1))["moved_days"] == []

    # A buffered shipper writes its file into the day folder late.
    (folder / "part-1.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs(90, 2)))
    summary = tasks.recount(night(config, 1))

    assert [r["day"] for r in summary["recounts"]] == ["2026-11-19", DAY]
    assert [r["status"] for r in summary["recounts"]] == ["not_extracted", "grew"]
    assert (summary["recounts"][1]["extracted"], summary["recounts"][1]["counted"]) == (8, 10)
    (request,) = http_server.requests
    assert request.body["figures"]["difference"] == 2 and request.body["figures"]["rerun"] == RERUN


def test_settle_and_recount_settings_are_checked_and_named(tmp_path):
    from conftest import write_config
    from flywheel.config import load_config
    from flywheel.errors import ConfigError

    for key, bad in [("settle_minutes", -5), ("settle_minutes", 721), ("recount_days", "often")]:
        path = write_config(tmp_path, log_source={"index": "logs-*", key: bad})
        with pytest.raises(ConfigError, match=rf"workloads\[0\]\.log_source\.{key}: "):
            load_config(path)
    source = load_config(write_config(tmp_path, log_source={"index": "logs-*"})).workloads[0].log_source
    assert (source.settle_minutes, source.recount_days) == (30, 1)
