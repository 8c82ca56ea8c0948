"""The clean exchange a demo workload produces, and the helpers workloads build it with.

A workload module (:mod:`flywheel.demo.support_router`, :mod:`flywheel.demo.bfcl`) turns a random
generator into :class:`Conversation` values; :mod:`flywheel.demo.traffic` turns those into log
documents and injects noise. Both sides import this module, and neither imports the other's.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import orjson


class Conversation(NamedTuple):
    """A clean exchange produced by a workload: the request side and the teacher's correct answer.

    ``messages`` must be fresh dicts on every call (noise injection edits them in place); ``tools`` is
    shared and read-only, so documents of one workload reference the same tool definitions.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tools_tokens: int  # approximate prompt tokens taken by the tool definitions
    tool_calls: list[tuple[str, str]]  # (function name, arguments as compact JSON text); [] = text answer
    content: str | None  # the teacher's plain-text answer when tool_calls is empty


def function_tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``tools`` entry for a function with a JSON-schema ``parameters`` object."""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def estimate_tokens(text: str) -> int:
    """Rough token count of a text (about four characters per token), for logged ``usage`` figures."""
    return len(text) // 4 + 1


def new_call_id(rng: random.Random) -> str:
    """A tool-call id in OpenAI's style (``call_`` + 24 hex digits)."""
    return f"call_{rng.getrandbits(96):024x}"


def arguments_json(arguments: dict[str, Any]) -> str:
    """Tool-call arguments as the compact JSON text OpenAI-compatible servers return."""
    return orjson.dumps(arguments).decode()
