"""When a run trains (``training.retrain``): each policy and each trigger deciding train or not, with its
reason, against a real SQLite metadata database, the real registry and datasets built from demo traffic
(before and after the router's API change)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import TEST_TRAINING
from flywheel.compute import JobSpec
from flywheel.config import FlywheelConfig
from flywheel.context import RunContext
from flywheel.dataset.build import build_dataset
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, RunStage
from flywheel.decide.policy import Reason
from flywheel.deliver.registry import VersionInfo, promote, register_version
from flywheel.demo.seed import write_raw_partition
from flywheel.intervals import latest_intervals
from flywheel.tracking import record_dataset
from flywheel.train.retrain import plan_retrain
from flywheel.train.tasks import collect_training, plan_training
from flywheel.validate.day import validate_day

WORKLOAD = "customer_support_router"
PRIMARY = "function_name_and_args_accuracy"
NIGHTS = latest_intervals("0 2 * * *", 3, datetime(2026, 11, 23, 2, tzinfo=UTC))
"""Three consecutive nights: the data of 2026-11-20, -21 and -22."""
NO_DATASET = {"dataset_id": "none", "uri": "file:///nowhere/datasets/none"}
"""A dataset summary for tests whose tool sets do not matter (no manifest: the tools are not compared)."""


def configure(
    make_config, retrain: dict[str, Any], training: dict[str, Any] = TEST_TRAINING, **overrides: Any
) -> FlywheelConfig:
    # Floor 0.5. The API change shifts the tool mix beyond the default max_tool_shift; under the
    # default tool_shift_action (alert) its day still passes validation and enters the dataset.
    return make_config(
        training={**training, "retrain": retrain},
        decision={"floor": 0.5, "min_examples": 4, "guardrails": {}},
        training_window_days=2,
        **overrides,
    )


def night(config: FlywheelConfig, index: int) -> RunContext:
    start, end = NIGHTS[index]
    return RunContext.of(
        config, WORKLOAD, interval_start=start, interval_end=end, dag_run_id=f"scheduled__{end.isoformat()}"
    )


def dataset_of(ctx: RunContext, *, api_changed: bool = False) -> dict[str, Any]:
    """The night's demo traffic extracted, validated and built into the window's dataset (recorded)."""
    write_raw_partition(
        ctx.store,
        ctx.workload,
        start=ctx.interval_start,
        end=ctx.interval_end,
        count=300,
        seed=5,
        api_changed=api_changed,
    )
    validated = validate_day(
        ctx.store,
        workload_id=WORKLOAD,
        start=ctx.interval_start,
        end=ctx.interval_end,
        rules=ctx.workload.data_quality,
        build_docs=False,
    )
    assert validated.success, validated.failed_expectations
    result = build_dataset(ctx.store, ctx.workload, ctx.day)
    record_dataset(ctx.config.metadata, result, ctx.run_id)
    return result.to_dict()


def crown(ctx: RunContext, dataset_id: str, score: float, base_model: str = "/models/tiny") -> VersionInfo:
    """Register the night's challenger (scoring ``score`` on the primary metric) and promote it."""
    version = register_version(
        ctx.config.metadata,
        workload_id=WORKLOAD,
        run_id=ctx.run_id,
        candidate_id="tiny",
        eval_type="customized",
        model={"base_model": base_model, "adapter": f"/artifacts/{ctx.day}/adapter"},
        dataset_id=dataset_id,
        metrics={PRIMARY: score},
    )
    promote(ctx.config.metadata, WORKLOAD, version.version, actor="test", reason="the night's winner")
    return version


def decided(
    ctx: RunContext, outcome: str, codes: list[str], champion: VersionInfo | None = None, score: float = 0.0
) -> None:
    """Record the night's decision, with ``champion`` evaluated at ``score`` on its data."""
    with session_scope(ctx.config.metadata) as session:
        session.add(
            Decision(
                run_id=ctx.run_id,
                workload_id=WORKLOAD,
                outcome=outcome,
                reasons=[{"code": code, "message": code} for code in codes],
                primary_metric=PRIMARY,
                champion_version_id=champion.id if champion else None,
                champion=champion and {"version": champion.version, "metrics": {PRIMARY: score}},
                comparisons={},
                candidates=[],
                policy=ctx.workload.decision.model_dump(mode="json"),
            )
        )


def codes_of(plan) -> list[str]:
    return [r.code for r in plan.reasons]


def test_always_trains_and_writes_why(make_config) -> None:
    ctx = night(configure(make_config, {"policy": "always"}), 0)

    plan = plan_retrain(ctx, NO_DATASET, None)

    assert (plan.train, plan.policy, codes_of(plan)) == (True, "always", ["policy_always"])
    written = Path(ctx.store.path("runs", WORKLOAD, "2026-11-20", "retrain.json"))
    assert json.loads(written.read_text()) == plan.to_dict()


