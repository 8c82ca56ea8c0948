"""What every inference backend takes and returns, so the evaluator does not care who answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Prompt:
    """One request: the conversation so far (no answer) and the OpenAI ``tools`` offered."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


@dataclass
class Generation:
    """One answer and what it cost.

    A local model returns ``text`` (the raw generated text); an endpoint returns ``message`` (the
    OpenAI response message, with ``content`` and ``tool_calls``) and ``text`` as its content. When no
    answer could be obtained (the endpoint kept failing), ``error`` says why and both are ``None``.
    """

    text: str | None
    latency_s: float
    tokens_in: int
    tokens_out: int
    message: dict[str, Any] | None = None
    error: str | None = None


class Generator(Protocol):
    """An inference backend: answers prompts in order, one :class:`Generation` per prompt."""

    def generate(self, prompts: list[Prompt]) -> list[Generation]: ...
