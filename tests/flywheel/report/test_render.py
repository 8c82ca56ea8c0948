"""Tests of the run report page: a full run, a run stopped by validation, hostile text, missing values,
writing. The plots alone are tested in test_plots.py."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import pytest

from flywheel.evaluate.stats import proportion
from flywheel.report.data import metric_views
from flywheel.report.render import render_report, write_report
from flywheel.storage import ArtifactStore

HOSTILE = "<script>alert(1)</script>"
PER_TOOL_METRICS = ("function_name_accuracy", "function_name_and_args_accuracy")
N = 200
SECTIONS = (
    "key-figures",
    "trend",
    "evaluations",
    "differences",
    "paired-outcomes",
    "per-tool",
    "training",
    "savings",
    "data-quality",
    "stages",
    "links",
)
PLOTS = (
    "trend",
    "evaluations",
    "differences",
    "paired-outcomes",
    "per-tool",
    "training",
    "savings",
    "data-quality",
)
"""The sections of a full run that each draw one plot."""


def metric(hits: int, n: int = N) -> dict[str, Any]:
    """A metric summary as the evaluation job writes it: the share of ``hits`` with its Wilson interval."""
    return proportion([True] * hits + [False] * (n - hits))


def metrics(name: int, name_and_args: int, ast: int, no_call: int, parse_errors: int) -> dict[str, Any]:
    return {
        "function_name_accuracy": metric(name),
        "function_name_and_args_accuracy": metric(name_and_args),
        "tool_call_ast_accuracy": metric(ast),
        "no_call_accuracy": metric(no_call, 40),
        "parse_error_rate": metric(parse_errors),
    }


def per_tool(scores: dict[str, tuple[int, float, float]]) -> dict[str, Any]:
    return {
        label: {
            "n": n,
            "function_name_accuracy": name,
            "function_name_and_args_accuracy": args,
            "tool_call_ast_accuracy": args,
            "parse_error_rate": 0.0,
        }
        for label, (n, name, args) in scores.items()
    }


def evaluation(candidate: str, eval_type: str, scores: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "candidate_id": candidate,
        "eval_type": eval_type,
        "status": "succeeded",
        "examples": N,
        "metrics": scores,
        "latency_p95_s": 1.4,
        "per_tool": None,
        "error": None,
        **extra,
    }


def stage(name: str, summary: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"stage": name, "status": "succeeded", "summary": summary, "error": None, **extra}


VALIDATE = {
    "extracted": 2000,
    "clean": 1812,
    "quarantined": 188,
    "reasons": {"duplicate": 120, "arguments_not_json": 41, "unknown_tool": 19, "empty_message": 8},
    "duplicates_in_day": 120,
    "success": True,
    "failed_expectations": [],
    "data_docs_uri": "file:///srv/flywheel/artifacts/reports/router/2026-11-20/data_docs/index.html",
}


def comparison(role: str, champion: float, challenger: float, **extra: Any) -> dict[str, Any]:
    """One entry of the decision's ``comparisons`` (``n`` paired examples, challenger minus champion)."""
    return {
        "role": role,
        "champion": champion,
        "challenger": challenger,
        "difference": round(challenger - champion, 6),
        "n": N,
        "passed": True,
        "note": None,
        **extra,
    }


def loss_curve(steps: int) -> list[dict[str, float]]:
    """A ``loss_curve.json`` as the trainer writes it: a falling training loss at every optimiser step
    (from 1), and a validation loss every 100 steps and at the last one."""
    curve: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        point = {"step": step, "train_loss": 2.0 / (1 + step / 50), "lr": 1e-4 * (1 - step / steps)}
        if step % 100 == 0 or step == steps:
            point["validation_loss"] = 0.4 + 1 / (1 + step)
        curve.append(point)
    return curve


def trend_point(night: str, outcome: str, champion: float | None, challenger: float | None) -> dict[str, Any]:
    """A point of :func:`flywheel.report.data.champion_trend` (shares of N, with their intervals)."""

    def side(value: float | None, **extra: Any) -> dict[str, Any] | None:
        return None if value is None else metric(round(value * N)) | extra

    return {
        "night": night,
        "interval_start": f"{night}T00:00:00+00:00",
        "interval_end": f"{night}T00:00:00+00:00",
        "dag_run_id": f"scheduled__{night}",
        "decided_at": f"{night}T02:10:00+00:00",
        "outcome": outcome,
        "primary_metric": "function_name_and_args_accuracy",
        "champion": side(champion, version=3),
        "challenger": side(challenger, candidate_id="smollm2-135m", eval_type="customized", version=None),
    }


