"""Notifications of a workload's run: promotions, alerts, "no change", task failures and approvals.

A :class:`Notification` is what happened, in words and numbers. :func:`notify` sends it where the
workload's ``alerts`` block says: the local sink (a log line and a JSON file under ``alerts/`` in the
artifact store) and every configured channel (:mod:`flywheel.deliver.channels`: Slack incoming
webhooks, SMTP e-mail, an HTTP webhook, or the user's own). Every channel is tried even when one
fails; the failures are raised together afterwards as :class:`~flywheel.errors.AlertDeliveryError`.

Reasons can quote production data (tool names, exception text): the HTML body is escaped, and
connection secrets are removed from delivery errors. :class:`FlywheelNotifier` is the
``on_failure_callback`` of a workload DAG's tasks; providers are imported only when a notification is
sent, so DAG files that build it parse fast.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, get_args

from airflow.sdk import BaseNotifier

from flywheel import artifacts
from flywheel.config import FlywheelConfig, NotifyEvent, WorkloadConfig, load_config
from flywheel.errors import AlertDeliveryError
from flywheel.redact import redact_text
from flywheel.storage import ArtifactStore

if TYPE_CHECKING:
    from flywheel.deliver.channels import AlertChannel

log = logging.getLogger(__name__)

EVENTS: tuple[str, ...] = get_args(NotifyEvent)
"""Events a notification can report: ``promote``, ``alert``, ``no_change``, ``task_failure``, and with
``decision.approval: required`` ``approval_requested`` and ``not_approved``."""

WARNING_EVENTS = ("alert", "task_failure", "not_approved")
"""Events the local sink logs at WARNING (the others at INFO)."""

MAX_ERROR_CHARS = 500
"""Delivery errors and exception texts are cut to this many characters."""


@dataclass(frozen=True)
class Notification:
    """One notification about a workload: the event, why (reasons), the key numbers and links.

    ``reasons`` are ``{"code": ..., "message": ...}`` records; ``figures`` maps a name to a number (or
    short value), e.g. the champion's and challenger's primary metric and the p-value. ``dry_run``: the
    run was a dry run (nothing moved). ``action_url``: where a person answers (an approval request).
    The title and the reason messages quote exception texts, so every URL in them is kept without its
    credentials (:func:`flywheel.redact.redact_text`).
    """

    workload_id: str
    event: NotifyEvent
    title: str
    reasons: list[dict[str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    dag_id: str | None = None
    dag_run_id: str | None = None
    interval_start: datetime | None = None
    interval_end: datetime | None = None
    run_url: str | None = None
    report_uri: str | None = None
    action_url: str | None = None
    dry_run: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown notification event {self.event!r}; events: {', '.join(EVENTS)}")
        object.__setattr__(self, "title", redact_text(self.title))
        reasons = [
            {**r, "message": redact_text(r["message"])} if isinstance(r.get("message"), str) else r
            for r in self.reasons
        ]
        object.__setattr__(self, "reasons", reasons)

    def to_dict(self) -> dict[str, Any]:
        """The notification as JSON-safe values (ISO datetimes, non-finite numbers as null)."""
        return {
            "workload_id": self.workload_id,
            "event": self.event,
            "title": self.title,
            "reasons": _json_safe(self.reasons),
            "figures": _json_safe(self.figures),
            "dag_id": self.dag_id,
            "dag_run_id": self.dag_run_id,
            "interval_start": _json_safe(self.interval_start),
            "interval_end": _json_safe(self.interval_end),
            "run_url": self.run_url,
            "report_uri": self.report_uri,
            "action_url": self.action_url,
            "dry_run": self.dry_run,
            "created_at": _json_safe(self.created_at),
        }

    @property
    def subject(self) -> str:
        """One line for an e-mail subject or a log prefix (line breaks in the title become spaces)."""
        event = f"{self.event}, dry run" if self.dry_run else self.event
        return " ".join(f"[flywheel {event}] {self.workload_id}: {self.title}".split())

    def text(self) -> str:
        """A readable plain-text message: title, interval, reasons, figures, report and run links."""
        lines = [self.subject]
        if self.interval_start is not None or self.interval_end is not None:
            lines.append(f"Interval: {_when(self.interval_start)} to {_when(self.interval_end)}")
        if self.dag_id or self.dag_run_id:
            lines.append(f"DAG run: {self.dag_id or '?'} / {self.dag_run_id or '?'}")
        if self.reasons:
            lines.append("Reasons:")
            lines += [f"  - {code}: {message}" for code, message in self._reason_pairs()]
        if self.figures:
            lines.append("Figures:")
            lines += [f"  - {name}: {_figure(value)}" for name, value in self.figures.items()]
        if self.report_uri:
            lines.append(f"Report: {self.report_uri}")
        if self.action_url:
            lines.append(f"Respond: {self.action_url}")
        if self.run_url:
            lines.append(f"Run: {self.run_url}")
        return "\n".join(lines)

    def html(self) -> str:
        """The message as an HTML fragment for e-mail; every value is escaped, only http(s) URLs link."""
        e = html.escape
        parts = [f"<h3>{e(self.subject)}</h3>"]
        meta = []
        if self.interval_start is not None or self.interval_end is not None:
            meta.append(f"Interval: {e(_when(self.interval_start))} to {e(_when(self.interval_end))}")
        if self.dag_id or self.dag_run_id:
            meta.append(
                f"DAG run: <code>{e(self.dag_id or '?')}</code> / <code>{e(self.dag_run_id or '?')}</code>"
            )
        if meta:
            parts.append("<p>" + "<br>".join(meta) + "</p>")
        if self.reasons:
            items = "".join(
                f"<li><code>{e(code)}</code>: {e(message)}</li>" for code, message in self._reason_pairs()
            )
            parts.append(f"<p>Reasons:</p><ul>{items}</ul>")
        if self.figures:
            rows = "".join(
                f"<tr><td>{e(str(name))}</td><td>{e(_figure(value))}</td></tr>"
                for name, value in self.figures.items()
            )
            parts.append(f"<table>{rows}</table>")
        links = [
            f"{label}: {_html_link(uri)}"
            for label, uri in (
                ("Report", self.report_uri),
                ("Respond", self.action_url),
                ("Run", self.run_url),
            )
            if uri
        ]
        if links:
            parts.append("<p>" + "<br>".join(links) + "</p>")
        return "\n".join(parts)

    def sink_path(self) -> str:
        """The local sink's JSON file, relative to the artifact store root."""
        moment = self.interval_start or self.created_at
        day = moment.astimezone(UTC).date() if moment.tzinfo else moment.date()
        stamp = f"{self.created_at:%Y%m%dT%H%M%S%f}"
        return artifacts.alert_path(self.workload_id, day, stamp, self.event)

    def _reason_pairs(self) -> list[tuple[str, str]]:
        return [(str(r.get("code", "")), str(r.get("message", ""))) for r in self.reasons]


