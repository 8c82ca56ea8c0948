"""Record-level rules: demo noise and a hostile corpus land on the right reason; clean records parse."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from flywheel.demo.traffic import NoiseKind, generate_traffic
from flywheel.validate.records import (
    NO_TOOL,
    ROLES,
    Conversation,
    QuarantineReason,
    ToolCall,
    Violation,
    check_record,
)
from hostile_records import (
    ANSWER,
    END,
    HOSTILE,
    START,
    TOOLS,
    WORKLOAD,
    call,
    request,
    response,
    row,
    with_role,
    with_user,
    without,
)

MAX_BYTES = 1_000_000


def check(row: dict[str, Any], **overrides: Any) -> Conversation | Violation:
    kwargs: dict[str, Any] = {
        "workload_id": WORKLOAD,
        "start": START,
        "end": END,
        "max_record_bytes": MAX_BYTES,
    } | overrides
    return check_record(row, **kwargs)


def raw_row(source: dict[str, Any]) -> dict[str, Any]:
    """A raw-partition row as extraction builds it from one log document's ``_source``."""
    ts = source.get("timestamp")
    request, response = source.get("request"), source.get("response")
    return {
        "record_id": "r",
        "timestamp": datetime.fromisoformat(ts) if ts else None,
        "workload_id": source.get("workload_id"),
        "client_id": source.get("client_id"),
        "first_tool_name": None,
        "request_json": orjson.dumps(request).decode() if "request" in source else None,
        "response_json": orjson.dumps(response).decode() if "response" in source else None,
        "extra_json": None,
        "source": "elasticsearch",
        "source_record_id": "logs-1/1",
    }


# --------------------------------------------------------------------------------------------------
# Demo traffic

EXPECTED = {
    NoiseKind.ARGUMENTS_NOT_JSON: QuarantineReason.arguments_not_json,
    NoiseKind.ARGUMENTS_NOT_OBJECT: QuarantineReason.arguments_not_object,
    NoiseKind.MISSING_RESPONSE: QuarantineReason.missing_response,
    NoiseKind.EMPTY_CHOICES: QuarantineReason.empty_choices,
    NoiseKind.EMPTY_MESSAGES: QuarantineReason.empty_messages,
    NoiseKind.UNKNOWN_ROLE: QuarantineReason.unknown_role,
    NoiseKind.UNKNOWN_TOOL: QuarantineReason.unknown_tool,
    NoiseKind.WRONG_TOOL_TYPE: QuarantineReason.wrong_tool_type,
    NoiseKind.OUTSIDE_WINDOW: QuarantineReason.timestamp_outside_interval,
}


def wrong_types_reason(source: dict[str, Any]) -> QuarantineReason:
    """The reason a WRONG_TYPES record must get, by which of the three variants it carries."""
    messages = source["request"]["messages"]
    if isinstance(messages, str):
        return QuarantineReason.missing_messages
    if any(isinstance(m.get("content"), int) for m in messages):
        return QuarantineReason.invalid_message
    calls = source["response"]["choices"][0]["message"]["tool_calls"]
    assert any(isinstance(c["function"]["arguments"], dict) for c in calls)
    return QuarantineReason.arguments_not_json


@pytest.fixture(scope="module", params=["support_router", "bfcl_live"])
def demo(request) -> list[tuple[dict[str, Any], NoiseKind | None, Conversation | Violation]]:
    records = generate_traffic(
        kind=request.param,
        workload_id=WORKLOAD,
        start=START,
        end=END,
        count=3000,
        seed=7,
        client_ids=["web", "app"],
    )
    return [(r.source, r.noise, check(raw_row(r.source))) for r in records]


def test_every_demo_noise_kind_gets_its_reason(demo):
    seen: Counter[NoiseKind | None] = Counter()
    for source, noise, result in demo:
        seen[noise] += 1
        if noise is None or noise in (NoiseKind.EXACT_DUPLICATE, NoiseKind.NEAR_DUPLICATE):
            assert isinstance(result, Conversation), (noise, result)
        elif noise is NoiseKind.WRONG_TYPES:
            assert isinstance(result, Violation)
            assert result.reason == wrong_types_reason(source), result
        else:
            assert isinstance(result, Violation), (noise, source)
            assert result.reason == EXPECTED[noise], (noise, result)
    assert set(seen) == {None, *NoiseKind}
    assert seen[None] > 2500


