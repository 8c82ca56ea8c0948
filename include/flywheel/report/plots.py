"""The run report's plots: six matplotlib figures, each returned as an inline SVG element.

matplotlib is imported inside functions only (the DAG files import the task modules, and must parse
fast), and figures are built with :class:`matplotlib.figure.Figure` directly: nothing is registered
with pyplot, so no GUI backend is involved and each figure is freed as soon as its SVG is written.

matplotlib escapes the text it writes into an SVG, and math-text parsing is off, so a ``$`` in a tool
name is drawn as it is: the SVGs are safe to insert into the page unescaped.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec

from flywheel.report.data import (
    MetricViews,
    as_dict,
    curve_points,
    higher_is_better,
    metric_of,
    number,
    tool_count,
    variant_name,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHAMPION_COLOUR = "#8c959f"
CHALLENGER_COLOUR = "#0969da"
MAX_REASONS = 12
"""Quarantine reasons drawn (the most frequent)."""
_MAX_LABEL = 40

P = ParamSpec("P")


@dataclass(frozen=True)
class Plot:
    """One plot of the page: its SVG, whose ids are prefixed with ``name`` (unique on the page)."""

    name: str
    svg: str
    """An ``<svg>`` element labelled by the element with id ``<name>-caption`` (the page's caption)."""


def p_value_text(value: Any) -> str:
    """A p-value to four places, ``< 0.0001`` below that, a dash for none."""
    p = number(value)
    if p is None:
        return "—"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


def _short(text: str) -> str:
    """A label cut to fit a plot axis (the tables show it in full)."""
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def _metric_label(metric: str, views: MetricViews) -> str:
    label = str(views.get(metric, {}).get("label") or metric.replace("_", " "))
    return label if higher_is_better(metric, views) else f"{label}\n(lower is better)"


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib settings of every report plot: text as SVG text, no math text, stable ids."""
    import matplotlib

    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "flywheel-report",
            "text.parse_math": False,
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        yield


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


_SVG_REF = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')


def _svg(fig: Figure, name: str) -> str:
    """``fig`` as an inline ``<svg>``, its ids prefixed with ``name`` so that several fit on one page."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    fig.clear()
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = _SVG_REF.sub(lambda m: f"{m[1]}{name}-{m[2]}" if m[2] in ids else m[0], svg)
    return svg.replace("<svg ", f'<svg role="img" aria-labelledby="{name}-caption" ', 1)


def _plot(name: str) -> Callable[[Callable[P, Figure]], Callable[P, Plot]]:
    """Draw the decorated function's figure in the report's style and return it as the plot ``name``."""

    def wrap(draw: Callable[P, Figure]) -> Callable[P, Plot]:
        @functools.wraps(draw)
        def plot(*args: P.args, **kwargs: P.kwargs) -> Plot:
            with _style():
                return Plot(name, _svg(draw(*args, **kwargs), name))

        return plot

    return wrap


@_plot("metrics")
def metrics_plot(evaluations: list[dict[str, Any]], names: list[str], views: MetricViews) -> Figure:
    """Each evaluation's metrics ``names`` as bars with their 95% intervals."""
    fig = _new_figure(10, 4)
    ax = fig.add_subplot()
    width = 0.8 / len(evaluations)
    for i, evaluation in enumerate(evaluations):
        xs, values, low, high = [], [], [], []
        for j, metric in enumerate(names):
            m = metric_of(evaluation, metric)
            value = number(m.get("value"))
            if value is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            values.append(value)
            ci_low, ci_high = number(m.get("ci_low")), number(m.get("ci_high"))
            low.append(0.0 if ci_low is None else max(0.0, value - ci_low))
            high.append(0.0 if ci_high is None else max(0.0, ci_high - value))
        ax.bar(xs, values, width, yerr=[low, high], capsize=2, label=_short(variant_name(evaluation)))
    ax.set_xticks(range(len(names)), [_metric_label(m, views) for m in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("value (95% interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(evaluations)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return fig


@_plot("forest")
def forest_plot(
    rows: list[tuple[str, dict[str, Any]]], min_effect: float | None, views: MetricViews
) -> Figure:
    """One row per compared metric: the paired difference, its interval, the min effect or margin."""
    fig = _new_figure(8, 0.6 * len(rows) + 1.4)
    ax = fig.add_subplot()
    colours = {True: "#1a7f37", False: "#cf222e"}
    labelled: set[str] = set()

    def once(label: str) -> str:
        if label in labelled:
            return "_nolegend_"
        labelled.add(label)
        return label

    for y, (metric, c) in enumerate(reversed(rows)):
        difference = number(c.get("difference"))
        low, high = number(c.get("ci_low")), number(c.get("ci_high"))
        if low is not None and high is not None:
            ax.plot([low, high], [y, y], color="#1f2328", linewidth=2, label=once("interval"))
        ax.plot(difference, y, "o", color=colours.get(c.get("passed"), "#8c959f"), markersize=7)
        if c.get("role") == "primary":
            if min_effect is not None:
                ax.plot(min_effect, y, "|", color="#1a7f37", markersize=18, mew=2, label=once("min effect"))
        else:
            margin = number(c.get("margin"))
            if margin is not None:
                bound = -margin if higher_is_better(metric, views) else margin
                ax.plot(bound, y, "|", color="#cf222e", markersize=18, mew=2, label=once("guardrail margin"))
    ax.axvline(0, color="#57606a", linestyle="--", linewidth=1)
    ax.set_yticks(
        range(len(rows)),
        [f"{_metric_label(m, views)}\n({_short(str(c.get('role') or ''))})" for m, c in reversed(rows)],
    )
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("challenger − champion")
    ax.grid(axis="x", alpha=0.3)
    if labelled:
        ax.legend(fontsize=7, loc="best")
    return fig


@_plot("paired")
def paired_plot(split: dict[str, int], metric: str, p_value: float | None) -> Figure:
    """The paired-outcome counts of the primary metric (both right, only one right, both wrong)."""
    fig = _new_figure(7, 2.8)
    ax = fig.add_subplot()
    colours = {
        "both right": "#8fd19e",
        "only challenger right": CHALLENGER_COLOUR,
        "only champion right": "#bf8700",
        "both wrong": "#d0d7de",
    }
    labels = list(split)
    bars = ax.bar(labels, [split[k] for k in labels], color=[colours[k] for k in labels])
    ax.bar_label(bars, padding=2)
    ax.set_ylabel("examples")
    title = _short(metric) if metric else "primary metric"
    if p_value is not None:
        title += f"  (McNemar p = {p_value_text(p_value)})"
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.15)
    return fig


@_plot("per-tool")
def per_tool_plot(
    labels: list[str], champion: dict[str, Any], challenger: dict[str, Any], key: str, views: MetricViews
) -> Figure:
    """Metric ``key`` of each label in the champion's and the challenger's ``per_tool`` blocks."""
    fig = _new_figure(8, 0.32 * len(labels) + 1.3)
    ax = fig.add_subplot()
    ys = range(len(labels))
    for offset, scores, name, colour in (
        (-0.2, champion, "champion", CHAMPION_COLOUR),
        (0.2, challenger, "challenger", CHALLENGER_COLOUR),
    ):
        points = [
            (y, number(as_dict(scores.get(label)).get(key))) for y, label in zip(ys, labels, strict=True)
        ]
        kept = [(y, v) for y, v in points if v is not None]
        ax.barh([y + offset for y, _ in kept], [v for _, v in kept], height=0.4, color=colour, label=name)
    ax.set_yticks(
        list(ys),
        [f"{_short(label)} (n={tool_count(champion, challenger, label)})" for label in labels],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(_metric_label(key, views))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


@_plot("loss")
def loss_plot(training: list[dict[str, Any]]) -> Figure:
    """Training and validation loss per step of each training run."""
    fig = _new_figure(8, 3.2)
    ax = fig.add_subplot()
    for i, run in enumerate(training):
        colour = f"C{i % 10}"
        name = _short(str(run.get("candidate_id")))
        train = curve_points(run, "loss")
        if train:
            ax.plot(*zip(*train, strict=True), color=colour, label=f"{name} train")
        validation = curve_points(run, "validation_loss")
        if validation:
            ax.plot(
                *zip(*validation, strict=True), "--o", color=colour, markersize=3, label=f"{name} validation"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


@_plot("quality")
def quality_plot(counts: dict[str, float | None], reasons: dict[str, Any]) -> Figure:
    """The day's extracted, clean and quarantined records, and the quarantine reasons."""
    fig = _new_figure(9, 3)
    left, right = fig.subplots(1, 2, width_ratios=[1, 2])
    names = [k for k, v in counts.items() if v is not None]
    colours = {"extracted": "#8c959f", "clean": "#1a7f37", "quarantined": "#cf222e"}
    bars = left.bar(names, [counts[k] for k in names], color=[colours[k] for k in names])
    left.bar_label(bars, padding=2, fmt="%g")
    left.set_ylabel("records")
    left.margins(y=0.15)
    _reason_bars(right, reasons)
    return fig


def _reason_bars(ax: Axes, reasons: dict[str, Any]) -> None:
    if not reasons:
        ax.text(0.5, 0.5, "no record quarantined", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REASONS]
    bars = ax.barh([_short(k) for k, _ in top], [v for _, v in top], color="#cf222e")
    ax.bar_label(bars, padding=2, fmt="%g")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    title = "quarantine reasons"
    if len(reasons) > len(top):
        title += f" (top {len(top)} of {len(reasons)})"
    ax.set_title(title, fontsize=9)
