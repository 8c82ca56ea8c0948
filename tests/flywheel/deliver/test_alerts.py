"""Alerts: the local sink, notify_on, and Slack / e-mail / webhook channels through real local servers.

Slack and webhook channels post to a real HTTP server on 127.0.0.1, e-mail goes to a real aiosmtpd
server; every connection is an ``AIRFLOW_CONN_<ID>`` environment variable, as in production.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import math
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from aiosmtpd.controller import Controller

from conftest import write_config
from flywheel.config import FlywheelConfig, load_config
from flywheel.deliver.alerts import FlywheelNotifier, Notification, decision_notification, notify
from flywheel.errors import AlertDeliveryError

if TYPE_CHECKING:
    from vllm_server import RecordingServer

# The servers' fixtures: loaded as a plugin (not imported here) so that pytest rewrites its asserts.
pytest_plugins = ["vllm_server"]

SLACK_TOKEN = "T0FLY/B0WHEEL/s3cr3t-webhook-token"
HOSTILE = "<script>alert('x')</script> & <!channel> {{ 7 * 7 }}"
INTERVAL = (datetime(2026, 12, 5, tzinfo=UTC), datetime(2026, 12, 6, tzinfo=UTC))


@dataclass
class SmtpInbox:
    """A real SMTP server (aiosmtpd) on a free local port and the messages it accepted."""

    port: int
    envelopes: list[Any]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_inbox() -> Iterator[SmtpInbox]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inbox = SmtpInbox(port, [])
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def make_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict], FlywheelConfig]:
    """Writes a test config whose workloads have this ``alerts`` block; FLYWHEEL_CONFIG points at it."""

    def make(alerts: dict) -> FlywheelConfig:
        path = write_config(tmp_path, alerts=alerts)
        monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
        return load_config(path)

    return make


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Defines Airflow connections as AIRFLOW_CONN_<ID> JSON environment variables."""

    def define(conn_id: str, **fields: Any) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))

    return define


def slack_connection(connections: Callable[..., None], url: str) -> None:
    connections("slack_flywheel", conn_type="slackwebhook", host=url, password=SLACK_TOKEN)


def smtp_connection(connections: Callable[..., None], port: int) -> None:
    extra = {"disable_ssl": True, "disable_tls": True, "from_email": "flywheel@example.com", "retry_limit": 0}
    connections("smtp_flywheel", conn_type="smtp", host="127.0.0.1", port=port, extra=extra)


def alert(workload_id: str, **overrides: Any) -> Notification:
    fields: dict[str, Any] = {
        "workload_id": workload_id,
        "event": "alert",
        "title": "champion drifted below its floor",
        "reasons": [
            {"code": "champion_drift", "message": "function_name_and_args_accuracy 0.41 < floor 0.5"},
            {"code": "unknown_tool", "message": f"production called {HOSTILE}"},
        ],
        "figures": {"champion_accuracy": 0.41234, "p_value": 0.0031},
        "dag_id": f"flywheel_{workload_id}",
        "dag_run_id": "scheduled__2026-12-06T02:00:00+00:00",
        "interval_start": INTERVAL[0],
        "interval_end": INTERVAL[1],
        "run_url": "http://airflow.example/dags/x/runs/y",
        "report_uri": "s3://flywheel/reports/x.html",
        "created_at": datetime(2026, 12, 6, 2, 31, 7, 123456, tzinfo=UTC),
    }
    return Notification(**{**fields, **overrides})


def test_local_sink_writes_the_notification_as_json_and_logs_it(make_config, caplog) -> None:
    config = make_config({"channels": [], "notify_on": ["alert", "promote"]})
    workload_id = config.workloads[0].workload_id
    notification = alert(workload_id)

    with caplog.at_level(logging.INFO, logger="flywheel.deliver.alerts"):
        deliveries = notify(config, notification)
        notify(config, alert(workload_id, event="promote", title="promoted v3"))

    path = Path(config.artifact_store.root) / "alerts" / workload_id / "2026-12-05"
    written = path / "20261206T023107123456-alert.json"
    assert deliveries == [
        {"channel": "local", "conn_id": None, "status": "sent", "error": None, "uri": f"file://{written}"}
    ]
    assert json.loads(written.read_text()) == notification.to_dict()
    assert (path / "20261206T023107123456-promote.json").is_file()
    levels = {r.getMessage().splitlines()[0]: r.levelno for r in caplog.records}
    assert levels[notification.subject] == logging.WARNING
    assert levels[f"[flywheel promote] {workload_id}: promoted v3"] == logging.INFO
    assert "champion_drift: function_name_and_args_accuracy 0.41 < floor 0.5" in caplog.text


