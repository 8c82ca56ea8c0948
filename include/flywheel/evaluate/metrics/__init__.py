"""Evaluation metrics, one module each, registered here (the one place that lists the built-ins).

Each metric module defines its metric once (:mod:`flywheel.evaluate.metrics.base`): name, direction,
which examples it applies to, how one example is scored and how the scores aggregate, and exposes the
metric's Hugging Face ``evaluate`` module. The config (``evaluation.settings.metrics``,
``decision.primary_metric``, ``decision.guardrails``) names a built-in by its name and the user's own
by its dotted path (``package.module:ClassName``); :func:`get_metric` returns either definition.

Importing this package is light (no ``evaluate``): the config is validated at DAG parse time.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.evaluate.metrics.base import ExampleMetric, Metric, RunMetric, evaluate_module
from flywheel.evaluate.metrics.scoring import (
    bfcl_tools,
    normalize_schema,
    score_tool_calls,
    standardize_string,
)
from flywheel.plugins import PluginNotFoundError, Registry

__all__ = [
    "METRICS",
    "ExampleMetric",
    "Metric",
    "MetricView",
    "RunMetric",
    "bfcl_tools",
    "builtin_metrics",
    "evaluate_module",
    "evaluate_module_path",
    "example_metrics",
    "get_metric",
    "load_evaluate_module",
    "normalize_schema",
    "report_metrics",
    "score_tool_calls",
    "standardize_string",
]

METRICS: Registry[type[Metric]] = Registry(
    "metric",
    {
        "function_name_accuracy": "flywheel.evaluate.metrics.function_name_accuracy:FunctionNameAccuracy",
        "function_name_and_args_accuracy": (
            "flywheel.evaluate.metrics.function_name_and_args_accuracy:FunctionNameAndArgsAccuracy"
        ),
        "tool_call_ast_accuracy": "flywheel.evaluate.metrics.tool_call_ast_accuracy:ToolCallAstAccuracy",
        "no_call_accuracy": "flywheel.evaluate.metrics.no_call_accuracy:NoCallAccuracy",
        "parse_error_rate": "flywheel.evaluate.metrics.parse_error_rate:ParseErrorRate",
        "latency_p95_s": "flywheel.evaluate.metrics.latency_p95_s:LatencyP95",
    },
)
"""The built-in metrics by name, in the order results and reports list them."""


@functools.cache
def get_metric(name: str) -> Metric:
    """The definition of metric ``name``: a built-in's name or the dotted path of the user's own."""
    definition = METRICS.resolve(name)
    if not (inspect.isclass(definition) and issubclass(definition, ExampleMetric | RunMetric)):
        raise PluginNotFoundError(
            f"{name!r} is not a metric: expected a subclass of flywheel.evaluate.metrics.ExampleMetric "
            "(or RunMetric)"
        )
    return definition()


def builtin_metrics() -> list[Metric]:
    """Every built-in metric's definition, in registry order."""
    return [get_metric(name) for name in METRICS.builtin_names]


def example_metrics(names: Iterable[str] = ()) -> list[ExampleMetric]:
    """The per-example built-ins followed by the named ones (built-in or own), each once.

    The evaluation job computes these: every built-in, plus ``evaluation.settings.metrics``.
    """
    chosen: dict[str, ExampleMetric] = {}
    for metric in [*builtin_metrics(), *(get_metric(name) for name in names)]:
        if isinstance(metric, ExampleMetric):
            chosen.setdefault(metric.name, metric)
    return list(chosen.values())


def evaluate_module_path(name: str) -> Path:
    """The ``.py`` file of per-example metric ``name``: the path to give ``evaluate.load``."""
    metric = get_metric(name)
    if not isinstance(metric, ExampleMetric):
        raise PluginNotFoundError(f"metric {name!r} is a run statistic: it has no evaluate module")
    return Path(inspect.getfile(type(metric)))


def load_evaluate_module(name: str, **kwargs: Any) -> Any:
    """Metric ``name``'s Hugging Face ``evaluate`` module, loaded from its file (no network needed).

    Extra keyword arguments (``keep_in_memory``, ``cache_dir``, ``experiment_id``...) go to ``evaluate.load``.
    """
    import evaluate  # imported lazily: only the evaluate modules need the evaluate library

    return evaluate.load(str(evaluate_module_path(name)), **kwargs)


@dataclass(frozen=True)
class MetricView:
    """What the report needs of one metric it shows."""

    name: str
    label: str
    higher_is_better: bool
    per_tool_key: str | None
    """The key of its value in each ``result.json`` ``per_tool`` entry; None: no per-tool value."""
    unit: str = ""
    """The unit of a run statistic's value (``" s"``); empty for a share of examples."""


def report_metrics(names: Iterable[str], own: Iterable[str] = ()) -> list[MetricView]:
    """How the report shows each metric of ``names``: built-ins first in registry order, then the others.

    ``names`` are metric names found in the results and the decision; ``own`` the dotted paths of the
    workload's own metrics (``evaluation.settings.metrics``), which describe the names that are not
    built-in. A name described by neither (a metric since removed from the config) keeps its name as
    its label and counts as higher-is-better.
    """
    known = {m.name: m for m in [*builtin_metrics(), *(get_metric(path) for path in own)]}
    given = list(dict.fromkeys(names))
    ordered = [n for n in METRICS.builtin_names if n in given] + [
        n for n in given if n not in METRICS.builtin_names
    ]
    views = []
    for name in ordered:
        metric = known.get(name)
        if metric is None:
            views.append(MetricView(name, name.replace("_", " "), True, None))
            continue
        per_tool = isinstance(metric, ExampleMetric) and metric.per_tool
        unit = metric.unit if isinstance(metric, RunMetric) else ""
        views.append(
            MetricView(name, metric.label, metric.higher_is_better, name if per_tool else None, unit)
        )
    return views
