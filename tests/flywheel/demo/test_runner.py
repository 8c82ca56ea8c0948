"""`make demo` in miniature: the real runner, its Airflow subprocesses and its summary."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from conftest import TEST_EVALUATION, write_config
from flywheel.config import load_config
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Evaluation, RawPartition
from flywheel.decide.evidence import outcomes_of
from flywheel.decide.paired import discordant_counts, mcnemar_exact
from flywheel.demo.runner import DEMO_GUARDRAIL_MARGINS, DEMO_TRAINING, demo_settings, run_demo

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


def test_demo_runs_two_nights_of_the_router(tmp_path, monkeypatch, capsys, tiny_model):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    config_path = write_config(tmp_path, evaluation={**TEST_EVALUATION, "eval_types": ["base", "customized"]})

    exit_code = run_demo(str(config_path), days=2, records_per_day=120, now=NOW)

    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "night 1: flywheel_customer_support_router 2026-11-19: succeeded" in out
    assert "night 2: flywheel_customer_support_router 2026-11-20: succeeded" in out
    assert "bfcl_live_assistant" not in out
    assert "stages: extract succeeded, validate succeeded, build_dataset succeeded, train succeeded" in out
    assert "candidate tiny (" in out and f"{DEMO_TRAINING['max_steps']} steps" in out  # the demo's training
    assert "fine-tuning gain of tiny on function_name_and_args_accuracy: base" in out
    # The tiny random model stays below the demo's floor: both nights decide no change, with reasons.
    assert out.count("DECISION: no_change") == 2
    assert "challenger_below_floor: " in out and "below the floor 0.25" in out
    assert "registry of customer_support_router: champion none" in out
    assert "run-report.html" in out
    assert "log store stopped" in out
    config = load_config(config_path)
    with session_scope(config.metadata) as session:
        days = session.execute(select(RawPartition.workload_id, RawPartition.day)).all()
    assert sorted(days) == [
        ("customer_support_router", datetime(2026, 11, 19).date()),
        ("customer_support_router", datetime(2026, 11, 20).date()),
    ]
    assert (tmp_path / "home" / "logs" / "flywheel_customer_support_router-2026-11-20.log").exists()


def test_the_demo_sizes_guardrail_margins_to_its_64_examples() -> None:
    project, demo = load_config(None), demo_settings(load_config(None))

    for workload in demo.workloads:
        configured = project.workload(workload.workload_id).decision.guardrails
        guardrails = workload.decision.guardrails
        assert set(guardrails) == set(configured)  # margins change; no guardrail is added or dropped
        for metric, margin in DEMO_GUARDRAIL_MARGINS.items():
            if metric in guardrails:
                assert guardrails[metric].margin == margin > configured[metric].margin
        assert guardrails["latency_p95_s"] == configured["latency_p95_s"]


@pytest.mark.slow
def test_night_one_with_smollm2_promotes_the_fine_tuned_adapter(tmp_path, monkeypatch, capsys):
    """`make demo`'s first night with the real SmolLM2-135M: fine-tuning beats few-shot prompting."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    exit_code = run_demo(None, days=7, records_per_day=2000, now=NOW, nights=1)

    out = capsys.readouterr().out
    assert exit_code == 0, out
    config = demo_settings(load_config(None))
    workload = config.workload("customer_support_router")
    metric = workload.decision.primary_metric
    with session_scope(config.metadata) as session:
        decision = session.scalars(select(Decision)).one()
        evaluations = {e.eval_type: e for e in session.scalars(select(Evaluation))}
    assert decision.outcome == "promote", out
    assert decision.challenger["eval_type"] == "customized", decision.challenger
    options = config.artifact_store.storage_options
    tuned = outcomes_of(evaluations["customized"], options).binary[metric]
    assert len(tuned) >= 64
    assert evaluations["customized"].metrics["no_call_accuracy"]["value"] >= 0.9
    for other in ("base", "icl"):
        theirs = outcomes_of(evaluations[other], options).binary[metric]
        keys = sorted(set(tuned) & set(theirs))
        only_tuned, only_other = discordant_counts([tuned[k] for k in keys], [theirs[k] for k in keys])
        # Significantly better under the workload's own test (one-sided exact McNemar at its alpha).
        assert mcnemar_exact(only_tuned, only_other) < workload.decision.alpha, (
            other,
            only_tuned,
            only_other,
        )
