"""A run's options from its DAG params: the manual-run params checked against the workload, each error
naming the param."""

from __future__ import annotations

import pytest

from conftest import write_config
from flywheel.config import WorkloadConfig, load_config
from flywheel.context import RunOptions
from flywheel.errors import RunParamError

CANDIDATES = [{"candidate_id": c, "base_model": f"/models/{c}"} for c in ("tiny", "small", "large")]


@pytest.fixture
def workload(tmp_path) -> WorkloadConfig:
    config = load_config(write_config(tmp_path, training={"candidates": CANDIDATES}))
    return config.workload("customer_support_router")


def test_a_scheduled_runs_params_are_the_defaults(workload: WorkloadConfig) -> None:
    defaults = {"page_size": 1000, "champion_only": False, "dry_run": False, "candidates": None}

    options = RunOptions.from_params(defaults, workload)

    assert options == RunOptions()
    assert [c.candidate_id for c in options.candidates_of(workload)] == ["tiny", "small", "large"]
    assert options.to_dict() == {"champion_only": False, "dry_run": False, "candidates": None}


def test_candidates_keep_the_configurations_order(workload: WorkloadConfig) -> None:
    options = RunOptions.from_params({"candidates": ["large", "tiny", "large"], "dry_run": True}, workload)

    assert options.candidates == ("large", "tiny")
    assert options.dry_run
    assert [c.candidate_id for c in options.candidates_of(workload)] == ["tiny", "large"]


def test_champion_only_runs_no_candidate(workload: WorkloadConfig) -> None:
    options = RunOptions.from_params({"champion_only": True}, workload)

    assert options.champion_only and options.candidates_of(workload) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"candidates": ["tiny", "huge"]},
            "param candidates: 'huge' is not a candidate of workload customer_support_router; its "
            "candidates: tiny, small, large",
        ),
        (
            {"candidates": ["huge", "tyni"]},
            "param candidates: 'huge', 'tyni' are not candidates of workload customer_support_router; its "
            "candidates: tiny, small, large",
        ),
        ({"candidates": []}, "param candidates: must be null or a non-empty list of candidate ids"),
        ({"candidates": "tiny"}, "param candidates: must be null or a non-empty list of candidate ids"),
        ({"dry_run": "yes"}, "param dry_run: must be true or false, got 'yes'"),
        (
            {"champion_only": True, "candidates": ["tiny"]},
            "params champion_only and candidates: a champion-only run trains and evaluates no candidate",
        ),
    ],
)
def test_a_param_that_does_not_fit_the_workload_is_named(
    workload: WorkloadConfig, params: dict[str, object], message: str
) -> None:
    with pytest.raises(RunParamError) as info:
        RunOptions.from_params(params, workload)

    assert str(info.value).startswith(message)
