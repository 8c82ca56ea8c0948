"""The Hugging Face ``evaluate`` module of a per-example metric, built from its definition.

:func:`metric_class` turns an :class:`~flywheel.evaluate.metrics.base.ExampleMetric` into an
``evaluate.Metric`` whose ``compute`` is the share of True of the definition's own :meth:`score` over
the examples it applies to, so the module and the evaluation job cannot disagree. Each metric module
exposes it (``evaluate.load(<the module's .py file>)`` works offline: the script is copied into the
``evaluate`` modules cache and imports ``flywheel``, an installed package).

Input conventions (see each module's ``inputs_description``): ``predictions`` -- one entry per example,
the predicted OpenAI ``tool_calls`` list, ``[]`` for "no call", or ``None`` when the model output could
not be parsed; ``references`` -- OpenAI ``tool_calls`` or BFCL possible answers
``[{name: {param: [acceptable values]}}]``, ``[]`` meaning "no call expected"; ``tools`` -- the
request's OpenAI ``tools`` list or ``None`` (optional, ``None`` for every example by default). Python
objects and their JSON text are both accepted; every column is stored as JSON text
(``datasets.Value("string")``) so the features stay simple whatever shape the BFCL references take.

This module imports ``evaluate`` and ``datasets``: only ``evaluate.load`` of a metric module needs it.
"""

from __future__ import annotations

import json
from typing import Any

import datasets
import evaluate
from evaluate.naming import snakecase_to_camelcase

from flywheel.evaluate.metrics.base import ExampleMetric

__all__ = ["JsonColumnsMetric", "decode", "encode", "metric_class"]

_UNPARSEABLE = object()

_INPUT_DESCRIPTIONS = {
    "predictions": """\
    predictions (`list`): one entry per example -- the predicted OpenAI ``tool_calls`` list
        (``[{"type": "function", "function": {"name": ..., "arguments": "<JSON text>"}}]``), ``[]`` for
        no call, or ``None`` when the model output could not be parsed. A Python list or its JSON text.""",
    "references": """\
    references (`list`): one entry per example -- OpenAI ``tool_calls`` or BFCL possible answers
        ``[{name: {param: [acceptable values]}}]`` (the form is detected), as a Python list or JSON text;
        ``[]`` (or ``None``) means "no call expected".""",
    "tools": """\
    tools (`list`, optional): one entry per example -- the request's OpenAI ``tools`` list (Python list
        or JSON text) or ``None``; gives required parameters, types and defaults. Default: all ``None``.""",
}

_APPLIES_TO = {
    "all": "every example",
    "expects_call": "the examples whose reference calls a tool",
    "expects_no_call": "the examples whose reference calls no tool (NaN when there are none)",
}


def encode(value: Any) -> str:
    """Encode one input value as JSON text; a string is taken to be JSON text already and kept as is."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def decode(text: str | None) -> Any:
    """Decode one stored JSON value; ``None`` stays ``None`` and undecodable text returns a sentinel.

    The sentinel is never a list, so the scorers treat it as a malformed prediction or reference.
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _UNPARSEABLE


def _decode_tools(value: str | None) -> list | None:
    """Decode one ``tools`` entry: the tools list, or ``None`` (no schemas) when it is not a list."""
    decoded = decode(value)
    return decoded if isinstance(decoded, list) else None


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


def _inputs_description(definition: ExampleMetric) -> str:
    """The module's ``inputs_description``: its columns, what it returns and an example."""
    args = "\n".join(_INPUT_DESCRIPTIONS[name] for name in definition.inputs)
    example_references = ", references=[[], []]" if "references" in definition.inputs else ""
    returns = f"""\
    {definition.name} (`float`): the share of True over {_APPLIES_TO[definition.applies_to]}, in [0, 1]."""
    if definition.applies_to != "all":
        returns += f"\n    {definition.score_key}_examples (`int`): how many examples it applies to."
    return f"""\
Args:
{args}
    Every column is stored as JSON text (``datasets.Value("string")``).
Returns:
{returns}
Examples:
    >>> metric = flywheel.evaluate.metrics.load_evaluate_module("{definition.name}")
    >>> metric.compute(predictions=[[], None]{example_references})
"""


def metric_class(definition_class: type[ExampleMetric]) -> type[JsonColumnsMetric]:
    """The ``evaluate.Metric`` subclass of a per-example metric (its name is the metric's name)."""
    definition = definition_class()

    def _info(self: JsonColumnsMetric) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=definition.description,
            citation=definition.citation,
            inputs_description=_inputs_description(definition),
            features=datasets.Features({name: datasets.Value("string") for name in definition.inputs}),
        )

    def _compute(self: JsonColumnsMetric, predictions: list, references=None, tools=None) -> dict[str, Any]:
        size = len(predictions)
        scores = []
        for prediction, reference, tool_list in zip(
            predictions, references or [None] * size, tools or [None] * size, strict=True
        ):
            reference = decode(reference)
            if definition.applies(reference):
                scores.append(definition.score(decode(prediction), reference, _decode_tools(tool_list)))
        result: dict[str, Any] = {definition.name: sum(scores) / len(scores) if scores else float("nan")}
        if definition.applies_to != "all":
            result[f"{definition.score_key}_examples"] = len(scores)
        return result

    # evaluate names a module after its class: FunctionNameAccuracy is function_name_accuracy.
    return type(
        snakecase_to_camelcase(definition.name),
        (JsonColumnsMetric,),
        {
            "__doc__": definition_class.__doc__,
            "__module__": definition_class.__module__,
            "_info": _info,
            "_compute": _compute,
        },
    )
