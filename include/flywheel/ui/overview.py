"""What the Flywheel page shows of one workload, read from the metadata database and the artifact store.

:func:`workload_overview` reads the registry (:mod:`flywheel.deliver.registry`: the champion and the
history of its alias), the champion's primary metric per night (the run report's trend plot), the
latest runs with their decisions, and which of each run's pages (run report, Data Docs) the artifact
store holds, as plain values the page template renders.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select

from flywheel import artifacts
from flywheel.config import FlywheelConfig, WorkloadConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Run, as_utc
from flywheel.deliver import registry
from flywheel.report.data import (
    as_dict,
    champion_trend,
    dicts,
    metric_of,
    metric_views,
    number,
    variant_name,
)
from flywheel.report.plots import Plot, trend_plot
from flywheel.storage import ArtifactStore

LATEST_RUNS = 14
"""Runs listed per workload, newest first (two weeks of nightly runs)."""

FIGURES = ("champion", "challenger", "difference", "ci_low", "ci_high", "p_value", "n")
"""The primary metric's figures of a decision the page shows (its ``comparisons`` entry)."""


@dataclass(frozen=True)
class Champion:
    """The version that holds the workload's ``champion`` alias and the move that gave it the alias."""

    version: registry.VersionInfo
    variant: str
    """``candidate/eval_type`` (report.data.variant_name)."""
    primary_metric: str
    value: float | None
    """The primary metric's value as evaluated when the version was registered; None if not recorded."""
    promoted: registry.AliasMove | None
    """The latest move of the alias to this version (who, when, why); None only for rows without one."""


@dataclass(frozen=True)
class RunLine:
    """One run of the workload with its decision (if it got one) and links to its pages."""

    day: date
    """The first day of the run's data interval: its reports live under ``reports/<workload>/<day>/``."""
    dag_run_id: str
    recorded_at: datetime
    outcome: str | None
    """``promote``, ``alert`` or ``no_change``; None when the run has no decision (yet)."""
    delivery: str | None
    """What became of a decision that did not simply promote or stand: ``dry run``, ``not approved:
    rejected by bob``, ``superseded``, ``promotion failed`` ...; None otherwise."""
    reasons: list[dict[str, Any]]
    primary_metric: str | None
    champion: str | None
    """The compared champion as ``variant vN``; None when there was none."""
    challenger: str | None
    figures: dict[str, float | None]
    """The primary metric's ``FIGURES`` (values None where the decision has none)."""
    report: str | None
    """The run report's path in the store (relative to its root), None when none was written."""
    data_docs: str | None
    """The day's Data Docs front page in the store, None when validation wrote none."""


@dataclass(frozen=True)
class WorkloadOverview:
    """Everything the page shows of one workload."""

    workload: WorkloadConfig
    champion: Champion | None
    history: list[registry.AliasMove]
    """Every move of the champion alias, newest first."""
    trend: Plot | None
    """The primary metric of the champion (and challenger) per night; None before the first decision."""
    runs: list[RunLine]
    """The latest runs, newest data interval first (``LATEST_RUNS`` at most)."""


def workload_overview(config: FlywheelConfig, workload_id: str, store: ArtifactStore) -> WorkloadOverview:
    """The workload's champion, alias history and latest runs (with their decisions and pages)."""
    workload = config.workload(workload_id)
    history = registry.history(config.metadata, workload_id)
    return WorkloadOverview(
        workload=workload,
        champion=_champion(config, workload, history),
        history=history[::-1],
        trend=_trend(config, workload),
        runs=_runs(config, workload, store),
    )


def _champion(
    config: FlywheelConfig, workload: WorkloadConfig, history: list[registry.AliasMove]
) -> Champion | None:
    current = registry.champion(config.metadata, workload.workload_id)
    if current is None:
        return None
    primary = workload.decision.primary_metric
    return Champion(
        version=current,
        variant=variant_name({"candidate_id": current.candidate_id, "eval_type": current.eval_type}),
        primary_metric=primary,
        value=number(metric_of({"metrics": current.metrics}, primary).get("value")),
        promoted=next((move for move in reversed(history) if move.version == current.version), None),
    )


