"""The timeline report, read back from a real SQLite metadata database holding six recorded nights of the
router under ``on_trigger``: a first promotion, a night without training, an API change noticed the
night it reached the logs, a recovery the night after, a night whose validation failed, a quiet night."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_data import N, write_evaluation

from conftest import TEST_TRAINING
from flywheel import artifacts
from flywheel.config import FlywheelConfig
from flywheel.decide.evidence import decide_run
from flywheel.deliver.registry import champion, promote
from flywheel.evaluate.stats import proportion
from flywheel.report.timeline import render_timeline, timeline_data, timeline_table, write_timeline
from flywheel.storage import ArtifactStore
from flywheel.tracking import ensure_run, record_evaluation, record_promotion, record_stage

WORKLOAD = "customer_support_router"
CHANGED_ON = date(2026, 11, 18)
HOSTILE = "<script>alert(1)</script>"

QUIET = [
    {"code": "no_previous_alert", "message": "the night before decided promote"},
    {"code": "champion_above_floor", "message": "champion v1 scored 0.750, at or above its floor 0.5"},
    {"code": "tool_set_unchanged", "message": "every tool the dataset offers was in its dataset"},
]


def record_night(
    config: FlywheelConfig,
    day: date,
    *,
    retrain: dict[str, Any] | None,
    scores: dict[str, int],
    validate: dict[str, Any] | None = None,
) -> None:
    """Record the run of partition ``day`` as the DAG's tasks would, then decide it (and promote a
    promotion, as the ``promote`` task does). ``scores``: how many of N examples the champion and
    the customized challenger got right; ``validate``: the validate stage's summary (None: it failed)."""
    start = datetime.combine(day, time(2), tzinfo=UTC)
    run_id = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id=config.workload(WORKLOAD).dag_id,
        dag_run_id=f"backfill__{start:%Y-%m-%dT%H:%M:%S}+00:00",
        interval_start=start,
        interval_end=start + timedelta(days=1),
    )
    with record_stage(config.metadata, run_id, "extract") as stage:
        stage.summary = {"records": 2000}
    if validate is None:
        with pytest.raises(RuntimeError), record_stage(config.metadata, run_id, "validate"):
            raise RuntimeError("batch expectations failed")
        return
    with record_stage(config.metadata, run_id, "validate") as stage:
        stage.summary = validate
    with record_stage(config.metadata, run_id, "build_dataset") as stage:
        # The change night's dataset leaves out the older days' records, which offer retired tools.
        stale = 9000 if day == CHANGED_ON else 0
        stage.summary = {
            "dataset_id": f"ds-{day}",
            "counts": {"train": 1400, "evaluation": 280},
            "stale_records": stale,
        }
    run_dir = Path(config.artifact_store.root, artifacts.run_dir(WORKLOAD, day))
    with record_stage(config.metadata, run_id, "train") as stage:
        trained = bool(retrain and retrain["train"])
        candidates = []
        if trained:
            adapter = run_dir / "train" / "tiny" / "adapter"
            adapter.mkdir(parents=True)
            (adapter / "adapter_config.json").write_text(json.dumps({"day": str(day)}))
            candidates = [
                {
                    "candidate_id": "tiny",
                    "status": "succeeded",
                    "wall_seconds": 41.5,
                    "adapter_uri": str(adapter),
                }
            ]
        stage.summary = {"dataset_id": f"ds-{day}", "candidates": candidates, "succeeded": len(candidates)}
        stage.summary["retrain"] = retrain
    with record_stage(config.metadata, run_id, "evaluate") as stage:
        stage.summary = {}
    for eval_type, right in scores.items():
        candidate_id = "champion" if eval_type == "champion" else "tiny"
        current = champion(config.metadata, WORKLOAD)
        if eval_type == "champion":
            model = {"base_model": "base", "version": current.version}
        else:
            model = {"base_model": "base", "adapter": candidates[0]["adapter_uri"]}
        directory = run_dir / "evaluate" / candidate_id / eval_type
        result = write_evaluation(directory, model, right)
        record_evaluation(
            config.metadata,
            run_id,
            workload_id=WORKLOAD,
            dataset_id=f"ds-{day}",
            candidate_id=candidate_id,
            eval_type=eval_type,
            model=model,
            result_uri=str(directory / "result.json"),
            result=result,
            error=None,
        )
    decision = decide_run(config, WORKLOAD, run_id)
    if decision["outcome"] == "promote":
        move = promote(
            config.metadata, WORKLOAD, decision["challenger_version"], actor="test", reason="test night"
        )
        promotion = {"status": "promoted", "version": move.version, "previous_version": move.previous_version}
        record_promotion(config.metadata, decision["decision_id"], promotion)


