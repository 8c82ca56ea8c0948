"""A workload's own metric, in the user's own package: every tool the answer calls is one it was offered.

A model that invents a tool name breaks the agent that runs its calls. One module defines the metric; the
workload's config names it by its dotted path, to be computed and (here) guarded by the decision::

    evaluation:
      settings:
        metrics: ["my_flywheel.metrics:OfferedToolsOnly"]
    decision:
      guardrails:
        my_flywheel.metrics:OfferedToolsOnly: {margin: 0.02}
"""

from flywheel.evaluate.metrics import ExampleMetric, evaluate_module


class OfferedToolsOnly(ExampleMetric):
    """Share of answers whose tool calls all name a tool the request offered (an unreadable one fails)."""

    name = "offered_tools_only"
    label = "offered tools only"
    score_key = "offered_tools_only"  # the example's score in examples.jsonl
    description = "Share of answers that call only tools the request offered; no call at all passes."

    def score(self, prediction, reference, tools) -> bool:
        """True when every call names an offered tool; False for an answer that could not be parsed."""
        if not isinstance(prediction, list):
            return False
        offered = {tool["function"]["name"] for tool in tools or []}
        return all(isinstance(call, dict) and call["function"]["name"] in offered for call in prediction)


# Its Hugging Face evaluate module: evaluate.load("<path of this file>").
EvaluateModule = evaluate_module(OfferedToolsOnly)
