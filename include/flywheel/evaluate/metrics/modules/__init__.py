"""Hugging Face ``evaluate`` metric modules for tool calling, loadable offline from this package.

Each metric lives in its own folder ``<name>/<name>.py`` (the layout ``evaluate.load`` accepts for a local
path), so ``evaluate.load(str(module_path(name)))`` works with ``HF_HUB_OFFLINE=1`` and
``HF_EVALUATE_OFFLINE=1``: nothing is fetched, the script is copied into the ``evaluate`` modules cache and
imported from there, and it imports the scorer from :mod:`flywheel.evaluate.metrics.scoring`.

Input conventions shared by the modules (see each module's ``inputs_description``):

* ``predictions`` -- one entry per example: the predicted OpenAI ``tool_calls`` list
  (``[{"type": "function", "function": {"name": ..., "arguments": "<JSON text>"}}]``), ``[]`` for "no call",
  or ``None`` when the model output could not be parsed. Python lists and their JSON text are both accepted.
* ``references`` -- one entry per example: OpenAI ``tool_calls`` or BFCL possible answers
  ``[{name: {param: [acceptable values]}}]``, as Python lists or JSON text; ``[]`` means "no call expected".
* ``tools`` -- one entry per example: the request's OpenAI ``tools`` list (Python list or JSON text), or
  ``None``; optional, defaults to ``None`` for every example.

Internally every input column is stored as JSON text (``datasets.Value("string")``) so the ``datasets``
features stay simple whatever shape the BFCL references take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["MODULE_NAMES", "load", "module_path"]

MODULE_NAMES: tuple[str, ...] = (
    "function_name_accuracy",
    "function_name_and_args_accuracy",
    "tool_call_ast_accuracy",
    "no_call_accuracy",
    "parse_error_rate",
)

_MODULES_DIR = Path(__file__).resolve().parent


def module_path(name: str) -> Path:
    """Return the folder holding metric module ``name`` (the path to give to ``evaluate.load``)."""
    if name not in MODULE_NAMES:
        raise ValueError(f"Unknown metric module {name!r}; expected one of {list(MODULE_NAMES)}")
    return _MODULES_DIR / name


def load(name: str, **kwargs: Any) -> Any:
    """Load metric module ``name`` with ``evaluate.load`` from its local folder (no network needed).

    Extra keyword arguments (``keep_in_memory``, ``cache_dir``, ``experiment_id``...) go to ``evaluate.load``.
    """
    import evaluate  # imported lazily: only the metric modules need the evaluate library

    return evaluate.load(str(module_path(name)), **kwargs)
