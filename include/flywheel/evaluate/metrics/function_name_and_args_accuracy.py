"""``function_name_and_args_accuracy``: the predicted tool calls literally match the reference."""

from flywheel.evaluate.metrics.base import ExampleMetric, evaluate_module
from flywheel.evaluate.metrics.scoring import score_tool_calls


class FunctionNameAndArgsAccuracy(ExampleMetric):
    """Share of examples whose predicted tool calls literally match the reference (names and arguments)."""

    name = "function_name_and_args_accuracy"
    label = "function name and args"
    score_key = "function_name_and_args"
    description = """\
Exact tool-call accuracy: the mean over examples of the ``exact`` score of
``flywheel.evaluate.metrics.scoring.score_tool_calls``
-- function names and argument values are literally equal
(order-free over parallel calls; against a BFCL possible answer, each argument must literally be one of the
acceptable values and omitted arguments must be omittable). A prediction that could not be parsed scores 0.
"""

    def score(self, prediction, reference, tools) -> bool:
        """Names and arguments literally equal the reference's (order-free over parallel calls)."""
        return score_tool_calls(prediction, reference, tools)["exact"]


EvaluateModule = evaluate_module(FunctionNameAndArgsAccuracy)
