"""An optional LLM judge: a served model rates each answer against the reference, 0 to 10.

The rubric depends on the reference: :data:`TOOL_CALL_RUBRIC` when the right answer calls tools,
:data:`GENERIC_RUBRIC` when it is plain text. A judge request that fails, or a reply without a rating
:func:`parse_rating` can read, is recorded as missing (``rating`` is ``None`` and ``error`` says why),
never as zero, so an unreliable judge cannot drag a model's score down.
"""

from __future__ import annotations

import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from flywheel.config import JudgeConfig
from flywheel.evaluate.endpoint import ChatClient, EndpointError
from flywheel.evaluate.examples import EvalExample

TOOL_CALL_RUBRIC = """\
You are a strict grader of an AI assistant that answers by calling tools (functions).
You are given the conversation, the tools offered (names, descriptions and JSON parameter schemas), the
reference answer (the correct tool calls) and the model's answer. Rate the model's answer against the
reference:
- The function names must match the reference exactly.
- Identifiers and exact values must match exactly: ids, SKUs, order numbers, account numbers, codes,
  dates, enum values, booleans and numbers. A wrong or missing identifier makes the call wrong.
- Free-text arguments written in words (search queries, notes, reasons, messages) may be paraphrased
  when their meaning is the same as the reference's.
- A missing required call, an extra call, a missing required argument or an invented argument is an
  error. Text instead of the required calls is wrong.
Ratings: 10 = equivalent to the reference; 7-9 = correct calls with minor free-text differences;
4-6 = right function but a wrong or missing non-identifier argument; 1-3 = wrong identifier, wrong or
missing call; 0 = no usable answer.
Write a short reason (one to three sentences), then a final line exactly of the form
Rating: N
where N is an integer from 0 to 10."""
"""System prompt of the judge for examples whose reference answer calls tools."""

GENERIC_RUBRIC = """\
You are a strict grader of an AI assistant's plain-text answer.
You are given the conversation, the tools that were offered (names, descriptions and JSON parameter
schemas), the reference answer and the model's answer. Rate the model's answer:
- It is correct, and consistent with the reference answer (the same facts, the same decision).
- It is helpful: it addresses the user's request, or asks for what is missing when the reference does.
- It does not call a tool when none applies (the reference calls none); a tool call here is an error.
Ratings: 10 = as good as the reference; 7-9 = correct and helpful with minor omissions; 4-6 = partly
correct or unhelpful; 1-3 = wrong or contradicts the reference, or calls a tool; 0 = no usable answer.
Write a short reason (one to three sentences), then a final line exactly of the form
Rating: N
where N is an integer from 0 to 10."""
"""System prompt of the judge for examples whose reference answer is plain text (no tool call)."""

Rubric = Literal["tool_call", "generic"]

