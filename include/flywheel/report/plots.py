"""The run report's plots: matplotlib figures, each returned as an inline SVG element.

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
from datetime import date
from typing import TYPE_CHECKING, Any, ParamSpec

from flywheel import artifacts
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
OUTCOME_MARKERS = {"promote": ("^", "#1a7f37"), "alert": ("X", "#cf222e"), "no_change": ("o", "#8c959f")}
"""How the trend plot marks each decision outcome: marker and colour."""
MAX_REASONS = 12
"""Quarantine reasons drawn (the most frequent)."""
_MAX_LABEL = 40
_STUB = 0.006
"""The drawn length of a bar of 0 on a 0-1 axis: visible, and far below the smallest labelled step."""

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
    width = 0.8 / max(1, len(evaluations))
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
    if not ax.has_data():
        _say(ax, "no evaluation produced a metric value")
        return fig
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
    if not any(number(c.get("difference")) is not None for _, c in rows):
        _say(ax, "no paired difference to draw")
        return fig
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
        if difference is not None:
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
    if not any(split.values()):
        _say(ax, "no paired examples")
        return fig
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
    """Metric ``key`` of each label in the champion's and the challenger's ``per_tool`` blocks.

    Each bar is labelled with its value, and a score of 0 is drawn as a stub, so that it reads as 0,
    not as a missing bar; a side without a block (no champion yet) is left out, legend entry included.
    """
    fig = _new_figure(8, 0.32 * len(labels) + 1.3)
    ax = fig.add_subplot()
    ys = range(len(labels))
    sides = [
        (name, scores, colour)
        for name, scores, colour in (
            ("champion", champion, CHAMPION_COLOUR),
            ("challenger", challenger, CHALLENGER_COLOUR),
        )
        if scores
    ]
    height = 0.8 / max(1, len(sides))
    drawn = False
    for i, (name, scores, colour) in enumerate(sides):
        offset = height * (i + 0.5) - 0.4
        points = [
            (y, number(as_dict(scores.get(label)).get(key))) for y, label in zip(ys, labels, strict=True)
        ]
        kept = [(y, v) for y, v in points if v is not None]
        drawn = drawn or bool(kept)
        # A score of 0 gets a stub of a bar, so that it shows in the model's colour; its label says 0.00.
        bars = ax.barh(
            [y + offset for y, _ in kept],
            [max(v, _STUB) for _, v in kept],
            height=height,
            color=colour,
            label=name,
        )
        ax.bar_label(bars, [f"{v:.2f}" for _, v in kept], padding=2, fontsize=6)
    if not drawn:
        _say(ax, f"no per-tool {key} to draw")
        return fig
    ax.set_yticks(
        list(ys),
        [f"{_short(label)} (n={tool_count(champion, challenger, label)})" for label in labels],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)  # room for the label of a bar at 1
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel(_metric_label(key, views))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


@_plot("loss")
def loss_plot(training: list[dict[str, Any]]) -> Figure:
    """Training loss at every logged step (a line) and validation loss where it was scored (dots)."""
    fig = _new_figure(8, 3.2)
    ax = fig.add_subplot()
    for i, run in enumerate(training):
        colour = f"C{i % 10}"
        name = _short(str(run.get("candidate_id")))
        train = curve_points(run, artifacts.TRAIN_LOSS)
        if train:
            # A single step has no line to draw: its dot stands for it.
            style = "-o" if len(train) == 1 else "-"
            ax.plot(*zip(*train, strict=True), style, color=colour, markersize=3, label=f"{name} train")
        validation = curve_points(run, artifacts.VALIDATION_LOSS)
        if validation:
            ax.plot(
                *zip(*validation, strict=True), "--o", color=colour, markersize=4, label=f"{name} validation"
            )
    if not ax.has_data():
        _say(ax, "no candidate logged a loss")
        return fig
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
    if names:
        colours = {"extracted": "#8c959f", "clean": "#1a7f37", "quarantined": "#cf222e"}
        bars = left.bar(names, [counts[k] for k in names], color=[colours[k] for k in names])
        left.bar_label(bars, padding=2, fmt="%g")
        left.set_ylabel("records")
        left.margins(y=0.15)
    else:
        _say(left, "no record counts")
    _reason_bars(right, reasons)
    return fig


def _reason_bars(ax: Axes, reasons: dict[str, Any]) -> None:
    if not reasons:
        _say(ax, "no record quarantined")
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


@_plot("trend")
def trend_plot(points: list[dict[str, Any]], views: MetricViews | None = None) -> Figure:
    """The primary metric per night over past decisions (:func:`flywheel.report.data.champion_trend`).

    The champion's value as a line with its 95% intervals, the challenger's as markers with theirs,
    and above them each night's decision, its outcome told by marker and colour.
    """
    import matplotlib.dates as mdates

    fig = _new_figure(10, 3.8)
    strip, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 7])
    dated = [(night, p) for p in points if (night := _night(p)) is not None]
    drawn: list[float] = []
    if not dated:
        strip.set_axis_off()
        _say(ax, "no decision recorded yet")
        return fig
    # The challenger sits a little right of the champion, so that neither hides the other's interval.
    for side, colour, style, shift in (
        ("champion", "#1f2328", "-o", 0.0),
        ("challenger", CHALLENGER_COLOUR, "s", 0.12),
    ):
        xs, values, low, high = [], [], [], []
        for night, p in dated:
            m = as_dict(p.get(side))
            value = number(m.get("value"))
            if value is None:
                continue
            xs.append(mdates.date2num(night) + shift)
            values.append(value)
            ci_low, ci_high = number(m.get("ci_low")), number(m.get("ci_high"))
            low.append(0.0 if ci_low is None else max(0.0, value - ci_low))
            high.append(0.0 if ci_high is None else max(0.0, ci_high - value))
        drawn += values
        if xs:
            ax.errorbar(
                xs, values, yerr=[low, high], fmt=style, color=colour, markersize=4, capsize=2, label=side
            )
    outcomes: dict[str, list[date]] = {}
    for night, p in dated:
        outcomes.setdefault(str(p.get("outcome")), []).append(night)
    for outcome, nights in outcomes.items():
        marker, colour = OUTCOME_MARKERS.get(outcome, ("D", "#57606a"))
        strip.plot(nights, [0] * len(nights), marker, color=colour, markersize=7, label=_short(outcome))
    strip.set_yticks([0], ["decision"])
    strip.tick_params(axis="both", bottom=False, left=False)
    strip.spines[["left", "bottom"]].set_visible(False)
    metrics = sorted({str(p.get("primary_metric")) for _, p in dated if p.get("primary_metric")})
    if drawn:
        if all(0 <= v <= 1 for v in drawn):
            ax.set_ylim(0, 1.05)
        ax.set_ylabel(_metric_label(metrics[0], views or {}) if len(metrics) == 1 else "primary metric")
        ax.grid(axis="y", alpha=0.3)
    else:
        _say(ax, "no evaluation scored the primary metric on these nights")
    handles = [h for axes in (ax, strip) for h in axes.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if len(metrics) > 1:
        strip.set_title(f"the primary metric changed: {', '.join(metrics)}", fontsize=8)
    first, last = dated[0][0], max(night for night, _ in dated)
    ax.set_xlim(mdates.date2num(first) - 0.5, mdates.date2num(last) + 0.5)
    locator = mdates.AutoDateLocator(minticks=2, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    return fig


def _night(point: dict[str, Any]) -> date | None:
    """The night of a trend point (its ``night``, an ISO date), None when it has none that reads."""
    try:
        return date.fromisoformat(str(point.get("night")))
    except ValueError:
        return None


def _say(ax: Axes, text: str) -> None:
    """Put ``text`` where the axes would be: a plot with nothing to draw says so in words."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#57606a")
    ax.set_axis_off()


