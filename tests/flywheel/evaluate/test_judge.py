"""The LLM judge against a real local OpenAI-compatible server, and the rating parser.

The rubric follows the reference, the request carries the conversation, tools, reference and answer,
and a failed request or an unreadable reply is recorded as missing (never zero).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from flywheel.config import EndpointConfig, JudgeConfig
from flywheel.evaluate.examples import EvalExample, openai_call
from flywheel.evaluate.judge import (
    GENERIC_RUBRIC,
    TOOL_CALL_RUBRIC,
    Judge,
    JudgeRating,
    judge_messages,
    parse_rating,
    summarize_ratings,
)

if TYPE_CHECKING:
    from openai_server import OpenAIServer

# The fixture; loading the module as a plugin (not importing it here) lets pytest rewrite its asserts.
pytest_plugins = ["openai_server"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "cancel_order",
            "description": "Cancel an order that has not shipped.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]

TOOL_EXAMPLE = EvalExample(
    example_id="e1",
    messages=[
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Please cancel order ORD-4411, I ordered the wrong size."},
    ],
    tools=TOOLS,
    reference_calls=[
        openai_call({"name": "cancel_order", "arguments": {"order_id": "ORD-4411", "reason": "wrong size"}})
    ],
    reference_content=None,
    label="cancel_order",
)
TEXT_EXAMPLE = EvalExample(
    example_id="e2",
    messages=[{"role": "user", "content": "What are your opening hours?"}],
    tools=TOOLS,
    reference_calls=[],
    reference_content="We are open 9am to 5pm, Monday to Friday.",
    label="<no_tool>",
)
TOOL_ANSWER = {
    "tool_calls": [
        {
            "id": "c",
            "type": "function",
            "function": {
                "name": "cancel_order",
                "arguments": '{"order_id": "ORD-4411", "reason": "size was wrong"}',
            },
        }
    ],
    "content": None,
    "raw": None,
}
TEXT_ANSWER = {
    "tool_calls": None,
    "content": "Open weekdays from 9 to 5.",
    "raw": "Open weekdays from 9 to 5.",
}


def judge_config(server: OpenAIServer, **overrides: Any) -> JudgeConfig:
    settings: dict[str, Any] = {
        "base_url": server.base_url,
        "model": server.model,
        "concurrency": 2,
        "timeout_s": 2.0,
        "max_retries": 1,
        "retry_backoff_s": 0.01,
    }
    return JudgeConfig(endpoint=EndpointConfig(**{**settings, **overrides}), max_tokens=64)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", 10.0),
        ("The answer matches.\n10", 10.0),
        ("Rating: 10", 10.0),
        ("Rating: 1", 1.0),
        ("rating 7/10", 7.0),
        ("rating = 7/10", 7.0),
        ("Good.\n**Rating:** 8", 8.0),
        ('{"reason": "ok", "rating": 9}', 9.0),
        ("Score: 6 out of 10", 6.0),
        ("Rating: 7.5", 7.5),
        ("Final rating: [[4]]", 4.0),
        ("A rating of 3 would be too harsh; Rating: 3 was my first thought.\nRating: 9", 9.0),
        ("Rating: 2\nOn reflection the ids match.\nRating: 10", 10.0),
        ("**8**", 8.0),
        ("Rating: 0", 0.0),
        ("Rating: 11", None),
        ("Rating: -1", None),
        ("Rating: 12/10", None),
        ("The answer is fine but I will not rate it.", None),
        ("", None),
        ("Rating: N", None),
        ("It calls 2 tools instead of 1 tool.", None),
    ],
)
def test_parse_rating(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


def test_rubric_by_reference_and_prompt_content(openai_server: OpenAIServer) -> None:
    openai_server.responder = lambda body: {"content": "The call matches the reference.\nRating: 9"}
    with Judge(judge_config(openai_server)) as judge:
        ratings = judge.rate([TOOL_EXAMPLE, TEXT_EXAMPLE], [TOOL_ANSWER, TEXT_ANSWER])

    assert [r.rubric for r in ratings] == ["tool_call", "generic"]
    assert all(r.rating == 9.0 and r.error is None for r in ratings)
    assert ratings[0].reply.endswith("Rating: 9")

    by_system = {r.body["messages"][0]["content"]: r.body for r in openai_server.requests}
    assert set(by_system) == {TOOL_CALL_RUBRIC, GENERIC_RUBRIC}
    tool_body = by_system[TOOL_CALL_RUBRIC]
    assert tool_body["temperature"] == 0 and tool_body["max_tokens"] == 64
    assert "tools" not in tool_body and "tool_choice" not in tool_body
    prompt = tool_body["messages"][1]["content"]
    assert "user: Please cancel order ORD-4411, I ordered the wrong size." in prompt
    assert "Cancel an order that has not shipped." in prompt and '"required": ["order_id"]' in prompt
    assert '{"arguments": {"order_id": "ORD-4411", "reason": "wrong size"}, "name": "cancel_order"}' in prompt
    assert '"reason": "size was wrong"' in prompt
    text_prompt = by_system[GENERIC_RUBRIC]["messages"][1]["content"]
    assert "We are open 9am to 5pm, Monday to Friday." in text_prompt
    assert "Open weekdays from 9 to 5." in text_prompt


def test_rubrics_ask_for_a_final_rating_line() -> None:
    for rubric in (TOOL_CALL_RUBRIC, GENERIC_RUBRIC):
        assert "Rating: N" in rubric and "0 to 10" in rubric
    assert "paraphrased" in TOOL_CALL_RUBRIC and "extra call" in TOOL_CALL_RUBRIC


def test_unparsed_answer_shown_raw() -> None:
    answer = {"tool_calls": None, "content": None, "raw": "<tool_call>{broken"}
    prompt = judge_messages(TOOL_EXAMPLE, answer)[1]["content"]
    assert "<tool_call>{broken" in prompt
    empty = judge_messages(TOOL_EXAMPLE, {"tool_calls": None, "content": None, "raw": None})[1]["content"]
    assert empty.endswith("(an empty answer)")


def test_failures_recorded_as_missing(openai_server: OpenAIServer) -> None:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        user_prompt = body["messages"][1]["content"]
        return {"content": "I cannot judge this." if "opening hours" in user_prompt else "Rating: 6"}

    openai_server.responder = reply
    openai_server.faults.extend([{"status": 503}, {"status": 503}])  # the first example, both attempts
    config = judge_config(openai_server, concurrency=1)
    with Judge(config) as judge:
        ratings = judge.rate(
            [TOOL_EXAMPLE, TEXT_EXAMPLE, TOOL_EXAMPLE], [TOOL_ANSWER, TEXT_ANSWER, TOOL_ANSWER]
        )

    failed, unparsed, rated = ratings
    assert failed.rating is None and "judge request failed" in failed.error and "HTTP 503" in failed.error
    assert failed.reply is None
    assert unparsed.rating is None and "no 0-10 rating" in unparsed.error
    assert unparsed.reply == "I cannot judge this."
    assert rated == JudgeRating(rating=6.0, rubric="tool_call", error=None, reply="Rating: 6")
    assert summarize_ratings(ratings) == {"mean": 6.0, "rated": 1, "missing": 2}


def test_summarize_ratings() -> None:
    ratings = [
        JudgeRating(10.0, "tool_call"),
        JudgeRating(None, "generic", error="x"),
        JudgeRating(5.0, "generic"),
    ]
    assert summarize_ratings(ratings) == {"mean": 7.5, "rated": 2, "missing": 1}
    assert summarize_ratings([]) == {"mean": None, "rated": 0, "missing": 0}
    assert summarize_ratings([JudgeRating(None, "generic", error="x")])["mean"] is None


def test_mismatched_lengths_rejected(openai_server: OpenAIServer) -> None:
    with Judge(judge_config(openai_server)) as judge, pytest.raises(ValueError, match="1 examples but 0"):
        judge.rate([TOOL_EXAMPLE], [])


def test_long_reply_truncated(openai_server: OpenAIServer) -> None:
    openai_server.responder = lambda body: {"content": "x" * 1000 + "\nRating: 7"}
    with Judge(judge_config(openai_server)) as judge:
        (rating,) = judge.rate([TEXT_EXAMPLE], [TEXT_ANSWER])
    assert rating.rating == 7.0 and len(rating.reply) == 500


def test_request_is_valid_json_for_the_server(openai_server: OpenAIServer) -> None:
    """A reference whose calls hold dict arguments still renders (the judge never sends tool_calls)."""
    example = EvalExample(
        "e3",
        [{"role": "user", "content": "hi"}],
        [],
        [{"function": {"name": "f", "arguments": {"a": 1}}}],
        None,
        "f",
    )
    openai_server.responder = lambda body: {"content": "Rating: 5"}
    with Judge(judge_config(openai_server)) as judge:
        (rating,) = judge.rate([example], [TEXT_ANSWER])
    assert rating.rating == 5.0 and rating.rubric == "tool_call"
    assert (
        json.dumps({"arguments": {"a": 1}, "name": "f"})
        in openai_server.requests[0].body["messages"][1]["content"]
    )
