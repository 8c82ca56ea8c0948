"""Planning the training jobs: a candidate with ``init_from: champion`` warm-starts from the registry's
champion adapter when it can, and the plan and the train stage summary say why when it cannot."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from conftest import TEST_EVALUATION
from flywheel.compute import JobSpec
from flywheel.config import FlywheelConfig
from flywheel.context import RunContext, RunOptions
from flywheel.deliver.registry import VersionInfo, promote, register_version
from flywheel.errors import RunParamError
from flywheel.evaluate.tasks import plan_evaluation
from flywheel.jobs import write_result
from flywheel.tracking import ensure_run
from flywheel.train.retrain import read_retrain
from flywheel.train.tasks import TRAIN_FIGURES, collect_training, plan_training

WORKLOAD = "customer_support_router"
START = datetime(2026, 11, 20, 2, tzinfo=UTC)
END = datetime(2026, 11, 21, 2, tzinfo=UTC)
TINY, OTHER = "/models/tiny", "/models/other"
TRAINING = {
    "settings": {"max_steps": 2, "init_from": "champion"},
    "candidates": [
        {"candidate_id": "tiny", "base_model": TINY},
        {"candidate_id": "other", "base_model": OTHER},
        {"candidate_id": "fresh", "base_model": TINY, "settings": {"init_from": "base"}},
    ],
}
"""Two candidates that ask for a warm start (on two base models) and one that does not."""


def context(config: FlywheelConfig, options: RunOptions | None = None) -> RunContext:
    return RunContext.of(
        config,
        WORKLOAD,
        interval_start=START,
        interval_end=END,
        dag_run_id="manual__2026-11-21",
        options=options,
    )


def plan(config: FlywheelConfig) -> dict[str, JobSpec]:
    jobs = plan_training(context(config), {"uri": "file:///datasets/ds-1"})
    return {job.labels["flywheel.io/candidate"]: job for job in map(JobSpec.from_dict, jobs)}


def champion_version(config: FlywheelConfig, eval_type: str, model: dict) -> VersionInfo:
    """Register an earlier run's variant of the ``tiny`` candidate and make it the champion."""
    run_id = ensure_run(
        config.metadata,
        workload_id=WORKLOAD,
        dag_id="flywheel_customer_support_router",
        dag_run_id="earlier",
        interval_start=START,
        interval_end=END,
    )
    version = register_version(
        config.metadata,
        workload_id=WORKLOAD,
        run_id=run_id,
        candidate_id="tiny",
        eval_type=eval_type,
        model=model,
        dataset_id="ds-0",
    )
    promote(config.metadata, WORKLOAD, version.version, actor="test", reason="earlier winner")
    return version


