"""Tests of the readers of the run report's data: anything unexpected reads as "no value", never an error."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.report.data import as_dict, curve_points, dicts, metric_of, number, tool_count, variant_name


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (0.5, 0.5),
        (None, None),
        (True, None),
        ("0.5", None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_number_is_a_finite_float_or_none(value: Any, expected: float | None) -> None:
    assert number(value) == expected


def test_malformed_blocks_read_as_empty() -> None:
    assert as_dict(["not", "a", "dict"]) == {}
    assert dicts({"not": "a list"}) == []
    assert dicts([{"a": 1}, "junk", None, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    assert metric_of({"metrics": None}, "parse_error_rate") == {}
    assert metric_of({"metrics": {"parse_error_rate": {"value": 0.1}}}, "parse_error_rate") == {"value": 0.1}


def test_curve_points_keep_the_steps_where_both_values_are_numbers() -> None:
    run = {
        "loss_curve": [
            {"step": 1, "loss": 2.0},
            {"step": 2, "loss": None},
            {"step": None, "loss": 1.5},
            "junk",
            {"step": 3, "loss": 1.0, "validation_loss": 1.2},
        ]
    }
    assert curve_points(run, "loss") == [(1.0, 2.0), (3.0, 1.0)]
    assert curve_points(run, "validation_loss") == [(3.0, 1.2)]
    assert curve_points({"loss_curve": None}, "loss") == []


def test_tool_count_takes_the_larger_count_of_the_two_models() -> None:
    champion = {"refund": {"n": 60}, "lookup": {"n": "many"}}
    challenger = {"refund": {"n": 58}}
    assert tool_count(champion, challenger, "refund") == 60
    assert tool_count(champion, challenger, "lookup") == 0
    assert tool_count(champion, challenger, "missing") == 0


@pytest.mark.parametrize(
    ("row", "name"),
    [
        ({"candidate_id": "smollm2-135m", "eval_type": "icl"}, "smollm2-135m/icl"),
        ({"candidate_id": "champion", "eval_type": "champion"}, "champion"),
        ({"candidate_id": None, "eval_type": "base"}, "base"),
    ],
)
def test_variant_name(row: dict[str, Any], name: str) -> None:
    assert variant_name(row) == name
