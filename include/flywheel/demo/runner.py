"""``make demo``: the nightly flywheel end to end on the embedded default, in one command.

Starts the local log store, seeds a week of traffic, migrates the flywheel's and Airflow's databases
(SQLite under ``$FLYWHEEL_HOME``), runs the router workload's DAG for the last two nights with
``airflow dags test`` (night 1 has no champion yet; night 2 re-evaluates the one night 1 promoted on
fresh data), prints a summary read back from the metadata database (every stage, the evaluations, the
fine-tuned model against its base, the decision with its figures, the registry), and stops what it
started. Airflow's output goes to log files under ``$FLYWHEEL_HOME/logs``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.config import (
    FlywheelConfig,
    WorkloadConfig,
    deep_merge,
    flywheel_home,
    load_config,
)
from flywheel.db.engine import get_engine, session_scope
from flywheel.db.migrate import upgrade
from flywheel.db.models import Dataset, Decision, Evaluation, RawPartition, Run, RunStage, ValidatedPartition
from flywheel.decide.evidence import outcomes_of
from flywheel.decide.paired import discordant_counts, mcnemar_exact
from flywheel.demo.local_airflow import airflow_settings
from flywheel.demo.seed import demo_workloads, seed_logs
from flywheel.embedded import LocalLogStore
from flywheel.intervals import latest_intervals


def airflow_environment(home: Path) -> dict[str, str]:
    """Environment for Airflow commands on the embedded default: SQLite, this project's DAGs, no examples."""
    return airflow_settings(home / "airflow") | flywheel_environment(home)


def flywheel_environment(home: Path) -> dict[str, str]:
    """What the demo's DAG tasks need beyond Airflow's settings: the flywheel's home, no retries."""
    return {
        "FLYWHEEL_HOME": str(home),
        # A retry waits out its delay; a demo (or scenario) run should report a failure at once.
        "FLYWHEEL_TASK_RETRIES": "0",
    }


DEMO_WORKLOADS = ("customer_support_router",)
"""Workloads ``make demo`` runs by default (``flywheel demo run --workload`` picks others)."""

NIGHTS = 2
"""Nights the demo runs by default, oldest first: the first promotes a champion, the next trains a
challenger from it and re-evaluates it."""


def run_demo(
    config_path: str | None,
    *,
    days: int,
    records_per_day: int,
    now: datetime | None,
    workloads: list[str] | None = None,
    nights: int = NIGHTS,
) -> int:
    """Run the demo over the last ``nights`` nights; return 0 when every DAG run succeeded.

    The process environment is restored after."""
    home = flywheel_home()
    logs_dir = home / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    env = airflow_environment(home)
    config = demo_settings(load_config(config_path))
    # The DAG's tasks (`airflow dags test` subprocesses) read this file: the settings, shorter training.
    demo_config = home / "demo-flywheel.yaml"
    demo_config.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    env["FLYWHEEL_CONFIG"] = str(demo_config)
    chosen = [w for w, _ in demo_workloads(config, list(workloads or DEMO_WORKLOADS))]
    started = time.monotonic()
    with LocalLogStore.start() as log_store:
        # Elasticsearch sources read the local log store; a files source reads its own url.
        for conn_id in {w.log_source.conn_id for w in chosen if w.log_source.type == "elasticsearch"}:
            env.update(log_store.connection_env(conn_id))
        with temporary_environment(env):
            step(f"log store (osmem-server) at {log_store.url}")
            revision = upgrade(get_engine(config.metadata))
            step(
                f"metadata database at revision {revision}: {config.metadata.conn_id or config.metadata.url}"
            )
            report = seed_logs(
                config,
                days=days,
                records_per_day=records_per_day,
                now=now,
                workloads=[w.workload_id for w in chosen],
            )
            step(f"seeded {report.documents} log records over {days} day(s): {report.by_workload}")
            migrate_log = logs_dir / "airflow-db-migrate.log"
            if not _airflow(["db", "migrate"], migrate_log):
                step(f"Airflow database migration FAILED (log: {migrate_log})")
                return 1
            step(f"Airflow database migrated ({env['AIRFLOW_HOME']})")
            failures = 0
            for workload in chosen:
                for night, (start, end) in enumerate(latest_intervals(workload.schedule, nights, now), 1):
                    log_file = logs_dir / f"{workload.dag_id}-{start:%Y-%m-%d}.log"
                    # A manual run (`dags test` makes one) owns the interval ending at its logical date.
                    ok = _airflow(["dags", "test", workload.dag_id, end.isoformat()], log_file)
                    failures += not ok
                    step(
                        f"night {night}: {workload.dag_id} {start:%Y-%m-%d}: "
                        f"{'succeeded' if ok else 'FAILED'} (log: {log_file})"
                    )
    _print_summary(config, chosen, now, nights)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; log store stopped.")
    return 1 if failures else 0


