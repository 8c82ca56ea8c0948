"""``make scenario``: two weeks of router traffic with a backend API change, replayed by a real Airflow.

It shows the loop notice drift and repair it without a person, as Airflow really runs it, training
only when that buys something (docs/operations.md, "The scenario"):

1. prepares a configuration for the router workload in ``$FLYWHEEL_HOME/scenario/`` (emptied first):
   the demo's settings (:func:`flywheel.demo.runner.demo_settings`) with the real SmolLM2-135M, or a
   tiny random model for a quick run of the mechanics, the retrain policy ``on_trigger``, no settle
   wait, and only fine-tuned challengers evaluated (:data:`SCENARIO_SETTINGS`);
2. starts the local log store and seeds ``days`` days of traffic whose backend API changes from
   ``drift_day`` on (a tool renamed, a required parameter added, a new tool);
3. starts ``airflow standalone`` (scheduler, dag-processor, api-server, triggerer; LocalExecutor;
   SQLite) with :class:`~flywheel.demo.local_airflow.LocalAirflow`, creates an ``airflow backfill
   create`` of every night but the latest while the DAG is paused, then unpauses it: the scheduler
   runs the latest night next to the backfill, and the nights decide in interval order;
4. waits for every run, writes the timeline report (:mod:`flywheel.report.timeline`) and prints its
   path and one line per night, then stops everything it started, also on an error or Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import yaml

from flywheel.config import FlywheelConfig, WorkloadConfig, deep_merge, flywheel_home, load_config
from flywheel.db.engine import get_engine
from flywheel.db.migrate import upgrade
from flywheel.demo.local_airflow import FINISHED, LocalAirflow, LocalAirflowError, airflow_settings
from flywheel.demo.runner import demo_settings, flywheel_environment, step, temporary_environment
from flywheel.demo.seed import SeedError, seed_logs
from flywheel.embedded import LocalLogStore
from flywheel.intervals import latest_intervals, partition_day
from flywheel.report.timeline import timeline_data, timeline_table, write_timeline

WORKLOAD = "customer_support_router"
"""The scenario's workload: the router, whose demo traffic carries the API change."""

Model = Literal["smollm2", "tiny"]

SCENARIO_SETTINGS: dict[str, Any] = {
    "log_source": {"settle_minutes": 0},
    "training": {"retrain": {"policy": "on_trigger"}},
    "evaluation": {"eval_types": ["customized"]},
}
"""What the scenario sets on top of the demo's settings: no wait for late logs (the seeded days are
complete), training only on a trigger, and only fine-tuned challengers. A night without training
then evaluates just the champion on its fresh data, so most nights cost one evaluation."""

BACKFILL_ACTIVE_RUNS = 2
"""The backfill's ``--max-active-runs``: the next night extracts while one trains. Each running DAG run
costs the scheduler a pass over its task instances every loop: with Airflow's default of 10 the
scheduler took 30 % of one of the 2 cores and night 1's training ran at 542 tokens/s; with 2, 13 % and
650 to 720 tokens/s (the same training alone: 900 to 1,400)."""

TINY_MODEL_SETTINGS: dict[str, Any] = {
    "training": {"settings": {"max_steps": 4, "batch_size": 4, "max_seq_length": 1024}},
    "evaluation": {"settings": {"max_examples": 16}},
    "decision": {"floor": 0.0, "champion_floor": 0.0, "min_examples": 16},
}
"""``--model tiny``: a tiny random Llama trains 4 steps and is evaluated on 16 examples. It scores
about 0, so both floors are 0: the first night promotes it, and the mechanics (a first champion,
nights without training, training on the tool-set change) run without a model that learns."""


def ensure_tiny_model(home: Path) -> Path:
    """The tiny random Llama (with SmolLM2's tokenizer) of ``--model tiny``, written once under ``home``."""
    from flywheel.train.models import SMOLLM2, write_tiny_llama

    path = home / "tiny-llama"
    if not path.is_dir():
        staging = path.with_name(f"{path.name}.tmp")  # renamed when complete: never a half-written model
        shutil.rmtree(staging, ignore_errors=True)
        write_tiny_llama(staging, SMOLLM2).rename(path)
    return path


