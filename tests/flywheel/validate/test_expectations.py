"""The batch expectations on small hand-made summaries: each rule fails when it should and reports why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from flywheel.config import DataQualityConfig
from flywheel.extract.partition import RAW_SCHEMA
from flywheel.validate.expectations import tool_distribution_weights, validate_batch

START = datetime(2026, 11, 20, 2, tzinfo=UTC)
END = START + timedelta(days=1)


def summary(n: int = 200, *, quarantined: int = 0, duplicates: int = 0, labels=("a", "b")) -> pd.DataFrame:
    rows = []
    for i in range(n):
        bad = i < quarantined
        rows.append(
            {
                "record_id": f"r{i}",
                "timestamp": START + timedelta(minutes=i),
                "label": None if bad else labels[i % len(labels)],
                "reason": "unknown_tool" if bad else None,
                "is_clean": not bad,
                "is_duplicate": i >= n - duplicates,
            }
        )
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def run(frame, rules=None, raw_columns=None, baseline=None):
    return validate_batch(
        frame,
        raw_columns or RAW_SCHEMA.names,
        expected_raw_columns=RAW_SCHEMA.names,
        rules=rules or DataQualityConfig(min_clean_records=10),
        interval=(START, END),
        baseline_labels=baseline or {},
    )


def test_a_healthy_batch_passes():
    verdict = run(summary(), baseline={"a": 100, "b": 100})
    assert verdict.success, verdict.failed
    assert verdict.tool_shift == pytest.approx(0, abs=1e-3)
    assert (verdict.tool_shift_exceeded, verdict.warnings) == (False, [])


@pytest.mark.parametrize(
    ("frame", "rules", "failed"),
    [
        (summary(20), DataQualityConfig(min_clean_records=50), "expect_column_sum_to_be_between(is_clean)"),
        (
            summary(quarantined=60),
            DataQualityConfig(min_clean_records=10, max_quarantine_rate=0.2),
            "expect_column_values_to_be_null(reason)",
        ),
        (
            summary(duplicates=100),
            DataQualityConfig(min_clean_records=10, max_duplicate_rate=0.3),
            "expect_column_values_to_be_in_set(is_duplicate)",
        ),
    ],
)
def test_each_batch_rule_fails_the_batch(frame, rules, failed):
    verdict = run(frame, rules)
    assert not verdict.success
    assert verdict.failed == [failed]


def test_schema_drift_new_and_vanished_columns():
    drifted = [c for c in RAW_SCHEMA.names if c != "client_id"] + ["session_id"]
    verdict = run(summary(), raw_columns=drifted)
    assert verdict.failed == ["expect_table_columns_to_match_set()"]
    outcome = next(o for o in verdict.outcomes if o.expectation == "expect_table_columns_to_match_set")
    assert "session_id" in outcome.observed


@pytest.mark.parametrize(
    ("action", "success", "severity"), [("alert", True, "warning"), ("fail", False, "critical")]
)
def test_a_tool_shift_is_flagged_and_fails_the_batch_only_under_fail(action, success, severity):
    verdict = run(
        summary(labels=("a",)),
        DataQualityConfig(min_clean_records=10, max_tool_shift=0.5, tool_shift_action=action),
        baseline={"a": 10, "b": 90},
    )
    shift = "expect_column_kl_divergence_to_be_less_than(label)"
    assert verdict.success is success
    assert (verdict.failed, verdict.warnings) == (([], [shift]) if success else ([shift], []))
    assert verdict.tool_shift_exceeded
    assert verdict.tool_shift > 0.5
    outcome = next(o for o in verdict.outcomes if o.column == "label")
    assert (outcome.success, outcome.severity, outcome.observed) == (False, severity, verdict.tool_shift)
    # validation.json keeps the severity: the stored GX result says why a failed expectation passed.
    stored = verdict.result_json["flywheel.day_batch.v1"]["results"]
    assert [
        r["expectation_config"]["severity"]
        for r in stored
        if r["expectation_config"]["kwargs"].get("column") == "label"
    ] == [severity]


def test_baseline_weights_smooth_new_labels():
    weights = tool_distribution_weights({"a": 5, "new": 5}, {"a": 10})
    assert set(weights) == {"a", "new"}
    assert sum(weights.values()) == pytest.approx(1)
    assert 0 < weights["new"] < weights["a"]
    assert tool_distribution_weights({"a": 1}, {}) is None