@_plot("savings")
def savings_plot(rows: list[tuple[str, dict[str, Any]]], currency: str | None) -> Figure:
    """Latency, tokens per request and cost per 1,000 requests of the teacher and each student.

    ``rows``: ``(name, figures)`` with the keys of :mod:`flywheel.report.savings`; each panel with no
    figure to draw says so.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(10, 0.45 * len(rows) + 1.6)
    panels = fig.subplots(1, 3)
    cost = f"cost per 1,000 requests ({currency})" if currency else "cost per 1,000 requests"
    named = False  # the model names go on the first panel that draws
    for ax, (title, series, empty) in zip(
        panels,
        (
            ("latency (s)", (("latency_p50_s", "p50"), ("latency_p95_s", "p95")), "no latency recorded"),
            ("tokens per request", (("tokens_in", "input"), ("tokens_out", "output")), "no token counts"),
            (
                cost,
                (("cost_per_1k", None),),
                "no figure the prices need" if currency else "no prices set (report.prices)",
            ),
        ),
        strict=True,
    ):
        height = 0.8 / len(series)
        drawn = False
        for i, (key, label) in enumerate(series):
            kept = [(y, number(figures.get(key))) for y, (_, figures) in enumerate(rows)]
            kept = [(y, v) for y, v in kept if v is not None]
            drawn = drawn or bool(kept)
            bars = ax.barh(
                [y + height * (i + 0.5) - 0.4 for y, _ in kept],
                [v for _, v in kept],
                height=height,
                color=f"C{i}",
                label=label,
            )
            ax.bar_label(bars, [f"{v:,.4g}" for _, v in kept], padding=2, fontsize=6)
        ax.set_title(title, fontsize=9)
        if not drawn:
            _say(ax, empty)
            continue
        ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
        if named:
            ax.set_yticks([])
        else:
            ax.set_yticks(range(len(rows)), [_short(name) for name, _ in rows], fontsize=7)
            named = True
        ax.xaxis.set_major_locator(MaxNLocator(4))  # few ticks: the bars carry their values
        ax.margins(x=0.25)
        ax.grid(axis="x", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, loc="lower right")
    return fig
