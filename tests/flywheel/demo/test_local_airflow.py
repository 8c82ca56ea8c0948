"""``LocalAirflow``: a real ``airflow standalone``, stopped with the task processes it was running."""

from __future__ import annotations

import os
from pathlib import Path

from flywheel.demo.local_airflow import LocalAirflow
from processes import alive, wait_for

SLEEPER_DAG = """
import os
import time
from pathlib import Path

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def sleeper():
    @task
    def sleep_long():
        Path(os.environ["SLEEPER_PID_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)

    sleep_long()


sleeper()
"""


def test_stopping_airflow_ends_the_task_process_it_was_running(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sleeper.py").write_text(SLEEPER_DAG)
    pid_file = tmp_path / "task.pid"
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "SLEEPER_PID_FILE": str(pid_file)}

    with LocalAirflow(tmp_path / "airflow", env=env, parallelism=1) as airflow:
        airflow.wait_for_dag("sleeper")
        airflow.unpause("sleeper")
        airflow.request("POST", "/api/v2/dags/sleeper/dagRuns", {"logical_date": None})
        airflow.wait_until(pid_file.exists, 180, "the task to start")
        task = int(pid_file.read_text())
        # Airflow's supervisor runs the task in a process group of its own.
        assert os.getpgid(task) != airflow.process.pid
        assert os.getsid(task) == airflow.process.pid

    wait_for(lambda: not alive(task), 10, "ended")
