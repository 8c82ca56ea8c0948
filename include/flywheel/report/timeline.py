"""The timeline report: every recorded night of one workload on one page (docs/report.md, "The timeline").

Where the run report shows one night in depth, the timeline shows how the nights follow each other:
per night the day's record counts and its dataset's (with the records left out for retired tools),
whether the run trained and why (``training.retrain``), the champion's and the challenger's primary
metric with their 95% intervals, and the decision with its reasons; above them the trend plot
(:func:`flywheel.report.plots.trend_plot`) and the milestones of the story the nights tell: the first
promotion, the night a change in the data was noticed and the night a challenger trained on the
changed data took over.

:func:`timeline_data` reads it all back from the metadata database (one JSON-safe dict),
:func:`render_timeline` renders the page (same style and text filters as the run report),
:func:`write_timeline` stores it at ``reports/<workload_id>/timeline.html`` and
:func:`timeline_table` is the plain-text table ``flywheel demo scenario`` prints.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import date
from typing import Any

from sqlalchemy import select

from flywheel import artifacts
from flywheel.config import FlywheelConfig
from flywheel.db.engine import session_scope
from flywheel.db.models import Decision, Run, RunStage, as_utc, utcnow
from flywheel.intervals import partition_day
from flywheel.report.data import as_dict, champion_trend, dicts, number
from flywheel.storage import ArtifactStore
from flywheel.train.retrain import TRIGGERING_ALERTS

TEMPLATE = "timeline.html"

QUIET_RETRAIN_CODES = {"policy_always", "no_champion", "training_due"}
"""Reasons to train that say nothing about the data: a fixed policy, no champion yet, a due date."""
DRIFT_REASON_CODES = {*TRIGGERING_ALERTS, "tool_shift"}
"""Decision reasons that report a change in the data or in how the champion does on it: the champion
below its floor, a failed batch, a shifted tool distribution (a promotion may carry one too)."""


def timeline_data(
    config: FlywheelConfig, workload_id: str, *, changed_on: date | None = None
) -> dict[str, Any]:
    """Every recorded run of ``workload_id``, oldest data interval first, as one JSON-safe dict.

    ``changed_on``: the first day (partition day) whose logs follow a changed backend API, when it is
    known (``flywheel demo scenario`` seeds one); the milestones then count the nights from it.
    """
    from flywheel.evaluate.metrics import get_metric, report_metrics

    workload = config.workload(workload_id)
    policy = workload.decision
    primary = get_metric(policy.primary_metric).name
    trend = champion_trend(config, workload_id)
    scored = {point["dag_run_id"]: point for point in trend}  # a run has one decision at most
    with session_scope(config.metadata) as session:
        runs = session.scalars(
            select(Run)
            .where(Run.workload_id == workload_id)
            .order_by(Run.interval_start, Run.interval_end, Run.created_at, Run.id)
        ).all()
        run_ids = [run.id for run in runs]
        stages: dict[int, dict[str, RunStage]] = {}
        for row in session.scalars(
            select(RunStage).where(RunStage.run_id.in_(run_ids)).order_by(RunStage.id)
        ):
            stages.setdefault(row.run_id, {})[row.stage] = row  # the last attempt of each stage wins
        decisions = {
            d.run_id: d for d in session.scalars(select(Decision).where(Decision.run_id.in_(run_ids)))
        }
        nights = [
            _night(run, stages.get(run.id, {}), decisions.get(run.id), scored.get(run.dag_run_id))
            for run in runs
        ]
    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    folder = posixpath.dirname(artifacts.timeline_path(workload_id))
    for night in nights:
        report = artifacts.report_path(workload_id, date.fromisoformat(night["day"]))
        # Relative to the timeline's own folder, so the link works wherever the store is browsed.
        night["report"] = posixpath.relpath(report, folder) if store.fs.exists(store.path(report)) else None
        night["signals"] = _signals(night, policy.drift_floor, workload.data_quality.max_tool_shift)
    return {
        "workload_id": workload_id,
        "dag_id": workload.dag_id,
        "generated_at": utcnow().isoformat(),
        "primary_metric": primary,
        "floor": policy.floor,
        "champion_floor": policy.drift_floor,
        "max_tool_shift": workload.data_quality.max_tool_shift,
        "retrain_policy": workload.training.retrain.policy,
        "changed_on": None if changed_on is None else changed_on.isoformat(),
        "nights": nights,
        "trend": trend,
        "metrics": {
            view.name: asdict(view)
            for view in report_metrics([primary], workload.evaluation.settings.metrics)
        },
        "milestones": milestones(nights, changed_on),
    }


def _night(
    run: Run, stages: dict[str, RunStage], decision: Decision | None, point: dict[str, Any] | None
) -> dict[str, Any]:
    """One run: its records, its training, both sides' scores and its decision."""
    validate = as_dict(stages["validate"].summary) if "validate" in stages else {}
    dataset = as_dict(stages["build_dataset"].summary) if "build_dataset" in stages else {}
    train = stages.get("train")
    summary = as_dict(train.summary) if train is not None else {}
    retrain = as_dict(summary.get("retrain"))
    candidates = dicts(summary.get("candidates"))
    return {
        "day": partition_day(as_utc(run.interval_start)).isoformat(),
        "night": as_utc(run.interval_end).date().isoformat(),
        "dag_run_id": run.dag_run_id,
        "records": {
            key: validate.get(key)
            for key in ("extracted", "clean", "quarantined", "tool_shift", "success", "failed_expectations")
        }
        if validate
        else None,
        # The dataset the night trained and evaluated on; stale_records: left out for retired tools.
        "dataset": {
            "train": as_dict(dataset.get("counts")).get("train"),
            "evaluation": as_dict(dataset.get("counts")).get("evaluation"),
            "stale_records": dataset.get("stale_records"),
        }
        if dataset.get("counts")
        else None,
        "training": None
        if train is None or train.status == "running"
        else {
            # Before retrain policies (or when the plan is missing) a run trained when it planned jobs.
            "trained": bool(retrain["train"]) if "train" in retrain else bool(candidates),
            "policy": retrain.get("policy"),
            "reasons": dicts(retrain.get("reasons")),
            "adapters": sum(c.get("status") == "succeeded" for c in candidates),
            "seconds": sum(number(c.get("wall_seconds")) or 0.0 for c in candidates) or None,
        },
        "champion": (point or {}).get("champion"),
        "challenger": (point or {}).get("challenger"),
        "decision": None
        if decision is None
        else {
            "outcome": decision.outcome,
            "reasons": decision.reasons,
            "promotion": decision.promotion,
            "challenger": decision.challenger,
        },
        "failed_stages": [name for name, row in stages.items() if row.status == "failed"],
    }


