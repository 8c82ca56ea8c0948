"""Answers back to OpenAI tool calls: every format the trainer renders, OpenAI messages, and failures.

A text answer is rendered here with :mod:`flywheel.train.formatting` (the module that renders the
training targets), so what the student is taught is exactly what the evaluator must read back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from flywheel.evaluate.generation import Generation
from flywheel.evaluate.parsing import ParsedAnswer, parse_generation, parse_message, parse_text
from flywheel.train.formatting import (
    format_tool_call,
    read_tool_calls,
    render_prompt,
    to_template_messages,
)

REASONS = {"invalid_json", "text_after_call", "not_a_call", "arguments_not_json", "arguments_not_object"}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
    for name in ("get_order_status", "track_shipment", "search_products")
]


def call(name: str, arguments: dict[str, Any], call_id: str = "call_x") -> dict[str, Any]:
    """An OpenAI ``tool_calls`` entry as the dataset logs it (arguments as JSON text)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def rendered(content: str | None, calls: list[dict[str, Any]]) -> str:
    """The fallback-format text of an assistant answer, as the trainer teaches it."""
    answer = {"role": "assistant", "content": content, "tool_calls": calls}
    return to_template_messages([answer], [], native=False)[0]["content"]


def plain(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI calls as ``(name, decoded arguments)`` pairs: the content of a call, ids aside."""
    if calls is None:
        return None
    return [
        {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls
    ]


SINGLE = [call("get_order_status", {"order_id": "A-48213", "include_items": True})]
PARALLEL = [
    call("get_order_status", {"order_id": "A-48213"}, "c1"),
    call("track_shipment", {"tracking_number": "1Z999AA10123456784", "carrier": "ups"}, "c2"),
]
NESTED = [
    call(
        "search_products",
        {"query": "Müller wool socks", "filters": {"sizes": ["M", "L"], "max_price": 19.5}, "in_stock": None},
    )
]


@pytest.mark.parametrize("calls", [SINGLE, PARALLEL, NESTED], ids=["single", "parallel", "nested-unicode"])
def test_fallback_render_of_calls_parses_back(calls: list[dict[str, Any]]) -> None:
    text = rendered(None, calls)

    parsed = parse_text(text)

    assert parsed.error is None
    assert parsed.content is None
    assert plain(parsed.tool_calls) == plain(calls)
    for index, entry in enumerate(parsed.tool_calls):
        assert entry["type"] == "function"
        assert entry["id"] == f"call_{index}"
        assert isinstance(entry["function"]["arguments"], str)


def test_format_tool_call_per_call_parses_back() -> None:
    # A reference call ({"name", "arguments"}) and an OpenAI entry render the same text.
    reference = {"name": "get_order_status", "arguments": {"order_id": "A-48213", "include_items": True}}
    assert format_tool_call(reference) == format_tool_call(SINGLE[0])

    parsed = parse_text(format_tool_call(reference))

    assert plain(parsed.tool_calls) == [reference]


def test_text_and_call() -> None:
    text = rendered("Let me look that up for you.", SINGLE)
    assert text.startswith("Let me look that up for you.\n<tool_call>")

    parsed = parse_text(text)

    assert plain(parsed.tool_calls) == plain(SINGLE)
    assert parsed.content == "Let me look that up for you."
    assert parsed.error is None


def test_plain_answer_is_no_call() -> None:
    text = rendered("Returns are free within 30 days of delivery.", [])

    parsed = parse_text(text)

    assert parsed == ParsedAnswer([], "Returns are free within 30 days of delivery.", None)
    assert parsed.reason is None


def test_empty_answer_is_no_call_without_content() -> None:
    assert parse_text("") == ParsedAnswer([], None, None)
    assert parse_text("  \n") == ParsedAnswer([], None, None)


def test_arguments_as_json_text_inside_the_block_are_accepted() -> None:
    text = '<tool_call>{"name": "get_order_status", "arguments": "{\\"order_id\\": \\"A-1\\"}"}</tool_call>'

    assert plain(parse_text(text).tool_calls) == [
        {"name": "get_order_status", "arguments": {"order_id": "A-1"}}
    ]


@pytest.mark.parametrize(
    "tail",
    ["", "\n", "<|im_end|>", "\n<|im_end|>\n<|im_start|>user"],
    ids=["bare", "newline", "end-of-turn", "more-turns"],
)
def test_unclosed_final_block_is_accepted(tail: str) -> None:
    # Generation stopped before the closing tag: the first JSON value after the tag is the call.
    text = rendered(None, PARALLEL).removesuffix("</tool_call>") + tail

    parsed = parse_text(text)

    assert parsed.error is None
    assert plain(parsed.tool_calls) == plain(PARALLEL)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<tool_call>{"name": "get_order_status", "arguments": {</tool_call>', "invalid_json"),
        ("<tool_call>not json at all</tool_call>", "invalid_json"),
        ("<tool_call></tool_call>", "invalid_json"),
        ("<tool_call>", "invalid_json"),
        ('<tool_call>{"name": "get_order_status", "arguments": {}} and more</tool_call>', "text_after_call"),
        (
            '<tool_call>{"name": "a", "arguments": {}}{"name": "b", "arguments": {}}</tool_call>',
            "text_after_call",
        ),
        ('<tool_call>["get_order_status"]</tool_call>', "not_a_call"),
        ('<tool_call>{"name": 7, "arguments": {}}</tool_call>', "not_a_call"),
        ('<tool_call>{"name": "get_order_status"}</tool_call>', "not_a_call"),
        ('<tool_call>{"function": "get_order_status", "arguments": {}}</tool_call>', "not_a_call"),
        (
            '<tool_call>{"name": "get_order_status", "arguments": "{order_id: A-1"}</tool_call>',
            "arguments_not_json",
        ),
        ('<tool_call>{"name": "get_order_status", "arguments": ["A-1"]}</tool_call>', "arguments_not_object"),
        (
            '<tool_call>{"name": "get_order_status", "arguments": "[1, 2]"}</tool_call>',
            "arguments_not_object",
        ),
        ('<tool_call>{"name": "get_order_status", "arguments": null}</tool_call>', "arguments_not_object"),
        ('<tool_call>{"name": "get_order_status", "arguments": 3}</tool_call>', "arguments_not_object"),
    ],
)
def test_malformed_blocks_give_no_calls_and_the_reason(text: str, reason: str) -> None:
    parsed = parse_text(text)

    assert parsed.tool_calls is None
    assert parsed.reason == reason
    assert parsed.error.startswith(f"{reason}: call 1")


def test_a_cut_off_answer_is_invalid_json_and_says_so() -> None:
    full = rendered(None, SINGLE)
    cut = full[: full.index("A-48213") + 3]  # '<tool_call>{"name": ..., "arguments": {"order_id": "A-4'

    parsed = parse_text(cut)

    assert parsed.tool_calls is None
    assert parsed.reason == "invalid_json"
    assert "not closed" in parsed.error


def test_one_bad_block_makes_the_whole_answer_unreadable() -> None:
    text = rendered(None, SINGLE) + '\n<tool_call>{"name": "track_shipment", "arguments": [1]}</tool_call>'

    parsed = parse_text(text)

    assert parsed.tool_calls is None
    assert parsed.error.startswith("arguments_not_object: call 2")


def test_malformed_answer_keeps_its_text_as_content() -> None:
    parsed = parse_text("Checking now.\n<tool_call>{oops}</tool_call>")

    assert parsed.tool_calls is None
    assert parsed.content == "Checking now."


def test_every_prefix_of_an_answer_parses_without_raising() -> None:
    # Generation can stop anywhere (max_new_tokens): every cut is a result, never an exception.
    text = rendered("One moment.", PARALLEL)
    outcomes = set()
    for end in range(len(text) + 1):
        parsed = parse_text(text[:end])
        if parsed.tool_calls is None:
            assert parsed.reason in REASONS, parsed.error
            outcomes.add(parsed.reason)
        else:
            assert parsed.error is None
            assert len(parsed.tool_calls) <= len(PARALLEL)
            outcomes.add(len(parsed.tool_calls))
    assert parse_text(text).tool_calls is not None
    assert {0, 1, 2, "invalid_json"} <= outcomes


@pytest.mark.parametrize(
    "text",
    [
        "</tool_call>",
        "<tool_call><tool_call></tool_call>",
        "<tool_call>{}</tool_call>",
        '<tool_call>{"name": "x", "arguments": {}',
        '<tool_call>{"name": "x", "arguments": {}} <tool_call>',
        "\x00<tool_call>\ud800</tool_call>",
        "<tool_call>" * 50,
        '<tool_call>{"name": "x", "arguments": {"a": NaN}}</tool_call>',
    ],
)
def test_odd_text_never_raises(text: str) -> None:
    parsed = parse_text(text)

    assert isinstance(parsed, ParsedAnswer)
    assert (parsed.tool_calls is None) == (parsed.error is not None)
    if parsed.error is not None:
        assert parsed.reason in REASONS


def test_smollm2_chat_template_render_round_trips(tiny_model: str) -> None:
    """The answer as the SmolLM2 template renders it (what the model is trained to generate) parses back."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = [
        {"role": "system", "content": "You are the support assistant of a shop."},
        {"role": "user", "content": "where are my order A-48213 and my UPS parcel 1Z999AA10123456784?"},
    ]
    answer = {"role": "assistant", "content": None, "tool_calls": PARALLEL}
    prompt_text = render_prompt(tokenizer, prompt, TOOLS)
    full_text = tokenizer.apply_chat_template(
        to_template_messages([*prompt, answer], TOOLS, native=False), tokenize=False
    )
    assert full_text.startswith(prompt_text)
    generated = full_text[len(prompt_text) :].split(tokenizer.eos_token)[0]  # the stop token ends it

    assert read_tool_calls(generated) == plain(PARALLEL)
    parsed = parse_text(generated)
    assert plain(parsed.tool_calls) == plain(PARALLEL)
    assert parsed.content is None


