"""`make scenario`: its configuration (default suite), and the story it tells with SmolLM2-135M (slow).

The slow test runs the whole scenario: 14 seeded days whose router API changes on day 8, replayed by
`airflow standalone` through `airflow backfill create` next to the scheduler's own run of the latest
night, with the real SmolLM2-135M under the retrain policy `on_trigger`. It passed in 48 minutes on 2
cores with bf16 instructions once challengers warm-started from the champion after the change; whether
a challenger is significantly better than the drifted champion on 64 examples still varies from run to
run (docs/operations.md, "The scenario").
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from flywheel.config import load_config
from flywheel.demo.runner import DEMO_TRAINING, demo_settings
from flywheel.demo.scenario import WORKLOAD, run_scenario, scenario_config
from flywheel.report.data import as_dict
from flywheel.report.timeline import timeline_data

DAYS = 14
DRIFT_DAY = 8


def test_the_scenario_runs_the_router_alone_under_on_trigger_in_its_own_directory(tmp_path: Path) -> None:
    project = load_config(None)

    config = scenario_config(project, tmp_path)

    assert [w.workload_id for w in config.workloads] == [WORKLOAD]
    workload = config.workload(WORKLOAD)
    demo = demo_settings(project).workload(WORKLOAD)
    assert workload.training.retrain.policy == "on_trigger"
    assert workload.log_source.settle_minutes == 0
    assert workload.evaluation.eval_types == ["customized"]
    # Everything else is the demo's: its short training of the real SmolLM2-135M, its evaluation size.
    assert workload.training.candidates == demo.training.candidates
    assert workload.training.candidates[0].base_model == "smollm2-135m-instruct"
    assert workload.training.settings.max_steps == DEMO_TRAINING["max_steps"]
    assert workload.evaluation.settings == demo.evaluation.settings
    assert workload.decision == demo.decision
    assert config.airflow.retries == 0  # a failed task fails its night at once
    assert config.artifact_store.root == str(tmp_path / "artifacts")
    assert (config.metadata.conn_id, config.metadata.url) == (None, f"sqlite:///{tmp_path / 'flywheel.db'}")
    # The file the DAG's tasks read (FLYWHEEL_CONFIG) loads back to the same configuration.
    written = tmp_path / "flywheel.yaml"
    written.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(written) == config


def test_sigterm_interrupts_the_scenario_as_ctrl_c_does() -> None:
    # A process of its own: the handler is set in its main thread, and the signal goes to it alone.
    script = """
import os, signal
from flywheel.demo.scenario import _sigterm_interrupts
try:
    with _sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # not reached: the handler raised
except KeyboardInterrupt as exc:
    print("interrupted:", exc)
print("restored:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"interrupted: signal {signal.SIGTERM.value}", "restored: True"]


def test_the_tiny_model_trains_briefly_and_its_floors_are_zero(tmp_path: Path) -> None:
    config = scenario_config(load_config(None), tmp_path, tiny_model=tmp_path / "tiny-llama")

    workload = config.workload(WORKLOAD)
    assert [(c.candidate_id, c.base_model) for c in workload.training.candidates] == [
        ("tiny", str(tmp_path / "tiny-llama"))
    ]
    assert workload.training.settings.max_steps == 4
    assert workload.evaluation.settings.max_examples == workload.decision.min_examples == 16
    assert (workload.decision.floor, workload.decision.drift_floor) == (0.0, 0.0)
    assert workload.training.retrain.policy == "on_trigger"


@pytest.mark.slow
def test_the_scenario_notices_the_api_change_and_recovers_training_only_when_it_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))

    exit_code = run_scenario(
        None,
        days=DAYS,
        drift_day=DRIFT_DAY,
        records_per_day=2000,
        model="smollm2",
        timeout_minutes=90,
        parallelism=3,
    )

    out = capsys.readouterr().out
    assert exit_code == 0, out
    config = load_config(tmp_path / "home" / "scenario" / "flywheel.yaml")
    days = [n["day"] for n in timeline_data(config, WORKLOAD)["nights"]]
    assert len(days) == DAYS, out  # one run per night
    data = timeline_data(config, WORKLOAD, changed_on=date.fromisoformat(days[DRIFT_DAY - 1]))
    nights, story, floor = data["nights"], data["milestones"], data["champion_floor"]

    def promoted(night: dict) -> bool:
        return as_dict(as_dict(night["decision"]).get("promotion")).get("status") == "promoted"

    before, after = nights[: DRIFT_DAY - 1], nights[DRIFT_DAY - 1 :]
    # A first promotion in the first nights.
    assert any(promoted(n) for n in before[:3]), out
    # Nights that decide no_change without training: the champion holds on fresh data.
    quiet = [n for n in before if n["decision"]["outcome"] == "no_change" and not n["training"]["trained"]]
    assert quiet, out
    assert all(n["champion"]["value"] >= floor for n in quiet), out
    # The change night itself notices: an alert, the champion below its floor, a tool-set change or shift.
    assert story["noticed"] == nights[DRIFT_DAY - 1]["day"], (story, out)
    change_night = after[0]
    assert {"champion_drift", "champion_below_floor", "tool_set_changed", "tool_shift"} & set(
        change_night["signals"]
    ), (change_night, out)
    # Within the next nights a challenger trained on post-change data is promoted ...
    assert story["recovered"] is not None and story["nights_to_recover"] <= 2, (story, out)
    recovered_at = next(i for i, n in enumerate(after) if n["day"] == story["recovered"])
    assert after[recovered_at]["training"]["trained"] and promoted(after[recovered_at])
    # ... and from then on the champion's score on fresh data is back above its floor.
    later = after[recovered_at + 1 :]
    assert later, "the recovery came on the last night: nothing shows the champion holding after it"
    assert all(n["champion"]["value"] >= floor for n in later), out
    # Training only when it pays: far fewer trained nights than nights.
    assert story["trained"] <= DAYS // 2, (story, out)
    assert (tmp_path / "home" / "scenario" / "artifacts" / "reports" / WORKLOAD / "timeline.html").is_file()
