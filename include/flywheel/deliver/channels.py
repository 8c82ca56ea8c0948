"""Alert channels: where a workload's notifications go besides the local sink.

``alerts.channels[].type`` names one in :data:`ALERT_CHANNELS`: ``slack`` (an incoming webhook),
``email`` (SMTP) and ``webhook`` (a JSON POST) are built in and send through Airflow's provider
notifiers; the user's own is an :class:`AlertChannel` subclass named by its dotted path. A channel is
its own options model: the keys of its block are its fields, validated when the config is read.

This module imports nothing heavy (the config validates channel blocks with it at DAG parse time):
providers are imported when a notification is sent. The provider notifiers are called through their
``notify`` method, not ``__call__``, which would render the message as a Jinja template (reasons can
quote production data).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from flywheel.config import PluginConfig
from flywheel.plugins import Registry

if TYPE_CHECKING:
    from flywheel.deliver.alerts import Notification

WEBHOOK_TIMEOUT_S = 30.0
"""Timeout of a webhook channel's POST unless its connection's extra sets ``timeout``."""


class AlertChannel(PluginConfig):
    """A destination of notifications; subclass it (and name it by dotted path in ``type``) to add one.

    Its fields are the options of its ``alerts.channels`` entry. ``conn_id`` names the Airflow
    connection it sends through, if any: its password and login are removed from delivery errors.
    """

    conn_id: str | None = None

    @abstractmethod
    def send(self, notification: Notification, context: Mapping[str, Any]) -> None:
        """Deliver ``notification``; raise when it was not delivered. ``context``: the Airflow task
        context when there is one (else empty)."""


class SlackChannel(AlertChannel):
    """Alerts to Slack through an incoming-webhook connection (apache-airflow-providers-slack)."""

    type: Literal["slack"] = "slack"
    conn_id: str = Field("slack_default", min_length=1, description="A slackwebhook connection.")

    def send(self, notification: Notification, context: Mapping[str, Any]) -> None:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        text = _slack_escape(notification.text())
        SlackWebhookNotifier(slack_webhook_conn_id=self.conn_id, text=text).notify(dict(context))


class EmailChannel(AlertChannel):
    """Alerts by e-mail through an SMTP connection (apache-airflow-providers-smtp)."""

    type: Literal["email"] = "email"
    conn_id: str = Field("smtp_default", min_length=1, description="An smtp connection.")
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(
        ..., min_length=1, description="Recipients' e-mail addresses."
    )
    from_email: str | None = Field(None, description="Sender; null: the connection's from_email.")

    def send(self, notification: Notification, context: Mapping[str, Any]) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        SmtpNotifier(
            smtp_conn_id=self.conn_id,
            to=list(self.to),
            from_email=self.from_email,
            subject=notification.subject,
            html_content=notification.html(),
        ).notify(dict(context))


class WebhookChannel(AlertChannel):
    """Alerts as a JSON POST to an HTTP connection (apache-airflow-providers-http)."""

    type: Literal["webhook"] = "webhook"
    conn_id: str = Field(..., min_length=1, description="An http connection.")
    endpoint: str = Field("", description="Path appended to the connection's URL.")

    def send(self, notification: Notification, context: Mapping[str, Any]) -> None:
        from airflow.providers.http.notifications.http import HttpNotifier
        from airflow.sdk import BaseHook

        extra = BaseHook.get_connection(self.conn_id).extra_dejson
        HttpNotifier(
            http_conn_id=self.conn_id,
            endpoint=self.endpoint or None,
            json={**notification.to_dict(), "text": notification.text()},
            headers={"Content-Type": "application/json"},
            extra_options={"timeout": extra.get("timeout", WEBHOOK_TIMEOUT_S)},
        ).notify(dict(context))


ALERT_CHANNELS: Registry[type[AlertChannel]] = Registry(
    "alert channel",
    {
        "slack": "flywheel.deliver.channels:SlackChannel",
        "email": "flywheel.deliver.channels:EmailChannel",
        "webhook": "flywheel.deliver.channels:WebhookChannel",
    },
    base=AlertChannel,
)
"""``alerts.channels[].type`` -> its :class:`AlertChannel`; the user's own by dotted path."""


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn treats ``<...>`` as links and mentions (``<!channel>``): escape &, < and >."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