# --- OpenAI response messages ------------------------------------------------------------------


def message(content: str | None = None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}


def test_message_with_arguments_as_json_text() -> None:
    parsed = parse_message(message(tool_calls=PARALLEL))

    assert parsed.error is None
    assert plain(parsed.tool_calls) == plain(PARALLEL)
    assert [c["id"] for c in parsed.tool_calls] == ["c1", "c2"]  # the endpoint's ids are kept
    assert parsed.content is None


def test_message_with_arguments_as_an_object() -> None:
    raw = {"id": "c9", "type": "function", "function": {"name": "track_shipment", "arguments": {"n": "1Z"}}}

    parsed = parse_message(message(tool_calls=[raw]))

    assert parsed.tool_calls == [
        {"id": "c9", "type": "function", "function": {"name": "track_shipment", "arguments": '{"n": "1Z"}'}}
    ]


@pytest.mark.parametrize("arguments", ["", None])
def test_message_with_empty_arguments_is_a_call_without_arguments(arguments: str | None) -> None:
    raw = {"id": "c1", "type": "function", "function": {"name": "talk_to_human", "arguments": arguments}}

    parsed = parse_message(message(tool_calls=[raw]))

    assert plain(parsed.tool_calls) == [{"name": "talk_to_human", "arguments": {}}]


