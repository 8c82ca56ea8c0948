"""One hostile night of the router's DAG through ``dag.test()`` (issue 15, points 10, 11 and 12).

The log store holds a day of demo traffic with personal data planted in a fifth of its conversations,
and the hostile corpus as log documents (``tests/hostile_records.py``). Every connection and
environment variable the night reads carries a secret of its own: the log store's API key, the
metadata database's connection, the deploy hook's token (a fake vLLM that checks it), both alert
channels' credentials (webhook, Slack), the LLM judge's API key, and the artifact store's secret
storage options; one more secret sits in an environment variable the flywheel does not read. After the
night, the test checks:

- the hostile corpus: every document was extracted, each quarantined one with its reason, the clean
  ones went on to the dataset, none of the quarantined ones reached the dataset or the evaluation, and
  the accounting holds (extracted = clean + quarantined, every quarantined record with a reason);
- personal data: none of the planted values is in the clean partition, the dataset files, the
  training text the tokenizer sees, the evaluation outputs, the report, the alerts or the requests the
  judge and the alert channels received; the report shows the scrubber's counts;
- secrets: none of them is in any file of the artifact store (Parquet decoded too), the metadata
  database (its SQLite files and every column), Airflow's database and task logs, or the bodies of the
  alerts sent.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import inspect, select, text

from conftest import PROJECT_ROOT, TEST_EVALUATION, write_config
from flywheel.config import load_config
from flywheel.db.engine import get_engine, session_scope
from flywheel.db.migrate import upgrade
from flywheel.db.models import Decision, RawPartition, RunStage, ValidatedPartition
from flywheel.demo.seed import daily_index, put_log_index_template
from flywheel.demo.support_router import TOOLS
from flywheel.demo.traffic import generate_traffic
from flywheel.extract.sources.elasticsearch import connect
from flywheel.intervals import latest_intervals
from flywheel.report.plots import MAX_REASONS
from flywheel.storage import ArtifactStore
from flywheel.validate.records import QuarantineReason
from hostile_records import HostileDocument, hostile_documents

if TYPE_CHECKING:
    from openai_server import OpenAIServer
    from vllm_server import VllmServer

pytest_plugins = ["vllm_server"]

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
WORKLOAD = "customer_support_router"
DAG_ID = f"flywheel_{WORKLOAD}"
RECORDS = 400
PII_RATE = 0.2


@pytest.fixture
def planted_secrets() -> dict[str, str]:
    """A distinct random secret per credential the night reads."""
    return {
        name: secrets.token_urlsafe(24)
        for name in (
            "log_store_api_key",
            "metadata_password",
            "metadata_extra",
            "deploy_token",
            "webhook_password",
            "slack_token",
            "judge_api_key",
            "storage_token",
            "storage_client_secret",
            "unread_env",
        )
    }


def test_a_hostile_night_keeps_personal_data_and_secrets_out_and_accounts_for_every_record(
    dagbag,
    airflow_db,
    empty_log_store,
    tiny_model,
    http_server,
    planted_secrets: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Imported here: both modules are pytest plugins, which must be imported (and rewritten) as such first.
    from openai_server import OpenAIServer
    from vllm_server import VllmServer

    s = planted_secrets
    with (
        VllmServer(api_key=s["deploy_token"]) as vllm,
        OpenAIServer("judge", api_key=s["judge_api_key"]) as judge,
    ):
        judge.responder = lambda body: {"content": "The answer matches the reference.\nRating: 8"}
        config = _hostile_config(tmp_path, monkeypatch, s, vllm=vllm, judge=judge, hooks=http_server.url)
        workload = config.workload(WORKLOAD)
        ((start, end),) = latest_intervals(workload.schedule, 1, NOW)
        traffic = list(
            generate_traffic(
                kind="support_router",
                workload_id=WORKLOAD,
                start=start,
                end=end,
                count=RECORDS,
                seed=11,
                client_ids=workload.client_ids,
                pii_rate=PII_RATE,
            )
        )
        hostile = hostile_documents(
            WORKLOAD,
            start,
            TOOLS,
            client_id=workload.client_ids[0],
            max_record_bytes=workload.data_quality.max_record_bytes,
            max_document_bytes=workload.log_source.max_document_bytes,
        )
        _index(empty_log_store.url, workload.log_source, start, traffic, hostile)

        dag_run = dagbag.dags[DAG_ID].test(logical_date=end)

        assert dag_run.state == "success"
        judge_bodies = judge.bodies()
        assert judge_bodies and not judge.errors  # the judge accepted its key for every rating
    assert vllm.loaded  # the deploy hook's token was accepted

    store = ArtifactStore(config.artifact_store.root)
    day = start.date()
    _check_the_hostile_corpus(config, store, day, hostile)
    _check_personal_data(config, store, day, traffic, tiny_model, judge_bodies, http_server.requests)
    _check_secrets(config, store, tmp_path, s, http_server.requests, capfd, caplog)


# --------------------------------------------------------------------------------------------------
# The night's configuration, connections and log store


def _hostile_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s: dict[str, str],
    *,
    vllm: VllmServer,
    judge: OpenAIServer,
    hooks: str,
):
    """The test config of the router with every credential in a connection or environment variable."""
    raw_project = yaml.safe_load((PROJECT_ROOT / "include" / "config" / "flywheel.yaml").read_text())
    router = next(w for w in raw_project["workloads"] if w["workload_id"] == WORKLOAD)
    evaluation = {
        **TEST_EVALUATION,
        "settings": {
            **TEST_EVALUATION["settings"],
            "max_examples": None,  # every example, so that hostile records of the split are evaluated
            "judge": {
                "endpoint": {
                    "base_url": judge.base_url,
                    "model": "judge",
                    "api_key_env": "FLYWHEEL_JUDGE_API_KEY",
                }
            },
        },
    }
    path = write_config(
        tmp_path,
        # The corpus is a fifth of the day: the batch may quarantine that much and still go on.
        data_quality={**router["data_quality"], "max_quarantine_rate": 0.35},
        evaluation=evaluation,
        deploy={"type": "vllm", "conn_id": "hostile_vllm"},
        alerts={
            "local_sink": True,
            "notify_on": ["promote", "alert", "no_change", "task_failure"],
            "channels": [
                {"type": "webhook", "conn_id": "hostile_webhook"},
                {"type": "slack", "conn_id": "hostile_slack"},
            ],
        },
    )
    raw = yaml.safe_load(path.read_text())
    database = tmp_path / "flywheel.db"
    # The connection wins over the URL: nothing may be written where the URL points.
    raw["metadata"] = {"conn_id": "hostile_metadata", "url": f"sqlite:///{tmp_path / 'unused.db'}"}
    raw["artifact_store"]["storage_options"] = {
        "auto_mkdir": True,
        "token": "${FLYWHEEL_STORAGE_TOKEN}",
        "client_kwargs": {"client_secret": "${FLYWHEEL_STORAGE_CLIENT_SECRET}"},
    }
    path.write_text(yaml.safe_dump(raw))

    logs = json.loads(os.environ["AIRFLOW_CONN_FLYWHEEL_LOGS"])  # the session's log store
    connections = {
        "flywheel_logs": {**logs, "extra": {**logs.get("extra", {}), "api_key": s["log_store_api_key"]}},
        "hostile_metadata": {
            "conn_type": "sqlite",
            "host": str(database),
            "password": s["metadata_password"],
            "extra": {"session_token": s["metadata_extra"]},
        },
        "hostile_vllm": {"conn_type": "http", "host": vllm.url, "password": s["deploy_token"]},
        "hostile_webhook": {
            "conn_type": "http",
            "host": hooks,
            "login": "flywheel",
            "password": s["webhook_password"],
        },
        "hostile_slack": {"conn_type": "slackwebhook", "host": hooks, "password": s["slack_token"]},
    }
    for conn_id, fields in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    monkeypatch.setenv("FLYWHEEL_JUDGE_API_KEY", s["judge_api_key"])
    monkeypatch.setenv("FLYWHEEL_STORAGE_TOKEN", s["storage_token"])
    monkeypatch.setenv("FLYWHEEL_STORAGE_CLIENT_SECRET", s["storage_client_secret"])
    monkeypatch.setenv("PAYMENTS_SERVICE_TOKEN", s["unread_env"])
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
    config = load_config(path)
    assert config.artifact_store.storage_options["token"] == s["storage_token"]
    upgrade(get_engine(config.metadata))
    return config


def _index(
    url: str, source: Any, start: datetime, traffic: list[Any], hostile: list[HostileDocument]
) -> None:
    """The demo day and the hostile documents into the log store, in one bulk request of raw JSON (some
    documents are nested deeper than the client's serializer can write)."""
    client = connect(source.conn_id)
    put_log_index_template(client, source)
    lines = []
    for number, record in enumerate(traffic):
        index = daily_index(source, record.source["timestamp"], NOW)
        lines.append(json.dumps({"index": {"_index": index, "_id": f"demo-{number:04d}"}}).encode())
        lines.append(json.dumps(record.source).encode())
    for document in hostile:
        index = daily_index(source, start.isoformat(), NOW)
        lines.append(json.dumps({"index": {"_index": index, "_id": document.doc_id}}).encode())
        lines.append(document.body)
    request = urllib.request.Request(
        f"{url}/_bulk?refresh=true",
        data=b"\n".join(lines) + b"\n",
        method="POST",
        headers={"content-type": "application/x-ndjson"},
    )
    with urllib.request.urlopen(request) as answer:
        assert not json.loads(answer.read())["errors"]


# --------------------------------------------------------------------------------------------------
# Point 11: the hostile corpus through every stage, and the accounting


def _rows(store: ArtifactStore, files: list[str], columns: list[str] | None = None) -> list[dict[str, Any]]:
    return [row for f in files for row in pq.read_table(f, columns=columns, filesystem=store.fs).to_pylist()]


def _check_the_hostile_corpus(config, store: ArtifactStore, day, hostile: list[HostileDocument]) -> None:
    raw = _rows(store, store.partition_files(WORKLOAD, day), ["record_id", "source_record_id"])
    clean = _rows(store, store.partition_files(WORKLOAD, day, "clean"), ["record_id"])
    quarantine = _rows(store, store.partition_files(WORKLOAD, day, "quarantine"))
    with session_scope(config.metadata) as session:
        (partition,) = session.scalars(select(RawPartition)).all()
        (validated,) = session.scalars(select(ValidatedPartition)).all()
        (decision,) = session.scalars(select(Decision)).all()

    # The accounting invariant, at the end of the night: nothing lost, nothing counted twice.
    assert partition.record_count == len(raw) == validated.extracted
    assert validated.extracted == validated.clean + validated.quarantined
    assert (len(clean), len(quarantine)) == (validated.clean, validated.quarantined)
    assert len({r["record_id"] for r in raw}) == len(raw)
    assert {r["record_id"] for r in raw} == {r["record_id"] for r in clean} | {
        r["record_id"] for r in quarantine
    }
    reasons = {reason.value for reason in QuarantineReason}
    for row in quarantine:
        assert row["reason"] in reasons and row["field"] and row["detail"], row
    assert sum(validated.reasons.values()) == validated.quarantined

    # Every hostile document was extracted and got what the corpus says.
    by_doc = {r["source_record_id"].rsplit("/", 1)[1]: r["record_id"] for r in raw}
    quarantined = {r["record_id"]: r["reason"] for r in quarantine}
    clean_ids = {r["record_id"] for r in clean}
    for document in hostile:
        record_id = by_doc[document.doc_id]
        if document.reason is None:
            assert record_id in clean_ids, document.name
        else:
            assert quarantined.get(record_id) == document.reason.value, document.name
    hostile_clean = {by_doc[d.doc_id] for d in hostile if d.reason is None}
    hostile_quarantined = {by_doc[d.doc_id] for d in hostile if d.reason is not None}

    # Clean hostile records went on into the dataset's splits; quarantined ones reached no split and
    # no evaluation.
    dataset_dir = Path(store.path("datasets", WORKLOAD))
    in_dataset = {
        json.loads(line)["record_id"]
        for path in dataset_dir.rglob("*.jsonl")
        for line in path.read_text().splitlines()
    }
    assert hostile_clean & in_dataset
    assert not hostile_quarantined & in_dataset
    evaluated = [
        json.loads(line)
        for path in Path(store.path("runs", WORKLOAD, day.isoformat(), "evaluate")).rglob("examples.jsonl")
        for line in path.read_text().splitlines()
    ]
    evaluated_ids = {e["example_id"] for e in evaluated}
    assert evaluated_ids <= in_dataset
    assert not hostile_quarantined & evaluated_ids
    assert hostile_clean & evaluated_ids  # hostile text went through generation and the judge

    # The night promoted; its report draws the most frequent reasons and says how many there were, and
    # shows no hostile text unescaped.
    assert decision.outcome == "promote"
    report = Path(store.path("reports", WORKLOAD, day.isoformat(), "run-report.html")).read_text()
    assert "<script>alert(1)</script>" not in report
    top = sorted(validated.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS]
    assert all(f">{reason}</text>" in report for reason, _ in top)
    assert f"quarantine reasons (top {len(top)} of {len(validated.reasons)})" in report


# --------------------------------------------------------------------------------------------------
# Point 12: personal data end to end


def _check_personal_data(
    config,
    store: ArtifactStore,
    day,
    traffic,
    tiny_model: str,
    judge_bodies: list[Any],
    deliveries: list[Any],
) -> None:
    planted = {p.value: p.kind.value for record in traffic for p in record.pii}
    in_day = [p for r in traffic if r.noise is None for p in r.pii]
    assert {p.kind.value for p in in_day} == {"email", "phone", "card", "ip"}
    raw_text = _parquet_text(store, store.partition_files(WORKLOAD, day))
    assert all(p.value in raw_text for p in in_day)  # the planted values really were extracted

    def leaked(text: str) -> list[str]:
        return [value for value in planted if value in text]

    assert leaked(_parquet_text(store, store.partition_files(WORKLOAD, day, "clean"))) == []
    for path in Path(store.path("datasets", WORKLOAD)).rglob("*"):
        if path.is_file():
            assert leaked(path.read_text()) == [], path
    assert leaked(_training_text(store, tiny_model)) == []
    for path in Path(store.path("runs", WORKLOAD, day.isoformat())).rglob("*.json*"):
        assert leaked(path.read_text()) == [], path  # examples.jsonl, results, attempts
    for path in [
        *Path(store.path("reports", WORKLOAD)).rglob("*.html"),
        *Path(store.path("alerts")).rglob("*"),
    ]:
        if path.is_file():
            assert leaked(path.read_text()) == [], path
    assert leaked(json.dumps(judge_bodies)) == []
    assert leaked(json.dumps([r.body for r in deliveries])) == []

    # The scrubber's counts: in the validate summary, its partition record and the report.
    clean_record = store.read_partition_record(WORKLOAD, day, "clean")
    with session_scope(config.metadata) as session:
        summary = session.scalars(
            select(RunStage.summary).where(RunStage.stage == "validate", RunStage.status == "succeeded")
        ).one()
    pii = summary["pii"]
    assert pii == clean_record["pii"]
    assert set(pii) == {"email", "phone", "card", "ip"}
    assert sum(pii.values()) >= sum(1 for r in traffic if r.noise is None and r.pii)
    report = Path(store.path("reports", WORKLOAD, day.isoformat(), "run-report.html")).read_text()
    shown = ", ".join(f"{kind} {count:,}" for kind, count in sorted(pii.items()))
    assert f"<td>{shown}</td>" in report


def _parquet_text(store: ArtifactStore, files: list[str]) -> str:
    return "\n".join(json.dumps(row, default=str) for row in _rows(store, files))


def _training_text(store: ArtifactStore, tiny_model: str) -> str:
    """What the tiny model is trained on: each train example through the training encoder, decoded."""
    from transformers import AutoTokenizer

    from flywheel.train.formatting import encode_for_training

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    (train,) = Path(store.path("datasets", WORKLOAD)).glob("*/train.jsonl")
    texts = []
    for line in train.read_text().splitlines():
        example = json.loads(line)
        encoded = encode_for_training(tokenizer, example["messages"], example["tools"], max_length=1_000_000)
        texts.append(tokenizer.decode(encoded.input_ids))
    assert len(texts) > 100
    return "\n".join(texts)


# --------------------------------------------------------------------------------------------------
# Point 10: the planted-secrets scan


def _check_secrets(
    config,
    store: ArtifactStore,
    tmp_path: Path,
    s: dict[str, str],
    deliveries: list[Any],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.configuration import conf

    forms = dict(s)
    # The webhook's credentials travel as a Basic header: its base64 form must not be written either.
    forms["webhook_basic_auth"] = base64.b64encode(f"flywheel:{s['webhook_password']}".encode()).decode()

    def leaked(data: bytes) -> list[str]:
        return [name for name, value in forms.items() if value.encode() in data]

    # The credentials were used: every channel received the promotion, with its credentials.
    webhook = [r for r in deliveries if isinstance(r.body, dict) and r.body.get("event") == "promote"]
    assert webhook and webhook[0].headers["authorization"] == f"Basic {forms['webhook_basic_auth']}"
    assert any(s["slack_token"] in r.path for r in deliveries)
    assert [leaked(json.dumps(r.body).encode()) for r in deliveries] == [[]] * len(deliveries)

    # The artifact store: every file's bytes, and Parquet files decoded (their pages are compressed).
    root = Path(config.artifact_store.root)
    files = [p for p in root.rglob("*") if p.is_file()]
    written = {p.relative_to(root).parts[0] for p in files}
    assert {"raw", "clean", "quarantine", "datasets", "runs", "models", "reports", "alerts"} <= written
    for path in files:
        assert leaked(path.read_bytes()) == [], path
        if path.suffix == ".parquet":
            assert leaked(_parquet_text(store, [str(path)]).encode()) == [], path

    # The flywheel's metadata database: its files (WAL included) and every column of every table.
    database = tmp_path / "flywheel.db"
    assert not (tmp_path / "unused.db").exists()
    for path in database.parent.glob(database.name + "*"):
        assert leaked(path.read_bytes()) == [], path
    engine = get_engine(config.metadata)
    with engine.connect() as connection:
        tables = inspect(engine).get_table_names()
        assert "run_stages" in tables
        for table in tables:
            rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
            assert leaked(repr(rows).encode()) == [], table

    # Airflow: its database (XCom above all) and the task logs.
    airflow_db = Path(conf.get("database", "sql_alchemy_conn").removeprefix("sqlite:///"))
    with sqlite3.connect(airflow_db) as connection:
        xcom = connection.execute(
            "SELECT dag_id, task_id, value FROM xcom WHERE dag_id = ?", (DAG_ID,)
        ).fetchall()
    assert {task for _, task, _ in xcom} >= {
        "extract",
        "validate",
        "build_dataset",
        "plan_evaluation",
        "decide",
    }
    assert leaked(repr(xcom).encode()) == []
    for path in airflow_db.parent.glob(airflow_db.name + "*"):
        assert leaked(path.read_bytes()) == [], path
    logs = Path(conf.get("logging", "base_log_folder"))
    for path in logs.rglob("*"):
        if path.is_file():
            assert leaked(path.read_bytes()) == [], path
    # dag.test() runs the tasks in this process: their logs, the jobs' output streamed into them, are
    # log records and output here rather than files under the logs folder.
    assert "[DAG TEST] starting task_id=promote" in caplog.text and "evaluation finished" in caplog.text
    printed = capfd.readouterr()
    assert leaked((printed.out + printed.err + caplog.text).encode()) == []
