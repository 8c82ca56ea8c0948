"""The workload DAG end to end through ``dag.test()``: real log store, SQLite metadata, local artifacts, and
a fake vLLM server (real HTTP) behind the deploy hook."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from flywheel.db.engine import session_scope
from flywheel.db.models import Dataset, Decision, Evaluation, RawPartition, Run, RunStage, ValidatedPartition
from flywheel.deliver.registry import champion, history, versions
from flywheel.demo.seed import seed_logs
from flywheel.extract.sources.elasticsearch import connect, interval_query
from flywheel.intervals import latest_intervals
from flywheel.storage import ArtifactStore

pytest_plugins = ["vllm_server"]

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
DAG_ID = "flywheel_customer_support_router"


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_two_consecutive_days_make_two_partitions(
    dagbag, airflow_db, empty_log_store, make_config, tiny_model, vllm_server, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AIRFLOW_CONN_VLLM_ROUTER", json.dumps({"conn_type": "http", "host": vllm_server.url}))
    flywheel_config = make_config(deploy={"type": "vllm", "conn_id": "vllm_router"})
    workload = flywheel_config.workload("customer_support_router")
    seed_logs(flywheel_config, days=2, records_per_day=300, now=NOW, workloads=[workload.workload_id])
    intervals = latest_intervals(workload.schedule, 2, NOW)
    dag = dagbag.dags[DAG_ID]

    for _, end in intervals:
        # A manual run (which dag.test makes) owns the data interval that ends at its logical date.
        dag_run = dag.test(logical_date=end)
        assert dag_run.state == "success"

    store = ArtifactStore(flywheel_config.artifact_store.root)
    client = connect(workload.log_source.conn_id)
    with session_scope(flywheel_config.metadata) as session:
        partitions = session.scalars(select(RawPartition).order_by(RawPartition.day)).all()
        assert [p.day for p in partitions] == [start.date() for start, _ in intervals]
        for partition, (start, end) in zip(partitions, intervals, strict=True):
            query = interval_query(workload.log_source, workload.workload_id, start, end, workload.client_ids)
            in_window = client.count(index=workload.log_source.index, query=query)["count"]
            committed = store.read_partition_record(workload.workload_id, partition.day)
            assert partition.record_count == committed["records"] == in_window > 250
            assert committed["interval_start"] == start.isoformat()
            assert committed["interval_end"] == end.isoformat()
            assert partition.uri == committed["path"]
        runs = session.scalars(select(Run).where(Run.dag_id == DAG_ID)).all()
        assert len(runs) == 2
        stages = session.scalars(select(RunStage).order_by(RunStage.id)).all()
        assert [(s.stage, s.status) for s in stages] == [
            ("extract", "succeeded"),
            ("validate", "succeeded"),
            ("build_dataset", "succeeded"),
            ("train", "succeeded"),
            ("evaluate", "succeeded"),
            ("decide", "succeeded"),
        ] * 2
        assert stages[0].summary["records"] == partitions[0].record_count
        validated = session.scalars(select(ValidatedPartition).order_by(ValidatedPartition.day)).all()
        assert [v.day for v in validated] == [p.day for p in partitions]
        assert all(v.extracted == v.clean + v.quarantined for v in validated)
        assert [v.extracted for v in validated] == [p.record_count for p in partitions]
        datasets = session.scalars(select(Dataset).order_by(Dataset.created_at)).all()
        assert len(datasets) == 2
        assert datasets[-1].last_day == partitions[-1].day
        assert datasets[-1].train_records > datasets[0].train_records

        # Night 1 has no champion: its challenger (any accuracy clears the test floor) is promoted and
        # its adapter loaded into vLLM. Night 2 re-evaluates that champion on its fresh data.
        decisions = session.scalars(select(Decision).order_by(Decision.id)).all()
        assert [(d.outcome, [r["code"] for r in d.reasons]) for d in decisions] == [
            ("promote", ["first_champion"]),
            ("no_change", ["not_significant"]),
        ]
        assert decisions[0].promotion["status"] == "promoted"
        assert decisions[0].promotion["deployment"]["type"] == "vllm"
        night2 = session.scalars(select(Evaluation).where(Evaluation.run_id == runs[1].id)).all()
        assert {(e.candidate_id, e.eval_type) for e in night2} == {
            ("champion", "champion"),
            ("tiny", "customized"),
        }
        champion_eval = next(e for e in night2 if e.eval_type == "champion")
        assert champion_eval.model["version"] == 1
        assert champion_eval.dataset_id == datasets[-1].dataset_id
        assert decisions[1].champion_version_id is not None
        assert decisions[1].comparisons["function_name_and_args_accuracy"]["n"] == 4

    current = champion(flywheel_config.metadata, workload.workload_id)
    assert current is not None and current.version == 1 and current.run_id == runs[0].id
    # The registry points at its own content-addressed copy of night 1's adapter, not at the run
    # directory a re-run of that day would clear; night 2 evaluated the champion from that copy.
    models = f"{flywheel_config.artifact_store.root}/models/{workload.workload_id}"
    assert current.adapter_uri == f"{models}/{current.adapter_sha256}"
    assert champion_eval.model["adapter"] == current.adapter_uri
    assert vllm_server.loaded == {"customer_support_router-v1": current.adapter_uri}
    assert [v.version for v in versions(flywheel_config.metadata, workload.workload_id)] == [1, 2]
    moves = history(flywheel_config.metadata, workload.workload_id)
    assert [(m.action, m.version, m.previous_version) for m in moves] == [("promote", 1, None)]
    assert moves[0].actor == f"{DAG_ID}/{runs[0].dag_run_id}"
    for start, _ in intervals:
        report = Path(
            store.path("reports", workload.workload_id, start.date().isoformat(), "run-report.html")
        )
        assert "<svg" in report.read_text()
    sink = Path(store.path("alerts", workload.workload_id, intervals[0][0].date().isoformat()))
    (promoted,) = sink.glob("*-promote.json")
    assert json.loads(promoted.read_text())["figures"]["challenger"] == "tiny/customized"


def test_rerunning_a_day_replaces_its_partition(
    dagbag, airflow_db, empty_log_store, flywheel_config, tiny_model
):
    workload = flywheel_config.workload("bfcl_live_assistant")
    seed_logs(flywheel_config, days=1, records_per_day=200, now=NOW, workloads=[workload.workload_id])
    ((start, end),) = latest_intervals(workload.schedule, 1, NOW)
    dag = dagbag.dags[workload.dag_id]
    store = ArtifactStore(flywheel_config.artifact_store.root)

    dag.test(logical_date=end)
    first = store.read_partition_record(workload.workload_id, start.date())
    dag.test(logical_date=end, run_conf={"page_size": 25})
    second = store.read_partition_record(workload.workload_id, start.date())

    assert second["version"] != first["version"]
    assert second["records"] == first["records"]
    assert second["pages"] > first["pages"]
    day_dir = store.raw_day_path(workload.workload_id, start.date())
    assert sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(day_dir, detail=False)) == [
        "_partition.json",
        f"v-{second['version']}",
    ]
    with session_scope(flywheel_config.metadata) as session:
        rows = session.scalars(
            select(RawPartition).where(RawPartition.workload_id == workload.workload_id)
        ).all()
        assert len(rows) == 1
        assert rows[0].version == second["version"]


@pytest.mark.slow  # a long DAG run (`make test-slow`)
def test_a_day_from_the_files_log_source(dagbag, airflow_db, make_config, tiny_model, tmp_path: Path):
    """The same DAG on a gateway's JSONL export (day folders under a file:// URL) instead of Elasticsearch."""
    logs = tmp_path / "gateway-logs"
    flywheel_config = make_config(log_source={"type": "files", "url": f"file://{logs}"})
    workload = flywheel_config.workload("bfcl_live_assistant")
    seed_logs(flywheel_config, days=1, records_per_day=200, now=NOW, workloads=[workload.workload_id])
    ((start, end),) = latest_intervals(workload.schedule, 1, NOW)
    in_window = sum(
        start <= datetime.fromisoformat(doc["timestamp"]) < end
        for path in sorted(logs.glob("dt=*/*.jsonl"))
        for doc in map(json.loads, path.read_text().splitlines())
    )
    store = ArtifactStore(flywheel_config.artifact_store.root)

    dag_run = dagbag.dags[workload.dag_id].test(logical_date=end)

    assert dag_run.state == "success"
    committed = store.read_partition_record(workload.workload_id, start.date())
    assert committed["source"] == "files" and committed["read_method"] == "jsonl"
    assert [Path(f).name for f in committed["day_folders"]] == [
        f"dt={start.date().isoformat()}",
        f"dt={end.date().isoformat()}",
    ]
    with session_scope(flywheel_config.metadata) as session:
        (partition,) = session.scalars(select(RawPartition)).all()
        assert partition.record_count == committed["records"] == in_window > 20
        assert partition.read_method == "jsonl"
        (validated,) = session.scalars(select(ValidatedPartition)).all()
        assert validated.extracted == validated.clean + validated.quarantined == in_window
        stages = session.scalars(select(RunStage).order_by(RunStage.id)).all()
        assert [(s.stage, s.status) for s in stages][:2] == [
            ("extract", "succeeded"),
            ("validate", "succeeded"),
        ]
        assert stages[0].summary["read_method"] == "jsonl"
