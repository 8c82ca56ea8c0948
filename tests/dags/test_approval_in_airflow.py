"""Human approval before promotion under a real Airflow (``airflow standalone``: scheduler, dag-processor,
api-server; LocalExecutor; SQLite), with the real log store, the tiny model and three signed-in users.

One night of a workload whose promotions need approval by Alice or Bob (``decision.approval: required``,
``decision.approvers``, an 18 s timeout), run as a backfill, decides ``promote`` (no champion yet) and
asks them. Carol, an admin but not an approver, is refused. Bob rejects it through Airflow's REST API:
the run ends green, the champion stays none. An operator clears ``approve`` to ask
again, and nobody answers: the request times out, the same. Cleared once more, Alice approves: the
challenger becomes the champion, with Alice and her comment in the alias's audit row. The champion's
asset event then starts the serving team's DAG of docs/examples/dags/flywheel_downstream.py, and the
backfilled day's clean-day event its day-partitioned export, keyed by the day.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote

import pytest
import yaml
from sqlalchemy import select

from conftest import PROJECT_ROOT, TEST_DECISION
from flywheel.config import load_config
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision
from flywheel.deliver.registry import champion, history
from flywheel.demo.local_airflow import LocalAirflow
from flywheel.demo.seed import seed_logs
from flywheel.intervals import latest_intervals

WORKLOAD = "customer_support_router"
DAG_ID = f"flywheel_{WORKLOAD}"
ROLLOUT, EXPORT = f"serving_rollout_{WORKLOAD}", f"clean_day_export_{WORKLOAD}"
USERS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
APPROVERS = ["alice", "bob"]
TIMEOUT_HOURS = 0.005  # 18 s


@pytest.mark.slow  # a real Airflow and a DAG run (`make test-slow`)
def test_a_promotion_waits_for_a_person_rejected_timed_out_then_approved(
    empty_log_store, make_config, tiny_model, tmp_path: Path
) -> None:
    started = time.monotonic()
    make_config(
        decision={
            **TEST_DECISION,
            "approval": "required",
            "approval_timeout_hours": TIMEOUT_HOURS,
            "approvers": APPROVERS,
        }
    )
    path = Path(os.environ["FLYWHEEL_CONFIG"])
    raw = yaml.safe_load(path.read_text())
    for workload in raw["workloads"]:
        workload["log_source"]["settle_minutes"] = 0  # the latest night need not wait for late logs
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    seed_logs(config, days=1, records_per_day=200, now=datetime.now(UTC), workloads=[WORKLOAD])
    ((start, _),) = latest_intervals(config.workload(WORKLOAD).schedule, 1)
    day = start.date().isoformat()
    # The project's DAG file next to the example downstream DAGs.
    dags = tmp_path / "dags"
    dags.mkdir()
    for source in (
        PROJECT_ROOT / "dags" / "flywheel_workloads.py",
        PROJECT_ROOT / "docs/examples/dags/flywheel_downstream.py",
    ):
        (dags / source.name).symlink_to(source)
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags)}

    with LocalAirflow(tmp_path / "airflow", env=env, parallelism=3, users=USERS) as airflow:
        for dag_id in (DAG_ID, ROLLOUT, EXPORT):
            airflow.wait_for_dag(dag_id)
        airflow.unpause(ROLLOUT)
        airflow.unpause(EXPORT)
        # A backfill of the latest night, created while the DAG is paused: the scheduler then finds
        # that night's run there and creates none of its own.
        airflow.backfill(DAG_ID, start, start)
        airflow.unpause(DAG_ID)
        airflow.wait_until(lambda: airflow.dag_runs(DAG_ID), 60, f"the backfill run of {DAG_ID}")
        (run,) = airflow.dag_runs(DAG_ID)
        assert run["run_type"] == "backfill"
        approvals = Approvals(airflow, run["dag_run_id"])

        request = approvals.wait_for_request()
        assert request["subject"].startswith(f"{WORKLOAD}: promote ") and request["subject"].endswith(
            "to champion?"
        )
        assert "| metric | champion | challenger | challenger - champion | verdict |" in request["body"]
        assert f"(flywheel/reports/{WORKLOAD}/{day}/run-report.html)" in request["body"]
        assert request["assigned_users"] == [{"id": name, "name": name} for name in APPROVERS]
        assert "\n\nOnly alice, bob may answer (decision.approvers).\n\n" in request["body"]

        # Carol may answer the DAG's required actions (an admin) but is no approver: refused, still waiting.
        with pytest.raises(HTTPError) as refused:
            approvals.answer("Approve", "looks fine to me", user="carol")
        assert refused.value.code == 403
        assert "User=carol (id=carol) is not a respondent" in json.loads(refused.value.read())["detail"]
        assert approvals.task_state("approve") == "awaiting_input"

        # 1. Bob rejects, with a reason.
        answer = approvals.answer("Reject", "the new tools are not live yet", user="bob")
        assert (answer["responded_by"]["name"], answer["chosen_options"]) == ("bob", ["Reject"])
        assert approvals.finished() == {"run": "success", "approve": "success", "promote": "skipped"}
        rejected = promotion(config)
        assert (rejected["status"], rejected["reason"]) == ("not_approved", "rejected")
        assert rejected["approval"]["by"]["name"] == "bob"
        assert rejected["approval"]["comment"] == "the new tools are not live yet"
        assert champion(config.metadata, WORKLOAD) is None

        # 2. Asked again; nobody answers in time.
        approvals.ask_again()
        approvals.wait_for_request()
        assert approvals.finished(timeout_s=240) == {
            "run": "success",
            "approve": "success",
            "promote": "skipped",
        }
        timed_out = promotion(config)
        assert (timed_out["status"], timed_out["reason"]) == ("not_approved", "timed out")
        assert timed_out["approval"]["by"] is None
        assert champion(config.metadata, WORKLOAD) is None

        # 3. Asked once more; Alice approves.
        approvals.ask_again()
        approvals.wait_for_request()
        approvals.answer("Approve", "checked the report: better on every tool", user="alice")
        assert approvals.finished() == {"run": "success", "approve": "success", "promote": "success"}
        approved = promotion(config)
        assert (approved["status"], approved["version"], approved["approval"]["by"]["name"]) == (
            "promoted",
            1,
            "alice",
        )
        (move,) = history(config.metadata, WORKLOAD)
        assert move.version == champion(config.metadata, WORKLOAD).version == 1
        assert move.actor == f"alice (approved {DAG_ID}/{run['dag_run_id']})"
        assert move.reason.endswith("; approved by alice: checked the report: better on every tool")

        # The champion moved once: one event, and the serving team's DAG ran on it.
        events = airflow.request("GET", f"/api/v2/assets/events?source_dag_id={DAG_ID}&limit=100")[
            "asset_events"
        ]
        by_asset = {(e["name"], e["partition_key"]): e for e in events}
        assert set(by_asset) == {
            (f"flywheel.{WORKLOAD}.raw_day", day),
            (f"flywheel.{WORKLOAD}.clean_day", day),
            (f"flywheel.{WORKLOAD}.dataset", None),
            (f"flywheel.{WORKLOAD}.champion", None),
        }
        assert by_asset[(f"flywheel.{WORKLOAD}.champion", None)]["extra"] == {
            "version": 1,
            "previous_version": None,
            "alias_event_id": move.id,
            "approved_by": "alice",
        }
        rollout = airflow.wait_for_runs(ROLLOUT, 1, timeout_s=120)
        export = airflow.wait_for_runs(EXPORT, 1, timeout_s=120)
        assert [r["state"] for r in rollout + export] == ["success", "success"]
        assert export[0]["partition_key"] == day

    print(f"\napproval e2e wall time: {time.monotonic() - started:.0f} s")


class Approvals:
    """The ``approve`` task of one DAG run, driven through Airflow's REST API."""

    def __init__(self, airflow: LocalAirflow, dag_run_id: str) -> None:
        self.airflow = airflow
        self.dag_run_id = dag_run_id
        self.run = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(dag_run_id, safe='')}"

    def task_state(self, task_id: str) -> str | None:
        return self.airflow.request("GET", f"{self.run}/taskInstances/{task_id}")["state"]

    def wait_for_request(self, timeout_s: float = 420) -> dict[str, Any]:
        """The human-in-the-loop request, once ``approve`` waits for an answer."""
        self.airflow.wait_until(
            lambda: self.task_state("approve") == "awaiting_input", timeout_s, "approve to ask"
        )
        return self.airflow.request("GET", f"{self.run}/taskInstances/approve/-1/hitlDetails")

    def answer(self, option: str, comment: str, *, user: str) -> dict[str, Any]:
        body = {"chosen_options": [option], "params_input": {"comment": comment}}
        return self.airflow.request(
            "PATCH", f"{self.run}/taskInstances/approve/-1/hitlDetails", body, user=user
        )

    def finished(self, timeout_s: float = 180) -> dict[str, str | None]:
        """The run's state once it finished, and ``approve``'s and ``promote``'s."""

        def run_state() -> str:
            return self.airflow.request("GET", self.run)["state"]

        self.airflow.wait_until(lambda: run_state() in ("success", "failed"), timeout_s, "the run to finish")
        return {
            "run": run_state(),
            "approve": self.task_state("approve"),
            "promote": self.task_state("promote"),
        }

    def ask_again(self) -> None:
        """Clear ``approve`` and what follows it, as an operator does in the UI: a new request."""
        body = {
            "dry_run": False,
            "dag_run_id": self.dag_run_id,
            "task_ids": ["approve"],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
        }
        self.airflow.request("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", body)


def promotion(config) -> dict[str, Any]:
    """What the night's decision records of its promotion."""
    with session_scope(config.metadata) as session:
        return session.scalar(select(Decision)).promotion