@pytest.mark.parametrize("retrain", [{"policy": "on_trigger"}, {"policy": "every_n_days", "every_n_days": 7}])
def test_without_a_champion_a_run_trains(make_config, retrain: dict[str, Any]) -> None:
    plan = plan_retrain(night(configure(make_config, retrain), 0), NO_DATASET, None)

    assert (plan.train, codes_of(plan)) == (True, ["no_champion"])


def test_a_healthy_champion_skips_training_and_the_train_stage_records_why(make_config) -> None:
    config = configure(make_config, {"policy": "on_trigger"})
    first, second = night(config, 0), night(config, 1)
    champion = crown(first, dataset_of(first)["dataset_id"], 0.8)
    decided(first, "promote", ["first_champion"])
    dataset = dataset_of(second)

    jobs = plan_training(second, dataset)
    summary = collect_training(second, dataset, jobs)

    assert jobs == []
    retrain = summary["retrain"]
    assert (retrain["train"], retrain["policy"]) == (False, "on_trigger")
    assert [r["code"] for r in retrain["reasons"]] == [
        "no_previous_alert",
        "champion_above_floor",
        "tool_set_unchanged",
        "tool_shift_within",
    ]
    messages = [r["message"] for r in retrain["reasons"]]
    assert messages[0] == "the night of 2026-11-20 decided promote, no drift or data-quality alert"
    assert messages[1] == (
        f"champion v{champion.version} scored {PRIMARY} 0.800 as a challenger on the data of 2026-11-20, "
        "at or above its floor 0.5"
    )
    assert (summary["candidates"], summary["succeeded"], summary["failed"]) == ([], 0, 0)
    with session_scope(config.metadata) as session:
        stage = session.scalars(select(RunStage).where(RunStage.stage == "train")).one()
        assert (stage.status, stage.summary["retrain"]) == ("succeeded", retrain)


@pytest.mark.parametrize(
    ("codes", "train"),
    [
        (["champion_drift"], True),
        (["data_quality_failed"], True),
        (["tool_shift"], True),
        (["challenger_regressed"], False),
    ],
)
def test_the_previous_nights_drift_or_quality_alert_triggers_training(
    make_config, codes: list[str], train: bool
) -> None:
    config = configure(make_config, {"policy": "on_trigger"})
    first, second = night(config, 0), night(config, 1)
    champion = crown(first, "ds-0", 0.8)
    decided(first, "alert", codes, champion, 0.8)

    plan = plan_retrain(second, NO_DATASET, champion)

    assert plan.train is train
    if train:
        assert [(r.code, r.message) for r in plan.reasons] == [
            ("previous_alert", f"the night of 2026-11-20 alerted: {codes[0]}")
        ]
    else:
        assert codes_of(plan) == [
            "no_previous_alert",
            "champion_above_floor",
            "tool_set_unknown",
            "tool_shift_unknown",
        ]
        assert (
            "decided alert (challenger_regressed), no drift or data-quality alert" in plan.reasons[0].message
        )


def test_the_champions_latest_score_on_fresh_data_against_its_floor(make_config) -> None:
    config = configure(make_config, {"policy": "on_trigger"})
    first, second, third = (night(config, i) for i in range(3))
    # A person promoted a version that scored below the floor when it was a challenger.
    champion = crown(first, "ds-0", 0.4)

    plan = plan_retrain(second, NO_DATASET, champion)

    assert [(r.code, r.message) for r in plan.reasons] == [
        (
            "champion_below_floor",
            f"champion v{champion.version} scored {PRIMARY} 0.400 as a challenger on the data of 2026-11-20, "
            "below its floor 0.5",
        )
    ]
    # Evaluated as the champion on the next night's data, it passes: that newer score counts.
    decided(second, "no_change", ["not_significant"], champion, 0.7)
    plan = plan_retrain(third, NO_DATASET, champion)
    assert not plan.train
    assert plan.reasons[1].message == (
        f"champion v{champion.version} scored {PRIMARY} 0.700 as the champion on the data of 2026-11-21, "
        "at or above its floor 0.5"
    )


def test_an_api_change_in_the_data_triggers_training_as_a_tool_set_change_and_a_tool_shift(
    make_config,
) -> None:
    config = configure(make_config, {"policy": "on_trigger"})
    first, second = night(config, 0), night(config, 1)
    champion = crown(first, dataset_of(first)["dataset_id"], 0.8)
    decided(first, "promote", ["first_champion"])

    plan = plan_retrain(second, dataset_of(second, api_changed=True), champion)

    assert plan.train
    assert codes_of(plan) == ["tool_set_changed", "tool_shift"]
    assert plan.reasons[0].message.endswith(
        ": cancel_order (new), start_return (changed), track_package (new)"
    )


