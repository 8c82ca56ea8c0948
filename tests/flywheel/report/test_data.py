"""Tests of the run report's data: the readers (anything unexpected reads as "no value", never an error)
and the champion's trend over past decisions, read back from a real SQLite metadata database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flywheel.artifacts import TRAIN_LOSS, VALIDATION_LOSS
from flywheel.config import FlywheelConfig
from flywheel.decide.evidence import decide_run
from flywheel.deliver.registry import champion, promote
from flywheel.evaluate.stats import proportion
from flywheel.report.data import (
    as_dict,
    champion_trend,
    curve_points,
    dicts,
    metric_of,
    number,
    report_data,
    tool_count,
    variant_name,
)
from flywheel.tracking import ensure_run, record_evaluation, record_stage


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
            {"step": 1, "train_loss": 2.0},
            {"step": 2, "train_loss": None},
            {"step": None, "train_loss": 1.5},
            "junk",
            {"step": 3, "train_loss": 1.0, "validation_loss": 1.2},
        ]
    }
    assert curve_points(run, TRAIN_LOSS) == [(1.0, 2.0), (3.0, 1.0)]
    assert curve_points(run, VALIDATION_LOSS) == [(3.0, 1.2)]
    assert curve_points({"loss_curve": None}, TRAIN_LOSS) == []


def test_curve_points_read_the_keys_the_trainer_writes() -> None:
    # loss_curve.json as flywheel.train.trainer writes it: the training loss at every step, the
    # validation loss where it was scored. The report once read "loss" and drew no training line.
    curve = [{"step": 1, "train_loss": 2.1, "lr": 1e-4}, {"step": 2, "train_loss": 1.9, "lr": 0.0}]
    curve[-1]["validation_loss"] = 2.0

    assert (TRAIN_LOSS, VALIDATION_LOSS) == ("train_loss", "validation_loss")
    assert curve_points({"loss_curve": curve}, TRAIN_LOSS) == [(1.0, 2.1), (2.0, 1.9)]
    assert curve_points({"loss_curve": curve}, VALIDATION_LOSS) == [(2.0, 2.0)]


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


# ---------------------------------------------------------------- the champion's trend, from real records

WORKLOAD = "customer_support_router"
N = 120
PRIMARY = "function_name_and_args_accuracy"
DECISION = {"floor": 0.5, "min_examples": 100, "guardrails": {}, "bootstrap_resamples": 200}


def record_night(
    config: FlywheelConfig,
    night: date,
    scores: dict[str, int],
    *,
    workload_id: str = WORKLOAD,
    failed_stage: str | None = None,
) -> None:
    """Record one nightly run of ``workload_id`` whose data interval ends at 02:00 UTC on ``night`` and
    decide it: ``scores`` maps ``champion`` and/or ``icl`` to how many of N examples each got right."""
    end = datetime.combine(night, time(2), tzinfo=UTC)
    dag_run_id = f"scheduled__{end - timedelta(days=1):%Y-%m-%dT%H:%M:%S}+00:00"
    run_id = ensure_run(
        config.metadata,
        workload_id=workload_id,
        dag_id=config.workload(workload_id).dag_id,
        dag_run_id=dag_run_id,
        interval_start=end - timedelta(days=1),
        interval_end=end,
    )
    for stage in ("extract", "validate", "build_dataset", "train", "evaluate"):
        try:
            with record_stage(config.metadata, run_id, stage) as handle:
                handle.summary = {"dataset_id": "ds"} if stage == "build_dataset" else {}
                if stage == failed_stage:
                    raise RuntimeError(f"{stage} broke")
        except RuntimeError:
            pass
    root = Path(config.artifact_store.root, "runs", workload_id, night.isoformat(), "evaluate")
    for eval_type, right in scores.items():
        candidate_id = "champion" if eval_type == "champion" else "tiny"
        champion = current_version(config, workload_id) if eval_type == "champion" else None
        model = {"base_model": "base"} | ({"version": champion} if champion else {})
        directory = root / candidate_id / eval_type
        result = write_evaluation(directory, model, right)
        record_evaluation(
            config.metadata,
            run_id,
            workload_id=workload_id,
            dataset_id="ds",
            candidate_id=candidate_id,
            eval_type=eval_type,
            model=model,
            result_uri=str(directory / "result.json"),
            result=result,
            error=None,
        )
    decide_run(config, workload_id, run_id)


def write_evaluation(directory: Path, model: dict[str, Any], right: int) -> dict[str, Any]:
    """Write ``examples.jsonl`` and ``result.json`` of a model right on the first ``right`` of N examples."""
    directory.mkdir(parents=True)
    lines = [
        {
            "example_id": f"e{i:03d}",
            "scores": {"function_name": i < right, "function_name_and_args": i < right},
        }
        for i in range(N)
    ]
    (directory / "examples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = {
        "model": model,
        "examples": N,
        "examples_hash": "same",
        "metrics": {PRIMARY: proportion([True] * right + [False] * (N - right))},
        "latency_s": {"mean": 0.2, "p50": 0.2, "p95": 0.3},
        "examples_uri": str(directory / "examples.jsonl"),
    }
    (directory / "result.json").write_text(json.dumps(result))
    return result


def current_version(config: FlywheelConfig, workload_id: str) -> int | None:
    version = champion(config.metadata, workload_id)
    return version.version if version else None


@pytest.fixture
def history(make_config) -> FlywheelConfig:
    """Five recorded nights of the router and one of another workload, in a real SQLite metadata DB:

    * 11-17: no champion; the ICL challenger (90 of 120) reaches the floor: promote (v1 is promoted);
    * 11-18: champion v1 90, challenger 60: significantly worse, so an alert;
    * 11-19: champion 90, challenger 92: no change;
    * 11-20: the evaluate stage failed: an alert with nothing scored;
    * 11-21: champion 90, challenger 110: promote.
    """
    config = make_config(decision=DECISION)
    record_night(config, date(2026, 11, 17), {"icl": 90})
    promote(config.metadata, WORKLOAD, 1, actor="test", reason="first champion")
    record_night(config, date(2026, 11, 18), {"champion": 90, "icl": 60})
    record_night(config, date(2026, 11, 19), {"champion": 90, "icl": 92})
    record_night(config, date(2026, 11, 20), {}, failed_stage="evaluate")
    record_night(config, date(2026, 11, 21), {"champion": 90, "icl": 110})
    record_night(config, date(2026, 11, 19), {"icl": 30}, workload_id="bfcl_live_assistant")
    return config


def test_champion_trend_has_one_point_per_recorded_decision_in_interval_order(
    history: FlywheelConfig,
) -> None:
    points = champion_trend(history, WORKLOAD)

    assert [(p["night"], p["outcome"]) for p in points] == [
        ("2026-11-17", "promote"),
        ("2026-11-18", "alert"),
        ("2026-11-19", "no_change"),
        ("2026-11-20", "alert"),
        ("2026-11-21", "promote"),
    ]
    assert {p["primary_metric"] for p in points} == {PRIMARY}
    first, regressed, _, failed, last = points
    assert first["champion"] is None  # no champion yet
    assert first["challenger"]["value"] == pytest.approx(0.75)
    assert (first["challenger"]["candidate_id"], first["challenger"]["eval_type"]) == ("tiny", "icl")
    assert first["challenger"]["version"] == 1
    # The values and 95% intervals are the evaluations' own (Wilson intervals of 90 and 60 of 120).
    expected = proportion([True] * 90 + [False] * 30)
    assert regressed["champion"] == {
        "value": expected["value"],
        "ci_low": expected["ci_low"],
        "ci_high": expected["ci_high"],
        "n": N,
        "version": 1,
    }
    assert regressed["challenger"]["value"] == pytest.approx(0.5)
    assert regressed["challenger"]["ci_low"] < 0.5 < regressed["challenger"]["ci_high"]
    assert failed["champion"] is None and failed["challenger"] is None  # nothing was evaluated
    assert last["challenger"]["value"] == pytest.approx(110 / 120)
    assert last["interval_start"] == "2026-11-20T02:00:00+00:00"
    assert last["interval_end"] == "2026-11-21T02:00:00+00:00"
    assert last["dag_run_id"] == "scheduled__2026-11-20T02:00:00+00:00"
    json.dumps(points)  # JSON-safe, for XCom and the UI page


def test_champion_trend_stops_at_until_inclusive(history: FlywheelConfig) -> None:
    until = datetime(2026, 11, 19, 2, tzinfo=UTC)  # the 11-19 run's interval end

    assert [p["night"] for p in champion_trend(history, WORKLOAD, until)] == [
        "2026-11-17",
        "2026-11-18",
        "2026-11-19",
    ]
    # A bound in another time zone is the same instant.
    tokyo = until.astimezone(timezone(timedelta(hours=9)))
    assert len(champion_trend(history, WORKLOAD, tokyo)) == 3
    assert champion_trend(history, WORKLOAD, until - timedelta(seconds=1))[-1]["night"] == "2026-11-18"
    assert [p["night"] for p in champion_trend(history, "bfcl_live_assistant")] == ["2026-11-19"]
    assert champion_trend(history, WORKLOAD, datetime(2026, 1, 1, tzinfo=UTC)) == []


def test_the_report_data_carries_the_trend_up_to_its_own_run(history: FlywheelConfig) -> None:
    data = report_data(history, WORKLOAD, "scheduled__2026-11-18T02:00:00+00:00")

    assert data is not None
    assert [(p["night"], p["outcome"]) for p in data["trend"]] == [
        ("2026-11-17", "promote"),
        ("2026-11-18", "alert"),
        ("2026-11-19", "no_change"),
    ]