def test_events_outside_notify_on_are_only_logged(make_config, connections, http_server, caplog) -> None:
    connections("hook", conn_type="http", host=http_server.url)
    config = make_config({"channels": [{"type": "webhook", "conn_id": "hook"}], "notify_on": ["promote"]})
    workload_id = config.workloads[0].workload_id

    with caplog.at_level(logging.INFO, logger="flywheel.deliver.alerts"):
        assert notify(config, alert(workload_id, event="no_change")) == []

    assert http_server.requests == []
    assert not (Path(config.artifact_store.root) / "alerts").exists()
    assert "Not notifying no_change" in caplog.text


def test_slack_channel_posts_escaped_untemplated_text_and_never_shows_the_token(
    make_config, connections, http_server, caplog
) -> None:
    slack_connection(connections, http_server.url)
    config = make_config({"channels": [{"type": "slack", "conn_id": "slack_flywheel"}], "local_sink": False})
    workload_id = config.workloads[0].workload_id

    with caplog.at_level(logging.DEBUG):
        deliveries = notify(config, alert(workload_id))

    assert deliveries == [{"channel": "slack", "conn_id": "slack_flywheel", "status": "sent", "error": None}]
    (request,) = http_server.requests
    assert request.method == "POST"
    assert request.path == f"/{SLACK_TOKEN}"
    text = request.body["text"]
    assert text.startswith(f"[flywheel alert] {workload_id}: champion drifted below its floor")
    assert "champion_accuracy: 0.4123" in text
    assert "Run: http://airflow.example/dags/x/runs/y" in text
    # Slack's control characters are escaped (no @channel ping) and nothing was rendered by Jinja.
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    assert "{{ 7 * 7 }}" in text and "49" not in text
    assert SLACK_TOKEN not in caplog.text


def test_email_channel_sends_escaped_html_through_smtp(make_config, connections, smtp_inbox) -> None:
    smtp_connection(connections, smtp_inbox.port)
    channel = {"type": "email", "conn_id": "smtp_flywheel", "to": ["oncall@example.com", "ml@example.com"]}
    config = make_config({"channels": [channel], "local_sink": False})
    workload_id = config.workloads[0].workload_id
    notification = alert(workload_id)

    deliveries = notify(config, notification)

    assert [d["status"] for d in deliveries] == ["sent"]
    (envelope,) = smtp_inbox.envelopes
    assert envelope.mail_from == "flywheel@example.com"
    assert sorted(envelope.rcpt_tos) == ["ml@example.com", "oncall@example.com"]
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["Subject"] == notification.subject
    body = message.get_body(("html",)).get_content()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;!channel&gt;" in body
    assert "<script>" not in body
    assert '<a href="http://airflow.example/dags/x/runs/y">' in body
    assert "<code>s3://flywheel/reports/x.html</code>" in body


def test_webhook_channel_posts_the_notification_json(make_config, connections, http_server) -> None:
    connections("alert_hook", conn_type="http", host=http_server.url, extra={"X-Team": "ml"})
    channel = {"type": "webhook", "conn_id": "alert_hook", "endpoint": "hooks/flywheel"}
    config = make_config({"channels": [channel], "local_sink": False})
    notification = alert(config.workloads[0].workload_id)

    assert notify(config, notification)[0]["status"] == "sent"

    (request,) = http_server.requests
    assert request.path == "/hooks/flywheel"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-team"] == "ml"
    assert request.body == {**notification.to_dict(), "text": notification.text()}