def scenario_config(
    config: FlywheelConfig, directory: Path, *, tiny_model: Path | None = None
) -> FlywheelConfig:
    """The scenario's configuration: ``config``'s router workload alone, with the demo's settings and
    :data:`SCENARIO_SETTINGS`, its artifact store and SQLite metadata database in ``directory``.

    ``tiny_model``: a checkpoint that the one candidate, ``tiny``, trains instead of the configured
    candidates, with :data:`TINY_MODEL_SETTINGS`.
    """
    raw = demo_settings(config).model_dump(mode="json")
    workloads = [w for w in raw["workloads"] if w["workload_id"] == WORKLOAD]
    if not workloads:
        configured = ", ".join(w["workload_id"] for w in raw["workloads"])
        raise SeedError(f"workloads: the scenario runs {WORKLOAD}, which is not configured ({configured})")
    workload = deep_merge(workloads[0], SCENARIO_SETTINGS)
    if tiny_model is not None:
        workload = deep_merge(workload, TINY_MODEL_SETTINGS)
        workload["training"]["candidates"] = [{"candidate_id": "tiny", "base_model": str(tiny_model)}]
    raw["workloads"] = [WorkloadConfig.model_validate(workload).model_dump(mode="json")]
    raw["artifact_store"] = {"root": str(directory / "artifacts")}
    raw["metadata"] = {"url": f"sqlite:///{directory / 'flywheel.db'}"}
    # A failed task fails its night at once instead of waiting out retry delays (5 minutes and more).
    raw["airflow"]["retries"] = 0
    return FlywheelConfig.model_validate(raw)


def run_scenario(
    config_path: str | None,
    *,
    days: int,
    drift_day: int,
    records_per_day: int,
    model: Model,
    timeout_minutes: float,
    parallelism: int,
) -> int:
    """Run the scenario (see the module docstring); 0 when every night's DAG run succeeded.

    ``parallelism``: task processes the LocalExecutor runs at once (the backfill's nights extract side
    by side; from validation on, each waits for the night before, the DAG's ``previous_night``).
    The defaults are ``flywheel demo scenario``'s.

    Whatever happens, the Airflow it started and the log store are stopped before it returns or
    raises, and the process environment is restored; Ctrl-C or SIGTERM (``kill``, a CI timeout) returns
    130 once they are.
    """
    try:
        with _sigterm_interrupts():
            return _run(
                config_path,
                days=days,
                drift_day=drift_day,
                records_per_day=records_per_day,
                model=model,
                timeout_minutes=timeout_minutes,
                parallelism=parallelism,
            )
    except KeyboardInterrupt:
        print("\nInterrupted: the scenario's Airflow and log store are stopped.")
        return 130


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts the block as Ctrl-C does (its clean-up runs), then the old handler is back.
    Outside the main thread, where Python cannot set handlers, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    config_path: str | None,
    *,
    days: int,
    drift_day: int,
    records_per_day: int,
    model: Model,
    timeout_minutes: float,
    parallelism: int,
) -> int:
    started = time.monotonic()
    home = flywheel_home()
    directory = home / "scenario"
    shutil.rmtree(directory, ignore_errors=True)  # each run starts from no champion and no history
    directory.mkdir(parents=True)
    tiny = ensure_tiny_model(home) if model == "tiny" else None
    try:
        config = scenario_config(load_config(config_path), directory, tiny_model=tiny)
    except SeedError as exc:
        print(f"error: {exc}")
        return 2
    config_file = directory / "flywheel.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    workload = config.workload(WORKLOAD)
    now = datetime.now(UTC)
    intervals = latest_intervals(workload.schedule, days, now)
    airflow_home = directory / "airflow"
    # What the DAG's tasks need: this configuration, the model cache under $FLYWHEEL_HOME, no retries.
    task_env = flywheel_environment(home) | {"FLYWHEEL_CONFIG": str(config_file)}
    with LocalLogStore.start() as log_store:
        if workload.log_source.type == "elasticsearch":  # a files source reads its own url
            task_env |= log_store.connection_env(workload.log_source.conn_id)
        with temporary_environment(airflow_settings(airflow_home) | task_env):
            step(f"scenario in {directory} ({model} model); log store (osmem-server) at {log_store.url}")
            upgrade(get_engine(config.metadata))
            try:
                seeded = seed_logs(
                    config,
                    days=days,
                    records_per_day=records_per_day,
                    now=now,
                    workloads=[WORKLOAD],
                    drift_day=drift_day,
                )
            except SeedError as exc:
                print(f"error: {exc}")
                return 2
            changed_on = partition_day(datetime.fromisoformat(seeded.api_changed[WORKLOAD]))
            step(
                f"seeded {seeded.documents} log records over {days} day(s), "
                f"{intervals[0][0]:%Y-%m-%d} to {intervals[-1][0]:%Y-%m-%d}; the API changes on {changed_on}"
            )
            runs = _replay(
                LocalAirflow(airflow_home, env=task_env, parallelism=parallelism),
                workload.dag_id,
                intervals,
                timeout_minutes,
                started,
            )
            data = timeline_data(config, WORKLOAD, changed_on=changed_on)
            uri = write_timeline(config, data)
    print(f"\n{timeline_table(data)}\n")
    _print_story(data["milestones"])
    print(f"\nTimeline report: {uri}")
    print(f"Airflow's logs: {airflow_home / 'logs'}; the scenario's state: {directory}")
    failed = sum(run["state"] != "success" for run in runs)
    problems = [f"{failed} run(s) failed"] if failed else []
    if len(runs) < days:
        problems.append(f"{days - len(runs)} night(s) did not finish")
    minutes = (time.monotonic() - started) / 60
    print(f"Scenario finished in {minutes:.1f} min: {'; '.join(problems) or 'every night succeeded'}.")
    return 1 if problems else 0


