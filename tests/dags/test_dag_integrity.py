"""Every DAG file imports cleanly, carries its operational metadata, and parses without heavy imports."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.config import load_config

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS_DIR.glob("*.py"))
HEAVY_MODULES = ("torch", "transformers", "great_expectations", "pandas", "peft", "pyarrow", "elasticsearch")


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {Path(stat.file).name for stat in dagbag.dagbag_stats} == {p.name for p in DAG_FILES}


def test_one_dag_per_configured_workload(dagbag):
    expected = {w.dag_id for w in load_config().workloads}
    assert expected <= set(dagbag.dag_ids)


def test_dags_carry_owner_tags_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id
        assert dag.tags, dag_id
        assert dag.max_active_runs >= 1, dag_id
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            if task.task_id == "watcher":  # it fails on purpose, only after another task failed
                assert task.retries == 0
                continue
            assert task.on_failure_callback, f"{dag_id}.{task.task_id} fails without notifying"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} never retries"
            assert task.retry_exponential_backoff, f"{dag_id}.{task.task_id} retries without backoff"


def test_every_task_has_a_time_limit_and_job_tasks_outlast_their_jobs(dagbag):
    from datetime import timedelta

    config = load_config()
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            limit = task.execution_timeout
            if task.task_id in ("train", "evaluate"):
                job = config.compute.job_timeout(task.task_id)
                # The job's own time limit kills it first, with a clear error; Airflow's is the backstop.
                assert limit == job + timedelta(minutes=10), f"{dag_id}.{task.task_id}: {limit}"
            elif task.task_id == "settle":  # it waits for the log source's settle delay first
                settle = config.workload(dag_id.removeprefix("flywheel_")).log_source.settle_minutes
                default = config.airflow.execution_timeout_minutes
                assert limit == timedelta(minutes=settle + default), f"{dag_id}.settle: {limit}"
            else:
                assert limit == timedelta(minutes=config.airflow.execution_timeout_minutes), task.task_id
    assert config.compute.job_timeout("train") == timedelta(hours=6)
    assert config.compute.job_timeout("evaluate") == timedelta(hours=2)


def test_workload_dags_own_the_previous_day(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    for workload in load_config().workloads:
        dag = dagbag.dags[workload.dag_id]
        assert isinstance(dag.timetable, CronDataIntervalTimetable)
        assert dag.timetable.expression == workload.schedule
        assert dag.max_active_runs == workload.max_active_runs
        assert dag.catchup == workload.catchup
        assert f"workload:{workload.workload_id}" in dag.tags


def test_params_validate_manual_run_input(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["flywheel_customer_support_router"]
    defaults = dag.params.validate()
    assert defaults["page_size"] == 1000
    assert defaults["client_ids"] == ["web-shop", "mobile-app", "email-gateway"]

    def with_values(**values: object):
        params = copy.deepcopy(dag.params)
        params.update(values)
        return params.validate()

    for bad in ({"page_size": 5}, {"page_size": "many"}, {"client_ids": []}, {"client_ids": ["a", "a"]}):
        with pytest.raises(ParamValidationError):
            with_values(**bad)
    assert with_values(client_ids=None)["client_ids"] is None

    # The manual-run params: off (and every candidate) unless a run asks.
    assert (defaults["champion_only"], defaults["dry_run"], defaults["candidates"]) == (False, False, None)
    candidate_ids = [
        c.candidate_id for c in load_config().workload("customer_support_router").training.candidates
    ]
    assert with_values(candidates=candidate_ids[:1], dry_run=True)["candidates"] == candidate_ids[:1]
    for name, bad in (
        ("candidates", ["no-such-candidate"]),
        ("candidates", []),
        ("candidates", candidate_ids[:1] * 2),
        ("champion_only", "yes"),
        ("dry_run", 1),
    ):
        with pytest.raises(ParamValidationError, match=rf"^Invalid input for param {name}: "):
            with_values(**{name: bad})
    for name in ("champion_only", "dry_run", "candidates"):
        assert f"`{name}`" in dag.doc_md, name


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_library(dag_file: Path):
    # A fresh interpreter: what the DAG processor pays for parsing this file.
    probe = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(dag_file)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_parse_times_are_recorded(dagbag):
    # Reported in the terminal summary ("DAG file parse times"); the 0.5 s target is checked by
    # `airflow dags report` (see README), not by a timed unit test.
    from conftest import DAG_PARSE_SECONDS

    assert set(DAG_PARSE_SECONDS) == {stat.file for stat in dagbag.dagbag_stats}
    assert all(seconds > 0 for seconds in DAG_PARSE_SECONDS.values())


def test_training_then_evaluation_one_mapped_task_per_job(dagbag):
    dag = dagbag.dags["flywheel_customer_support_router"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "settle",
        "extract",
        "previous_night",
        "validate",
        "recount",
        "build_dataset",
        "plan_training",
        "train",
        "collect_training",
        "plan_evaluation",
        "evaluate",
        "collect_evaluation",
        "decide",
        "branch",
        "promote",
        "alert",
        "no_change",
        "report",
        "watcher",
    ]
    # Nights validate, train, evaluate and decide in interval order (flywheel.decide.order), whatever
    # their extraction did; validation still needs its own day extracted.
    previous_night = dag.get_task("previous_night")
    assert (previous_night.depends_on_past, previous_night.trigger_rule) == (True, "all_done")
    assert dag.get_task("validate").upstream_task_ids == {"extract", "previous_night"}
    assert previous_night.upstream_task_ids == {"extract"}
    assert previous_night.downstream_task_ids == {"validate", "watcher"}
    train, evaluate = dag.get_task("train"), dag.get_task("evaluate")
    assert train.is_mapped and evaluate.is_mapped
    assert train.map_index_template == "{{ candidate_id }}"
    assert evaluate.map_index_template == "{{ candidate_id }}/{{ eval_type }}"
    # Local jobs use every core of the worker: a run's jobs go one at a time (compute.local_parallel_jobs).
    assert train.max_active_tis_per_dagrun == evaluate.max_active_tis_per_dagrun == 1
    # Results are read whatever happened to each job, but not after an upstream failure; evaluation is
    # planned even when every candidate failed to train (base models and the champion still count).
    # Training results are also read when the retrain policy planned no job (`train` is skipped then).
    assert dag.get_task("collect_training").trigger_rule == "all_done"
    for task_id in ("plan_evaluation", "collect_evaluation"):
        assert dag.get_task(task_id).trigger_rule == "all_done_min_one_success"
    assert dag.get_task("plan_evaluation").upstream_task_ids == {
        "build_dataset",
        "plan_training",
        "collect_training",
    }
    # The decision runs whatever happened upstream, branches to one outcome, and the report follows it.
    assert dag.get_task("decide").trigger_rule == "all_done"
    assert dag.get_task("decide").upstream_task_ids == {"collect_evaluation"}
    assert dag.get_task("branch").downstream_task_ids == {"promote", "alert", "no_change"}
    assert dag.get_task("report").trigger_rule == "all_done"
    assert dag.get_task("report").upstream_task_ids == {"promote", "alert", "no_change", "recount"}
    assert [link.name for link in dag.get_task("report").operator_extra_links] == ["Run report"]
    watcher = dag.get_task("watcher")
    assert watcher.trigger_rule == "one_failed"
    # Every task but `branch`, which would skip the watcher when it follows one outcome.
    assert watcher.upstream_task_ids == {t.task_id for t in dag.tasks} - {"watcher", "branch"}
    assert "**local** compute backend" in dag.doc_md
    assert "`base`, `icl`, `customized`" in dag.doc_md


def test_kubernetes_backend_maps_job_pods(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from flywheel.compute.kubernetes import FlywheelJobPodOperator

    monkeypatch.setenv("FLYWHEEL_COMPUTE_BACKEND", "kubernetes")
    monkeypatch.setenv("FLYWHEEL_JOB_IMAGE", "registry.example/flywheel-job:2.0")
    bag = DagBag(dag_folder=str(DAGS_DIR / "flywheel_workloads.py"))
    assert bag.import_errors == {}
    dag = bag.dags["flywheel_customer_support_router"]
    train = dag.get_task("train")

    assert train.is_mapped
    assert train.operator_class is FlywheelJobPodOperator
    assert train.partial_kwargs["image"] == "registry.example/flywheel-job:2.0"
    assert train.partial_kwargs["pod_template_file"].endswith("k8s_templates/train-pod.yaml")
    assert Path(train.partial_kwargs["pod_template_file"]).is_file()
    assert train.partial_kwargs["retry_policy"] is not None  # the DAG's fail-fast rules apply to pods
    # The job's time limit, the margin, and the time a pod may wait to be scheduled and to start.
    assert train.partial_kwargs["execution_timeout"].total_seconds() == 6 * 3600 + 600 + 3600 + 900
    assert "**kubernetes** compute backend" in dag.doc_md
    evaluate = dag.get_task("evaluate")
    assert evaluate.operator_class is FlywheelJobPodOperator
    assert evaluate.partial_kwargs["pod_template_file"].endswith("k8s_templates/evaluate-pod.yaml")
    assert "flywheel.io/eval-type" in evaluate.map_index_template


def test_the_previous_night_wait_retries_even_where_tasks_do_not(make_config):
    from conftest import workload_dag
    from flywheel.decide.order import RETRIES

    # Airflow can fail a reschedule-mode check on a late executor event (flywheel.decide.order.RETRIES).
    dag = workload_dag(make_config(airflow={"retries": 0}), "customer_support_router")

    assert dag.get_task("previous_night").retries == RETRIES > 0
    assert dag.get_task("validate").retries == 0


def test_extraction_waits_for_the_configured_settle_delay(make_config):
    from conftest import workload_dag
    from flywheel.extract.settle import SettleWait

    source = load_config().workload("customer_support_router").log_source.model_dump(mode="json")
    config = make_config(log_source={**source, "settle_minutes": 45})
    dag = workload_dag(config, "customer_support_router")

    settle = dag.get_task("settle")
    assert isinstance(settle, SettleWait) and settle.settle_minutes == 45
    assert settle.schedule == config.workload("customer_support_router").schedule
    assert settle.upstream_task_ids == set()
    assert settle.downstream_task_ids == {"extract", "recount", "watcher"}
    assert dag.get_task("extract").upstream_task_ids == {"settle"}
    assert dag.get_task("recount").downstream_task_ids == {"report", "watcher"}
    assert "**45 minutes**" in dag.doc_md


def test_each_stages_durable_output_is_an_asset(dagbag):
    from airflow.sdk import Asset, AssetAlias

    dag = dagbag.dags["flywheel_customer_support_router"]
    outlets = {task.task_id: task.outlets for task in dag.tasks if task.outlets}

    def asset(kind: str) -> Asset:
        return Asset(
            name=f"flywheel.customer_support_router.{kind}",
            uri=f"x-flywheel://customer_support_router/{kind}",
        )

    assert outlets == {
        "extract": [asset("raw_day")],
        "validate": [asset("clean_day")],
        "build_dataset": [asset("dataset")],
        # The champion's event goes through an alias: only a promotion that moved the alias emits one.
        "promote": [AssetAlias(name="flywheel.customer_support_router.promotions")],
    }


def test_required_approval_puts_a_person_between_the_decision_and_the_promotion(make_config):
    from datetime import timedelta

    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from conftest import TEST_DECISION, workload_dag

    config = make_config(decision={**TEST_DECISION, "approval": "required", "approval_timeout_hours": 2})
    dag = workload_dag(config, "customer_support_router")
    approve = dag.get_task("approve")

    assert isinstance(approve, ApprovalOperator)
    assert (approve.response_timeout, approve.defaults) == (timedelta(hours=2), ["Reject"])
    assert set(approve.params) == {"comment"}  # the request's form: the DAG's params stay off it
    assert approve.assigned_users == []  # no decision.approvers: anyone the auth manager lets answer
    assert dag.get_task("branch").downstream_task_ids == {"approve", "alert", "no_change"}
    assert approve.downstream_task_ids == {"promote"}
    assert dag.get_task("promote").upstream_task_ids == {"decide", "approve"}
    # A rejection skips `approve`'s direct downstream tasks: the watcher must not be one of them.
    assert dag.get_task("watcher").upstream_task_ids == {t.task_id for t in dag.tasks} - {
        "watcher",
        "branch",
        "approve",
    }
    assert "`approve` (a person approves within 2 hours" in dag.doc_md


def test_only_the_configured_approvers_are_assigned_the_approval_request(make_config):
    from conftest import TEST_DECISION, workload_dag

    approvers = ["alice", {"id": "7", "name": "Bob"}]
    config = make_config(decision={**TEST_DECISION, "approval": "required", "approvers": approvers})
    dag = workload_dag(config, "customer_support_router")

    # The human-in-the-loop request's assigned users: the API server refuses an answer from anyone else.
    assert dag.get_task("approve").assigned_users == [
        {"id": "alice", "name": "alice"},
        {"id": "7", "name": "Bob"},
    ]
    assert "`approve` (one of alice, Bob (id 7) approves within 24 hours" in dag.doc_md