def notify(
    config: FlywheelConfig, notification: Notification, *, context: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Send ``notification`` to the local sink and every channel of its workload's ``alerts`` block.

    Nothing is sent (only logged) when the event is not in ``notify_on``. Returns one delivery record
    per destination (``{"channel", "conn_id", "status": "sent"|"failed", "error"}``; the local sink's
    also has ``uri``). Every destination is tried; if any failed, :class:`AlertDeliveryError` names
    them afterwards. ``context`` (the Airflow task context, when there is one) is handed to the
    provider notifiers.
    """
    alerts = config.workload(notification.workload_id).alerts
    if notification.event not in alerts.notify_on:
        log.info(
            "Not notifying %s for workload %s: notify_on is %s (%s)",
            notification.event,
            notification.workload_id,
            ", ".join(alerts.notify_on) or "empty",
            notification.title,
        )
        return []
    deliveries: list[dict[str, Any]] = []
    if alerts.local_sink:
        deliveries.append(_write_local_sink(config, notification))
    for channel in alerts.channels:
        deliveries.append(_deliver(channel, notification, dict(context or {})))
    failed = [d for d in deliveries if d["status"] == "failed"]
    if failed:
        names = "; ".join(f"{d['channel']} ({d['conn_id'] or 'local'}): {d['error']}" for d in failed)
        raise AlertDeliveryError(
            f"{notification.event} notification of workload {notification.workload_id!r}: "
            f"{len(failed)} of {len(deliveries)} deliveries failed: {names}",
            deliveries=deliveries,
        )
    return deliveries


def failure_notification(workload_id: str, context: Mapping[str, Any]) -> Notification:
    """A ``task_failure`` notification built from an Airflow task context (``on_failure_callback``)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    task_id = getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", None) or "?"
    try_number = getattr(ti, "try_number", None)
    map_index = getattr(ti, "map_index", None)
    exception = context.get("exception")
    error = f"{type(exception).__name__}: {exception}" if exception is not None else "no exception recorded"
    figures: dict[str, Any] = {"try_number": try_number}
    if map_index is not None and map_index >= 0:
        figures["map_index"] = map_index
    return Notification(
        workload_id=workload_id,
        event="task_failure",
        title=f"task {task_id} failed" + (f" (try {try_number})" if try_number else ""),
        # Redacted before it is cut: a cut through a URL's credentials would leave them unrecognised.
        reasons=[{"code": "task_failed", "message": _cut(redact_text(error))}],
        figures=figures,
        dag_id=getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None),
        dag_run_id=context.get("run_id") or getattr(dag_run, "run_id", None),
        interval_start=context.get("data_interval_start"),
        interval_end=context.get("data_interval_end"),
        run_url=getattr(ti, "log_url", None),
    )


