"""A real Airflow on this machine: ``airflow standalone`` (scheduler, dag-processor, api-server and
triggerer, LocalExecutor, SQLite metadata) in its own home, driven the way an operator drives it.

The scenario (``flywheel demo scenario``) and the real-scheduler tests use it to run the workload DAGs
as scheduled runs and ``airflow backfill create``, not through ``dag.test()``. Runs are watched over
Airflow's REST API; with ``simple_auth_manager_all_admins`` (the default) every local request is an
anonymous admin's, and with ``users`` each request signs in as a named user (who answered a
human-in-the-loop request, for instance).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess  # nosec B404 # starts Airflow's own CLI from this virtual environment
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.config import PROJECT_ROOT

log = logging.getLogger(__name__)

FINISHED = {"success", "failed"}


class LocalAirflowError(RuntimeError):
    """Airflow did not start, or runs did not finish in time; the message says which, and where the log is."""


def airflow_settings(home: Path) -> dict[str, str]:
    """Airflow's settings for this project on one machine: its home, this project's DAGs and plugins,
    no example DAGs. ``make demo``'s ``airflow dags test`` calls and :class:`LocalAirflow` both use them."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def _session_members(session: int) -> list[int]:
    """The processes of ``session`` still alive (Linux: read from ``/proc``; elsewhere none are found).

    Airflow's supervisor puts each task process in a process group of its own, in the session that
    standalone started. Stopping standalone's group leaves a running task orphaned: on SIGTERM a task
    process only calls its operator's ``on_kill``, and the supervisor that would have escalated is gone.
    Its local jobs end with it (``flywheel.compute.jobguard``).
    """
    proc = Path("/proc")
    pids = [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()] if proc.is_dir() else []
    members = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getsid(pid) == session:
                members.append(pid)
    return members


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalAirflow:
    """``airflow standalone`` in ``home``: :meth:`start` (or a ``with`` block) and :meth:`stop`.

    ``env`` is added to the components' environment (the flywheel config, connections).
    ``parallelism`` bounds the LocalExecutor's concurrent task processes. ``command`` starts it:
    ``standalone`` (every component), or e.g. ``("api-server", "--workers", "1")`` for the API and
    UI alone, which need ``home`` to hold a migrated metadata database (``airflow.db``) already.
    ``users`` (name to password; all admins): SimpleAuthManager's users instead of the anonymous
    admin; requests then sign in as the first one, or as the ``user`` given to :meth:`request`.
    """

    home: Path
    env: Mapping[str, str] = field(default_factory=dict)
    parallelism: int = 4
    command: tuple[str, ...] = ("standalone",)
    port: int = field(default_factory=_free_port)
    users: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _tokens: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.command[0]}.log"

    def environment(self) -> dict[str, str]:
        """The environment of Airflow's components and of the CLI calls made through :meth:`cli`."""
        bin_dir = str(Path(sys.executable).parent)
        # Connections and variables (AIRFLOW_CONN_*, AIRFLOW_VAR_*) pass; another Airflow's settings do not.
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"
        }
        auth = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(not self.users)}
        if self.users:
            auth |= {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:admin" for name in self.users),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            }
        return (
            inherited
            | airflow_settings(self.home)
            | auth
            | {
                # standalone starts its components as `airflow ...` looked up on PATH.
                "PATH": os.pathsep.join([bin_dir, inherited.get("PATH", "")]),
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__API__PORT": str(self.port),
                # Without it every task is killed at start: the execution API defaults to port 8080.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            }
            | dict(self.env)
        )

    def start(self, timeout_s: float = 180) -> LocalAirflow:
        """Start ``airflow <command>``; wait until its API answers (at most ``timeout_s``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.users:
            (self.home / "passwords.json").write_text(json.dumps(dict(self.users)))
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen(  # nosec B603 B607 # the venv's airflow, fixed arguments
                ["airflow", *self.command],
                env=self.environment(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, stopped as one
            )
        log.info(
            "airflow %s (pid %s) in %s, UI at %s", self.command[0], self.process.pid, self.home, self.url
        )
        self.wait_until(
            lambda: self._get("/api/v2/monitor/health") is not None, timeout_s, "the API to answer"
        )
        return self

    def stop(self, grace_s: float = 20) -> None:
        """Stop every process ``start`` began, SIGKILL after ``grace_s``: the components (the process
        group ``start`` created) and the task processes that were running (see :func:`_session_members`)."""
        if self.process is None or self.process.poll() is not None:
            return
        session = self.process.pid  # started with start_new_session: it leads its session and group
        os.killpg(session, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(session, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # components that outlived standalone itself
            os.killpg(session, signal.SIGKILL)
        for pid in _session_members(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> LocalAirflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cli(self, *args: str, timeout_s: float = 120, attempts: int = 5) -> str:
        """Run ``airflow <args>`` against this Airflow; its stdout (LocalAirflowError when it fails).

        A command that fails on SQLite's "database is locked" (the scheduler was writing) ran in one
        rolled-back transaction and is run again, up to ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            done = subprocess.run(  # nosec B603 B607 # the venv's airflow, arguments built here
                ["airflow", *args],
                env=self.environment(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if done.returncode == 0 or "database is locked" not in done.stderr or attempt == attempts:
                break
            log.info("airflow %s: the metadata database was locked; again in %d s", args[0], attempt)
            time.sleep(attempt)
        if done.returncode != 0:
            raise LocalAirflowError(
                f"airflow {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done.stdout

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180) -> None:
        """Wait until the dag-processor has parsed ``dag_id``."""
        self.wait_until(
            lambda: self._get(f"/api/v2/dags/{dag_id}") is not None, timeout_s, f"{dag_id} to be parsed"
        )

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def backfill(
        self, dag_id: str, first: datetime, last: datetime, *, max_active_runs: int | None = None
    ) -> str:
        """``airflow backfill create`` of the runs whose data intervals start from ``first`` to ``last``."""
        args = ["backfill", "create", "--dag-id", dag_id, "--from-date", first.isoformat()]
        args += ["--to-date", last.isoformat(), "--reprocess-behavior", "completed"]
        if max_active_runs is not None:
            args += ["--max-active-runs", str(max_active_runs)]
        return self.cli(*args)

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs as the REST API lists them, oldest data interval first."""
        answer = self._get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100") or {}
        return sorted(answer.get("dag_runs", []), key=lambda run: run["data_interval_start"] or "")

    def task_instances(self, dag_id: str, dag_run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(dag_run_id, safe='')}/taskInstances"
        return list((self._get(f"{path}?limit=200") or {}).get("task_instances", []))

    def wait_for_runs(
        self,
        dag_id: str,
        count: int,
        timeout_s: float,
        on_poll: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until ``dag_id`` has ``count`` runs, all finished; return them (oldest interval first).

        ``on_poll`` is called with the runs at every check (e.g. to print the ones that finished)."""

        def finished() -> bool:
            runs = self.dag_runs(dag_id)
            if on_poll is not None:
                on_poll(runs)
            return len(runs) >= count and all(r["state"] in FINISHED for r in runs)

        self.wait_until(finished, timeout_s, f"{count} finished runs of {dag_id}")
        return self.dag_runs(dag_id)

    def wait_until(self, done: Callable[[], Any], timeout_s: float, what: str) -> None:
        """Poll ``done()`` every 2 s until it is true; LocalAirflowError after ``timeout_s`` (naming
        ``what``) or when Airflow exited."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.process is not None and self.process.poll() is not None:
                raise LocalAirflowError(
                    f"airflow {self.command[0]} exited ({self.process.returncode}); see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise LocalAirflowError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}; see {self.log_path}"
                )
            time.sleep(2)

    def _get(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, user: str | None = None
    ) -> Any:
        """Call Airflow's REST API (``path`` from ``/api/v2/...``) and return the decoded JSON answer;
        with ``users``, signed in as ``user`` (default: the first). HTTPError on an error status."""
        headers = {"Content-Type": "application/json"}
        if self.users:
            headers["Authorization"] = f"Bearer {self._token(user or next(iter(self.users)))}"
        return self._call(method, path, body, headers)

    def _token(self, user: str) -> str:
        """A JWT of ``user`` from SimpleAuthManager's login endpoint (kept for later requests)."""
        if user not in self._tokens:
            body = {"username": user, "password": self.users[user]}
            answer = self._call("POST", "/auth/token", body, {"Content-Type": "application/json"})
            self._tokens[user] = answer["access_token"]
        return self._tokens[user]

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None, headers: dict[str, str]) -> Any:
        request = urllib.request.Request(  # nosec B310 # a fixed http://127.0.0.1 URL
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=headers,
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310 # local Airflow
            return json.loads(response.read() or b"null")