def _trend(config: FlywheelConfig, workload: WorkloadConfig) -> Plot | None:
    points = champion_trend(config, workload.workload_id)
    if not points:
        return None
    named = {"comparisons": dict.fromkeys(str(p.get("primary_metric")) for p in points)}
    views = metric_views([], named, workload.evaluation.settings.metrics)
    return trend_plot(points, {str(view["name"]): view for view in views})


def _runs(config: FlywheelConfig, workload: WorkloadConfig, store: ArtifactStore) -> list[RunLine]:
    with session_scope(config.metadata) as session:
        rows = session.execute(
            select(Run, Decision)
            .outerjoin(Decision, Decision.run_id == Run.id)
            .where(Run.workload_id == workload.workload_id)
            .order_by(Run.interval_start.desc(), Run.id.desc())
            .limit(LATEST_RUNS)
        ).all()
    # The store is listed after the session closed: no transaction stays open during its requests.
    days = {as_utc(run.interval_start).date() for run, _ in rows}
    pages = {day: _pages(store, workload.workload_id, day) for day in days}
    lines = []
    for run, decision in rows:
        day = as_utc(run.interval_start).date()
        primary = decision.primary_metric if decision else None
        comparison = as_dict(as_dict(decision.comparisons if decision else None).get(primary))
        lines.append(
            RunLine(
                day=day,
                dag_run_id=run.dag_run_id,
                recorded_at=as_utc(run.created_at),
                outcome=decision.outcome if decision else None,
                delivery=_delivery(decision),
                reasons=dicts(decision.reasons if decision else None),
                primary_metric=primary,
                champion=_side(decision.champion if decision else None),
                challenger=_side(decision.challenger if decision else None),
                figures={key: number(comparison.get(key)) for key in FIGURES},
                report=pages[day].get(artifacts.REPORT_NAME),
                data_docs=pages[day].get(artifacts.DATA_DOCS),
            )
        )
    return lines


def _delivery(decision: Decision | None) -> str | None:
    """The note the outcome gets when its decision was a dry run or its promotion did not happen."""
    if decision is None:
        return None
    if decision.dry_run:
        return "dry run"
    promotion = as_dict(decision.promotion)
    status = promotion.get("status")
    if status in (None, "promoted", "already_champion"):
        return None
    if status == "not_approved":
        by = as_dict(as_dict(promotion.get("approval")).get("by")).get("name")
        return f"not approved: {promotion.get('reason')}{f' by {by}' if by else ''}"
    return "promotion failed" if status == "failed" else str(status).replace("_", " ")


def _side(side: Any) -> str | None:
    """A decision's champion or challenger as ``variant vN``."""
    side = as_dict(side)
    if not side:
        return None
    version = side.get("version")
    return variant_name(side) + (f" v{version}" if version is not None else "")


def _pages(store: ArtifactStore, workload_id: str, day: date) -> dict[str, str]:
    """The day's run report and Data Docs front page that the store holds: name -> path under the root.

    One listing of the day's reports directory (a request on object storage), fresh every time: a
    re-run may have written the pages since the last look.
    """
    reports = artifacts.reports_dir(workload_id, day)
    directory = store.path(reports)
    store.fs.invalidate_cache(directory)
    try:
        names = {posixpath.basename(entry.rstrip("/")) for entry in store.fs.ls(directory, detail=False)}
    except FileNotFoundError:
        return {}
    pages = {}
    if artifacts.REPORT_NAME in names:
        pages[artifacts.REPORT_NAME] = artifacts.report_path(workload_id, day)
    if artifacts.DATA_DOCS in names:
        pages[artifacts.DATA_DOCS] = artifacts.data_docs_index(artifacts.data_docs_dir(workload_id, day))
    return pages
