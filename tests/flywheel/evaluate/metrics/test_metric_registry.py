"""The metric registry: built-ins by name, the user's own by dotted path, and what the report reads."""

from __future__ import annotations

import pytest

from flywheel.evaluate.metrics import MetricView, get_metric, report_metrics
from flywheel.plugins import PluginNotFoundError


def test_a_dotted_path_must_name_a_metric_definition() -> None:
    with pytest.raises(PluginNotFoundError, match="'conftest:log_store' is not a metric"):
        get_metric("conftest:log_store")


def test_built_in_and_own_metrics_resolve_to_their_definitions() -> None:
    assert get_metric("no_call_accuracy").applies([]) is True
    assert get_metric("no_call_accuracy").applies([{"function": {"name": "f"}}]) is False
    assert get_metric("my_flywheel.metrics:OfferedToolsOnly").name == "offered_tools_only"


def test_report_metrics_lists_built_ins_first_with_direction_and_per_tool_key() -> None:
    names = ["offered_tools_only", "retired_metric", "parse_error_rate", "no_call_accuracy", "latency_p95_s"]

    views = report_metrics(names, own=["my_flywheel.metrics:OfferedToolsOnly"])

    assert views == [
        MetricView("no_call_accuracy", "no call", True, None),  # applies to no-call examples only
        MetricView("parse_error_rate", "parse errors", False, "parse_error_rate"),
        MetricView("latency_p95_s", "p95 latency", False, None, " s"),  # a run statistic
        MetricView("offered_tools_only", "offered tools only", True, "offered_tools_only"),
        MetricView("retired_metric", "retired metric", True, None),  # no longer defined anywhere
    ]