def test_a_candidate_warm_starts_from_a_customized_champion_of_its_base_model(
    make_config, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(training=TRAINING)
    adapter = "/artifacts/runs/earlier/train/tiny/adapter"
    champion_version(config, "customized", {"base_model": TINY, "adapter": adapter})

    with caplog.at_level(logging.INFO, logger="flywheel.train.tasks"):
        jobs = plan(config)

    assert jobs["tiny"].init_from == {"parent_version": 1, "adapter": adapter}
    assert jobs["tiny"].arguments[-4:] == ["--init-adapter", adapter, "--parent-version", "1"]
    assert jobs["other"].init_from == {
        "base": f"the champion v1 (tiny/customized) adapts {TINY}, not {OTHER}"
    }
    assert jobs["fresh"].init_from == {"base": "init_from is base"}
    for name in ("other", "fresh"):
        assert "--init-adapter" not in jobs[name].arguments
        assert "--parent-version" not in jobs[name].arguments
    assert f"starting from the champion v1's adapter {adapter}" in caplog.text
    assert f"starting from a fresh LoRA (the champion v1 (tiny/customized) adapts {TINY}" in caplog.text


@pytest.mark.parametrize(
    ("eval_type", "model", "reason"),
    [
        ("icl", {"base_model": TINY, "few_shot": True}, "the champion v1 (tiny/icl) has no adapter"),
        ("base", {"base_model": TINY}, "the champion v1 (tiny/base) has no adapter"),
    ],
    ids=["icl", "base"],
)
def test_a_champion_without_an_adapter_leaves_a_fresh_lora(
    make_config, caplog: pytest.LogCaptureFixture, eval_type: str, model: dict, reason: str
) -> None:
    config = make_config(training=TRAINING)
    champion_version(config, eval_type, model)

    with caplog.at_level(logging.INFO, logger="flywheel.train.tasks"):
        jobs = plan(config)

    assert jobs["tiny"].init_from == {"base": reason}
    assert "--init-adapter" not in jobs["tiny"].arguments
    assert f"starting from a fresh LoRA ({reason})" in caplog.text


def test_without_a_registered_champion_candidates_train_a_fresh_lora(make_config) -> None:
    assert plan(make_config(training=TRAINING))["tiny"].init_from == {"base": "no champion yet"}

    endpoint = {"endpoint": {"base_url": "http://teacher:8000/v1", "model": "teacher-70b"}}
    config = make_config(training=TRAINING, evaluation={**TEST_EVALUATION, "champion": endpoint})
    assert plan(config)["tiny"].init_from == {
        "base": "the champion is evaluation.champion (teacher-70b), not a registered adapter"
    }


def test_the_train_summary_says_where_each_adapter_started(make_config) -> None:
    config = make_config(training=TRAINING)
    adapter = "/artifacts/runs/earlier/train/tiny/adapter"
    champion_version(config, "customized", {"base_model": TINY, "adapter": adapter})
    ctx = context(config)
    jobs = plan_training(ctx, {"uri": "file:///datasets/ds-1"})
    for job in jobs[:2]:  # the third candidate's job failed without a word
        write_result(job["output_uri"], dict.fromkeys(TRAIN_FIGURES, 1))

    summary = collect_training(ctx, {"dataset_id": "ds-1"}, jobs)

    assert [(c["candidate_id"], c["status"], c["init_from"]) for c in summary["candidates"]] == [
        ("tiny", "succeeded", {"parent_version": 1, "adapter": adapter}),
        ("other", "succeeded", {"base": f"the champion v1 (tiny/customized) adapts {TINY}, not {OTHER}"}),
        ("fresh", "failed", {"base": "init_from is base"}),
    ]


def evaluated(ctx: RunContext, train_jobs: list[dict]) -> list[tuple[str, str]]:
    """(candidate, eval type) of each evaluation job ``plan_evaluation`` plans after ``train_jobs``."""
    jobs = map(JobSpec.from_dict, plan_evaluation(ctx, {"uri": "file:///datasets/ds-1"}, train_jobs))
    return [(job.labels["flywheel.io/candidate"], job.labels["flywheel.io/eval-type"]) for job in jobs]


def test_the_candidates_param_trains_and_evaluates_only_those_candidates(make_config) -> None:
    config = make_config(
        training=TRAINING, evaluation={**TEST_EVALUATION, "eval_types": ["base", "customized"]}
    )
    ctx = context(config, RunOptions(candidates=("fresh", "tiny")))

    jobs = plan_training(ctx, {"uri": "file:///datasets/ds-1"})
    for job in jobs:
        write_result(job["output_uri"], dict.fromkeys(TRAIN_FIGURES, 1))

    # In the configuration's order, whatever the param's.
    assert [JobSpec.from_dict(job).labels["flywheel.io/candidate"] for job in jobs] == ["tiny", "fresh"]
    assert evaluated(ctx, jobs) == [
        ("tiny", "base"),
        ("tiny", "customized"),
        ("fresh", "base"),
        ("fresh", "customized"),
    ]


def test_champion_only_overrides_the_retrain_policy_and_evaluates_the_champion_alone(make_config) -> None:
    config = make_config(
        training=TRAINING, evaluation={**TEST_EVALUATION, "eval_types": ["base", "customized"]}
    )
    champion_version(config, "customized", {"base_model": TINY, "adapter": "/artifacts/models/v1"})
    ctx = context(config, RunOptions(champion_only=True))

    # The retrain policy is `always`: only the param keeps the run from training.
    assert config.workload(WORKLOAD).training.retrain.policy == "always"
    assert plan_training(ctx, {"uri": "file:///datasets/ds-1"}) == []
    assert read_retrain(ctx) == {
        "train": False,
        "policy": "always",
        "reasons": [
            {
                "code": "champion_only",
                "message": "a manual run asked to re-evaluate the champion only (param champion_only): "
                "nothing trains, whatever the retrain policy always says",
            }
        ],
    }
    assert evaluated(ctx, []) == [("champion", "champion")]


def test_champion_only_without_a_champion_is_an_error_naming_the_param(make_config) -> None:
    ctx = context(make_config(training=TRAINING), RunOptions(champion_only=True))

    with pytest.raises(
        RunParamError, match=r"^param champion_only: workload customer_support_router has no "
    ):
        plan_training(ctx, {"uri": "file:///datasets/ds-1"})


def test_eval_types_with_champion_replace_eval_types_once_there_is_a_champion(make_config) -> None:
    evaluation = {
        **TEST_EVALUATION,
        "eval_types": ["base", "icl", "customized"],
        "eval_types_with_champion": ["customized"],
    }
    config = make_config(training=TRAINING, evaluation=evaluation)
    ctx = context(config, RunOptions(candidates=("tiny",)))
    jobs = plan_training(ctx, {"uri": "file:///datasets/ds-1"})
    for job in jobs:
        write_result(job["output_uri"], dict.fromkeys(TRAIN_FIGURES, 1))

    # No champion yet: base and icl are the references that say whether fine-tuning pays.
    assert evaluated(ctx, jobs) == [("tiny", "base"), ("tiny", "icl"), ("tiny", "customized")]

    champion_version(config, "customized", {"base_model": TINY, "adapter": "/artifacts/models/v1"})
    assert evaluated(ctx, jobs) == [("champion", "champion"), ("tiny", "customized")]
