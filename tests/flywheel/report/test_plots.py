"""Tests of the run report's plots on their own: inline SVGs with page-unique ids, text drawn as text."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from flywheel.report import plots

HOSTILE = "<script>alert(1)</script>"


def per_tool(score: float) -> dict[str, Any]:
    return {
        "lookup_order": {"n": 90, "function_name_accuracy": score, "function_name_and_args_accuracy": score},
        HOSTILE: {"n": 5, "function_name_accuracy": 0.5, "function_name_and_args_accuracy": 0.5},
        "$\\frac{a}{$": {"n": 1, "function_name_accuracy": 1.0, "function_name_and_args_accuracy": 1.0},
    }


def evaluation(candidate: str, value: float) -> dict[str, Any]:
    metric = {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100}
    return {"candidate_id": candidate, "eval_type": "customized", "metrics": {"parse_error_rate": metric}}


COMPARISON = {"role": "primary", "difference": 0.09, "ci_low": 0.04, "ci_high": 0.13, "passed": True}
EVERY_PLOT = {
    "metrics": lambda: plots.metrics_plot(
        [evaluation("a", 0.9), evaluation("b", 0.7)], ["parse_error_rate"], {}
    ),
    "forest": lambda: plots.forest_plot([("function_name_accuracy", COMPARISON)], 0.02, {}),
    "paired": lambda: plots.paired_plot({"only challenger right": 9, "only champion right": 3}, "m", 0.07),
    "per-tool": lambda: plots.per_tool_plot(
        list(per_tool(0.9)), per_tool(0.8), per_tool(0.9), "function_name_accuracy", {}
    ),
    "loss": lambda: plots.loss_plot([{"candidate_id": "a", "loss_curve": [{"step": 1, "train_loss": 2.0}]}]),
    "quality": lambda: plots.quality_plot({"extracted": 10, "clean": 8, "quarantined": 2}, {"duplicate": 2}),
    "trend": lambda: plots.trend_plot(
        [
            {
                "night": "2026-11-20",
                "outcome": "promote",
                "primary_metric": "m",
                "challenger": {"value": 0.7},
            },
            {"night": "2026-11-21", "outcome": "no_change", "champion": {"value": 0.7, "ci_low": 0.6}},
        ]
    ),
    "savings": lambda: plots.savings_plot(
        [("teacher", {"latency_p50_s": 0.9, "tokens_in": 800}), (HOSTILE, {"latency_p50_s": 0.1})], "USD"
    ),
}

NOTHING_TO_DRAW = {
    "metrics": (lambda: plots.metrics_plot([], [], {}), ["no evaluation produced a metric value"]),
    "forest": (
        lambda: plots.forest_plot([("m", {"role": "primary", "difference": None})], 0.02, {}),
        ["no paired difference to draw"],
    ),
    "paired": (
        lambda: plots.paired_plot({"only challenger right": 0, "only champion right": 0}, "m", None),
        ["no paired examples"],
    ),
    "per-tool": (
        lambda: plots.per_tool_plot(["refund"], {"refund": {"n": 3}}, {}, "function_name_accuracy", {}),
        ["no per-tool function_name_accuracy to draw"],
    ),
    "loss": (
        lambda: plots.loss_plot([{"candidate_id": "a", "loss_curve": [{"step": 1, "lr": 0.1}]}]),
        ["no candidate logged a loss"],
    ),
    "quality": (
        lambda: plots.quality_plot(dict.fromkeys(("extracted", "clean", "quarantined")), {}),
        ["no record counts", "no record quarantined"],
    ),
    "trend": (lambda: plots.trend_plot([{"night": "not a date"}]), ["no decision recorded yet"]),
    "savings": (
        lambda: plots.savings_plot([("teacher", {}), ("tiny/icl", {"tokens_in": None})], None),
        ["no latency recorded", "no token counts", "no prices set (report.prices)"],
    ),
}


@pytest.mark.parametrize("name", EVERY_PLOT)
def test_each_plot_is_an_inline_svg_labelled_by_its_caption_with_prefixed_ids(name: str) -> None:
    plot = EVERY_PLOT[name]()

    assert plot.name == name
    assert plot.svg.startswith(f'<svg role="img" aria-labelledby="{name}-caption" ')
    assert plot.svg.rstrip().endswith("</svg>")
    ids = re.findall(r'\bid="([^"]+)"', plot.svg)
    assert ids and all(i.startswith(f"{name}-") for i in ids)
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', plot.svg):
        assert ref in ids  # every internal reference follows its renamed id
    assert plot.svg == EVERY_PLOT[name]().svg  # stable: no date, salted ids


def test_labels_are_escaped_by_matplotlib_and_never_parsed_as_math() -> None:
    svg = EVERY_PLOT["per-tool"]().svg

    assert HOSTILE not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (n=5)" in svg
    assert "$\\frac{a}{$ (n=1)" in svg


def test_long_labels_are_cut_on_the_axis() -> None:
    label = "x" * 60
    svg = plots.quality_plot({"extracted": 1, "clean": 0, "quarantined": 1}, {label: 1}).svg

    assert label not in svg
    assert "x" * 39 + "…" in svg


def test_quality_plot_draws_the_most_frequent_reasons_only() -> None:
    reasons = {f"reason_{i:02d}": i + 1 for i in range(plots.MAX_REASONS + 3)}
    svg = plots.quality_plot({"extracted": 100, "clean": 0, "quarantined": 100}, reasons).svg

    assert f"quarantine reasons (top {plots.MAX_REASONS} of {plots.MAX_REASONS + 3})" in svg
    assert ">reason_00<" not in svg and ">reason_14<" in svg


@pytest.mark.parametrize(
    ("value", "text"), [(None, "—"), ("0.1", "—"), (0.00001, "< 0.0001"), (0.0312, "0.0312")]
)
def test_p_value_text(value: Any, text: str) -> None:
    assert plots.p_value_text(value) == text


def test_importing_the_report_modules_does_not_import_matplotlib_or_jinja2() -> None:
    code = (
        "import sys, flywheel.report.render, flywheel.report.plots; "
        "print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", NOTHING_TO_DRAW)
def test_a_plot_with_nothing_to_draw_says_so_in_words(name: str) -> None:
    draw, lines = NOTHING_TO_DRAW[name]

    svg = draw().svg

    for line in lines:
        assert f">{line}</text>" in svg
    assert f'id="{name}-xtick_1"' not in svg and f'id="{name}-ytick_1"' not in svg  # no empty axes


def test_the_trend_of_nights_without_scores_still_marks_each_decision() -> None:
    svg = plots.trend_plot(
        [{"night": "2026-11-20", "outcome": "alert"}, {"night": "2026-11-21", "outcome": "no_change"}]
    ).svg

    assert ">no evaluation scored the primary metric on these nights</text>" in svg
    assert ">alert</text>" in svg and ">no_change</text>" in svg


def test_the_trend_draws_champion_and_challenger_with_their_intervals_and_each_outcome() -> None:
    points = [
        {"night": f"2026-11-{day}", "outcome": outcome, "primary_metric": "function_name_accuracy"}
        | {
            side: {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05}
            for side in ("champion", "challenger")
        }
        for day, outcome, value in ((17, "promote", 0.6), (18, "alert", 0.5), (19, "no_change", 0.65))
    ]

    svg = plots.trend_plot(points, {"function_name_accuracy": {"label": "function name"}}).svg

    for text in ("champion", "challenger", "promote", "alert", "no_change", "function name"):
        assert f">{text}</text>" in svg
    # Each outcome has its own marker and colour, drawn in the decision row and the legend.
    assert len({marker for marker, _ in plots.OUTCOME_MARKERS.values()}) == len(plots.OUTCOME_MARKERS)
    for _, colour in plots.OUTCOME_MARKERS.values():
        assert f"fill: {colour}" in svg