def usage(p50: float, p95: float, tokens_in: float, tokens_out: float, cost: float | None) -> dict[str, Any]:
    """Latency, tokens per request and cost per 1,000 requests, as the data's ``savings`` holds them."""
    return {
        "requests": N,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "examples_per_s": 12.5,
        "cost_per_1k": cost,
    }


def full_run_data() -> dict[str, Any]:
    """A complete run: champion plus base, ICL and customized variants of one candidate; a promotion."""
    tools = {"lookup_order": (90, 0.93, 0.81), "refund": (60, 0.9, 0.7), "<no call>": (50, 0.88, 0.88)}
    better = {"lookup_order": (90, 0.97, 0.9), "refund": (60, 0.95, 0.8), "<no call>": (50, 0.9, 0.9)}
    dataset = {
        "dataset_id": "router-20261120-1a2b3c",
        "counts": {"train": 9000, "validation": 500, "evaluation": N},
    }
    champion = evaluation("champion", "champion", metrics(180, 124, 120, 34, 4), per_tool=per_tool(tools))
    champion["latency_p95_s"] = 1.1
    customized = evaluation("smollm2-135m", "customized", metrics(186, 142, 139, 35, 2))
    customized["per_tool"] = per_tool(better)
    data = {
        "workload_id": "customer_support_router",
        "dag_id": "flywheel_customer_support_router",
        "dag_run_id": "scheduled__2026-11-20T00:00:00+00:00",
        "interval_start": "2026-11-20T00:00:00+00:00",
        "interval_end": "2026-11-21T00:00:00+00:00",
        "generated_at": "2026-11-21T02:14:09+00:00",
        "stages": [
            stage("extract", {"records": 2000}),
            stage("validate", VALIDATE),
            stage("build_dataset", dataset),
            stage("train", {"candidates": 2}),
            stage("evaluate", {"same_examples": True}),
            stage("decide", {"outcome": "promote"}),
        ],
        "training": [
            {
                "candidate_id": "smollm2-135m",
                "status": "succeeded",
                "base_model": "smollm2-135m-instruct",
                "steps": 300,
                "best_validation_loss": 0.412,
                "wall_seconds": 1834.2,
                "adapter_uri": "s3://flywheel/runs/router/2026-11-20/train/smollm2-135m/adapter",
                "loss_curve": loss_curve(300),
                "error": None,
            },
            {
                "candidate_id": "qwen2.5-0.5b",
                "status": "failed",
                "base_model": "qwen2.5-0.5b-instruct",
                "steps": None,
                "best_validation_loss": None,
                "wall_seconds": 12.0,
                "adapter_uri": None,
                "loss_curve": None,
                "error": {"error": "OutOfMemoryError", "message": "CUDA out of memory", "exit_code": 3},
            },
        ],
        "evaluations": [
            champion,
            evaluation("smollm2-135m", "base", metrics(120, 60, 58, 20, 30)),
            evaluation("smollm2-135m", "icl", metrics(150, 90, 88, 28, 12)),
            customized,
        ],
        "decision": {
            "outcome": "promote",
            "reasons": [
                {"code": "challenger_better", "message": "customized beats the champion by 9 points"}
            ],
            "primary_metric": "function_name_and_args_accuracy",
            "examples": N,
            "champion": {
                "candidate_id": "champion",
                "eval_type": "champion",
                "version": 3,
                "model": {"endpoint": {"model": "router-v3"}, "version": 3},
            },
            "challenger": {"candidate_id": "smollm2-135m", "eval_type": "customized", "version": None},
            "comparisons": {
                "function_name_and_args_accuracy": comparison(
                    "primary",
                    0.62,
                    0.71,
                    ci_low=0.045,
                    ci_high=0.135,
                    p_value=0.0003,
                    challenger_only=26,
                    champion_only=8,
                    threshold=0.05,
                    min_effect=0.02,
                ),
                "function_name_accuracy": comparison(
                    "guardrail",
                    0.9,
                    0.93,
                    ci_low=0.0,
                    ci_high=0.06,
                    challenger_only=9,
                    champion_only=3,
                    margin=0.02,
                    relative=False,
                ),
                "parse_error_rate": comparison(
                    "guardrail", 0.02, 0.01, ci_low=-0.03, ci_high=0.005, margin=0.02, relative=False
                ),
                "latency_p95_s": comparison(
                    "guardrail",
                    1.1,
                    1.4,
                    margin=0.25,
                    relative=True,
                    limit=1.375,
                    passed=False,
                    note="latency above the champion's by 27 %",
                ),
            },
            "candidates": [
                {
                    "candidate_id": "smollm2-135m",
                    "eval_type": "customized",
                    "primary": 0.71,
                    "rank": 1,
                    "latency_p95_s": 1.4,
                    "eligible": True,
                    "note": None,
                },
                {
                    "candidate_id": "smollm2-135m",
                    "eval_type": "base",
                    "primary": 0.3,
                    "rank": 3,
                    "latency_p95_s": 1.4,
                    "eligible": False,
                    "note": "below the floor",
                },
            ],
            "policy": {"alpha": 0.05, "min_effect": 0.02, "floor": 0.5},
        },
        "trend": [
            trend_point("2026-11-17", "promote", None, 0.55),
            trend_point("2026-11-18", "no_change", 0.58, 0.57),
            trend_point("2026-11-19", "alert", None, None),
            trend_point("2026-11-20", "no_change", 0.6, 0.61),
            trend_point("2026-11-21", "promote", 0.62, 0.71),
        ],
        "savings": {
            "currency": "USD",
            "requests_per_cost": 1000,
            "teacher": usage(0.9, 2.1, 812.0, 40.0, 1.864)
            | {"requests": 2000, "with_usage": 1990, "with_latency": 2000},
            "students": [
                {"candidate_id": "champion", "eval_type": "champion", **usage(0.15, 0.4, 790.0, 38.0, 0.11)},
                {
                    "candidate_id": "smollm2-135m",
                    "eval_type": "customized",
                    **usage(0.12, 0.3, 790.0, 38.0, 0.09),
                },
            ],
        },
        "recount": {
            "workload_id": "customer_support_router",
            "day": "2026-11-20",
            "recounts": [
                {
                    "workload_id": "customer_support_router",
                    "day": "2026-11-19",
                    "status": "unchanged",
                    "extracted": 1980,
                    "counted": 1980,
                    "interval_start": "2026-11-19T00:00:00+00:00",
                    "interval_end": "2026-11-20T00:00:00+00:00",
                    "extracted_at": "2026-11-20T00:31:02+00:00",
                }
            ],
            "moved_days": [],
            "alerts": [],
        },
        "recount_days": 1,
    }
    return data | {"metrics": metric_views(data["evaluations"], data["decision"], [])}