DEMO_TRAINING = {
    "max_steps": 60,
    "batch_size": 8,
    "max_seq_length": 2048,
    "learning_rate": 2e-3,
    "lr_schedule": "cosine",
    "warmup_ratio": 0.1,
    "eval_every_steps": 1000,
    "max_validation_examples": 16,
    "early_stopping_patience": None,
    "log_every_steps": 4,
    "lora": {"dropout": 0.0, "top_layers": 20},
    "prefix_gradient": "none",
    "prefix_refresh_steps": 4,
    "opening_tokens": 14,
    "opening_weight": 4.0,
    "init_from": "champion",
    "warm_start_steps": 8,
    "warm_start_learning_rate": 2e-4,
    "warm_start_on_tool_change": True,
    "tool_change_steps": 30,
    "tool_change_learning_rate": 1e-3,
}
"""Training settings the demo applies to every candidate: 60 steps of 8 router conversations at a
high learning rate, decaying, on the top 20 of the model's 30 layers, the shared system prompt and
tool schemas run without gradients once every 4 steps (about 1.8 examples/s on 2 cores with bf16
instructions), each answer's first 14 tokens (whether to call, and which tool) weighing 4 times in
the loss; from night 2 a candidate starts from the champion's adapter and optimizer moments, when
it is an adapter, and trains 8 steps at a tenth of the rate, or after an API change (the scenario's) 30
steps at half the rate. What these choices are worth is measured in docs/training.md ("How it trains",
"What 2 CPU cores can reach", "Warm start")."""

DEMO_TRAINING_BY_WORKLOAD = {
    "bfcl_live_assistant": {"max_steps": 12, "batch_size": 8, "micro_batch_size": None}
}
"""Where the demo trains a workload differently: BFCL requests bring their own tools, so rows share only
a 67-token system message and every other token of a row (about 700 on average) runs with gradients;
12 steps of 8 took 491 s on 2 cores in micro-batches of 6 rows the memory budget sized, peak 16.0 GB
(2026-12-07)."""

DEMO_EVALUATION = {
    "settings": {"max_examples": 64, "generation": {"batch_size": 16}},
    "eval_types_with_champion": ["customized"],
}
"""Evaluation settings of the demo: 64 paired examples per model variant, answers capped from the
longest reference answer (``max_new_tokens: auto``); base and icl only until there is a champion (on
2 CPU cores each evaluation of 64 router examples takes about 2 minutes, icl's about 4)."""

DEMO_DECISION = {
    "min_examples": DEMO_EVALUATION["settings"]["max_examples"],
    "floor": 0.25,
    "champion_floor": 0.25,
}
"""The demo evaluates 64 examples, so as many suffice; and its CPU-trained 135M model is held to a
floor of 0.25 instead of production's 0.5."""

DEMO_GUARDRAIL_MARGINS = {"function_name_accuracy": 0.1, "no_call_accuracy": 0.25, "parse_error_rate": 0.1}
"""Guardrail margins sized to the demo's 64 paired examples (of which a handful answer without a tool).
A guardrail passes when the 95 % bound of the paired difference is within its margin, and at 64
examples that bound lies about 0.1 from the observed difference (0.15 when a third of the pairs
disagree), 0.25 and more on 4 to 8 no-call examples, and one more parse error already moves it past
0.03. At production's 0.02 and 0.05, sized for hundreds of examples, no challenger could pass: in the
scenario (2026-12-07) the change night's challenger beat the drifted champion 0.406 to 0.219 (exact
McNemar p = 0.021) with function_name_accuracy +0.06 (bound -0.09) and one more parse error (bound
+0.06), and was not promoted. Only the margins of guardrails a workload has are set."""

DEMO_DATA_QUALITY = {"splits": {"max_train_records": 2000}}
"""The demo trains on at most 480 examples a night (60 steps of 8): keeping the newest 2,000 saves
encoding 6,000 more."""


