"""What a metric is: the two kinds of metric definition every metric module subclasses.

A metric is defined once, in one module: its name, its direction, which examples it applies to, how one
example is scored and how the scores aggregate. The evaluation job, the decision policy, config
validation and the report all read that definition (:mod:`flywheel.evaluate.metrics` registers them).

* :class:`ExampleMetric` scores each example it applies to True or False; a run's value is the share
  of True with its 95% interval, and the decision compares two models on their paired examples.
* :class:`RunMetric` is a statistic of a whole run (the p95 latency), compared as one number.

This module is light (no ``evaluate``, ``datasets`` or ``numpy``): the DAG files validate the config,
and so import the definitions, at parse time.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

__all__ = ["AppliesTo", "ExampleMetric", "Metric", "RunMetric", "evaluate_module"]

AppliesTo = Literal["all", "expects_call", "expects_no_call"]
"""Which examples a per-example metric scores: every one, those whose reference calls a tool, or those
whose reference calls none."""

ALL_INPUTS = ("predictions", "references", "tools")


class Metric:
    """What every metric defines: its name, a short label, its direction and a description."""

    name: ClassVar[str]
    """The key of the metric in the config (built-ins), ``result.json`` and the decision."""
    label: ClassVar[str]
    """A short human name for tables and plot axes."""
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str]


class ExampleMetric(Metric):
    """A metric scored True or False per example; its value is the share of True over the examples.

    A subclass sets the class attributes and implements :meth:`score`. ``score_key`` is the key of the
    example's score in ``examples.jsonl`` (``scores``); a metric whose outcome the line already holds
    in another field sets it to None and overrides :meth:`outcome`. ``inputs`` are the columns its
    Hugging Face ``evaluate`` module takes (:func:`evaluate_module`).
    """

    score_key: ClassVar[str | None]
    applies_to: ClassVar[AppliesTo] = "all"
    inputs: ClassVar[tuple[str, ...]] = ALL_INPUTS
    citation: ClassVar[str] = ""

    def score(self, prediction: Any, reference: Any, tools: Sequence[Mapping[str, Any]] | None) -> bool:
        """Score one example the metric applies to.

        Args:
            prediction: the parsed answer's OpenAI ``tool_calls`` (``[]``: no call; ``None``: the answer
                could not be parsed; anything else is malformed and must not raise).
            reference: the reference ``tool_calls`` (OpenAI form or BFCL possible answers; ``[]``: no call).
            tools: the request's OpenAI ``tools`` list, or None.
        """
        raise NotImplementedError

    def applies(self, reference: Any) -> bool:
        """Whether the metric scores an example with this reference (see :data:`AppliesTo`)."""
        expects_no_call = reference in ([], None)
        if self.applies_to == "expects_no_call":
            return expects_no_call
        if self.applies_to == "expects_call":
            return not expects_no_call
        return True

    def outcome(self, record: Mapping[str, Any]) -> bool | None:
        """The example's score read back from its ``examples.jsonl`` line; None where it does not apply."""
        value = (record.get("scores") or {}).get(self.score_key)
        return None if value is None else bool(value)

    @property
    def per_tool(self) -> bool:
        """Whether the per-tool breakdown shows the metric.

        The breakdown's label is the reference's tool names, so a metric restricted by the reference
        would only repeat its overall value under one label.
        """
        return self.applies_to == "all"


class RunMetric(Metric):
    """A statistic of a whole run, computed from one per-example field of ``examples.jsonl``."""

    field: ClassVar[str]
    """The per-example value it summarises (a key of each ``examples.jsonl`` line)."""
    unit: ClassVar[str] = ""
    """Written after a value in messages (``" s"``)."""

    def aggregate(self, values: Sequence[float]) -> float | None:
        """The run's value from the per-example values; None without values."""
        raise NotImplementedError


def evaluate_module(definition: type[ExampleMetric]) -> type | None:
    """The Hugging Face ``evaluate.Metric`` of ``definition`` when ``evaluate`` is loaded, else None.

    Each metric module ends with ``EvaluateModule = evaluate_module(TheMetric)``. ``evaluate.load`` of
    the module's file has imported ``evaluate`` and so finds an ``evaluate.Metric`` in it; importing the
    module for its definition (config validation, the evaluation job, the decision) does not import
    ``evaluate``, which takes tens of seconds and is not needed there.
    """
    if "evaluate" not in sys.modules:
        return None
    from flywheel.evaluate.metrics.huggingface import metric_class

    return metric_class(definition)