@pytest.mark.parametrize(
    ("api_changed", "warm_start_on_tool_change", "warm"),
    [(False, False, True), (True, False, False), (True, True, True)],
    ids=["same-tools", "api-change", "api-change-warm-anyway"],
)
def test_after_an_api_change_a_candidate_trains_a_fresh_lora_unless_told_to_warm_start(
    make_config, api_changed: bool, warm_start_on_tool_change: bool, warm: bool
) -> None:
    settings = {
        "init_from": "champion",
        "warm_start_steps": 8,
        "warm_start_learning_rate": 2e-4,
        "warm_start_on_tool_change": warm_start_on_tool_change,
        "tool_change_steps": 30,
        "tool_change_learning_rate": 1e-3,
    }
    training = TEST_TRAINING | {"settings": TEST_TRAINING["settings"] | settings}
    config = configure(make_config, {"policy": "always"}, training=training)
    first, second = night(config, 0), night(config, 1)
    base_model = TEST_TRAINING["candidates"][0]["base_model"]
    champion = crown(first, dataset_of(first)["dataset_id"], 0.8, base_model=base_model)
    changed = (
        f"the dataset offers tools champion v{champion.version}'s dataset {champion.dataset_id} did not: "
        "cancel_order (new), start_return (changed), track_package (new)"
    )

    (job,) = map(JobSpec.from_dict, plan_training(second, dataset_of(second, api_changed=api_changed)))

    job_settings = json.loads(job.arguments[job.arguments.index("--training-config") + 1])
    if not warm:
        assert job.init_from == {"base": f"{changed} (warm_start_on_tool_change is false)"}
        assert "--init-adapter" not in job.arguments
        return
    start = {"parent_version": champion.version, "adapter": champion.adapter_uri}
    warm_start = ["--init-adapter", champion.adapter_uri, "--parent-version", str(champion.version)]
    assert job.arguments[-4:] == warm_start
    if api_changed:
        # The adapter relearns the changed tools: the tool-change steps and rate, not a night's refinement.
        assert job.init_from == start | {"tools_changed": changed}
        assert (job_settings["warm_start_steps"], job_settings["warm_start_learning_rate"]) == (30, 1e-3)
    else:
        assert job.init_from == start
        assert (job_settings["warm_start_steps"], job_settings["warm_start_learning_rate"]) == (8, 2e-4)


@pytest.mark.parametrize(("max_tool_shift", "train"), [(0.5, True), (100.0, False)])
def test_this_nights_flagged_tool_shift_triggers_training(
    make_config, max_tool_shift: float, train: bool
) -> None:
    config = configure(make_config, {"policy": "on_trigger"}, data_quality={"max_tool_shift": max_tool_shift})
    first, second = night(config, 0), night(config, 1)
    champion = crown(first, dataset_of(first)["dataset_id"], 0.8)
    decided(first, "promote", ["first_champion"])
    dataset_of(second, api_changed=True)  # validated: the clean partition records the shift and its flag
    shift = second.store.read_partition_record(WORKLOAD, second.day, "clean")["tool_shift"]

    plan = plan_retrain(second, NO_DATASET, champion)  # tools not compared: the shift alone decides

    assert plan.train is train
    if train:
        assert [(r.code, r.message) for r in plan.reasons] == [
            (
                "tool_shift",
                f"the tool-call distribution of 2026-11-21 shifted from the previous days': KL divergence "
                f"{shift:.3f} above max_tool_shift 0.5 (changed or new tools)",
            )
        ]
    else:
        assert plan.reasons[-1] == Reason(
            "tool_shift_within",
            "the tool-call distribution of 2026-11-21 is within max_tool_shift 100.0 of the previous days' "
            f"(KL divergence {shift:.3f})",
        )


@pytest.mark.parametrize(("every_n_days", "train"), [(2, True), (3, False)])
def test_every_n_days_counts_from_the_last_night_that_trained(
    make_config, every_n_days: int, train: bool
) -> None:
    config = configure(make_config, {"policy": "every_n_days", "every_n_days": every_n_days})
    first, second, third = (night(config, i) for i in range(3))
    champion = crown(first, "ds-0", 0.8)
    for ctx, adapters in ((first, 1), (second, 0)):  # the second night trained nothing
        with ctx.stage("train") as stage:
            stage.summary = {"dataset_id": "ds-0", "candidates": [], "succeeded": adapters, "failed": 0}

    plan = plan_retrain(third, NO_DATASET, champion)

    assert (plan.train, codes_of(plan)) == (train, ["training_due" if train else "training_not_due"])
    assert plan.reasons[0].message == (
        f"the last training was on 2026-11-20, 2 day(s) ago; every_n_days is {every_n_days}"
    )
