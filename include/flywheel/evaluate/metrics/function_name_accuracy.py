"""``function_name_accuracy``: the predicted tool calls name the same functions as the reference."""

from flywheel.evaluate.metrics.base import ExampleMetric, evaluate_module
from flywheel.evaluate.metrics.scoring import score_tool_calls


class FunctionNameAccuracy(ExampleMetric):
    """Share of examples whose predicted tool calls name the same functions as the reference."""

    name = "function_name_accuracy"
    label = "function name"
    score_key = "function_name"
    description = """\
Function-name accuracy for tool calling: the mean over examples of the ``function_name`` score of
``flywheel.evaluate.metrics.scoring.score_tool_calls`` -- the multiset of called function names equals the
reference's (argument values are not checked; parallel calls are order-free). A prediction that could not
be parsed scores 0.
"""

    def score(self, prediction, reference, tools) -> bool:
        """The called function names equal the reference's (as a multiset)."""
        return score_tool_calls(prediction, reference, tools)["function_name"]


EvaluateModule = evaluate_module(FunctionNameAccuracy)
