"""The run report: one self-contained HTML page per flywheel DAG run (docs/report.md).

Operators open it from the Airflow UI and alerts link to it, so it must read on its own: no external
CSS, scripts or fonts, every plot an inline SVG (:mod:`flywheel.report.plots`). :func:`render_report`
puts the run's data (:mod:`flywheel.report.data`; any block may be missing when its stage did not run
or failed) and its plots into the Jinja2 template ``templates/run_report.html``, and
:func:`write_report` stores the page atomically in the artifact store.

The template is rendered with autoescaping on, so everything that comes from production logs or jobs
(tool names, candidate ids, reason messages, errors, URIs) is HTML-escaped; the plots' SVGs are the
only markup inserted as it is (``|safe`` in the template's ``figure`` macro). Only ``http``, ``https``
and ``file`` URIs become links; others (``s3://``, ``gs://``) are shown as text.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flywheel import artifacts
from flywheel.redact import redact_text
from flywheel.report import plots
from flywheel.report.data import (
    as_dict,
    curve_points,
    dicts,
    higher_is_better,
    metric_of,
    number,
    tool_count,
    variant_name,
)
from flywheel.storage import ArtifactStore

if TYPE_CHECKING:
    import jinja2

STAGES = ("extract", "validate", "build_dataset", "train", "evaluate", "decide")
"""The flywheel's stages in DAG order: the stage table lists each, run or not."""

# ---------------------------------------------------------------- metrics
# The report names no metric itself: the order, labels, directions and per-tool scores come from the
# metric definitions, through the data's ``metrics`` list (report.data.metric_views).

DEFAULT_PER_TOOL_METRIC = "function_name_and_args_accuracy"
"""The per-tool score shown when the primary metric has no per-tool breakdown."""


def _metric_names(run: _Run) -> list[str]:
    """The metrics any evaluation reports, in the definitions' order, then the others sorted."""
    present = {str(name) for e in run.evaluations for name in as_dict(e.get("metrics"))}
    return [m for m in run.metrics if m in present] + sorted(present - set(run.metrics))


def _ordered(run: _Run) -> list[tuple[str, dict[str, Any]]]:
    """Comparisons with the primary metric first, then guardrails in the definitions' order."""
    rank = {m: i for i, m in enumerate(run.metrics)}
    return sorted(
        run.comparisons.items(), key=lambda kv: (kv[0] != run.primary, rank.get(kv[0], len(rank)), kv[0])
    )


# ---------------------------------------------------------------- the page

_LINK_SCHEMES = ("http", "https", "file")
_MAX_TOOLS = 25
TEMPLATE = "run_report.html"


def render_report(data: Mapping[str, Any]) -> str:
    """The run report of one DAG run as a self-contained HTML page.

    ``data`` holds ``workload_id``, ``dag_id``, ``dag_run_id``, ``interval_start``,
    ``interval_end``, ``generated_at``, ``stages``, ``training``, ``evaluations``, ``decision``,
    ``trend``, ``savings``, ``recount`` and ``recount_days`` (docs/report.md); any of them may be
    missing or None, and each section then says it has no data.
    """
    run = _Run.from_data(data)
    return _template().render(
        data=data,
        run=run,
        reasons=dicts(run.decision.get("reasons")),
        key_figures=_key_figures(run),
        trend=_trend(run),
        evaluations=_evaluations(run),
        differences=_differences(run),
        paired=_paired(run),
        per_tool=_per_tool(run),
        training=_training(run),
        savings=_savings(as_dict(data.get("savings"))),
        quality=_quality(run),
        late_logs=_late_logs(data),
        stages=[
            (name, run.stages.get(name)) for name in [*STAGES, *(s for s in run.stages if s not in STAGES)]
        ],
        links=_links(run),
    )


def write_report(store: ArtifactStore, relative_path: str, html: str) -> str:
    """Write ``html`` atomically at ``relative_path`` under the store's root and return its URI.

    The caller chooses the path (the DAG uses :func:`flywheel.artifacts.report_path`); readers see
    the previous report or the new one, never a partial page.
    """
    path = store.path(relative_path)
    store.write_bytes_atomic(path, html.encode("utf-8"))
    return store.uri(path)


def _template() -> jinja2.Template:
    """The page template, loaded from the package once per process; autoescaping on."""
    return template_environment().get_template(TEMPLATE)