_REPLY_EXCERPT = 500
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
# A rating marker: "Rating: 8", "rating = 7/10", "**Rating:** 8", '"rating": 9', "Score: 6 out of 10",
# "Final rating is [[7]]". Only quotes, markdown emphasis, brackets, ':' or '=' may sit between.
_MARKER = re.compile(
    rf"\b(?:rating|score|grade)\b[\"'*_\s]*(?:is\b)?[\"'*_\s]*[:=]?[\"'*_\s\[(]*(?P<value>{_NUMBER})"
    rf"(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
# A final line that is only a number, possibly emphasised or "/10": "8", "**10**", "7/10".
_BARE = re.compile(
    rf"^[\"'*_\s\[(]*(?P<value>{_NUMBER})(?:\s*/\s*(?P<scale>\d+(?:\.\d+)?))?[\"'*_\s\])]*\.?$"
)


@dataclass(frozen=True)
class JudgeRating:
    """The judge's verdict on one answer; ``rating`` is ``None`` (missing, not zero) when ``error`` is set."""

    rating: float | None
    rubric: Rubric
    error: str | None = None
    reply: str | None = None
    """The judge's reply, its first 500 characters (``None`` when the request failed)."""


def parse_rating(text: str) -> float | None:
    """The 0-10 rating a judge's reply ends with, or ``None`` when none can be read.

    The last explicit marker wins (``Rating: 8``, ``rating = 7/10``, ``**Rating:** 8``,
    ``{"rating": 9}``, ``Score: 6 out of 10``); without one, a final line holding only a number. A
    fraction of another scale is rescaled to 10 (``4/5`` is 8); a value outside 0-10 gives ``None``.
    """
    if not text:
        return None
    markers = list(_MARKER.finditer(text))
    if markers:
        return _in_range(markers[-1].group("value"), markers[-1].group("scale"))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    bare = _BARE.match(lines[-1]) if lines else None
    return _in_range(bare.group("value"), bare.group("scale")) if bare else None


def _in_range(value: str, scale: str | None) -> float | None:
    rating = float(value)
    if scale is not None:
        denominator = float(scale)
        if denominator <= 0 or rating > denominator:
            return None
        rating = rating * 10.0 / denominator
    return rating if 0.0 <= rating <= 10.0 else None


def rubric_for(example: EvalExample) -> Rubric:
    """``"tool_call"`` when the example's reference calls tools, else ``"generic"``."""
    return "tool_call" if example.reference_calls else "generic"


def judge_messages(example: EvalExample, answer: dict[str, Any]) -> list[dict[str, str]]:
    """The judge request's messages for one answer: the rubric, then the case to rate.

    ``answer`` is ``{"tool_calls": [...] or None, "content": str | None, "raw": str | None}``.
    """
    rubric = TOOL_CALL_RUBRIC if rubric_for(example) == "tool_call" else GENERIC_RUBRIC
    tools = [
        {
            "name": function.get("name"),
            "description": function.get("description", ""),
            "parameters": function.get("parameters", {}),
        }
        for function in (tool.get("function", tool) for tool in example.tools)
    ]
    if example.reference_calls:
        reference = _dumps(_plain_calls(example.reference_calls))
    else:
        reference = example.reference_content or "(an empty answer)"
    user = "\n\n".join(
        [
            "## Conversation\n" + render_conversation(example.messages),
            "## Tools offered\n" + (_dumps(tools) if tools else "(none)"),
            "## Reference answer\n" + reference,
            "## Model's answer\n" + render_answer(answer),
        ]
    )
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


def render_conversation(messages: list[dict[str, Any]]) -> str:
    """The conversation as compact ``role: content`` lines (tool calls as ``name(arguments)``)."""
    lines = []
    for message in messages:
        role = message.get("role", "?")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        text = " ".join(str(content).split()) if content else ""
        calls = message.get("tool_calls") or []
        if calls:
            rendered = "; ".join(f"{c['name']}({_dumps(c['arguments'])})" for c in _plain_calls(calls))
            text = f"{text} [calls {rendered}]".strip()
        if role == "tool" and message.get("name"):
            role = f"tool ({message['name']})"
        lines.append(f"{role}: {text}")
    return "\n".join(lines)


def render_answer(answer: dict[str, Any]) -> str:
    """The model's answer as the judge sees it: its tool calls as JSON, then its text."""
    parts = []
    if answer.get("tool_calls"):
        parts.append("Tool calls: " + _dumps(_plain_calls(answer["tool_calls"])))
    if answer.get("content"):
        parts.append("Text: " + str(answer["content"]))
    if not parts and answer.get("raw"):
        parts.append("Raw output (no tool call could be parsed): " + str(answer["raw"]))
    return "\n".join(parts) or "(an empty answer)"


class Judge:
    """Rates answers with an LLM judge served behind an OpenAI-compatible endpoint."""

    def __init__(self, config: JudgeConfig, api_key: str | None = None) -> None:
        self.config = config
        self.client = ChatClient(config.endpoint, api_key=api_key)

    def rate(self, examples: list[EvalExample], answers: list[dict[str, Any]]) -> list[JudgeRating]:
        """One rating per example, in order; requests run ``endpoint.concurrency`` at a time."""
        if len(examples) != len(answers):
            raise ValueError(f"{len(examples)} examples but {len(answers)} answers to rate")
        with ThreadPoolExecutor(
            max_workers=self.config.endpoint.concurrency, thread_name_prefix="judge"
        ) as pool:
            return list(pool.map(self._rate_one, examples, answers))

    def _rate_one(self, example: EvalExample, answer: dict[str, Any]) -> JudgeRating:
        rubric = rubric_for(example)
        body = {
            "messages": judge_messages(example, answer),
            "temperature": 0,
            "max_tokens": self.config.max_tokens,
        }
        try:
            result = self.client.complete(body)
        except EndpointError as exc:
            return JudgeRating(rating=None, rubric=rubric, error=f"judge request failed: {exc}")
        content = result.message.get("content")
        reply = content if isinstance(content, str) else ""
        rating = parse_rating(reply)
        error = None if rating is not None else "the judge's reply holds no 0-10 rating"
        return JudgeRating(rating=rating, rubric=rubric, error=error, reply=reply[:_REPLY_EXCERPT])

    def close(self) -> None:
        """Close the judge endpoint's connection pool."""
        self.client.close()

    def __enter__(self) -> Judge:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def summarize_ratings(ratings: list[JudgeRating]) -> dict[str, Any]:
    """``{"mean", "rated", "missing"}``: the mean of the ratings the judge gave (missing ones excluded)."""
    given = [r.rating for r in ratings if r.rating is not None]
    return {
        "mean": sum(given) / len(given) if given else None,
        "rated": len(given),
        "missing": len(ratings) - len(given),
    }


def _plain_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as ``{"name", "arguments"}`` with arguments decoded from JSON text when they are JSON."""
    plain = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        plain.append({"name": function.get("name"), "arguments": arguments})
    return plain


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