@pytest.fixture
def full_run() -> dict[str, Any]:
    """A fresh full run for a test to change."""
    return full_run_data()


@pytest.fixture(scope="module")
def full_page() -> str:
    """The full run rendered once, for the tests that only read the page."""
    return render_report(full_run_data())


@pytest.fixture
def failed_validation() -> dict[str, Any]:
    """A run stopped by validation: no dataset, training or evaluations; the decision alerts."""
    batch = {**VALIDATE, "success": False, "failed_expectations": ["tool_shift_below_limit"]}
    return {
        "workload_id": "customer_support_router",
        "dag_id": "flywheel_customer_support_router",
        "dag_run_id": "manual__2026-11-21",
        "interval_start": "2026-11-20T00:00:00+00:00",
        "interval_end": "2026-11-21T00:00:00+00:00",
        "generated_at": "2026-11-21T01:00:00+00:00",
        "stages": [
            stage("extract", {"records": 2000}),
            stage(
                "validate",
                batch,
                status="failed",
                error="DataQualityError: batch failed: tool_shift_below_limit",
            ),
            stage("decide", {"outcome": "alert"}),
        ],
        "training": None,
        "evaluations": [],
        "decision": {
            "outcome": "alert",
            "reasons": [{"code": "data_quality_failed", "message": "the day's batch failed validation"}],
            "primary_metric": "function_name_and_args_accuracy",
            "examples": 0,
            "champion": None,
            "challenger": None,
            "comparisons": {},
            "candidates": [],
            "policy": None,
        },
    }


def section(page: str, name: str) -> str:
    """The HTML of the section with id ``name``."""
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name}"
    return match[1]


