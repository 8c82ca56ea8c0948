"""``no_call_accuracy``: how often the model abstains when it should (relevance detection)."""

from flywheel.evaluate.metrics.base import ExampleMetric, evaluate_module
from flywheel.evaluate.metrics.scoring import BFCL_CITATION


class NoCallAccuracy(ExampleMetric):
    """Share of "no call expected" examples where the prediction also makes no tool call."""

    name = "no_call_accuracy"
    label = "no call"
    score_key = "no_call"
    applies_to = "expects_no_call"
    inputs = ("predictions", "references")
    citation = BFCL_CITATION
    description = """\
No-call accuracy (relevance detection): over the examples whose reference has no tool call (an empty list),
the share where the prediction also has no tool call (an empty list). Examples whose reference has calls
are ignored. A prediction that could not be parsed (``None`` or undecodable JSON) is not a correct
abstention and counts as a miss. The metric is NaN when no example expects "no call".
"""

    def score(self, prediction, reference, tools) -> bool:
        """The answer calls no tool (an unreadable answer is not an abstention)."""
        return prediction == []


EvaluateModule = evaluate_module(NoCallAccuracy)
