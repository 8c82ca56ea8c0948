"""Hugging Face ``evaluate`` metric ``no_call_accuracy``.

How often the model abstains when it should.

Load it offline with ``flywheel.evaluate.metrics.modules.load("no_call_accuracy")``
or ``evaluate.load(<this folder>)``.
"""

import evaluate

from flywheel.evaluate.metrics.modules import _common

_DESCRIPTION = """\
No-call accuracy (relevance detection): over the examples whose reference has no tool call (an empty list),
the share where the prediction also has no tool call (an empty list). Examples whose reference has calls
are ignored. A prediction that could not be parsed (``None`` or undecodable JSON) is not a correct
abstention and counts as a miss. The metric is NaN when no example expects "no call".
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list`): one entry per example -- the predicted OpenAI ``tool_calls`` list, ``[]`` for no
        call, or ``None`` when the model output could not be parsed. A Python list or its JSON text.
    references (`list`): one entry per example -- OpenAI ``tool_calls`` or BFCL possible answers, as a
        Python list or JSON text; ``[]`` (or ``None``/``null``) means "no call expected".
    Both columns are stored as JSON text (``datasets.Value("string")``).
Returns:
    no_call_accuracy (`float`): the share of no-call examples predicted as no call (NaN when there are none).
    no_call_examples (`int`): how many examples expect no call.
Examples:
    >>> metric = flywheel.evaluate.metrics.modules.load("no_call_accuracy")
    >>> metric.compute(predictions=[[], None], references=[[], []])
    {'no_call_accuracy': 0.5, 'no_call_examples': 2}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NoCallAccuracy(_common.JsonColumnsMetric):
    """Share of "no call expected" examples where the prediction also makes no tool call."""

    def _info(self):
        """Describe the metric: description, citation, inputs and JSON-text features."""
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_common.BFCL_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_common.string_features("predictions", "references"),
        )

    def _compute(self, predictions, references):
        """Count the no-call references and how many of them have an empty predicted call list."""
        hits = [
            _common.decode(pred) == []
            for pred, ref in zip(predictions, references, strict=True)
            if _common.decode(ref) in ([], None)
        ]
        return {
            "no_call_accuracy": sum(hits) / len(hits) if hits else float("nan"),
            "no_call_examples": len(hits),
        }