def test_demo_violation_fields_point_at_the_defect(demo):
    for _, noise, result in demo:
        if noise is NoiseKind.ARGUMENTS_NOT_JSON or noise is NoiseKind.ARGUMENTS_NOT_OBJECT:
            assert result.field.startswith(f"{ANSWER}.tool_calls[")
            assert result.field.endswith("].function.arguments")
        elif noise is NoiseKind.WRONG_TOOL_TYPE:
            assert result.field.startswith(f"{ANSWER}.tool_calls[") and result.field.endswith("].type")
        elif noise is NoiseKind.UNKNOWN_TOOL:
            assert result.field.endswith("].function.name")
        elif noise is NoiseKind.UNKNOWN_ROLE:
            assert result.field.startswith("request.messages[") and result.field.endswith("].role")
            assert "'bot'" in result.detail or "'narrator'" in result.detail
        elif noise is NoiseKind.EMPTY_MESSAGES:
            assert result.field == "request.messages"
        elif noise is NoiseKind.MISSING_RESPONSE:
            assert result.field == "response"
        elif noise is NoiseKind.OUTSIDE_WINDOW:
            assert result.field == "timestamp"


def test_demo_wrong_types_variants_each_get_their_reason():
    """Over both workloads, all three WRONG_TYPES variants occur and each maps to its own reason."""
    reasons: Counter[QuarantineReason] = Counter()
    for kind in ("support_router", "bfcl_live"):
        for seed in range(3):
            for r in generate_traffic(
                kind=kind, workload_id=WORKLOAD, start=START, end=END, count=1500, seed=seed, client_ids=["c"]
            ):
                if r.noise is NoiseKind.WRONG_TYPES:
                    result = check(raw_row(r.source))
                    assert result.reason == wrong_types_reason(r.source)
                    reasons[result.reason] += 1
    assert set(reasons) == {
        QuarantineReason.missing_messages,
        QuarantineReason.invalid_message,
        QuarantineReason.arguments_not_json,
    }


