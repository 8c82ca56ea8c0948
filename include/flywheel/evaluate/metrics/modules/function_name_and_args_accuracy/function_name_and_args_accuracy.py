"""Hugging Face ``evaluate`` metric ``function_name_and_args_accuracy``.

Share of examples whose predicted tool calls literally match the reference (names and arguments).

Load it offline with ``flywheel.evaluate.metrics.modules.load("function_name_and_args_accuracy")``
or ``evaluate.load(<this folder>)``.
"""

from flywheel.evaluate.metrics.modules import _common

_DESCRIPTION = """\
Exact tool-call accuracy: the mean over examples of the ``exact`` score of
``flywheel.evaluate.metrics.scoring.score_tool_calls``
-- function names and argument values are literally equal
(order-free over parallel calls; against a BFCL possible answer, each argument must literally be one of the
acceptable values and omitted arguments must be omittable). A prediction that could not be parsed scores 0.
"""


class FunctionNameAndArgsAccuracy(_common.ToolCallScoreMetric):
    """Share of examples whose predicted tool calls literally match the reference (names and arguments)."""

    result_key = "function_name_and_args_accuracy"
    score_key = "exact"
    description = _DESCRIPTION