def test_message_ids_filled_in_when_missing() -> None:
    raw = [{"function": {"name": "a", "arguments": "{}"}}, {"function": {"name": "b", "arguments": "{}"}}]

    assert [c["id"] for c in parse_message(message(tool_calls=raw)).tool_calls] == ["call_0", "call_1"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"function": {"name": "get_order_status", "arguments": '{"order_id": "A-1'}}, "arguments_not_json"),
        ({"function": {"name": "get_order_status", "arguments": "order A-1"}}, "arguments_not_json"),
        ({"function": {"arguments": "{}"}}, "not_a_call"),
        ({"function": {"name": None, "arguments": "{}"}}, "not_a_call"),
        ({"name": "get_order_status", "arguments": "{}"}, "not_a_call"),
        ("get_order_status", "not_a_call"),
        ({"function": {"name": "get_order_status", "arguments": "[1]"}}, "arguments_not_object"),
        ({"function": {"name": "get_order_status", "arguments": ["A-1"]}}, "arguments_not_object"),
    ],
)
def test_malformed_message_calls(raw: Any, reason: str) -> None:
    good = {"id": "c0", "type": "function", "function": {"name": "a", "arguments": "{}"}}

    parsed = parse_message(message("checking", [good, raw]))

    assert parsed.tool_calls is None
    assert parsed.reason == reason
    assert parsed.error.startswith(f"{reason}: call 2")
    assert parsed.content == "checking"


def test_message_without_tool_calls_but_tool_call_text_is_parsed_as_text() -> None:
    # A server running without a tool-call parser returns the model's raw text as content.
    parsed = parse_message(message(rendered("Sure.", SINGLE), []))

    assert plain(parsed.tool_calls) == plain(SINGLE)
    assert parsed.content == "Sure."
    malformed = parse_message(message("<tool_call>{broken</tool_call>"))
    assert malformed.tool_calls is None
    assert malformed.reason == "invalid_json"


@pytest.mark.parametrize(
    ("msg", "content"),
    [
        (message("  Returns are free within 30 days.  "), "Returns are free within 30 days."),
        (message("Hello!", []), "Hello!"),
        (message(None), None),
        (message(""), None),
        (message("   "), None),
        ({"role": "assistant"}, None),
    ],
)
def test_message_with_plain_content_is_no_call(msg: dict[str, Any], content: str | None) -> None:
    assert parse_message(msg) == ParsedAnswer([], content, None)


# --- Generations ----------------------------------------------------------------------------------


def test_failed_generation_is_a_parse_failure_with_the_reason() -> None:
    generation = Generation(text=None, latency_s=0.1, tokens_in=0, tokens_out=0, error="HTTP 503: overloaded")

    parsed = parse_generation(generation)

    assert parsed.tool_calls is None
    assert parsed.content is None
    assert parsed.reason == "generation_failed"
    assert parsed.error == "generation_failed: HTTP 503: overloaded"


def test_generation_message_wins_over_its_text() -> None:
    generation = Generation(
        text="ignored", latency_s=0.1, tokens_in=3, tokens_out=2, message=message(None, SINGLE)
    )

    assert plain(parse_generation(generation).tool_calls) == plain(SINGLE)


def test_generation_text_is_parsed_when_there_is_no_message() -> None:
    text = rendered(None, PARALLEL)

    assert parse_generation(Generation(text, 0.1, 10, 20)) == parse_text(text)
    assert parse_generation(Generation(None, 0.1, 10, 0)) == ParsedAnswer([], None, None)