def counts(extracted: int, quarantined: int, tool_shift: float | None) -> dict[str, Any]:
    return {
        "extracted": extracted,
        "clean": extracted - quarantined,
        "quarantined": quarantined,
        "tool_shift": tool_shift,
        "success": True,
        "failed_expectations": [],
    }


def plan(train: bool, *reasons: tuple[str, str]) -> dict[str, Any]:
    return {
        "train": train,
        "policy": "on_trigger",
        "reasons": [{"code": c, "message": m} for c, m in reasons],
    }


@pytest.fixture
def nights(make_config) -> FlywheelConfig:
    config = make_config(
        decision={"floor": 0.5, "min_examples": 100, "guardrails": {}, "bootstrap_resamples": 200},
        training={**TEST_TRAINING, "retrain": {"policy": "on_trigger"}},
    )
    record_night(
        config,
        date(2026, 11, 16),
        retrain=plan(True, ("no_champion", "the registry holds no champion")),
        scores={"customized": 90},
        validate=counts(2000, 150, None),
    )
    record_night(
        config,
        date(2026, 11, 17),
        retrain=plan(False, *((r["code"], r["message"]) for r in QUIET)),
        scores={"champion": 90},
        validate=counts(2010, 160, 0.02),
    )
    record_night(
        config,
        CHANGED_ON,
        retrain=plan(True, ("tool_set_changed", f"the dataset offers tools {HOSTILE} (new)")),
        scores={"champion": 40, "customized": 50},
        validate=counts(1990, 140, 1.4),
    )
    record_night(
        config,
        date(2026, 11, 19),
        retrain=plan(True, ("previous_alert", "the night of 2026-11-18 alerted: champion_drift")),
        scores={"champion": 40, "customized": 100},
        validate=counts(2005, 151, 0.3),
    )
    record_night(config, date(2026, 11, 20), retrain=None, scores={}, validate=None)
    record_night(
        config,
        date(2026, 11, 21),
        retrain=plan(False, *((r["code"], r["message"]) for r in QUIET)),
        scores={"champion": 100},
        validate=counts(1995, 149, 0.01),
    )
    # The run report of one night, as the report task writes it: the timeline links to it.
    report = Path(config.artifact_store.root, artifacts.report_path(WORKLOAD, date(2026, 11, 19)))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<html></html>")
    return config


def test_each_night_has_its_records_training_scores_and_decision(nights: FlywheelConfig) -> None:
    data = timeline_data(nights, WORKLOAD, changed_on=CHANGED_ON)

    rows = data["nights"]
    assert [n["day"] for n in rows] == [f"2026-11-{d}" for d in range(16, 22)]
    assert rows[0]["night"] == "2026-11-17"  # the date its data interval ends
    assert [(n["records"] or {}).get("clean") for n in rows] == [1850, 1850, 1850, 1854, None, 1846]
    assert [n["training"] and n["training"]["trained"] for n in rows] == [
        True,
        False,
        True,
        True,
        None,
        False,
    ]
    assert rows[1]["training"]["reasons"] == QUIET  # every condition checked, none fired
    assert rows[0]["training"] | {"reasons": []} == {
        "trained": True,
        "policy": "on_trigger",
        "reasons": [],
        "adapters": 1,
        "seconds": 41.5,
    }
    outcomes = [(n["decision"] or {}).get("outcome") for n in rows]
    assert outcomes == ["promote", "no_change", "alert", "promote", None, "no_change"]
    assert rows[2]["decision"]["reasons"][0]["code"] == "champion_drift"
    assert rows[4]["failed_stages"] == ["validate"]
    promoted = [((n["decision"] or {}).get("promotion") or {}).get("version") for n in rows]
    # Version 2 is the change night's challenger: registered, below the floor, never promoted.
    assert promoted == [1, None, None, 3, None, None]
    # Both sides' primary metric with the evaluations' own 95% intervals, and the versions.
    assert rows[0]["champion"] is None
    assert rows[0]["challenger"]["value"] == pytest.approx(0.75)
    drifted = proportion([True] * 40 + [False] * 80)
    assert rows[2]["champion"] == {
        "value": drifted["value"],
        "ci_low": drifted["ci_low"],
        "ci_high": drifted["ci_high"],
        "n": N,
        "version": 1,
    }
    assert rows[3]["challenger"]["value"] == pytest.approx(100 / 120)
    assert rows[5]["champion"]["version"] == 3
    assert [n["report"] for n in rows] == [None, None, None, "2026-11-19/run-report.html", None, None]
    json.dumps(data)