def _signals(night: dict[str, Any], champion_floor: float, max_tool_shift: float) -> list[str]:
    """What in this night's run says the data or the champion changed (codes; [] when nothing did).

    The decision's reasons about the data (:data:`DRIFT_REASON_CODES`, whatever its outcome), the
    retrain triggers about the data or the champion, the champion's score below its floor, a tool
    distribution that shifted beyond ``max_tool_shift``.
    """
    decision = night["decision"] or {}
    signals = [
        str(r.get("code")) for r in dicts(decision.get("reasons")) if r.get("code") in DRIFT_REASON_CODES
    ]
    training = night["training"] or {}
    if training.get("trained"):
        signals += [
            str(r.get("code"))
            for r in dicts(training.get("reasons"))
            if r.get("code") not in QUIET_RETRAIN_CODES
        ]
    value = number(as_dict(night["champion"]).get("value"))
    if value is not None and value < champion_floor:
        signals.append("champion_below_floor")
    shift = number(as_dict(night["records"]).get("tool_shift"))
    if shift is not None and shift > max_tool_shift:
        signals.append("tool_shift")
    return list(dict.fromkeys(signals))


def milestones(nights: list[dict[str, Any]], changed_on: date | None) -> dict[str, Any]:
    """The story of the nights (days are partition days, ISO dates; None: it did not happen).

    ``first_promotion``: the first night whose promotion moved the champion. ``trained`` / ``nights``:
    how many runs trained, of how many. With ``changed_on``: ``noticed``, the first night from that
    day on with a signal (an alert, a retrain trigger, the champion below its floor, a tool shift),
    and ``recovered``, the first night from then on that promoted a challenger it trained itself,
    with the nights each took (``nights_to_notice``, counted from ``changed_on``;
    ``nights_to_recover``, from ``noticed``).
    """

    def promoted(night: dict[str, Any]) -> bool:
        return as_dict(as_dict(night["decision"]).get("promotion")).get("status") == "promoted"

    def trained(night: dict[str, Any]) -> bool:
        return bool(as_dict(night["training"]).get("trained"))

    first = next((n["day"] for n in nights if promoted(n)), None)
    story: dict[str, Any] = {
        "first_promotion": first,
        "trained": sum(trained(n) for n in nights),
        "nights": len(nights),
        "changed_on": None if changed_on is None else changed_on.isoformat(),
        "noticed": None,
        "nights_to_notice": None,
        "recovered": None,
        "nights_to_recover": None,
    }
    if changed_on is None:
        return story
    after = [n for n in nights if date.fromisoformat(n["day"]) >= changed_on]
    noticed = next((n for n in after if n["signals"]), None)
    if noticed is None:
        return story
    noticed_day = date.fromisoformat(noticed["day"])
    story |= {"noticed": noticed["day"], "nights_to_notice": (noticed_day - changed_on).days}
    recovered = next(
        (
            n
            for n in after
            if date.fromisoformat(n["day"]) >= noticed_day
            and promoted(n)
            and trained(n)
            and as_dict(as_dict(n["decision"]).get("challenger")).get("eval_type") == "customized"
        ),
        None,
    )
    if recovered is not None:
        story |= {
            "recovered": recovered["day"],
            "nights_to_recover": (date.fromisoformat(recovered["day"]) - noticed_day).days,
        }
    return story


