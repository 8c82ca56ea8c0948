"""Credentials stay out of what the flywheel writes: URLs refused or redacted, secret storage options
kept out of job specs (XCom), pod specs and local job environments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import write_config
from flywheel.compute import job_env, job_secret_env, read_job_file, train_job
from flywheel.config import (
    ArtifactStoreConfig,
    EndpointConfig,
    FlywheelConfig,
    format_validation_error,
    load_config,
)
from flywheel.jobs import EXIT_FAILED, write_error
from flywheel.redact import redact_text, redact_url, split_secret_options, url_credentials
from flywheel.storage import STORAGE_OPTIONS_ENV, STORAGE_SECRET_OPTIONS_ENV, storage_options_from_env

PLANTED = "PLANTED-s3cret-value"


@pytest.mark.parametrize(
    "url",
    [
        f"https://user:{PLANTED}@vllm.example:8000/v1",
        f"https://vllm.example/v1?api_key={PLANTED}",
        f"https://vllm.example/v1?X-Amz-Signature={PLANTED}&X-Amz-Date=20261120",
        f"https://vllm.example/v1?token={PLANTED}",
    ],
)
def test_an_endpoint_url_with_credentials_is_refused_naming_the_key_and_the_fix(url: str) -> None:
    with pytest.raises(ValidationError) as raised:
        EndpointConfig(base_url=url, model="m")

    text = format_validation_error(raised.value)  # how a config error is shown: the value never is
    assert text.startswith("  - base_url: must not carry credentials")
    assert "must not carry credentials" in text
    assert "api_key_env" in text
    assert PLANTED not in text


def test_an_artifact_root_with_credentials_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        ArtifactStoreConfig(root=f"s3://AKIAEXAMPLE:{PLANTED}@bucket/flywheel")
    text = format_validation_error(raised.value)
    assert text.startswith("  - root: must not carry credentials (user:password@)")
    assert "storage_options" in text
    assert PLANTED not in text
    # Plain URLs and paths pass.
    assert EndpointConfig(base_url="http://vllm:8000/v1?x=1", model="m").base_url.endswith("?x=1")
    assert ArtifactStoreConfig(root="/data/artifacts/a@b").root == "/data/artifacts/a@b"


def test_urls_in_free_text_lose_their_credentials() -> None:
    text = f"HTTP 401 from https://bob:{PLANTED}@h.example/v1/chat?sig={PLANTED}&model=x: denied"

    redacted = redact_text(text)
    assert PLANTED not in redacted
    assert redacted == "HTTP 401 from https://***@h.example/v1/chat?sig=***&model=x: denied"
    assert redact_url("s3://bucket/key.json") == "s3://bucket/key.json"
    assert url_credentials("http://vllm:8000/v1") == []


def test_error_json_never_carries_a_url_credential(tmp_path: Path) -> None:
    output = tmp_path / "out"
    try:
        raise ConnectionError(f"cannot reach https://u:{PLANTED}@endpoint.example/v1?access_token={PLANTED}")
    except ConnectionError as exc:
        write_error(str(output), exc, EXIT_FAILED)

    written = (output / "error.json").read_text()
    assert PLANTED not in written
    assert (
        "https://***@endpoint.example/v1?access_token=***"
        in read_job_file(str(output), "error.json")["message"]
    )


def _config_with_options(tmp_path: Path, options: dict) -> FlywheelConfig:
    config = load_config(write_config(tmp_path))
    store = ArtifactStoreConfig(root=config.artifact_store.root, storage_options=options)
    return config.model_copy(update={"artifact_store": store})


OPTIONS = {
    "anon": False,
    "key": "AKIAEXAMPLE",
    "secret": PLANTED,
    "client_kwargs": {"region_name": "eu-west-1"},
    "config_kwargs": {"aws_session_token": PLANTED},
}


def test_secret_storage_options_stay_out_of_the_job_spec_and_its_xcom(tmp_path: Path) -> None:
    from datetime import date

    config = _config_with_options(tmp_path, OPTIONS)
    workload = config.workload("customer_support_router")
    job = train_job(
        config,
        workload,
        workload.training.candidates[0],
        dataset_uri=str(tmp_path / "ds"),
        day=date(2026, 11, 20),
        dag_run_id="manual__x",
    )

    spec = json.dumps(job.to_dict())  # what the planning task returns: its XCom
    assert PLANTED not in spec and "AKIAEXAMPLE" not in spec
    assert json.loads(job.env[STORAGE_OPTIONS_ENV]) == {
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    assert job.env == job_env(config)
    secret = job_secret_env(config)
    assert json.loads(secret[STORAGE_SECRET_OPTIONS_ENV]) == {
        "key": "AKIAEXAMPLE",
        "secret": PLANTED,
        "config_kwargs": {"aws_session_token": PLANTED},
    }
    # A job process with both variables reads every option back.
    assert storage_options_from_env({**job.env, **secret}) == OPTIONS


def test_storage_option_names_that_hold_secrets() -> None:
    plain, secret = split_secret_options(
        {"key": 1, "token": 2, "account_key": 3, "client_secret": 4, "password": 5, "endpoint_url": 6}
    )
    assert plain == {"endpoint_url": 6}
    assert set(secret) == {"key", "token", "account_key", "client_secret", "password"}


def test_a_credential_in_an_error_reaches_neither_the_database_nor_the_report_nor_an_alert(
    flywheel_config: FlywheelConfig,
) -> None:
    """A stage failing with a URL's credentials in its exception text (a connection's host, a driver's
    DSN): the stage row, the run report and the task-failure alert keep the URL, not the credentials,
    even when the alert cuts the text short."""
    from datetime import UTC, datetime

    from flywheel.db.engine import session_scope
    from flywheel.db.models import RunStage
    from flywheel.deliver.alerts import MAX_ERROR_CHARS, failure_notification, notify
    from flywheel.report.data import report_data
    from flywheel.report.render import render_report
    from flywheel.tracking import ensure_run, record_stage

    workload = flywheel_config.workload("customer_support_router")
    start, end = datetime(2026, 11, 20, 2, tzinfo=UTC), datetime(2026, 11, 21, 2, tzinfo=UTC)
    run_id = ensure_run(
        flywheel_config.metadata,
        workload_id=workload.workload_id,
        dag_id=workload.dag_id,
        dag_run_id="manual__leaky",
        interval_start=start,
        interval_end=end,
    )
    url = f"https://flywheel:{PLANTED}@es.example:9200/flywheel-logs-*/_search?api_key={PLANTED}"
    # So long that the alert cuts it in the middle of the password (were it cut before it is redacted).
    before = len("ConnectionError: ") + len(" cannot reach https://flywheel:") + len(PLANTED) // 2
    error = ConnectionError("x" * (MAX_ERROR_CHARS - 3 - before) + f" cannot reach {url}")
    with pytest.raises(ConnectionError), record_stage(flywheel_config.metadata, run_id, "extract"):
        raise error

    with session_scope(flywheel_config.metadata) as session:
        (stage,) = session.query(RunStage).all()
        assert stage.status == "failed" and PLANTED not in stage.error
        assert "https://***@es.example:9200/flywheel-logs-*/_search?api_key=***" in stage.error
    page = render_report(report_data(flywheel_config, workload.workload_id, "manual__leaky"))
    assert PLANTED not in page and "https://***@es.example:9200" in page

    context = {"exception": error, "run_id": "manual__leaky", "data_interval_start": start}
    notification = failure_notification(workload.workload_id, context)
    (delivery,) = notify(flywheel_config, notification)
    sink = Path(delivery["uri"].removeprefix("file://")).read_text()
    for text in (sink, notification.text(), notification.html(), json.dumps(notification.to_dict())):
        assert PLANTED not in text and "flywheel:" not in text
    assert notification.reasons[0]["message"].startswith("ConnectionError: xxx")