@functools.cache
def template_environment() -> jinja2.Environment:
    """The Jinja2 environment of the report pages (``templates/``; the run report and the workload's
    timeline, :mod:`flywheel.report.timeline`): autoescaping on, undefined names an error, and the
    text filters below."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flywheel.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        text=_text,
        signed=_signed,
        p_value=plots.p_value_text,
        seconds=_seconds,
        tokens=_tokens,
        variant=variant_name,
        error_text=_error_text,
        metric_cell=_metric_cell,
        model_text=_model_text,
    )
    environment.tests["linkable"] = _linkable
    return environment


@dataclass(frozen=True)
class _Run:
    """The parts of the report data that several sections read, with missing blocks normalised."""

    stages: dict[str, dict[str, Any]]
    training: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    decision: dict[str, Any]
    comparisons: dict[str, dict[str, Any]]
    primary: str
    metrics: dict[str, dict[str, Any]]
    """How each metric is shown (label, direction, per-tool key), by name, in report order."""
    trend: list[dict[str, Any]]
    """The workload's decisions up to this run's (:func:`flywheel.report.data.champion_trend`)."""

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> _Run:
        decision = as_dict(data.get("decision"))
        comparisons = as_dict(decision.get("comparisons"))
        return cls(
            stages={str(s.get("stage")): s for s in dicts(data.get("stages"))},
            training=dicts(data.get("training")),
            evaluations=dicts(data.get("evaluations")),
            decision=decision,
            comparisons={str(k): v for k, v in comparisons.items() if isinstance(v, dict)},
            primary=str(decision.get("primary_metric") or ""),
            metrics={str(m.get("name")): m for m in dicts(data.get("metrics"))},
            trend=dicts(data.get("trend")),
        )

    def summary(self, stage: str) -> dict[str, Any]:
        """The summary a stage recorded ({} when it did not run or recorded none)."""
        return as_dict(self.stages.get(stage, {}).get("summary"))

    def why(self, stage: str) -> str:
        """What ``stage``'s status says about its output: it failed, is running, did not run, ..."""
        status = self.stages.get(stage, {}).get("status")
        if status == "failed":
            return f"the {stage} stage failed"
        if status == "running":
            return f"the {stage} stage is still running"
        if status == "succeeded":
            return f"the {stage} stage recorded none"
        return f"the {stage} stage did not run"

    def absent(self, what: str, stage: str) -> str:
        """One line saying that ``what`` has no data, and why as far as ``stage``'s status tells."""
        return f"No {what}: {self.why(stage)}."

    def min_effect(self, comparison: dict[str, Any]) -> float | None:
        """The primary metric's minimum effect: the comparison's own, else the policy's."""
        own = number(comparison.get("min_effect"))
        return own if own is not None else number(as_dict(self.decision.get("policy")).get("min_effect"))

    def evaluation_of(self, side: str) -> dict[str, Any]:
        """The evaluation of the decision's ``champion`` or ``challenger`` ({} when there is none)."""
        who = as_dict(self.decision.get(side))
        if not who:
            return {}
        key = (who.get("candidate_id"), who.get("eval_type"))
        for evaluation in self.evaluations:
            if (evaluation.get("candidate_id"), evaluation.get("eval_type")) == key:
                return evaluation
        if who.get("eval_type") == "champion":
            return next((e for e in self.evaluations if e.get("eval_type") == "champion"), {})
        return {}


# ---------------------------------------------------------------- what each section shows
# Each returns the plain values its section of the template prints; "empty" is the one line a
# section (or part of one) shows instead when it has no data.


def _key_figures(run: _Run) -> dict[str, Any]:
    if not run.decision:
        return {"empty": run.absent("decision", "decide")}
    policy = run.decision.get("policy")
    return {
        "empty": None,
        "sides": [(side, as_dict(run.decision.get(side))) for side in ("champion", "challenger")],
        "comparisons": [
            _comparison_row(metric, c, run.min_effect(c), run.metrics) for metric, c in _ordered(run)
        ],
        "candidates": dicts(run.decision.get("candidates")),
        "policy": json.dumps(policy, indent=2, sort_keys=True, default=str) if policy else None,
    }


def _trend(run: _Run) -> dict[str, Any]:
    if not run.trend:
        return {"empty": "No trend: no decision of this workload is recorded up to this run."}
    return {"empty": None, "plot": plots.trend_plot(run.trend, run.metrics), "nights": len(run.trend)}


