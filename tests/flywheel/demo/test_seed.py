"""Seeding demo traffic into the real local log store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flywheel.demo.seed import SeedError, daily_index, demo_workloads, seed_logs
from flywheel.extract.sources.elasticsearch import ElasticsearchSource, connect

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def test_seed_writes_every_record_into_daily_indices(log_store, flywheel_config):
    report = seed_logs(flywheel_config, days=2, records_per_day=400, now=NOW, seed=7)

    # The BFCL workload is the quieter one: a quarter of the router's volume.
    assert report.by_workload == {"customer_support_router": 800, "bfcl_live_assistant": 200}
    assert report.documents == 1000
    for workload_id, noise in report.noise.items():
        assert sum(noise.values()) == report.by_workload[workload_id]
        assert 0 < noise["clean"] < report.by_workload[workload_id]
    assert {"exact_duplicate", "arguments_not_json", "outside_window"} <= set(
        report.noise["customer_support_router"]
    )
    client = connect("flywheel_logs")
    indices = set(client.indices.get(index="flywheel-logs-*"))
    assert {"flywheel-logs-2026.11.19", "flywheel-logs-2026.11.20", "flywheel-logs-2026.11.21"} <= indices
    mapping = client.indices.get_mapping(index="flywheel-logs-2026.11.20")["flywheel-logs-2026.11.20"]
    assert mapping["mappings"]["properties"]["timestamp"]["type"] == "date"
    assert report.intervals["bfcl_live_assistant"][-1] == (
        "2026-11-20T02:00:00+00:00",
        "2026-11-21T02:00:00+00:00",
    )


def test_daily_index_follows_the_record_timestamp():
    source = ElasticsearchSource(index="llm-logs-*")
    fallback = datetime(2026, 1, 2, tzinfo=UTC)
    assert daily_index(source, "2026-11-20T23:59:59.999Z", fallback) == "llm-logs-2026.11.20"
    assert daily_index(source, 1234, fallback) == "llm-logs-2026.01.02"
    assert daily_index(ElasticsearchSource(index="llm-logs"), "2026-11-20T00:00:00Z", fallback) == "llm-logs"


def test_unknown_demo_workload_is_an_error(flywheel_config):
    with pytest.raises(SeedError, match="no configured workload has demo traffic"):
        demo_workloads(flywheel_config, ["nope"])
