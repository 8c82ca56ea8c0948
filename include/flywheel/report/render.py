"""The run report: one self-contained HTML page per flywheel DAG run (docs/report.md).

Operators open it from the Airflow UI and alerts link to it, so it must read on its own: no external
CSS, scripts or fonts, every plot an inline SVG drawn by matplotlib. :func:`render_report` turns the
run's data (a JSON-safe dict assembled from the metadata database; any block may be missing when its
stage did not run or failed) into the page, and :func:`write_report` stores it atomically in the
artifact store.

Everything that comes from production logs or jobs (tool names, candidate ids, reason messages,
errors, URIs) is HTML-escaped; matplotlib escapes the text it writes into the SVGs, and math-text
parsing is off so that a ``$`` in a tool name is drawn as it is. Only ``http``, ``https`` and
``file`` URIs become links; others (``s3://``, ``gs://``) are shown as text.

matplotlib is imported inside functions only (the DAG files import :mod:`flywheel.tasks`), and
figures are built with :class:`matplotlib.figure.Figure` directly: nothing is registered with pyplot,
so no GUI backend is involved and each figure is freed as soon as its SVG has been written.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flywheel.config import LOWER_IS_BETTER
from flywheel.storage import ArtifactStore

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STAGES = ("extract", "validate", "build_dataset", "train", "evaluate", "decide")
"""The flywheel's stages in DAG order: the stage table lists each, run or not."""

METRICS = (
    "function_name_accuracy",
    "function_name_and_args_accuracy",
    "tool_call_ast_accuracy",
    "no_call_accuracy",
    "parse_error_rate",
)
"""Evaluation metrics in the order the report shows them (others an evaluation reports follow)."""

_PER_TOOL_KEY = {
    "function_name_accuracy": "function_name",
    "function_name_and_args_accuracy": "function_name_and_args",
    "tool_call_ast_accuracy": "ast",
}
"""Which ``per_tool`` score the per-tool plot shows for a primary metric (others: names and args)."""

_LINK_SCHEMES = ("http", "https", "file")
_MAX_TOOLS = 25
_MAX_REASONS = 12
_MAX_LABEL = 40

