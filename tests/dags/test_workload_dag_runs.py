"""The workload DAG end to end through ``dag.test()``: real log store, SQLite metadata, local artifacts."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from flywheel.db.engine import session_scope
from flywheel.db.models import Dataset, RawPartition, Run, RunStage, ValidatedPartition
from flywheel.demo.seed import seed_logs
from flywheel.intervals import latest_intervals
from flywheel.logstore import connect, interval_query
from flywheel.storage import ArtifactStore

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
DAG_ID = "flywheel_customer_support_router"


def test_two_consecutive_days_make_two_partitions(
    dagbag, airflow_db, empty_log_store, flywheel_config, tiny_model
):
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
