"""The metrics' Hugging Face ``evaluate`` modules, loaded offline from their metric modules' files."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from typing import Any

import pytest

evaluate = pytest.importorskip("evaluate")

from flywheel.evaluate.metrics import (  # noqa: E402
    ExampleMetric,
    builtin_metrics,
    evaluate_module_path,
    load_evaluate_module,
)
from flywheel.plugins import PluginNotFoundError  # noqa: E402

MODULE_NAMES = [m.name for m in builtin_metrics() if isinstance(m, ExampleMetric)]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                },
                "required": ["city"],
            },
        },
    }
]


def call(name: str, arguments: str) -> dict[str, Any]:
    """Build one OpenAI tool call with JSON-text arguments."""
    return {"id": "call_0", "type": "function", "function": {"name": name, "arguments": arguments}}


PARIS = [call("get_weather", '{"city": "Paris"}')]
# Predictions, references (JSON text; the second is a BFCL possible answer) and the expected scores.
PREDICTIONS = [
    PARIS,  # all three scores True
    [call("get_weather", '{"city": "new york"}')],  # name and AST ok; not literally an acceptable value
    [call("get_weather", '{"city": "Milan"}')],  # right function, wrong city
    None,  # the model output could not be parsed
]
REFERENCES = [
    json.dumps(PARIS),
    json.dumps([{"get_weather": {"city": ["New York", "NYC"], "unit": ["fahrenheit", ""]}}]),
    json.dumps([call("get_weather", '{"city": "Rome"}')]),
    json.dumps(PARIS),
]
EXPECTED = {
    "function_name_accuracy": 0.75,
    "function_name_and_args_accuracy": 0.25,
    "tool_call_ast_accuracy": 0.5,
}


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run with the Hub and evaluate offline, caches in a temporary folder and sockets refused.

    One folder serves the whole module: ``evaluate`` imports loaded scripts as ``evaluate_modules.*`` from
    the modules cache, and that package stays in ``sys.modules`` for the rest of the session.
    """
    home = tmp_path_factory.mktemp("hf_home")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access attempted while offline")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_EVALUATE_OFFLINE", "1")
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        # evaluate reads these at import time, so point its config at the temporary folder too.
        mp.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", home / "modules")
        mp.setattr(evaluate.config, "HF_METRICS_CACHE", home / "metrics")
        mp.setattr(socket.socket, "connect", refuse)
        yield


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_loads_offline(name: str) -> None:
    """Every module loads from its local folder and describes itself."""
    metric = load_evaluate_module(name)
    assert isinstance(metric, evaluate.Metric)
    assert metric.name == name
    assert metric.description.strip()
    assert metric.inputs_description.strip()
    assert "predictions" in metric.features


@pytest.mark.usefixtures("offline")
def test_load_by_script_path() -> None:
    """``evaluate.load`` takes the metric module's ``.py`` file."""
    path = evaluate_module_path("tool_call_ast_accuracy")
    assert path.name == "tool_call_ast_accuracy.py"
    metric = evaluate.load(str(path))
    assert "Berkeley Function Calling Leaderboard" in metric.citation


def test_unknown_module_name() -> None:
    """Asking for a module that does not exist fails clearly."""
    with pytest.raises(PluginNotFoundError, match="unknown metric 'nope'"):
        evaluate_module_path("nope")


def test_a_run_statistic_has_no_module() -> None:
    """The p95 latency is a statistic of the whole run, not a per-example score: no evaluate module."""
    with pytest.raises(PluginNotFoundError, match="run statistic"):
        evaluate_module_path("latency_p95_s")


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(("name", "expected"), EXPECTED.items())
def test_accuracy_modules(name: str, expected: float) -> None:
    """The three accuracy modules average the scorer's bools, with a tools list and a BFCL reference."""
    metric = load_evaluate_module(name)
    tools = [json.dumps(TOOLS)] * len(PREDICTIONS)
    assert metric.compute(predictions=PREDICTIONS, references=REFERENCES, tools=tools) == {name: expected}


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("name", EXPECTED)
def test_accuracy_modules_accept_json_text_and_batches(name: str) -> None:
    """Predictions as JSON text, references as lists, tools as lists and incremental batches agree."""
    metric = load_evaluate_module(name)
    for pred, ref in zip(PREDICTIONS, REFERENCES, strict=True):
        metric.add_batch(predictions=[json.dumps(pred)], references=[json.loads(ref)], tools=[TOOLS])
    assert metric.compute() == {name: EXPECTED[name]}


@pytest.mark.usefixtures("offline")
def test_tools_are_optional() -> None:
    """Without tools the BFCL reference still scores (no schema checks); the tools column defaults to None."""
    metric = load_evaluate_module("tool_call_ast_accuracy")
    assert metric.compute(predictions=PREDICTIONS[:2], references=REFERENCES[:2]) == {
        "tool_call_ast_accuracy": 1.0
    }


@pytest.mark.usefixtures("offline")
def test_no_call_accuracy_mixed_batch() -> None:
    """Only no-call references count; an unparseable prediction is not a correct abstention."""
    metric = load_evaluate_module("no_call_accuracy")
    predictions = [[], PARIS, None, [], PARIS]
    references = ["[]", "[]", "[]", json.dumps(PARIS), json.dumps(PARIS)]
    result = metric.compute(predictions=predictions, references=references)
    assert result == {"no_call_accuracy": pytest.approx(1 / 3), "no_call_examples": 3}


@pytest.mark.usefixtures("offline")
def test_no_call_accuracy_without_no_call_examples() -> None:
    """With no "no call" reference the accuracy is NaN and the count is zero."""
    metric = load_evaluate_module("no_call_accuracy")
    result = metric.compute(predictions=[PARIS], references=[json.dumps(PARIS)])
    assert math.isnan(result["no_call_accuracy"])
    assert result["no_call_examples"] == 0


@pytest.mark.usefixtures("offline")
def test_parse_error_rate_mixed_batch() -> None:
    """None, undecodable text and malformed arguments are parse errors; [] and good calls are not."""
    metric = load_evaluate_module("parse_error_rate")
    predictions = [
        [],
        PARIS,
        None,
        "not json",
        [call("get_weather", '{"city": ')],
        [call("get_weather", "[1, 2]")],
    ]
    assert metric.compute(predictions=predictions) == {"parse_error_rate": pytest.approx(4 / 6)}


@pytest.mark.usefixtures("offline")
def test_parse_error_rate_single_adds() -> None:
    """``add`` takes one example at a time, None included."""
    metric = load_evaluate_module("parse_error_rate")
    for prediction in ([], None, PARIS, None):
        metric.add(prediction=prediction)
    assert metric.compute() == {"parse_error_rate": 0.5}


@pytest.mark.usefixtures("offline")
def test_a_metric_of_your_own_has_its_evaluate_module_too() -> None:
    """The worked example's metric (docs/examples/my_flywheel/metrics.py) loads with ``evaluate.load``."""
    metric = load_evaluate_module("my_flywheel.metrics:OfferedToolsOnly")
    invented = [call("get_forecast", '{"city": "Paris"}')]

    assert metric.name == "offered_tools_only"
    result = metric.compute(predictions=[PARIS, [], invented, None], references=["[]"] * 4, tools=[TOOLS] * 4)
    assert result == {"offered_tools_only": 0.5}