_OUTCOME_COLOURS = {"promote": "#1a7f37", "alert": "#cf222e", "no_change": "#57606a"}
_STATUS_COLOURS = {"succeeded": "#1a7f37", "failed": "#cf222e", "running": "#9a6700"}
_CHAMPION_COLOUR = "#8c959f"
_CHALLENGER_COLOUR = "#0969da"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1100px;padding:1rem 1.5rem 3rem;color:#1f2328;line-height:1.4}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;border-bottom:1px solid #d0d7de;
padding-bottom:.2rem;margin-top:2rem}h3{font-size:1rem}
.meta{color:#57606a;font-size:.9rem}.meta span{margin-right:1.2rem}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;color:#fff;font-weight:600}
.status{font-weight:600}.empty{color:#57606a;font-style:italic}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}
figcaption{color:#57606a;font-size:.85rem}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.4rem;margin:0;
font-size:.8rem}code{word-break:break-all}
"""


def render_report(data: Mapping[str, Any]) -> str:
    """The run report of one DAG run as a self-contained HTML page.

    ``data`` holds ``workload_id``, ``dag_id``, ``dag_run_id``, ``interval_start``,
    ``interval_end``, ``generated_at``, ``stages``, ``training``, ``evaluations`` and ``decision``
    (docs/report.md); any of them may be missing or None, and each section then says it has no data.
    """
    run = _Run.from_data(data)
    workload = _text(data.get("workload_id"))
    with _plot_style():
        body = [
            _header(data, run),
            _key_figures(run),
            _metrics_section(run),
            _forest_section(run),
            _paired_section(run),
            _per_tool_section(run),
            _training_section(run),
            _data_quality_section(run),
            _stage_section(run),
            _links_section(run),
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Flywheel run report: {workload} {_text(data.get('interval_start'))}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write_report(store: ArtifactStore, relative_path: str, html: str) -> str:
    """Write ``html`` atomically at ``relative_path`` under the store's root and return its URI.

    The caller chooses the path (the DAG uses ``reports/<workload_id>/<day>/run-report.html``);
    readers see the previous report or the new one, never a partial page.
    """
    path = store.path(relative_path)
    store.write_bytes_atomic(path, html.encode("utf-8"))
    return store.uri(path)


@dataclass(frozen=True)
class _Run:
    """The parts of the report data that several sections read, with missing blocks normalised."""

    stages: dict[str, dict[str, Any]]
    training: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    decision: dict[str, Any]
    comparisons: dict[str, dict[str, Any]]
    primary: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> _Run:
        decision = _dict(data.get("decision"))
        comparisons = _dict(decision.get("comparisons"))
        return cls(
            stages={str(s.get("stage")): s for s in _dicts(data.get("stages"))},
            training=_dicts(data.get("training")),
            evaluations=_dicts(data.get("evaluations")),
            decision=decision,
            comparisons={str(k): v for k, v in comparisons.items() if isinstance(v, dict)},
            primary=str(decision.get("primary_metric") or ""),
        )

    def summary(self, stage: str) -> dict[str, Any]:
        """The summary a stage recorded ({} when it did not run or recorded none)."""
        return _dict(self.stages.get(stage, {}).get("summary"))

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
        return f'<p class="empty">No {_esc(what)}: {self.why(stage)}.</p>'

    def min_effect(self, comparison: dict[str, Any]) -> float | None:
        """The primary metric's minimum effect: the comparison's own, else the policy's."""
        own = _number(comparison.get("min_effect"))
        return own if own is not None else _number(_dict(self.decision.get("policy")).get("min_effect"))

    def evaluation_of(self, side: str) -> dict[str, Any]:
        """The evaluation of the decision's ``champion`` or ``challenger`` ({} when there is none)."""
        who = _dict(self.decision.get(side))
        if not who:
            return {}
        key = (who.get("candidate_id"), who.get("eval_type"))
        for evaluation in self.evaluations:
            if (evaluation.get("candidate_id"), evaluation.get("eval_type")) == key:
                return evaluation
        if who.get("eval_type") == "champion":
            return next((e for e in self.evaluations if e.get("eval_type") == "champion"), {})
        return {}


# ---------------------------------------------------------------- sections


def _header(data: Mapping[str, Any], run: _Run) -> str:
    outcome = run.decision.get("outcome")
    if outcome:
        colour = _OUTCOME_COLOURS.get(str(outcome), "#57606a")
        badge = f'<span class="badge" style="background:{colour}">{_text(outcome)}</span>'
    else:
        badge = f'<span class="badge" style="background:#57606a">no decision</span> ({run.why("decide")})'
    reasons = "".join(
        f"<li><code>{_text(r.get('code'))}</code> {_text(r.get('message'))}</li>"
        for r in _dicts(run.decision.get("reasons"))
    )
    meta = "".join(
        f"<span>{label}: <b>{_text(data.get(key))}</b></span>"
        for label, key in (("DAG", "dag_id"), ("run", "dag_run_id"), ("generated", "generated_at"))
    )
    interval = f"{_text(data.get('interval_start'))} → {_text(data.get('interval_end'))}"
    return (
        f"<header>\n<h1>Flywheel run report: {_text(data.get('workload_id'))}</h1>\n"
        f'<p class="meta"><span>interval: <b>{interval}</b></span>{meta}</p>\n'
        f"<p>Outcome: {badge}</p>\n" + (f"<ul>{reasons}</ul>\n" if reasons else "") + "</header>"
    )


def _key_figures(run: _Run) -> str:
    parts = ['<section id="key-figures">\n<h2>Key figures: champion vs challenger</h2>']
    if not run.decision:
        parts.append(run.absent("decision", "decide"))
        return "\n".join(parts) + "\n</section>"
    sides = "".join(
        f"<li>{side}: {_identity(_dict(run.decision.get(side)))}</li>" for side in ("champion", "challenger")
    )
    parts.append(
        f"<ul>{sides}<li>primary metric: <code>{_text(run.primary or None)}</code>, "
        f"paired examples: {_text(run.decision.get('examples'))}</li></ul>"
    )
    if run.comparisons:
        rows = "".join(
            _comparison_row(metric, c, run.min_effect(c))
            for metric, c in _ordered(run.comparisons, run.primary)
        )
        parts.append(
            "<table><thead><tr><th>metric</th><th>role</th><th>champion</th><th>challenger</th>"
            "<th>difference [interval]</th><th>p-value</th><th>min effect / margin</th>"
            f"<th>result</th><th>note</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    else:
        parts.append('<p class="empty">No champion–challenger comparison in this decision.</p>')
    candidates = _dicts(run.decision.get("candidates"))
    if candidates:
        rows = "".join(
            f"<tr><td>{_variant(c)}</td><td class='num'>{_text(c.get('primary'))}</td>"
            f"<td class='num'>{_text(c.get('rank'))}</td>"
            f"<td class='num'>{_seconds(c.get('latency_p95_s'))}</td>"
            f"<td>{_text(c.get('eligible'))}</td><td>{_text(c.get('note'))}</td></tr>"
            for c in candidates
        )
        parts.append(
            "<h3>Candidates considered</h3><table><thead><tr><th>variant</th><th>primary metric</th>"
            "<th>rank</th><th>latency p95</th><th>eligible</th><th>note</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    policy = run.decision.get("policy")
    if policy:
        parts.append(
            "<details><summary>Decision policy</summary>"
            f"<pre>{_esc(json.dumps(policy, indent=2, sort_keys=True, default=str))}</pre></details>"
        )
    return "\n".join(parts) + "\n</section>"


def _comparison_row(metric: str, c: dict[str, Any], min_effect: float | None) -> str:
    """One key-figures row; latencies in seconds, a relative margin as a share of the champion's value."""
    value = _seconds if metric == "latency_p95_s" else _text
    unit = " s" if metric == "latency_p95_s" else ""
    interval = (
        f"{_signed(c.get('difference'))}{unit} [{_signed(c.get('ci_low'))}, {_signed(c.get('ci_high'))}]"
    )
    margin = _number(c.get("margin"))
    if c.get("role") == "primary":
        bound = f"min effect {_signed(min_effect)}"
        if c.get("threshold") is not None:
            bound += f", p below α = {_text(c.get('threshold'))}"
    elif c.get("relative") and margin is not None:
        bound = f"margin {margin:.0%} of the champion's"
    else:
        bound = f"margin {_text(margin)}"
    if c.get("limit") is not None:
        bound += f", limit {value(c.get('limit'))}"
    passed = c.get("passed")
    result = {True: '<span class="pass">pass</span>', False: '<span class="fail">fail</span>'}.get(
        passed, "—"
    )
    return (
        f"<tr><td><code>{_esc(metric)}</code></td><td>{_text(c.get('role'))}</td>"
        f"<td class='num'>{value(c.get('champion'))}</td><td class='num'>{value(c.get('challenger'))}</td>"
        f"<td class='num'>{interval}</td><td class='num'>{_p_value(c.get('p_value'))}</td>"
        f"<td>{bound}</td><td>{result}</td><td>{_text(c.get('note'))}</td></tr>"
    )


def _metrics_section(run: _Run) -> str:
    parts = ['<section id="evaluations">\n<h2>Evaluation metrics</h2>']
    if not run.evaluations:
        parts.append(run.absent("evaluations", "evaluate"))
        return "\n".join(parts) + "\n</section>"
    names = _metric_names(run.evaluations)
    scored = [e for e in run.evaluations if any(_metric(e, m).get("value") is not None for m in names)]
    if scored:
        parts.append(
            _figure(
                _metrics_plot(scored, names),
                "metrics",
                "Each evaluated variant's metrics on the same examples; the whiskers are the 95% "
                "intervals. parse_error_rate is better when lower, every other metric when higher. "
                "A metric without a bar had no examples (n = 0).",
            )
        )
    else:
        parts.append('<p class="empty">No evaluation produced metric values.</p>')
    header = "".join(f"<th>{_esc(m)}</th>" for m in names)
    rows = []
    for e in run.evaluations:
        cells = "".join(f"<td class='num'>{_metric_cell(_metric(e, m))}</td>" for m in names)
        rows.append(
            f"<tr><td>{_variant(e)}</td><td>{_status(e.get('status'))}</td>"
            f"<td class='num'>{_text(e.get('examples'))}</td>{cells}"
            f"<td class='num'>{_seconds(e.get('latency_p95_s'))}</td><td>{_error(e.get('error'))}</td></tr>"
        )
    parts.append(
        "<table><thead><tr><th>variant</th><th>status</th><th>examples</th>"
        f"{header}<th>latency p95</th><th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return "\n".join(parts) + "\n</section>"


def _forest_section(run: _Run) -> str:
    parts = ['<section id="differences">\n<h2>Paired differences (challenger − champion)</h2>']
    rows = [
        (metric, c)
        for metric, c in _ordered(run.comparisons, run.primary)
        if _number(c.get("difference")) is not None and not _other_scale(metric, c)
    ]
    if not run.decision:
        parts.append(run.absent("paired differences", "decide"))
    elif not rows:
        parts.append('<p class="empty">No paired differences: the decision recorded none to draw.</p>')
    else:
        skipped = [m for m, c in run.comparisons.items() if _other_scale(m, c)]
        note = ""
        if skipped:
            note = f" Not drawn (another scale; see the key figures): {_esc(', '.join(skipped))}."
        parts.append(
            _figure(
                _forest_plot(rows, run.min_effect(run.comparisons.get(run.primary, {}))),
                "forest",
                "Each row is one metric: the dot is the challenger's value minus the champion's on the same "
                "examples, the line its paired bootstrap interval (95% for the primary metric; for a "
                "guardrail the 1 − 2α interval whose one-sided bound the margin is judged on, 90% at "
                "α = 0.05). Right of the dashed zero line the challenger scores higher. The green tick "
                "on the primary metric's row is the minimum effect a promotion needs; the red ticks are "
                "the guardrails' non-inferiority margins (the interval's bound must not cross them; for a "
                "lower-is-better metric the margin lies right of zero). Dot colour: green passed, red "
                "failed, grey not judged." + note,
            )
        )
    return "\n".join(parts) + "\n</section>"


def _paired_section(run: _Run) -> str:
    parts = ['<section id="paired-outcomes">\n<h2>Paired outcomes of the primary metric</h2>']
    comparison = run.comparisons.get(run.primary, {})
    split = _paired_split(comparison)
    if not run.decision:
        parts.append(run.absent("paired outcomes", "decide"))
    elif split is None:
        parts.append('<p class="empty">No paired outcomes: the decision recorded no discordant counts.</p>')
    else:
        caption = (
            "How the primary metric's examples split between the two models. Only the examples one "
            "model got right and the other wrong (the discordant pairs) decide the exact McNemar test."
        )
        if len(split) < 4:
            caption += " Only the discordant counts are shown: the data did not give the concordant ones."
        parts.append(
            _figure(_paired_plot(split, run.primary, _number(comparison.get("p_value"))), "paired", caption)
        )
    return "\n".join(parts) + "\n</section>"


def _per_tool_section(run: _Run) -> str:
    parts = ['<section id="per-tool">\n<h2>Per-tool accuracy: champion vs challenger</h2>']
    champion = _dict(run.evaluation_of("champion").get("per_tool"))
    challenger = _dict(run.evaluation_of("challenger").get("per_tool"))
    if not run.decision:
        parts.append(run.absent("per-tool comparison", "decide"))
    elif not run.evaluations:
        parts.append(run.absent("per-tool scores", "evaluate"))
    elif not champion and not challenger:
        parts.append('<p class="empty">No per-tool scores for the champion or the challenger.</p>')
    else:
        key = _PER_TOOL_KEY.get(run.primary, "function_name_and_args")
        labels = sorted(
            set(champion) | set(challenger),
            key=lambda label: (-_tool_n(champion, challenger, label), label),
        )
        shown = labels[:_MAX_TOOLS]
        more = (
            f" The {len(shown)} most frequent of {len(labels)} labels are shown."
            if len(labels) > len(shown)
            else ""
        )
        parts.append(
            _figure(
                _per_tool_plot(shown, champion, challenger, key),
                "per-tool",
                f"The {_esc(key)} accuracy of each reference label (the tool the example should call, or "
                "no call), champion in grey and challenger in blue, n examples per label; a missing bar: "
                "that model has no score for the label." + more,
            )
        )
    return "\n".join(parts) + "\n</section>"


def _training_section(run: _Run) -> str:
    parts = ['<section id="training">\n<h2>Training</h2>']
    if not run.training:
        parts.append(run.absent("training runs", "train"))
        return "\n".join(parts) + "\n</section>"
    curves = [t for t in run.training if _curve_points(t, "loss") or _curve_points(t, "validation_loss")]
    if curves:
        parts.append(
            _figure(
                _loss_plot(curves),
                "loss",
                "Training loss (solid) and validation loss (dashed, dots) per candidate by optimiser step. "
                "A validation loss that rises while the training loss falls means overfitting.",
            )
        )
    else:
        parts.append('<p class="empty">No loss curves: no candidate recorded one.</p>')
    rows = "".join(
        f"<tr><td>{_text(t.get('candidate_id'))}</td><td>{_status(t.get('status'))}</td>"
        f"<td>{_text(t.get('base_model'))}</td><td class='num'>{_text(t.get('steps'))}</td>"
        f"<td class='num'>{_text(t.get('best_validation_loss'))}</td>"
        f"<td class='num'>{_seconds(t.get('wall_seconds'))}</td><td>{_error(t.get('error'))}</td></tr>"
        for t in run.training
    )
    parts.append(
        "<table><thead><tr><th>candidate</th><th>status</th><th>base model</th><th>steps</th>"
        "<th>best validation loss</th><th>wall time</th><th>error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return "\n".join(parts) + "\n</section>"


def _data_quality_section(run: _Run) -> str:
    parts = ['<section id="data-quality">\n<h2>Data quality</h2>']
    validate = run.summary("validate")
    counts = {k: _number(validate.get(k)) for k in ("extracted", "clean", "quarantined")}
    if any(v is not None for v in counts.values()):
        reasons = {str(k): v for k, v in _dict(validate.get("reasons")).items() if _number(v) is not None}
        parts.append(
            _figure(
                _quality_plot(counts, reasons),
                "quality",
                "Left: the day's records as extracted, and how validation split them into clean and "
                "quarantined. Right: why records were quarantined (reason codes, most frequent first).",
            )
        )
        failed = validate.get("failed_expectations")
        if isinstance(failed, list):
            failed = ", ".join(str(x) for x in failed)
        parts.append(
            "<table><tbody>"
            "<tr><th>duplicates in the day</th>"
            f"<td class='num'>{_text(validate.get('duplicates_in_day'))}</td></tr>"
            f"<tr><th>batch expectations passed</th><td>{_text(validate.get('success'))}</td></tr>"
            f"<tr><th>failed expectations</th><td>{_text(failed or None)}</td></tr>"
            "</tbody></table>"
        )
    else:
        parts.append(run.absent("validation summary", "validate"))
    dataset = run.summary("build_dataset")
    if dataset:
        split = _dict(dataset.get("counts"))
        parts.append(
            f"<h3>Dataset <code>{_text(dataset.get('dataset_id'))}</code></h3><table><thead><tr>"
            "<th>train</th><th>validation</th><th>evaluation</th></tr></thead><tbody><tr>"
            + "".join(
                f"<td class='num'>{_text(split.get(k))}</td>" for k in ("train", "validation", "evaluation")
            )
            + "</tr></tbody></table>"
        )
    else:
        parts.append(run.absent("dataset", "build_dataset"))
    return "\n".join(parts) + "\n</section>"


def _stage_section(run: _Run) -> str:
    names = list(STAGES) + [s for s in run.stages if s not in STAGES]
    rows = []
    for name in names:
        stage = run.stages.get(name)
        status = _status(stage.get("status")) if stage else '<span class="status">not run</span>'
        error = _error(stage.get("error")) if stage else ""
        rows.append(f"<tr><td>{_esc(name)}</td><td>{status}</td><td>{error}</td></tr>")
    return (
        '<section id="stages">\n<h2>Stages</h2>\n<table><thead><tr><th>stage</th><th>status</th>'
        f"<th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>\n</section>"
    )


def _links_section(run: _Run) -> str:
    items = []
    docs = run.summary("validate").get("data_docs_uri")
    if docs:
        items.append(f"<li>Data Docs of the validation: {_link(docs)}</li>")
    dataset_id = run.summary("build_dataset").get("dataset_id")
    if dataset_id:
        items.append(f"<li>dataset: <code>{_esc(dataset_id)}</code></li>")
    for t in run.training:
        if t.get("adapter_uri"):
            items.append(f"<li>adapter of {_text(t.get('candidate_id'))}: {_link(t['adapter_uri'])}</li>")
    body = (
        f"<ul>{''.join(items)}</ul>"
        if items
        else '<p class="empty">No links: no stage published an output.</p>'
    )
    return f'<section id="links">\n<h2>Links</h2>\n{body}\n</section>'


# ---------------------------------------------------------------- plots


@contextmanager
def _plot_style() -> Iterator[None]:
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


def _figure(fig: Figure, name: str, caption: str) -> str:
    """``fig`` as an inline ``<svg>`` in a ``<figure>``, its ids prefixed with ``name`` (unique per page)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    fig.clear()
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = _SVG_REF.sub(lambda m: f"{m[1]}{name}-{m[2]}" if m[2] in ids else m[0], svg)
    svg = svg.replace("<svg ", f'<svg role="img" aria-labelledby="{name}-caption" ', 1)
    return f'<figure>\n{svg}<figcaption id="{name}-caption">{caption}</figcaption>\n</figure>'


def _metrics_plot(evaluations: list[dict[str, Any]], names: list[str]) -> Figure:
    fig = _new_figure(10, 4)
    ax = fig.add_subplot()
    width = 0.8 / len(evaluations)
    for i, evaluation in enumerate(evaluations):
        xs, values, low, high = [], [], [], []
        for j, metric in enumerate(names):
            m = _metric(evaluation, metric)
            value = _number(m.get("value"))
            if value is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            values.append(value)
            ci_low, ci_high = _number(m.get("ci_low")), _number(m.get("ci_high"))
            low.append(0.0 if ci_low is None else max(0.0, value - ci_low))
            high.append(0.0 if ci_high is None else max(0.0, ci_high - value))
        ax.bar(xs, values, width, yerr=[low, high], capsize=2, label=_short(_variant_text(evaluation)))
    ax.set_xticks(range(len(names)), [_metric_label(m) for m in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("value (95% interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(evaluations)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return fig


def _forest_plot(rows: list[tuple[str, dict[str, Any]]], min_effect: float | None) -> Figure:
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
        difference = _number(c.get("difference"))
        low, high = _number(c.get("ci_low")), _number(c.get("ci_high"))
        if low is not None and high is not None:
            ax.plot([low, high], [y, y], color="#1f2328", linewidth=2, label=once("interval"))
        ax.plot(difference, y, "o", color=colours.get(c.get("passed"), "#8c959f"), markersize=7)
        if c.get("role") == "primary":
            if min_effect is not None:
                ax.plot(min_effect, y, "|", color="#1a7f37", markersize=18, mew=2, label=once("min effect"))
        else:
            margin = _number(c.get("margin"))
            if margin is not None:
                bound = margin if metric in LOWER_IS_BETTER else -margin
                ax.plot(bound, y, "|", color="#cf222e", markersize=18, mew=2, label=once("guardrail margin"))
    ax.axvline(0, color="#57606a", linestyle="--", linewidth=1)
    ax.set_yticks(
        range(len(rows)),
        [f"{_metric_label(m)}\n({_short(str(c.get('role') or ''))})" for m, c in reversed(rows)],
    )
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("challenger − champion")
    ax.grid(axis="x", alpha=0.3)
    if labelled:
        ax.legend(fontsize=7, loc="best")
    return fig


def _paired_plot(split: dict[str, int], metric: str, p_value: float | None) -> Figure:
    fig = _new_figure(7, 2.8)
    ax = fig.add_subplot()
    colours = {
        "both right": "#8fd19e",
        "only challenger right": _CHALLENGER_COLOUR,
        "only champion right": "#bf8700",
        "both wrong": "#d0d7de",
    }
    labels = list(split)
    bars = ax.bar(labels, [split[k] for k in labels], color=[colours[k] for k in labels])
    ax.bar_label(bars, padding=2)
    ax.set_ylabel("examples")
    title = _short(metric) if metric else "primary metric"
    if p_value is not None:
        title += f"  (McNemar p = {_p_value(p_value)})"
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.15)
    return fig


def _per_tool_plot(
    labels: list[str], champion: dict[str, Any], challenger: dict[str, Any], key: str
) -> Figure:
    fig = _new_figure(8, 0.32 * len(labels) + 1.3)
    ax = fig.add_subplot()
    ys = range(len(labels))
    for offset, scores, name, colour in (
        (-0.2, champion, "champion", _CHAMPION_COLOUR),
        (0.2, challenger, "challenger", _CHALLENGER_COLOUR),
    ):
        points = [
            (y, _number(_dict(scores.get(label)).get(key))) for y, label in zip(ys, labels, strict=True)
        ]
        kept = [(y, v) for y, v in points if v is not None]
        ax.barh([y + offset for y, _ in kept], [v for _, v in kept], height=0.4, color=colour, label=name)
    ax.set_yticks(
        list(ys),
        [f"{_short(label)} (n={_tool_n(champion, challenger, label)})" for label in labels],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{key} accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _loss_plot(training: list[dict[str, Any]]) -> Figure:
    fig = _new_figure(8, 3.2)
    ax = fig.add_subplot()
    for i, run in enumerate(training):
        colour = f"C{i % 10}"
        name = _short(str(run.get("candidate_id")))
        train = _curve_points(run, "loss")
        if train:
            ax.plot(*zip(*train, strict=True), color=colour, label=f"{name} train")
        validation = _curve_points(run, "validation_loss")
        if validation:
            ax.plot(
                *zip(*validation, strict=True), "--o", color=colour, markersize=3, label=f"{name} validation"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _quality_plot(counts: dict[str, float | None], reasons: dict[str, Any]) -> Figure:
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
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_REASONS]
    bars = ax.barh([_short(k) for k, _ in top], [v for _, v in top], color="#cf222e")
    ax.bar_label(bars, padding=2, fmt="%g")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    title = "quarantine reasons"
    if len(reasons) > len(top):
        title += f" (top {len(top)} of {len(reasons)})"
    ax.set_title(title, fontsize=9)


# ---------------------------------------------------------------- data helpers


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    """``value`` as a finite float; None for None, booleans, text and NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _metric(evaluation: dict[str, Any], name: str) -> dict[str, Any]:
    return _dict(_dict(evaluation.get("metrics")).get(name))


def _metric_names(evaluations: list[dict[str, Any]]) -> list[str]:
    """The known metrics any evaluation reports, in :data:`METRICS` order, then the others sorted."""
    present = {str(name) for e in evaluations for name in _dict(e.get("metrics"))}
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def _ordered(comparisons: dict[str, dict[str, Any]], primary: str) -> list[tuple[str, dict[str, Any]]]:
    """Comparisons with the primary metric first, then guardrails in :data:`METRICS` order."""
    rank = {m: i for i, m in enumerate(METRICS)}
    return sorted(comparisons.items(), key=lambda kv: (kv[0] != primary, rank.get(kv[0], len(rank)), kv[0]))


def _paired_split(comparison: dict[str, Any]) -> dict[str, int] | None:
    """The four paired-outcome counts of a binary metric, or only the discordant ones, or None.

    Both models' values are fractions of the same ``n`` examples, so the champion got
    ``champion * n`` right, of which ``champion_only`` the challenger missed: the rest both got right.
    """
    only_challenger = _number(comparison.get("challenger_only"))
    only_champion = _number(comparison.get("champion_only"))
    if only_challenger is None or only_champion is None:
        return None
    discordant = {"only challenger right": int(only_challenger), "only champion right": int(only_champion)}
    n = _number(comparison.get("n"))
    champion, challenger = _number(comparison.get("champion")), _number(comparison.get("challenger"))
    if not n or champion is None or challenger is None:
        return discordant
    both_right = round(champion * n) - discordant["only champion right"]
    if both_right != round(challenger * n) - discordant["only challenger right"]:
        return discordant
    both_wrong = int(n) - both_right - sum(discordant.values())
    if both_right < 0 or both_wrong < 0:
        return discordant
    return {"both right": both_right, **discordant, "both wrong": both_wrong}


def _other_scale(metric: str, comparison: dict[str, Any]) -> bool:
    """Whether a comparison is not a difference of rates (p95 latency in seconds, a relative margin)."""
    return metric == "latency_p95_s" or bool(comparison.get("relative"))


def _tool_n(champion: dict[str, Any], challenger: dict[str, Any], label: str) -> int:
    """Examples of ``label`` (the larger count of the two models, which normally agree)."""
    counts = [_number(_dict(side.get(label)).get("n")) for side in (champion, challenger)]
    return int(max((c for c in counts if c is not None), default=0))


def _curve_points(training: dict[str, Any], key: str) -> list[tuple[float, float]]:
    points = []
    for point in _dicts(training.get("loss_curve")):
        step, value = _number(point.get("step")), _number(point.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    return points


# ---------------------------------------------------------------- text helpers


def _esc(value: object) -> str:
    return escape(str(value), quote=True)


def _text(value: Any) -> str:
    """Any value as escaped HTML text: numbers formatted, booleans as yes/no, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else _esc(value)
    return _esc(value)


def _signed(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:+.3f}"


def _p_value(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "—"
    return "< 0.0001" if number < 0.0001 else f"{number:.4f}"


def _seconds(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:,.2f} s"


def _short(text: str) -> str:
    """A label cut to fit a plot axis (the tables show it in full)."""
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def _metric_label(metric: str) -> str:
    label = metric.replace("_accuracy", "").replace("_", " ")
    return f"{label}\n(lower is better)" if metric in LOWER_IS_BETTER else label


def _variant_text(row: dict[str, Any]) -> str:
    """``candidate/eval_type``, or just the eval type when the candidate id repeats it (the champion)."""
    candidate, eval_type = row.get("candidate_id"), row.get("eval_type")
    if candidate in (None, "", eval_type):
        return str(eval_type)
    return f"{candidate}/{eval_type}"


def _variant(row: dict[str, Any]) -> str:
    return _esc(_variant_text(row))


def _identity(who: dict[str, Any]) -> str:
    if not who:
        return "—"
    parts = [f"<b>{_variant(who)}</b>"]
    if who.get("version") is not None:
        parts.append(f"version {_text(who['version'])}")
    model = who.get("model")
    if isinstance(model, dict):
        model = json.dumps({k: v for k, v in model.items() if k != "version"}, sort_keys=True, default=str)
    if model:
        parts.append(f"model <code>{_esc(model)}</code>")
    return ", ".join(parts)


def _metric_cell(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return f"— (n={_text(metric.get('n'))})" if metric else "—"
    return f"{_text(metric.get('value'))} [{_text(metric.get('ci_low'))}, {_text(metric.get('ci_high'))}]"


def _status(status: Any) -> str:
    colour = _STATUS_COLOURS.get(str(status), "#57606a")
    return f'<span class="status" style="color:{colour}">{_text(status)}</span>'


def _error(error: Any) -> str:
    """A job's error (text, or an ``error.json`` dict: its class and message) as escaped HTML."""
    if not error:
        return ""
    if isinstance(error, dict):
        text = ": ".join(str(error[k]) for k in ("error", "message") if error.get(k)) or json.dumps(error)
    else:
        text = str(error)
    return f"<pre>{_esc(text)}</pre>"


def _link(uri: Any) -> str:
    """A link for http(s) and file URIs; any other URI (s3://, javascript:) as plain text."""
    text = _esc(uri)
    try:
        scheme = urlsplit(str(uri)).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme in _LINK_SCHEMES:
        return f'<a href="{text}">{text}</a>'
    return f"<code>{text}</code>"