def demo_settings(config: FlywheelConfig) -> FlywheelConfig:
    """``config`` with the demo's shorter training, evaluation, decision and dataset settings applied to
    every workload (nested blocks merged key by key, then validated again)."""
    workloads = []
    for workload in config.workloads:
        raw = workload.model_dump()
        training = deep_merge(DEMO_TRAINING, DEMO_TRAINING_BY_WORKLOAD.get(workload.workload_id, {}))
        raw["training"]["settings"] = deep_merge(raw["training"]["settings"], training)
        for candidate in raw["training"]["candidates"]:
            candidate["settings"] = deep_merge(candidate["settings"], training)
        raw["evaluation"] = deep_merge(raw["evaluation"], DEMO_EVALUATION)
        raw["decision"] = deep_merge(raw["decision"], DEMO_DECISION)
        for metric, guardrail in raw["decision"]["guardrails"].items():
            guardrail["margin"] = DEMO_GUARDRAIL_MARGINS.get(metric, guardrail["margin"])
        raw["data_quality"] = deep_merge(raw["data_quality"], DEMO_DATA_QUALITY)
        workloads.append(WorkloadConfig.model_validate(raw))
    return config.model_copy(update={"workloads": workloads})


@contextmanager
def temporary_environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (and its subprocesses), then restore the old ones."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def step(message: str) -> None:
    """Print one step of a demo run (``==> ...``), at once."""
    print(f"==> {message}", flush=True)


def _airflow(args: list[str], log_file: Path) -> bool:
    airflow = Path(sys.executable).with_name("airflow")
    with log_file.open("w") as out:
        result = subprocess.run(  # nosec B603 # the venv's own `airflow` script, fixed arguments, no shell
            [str(airflow), *args], stdout=out, stderr=subprocess.STDOUT, check=False
        )
    return result.returncode == 0


def _print_summary(config: FlywheelConfig, workloads: list, now: datetime | None, nights: int) -> None:
    print("\nSummary (from the metadata database)")
    for workload in workloads:
        for night, (start, end) in enumerate(latest_intervals(workload.schedule, nights, now), 1):
            print(f"\n  night {night}: {workload.dag_id}  [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC")
            with session_scope(config.metadata) as session:
                run = session.scalar(
                    select(Run)
                    .where(Run.dag_id == workload.dag_id, Run.interval_start == start)
                    .order_by(Run.id.desc())
                )
                if run is None:
                    print("    no run recorded")
                    continue
                _print_run(session, workload, run, start, config.artifact_store.storage_options)
        _print_registry(config, workload.workload_id)
    print(f"\n  artifact store: {config.artifact_store.root}")
    print(f"  metadata db:    {config.metadata.conn_id or config.metadata.url}")


def _print_run(
    session: Session, workload: WorkloadConfig, run: Run, start: datetime, storage_options: dict[str, Any]
) -> None:
    stages = session.scalars(select(RunStage).where(RunStage.run_id == run.id).order_by(RunStage.id)).all()
    print("    stages: " + ", ".join(f"{s.stage} {s.status}" for s in stages))
    partition = session.scalar(
        select(RawPartition).where(
            RawPartition.workload_id == workload.workload_id, RawPartition.day == start.date()
        )
    )
    if partition is not None:
        print(
            f"    extracted {partition.record_count} records in {partition.part_count} part(s), "
            f"{partition.byte_count / 1024:.0f} KiB, via {partition.read_method}: {partition.uri}"
        )
    verdict = session.scalar(
        select(ValidatedPartition).where(
            ValidatedPartition.workload_id == workload.workload_id, ValidatedPartition.day == start.date()
        )
    )
    if verdict is not None:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(verdict.reasons.items())) or "none"
        outcome = "passed" if verdict.success else "FAILED: " + ", ".join(verdict.failed_expectations)
        print(
            f"    validated: {verdict.clean} clean + {verdict.quarantined} quarantined ({reasons}); "
            f"batch {outcome}\n    data docs: {verdict.data_docs_uri}"
        )
    dataset = session.scalar(select(Dataset).where(Dataset.run_id == run.id))
    if dataset is not None:
        print(
            f"    dataset {dataset.dataset_id}: {dataset.train_records} train, "
            f"{dataset.validation_records} validation, {dataset.evaluation_records} evaluation "
            f"({dataset.duplicates_removed} duplicates removed)"
        )
    training = next((s for s in reversed(stages) if s.stage == "train"), None)
    for candidate in (training.summary or {}).get("candidates", []) if training else []:
        print(f"    {_candidate_line(candidate)}")
    evaluations = session.scalars(
        select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.id)
    ).all()
    for evaluation in evaluations:
        print(f"    {_evaluation_line(evaluation)}")
    gain = _fine_tuning_gain(evaluations, workload.decision.primary_metric, storage_options)
    if gain:
        print(f"    {gain}")
    decision = session.scalar(select(Decision).where(Decision.run_id == run.id))
    if decision is not None:
        print(f"    {_decision_lines(decision)}")