def _comparison_row(
    metric: str, c: dict[str, Any], min_effect: float | None, views: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One key-figures row; latencies in seconds, a relative margin as a share of the champion's value."""
    unit = _unit(metric, views)
    value = _seconds if unit == " s" else _text
    margin = number(c.get("margin"))
    return {
        "metric": metric,
        "role": c.get("role"),
        "champion": value(c.get("champion")),
        "challenger": value(c.get("challenger")),
        "interval": (
            f"{_signed(c.get('difference'))}{unit} [{_signed(c.get('ci_low'))}, {_signed(c.get('ci_high'))}]"
        ),
        "p_value": c.get("p_value"),
        "min_effect": min_effect,
        "threshold": c.get("threshold"),
        "margin": margin,
        "margin_share": f"{margin:.0%}" if c.get("relative") and margin is not None else None,
        "limit": None if c.get("limit") is None else value(c.get("limit")),
        "passed": c.get("passed"),
        "note": c.get("note"),
    }


def _evaluations(run: _Run) -> dict[str, Any]:
    if not run.evaluations:
        return {"empty": run.absent("evaluations", "evaluate")}
    names = _metric_names(run)
    scored = [e for e in run.evaluations if any(metric_of(e, m).get("value") is not None for m in names)]
    return {
        "empty": None,
        "plot": plots.metrics_plot(scored, names, run.metrics) if scored else None,
        "names": names,
        "lower_is_better": [m for m in names if not higher_is_better(m, run.metrics)],
        "rows": [(e, [metric_of(e, m) for m in names]) for e in run.evaluations],
    }


def _unit(metric: str, views: dict[str, dict[str, Any]]) -> str:
    """The unit of a run statistic's value (``" s"`` for the p95 latency); empty for a share of examples."""
    return str(as_dict(views.get(metric)).get("unit") or "")


def _other_scale(metric: str, comparison: dict[str, Any], views: dict[str, dict[str, Any]]) -> bool:
    """Whether a comparison is not a difference of rates (p95 latency in seconds, a relative margin)."""
    return bool(_unit(metric, views)) or bool(comparison.get("relative"))


def _differences(run: _Run) -> dict[str, Any]:
    if not run.decision:
        return {"empty": run.absent("paired differences", "decide")}
    rows = [
        (metric, c)
        for metric, c in _ordered(run)
        if number(c.get("difference")) is not None and not _other_scale(metric, c, run.metrics)
    ]
    if not rows:
        return {"empty": "No paired differences: the decision recorded none to draw."}
    return {
        "empty": None,
        "plot": plots.forest_plot(rows, run.min_effect(run.comparisons.get(run.primary, {})), run.metrics),
        "skipped": [m for m, c in run.comparisons.items() if _other_scale(m, c, run.metrics)],
    }


def _paired_split(comparison: dict[str, Any]) -> dict[str, int] | None:
    """The four paired-outcome counts of a binary metric, or only the discordant ones, or None.

    Both models' values are fractions of the same ``n`` examples, so the champion got
    ``champion * n`` right, of which ``champion_only`` the challenger missed: the rest both got right.
    """
    only_challenger = number(comparison.get("challenger_only"))
    only_champion = number(comparison.get("champion_only"))
    if only_challenger is None or only_champion is None:
        return None
    discordant = {"only challenger right": int(only_challenger), "only champion right": int(only_champion)}
    n = number(comparison.get("n"))
    champion, challenger = number(comparison.get("champion")), number(comparison.get("challenger"))
    if not n or champion is None or challenger is None:
        return discordant
    both_right = round(champion * n) - discordant["only champion right"]
    if both_right != round(challenger * n) - discordant["only challenger right"]:
        return discordant
    both_wrong = int(n) - both_right - sum(discordant.values())
    if both_right < 0 or both_wrong < 0:
        return discordant
    return {"both right": both_right, **discordant, "both wrong": both_wrong}


def _paired(run: _Run) -> dict[str, Any]:
    if not run.decision:
        return {"empty": run.absent("paired outcomes", "decide")}
    comparison = run.comparisons.get(run.primary, {})
    split = _paired_split(comparison)
    if split is None:
        return {"empty": "No paired outcomes: the decision recorded no discordant counts."}
    return {
        "empty": None,
        "plot": plots.paired_plot(split, run.primary, number(comparison.get("p_value"))),
        "discordant_only": len(split) < 4,
    }


def _per_tool(run: _Run) -> dict[str, Any]:
    champion = as_dict(run.evaluation_of("champion").get("per_tool"))
    challenger = as_dict(run.evaluation_of("challenger").get("per_tool"))
    if not run.decision:
        return {"empty": run.absent("per-tool comparison", "decide")}
    if not run.evaluations:
        return {"empty": run.absent("per-tool scores", "evaluate")}
    if not champion and not challenger:
        return {"empty": "No per-tool scores for the champion or the challenger."}
    key = as_dict(run.metrics.get(run.primary)).get("per_tool_key") or DEFAULT_PER_TOOL_METRIC
    labels = sorted(
        set(champion) | set(challenger), key=lambda label: (-tool_count(champion, challenger, label), label)
    )
    shown = labels[:_MAX_TOOLS]
    entries = [as_dict(side.get(label)) for side in (champion, challenger) for label in labels]
    # Every per-tool score the definitions name and the blocks hold, in the definitions' order.
    columns = [
        str(view["per_tool_key"])
        for view in run.metrics.values()
        if view.get("per_tool_key") and any(view["per_tool_key"] in entry for entry in entries)
    ]
    return {
        "empty": None,
        "plot": plots.per_tool_plot(shown, champion, challenger, key, run.metrics),
        "key": key,
        "champion": bool(champion),
        "shown": len(shown),
        "labels": len(labels),
        "columns": columns,
        "rows": [
            {
                "label": label,
                "n": tool_count(champion, challenger, label),
                "cells": [_sides(champion, challenger, label, column) for column in columns],
                "truncated": tuple(
                    None if count is None else int(count)
                    for count in _sides(champion, challenger, label, "truncated")
                ),
            }
            for label in labels
        ],
    }


def _sides(champion: dict[str, Any], challenger: dict[str, Any], label: str, key: str) -> tuple[Any, Any]:
    """``key`` of ``label`` in the champion's and the challenger's ``per_tool`` blocks (None: absent)."""
    return tuple(number(as_dict(side.get(label)).get(key)) for side in (champion, challenger))


def _training(run: _Run) -> dict[str, Any]:
    if not run.training:
        return {"empty": run.absent("training runs", "train")}
    curves = [
        t
        for t in run.training
        if curve_points(t, artifacts.TRAIN_LOSS) or curve_points(t, artifacts.VALIDATION_LOSS)
    ]
    return {"empty": None, "plot": plots.loss_plot(curves) if curves else None, "rows": run.training}


def _savings(block: dict[str, Any]) -> dict[str, Any]:
    """The teacher's and each student's latency, tokens and cost per request, and each against the teacher."""
    teacher = as_dict(block.get("teacher"))
    rows = [("teacher", teacher, True)] if teacher else []
    rows += [(variant_name(s), s, False) for s in dicts(block.get("students"))]
    if not rows:
        return {"empty": "No usage figures: neither the day's logs nor an evaluation recorded any."}

    def against_teacher(figures: dict[str, Any], key: str) -> str:
        mine, theirs = number(figures.get(key)), number(teacher.get(key))
        return "—" if mine is None or not theirs else f"{mine / theirs - 1:+.0%}"

    return {
        "empty": None,
        "plot": plots.savings_plot([(name, figures) for name, figures, _ in rows], block.get("currency")),
        "currency": block.get("currency"),
        "requests_per_cost": block.get("requests_per_cost"),
        "teacher": teacher,
        "rows": [
            {
                "name": name,
                "is_teacher": is_teacher,
                "figures": figures,
                "cost": _money(figures.get("cost_per_1k")),
                "vs_teacher": None
                if is_teacher
                else [against_teacher(figures, k) for k in ("latency_p95_s", "tokens_in", "cost_per_1k")],
            }
            for name, figures, is_teacher in rows
        ],
    }


def _quality(run: _Run) -> dict[str, Any]:
    validate = run.summary("validate")
    counts = {k: number(validate.get(k)) for k in ("extracted", "clean", "quarantined")}
    if any(v is not None for v in counts.values()):
        reasons = {str(k): v for k, v in as_dict(validate.get("reasons")).items() if number(v) is not None}
        failed = validate.get("failed_expectations")
        if isinstance(failed, list):
            failed = ", ".join(str(x) for x in failed)
        pii = {str(k): n for k, v in as_dict(validate.get("pii")).items() if (n := number(v)) is not None}
        validation = {
            "empty": None,
            "plot": plots.quality_plot(counts, reasons),
            "duplicates": validate.get("duplicates_in_day"),
            "success": validate.get("success"),
            "failed": failed or None,
            # Values the PII scrubber replaced in clean records, per kind ("none" when it found nothing).
            "pii": ", ".join(f"{kind} {_text(int(n))}" for kind, n in sorted(pii.items()))
            or ("none" if "pii" in validate else None),
        }
    else:
        validation = {"empty": run.absent("validation summary", "validate")}
    dataset = run.summary("build_dataset")
    if dataset:
        split = as_dict(dataset.get("counts"))
        built = {
            "empty": None,
            "dataset_id": dataset.get("dataset_id"),
            "counts": [split.get(k) for k in ("train", "validation", "evaluation")],
        }
    else:
        built = {"empty": run.absent("dataset", "build_dataset")}
    return {"validation": validation, "dataset": built}


def _late_logs(data: Mapping[str, Any]) -> dict[str, Any]:
    """The earlier days this run counted again in the log store (``recount.json``): each one's records at
    extraction, the store's count now, whether it moved, and the alert sent for it."""
    recount = as_dict(data.get("recount"))
    recounts = dicts(recount.get("recounts"))
    if not recounts:
        if data.get("recount_days") == 0:
            return {"empty": "No recount: log_source.recount_days is 0, so no earlier day is counted again."}
        return {"empty": "No recount recorded: the recount task did not run, or failed before recording."}
    moved = recount.get("moved_days") if isinstance(recount.get("moved_days"), list) else []
    channels = {
        alert.get("day"): ", ".join(str(d.get("channel")) for d in dicts(alert.get("deliveries")))
        for alert in dicts(recount.get("alerts"))
    }
    rows = []
    for day in recounts:
        extracted, counted = number(day.get("extracted")), number(day.get("counted"))
        rows.append(
            {
                "day": day.get("day"),
                "extracted": day.get("extracted"),
                "counted": day.get("counted"),
                "difference": None if extracted is None or counted is None else int(counted - extracted),
                "status": str(day.get("status") or "").replace("_", " ") or None,
                "moved": day.get("day") in moved,
                "alert": channels.get(day.get("day")) or None,
            }
        )
    return {"empty": None, "rows": rows, "moved": sum(row["moved"] for row in rows)}


def _links(run: _Run) -> list[tuple[str, Any, bool]]:
    """``(label, value, is_uri)`` of each output the run published."""
    items: list[tuple[str, Any, bool]] = []
    docs = run.summary("validate").get("data_docs_uri")
    if docs:
        items.append(("Data Docs of the validation", docs, True))
    dataset_id = run.summary("build_dataset").get("dataset_id")
    if dataset_id:
        items.append(("dataset", dataset_id, False))
    for t in run.training:
        if t.get("adapter_uri"):
            items.append((f"adapter of {_text(t.get('candidate_id'))}", t["adapter_uri"], True))
    return items


# ---------------------------------------------------------------- text (the template's filters)
# Plain text: the template escapes it.


def _text(value: Any) -> str:
    """Any value as text: numbers formatted, booleans as yes/no, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def _signed(value: Any) -> str:
    n = number(value)
    return "—" if n is None else f"{n:+.3f}"


def _seconds(value: Any) -> str:
    n = number(value)
    return "—" if n is None else f"{n:,.2f} s"


def _tokens(value: Any) -> str:
    """Tokens per request, to a tenth of a token."""
    n = number(value)
    return "—" if n is None else f"{n:,.1f}"


def _money(value: Any) -> str:
    """A cost to four significant digits (it may be a fraction of a cent), a dash for none."""
    n = number(value)
    return "—" if n is None else f"{n:,.4g}"


def _metric_cell(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return f"— (n={_text(metric.get('n'))})" if metric else "—"
    return f"{_text(metric.get('value'))} [{_text(metric.get('ci_low'))}, {_text(metric.get('ci_high'))}]"


def _model_text(model: Any) -> str:
    """A model reference without its version (shown on its own), as JSON for a dict."""
    if isinstance(model, dict):
        return json.dumps({k: v for k, v in model.items() if k != "version"}, sort_keys=True, default=str)
    return str(model) if model else ""


def _error_text(error: Any) -> str:
    """A job's error (text, or an ``error.json`` dict: its class and message), every URL in it without
    its credentials; "" for none."""
    if not error:
        return ""
    if isinstance(error, dict):
        text = ": ".join(str(error[k]) for k in ("error", "message") if error.get(k)) or json.dumps(error)
    else:
        text = str(error)
    return redact_text(text)


def _linkable(uri: Any) -> bool:
    """Whether ``uri`` may become a link: http(s) and file only (not s3://, not javascript:)."""
    try:
        return urlsplit(str(uri)).scheme.lower() in _LINK_SCHEMES
    except ValueError:
        return False
