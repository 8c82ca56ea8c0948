"""Hugging Face ``evaluate`` metric ``function_name_accuracy``.

Share of examples whose predicted tool calls name the same functions as the reference.

Load it offline with ``flywheel.evaluate.metrics.modules.load("function_name_accuracy")``
or ``evaluate.load(<this folder>)``.
"""

from flywheel.evaluate.metrics.modules import _common

_DESCRIPTION = """\
Function-name accuracy for tool calling: the mean over examples of the ``function_name`` score of
``flywheel.evaluate.metrics.scoring.score_tool_calls`` -- the multiset of called function names equals the
reference's (argument values are not checked; parallel calls are order-free). A prediction that could not
be parsed scores 0.
"""


class FunctionNameAccuracy(_common.ToolCallScoreMetric):
    """Share of examples whose predicted tool calls name the same functions as the reference."""

    result_key = "function_name_accuracy"
    score_key = "function_name"
    description = _DESCRIPTION
