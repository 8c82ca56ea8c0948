"""An alert channel: ``alerts: {channels: [{type: "my_flywheel.alerts:TeamsChannel", conn_id: ...}]}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from flywheel.deliver.channels import AlertChannel

if TYPE_CHECKING:
    from flywheel.deliver.alerts import Notification


class TeamsChannel(AlertChannel):
    """Posts the notification's text to a Microsoft Teams incoming webhook (an http connection's URL)."""

    conn_id: str = Field(..., min_length=1, description="An http connection whose host is the webhook URL.")

    def send(self, notification: Notification, context: Mapping[str, Any]) -> None:
        import httpx
        from airflow.sdk import BaseHook

        url = BaseHook.get_connection(self.conn_id).host
        httpx.post(url, json={"text": notification.text()}, timeout=30.0).raise_for_status()
