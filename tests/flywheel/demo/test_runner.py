"""`make demo` in miniature: the real runner, its Airflow subprocesses and its summary."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from conftest import TEST_EVALUATION, write_config
from flywheel.config import load_config
from flywheel.db.engine import session_scope
from flywheel.db.models import RawPartition
from flywheel.demo.runner import run_demo

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
    assert "candidate tiny (" in out and "20 steps" in out  # the demo's short training
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
