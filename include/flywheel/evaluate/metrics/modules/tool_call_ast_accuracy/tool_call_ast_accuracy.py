"""Hugging Face ``evaluate`` metric ``tool_call_ast_accuracy``.

Share of examples whose predicted tool calls pass the BFCL AST checker against the reference.

Load it offline with ``flywheel.evaluate.metrics.modules.load("tool_call_ast_accuracy")``
or ``evaluate.load(<this folder>)``.
"""

from flywheel.evaluate.metrics.modules import _common

_DESCRIPTION = """\
Tool-call AST accuracy: the mean over examples of the ``ast`` score of
``flywheel.evaluate.metrics.scoring.score_tool_calls``,
which applies the Berkeley Function Calling Leaderboard (BFCL)
AST checker rules -- required parameters present, no unexpected parameters, types checked against the tool
schema, strings compared after BFCL's standardisation, several acceptable values per parameter, nested
values checked recursively. A prediction that could not be parsed scores 0.
"""


class ToolCallAstAccuracy(_common.ToolCallScoreMetric):
    """Share of examples whose predicted tool calls pass the BFCL AST checker against the reference."""

    result_key = "tool_call_ast_accuracy"
    score_key = "ast"
    description = _DESCRIPTION
    citation = _common.BFCL_CITATION
