"""The extraction benchmark command: its JSON and, in the slow tier, memory flat in the record count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))
KEYS = {"records", "seconds", "records_per_s", "peak_rss_mb", "baseline_rss_mb", "read_method"}


def bench(records: int) -> dict:
    out = subprocess.run(
        [FLYWHEEL, "bench", "etl", "--records", str(records), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_etl_prints_its_figures_as_json(log_store):
    result = bench(400)

    assert set(result) >= KEYS
    assert result["seeded"] == 400
    assert 360 <= result["records"] <= 400  # the demo noise puts a few records outside the day
    assert result["records_per_s"] > 0
    assert result["peak_rss_mb"] >= result["baseline_rss_mb"] > 0


@pytest.mark.slow
def test_extraction_memory_does_not_grow_with_the_day():
    small, large = bench(20_000), bench(100_000)

    assert large["records"] > 4.5 * small["records"]
    growth = (large["peak_rss_mb"] - large["baseline_rss_mb"]) - (
        small["peak_rss_mb"] - small["baseline_rss_mb"]
    )
    assert growth < 64, (small, large)


def test_bench_data_prints_its_figures_as_json():
    out = subprocess.run(
        [FLYWHEEL, "bench", "data", "--records", "1500", "--json"], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["records"] == 1500
    assert result["clean"] + result["quarantined"] == 1500
    assert result["records_per_s"] > 0
    assert 0 < result["gx_share"] < 1
    assert sum(result["splits"].values()) > 0


def test_bench_day_prints_each_stages_figures_and_the_counts_reconcile():
    out = subprocess.run(
        [FLYWHEEL, "bench", "day", "--records", "3000", "--json"], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert (result["benchmark"], result["log_source"], result["records"]) == ("day", "files", 3000)
    assert result["generated"] == 3000 == result["stages"]["generate"]["records"]
    # The demo noise dates a few records outside the day: the window's selection leaves them out.
    assert 2850 <= result["extracted"] < 3000
    assert (
        result["extracted"]
        == result["stages"]["extract"]["records"]
        == result["stages"]["validate"]["records"]
    )
    assert result["extracted"] == result["clean"] + result["quarantined"]
    assert result["quarantined"] == sum(result["stages"]["validate"]["reasons"].values()) > 0
    assert list(result["stages"]) == ["generate", "extract", "validate"]
    for name, stage in result["stages"].items():
        assert stage["seconds"] > 0 and stage["records_per_s"] > 0, name
        assert stage["peak_rss_mb"] >= stage["baseline_rss_mb"] > 0, name
    assert result["stages"]["extract"]["pages"] == 3 and result["log_mb"] > 0