def _fine_tuning_gain(
    evaluations: list[Evaluation], metric: str, storage_options: dict[str, Any]
) -> str | None:
    """Each candidate's fine-tuned adapter against its own base model, paired on the same examples."""
    by_variant = {(e.candidate_id, e.eval_type): e for e in evaluations if e.status == "succeeded"}
    lines = []
    for (candidate, eval_type), tuned in by_variant.items():
        base = by_variant.get((candidate, "base"))
        if eval_type != "customized" or base is None:
            continue
        tuned_flags, base_flags = (outcomes_of(e, storage_options).binary[metric] for e in (tuned, base))
        keys = sorted(set(tuned_flags) & set(base_flags))
        ours, theirs = [tuned_flags[k] for k in keys], [base_flags[k] for k in keys]
        only_tuned, only_base = discordant_counts(ours, theirs)
        p_value = mcnemar_exact(only_tuned, only_base)
        lines.append(
            f"fine-tuning gain of {candidate} on {metric}: base {sum(theirs) / len(keys):.3f} -> customized "
            f"{sum(ours) / len(keys):.3f} on {len(keys)} paired examples ({only_tuned} only the customized "
            f"model gets right, {only_base} only the base; exact McNemar p = {p_value:.2g})"
        )
    return "\n    ".join(lines) or None


def _decision_lines(decision: Decision) -> str:
    lines = [f"DECISION: {decision.outcome}"]
    lines += [f"  - {r['code']}: {r['message']}" for r in decision.reasons]
    if decision.promotion:
        promotion = decision.promotion
        if promotion.get("status") == "promoted":
            was = promotion["previous_version"] or "none"
            lines.append(f"  promoted: version {promotion['version']} is the champion (was {was})")
        else:
            lines.append(f"  promotion FAILED: {promotion.get('error')}")
    lines.append(f"  report: {decision.report_uri}")
    return "\n    ".join(lines)


def _print_registry(config: FlywheelConfig, workload_id: str) -> None:
    from flywheel.deliver.registry import champion, history

    current = champion(config.metadata, workload_id)
    print(f"\n  registry of {workload_id}: champion " + (f"v{current.version}" if current else "none"))
    for move in history(config.metadata, workload_id):
        print(f"    {move.created_at:%Y-%m-%d %H:%M:%S} {move.action} v{move.version} by {move.actor}")
    print(f"    (flywheel registry show --workload {workload_id}; rollback with flywheel registry rollback)")


def _candidate_line(candidate: dict) -> str:
    name = f"candidate {candidate['candidate_id']}"
    if candidate["status"] != "succeeded":
        error = candidate["error"]
        return f"{name}: FAILED ({error.get('error')}: {error.get('message', '')[:200]})"
    start, peak_gib = candidate.get("init_from") or {}, candidate["peak_memory_mb"] / 2**10
    origin = f"from champion v{start['parent_version']}" if "parent_version" in start else "from the base"
    return (
        f"{name} ({candidate['base_model']}, {origin}): {candidate['steps']} steps, best validation loss "
        f"{candidate['best_validation_loss']}, {candidate['samples_per_s']:.2f} examples/s, "
        f"{candidate['tokens_per_s']:.0f} tokens/s, peak memory {peak_gib:.1f} GiB, "
        f"{candidate['wall_seconds']:.0f} s\n    adapter: {candidate['adapter_uri']}"
    )


def _evaluation_line(evaluation: Evaluation) -> str:
    name = f"evaluate {evaluation.candidate_id}/{evaluation.eval_type}"
    if evaluation.status != "succeeded" or not evaluation.metrics:
        return f"{name}: FAILED ({(evaluation.error or '')[:200]})"
    shown = ("function_name_accuracy", "function_name_and_args_accuracy", "no_call_accuracy")
    figures = ", ".join(
        f"{metric} {entry['value']:.3f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"
        for metric, entry in evaluation.metrics.items()
        if metric in shown and entry["value"] is not None
    )
    return f"{name} ({evaluation.examples} examples): {figures}"
