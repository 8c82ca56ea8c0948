"""``tool_call_ast_accuracy``: the predicted tool calls pass the BFCL AST checker against the reference."""

from flywheel.evaluate.metrics.base import ExampleMetric, evaluate_module
from flywheel.evaluate.metrics.scoring import BFCL_CITATION, score_tool_calls


class ToolCallAstAccuracy(ExampleMetric):
    """Share of examples whose predicted tool calls pass the BFCL AST checker against the reference."""

    name = "tool_call_ast_accuracy"
    label = "tool call AST"
    score_key = "ast"
    citation = BFCL_CITATION
    description = """\
Tool-call AST accuracy: the mean over examples of the ``ast`` score of
``flywheel.evaluate.metrics.scoring.score_tool_calls``,
which applies the Berkeley Function Calling Leaderboard (BFCL)
AST checker rules -- required parameters present, no unexpected parameters, types checked against the tool
schema, strings compared after BFCL's standardisation, several acceptable values per parameter, nested
values checked recursively. A prediction that could not be parsed scores 0.
"""

    def score(self, prediction, reference, tools) -> bool:
        """The calls pass BFCL's AST checker against the reference."""
        return score_tool_calls(prediction, reference, tools)["ast"]


EvaluateModule = evaluate_module(ToolCallAstAccuracy)