def test_full_run_renders_every_section_with_its_plot(full_page: str) -> None:
    page = full_page
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="badge" style="background:#1a7f37">promote<' in page
    assert "challenger_better" in page
    for name in SECTIONS:
        assert 'class="empty"' not in section(page, name), name
    assert page.count("<svg ") == len(PLOTS)
    for name in PLOTS:
        assert section(page, name).count("<svg ") == 1, name
    # Self-contained: nothing fetched from elsewhere, and no id defined twice across the inline SVGs.
    assert not re.search(r'<(script|link)\b|src=|@import|href="http', page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_rendering_a_full_run_is_fast(full_page: str) -> None:
    # CPU time of this process: on shared cores the wall clock also counts everyone else's work.
    start = time.process_time()  # matplotlib is imported by now (full_page)
    render_report(full_run_data())
    assert time.process_time() - start < 3  # the budget is 2 s (docs/report.md, "Cost"); slack for busy CI


def test_key_figures_show_each_comparison(full_page: str) -> None:
    figures = section(full_page, "key-figures")

    primary = re.search(r"<tr><td><code>function_name_and_args_accuracy</code>.*?</tr>", figures)
    assert primary
    for text in (
        "primary",
        "0.620",
        "0.710",
        "+0.090 [+0.045, +0.135]",
        "0.0003",
        "min effect +0.020, p below α = 0.050",
        "pass",
    ):
        assert text in primary[0]
    latency = re.search(r"<tr><td><code>latency_p95_s</code>.*?</tr>", figures)
    assert latency
    for text in ("1.10 s", "1.40 s", "+0.300 s", "margin 25% of the champion's, limit 1.38 s"):
        assert text in latency[0]
    assert '<span class="fail">fail</span>' in latency[0]
    model = "<code>{&#34;endpoint&#34;: {&#34;model&#34;: &#34;router-v3&#34;}}</code>"  # Jinja2's escaping
    assert f"<b>champion</b>, version 3, model {model}" in figures
    assert "below the floor" in figures


def test_paired_split_is_derived_from_values_and_discordant_counts(
    full_page: str, full_run: dict[str, Any]
) -> None:
    paired = section(full_page, "paired-outcomes")
    # 124 champion-right - 8 only-champion = 116 both right; 200 - 116 - 26 - 8 = 50 both wrong.
    for label, count in (
        ("both right", 116),
        ("only challenger right", 26),
        ("only champion right", 8),
        ("both wrong", 50),
    ):
        assert f">{label}</text>" in paired
        assert f">{count}</text>" in paired

    comparison = full_run["decision"]["comparisons"]["function_name_and_args_accuracy"]
    comparison["champion"] = comparison["n"] = None
    paired = section(render_report(full_run), "paired-outcomes")
    assert ">only challenger right</text>" in paired
    assert ">both right</text>" not in paired
    assert "Only the discordant counts are shown" in paired


def test_forest_plot_marks_min_effect_and_margins_but_not_latency(
    full_page: str, full_run: dict[str, Any]
) -> None:
    differences = section(full_page, "differences")
    assert "Not drawn (another scale; see the key figures): latency_p95_s." in differences
    assert ">min effect</text>" in differences
    assert ">guardrail margin</text>" in differences

    # Without its own min_effect the primary comparison takes the policy's.
    del full_run["decision"]["comparisons"]["function_name_and_args_accuracy"]["min_effect"]
    page = render_report(full_run)
    assert ">min effect</text>" in section(page, "differences")
    assert "min effect +0.020" in section(page, "key-figures")


def test_failed_validation_renders_and_says_which_sections_have_no_data(
    failed_validation: dict[str, Any],
) -> None:
    page = render_report(failed_validation)

    assert 'style="background:#cf222e">alert<' in page
    assert "data_quality_failed" in page
    assert "No champion–challenger comparison in this decision." in section(page, "key-figures")
    assert "No evaluations: the evaluate stage did not run." in section(page, "evaluations")
    assert "No paired differences: the decision recorded none to draw." in section(page, "differences")
    assert "No paired outcomes" in section(page, "paired-outcomes")
    assert "No per-tool scores: the evaluate stage did not run." in section(page, "per-tool")
    assert "No training runs: the train stage did not run." in section(page, "training")
    quality = section(page, "data-quality")
    assert "No dataset: the build_dataset stage did not run." in quality
    assert "tool_shift_below_limit" in quality
    assert quality.count("<svg ") == 1  # the validation summary exists although the batch failed
    stages = section(page, "stages")
    assert "DataQualityError: batch failed" in stages
    assert stages.count("not run") == 3
    assert page.count("<svg ") == 1


def test_empty_data_renders_a_page_of_empty_sections() -> None:
    page = render_report({})

    assert "no decision</span> (the decide stage did not run)" in page
    assert "No decision: the decide stage did not run." in section(page, "key-figures")
    assert "No validation summary: the validate stage did not run." in section(page, "data-quality")
    assert "No links" in section(page, "links")
    assert "<svg" not in page


def test_hostile_strings_are_escaped_everywhere(full_run: dict[str, Any]) -> None:
    run = copy.deepcopy(full_run)
    for ev in run["evaluations"]:
        if ev["per_tool"]:
            ev["per_tool"][HOSTILE] = {
                "n": 300,
                "function_name_accuracy": 0.5,
                "function_name_and_args_accuracy": 0.5,
            }
            ev["per_tool"]["$\\frac{a}{$"] = {
                "n": 1,
                "function_name_accuracy": 1.0,
                "function_name_and_args_accuracy": 1.0,
            }
    run["evaluations"].append(evaluation(HOSTILE, "icl", metrics(100, 50, 50, 20, 10), error=HOSTILE))
    run["decision"]["reasons"].append({"code": HOSTILE, "message": HOSTILE})
    run["decision"]["candidates"][0]["candidate_id"] = HOSTILE
    run["training"][0]["candidate_id"] = HOSTILE
    run["training"][1]["adapter_uri"] = 'javascript:alert("x")'
    run["stages"][1]["summary"]["reasons"][HOSTILE] = 3
    run["stages"][1]["summary"]["data_docs_uri"] = f"https://docs.example/?q={HOSTILE}"
    run["stages"][0]["error"] = HOSTILE

    page = render_report(run)

    assert HOSTILE not in page
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert page.count(escaped) >= 8
    assert "$\\frac{a}{$" in section(page, "per-tool")  # drawn as text, not parsed as math
    assert 'href="javascript' not in page
    assert "<code>javascript:alert(&#34;x&#34;)</code>" in page
    assert f'<a href="https://docs.example/?q={escaped}">' in page


def test_a_hostile_candidate_id_and_error_message_are_escaped_where_they_are_shown(
    full_run: dict[str, Any],
) -> None:
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    full_run["training"][0]["candidate_id"] = HOSTILE
    full_run["training"][1]["error"] = {"error": "RuntimeError", "message": HOSTILE}
    full_run["evaluations"][1].update(candidate_id=HOSTILE, status="failed", error=HOSTILE)
    full_run["stages"][2].update(status="failed", error=HOSTILE)

    page = render_report(full_run)

    assert "<script" not in page
    training = section(page, "training")
    assert f"<tr><td>{escaped}</td>" in training
    assert f"<pre>RuntimeError: {escaped}</pre>" in training
    assert f"{escaped} train</text>" in training  # the loss plot's legend, escaped by matplotlib
    evaluations = section(page, "evaluations")
    assert f"<tr><td>{escaped}/base</td>" in evaluations
    assert f"<td><pre>{escaped}</pre></td></tr>" in evaluations
    assert re.search(
        rf"<tr><td>build_dataset</td>.*?<pre>{re.escape(escaped)}</pre>", section(page, "stages")
    )
    assert f"<li>adapter of {escaped}: <code>s3://" in section(page, "links")


def test_only_the_plots_are_inserted_as_markup(full_run: dict[str, Any]) -> None:
    full_run["decision"]["reasons"][0]["message"] = '<svg onload="alert(1)">'

    page = render_report(full_run)

    assert page.count("<svg ") == page.count('<svg role="img" aria-labelledby="') == len(PLOTS)
    assert "&lt;svg onload=&#34;alert(1)&#34;&gt;" in page


def test_missing_metric_values_do_not_crash(full_run: dict[str, Any]) -> None:
    empty = {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    for ev in full_run["evaluations"]:
        ev["metrics"]["no_call_accuracy"] = dict(empty)
    full_run["evaluations"].append(evaluation("qwen2.5-0.5b", "base", dict.fromkeys(ev["metrics"], empty)))
    failed = evaluation("qwen2.5-0.5b", "icl", {}, status="failed", examples=None, latency_p95_s=None)
    failed["error"] = {"error": "EndpointError", "message": "endpoint kept failing", "exit_code": 1}
    full_run["evaluations"].append(failed)
    comparison = full_run["decision"]["comparisons"]["function_name_accuracy"]
    comparison.update(difference=None, ci_low=None, ci_high=None, passed=None)

    page = render_report(full_run)

    assert "— (n=0)" in section(page, "evaluations")
    assert "EndpointError: endpoint kept failing" in page
    assert page.count("<svg ") == len(PLOTS)


@pytest.mark.parametrize("root", ["local", "memory"])
def test_write_report_stores_the_page_and_returns_its_uri(root: str, tmp_path: Path) -> None:
    store = ArtifactStore(
        str(tmp_path / "artifacts") if root == "local" else f"memory://report-{tmp_path.name}"
    )
    page = render_report({"workload_id": "router"})
    relative = "reports/router/2026-11-20/run-report.html"

    uri = write_report(store, relative, page)

    assert uri == store.uri(store.path(relative))
    with store.fs.open(store.path(relative), "rb") as fh:
        assert fh.read().decode("utf-8") == page
    assert [
        p for p in store.fs.ls(store.path("reports/router/2026-11-20"), detail=False) if ".tmp" in p
    ] == []
    if root == "local":
        assert Path(uri.removeprefix("file://")).read_text(encoding="utf-8") == page


def test_the_per_tool_plot_draws_the_challengers_bars_on_a_night_without_a_champion(
    full_run: dict[str, Any],
) -> None:
    full_run["evaluations"] = [e for e in full_run["evaluations"] if e["eval_type"] != "champion"]
    full_run["decision"]["champion"] = None
    full_run["metrics"] = metric_views(full_run["evaluations"], full_run["decision"], [])

    per_tool_section = section(render_report(full_run), "per-tool")

    # One bar per tool in the challenger's colour, none in the champion's (the keys are metric names,
    # as the evaluation job writes them).
    assert len(re.findall(r"fill: ?#0969da", per_tool_section)) >= 3
    assert "fill: #8c959f" not in per_tool_section


def test_a_metric_of_your_own_is_drawn_in_the_report(full_run: dict[str, Any]) -> None:
    own = ["my_flywheel.metrics:OfferedToolsOnly"]  # docs/examples/my_flywheel/metrics.py
    for share, evaluation_ in zip((190, 150, 170, 196), full_run["evaluations"], strict=True):
        evaluation_["metrics"]["offered_tools_only"] = metric(share)
    full_run["decision"]["comparisons"]["offered_tools_only"] = comparison(
        "guardrail", 0.85, 0.98, ci_low=0.05, ci_high=0.2, margin=0.02, relative=False
    )
    full_run["metrics"] = metric_views(full_run["evaluations"], full_run["decision"], own)

    page = render_report(full_run)

    evaluations = section(page, "evaluations")
    assert "<th>offered_tools_only</th>" in evaluations  # a column of the evaluations table
    assert "offered tools only" in evaluations  # the definition's label, on the metrics plot's axis
    assert "offered tools only" in section(page, "differences")  # a guardrail row of the forest plot
    assert "<code>offered_tools_only</code>" in section(page, "key-figures")


def test_per_label_scores_and_truncated_answers_are_tabled(full_run: dict[str, Any]) -> None:
    champion, customized = full_run["evaluations"][0], full_run["evaluations"][3]
    champion["per_tool"]["refund"]["truncated"] = 0
    customized["per_tool"]["refund"]["truncated"] = 4
    customized.update(truncated_examples=4, max_new_tokens=71)

    page = render_report(full_run)

    per_tool = section(page, "per-tool")
    header = re.search(r"<thead><tr><th>label</th>.*?</tr></thead>", per_tool)
    assert header
    for column in ("function_name_accuracy", "function_name_and_args_accuracy", "truncated"):
        assert f"<th>{column}</th>" in header[0]
    refund = re.search(r"<tr><td>refund</td>.*?</tr>", per_tool)
    assert refund
    # champion → challenger: function name 0.90 → 0.95, name and args 0.70 → 0.80, 0 → 4 cut off
    for cell in ("60", "0.900 → 0.950", "0.700 → 0.800", "0 → 4"):
        assert f'<td class="num">{cell}</td>' in refund[0]
    assert re.search(r"<tr><td>lookup_order</td>.*?<td class=\"num\">— → —</td></tr>", per_tool)
    evaluations = section(page, "evaluations")
    assert "<th>truncated (token cap)</th>" in evaluations
    assert '<td class="num">4 (cap 71)</td>' in evaluations


def test_the_per_tool_plot_draws_a_challengers_zero_scores_on_a_night_without_a_champion(
    full_run: dict[str, Any],
) -> None:
    # The first night of a workload: no champion, and a challenger that gets most labels wrong. Its bars
    # of 0 had no length, so the chart looked empty.
    full_run["evaluations"] = [e for e in full_run["evaluations"] if e["eval_type"] != "champion"]
    full_run["decision"]["champion"] = None
    customized = full_run["evaluations"][-1]
    customized["per_tool"] = per_tool({"lookup_order": (90, 0.0, 0.0), "refund": (60, 0.5, 0.0)})
    customized["per_tool"]["<no call>"] = customized["per_tool"].pop("refund") | {"n": 50}
    customized["per_tool"]["<no call>"]["function_name_and_args_accuracy"] = 1.0
    full_run["metrics"] = metric_views(full_run["evaluations"], full_run["decision"], [])

    per_tool_section = section(render_report(full_run), "per-tool")

    # Each label has a bar in the challenger's colour, each labelled with its value; no champion series.
    bars = re.findall(
        r'<path d="M ([\d.]+) [\d.]+ \nL ([\d.]+) [^"]*"[^>]*style="fill: #0969da"', per_tool_section
    )
    lengths = [float(end) - float(start) for start, end in bars]
    assert len([length for length in lengths if length > 0]) >= 2 + 1  # two labels, and the legend's patch
    assert ">0.00</text>" in per_tool_section
    assert ">1.00</text>" in per_tool_section
    assert ">champion</text>" not in per_tool_section
    assert "the challenger in blue (no champion was evaluated on this night)" in per_tool_section


def test_the_training_plot_draws_the_training_loss_at_every_step_and_the_validation_points(
    full_run: dict[str, Any],
) -> None:
    training = section(render_report(full_run), "training")

    assert ">smollm2-135m train</text>" in training
    assert ">smollm2-135m validation</text>" in training
    # The training line runs through the 300 logged steps: a path of many vertices (matplotlib drops the
    # ones a smooth line does not need); the validation points are dots at steps 100, 200 and 300.
    vertices = [path.count("L ") + 1 for path in re.findall(r'<path d="(M [^"]*)"', training)]
    assert max(vertices) > 20
    assert (
        len(re.findall(r'<use xlink:href="#[^"]+" x="[\d.]+" y="[\d.]+" style="fill: #1f77b4', training)) >= 3
    )


def test_the_trend_shows_every_decision_up_to_this_run(full_page: str) -> None:
    trend = section(full_page, "trend")

    assert "the workload's 5 recorded decisions up to this run" in trend
    for outcome in ("promote", "no_change", "alert"):
        assert f">{outcome}</text>" in trend  # the legend tells the outcomes apart
    assert ">champion</text>" in trend and ">challenger</text>" in trend
    assert ">function name and args</text>" in trend  # the primary metric's label, on the y axis


def test_the_trend_section_says_when_no_decision_is_recorded(full_run: dict[str, Any]) -> None:
    full_run["trend"] = []

    trend = section(render_report(full_run), "trend")

    assert "No trend: no decision of this workload is recorded up to this run" in trend
    assert "<svg" not in trend


def test_the_data_quality_section_shows_the_personal_data_the_scrubber_replaced(
    full_run: dict[str, Any],
) -> None:
    def shown(pii: dict[str, int] | None) -> str:
        summary = {**VALIDATE, "pii": pii} if pii is not None else dict(VALIDATE)
        full_run["stages"][1] = stage("validate", summary)
        quality = section(render_report(full_run), "data-quality")
        match = re.search(
            r"personal data replaced \(<code>data_quality.pii</code>\)</th><td>(.*?)</td>", quality
        )
        assert match, quality
        return match[1]

    assert shown({"phone": 3, "email": 1204, "ip": 1}) == "email 1,204, ip 1, phone 3"
    assert shown({}) == "none"  # the scrubber ran and found nothing
    assert shown(None) == "—"  # a summary of a version that did not count it
