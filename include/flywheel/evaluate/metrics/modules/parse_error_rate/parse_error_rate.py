"""Hugging Face ``evaluate`` metric ``parse_error_rate``.

How often the model output was not usable.

Load it offline with ``flywheel.evaluate.metrics.modules.load("parse_error_rate")``
or ``evaluate.load(<this folder>)``.
"""

import evaluate

from flywheel.evaluate.metrics.modules import _common

_DESCRIPTION = """\
Parse-error rate: the share of examples whose prediction could not be parsed into tool calls. The caller
passes, per example, the parsed OpenAI ``tool_calls`` list (``[]`` for a plain-text answer with no call)
or ``None`` when parsing the model output failed. A prediction also counts as a parse error when it is not
a list of well-formed OpenAI tool calls -- undecodable JSON text, a call without a string function name,
or ``arguments`` that are not a JSON object.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list`): one entry per example -- the parsed OpenAI ``tool_calls`` list, ``[]`` for no
        call, or ``None`` when the model output could not be parsed. A Python list or its JSON text
        (stored as JSON text, ``datasets.Value("string")``; ``None`` is stored as ``null``).
Returns:
    parse_error_rate (`float`): the share of examples with a parse error, in [0, 1].
Examples:
    >>> metric = flywheel.evaluate.metrics.modules.load("parse_error_rate")
    >>> metric.compute(predictions=[[], None, [{"function": {"name": "f", "arguments": "{"}}]])
    {'parse_error_rate': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ParseErrorRate(_common.JsonColumnsMetric):
    """Share of examples whose prediction is missing or not a list of well-formed OpenAI tool calls."""

    def _info(self):
        """Describe the metric: description, citation, inputs and the JSON-text feature."""
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=_common.string_features("predictions"),
        )

    def _compute(self, predictions):
        """Count the predictions that are not well-formed tool-call lists."""
        errors = [not _common.is_well_formed_prediction(_common.decode(pred)) for pred in predictions]
        return {"parse_error_rate": sum(errors) / len(errors) if errors else float("nan")}
