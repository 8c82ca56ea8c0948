"""Seeding demo traffic into the real local log store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from test_traffic import assert_calls_follow_own_schemas, teacher_calls

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
    # Personal data is planted in about PII_RATE of the conversations, of every kind.
    for workload_id, pii in report.pii.items():
        assert set(pii) == {"email", "phone", "card", "ip"}
        written = report.by_workload[workload_id]
        assert 0.02 * written < sum(pii.values()) < 0.1 * written
    assert report.to_dict()["pii"] == report.pii
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


def test_pii_rate_outside_zero_to_one_is_an_error(flywheel_config):
    with pytest.raises(SeedError, match=r"pii_rate must be within \[0, 1\], got -0.1"):
        seed_logs(flywheel_config, days=1, records_per_day=10, now=NOW, pii_rate=-0.1)


def test_unknown_demo_workload_is_an_error(flywheel_config):
    with pytest.raises(SeedError, match="no configured workload has demo traffic"):
        demo_workloads(flywheel_config, ["nope"])


def test_drift_day_switches_the_router_to_the_changed_api(empty_log_store, flywheel_config):
    from elasticsearch.helpers import scan

    from flywheel.demo.support_router import API_V1, API_V2
    from flywheel.intervals import latest_intervals

    report = seed_logs(
        flywheel_config, days=3, records_per_day=300, now=NOW, seed=3, drift_day=2, noise_rate=0.0
    )

    intervals = latest_intervals("0 2 * * *", 3, NOW)
    assert report.api_changed == {"customer_support_router": intervals[1][0].isoformat()}  # BFCL has none
    client = connect("flywheel_logs")
    query = {"query": {"term": {"workload_id": "customer_support_router"}}}
    by_day: dict[int, list[dict]] = {0: [], 1: [], 2: []}
    for hit in scan(client, index="flywheel-logs-*", query=query):
        stamp = datetime.strptime(hit["_source"]["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        (day,) = [i for i, (start, end) in enumerate(intervals) if start <= stamp < end]
        by_day[day].append(hit["_source"])
    assert [len(sources) for sources in by_day.values()] == [300, 300, 300]

    def called(sources: list[dict]) -> set[str]:
        return {name for s in sources for name, _ in teacher_calls(s)}

    # Before the day: tool set A; from the day on: the changed API, in the schemas and the calls.
    assert all(s["request"]["tools"] == API_V1.tools for s in by_day[0])
    assert called(by_day[0]) <= API_V1.tool_names
    for day in (1, 2):
        assert all(s["request"]["tools"] == API_V2.tools for s in by_day[day])
        assert {"track_package", "cancel_order"} <= called(by_day[day]) <= API_V2.tool_names
        returns = [a for s in by_day[day] for name, a in teacher_calls(s) if name == "start_return"]
        assert returns and all(a["refund_method"] in ("original_payment", "store_credit") for a in returns)
    assert_calls_follow_own_schemas([s for sources in by_day.values() for s in sources])


def test_drift_day_must_be_a_seeded_day(flywheel_config):
    with pytest.raises(SeedError, match=r"drift_day must be a seeded day, 1 .* to 3"):
        seed_logs(flywheel_config, days=3, records_per_day=10, now=NOW, drift_day=4)
