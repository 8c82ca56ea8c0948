"""The flywheel's durable outputs as Airflow assets, one set per workload (docs/operations.md, "Assets").

=================  ==============================================  ==================  =================
asset              name / URI                                      emitted by          partition key
=================  ==============================================  ==================  =================
raw day            ``flywheel.<workload>.raw_day``                 ``extract``         the day
clean day          ``flywheel.<workload>.clean_day``               ``validate``        the day
dataset            ``flywheel.<workload>.dataset``                 ``build_dataset``   none
champion           ``flywheel.<workload>.champion``                ``promote``         none
=================  ==============================================  ==================  =================

Each asset's URI is ``x-flywheel://<workload>/<kind>``: it names the output, wherever the artifact
store is; the event's ``extra`` says where this event's data lives (``uri``) and its key figures.

The raw and clean days are day-partitioned: each event carries the day (``YYYY-MM-DD``, the day the
data interval starts on) as its partition key, set by the task itself, so a backfill's or a re-run's
event names the day it rewrote and a consumer on a ``PartitionedAssetTimetable`` gets one run per
day. The dataset spans a window of days, and the champion has none: their events are plain.

A task emits its event only when it succeeds: a failed extraction or a batch that failed its
expectations emits nothing. ``promote`` emits the champion's event only when the alias moved (through
the alias ``flywheel.<workload>.promotions``): a dry run, a superseded decision or a repeat moves
nothing, so a "champion changed" consumer is not woken for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from airflow.sdk import Asset, AssetAlias

SCHEME = "x-flywheel"
"""The URI scheme of the flywheel's assets (``x-``: a scheme Airflow leaves as it is)."""


def _asset(workload_id: str, kind: str) -> Asset:
    return Asset(name=f"flywheel.{workload_id}.{kind}", uri=f"{SCHEME}://{workload_id}/{kind}")


def raw_day(workload_id: str) -> Asset:
    """The workload's raw day: the extracted logs of one data interval (partition key: the day)."""
    return _asset(workload_id, "raw_day")


def clean_day(workload_id: str) -> Asset:
    """The workload's clean day: the validated, scrubbed records of one day (partition key: the day)."""
    return _asset(workload_id, "clean_day")


def dataset(workload_id: str) -> Asset:
    """The workload's latest dataset: train, validation and evaluation splits of the training window."""
    return _asset(workload_id, "dataset")


def champion(workload_id: str) -> Asset:
    """The workload's champion: its event says the ``champion`` alias moved to another model version."""
    return _asset(workload_id, "champion")


def promotions(workload_id: str) -> AssetAlias:
    """``promote``'s outlet: the champion's event is added through it only when the alias moved."""
    return AssetAlias(name=f"flywheel.{workload_id}.promotions")


DAY_FIGURES = {
    "raw_day": ("uri", "records", "version", "interval_start", "interval_end"),
    "clean_day": (
        "clean_uri",
        "quarantine_uri",
        "extracted",
        "clean",
        "quarantined",
        "tool_shift_exceeded",
        "interval_start",
        "interval_end",
    ),
}
"""What a day's event carries in ``extra`` from its task's summary."""

DATASET_FIGURES = ("dataset_id", "uri", "manifest_uri", "counts", "first_day", "last_day", "content_hash")
"""What the dataset's event carries in ``extra`` from ``build_dataset``'s summary."""


def emit_day(outlet_events: Any, asset: Asset, day: date, summary: Mapping[str, Any]) -> None:
    """Attach the day's partition key and figures to the running task's event for ``asset`` (a raw or
    clean day). ``outlet_events``: the task context's accessors of its outlets' events."""
    kind = asset.uri.rsplit("/", 1)[1]
    events = outlet_events[asset]
    events.add_partitions(day.isoformat())
    events.extra = {"day": day.isoformat(), **{key: summary.get(key) for key in DAY_FIGURES[kind]}}


def emit_dataset(outlet_events: Any, asset: Asset, summary: Mapping[str, Any]) -> None:
    """Attach the dataset's figures to the running task's event for ``asset``."""
    outlet_events[asset].extra = {key: summary.get(key) for key in DATASET_FIGURES}


def emit_champion(outlet_events: Any, workload_id: str, promotion: Mapping[str, Any]) -> bool:
    """Emit the champion's event when ``promotion`` (what ``promote`` did) moved the alias; True if so."""
    if promotion.get("status") != "promoted":
        return False
    extra = {
        "version": promotion["version"],
        "previous_version": promotion["previous_version"],
        "alias_event_id": promotion["alias_event_id"],
        "approved_by": ((promotion.get("approval") or {}).get("by") or {}).get("name"),
    }
    outlet_events[promotions(workload_id)].add(champion(workload_id), extra=extra)
    return True
