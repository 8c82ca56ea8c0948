"""A model's answer back to tool calls: from generated text or from an OpenAI response message.

Whatever the model produced, the evaluator gets a :class:`ParsedAnswer`: the OpenAI ``tool_calls``
(``[]`` for a plain answer), the text content, or, when the answer cannot be read, ``tool_calls=None``
and an ``error`` whose first word is the reason. A parse failure is a scored failure, never a crash.

Text answers are read with :func:`flywheel.train.formatting.read_tool_calls`, the same module that
renders the training targets, so every format the trainer teaches is understood: ``<tool_call>``
blocks holding ``{"name", "arguments"}`` (the Hermes/Qwen form that native templates and the
fallback format share).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flywheel.evaluate.examples import openai_call
from flywheel.evaluate.generation import Generation
from flywheel.train.formatting import (
    TOOL_CALL_OPEN,
    ToolCallParseError,
    read_tool_calls,
    reject_non_json_constant,
    text_outside_tool_calls,
)


@dataclass(frozen=True)
class ParsedAnswer:
    """What the model answered: its tool calls (OpenAI form) and text, or why it could not be read."""

    tool_calls: list[dict[str, Any]] | None
    """OpenAI ``tool_calls`` (``arguments`` as JSON text); ``[]``: no call; ``None``: unreadable."""
    content: str | None
    error: str | None = None
    """``"<reason>: <detail>"`` when ``tool_calls`` is ``None``."""

    @property
    def reason(self) -> str | None:
        """The error's reason code (``invalid_json``, ``generation_failed``...)."""
        return self.error.split(":", 1)[0] if self.error else None


def parse_generation(generation: Generation) -> ParsedAnswer:
    """Parse whatever a backend returned: an OpenAI message, raw text, or its failure."""
    if generation.error is not None:
        return ParsedAnswer(None, None, f"generation_failed: {generation.error}")
    if generation.message is not None:
        return parse_message(generation.message)
    return parse_text(generation.text or "")


def parse_text(text: str) -> ParsedAnswer:
    """Tool calls from generated text; the text outside the ``<tool_call>`` blocks is the content."""
    content = text_outside_tool_calls(text).strip() or None
    try:
        calls = read_tool_calls(text)
    except ToolCallParseError as exc:
        return ParsedAnswer(None, content, str(exc))
    return ParsedAnswer([openai_call(call, i) for i, call in enumerate(calls)], content)


def parse_message(message: dict[str, Any]) -> ParsedAnswer:
    """Tool calls from an OpenAI chat-completions response message.

    ``tool_calls`` entries need a string ``function.name`` and ``arguments`` holding a JSON object (as
    text, the API's form, or already an object). A message without ``tool_calls`` whose content carries
    ``<tool_call>`` blocks (a server running without a tool-call parser) is parsed as text.
    """
    content = message.get("content")
    if isinstance(content, list):  # content parts: their text, in order
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = content if isinstance(content, str) else None
    raw_calls = message.get("tool_calls") or []
    if not raw_calls:
        if text and TOOL_CALL_OPEN in text:
            return parse_text(text)
        return ParsedAnswer([], text.strip() if text and text.strip() else None)
    calls = []
    for number, call in enumerate(raw_calls, start=1):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return ParsedAnswer(None, text, f"not_a_call: call {number}: no function name")
        arguments = function.get("arguments")
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments, parse_constant=reject_non_json_constant)
            except json.JSONDecodeError as exc:
                return ParsedAnswer(None, text, f"arguments_not_json: call {number}: {exc.msg}")
        if not isinstance(arguments, dict):
            kind = type(arguments).__name__
            return ParsedAnswer(None, text, f"arguments_not_object: call {number}: arguments are a {kind}")
        calls.append(
            openai_call({"id": call.get("id"), "name": function["name"], "arguments": arguments}, number - 1)
        )
    return ParsedAnswer(calls, text.strip() if text and text.strip() else None)
