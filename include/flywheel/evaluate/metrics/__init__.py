"""Evaluation metrics: per-example tool-call scoring (function name, exact match, BFCL AST)."""

from flywheel.evaluate.metrics import modules as modules
from flywheel.evaluate.metrics.scoring import (
    bfcl_tools,
    normalize_schema,
    score_tool_calls,
    standardize_string,
)

__all__ = ["bfcl_tools", "normalize_schema", "score_tool_calls", "standardize_string"]
