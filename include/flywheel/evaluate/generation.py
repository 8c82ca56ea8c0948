"""What every inference backend takes and returns, so the evaluator does not care who answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from flywheel.config import GenerationConfig

TRUNCATED = "length"
"""The ``finish_reason`` of an answer cut by the token cap (OpenAI's value; the local model uses it too)."""


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
    finish_reason: str | None = None
    """Why the answer ended: ``stop`` (an end-of-turn token), ``tool_call`` (a local model stopped after
    a completed ``</tool_call>`` block, :attr:`AnswerLimits.stop_after_tool_call`), ``length`` (the
    token cap), or an endpoint's own value (``tool_calls``...); None when unknown."""

    @property
    def truncated(self) -> bool:
        """The token cap cut the answer: it ended without a stop token or a completed tool call."""
        return self.finish_reason == TRUNCATED


@dataclass(frozen=True)
class AnswerLimits:
    """How long an answer may get and whether it ends at its first completed tool call.

    The evaluator sizes them from the evaluation set (:func:`flywheel.evaluate.limits.answer_limits`);
    :meth:`of` reads fixed ones from the settings alone.
    """

    max_new_tokens: int
    stop_after_tool_call: bool = False

    @classmethod
    def of(cls, generation: GenerationConfig) -> AnswerLimits:
        """The limits the settings fix without reference answers to size from: an ``auto`` cap is the
        maximum (``max_new_tokens_limit``) and ``auto`` does not stop after a tool call."""
        cap = generation.max_new_tokens
        return cls(
            max_new_tokens=generation.max_new_tokens_limit if cap == "auto" else cap,
            stop_after_tool_call=generation.stop_after_tool_call is True,
        )


class Generator(Protocol):
    """An inference backend: answers prompts in order, one :class:`Generation` per prompt.

    ``limits`` (None: :meth:`AnswerLimits.of` the backend's settings) bound every answer.
    """

    def generate(self, prompts: list[Prompt], limits: AnswerLimits | None = None) -> list[Generation]: ...