def _replay(
    airflow: LocalAirflow,
    dag_id: str,
    intervals: list[tuple[datetime, datetime]],
    timeout_minutes: float,
    started: float,
) -> list[dict[str, Any]]:
    """Start Airflow, backfill every night but the latest, unpause (the scheduler runs the latest),
    wait for every run and stop Airflow; the runs as the REST API lists them (fewer on a timeout)."""
    reported: set[str] = set()

    def progress(runs: list[dict[str, Any]]) -> None:
        for run in runs:
            if run["state"] in FINISHED and run["dag_run_id"] not in reported:
                reported.add(run["dag_run_id"])
                day = partition_day(datetime.fromisoformat(run["data_interval_start"]))
                minutes = (time.monotonic() - started) / 60
                step(f"night of {day} ({run['run_type']}): {run['state']} after {minutes:.1f} min")

    try:
        airflow.start()
        step(f"airflow standalone at {airflow.url} (log: {airflow.log_path})")
        airflow.wait_for_dag(dag_id)
        if len(intervals) > 1:
            # Created while the DAG is paused, so its runs exist before the scheduler's own.
            airflow.backfill(dag_id, intervals[0][0], intervals[-2][0], max_active_runs=BACKFILL_ACTIVE_RUNS)
            step(f"airflow backfill create of {len(intervals) - 1} night(s); unpausing {dag_id}")
        airflow.unpause(dag_id)
        return airflow.wait_for_runs(dag_id, len(intervals), timeout_minutes * 60, on_poll=progress)
    except LocalAirflowError as exc:
        step(f"FAILED: {exc}")
        return [r for r in airflow.dag_runs(dag_id) if r["state"] in FINISHED]
    finally:
        airflow.stop()


def _print_story(story: dict[str, Any]) -> None:
    trained, nights, first = story["trained"], story["nights"], story["first_promotion"]
    print(f"Trained on {trained} of {nights} night(s); first promotion: {first or 'none'}.")
    if story["changed_on"]:
        noticed = (
            story["noticed"] and f"{story['noticed']} ({story['nights_to_notice']} night(s) after the change)"
        )
        recovered = story["recovered"] and (
            f"{story['recovered']} ({story['nights_to_recover']} night(s) after it was noticed)"
        )
        print(
            f"API change in the logs of {story['changed_on']}; noticed: {noticed or 'never'}; "
            f"a challenger trained on the changed data promoted: {recovered or 'never'}."
        )
