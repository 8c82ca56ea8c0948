"""Shared plumbing for the tool-call ``evaluate`` metric modules in this package.

The modules' scripts import this file (``flywheel`` is an installed package, so the import works from the
copy ``evaluate`` makes of each script). :class:`JsonColumnsMetric` stores every input column as JSON text
and accepts either Python objects or their JSON text; :func:`decode` turns a stored value back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import datasets
import evaluate

__all__ = [
    "BFCL_CITATION",
    "JsonColumnsMetric",
    "ToolCallScoreMetric",
    "decode",
    "encode",
    "is_well_formed_prediction",
    "score_inputs_description",
    "string_features",
]

BFCL_CITATION = """\
@misc{berkeley-function-calling-leaderboard,
  title={Berkeley Function Calling Leaderboard},
  author={Fanjia Yan and Huanzhi Mao and Charlie Cheng-Jie Ji and Tianjun Zhang and Shishir G. Patil
          and Ion Stoica and Joseph E. Gonzalez},
  howpublished={\\url{https://gorilla.cs.berkeley.edu/blogs/8_berkeley_function_calling_leaderboard.html}},
  year={2024},
}
"""

_UNPARSEABLE = object()


def encode(value: Any) -> str:
    """Encode one input value as JSON text; a string is taken to be JSON text already and kept as is."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def decode(text: str | None) -> Any:
    """Decode one stored JSON value; ``None`` stays ``None`` and undecodable text returns a sentinel.

    The sentinel is never a list, so the scorer treats it as a malformed prediction or reference.
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _UNPARSEABLE


def is_well_formed_prediction(calls: Any) -> bool:
    """Whether a decoded prediction is a list of OpenAI tool calls with JSON-object arguments."""
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


def string_features(*names: str) -> datasets.Features:
    """``datasets.Features`` with one JSON-text (``Value("string")``) column per input name."""
    return datasets.Features({name: datasets.Value("string") for name in names})


class JsonColumnsMetric(evaluate.Metric):
    """An ``evaluate.Metric`` whose input columns hold JSON text, accepting Python objects too.

    ``add``/``add_batch``/``compute`` encode each non-string value with :func:`encode` before ``evaluate``
    checks it against the string features, and a ``tools`` column, when the metric has one, defaults to
    ``None`` for every example.
    """

    def _encode_batch(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Encode each supplied feature column of a batch; a missing ``tools`` column becomes all ``None``."""
        names = self._feature_names()
        out = dict(inputs)
        size = next((len(out[name]) for name in names if out.get(name) is not None), 0)
        for name in names:
            if out.get(name) is None and name == "tools":
                out[name] = [None] * size
            if out.get(name) is not None:
                out[name] = [encode(item) for item in out[name]]
        return out

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of examples; values may be Python objects or their JSON text."""
        inputs = self._encode_batch({"predictions": predictions, "references": references, **kwargs})
        return super().add_batch(**inputs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example; values may be Python objects or their JSON text (``None`` becomes ``null``)."""
        names = self._feature_names()
        inputs = {"predictions": prediction, "references": reference, **kwargs}
        encoded = {name: encode(inputs.get(name)) for name in names}
        return super().add(
            prediction=encoded.get("predictions"),
            reference=encoded.get("references"),
            **{k: v for k, v in encoded.items() if k not in ("predictions", "references")},
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute the metric; ``tools`` may be left out (no tool schemas for any example)."""
        if "tools" in self._feature_names() and kwargs.get("tools") is None and predictions is not None:
            kwargs["tools"] = [None] * len(predictions)
        return super().compute(predictions=predictions, references=references, **kwargs)


def score_inputs_description(name: str) -> str:
    """The ``inputs_description`` of a per-example score metric ``name`` (its args, return, example)."""
    return f"""\
Args:
    predictions (`list`): one entry per example -- the predicted OpenAI ``tool_calls`` list
        (``[{{"type": "function", "function": {{"name": ..., "arguments": "<JSON text>"}}}}]``), ``[]`` for
        no call, or ``None`` when the model output could not be parsed. A Python list or its JSON text.
    references (`list`): one entry per example -- OpenAI ``tool_calls`` or BFCL possible answers
        ``[{{name: {{param: [acceptable values]}}}}]`` (the form is detected), as a Python list or JSON text.
    tools (`list`, optional): one entry per example -- the request's OpenAI ``tools`` list (Python list or
        JSON text) or ``None``; gives required parameters, types and defaults. Defaults to ``None`` for all.
    All three columns are stored as JSON text (``datasets.Value("string")``).
Returns:
    {name} (`float`): the share of examples that score True, in [0, 1].
Examples:
    >>> metric = flywheel.evaluate.metrics.modules.load("{name}")
    >>> call = {{"type": "function", "function": {{"name": "f", "arguments": '{{"x": 1}}'}}}}
    >>> metric.compute(predictions=[[call]], references=[[call]])
    {{'{name}': 1.0}}
"""


class ToolCallScoreMetric(JsonColumnsMetric):
    """The mean over examples of one bool of ``flywheel.evaluate.metrics.scoring.score_tool_calls``.

    Subclasses (one per module script) set ``result_key`` (the metric's name), ``score_key`` (the
    scorer's key), ``description`` and ``citation``. A prediction that could not be parsed scores 0.
    """

    result_key: str
    score_key: str
    description: str
    citation: str = ""

    def _info(self) -> evaluate.MetricInfo:
        """Describe the metric: description, citation, inputs and JSON-text features."""
        return evaluate.MetricInfo(
            module_type="metric",
            description=self.description,
            citation=self.citation,
            inputs_description=score_inputs_description(self.result_key),
            features=string_features("predictions", "references", "tools"),
        )

    def _compute(self, predictions: list, references: list, tools: list) -> dict[str, float]:
        """Average the scorer's bool over the examples."""
        from flywheel.evaluate.metrics.scoring import score_tool_calls

        scores = [
            score_tool_calls(decode(pred), decode(ref), _decode_tools(tool))[self.score_key]
            for pred, ref, tool in zip(predictions, references, tools, strict=True)
        ]
        return {self.result_key: sum(scores) / len(scores) if scores else float("nan")}


def _decode_tools(value: str | None) -> list | None:
    """Decode one ``tools`` entry: the tools list, or ``None`` (no schemas) when it is not a list."""
    decoded = decode(value)
    return decoded if isinstance(decoded, list) else None