def test_the_signals_and_milestones_tell_the_story(nights: FlywheelConfig) -> None:
    data = timeline_data(nights, WORKLOAD, changed_on=CHANGED_ON)

    signals = {n["day"]: n["signals"] for n in data["nights"]}
    assert signals["2026-11-16"] == []  # training because there is no champion says nothing about drift
    assert signals["2026-11-17"] == []
    assert signals["2026-11-18"] == [
        "champion_drift",
        "tool_set_changed",
        "champion_below_floor",
        "tool_shift",
    ]
    assert "previous_alert" in signals["2026-11-19"] and "champion_below_floor" in signals["2026-11-19"]
    assert signals["2026-11-20"] == []  # a run that failed before deciding records no signal
    assert signals["2026-11-21"] == []
    assert data["milestones"] == {
        "first_promotion": "2026-11-16",
        "trained": 3,
        "nights": 6,
        "changed_on": "2026-11-18",
        "noticed": "2026-11-18",
        "nights_to_notice": 0,
        "recovered": "2026-11-19",
        "nights_to_recover": 1,
    }
    without = timeline_data(nights, WORKLOAD)["milestones"]
    assert (without["noticed"], without["recovered"], without["trained"]) == (None, None, 3)


def test_the_page_shows_every_night_escaped_with_the_trend_plot(nights: FlywheelConfig) -> None:
    html = render_timeline(timeline_data(nights, WORKLOAD, changed_on=CHANGED_ON))

    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert html.count("<tr") == 1 + 6  # the header and one row per night
    assert '<svg role="img" aria-labelledby="trend-caption"' in html
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Noticed the night of <b>2026-11-18</b> (0 night(s) after the change)" in html
    assert "promoted the night of <b>2026-11-19</b> (1 night(s) after it was noticed)" in html
    assert "<b>3</b> of 6 night(s) trained (retrain policy <code>on_trigger</code>)" in html
    assert "version 3 is the champion" in html
    assert "no decision: validate failed" in html
    assert '<a href="2026-11-19/run-report.html">run report</a>' in html
    below = 'title="below the champion\'s floor 0.500">0.333 [0.255, 0.422]</span> v1'
    assert html.count(below) == 2  # the change night and the night after
    assert "1,990<br>1,850 clean, 140 quarantined" in html and "tool shift 1.400" in html
    assert html.count("dataset: 1,400 train, 280 evaluation") == 5  # not the night whose validation failed
    assert html.count("; 9,000 stale (retired tools)") == 1
    assert html.count("the first day of the changed API") == 1


def test_the_page_is_written_into_the_artifact_store(nights: FlywheelConfig) -> None:
    uri = write_timeline(nights, timeline_data(nights, WORKLOAD, changed_on=CHANGED_ON))

    store = ArtifactStore(nights.artifact_store.root)
    path = Path(store.path(artifacts.timeline_path(WORKLOAD)))
    assert uri == store.uri(str(path))
    assert path.read_text().count("<tr") == 7


def test_the_table_has_one_line_per_night(nights: FlywheelConfig) -> None:
    lines = timeline_table(timeline_data(nights, WORKLOAD)).splitlines()

    assert len(lines) == 1 + 6
    assert lines[0].split() == [
        "day",
        "records",
        "(clean/quarantined)",
        "trained",
        "champion",
        "challenger",
        "decision",
    ]
    assert lines[1].split("  ")[0] == "2026-11-16"
    assert "2000 (1850/150)" in lines[1] and "yes (no_champion)" in lines[1]
    assert "promote (first_champion) -> v1" in lines[1]
    assert "no (no_previous_alert, champion_above_floor, tool_set_unchanged)" in lines[2]
    assert "0.333 [" in lines[3] and "] v1" in lines[3] and "alert (champion_drift" in lines[3]
    assert "1990 (1850/140), 9000 stale" in lines[3] and "stale" not in lines[2]
    assert lines[5].rstrip().endswith("no decision (validate failed)")


def test_a_workload_without_runs_has_an_empty_timeline(make_config) -> None:
    config = make_config()
    data = timeline_data(config, WORKLOAD)

    assert data["nights"] == [] and data["milestones"]["first_promotion"] is None
    html = render_timeline(data)
    assert "No run of this workload is recorded yet." in html and "no decision recorded yet" in html
