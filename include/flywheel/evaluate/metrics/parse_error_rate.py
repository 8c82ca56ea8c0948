"""``parse_error_rate``: how often the model's answer could not be read as tool calls."""

import json
from collections.abc import Mapping
from typing import Any

from flywheel.evaluate.metrics.base import ExampleMetric, evaluate_module


class ParseErrorRate(ExampleMetric):
    """Share of examples whose prediction is missing or not a list of well-formed OpenAI tool calls."""

    name = "parse_error_rate"
    label = "parse errors"
    higher_is_better = False
    # examples.jsonl already says it: an answer that could not be parsed has "tool_calls": null.
    score_key = None
    inputs = ("predictions",)
    description = """\
Parse-error rate: the share of examples whose prediction could not be parsed into tool calls. The caller
passes, per example, the parsed OpenAI ``tool_calls`` list (``[]`` for a plain-text answer with no call)
or ``None`` when parsing the model output failed. A prediction also counts as a parse error when it is not
a list of well-formed OpenAI tool calls -- undecodable JSON text, a call without a string function name,
or ``arguments`` that are not a JSON object.
"""

    def score(self, prediction, reference, tools) -> bool:
        """The answer is not a list of well-formed tool calls (None: it could not be parsed)."""
        return not is_well_formed_prediction(prediction)

    def outcome(self, record: Mapping[str, Any]) -> bool:
        """A line whose ``tool_calls`` is null is a parse error."""
        return record.get("tool_calls") is None


def is_well_formed_prediction(calls: Any) -> bool:
    """Whether a prediction is a list of OpenAI tool calls with JSON-object arguments."""
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not isinstance(call, Mapping):
            return False
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            return False
        arguments = function.get("arguments", {})
        if arguments is None or arguments == "":
            continue
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return False
        if not isinstance(arguments, dict):
            return False
    return True


EvaluateModule = evaluate_module(ParseErrorRate)