def test_a_users_own_channel_receives_the_notification(make_config, connections, http_server) -> None:
    connections("teams_oncall", conn_type="http", host=f"{http_server.url}/webhookb2/flywheel")
    channel = {"type": "my_flywheel.alerts:TeamsChannel", "conn_id": "teams_oncall"}
    config = make_config({"channels": [channel], "local_sink": False})
    notification = alert(config.workloads[0].workload_id)

    (delivery,) = notify(config, notification)

    assert delivery == {
        "channel": "my_flywheel.alerts:TeamsChannel",
        "conn_id": "teams_oncall",
        "status": "sent",
        "error": None,
    }
    (request,) = http_server.requests
    assert (request.method, request.path) == ("POST", "/webhookb2/flywheel")
    assert request.body == {"text": notification.text()}


def test_a_failing_channel_does_not_stop_the_others(
    make_config, connections, http_server: RecordingServer, refused_url, smtp_inbox, caplog
) -> None:
    http_server.faults.append({"status": 500, "body": "internal_error"})
    slack_connection(connections, http_server.url)
    connections("dead_hook", conn_type="http", host=refused_url)
    smtp_connection(connections, smtp_inbox.port)
    config = make_config(
        {
            "channels": [
                {"type": "slack", "conn_id": "slack_flywheel"},
                {"type": "webhook", "conn_id": "dead_hook"},
                {"type": "email", "conn_id": "smtp_flywheel", "to": ["oncall@example.com"]},
            ]
        }
    )

    with caplog.at_level(logging.DEBUG), pytest.raises(AlertDeliveryError) as raised:
        notify(config, alert(config.workloads[0].workload_id))

    message = str(raised.value)
    assert "2 of 4 deliveries failed" in message
    assert "slack (slack_flywheel)" in message and "Status Code: 500" in message
    assert "webhook (dead_hook)" in message
    statuses = {(d["channel"], d["conn_id"]): d["status"] for d in raised.value.deliveries}
    assert statuses == {
        ("local", None): "sent",
        ("slack", "slack_flywheel"): "failed",
        ("webhook", "dead_hook"): "failed",
        ("email", "smtp_flywheel"): "sent",
    }
    assert len(smtp_inbox.envelopes) == 1
    assert SLACK_TOKEN not in message + caplog.text + json.dumps(raised.value.deliveries)


def test_html_and_text_of_hostile_values() -> None:
    notification = alert(
        "w",
        title="<b>drift</b>",
        figures={"<img src=x>": "<i>1</i>"},
        run_url="javascript:alert(1)",
        report_uri='http://reports.example/x"onmouseover="steal()',
    )
    body = notification.html()
    assert "<b>" not in body and "<img" not in body and "<i>" not in body
    assert "&lt;b&gt;drift&lt;/b&gt;" in body
    assert '<a href="javascript' not in body and "<code>javascript:alert(1)</code>" in body
    assert 'href="http://reports.example/x&quot;onmouseover=&quot;steal()"' in body
    assert HOSTILE in notification.text()  # plain text stays verbatim


def test_an_approval_request_links_where_to_answer_and_a_dry_run_is_marked(tmp_path: Path) -> None:
    workload = load_config(write_config(tmp_path)).workload("customer_support_router")
    decision = {
        "decision_id": 7,
        "outcome": "promote",
        "reasons": [{"code": "first_champion", "message": "no champion yet"}],
        "primary_metric": "function_name_and_args_accuracy",
        "examples": 120,
        "champion": None,
        "champion_version": None,
        "challenger": "tiny/customized",
        "challenger_version": 3,
        "figures": {"challenger": 0.75},
        "report_uri": "s3://flywheel/reports/customer_support_router/2026-12-05/run-report.html",
        "interval_start": INTERVAL[0].isoformat(),
        "interval_end": INTERVAL[1].isoformat(),
    }
    respond = (
        "http://airflow.example/dags/flywheel_customer_support_router/runs/r/tasks/approve/required_actions"
    )
    report = "http://airflow.example/flywheel/reports/customer_support_router/2026-12-05/run-report.html"

    request = decision_notification(
        workload, "approval_requested", decision, "r", action_url=respond, report_url=report
    )
    dry = decision_notification(workload, "promote", decision | {"dry_run": True}, "r")

    assert request.subject == (
        "[flywheel approval_requested] customer_support_router: customer_support_router: approve promoting "
        "tiny/customized to champion?"
    )
    assert f"Respond: {respond}" in request.text().splitlines()
    assert f'Respond: <a href="{respond}">' in request.html()
    assert (request.to_dict()["action_url"], request.to_dict()["report_uri"]) == (respond, report)
    assert dry.subject.startswith("[flywheel promote, dry run] customer_support_router: ")
    assert dry.title.endswith("tiny/customized would be promoted to champion (dry run)")
    assert dry.to_dict()["dry_run"] is True and request.to_dict()["dry_run"] is False
    assert dry.report_uri == decision["report_uri"]


