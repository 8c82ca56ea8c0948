"""Shared fixtures: an isolated Airflow/flywheel home, a real local log store, a test config, one DagBag.

Airflow reads its configuration at import time, so the environment is set here, before any test
module imports Airflow.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from postgres import postgres_server  # noqa: F401  (a session fixture for every test module)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="flywheel-tests-"))
os.environ.update(
    {
        "FLYWHEEL_HOME": str(_SESSION_HOME),
        "AIRFLOW_HOME": str(_SESSION_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    }
)
os.environ.pop("FLYWHEEL_CONFIG", None)

DAG_PARSE_SECONDS: dict[str, float] = {}
"""Parse time per DAG file, filled by the DAG integrity tests and printed in the terminal summary."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if DAG_PARSE_SECONDS:
        terminalreporter.section("DAG file parse times")
        for path, seconds in sorted(DAG_PARSE_SECONDS.items()):
            terminalreporter.write_line(f"{seconds:.3f} s  {path}")


@pytest.fixture(scope="session")
def log_store() -> Iterator[object]:
    """A real osmem-server for the session, reachable through the `flywheel_logs` Airflow connection."""
    from flywheel.embedded import LocalLogStore

    with LocalLogStore.start() as store:
        os.environ.update(store.connection_env("flywheel_logs"))
        yield store


TINY_MODEL_DIR = _SESSION_HOME / "tiny-llama"
"""Where the ``tiny_model`` fixture writes the tiny random Llama that test configs train."""

TEST_TRAINING = {
    "settings": {
        "max_steps": 2,
        "batch_size": 2,
        "max_seq_length": 256,
        "eval_every_steps": 2,
        "max_validation_examples": 4,
        "log_every_steps": 1,
    },
    "candidates": [{"candidate_id": "tiny", "base_model": str(TINY_MODEL_DIR)}],
}
"""Training block of test configs: two steps of the tiny model (tests that train need ``tiny_model``)."""

TEST_EVALUATION = {
    "settings": {"max_examples": 4, "generation": {"max_new_tokens": 8, "batch_size": 4}},
    "eval_types": ["customized"],
}
"""Evaluation block of test configs: the fine-tuned adapter on four examples, answers of at most eight
tokens (tests of the evaluation stage itself ask for more variants)."""


@pytest.fixture
def empty_log_store(log_store: object) -> object:
    """The session's log store without the log indices earlier tests seeded (a test that seeds a day
    it also reads, and must not see another test's copy of that day)."""
    from flywheel.extract.sources.elasticsearch import connect

    client = connect("flywheel_logs")
    for index in client.indices.get(index="flywheel-logs-*"):
        client.indices.delete(index=index)
    return log_store


TEST_DECISION = {"floor": 0.0, "min_examples": 4, "bootstrap_resamples": 200, "guardrails": {}}
"""Decision policy of test configs: four paired examples suffice and any accuracy clears the floor, so a
run without a champion promotes its challenger (tests of the decision stage itself ask for more). No
guardrails: a tiny random model's latency on a busy machine and its answers on four examples are
noise (the guardrails are tested in tests/flywheel/decision)."""


def write_config(
    directory: Path,
    *,
    airflow: dict | None = None,
    compute: dict | None = None,
    metadata_url: str | None = None,
    **workload_overrides: object,
) -> Path:
    """A config file like the project's, with its artifact store and metadata DB inside ``directory``.

    Workloads train the tiny test model for two steps and evaluate it on four examples unless
    ``training`` / ``evaluation`` are overridden; ``airflow`` and ``compute`` update those blocks;
    ``metadata_url`` replaces the SQLite metadata database (e.g. with a PostgreSQL one).
    """
    raw = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "flywheel.yaml").read_text())
    raw["artifact_store"] = {"root": str(directory / "artifacts")}
    raw["metadata"] = {"url": metadata_url or f"sqlite:///{directory / 'flywheel.db'}"}
    raw["airflow"].update(airflow or {})
    raw["compute"].update(compute or {})
    for workload in raw["workloads"]:
        workload.update(
            {
                "training": TEST_TRAINING,
                "evaluation": TEST_EVALUATION,
                "decision": TEST_DECISION,
                **workload_overrides,
            }
        )
    path = directory / "flywheel.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def make_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``make_config(**workload_overrides)``: a migrated test configuration that ``FLYWHEEL_CONFIG`` points
    at (so DAG tasks read it), with a fresh store and database; ``write_config`` takes the arguments."""
    from flywheel.config import load_config
    from flywheel.db.engine import get_engine
    from flywheel.db.migrate import upgrade

    def make(**overrides: object):
        path = write_config(tmp_path, **overrides)
        monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
        config = load_config(path)
        upgrade(get_engine(config.metadata))
        return config

    return make


@pytest.fixture
def flywheel_config(make_config):
    """A migrated test configuration (``FLYWHEEL_CONFIG`` points at it) with a fresh store and database."""
    return make_config()


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """A tiny randomly initialised Llama with SmolLM2's real tokenizer and chat template, written once."""
    from flywheel.train.models import SMOLLM2, write_tiny_llama

    if not (TINY_MODEL_DIR / "config.json").is_file():
        write_tiny_llama(TINY_MODEL_DIR, SMOLLM2)
    return str(TINY_MODEL_DIR)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's own metadata database (SQLite in the session home), migrated once."""
    from airflow.utils.db import initdb

    initdb()


@pytest.fixture(scope="session")
def dagbag():
    """Every DAG file in dags/, parsed once per session, with the parse time of each file recorded."""
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    for stat in bag.dagbag_stats:
        DAG_PARSE_SECONDS[stat.file] = stat.duration.total_seconds()
    assert bag.dagbag_stats, f"no DAG file parsed in {time.perf_counter() - started:.1f} s"
    return bag


def workload_dag(config, workload_id: str):
    """The workload's DAG as the DAG processor parses it with ``config`` (the DAG file reads
    ``FLYWHEEL_CONFIG``, which ``make_config`` sets): for tests that change parse-time settings such
    as retries, which the session ``dagbag`` fixed with the project's configuration."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "flywheel_workloads.py"))
    assert bag.import_errors == {}
    return bag.dags[config.workload(workload_id).dag_id]