def render_timeline(data: Mapping[str, Any]) -> str:
    """The timeline of :func:`timeline_data` as a self-contained HTML page (inline SVG, no scripts)."""
    from flywheel.report.plots import OUTCOME_MARKERS, trend_plot
    from flywheel.report.render import template_environment

    return (
        template_environment()
        .get_template(TEMPLATE)
        .render(
            data=data,
            plot=trend_plot(dicts(data.get("trend")), as_dict(data.get("metrics"))),
            outcome_colours={outcome: colour for outcome, (_, colour) in OUTCOME_MARKERS.items()},
            story=as_dict(data.get("milestones")),
        )
    )


def write_timeline(config: FlywheelConfig, data: Mapping[str, Any]) -> str:
    """Store the page of ``data`` (:func:`timeline_data`) at ``reports/<workload_id>/timeline.html``
    (atomically: readers see the previous page or this one); return its URI."""
    from flywheel.report.render import write_report

    store = ArtifactStore(config.artifact_store.root, config.artifact_store.storage_options)
    return write_report(store, artifacts.timeline_path(str(data["workload_id"])), render_timeline(data))


# ---------------------------------------------------------------- the plain-text table


def timeline_table(data: Mapping[str, Any]) -> str:
    """One line per night, for a terminal: records, training, both sides' scores, the decision."""
    header = ("day", "records (clean/quarantined)", "trained", "champion", "challenger", "decision")
    rows = [header] + [_table_row(night) for night in dicts(data.get("nights"))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _table_row(night: dict[str, Any]) -> tuple[str, ...]:
    records = as_dict(night.get("records"))
    counts = "—"
    if records:
        counts = f"{records.get('extracted')} ({records.get('clean')}/{records.get('quarantined')})"
    stale = as_dict(night.get("dataset")).get("stale_records")
    if stale:
        counts += f", {stale} stale"
    training = as_dict(night.get("training"))
    if not training:
        trained = "—"
    else:
        codes = _codes(training.get("reasons"))
        trained = ("yes" if training.get("trained") else "no") + (f" ({codes})" if codes else "")
    decision = as_dict(night.get("decision"))
    if decision:
        outcome = f"{decision.get('outcome')} ({_codes(decision.get('reasons'))})"
        promotion = as_dict(decision.get("promotion"))
        if promotion.get("status") == "promoted":
            outcome += f" -> v{promotion.get('version')}"
        elif promotion:
            outcome += f" [{promotion.get('status')}]"
    else:
        failed = ", ".join(night.get("failed_stages") or [])
        outcome = f"no decision ({failed} failed)" if failed else "no decision"
    return (
        str(night.get("day")),
        counts,
        trained,
        _score(night.get("champion")),
        _score(night.get("challenger")),
        outcome,
    )


def _codes(reasons: Iterable[Any] | Any) -> str:
    return ", ".join(str(r.get("code")) for r in dicts(reasons))


def _score(side: Any) -> str:
    """``0.547 [0.42, 0.67] v2``: a side's value, 95% interval and version; a dash for none."""
    side = as_dict(side)
    value = number(side.get("value"))
    if value is None:
        return "—"
    low, high = number(side.get("ci_low")), number(side.get("ci_high"))
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    version = f" v{side['version']}" if side.get("version") is not None else ""
    return f"{value:.3f}{interval}{version}"