def decision_notification(
    workload: WorkloadConfig,
    event: str,
    decision: Mapping[str, Any],
    dag_run_id: str,
    *,
    action_url: str | None = None,
    report_url: str | None = None,
) -> Notification:
    """The notification of a decision (the ``decide`` task's XCom): ``promote``, ``alert``, ``no_change``,
    and with approval required ``approval_requested`` and ``not_approved``.

    A dry run's decision (``dry_run``) is marked so. ``action_url``: where a person answers;
    ``report_url``: the run report's address (default: its URI in the artifact store).
    """
    workload_id = workload.workload_id
    challenger = decision["challenger"]
    promoted = (
        "would be promoted to champion (dry run)" if decision.get("dry_run") else "promoted to champion"
    )
    titles = {
        "promote": f"{workload_id}: {challenger} {promoted}",
        "alert": f"{workload_id}: ALERT ({', '.join(r['code'] for r in decision['reasons'])})",
        "no_change": f"{workload_id}: the champion stays",
        "approval_requested": f"{workload_id}: approve promoting {challenger} to champion?",
        "not_approved": f"{workload_id}: {challenger} was not approved; the champion stays",
    }
    figures = {
        "primary_metric": decision["primary_metric"],
        "examples": decision["examples"],
        "champion": decision["champion"],
        "champion_version": decision["champion_version"],
        "challenger": decision["challenger"],
        "challenger_version": decision["challenger_version"],
        **{f"{decision['primary_metric']}.{key}": value for key, value in decision["figures"].items()},
    }
    return Notification(
        workload_id=workload_id,
        event=event,
        title=titles[event],
        reasons=decision["reasons"],
        figures={key: value for key, value in figures.items() if value is not None},
        dag_id=workload.dag_id,
        dag_run_id=dag_run_id,
        interval_start=_parse(decision.get("interval_start")),
        interval_end=_parse(decision.get("interval_end")),
        run_url=airflow_run_url(workload.dag_id, dag_run_id),
        report_uri=report_url or decision["report_uri"],
        action_url=action_url,
        dry_run=bool(decision.get("dry_run")),
    )


def airflow_run_url(dag_id: str, dag_run_id: str) -> str | None:
    """The DAG run's page in the Airflow UI (``[api] base_url``)."""
    from urllib.parse import quote

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback=None)
    return f"{base.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(dag_run_id, safe='')}" if base else None


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class FlywheelNotifier(BaseNotifier):
    """``on_failure_callback`` of a workload DAG's tasks: a ``task_failure`` notification per failure.

    Built with the workload id only (cheap: no config, no provider imports); the configuration is
    loaded when a task fails. It never raises out of the callback: a failed delivery is logged.
    """

    template_fields = ()

    def __init__(self, workload_id: str) -> None:
        super().__init__()
        self.workload_id = workload_id

    def notify(self, context: Any) -> None:
        """Send the failure of the task in ``context`` to the workload's alert destinations."""
        try:
            notify(load_config(), failure_notification(self.workload_id, context), context=context)
        except AlertDeliveryError as exc:
            log.error("Task failure alert of workload %s not fully delivered: %s", self.workload_id, exc)
        except Exception:
            log.exception("Task failure alert of workload %s could not be sent", self.workload_id)


def _write_local_sink(config: FlywheelConfig, notification: Notification) -> dict[str, Any]:
    level = logging.WARNING if notification.event in WARNING_EVENTS else logging.INFO
    log.log(level, "%s", notification.text())
    record: dict[str, Any] = {"channel": "local", "conn_id": None, "status": "sent", "error": None}
    try:
        store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
        path = store.path(notification.sink_path())
        store.write_json_atomic(path, notification.to_dict())
        record["uri"] = store.uri(path)
    except Exception as exc:
        record.update(status="failed", error=_cut(f"{type(exc).__name__}: {exc}"))
        log.error("Local alert sink of workload %s failed: %s", notification.workload_id, record["error"])
    return record


def _deliver(channel: AlertChannel, notification: Notification, context: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk import BaseHook

    record: dict[str, Any] = {
        "channel": channel.type,
        "conn_id": channel.conn_id,
        "status": "sent",
        "error": None,
    }
    secrets: list[str] = []
    try:
        if channel.conn_id is not None:
            conn = BaseHook.get_connection(channel.conn_id)
            secrets = [value for value in (conn.password, conn.login) if value]
        channel.send(notification, context)
        log.info(
            "Sent %s notification of %s via %s (%s)",
            notification.event,
            notification.workload_id,
            channel.type,
            channel.conn_id,
        )
    except Exception as exc:
        record.update(status="failed", error=_cut(_redact(f"{type(exc).__name__}: {exc}", secrets)))
        log.error("Alert channel %s (%s) failed: %s", channel.type, channel.conn_id, record["error"])
    return record


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _html_link(uri: str) -> str:
    escaped = html.escape(uri)
    if uri.startswith(("http://", "https://")):
        return f'<a href="{escaped}">{escaped}</a>'
    return f"<code>{escaped}</code>"


def _when(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "?"


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _json_safe(value: Any) -> Any:
    """``value`` with datetimes as ISO text, NumPy scalars as Python numbers, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return str(value)