def test_clean_demo_records_parse_to_their_conversation(demo):
    labels: Counter[str] = Counter()
    for source, noise, result in demo:
        if noise is not None:
            continue
        answer = source["response"]["choices"][0]["message"]
        assert result.messages == source["request"]["messages"]
        assert result.tools == source["request"]["tools"]
        calls = answer.get("tool_calls") or []
        assert result.tool_calls == [
            ToolCall(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls
        ]
        assert result.label == (calls[0]["function"]["name"] if calls else NO_TOOL)
        assert result.content == (answer["content"] or None)
        labels[result.label] += 1
    assert len(labels) >= 3


def test_demo_duplicates_are_not_record_level_defects(demo):
    duplicates = [r for _, noise, r in demo if noise in (NoiseKind.EXACT_DUPLICATE, NoiseKind.NEAR_DUPLICATE)]
    assert duplicates
    assert all(isinstance(r, Conversation) for r in duplicates)


def test_throughput_smoke():
    records = generate_traffic(
        kind="support_router",
        workload_id=WORKLOAD,
        start=START,
        end=END,
        count=2000,
        seed=3,
        client_ids=["c"],
    )
    results = [check(raw_row(r.source)) for r in records]
    assert len(results) == 2000
    clean = sum(isinstance(r, Conversation) for r in results)
    assert 1700 < clean < 2000


# --------------------------------------------------------------------------------------------------
# Hand-written hostile corpus (tests/hostile_records.py)


def test_hostile_corpus_is_large_enough():
    assert len(HOSTILE) >= 30
    assert len({name for name, *_ in HOSTILE}) == len(HOSTILE)
    assert {reason for _, _, reason, _ in HOSTILE} == set(QuarantineReason) - {QuarantineReason.check_error}


@pytest.mark.parametrize(("name", "raw", "reason", "field"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_record_gets_reason_and_field(name, raw, reason, field):
    result = check(raw)
    assert isinstance(result, Violation), result
    assert (result.reason, result.field) == (reason, field), result.detail
    assert 0 < len(result.detail) <= 200


def test_details_say_what_was_found():
    assert "string" in check(row(request("where is my order"))).detail
    assert "absent" in check(row(without(request(), "messages"))).detail
    assert (
        "expected a JSON string, got object"
        in check(row(resp=response(call(arguments={"order_id": "A-1"})))).detail
    )
    assert "'get_weather'" in check(row(resp=response(call(name="get_weather")))).detail
    assert "\\u1d1c" in check(row(with_role("ᴜser"))).detail
    assert "U+0000" in check(row(with_user("a\u0000b"))).detail
    assert "bytes, limit 1000000" in check(row(with_user("x" * 2_000_000))).detail


def test_size_counts_utf8_bytes_not_characters():
    clean = row()
    limit = len(clean["request_json"]) + len(clean["response_json"])
    assert isinstance(check(clean, max_record_bytes=limit), Conversation)
    assert check(clean, max_record_bytes=limit - 1).reason == QuarantineReason.record_too_large
    wide = row(with_user("é" * 100), timestamp=START)
    wide["request_json"] = json.dumps(json.loads(wide["request_json"]), ensure_ascii=False)
    chars = len(wide["request_json"]) + len(wide["response_json"])
    assert check(wide, max_record_bytes=chars).reason == QuarantineReason.record_too_large
    assert isinstance(check(wide, max_record_bytes=chars + 100), Conversation)


def test_timestamps_at_start_inside_and_naive():
    assert isinstance(check(row(timestamp=START)), Conversation)
    assert isinstance(check(row(timestamp=END - timedelta(microseconds=1))), Conversation)
    assert isinstance(check(row(timestamp=datetime(2026, 3, 1, 12))), Conversation)  # naive: UTC
    assert check(row(timestamp=datetime(2026, 3, 2))).reason == QuarantineReason.timestamp_outside_interval


def test_naive_interval_is_a_caller_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        check(row(), start=datetime(2026, 3, 1))


def test_rows_that_are_not_mappings_are_quarantined_not_raised():
    for junk in (None, 42, "row", ["request_json"]):
        result = check(junk)  # type: ignore[arg-type]
        assert isinstance(result, Violation)
        assert result.reason == QuarantineReason.check_error


def test_bytes_columns_are_read_as_utf8():
    raw = row()
    raw["request_json"] = raw["request_json"].encode()
    raw["response_json"] = raw["response_json"].encode()
    assert check(raw).label == "get_order_status"


def test_first_failing_rule_wins():
    # workload and timestamp come before anything in the JSON; the request before the response
    both = row(request([]), response(choices=[]), workload_id="other", timestamp=END)
    assert check(both).reason == QuarantineReason.workload_mismatch
    assert check(both | {"workload_id": WORKLOAD}).reason == QuarantineReason.timestamp_outside_interval
    assert (
        check(both | {"workload_id": WORKLOAD, "timestamp": START}).reason == QuarantineReason.empty_messages
    )


# --------------------------------------------------------------------------------------------------
# Clean shapes


def test_plain_text_answer_with_tools_offered_is_clean_and_labelled():
    result = check(row(resp=response(content="Happy to help! Anything else?")))
    assert isinstance(result, Conversation)
    assert result.label == NO_TOOL
    assert result.tool_calls == []
    assert result.content == "Happy to help! Anything else?"
    assert [t["function"]["name"] for t in result.tools] == ["get_order_status", "track_shipment"]


def test_tool_call_answer_parses_arguments():
    result = check(row(resp=response(call(), call("track_shipment", '{"tracking_number":"1Z9"}'))))
    assert result == Conversation(
        messages=request()["messages"],
        tools=TOOLS,
        tool_calls=[
            ToolCall("get_order_status", {"order_id": "A-12345"}),
            ToolCall("track_shipment", {"tracking_number": "1Z9"}),
        ],
        content=None,
    )
    assert result.label == "get_order_status"


def test_multi_turn_history_with_tool_calls_and_tool_results_is_clean():
    messages = [
        {"role": "system", "content": "You route support requests."},
        {"role": "user", "content": "where is order A-12345?"},
        {"role": "assistant", "content": None, "tool_calls": [call()]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped", "tracking": "1Z9"}'},
        {"role": "assistant", "content": "It shipped! Tracking number 1Z9."},
        {"role": "user", "content": [{"type": "text", "text": "can you track it?"}]},
    ]
    result = check(row(request(messages), response(call("track_shipment", '{"tracking_number":"1Z9"}'))))
    assert isinstance(result, Conversation)
    assert result.messages == messages
    assert result.label == "track_shipment"


def test_other_clean_shapes():
    developer = request([{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert isinstance(check(row(developer)), Conversation)
    image = with_user(
        [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}, {"type": "text", "text": "?"}]
    )
    assert isinstance(check(row(image)), Conversation)
    untyped = {"id": "c", "function": {"name": "get_order_status", "arguments": "{}"}}  # no "type": function
    assert check(row(resp=response(untyped))).tool_calls == [ToolCall("get_order_status", {})]
    big = check(row(resp=response(call(arguments='{"n": 123456789012345678901234567890}'))))
    assert big.tool_calls[0].arguments == {"n": 123456789012345678901234567890}
    text_and_call = check(row(resp=response(call(), content="Let me check.")))
    assert (text_and_call.label, text_and_call.content) == ("get_order_status", "Let me check.")
    unicode = check(row(with_user("Grüße, où est ma commande? 注文 \t\r\n 😀")))
    assert isinstance(unicode, Conversation)
    escaped = check(row(resp=response(call(arguments='{"order_id":"A-1\\n\\u00e9"}'))))
    assert escaped.tool_calls[0].arguments == {"order_id": "A-1\né"}


def test_roles_accepted():
    assert {"system", "user", "assistant", "tool", "developer"} == ROLES


def test_reason_values_are_stable_strings():
    assert all(reason.value == reason.name for reason in QuarantineReason)
    assert QuarantineReason("arguments_not_json") is QuarantineReason.arguments_not_json


def test_shared_tool_definitions_are_checked_once_and_consistently():
    bad = row(request(tools=[{"type": "retrieval"}]))
    for _ in range(3):
        assert check(bad).reason == QuarantineReason.invalid_tools
        assert isinstance(check(row()), Conversation)


JUNK: list[Any] = [
    None,
    True,
    0,
    -1.5,
    "",
    "x\u0000",
    "\ud800",
    "\ufffd",
    [],
    {},
    [None],
    {"role": None},
    "{",
    "[]",
    "null",
    10**30,
    [[[[[]]]]],
]


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, sub in value.items():
            out.extend(_nodes(sub, (*path, key)))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out.extend(_nodes(sub, (*path, i)))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: _replace(v, rest, new) if k == head else v for k, v in value.items()}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


def test_random_damage_never_raises_nor_reaches_the_safety_net():
    """Replace one random node of a clean document by junk, many times: every result is a known outcome."""
    rng = random.Random(11)
    sources = [
        r.source
        for kind in ("support_router", "bfcl_live")
        for r in generate_traffic(
            kind=kind,
            workload_id=WORKLOAD,
            start=START,
            end=END,
            count=60,
            seed=5,
            client_ids=["c"],
            noise_rate=0,
        )
    ]
    outcomes: Counter[str] = Counter()
    for _ in range(3000):
        source = rng.choice(sources)
        doc = {"request": source["request"], "response": source["response"]}
        path = rng.choice(_nodes(doc)[1:])
        damaged = _replace(doc, path, rng.choice(JUNK))
        raw = row(damaged["request"], damaged["response"])
        result = check(raw)
        if isinstance(result, Violation):
            assert result.reason != QuarantineReason.check_error, (path, result)
            outcomes[result.reason] += 1
        else:
            outcomes["clean"] += 1
    assert len(outcomes) >= 12
