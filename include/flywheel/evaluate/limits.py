"""How long an evaluated answer may get: the token cap sized from the reference answers.

A fixed cap is either too short for some workload (parallel calls, long arguments: answers are cut
and scored wrong for a reason that is not the model's) or far longer than any answer needs (a model
that never stops costs the whole cap per example). ``generation.max_new_tokens: auto`` sizes it from
the evaluation set instead: the token length of the longest reference answer, rendered and tokenized
exactly as training renders the answer it teaches (:func:`flywheel.train.formatting.encode_for_training`,
its end-of-turn token included), times :data:`AUTO_MARGIN` plus :data:`AUTO_EXTRA_TOKENS`, at most
``generation.max_new_tokens_limit``. A model that answers like its references is never cut.

``generation.stop_after_tool_call: auto`` ends a local answer at its first completed ``</tool_call>``
block when no reference answer makes more than one call (:class:`flywheel.evaluate.local.ToolCallEnd`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flywheel.config import GenerationConfig
from flywheel.evaluate.examples import EvalExample
from flywheel.evaluate.generation import AnswerLimits

log = logging.getLogger(__name__)

AUTO_MARGIN = 1.25
"""An ``auto`` cap is the longest reference answer's tokens times this, plus :data:`AUTO_EXTRA_TOKENS`."""
AUTO_EXTRA_TOKENS = 8
_NO_LENGTH_LIMIT = 1_000_000


@dataclass(frozen=True)
class SizedLimits:
    """The limits an evaluation ran with and what sized them (``answer_limits`` of ``result.json``)."""

    limits: AnswerLimits
    longest_reference_tokens: int | None
    """Tokens of the longest reference answer (None: not counted, the cap is fixed or the model is an
    endpoint without a local tokenizer)."""
    max_calls: int
    """The most tool calls any reference answer makes."""

    def record(self, generation: GenerationConfig) -> dict[str, Any]:
        """The ``answer_limits`` block of ``result.json``: the settings and what they resolved to."""
        return {
            "max_new_tokens": self.limits.max_new_tokens,
            "max_new_tokens_setting": generation.max_new_tokens,
            "longest_reference_tokens": self.longest_reference_tokens,
            "stop_after_tool_call": self.limits.stop_after_tool_call,
            "stop_after_tool_call_setting": generation.stop_after_tool_call,
            "max_reference_calls": self.max_calls,
        }


def answer_limits(
    generation: GenerationConfig, examples: Sequence[EvalExample], tokenizer: Any | None
) -> SizedLimits:
    """The limits of an evaluation of ``examples`` by the model whose tokenizer is ``tokenizer``.

    ``tokenizer`` is None for an endpoint: its answers are not counted here, so an ``auto`` cap is
    ``max_new_tokens_limit``, and the server decides where an answer ends (no early stop).
    """
    max_calls = max((len(e.reference_calls) for e in examples), default=0)
    longest = None
    if generation.max_new_tokens == "auto" and tokenizer is not None:
        longest = max((reference_answer_tokens(tokenizer, e) for e in examples), default=0)
        cap = min(math.ceil(longest * AUTO_MARGIN) + AUTO_EXTRA_TOKENS, generation.max_new_tokens_limit)
    else:
        cap = AnswerLimits.of(generation).max_new_tokens
    stop = generation.stop_after_tool_call
    if stop == "auto":
        stop = max_calls <= 1
    sized = SizedLimits(AnswerLimits(cap, stop and tokenizer is not None), longest, max_calls)
    if longest is None:
        source = "fixed" if generation.max_new_tokens != "auto" else "auto: max_new_tokens_limit"
    else:
        source = f"auto: the longest reference answer takes {longest} tokens"
    early = ", or at a completed tool call" if sized.limits.stop_after_tool_call else ""
    log.info("answers: at most %d new tokens (%s), ending at a stop token%s", cap, source, early)
    return sized


def reference_answer_tokens(tokenizer: Any, example: EvalExample) -> int:
    """Tokens of the example's reference answer as training renders it after the example's messages
    (the answer's text or ``<tool_call>`` blocks and its end-of-turn token): what the model must
    generate to give that answer.

    The tools are left out of the rendering: they shape only the prompt (the answer is rendered the
    same without them, on either path of :mod:`flywheel.train.formatting`), and their schemas are
    most of what rendering and tokenizing a prompt costs.
    """
    from flywheel.train.formatting import encode_for_training

    answer: dict[str, Any] = {"role": "assistant", "content": example.reference_content}
    if example.reference_calls:
        answer["tool_calls"] = example.reference_calls
    encoded = encode_for_training(tokenizer, [*example.messages, answer], [], max_length=_NO_LENGTH_LIMIT)
    return encoded.supervised_tokens