def test_to_dict_is_json_safe_and_events_are_checked() -> None:
    notification = alert("w", figures={"p": float("nan"), "acc": np.float64(0.5), "n": np.int64(3)})
    encoded = json.loads(json.dumps(notification.to_dict(), allow_nan=False))
    assert encoded["figures"] == {"p": None, "acc": 0.5, "n": 3}
    assert encoded["interval_start"] == "2026-12-05T00:00:00+00:00"
    assert math.isnan(notification.figures["p"])
    with pytest.raises(ValueError, match="unknown notification event 'promoted'"):
        alert("w", event="promoted")


@dataclass
class TaskInstance:
    """The task-instance attributes an on_failure_callback context carries (RuntimeTaskInstance)."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int
    log_url: str


def failure_context(dag_id: str) -> dict[str, Any]:
    run_id = "scheduled__2026-12-06T02:00:00+00:00"
    ti = TaskInstance(
        dag_id, "train", run_id, 2, 0, f"http://airflow.example/dags/{dag_id}/runs/x/tasks/train"
    )
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": run_id,
        "exception": RuntimeError("CUDA out of memory <tool>"),
        "data_interval_start": INTERVAL[0],
        "data_interval_end": INTERVAL[1],
    }


def test_flywheel_notifier_delivers_a_task_failure(make_config, connections, http_server) -> None:
    connections("alert_hook", conn_type="http", host=http_server.url)
    config = make_config({"channels": [{"type": "webhook", "conn_id": "alert_hook"}]})
    workload = config.workloads[0]

    FlywheelNotifier(workload.workload_id)(failure_context(workload.dag_id))  # as Airflow calls it

    (request,) = http_server.requests
    body = request.body
    assert body["event"] == "task_failure"
    assert body["title"] == "task train failed (try 2)"
    assert body["reasons"] == [{"code": "task_failed", "message": "RuntimeError: CUDA out of memory <tool>"}]
    assert body["figures"] == {"try_number": 2, "map_index": 0}
    assert body["dag_id"] == workload.dag_id
    assert body["dag_run_id"] == "scheduled__2026-12-06T02:00:00+00:00"
    assert body["run_url"].endswith("/tasks/train")
    assert body["interval_start"] == "2026-12-05T00:00:00+00:00"
    assert list((Path(config.artifact_store.root) / "alerts" / workload.workload_id).rglob("*.json"))


def test_flywheel_notifier_never_raises(make_config, connections, refused_url, caplog) -> None:
    connections("dead_hook", conn_type="http", host=refused_url)
    config = make_config({"channels": [{"type": "webhook", "conn_id": "dead_hook"}]})
    workload = config.workloads[0]

    with caplog.at_level(logging.ERROR, logger="flywheel.deliver.alerts"):
        FlywheelNotifier(workload.workload_id)(failure_context(workload.dag_id))
        FlywheelNotifier("no_such_workload")(failure_context(workload.dag_id))

    assert "Task failure alert of workload" in caplog.text and "webhook (dead_hook)" in caplog.text
    assert "unknown workload_id 'no_such_workload'" in caplog.text


def test_building_the_notifier_imports_no_notifier_or_client() -> None:
    # Airflow itself imports every provider's package root; the notifiers, hooks and clients must wait.
    code = (
        "import sys; from flywheel.deliver.alerts import FlywheelNotifier; FlywheelNotifier('w'); "
        "print(sorted(m for m in sys.modules if m.startswith(('slack_sdk', 'smtplib', 'aiosmtplib')) "
        "or '.notifications' in m or '.hooks.' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"
