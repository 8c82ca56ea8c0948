"""Tests of the demo traffic generator: counts, determinism, windows, clean shape and every noise kind."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from flywheel.demo.traffic import WORKLOAD_KINDS, DemoRecord, NoiseKind, generate_traffic

START = datetime(2026, 11, 20, tzinfo=UTC)
END = START + timedelta(days=1)
CLIENTS = ("web-shop", "mobile-app", "email-gateway")
DOC_KEYS = {"timestamp", "workload_id", "client_id", "request", "response", "latency_ms"}
KNOWN_ROLES = {"system", "user", "assistant", "tool"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def generate(kind: str, count: int = 2000, **overrides: Any) -> list[DemoRecord]:
    arguments: dict[str, Any] = {
        "kind": kind,
        "workload_id": f"demo_{kind}",
        "start": START,
        "end": END,
        "count": count,
        "seed": 7,
        "client_ids": CLIENTS,
    }
    arguments.update(overrides)
    return list(generate_traffic(**arguments))


@pytest.fixture(scope="module", params=WORKLOAD_KINDS)
def traffic(request: pytest.FixtureRequest) -> tuple[str, list[DemoRecord]]:
    return request.param, generate(request.param)


def parse_ts(text: str) -> datetime:
    assert TIMESTAMP.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def schema_problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Tiny JSON-schema checker: required keys, declared keys, enum values, through objects and arrays."""
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path or 'value'}={value!r} not in enum {schema['enum']}")
    properties = schema.get("properties")
    if isinstance(value, dict) and isinstance(properties, dict):
        problems += [f"{path}{key} missing" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key not in properties:
                problems.append(f"{path}{key} undeclared")
            else:
                problems += schema_problems(item, properties[key], f"{path}{key}.")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            problems += schema_problems(item, schema["items"], f"{path}[].")
    return problems


def test_schema_checker_catches_what_it_should() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "enum": ["x", "y"]}, "b": {"type": "integer"}},
        "required": ["a"],
    }
    assert schema_problems({"a": "x"}, schema) == []
    assert schema_problems({"b": 1}, schema) == ["a missing"]
    assert schema_problems({"a": "z"}, schema) == ["a.='z' not in enum ['x', 'y']"]
    assert schema_problems({"a": "x", "c": 1}, schema) == ["c undeclared"]


def tool_names(source: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in source["request"]["tools"]}


def assert_clean(source: dict[str, Any], in_window: bool = True) -> None:
    """A well-formed teacher log document (the window check can be switched off)."""
    assert set(source) == DOC_KEYS
    timestamp = parse_ts(source["timestamp"])
    if in_window:
        assert START <= timestamp < END
    assert source["client_id"] in CLIENTS
    request, response = source["request"], source["response"]
    messages = request["messages"]
    assert isinstance(messages, list)
    assert messages
    assert messages[-1]["role"] == "user"
    assert isinstance(messages[-1]["content"], str)
    assert messages[-1]["content"]
    for message in messages:
        assert message["role"] in KNOWN_ROLES
        calls_instead = message["role"] == "assistant" and "tool_calls" in message
        assert isinstance(message["content"], str) or calls_instead
        if message["role"] == "tool":
            assert message["tool_call_id"].startswith("call_")
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in request["tools"]}
    assert len(schemas) == len(request["tools"])
    for tool in request["tools"]:
        assert tool["type"] == "function"
        assert OPENAI_NAME.match(tool["function"]["name"])
    assert request["tool_choice"] == "auto"
    assert response["object"] == "chat.completion"
    assert response["id"].startswith("chatcmpl-")
    assert response["created"] == int(timestamp.timestamp())
    (choice,) = response["choices"]
    answer = choice["message"]
    assert answer["role"] == "assistant"
    if "tool_calls" in answer:
        assert choice["finish_reason"] == "tool_calls"
        assert answer["content"] is None
        assert answer["tool_calls"]
        for call in answer["tool_calls"]:
            assert call["type"] == "function"
            assert call["id"].startswith("call_")
            name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
            assert name in schemas
            assert isinstance(arguments, dict)
            assert schema_problems(arguments, schemas[name]) == [], (name, arguments)
    else:
        assert choice["finish_reason"] == "stop"
        assert isinstance(answer["content"], str)
        assert answer["content"]
    usage = response["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0
    assert isinstance(source["latency_ms"], int)
    assert source["latency_ms"] > 0


def calls(source: dict[str, Any]) -> list[dict[str, Any]]:
    return source["response"]["choices"][0]["message"].get("tool_calls", [])


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def conversation_key(source: dict[str, Any]) -> bytes:
    """What a near duplicate keeps: the conversation up to case and whitespace, and the answer."""
    messages = [dict(m, content=normalized(m["content"] or "")) for m in source["request"]["messages"]]
    answer = source["response"]["choices"][0]["message"]
    teacher = [c["function"] for c in answer.get("tool_calls", [])] or answer["content"]
    return orjson.dumps([messages, teacher])


def assert_malformed(
    noise: NoiseKind, source: dict[str, Any], earlier: set[bytes], seen: dict[bytes, list[dict[str, Any]]]
) -> None:
    """`source` is broken exactly the way its noise kind says (`earlier`: every source emitted before it,
    serialized; `seen`: clean sources by :func:`conversation_key`)."""
    if noise is NoiseKind.EXACT_DUPLICATE:
        assert orjson.dumps(source) in earlier
        return
    if noise is NoiseKind.NEAR_DUPLICATE:
        assert_clean(source)
        originals = seen.get(conversation_key(source), [])
        user = source["request"]["messages"][-1]["content"]
        assert any(o["request"]["messages"][-1]["content"] != user for o in originals)
        assert all(o["timestamp"] != source["timestamp"] for o in originals)
        return
    if noise is NoiseKind.OUTSIDE_WINDOW:
        assert_clean(source, in_window=False)
        timestamp = parse_ts(source["timestamp"])
        before = START - timedelta(minutes=5) <= timestamp < START
        after = END <= timestamp <= END + timedelta(minutes=5)
        assert before or after, timestamp
        return
    # Every other kind: in the window, and the damage is where the name says.
    assert START <= parse_ts(source["timestamp"]) < END
    if noise is NoiseKind.MISSING_RESPONSE:
        assert "response" not in source
        return
    if noise is NoiseKind.EMPTY_CHOICES:
        assert source["response"]["choices"] == []
        return
    messages = source["request"]["messages"]
    if noise is NoiseKind.EMPTY_MESSAGES:
        assert messages == []
    elif noise is NoiseKind.WRONG_TYPES:
        assert (
            not isinstance(messages, list)
            or any(not isinstance(m["content"], str | None) for m in messages)
            or any(not isinstance(c["function"]["arguments"], str) for c in calls(source))
        )
    elif noise is NoiseKind.UNKNOWN_ROLE:
        assert {m["role"] for m in messages} - KNOWN_ROLES <= {"bot", "narrator"}
        assert {m["role"] for m in messages} - KNOWN_ROLES
    elif noise is NoiseKind.ARGUMENTS_NOT_JSON:
        broken = 0
        for call in calls(source):
            try:
                json.loads(call["function"]["arguments"])
            except json.JSONDecodeError:
                broken += 1
        assert broken == 1
    elif noise is NoiseKind.ARGUMENTS_NOT_OBJECT:
        parsed = [json.loads(c["function"]["arguments"]) for c in calls(source)]
        assert any(isinstance(value, list | str | int | float) for value in parsed)
    elif noise is NoiseKind.UNKNOWN_TOOL:
        assert any(c["function"]["name"] not in tool_names(source) for c in calls(source))
    elif noise is NoiseKind.WRONG_TOOL_TYPE:
        assert any(c["type"] != "function" for c in calls(source))
    else:  # pragma: no cover - a new NoiseKind needs its own check here
        pytest.fail(f"no check for {noise}")


def test_exact_count_and_noise_share(traffic: tuple[str, list[DemoRecord]]) -> None:
    _, records = traffic
    assert len(records) == 2000
    assert sum(r.noise is not None for r in records) == 160  # round(2000 * 0.08)


@pytest.mark.parametrize("count", [0, 1, 9, 10, 199, 200, 1234])
def test_count_is_exact(count: int) -> None:
    assert len(generate("support_router", count)) == count


def test_every_noise_kind_appears(traffic: tuple[str, list[DemoRecord]]) -> None:
    _, records = traffic
    kinds = Counter(r.noise for r in records if r.noise is not None)
    assert set(kinds) == set(NoiseKind)


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_every_noise_kind_appears_in_200(kind: str) -> None:
    assert {r.noise for r in generate(kind, 200)} - {None} == set(NoiseKind)


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_noise_rate_zero_is_all_clean(kind: str) -> None:
    records = generate(kind, 500, noise_rate=0.0)
    assert all(r.noise is None for r in records)
    for record in records:
        assert_clean(record.source)


def test_deterministic() -> None:
    first = [orjson.dumps(r.source) + str(r.noise).encode() for r in generate("support_router", 300)]
    second = [orjson.dumps(r.source) + str(r.noise).encode() for r in generate("support_router", 300)]
    assert first == second


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_other_interval_gives_other_records(kind: str) -> None:
    today = generate(kind, 300, noise_rate=0.0)
    tomorrow = generate(kind, 300, noise_rate=0.0, start=END, end=END + timedelta(days=1))
    ids_today = {r.source["response"]["id"] for r in today}
    assert not ids_today & {r.source["response"]["id"] for r in tomorrow}
    texts_today = [r.source["request"]["messages"] for r in today]
    assert texts_today != [r.source["request"]["messages"] for r in tomorrow]
    assert all(END <= parse_ts(r.source["timestamp"]) < END + timedelta(days=1) for r in tomorrow)


def test_first_record_is_clean_at_exactly_start(traffic: tuple[str, list[DemoRecord]]) -> None:
    _, records = traffic
    assert records[0].noise is None
    assert records[0].source["timestamp"] == "2026-11-20T00:00:00.000Z"


def test_timestamps_inside_window_unless_outside_window(traffic: tuple[str, list[DemoRecord]]) -> None:
    _, records = traffic
    inside = [START <= parse_ts(r.source["timestamp"]) < END for r in records]
    assert all(ok for ok, r in zip(inside, records, strict=True) if r.noise is not NoiseKind.OUTSIDE_WINDOW)
    assert not any(ok for ok, r in zip(inside, records, strict=True) if r.noise is NoiseKind.OUTSIDE_WINDOW)
    # Uniform over the day: every 6-hour quarter gets a fair share.
    quarters = Counter(parse_ts(r.source["timestamp"]).hour // 6 for r in records if r.noise is None)
    assert min(quarters.values()) > 0.2 * sum(quarters.values())


def test_clean_records_are_well_formed(traffic: tuple[str, list[DemoRecord]]) -> None:
    kind, records = traffic
    clean = [r.source for r in records if r.noise is None]
    for source in clean:
        assert_clean(source)
        assert source["workload_id"] == f"demo_{kind}"
    assert {s["client_id"] for s in clean} == set(CLIENTS)
    no_tool = [s for s in clean if not calls(s)]
    assert 0.05 * len(clean) < len(no_tool) < 0.5 * len(clean)


def test_noise_is_malformed_as_named(traffic: tuple[str, list[DemoRecord]]) -> None:
    _, records = traffic
    earlier: set[bytes] = set()
    seen: dict[bytes, list[dict[str, Any]]] = {}
    for record in records:
        assert "noise" not in record.source
        assert set(record.source) <= DOC_KEYS
        if record.noise is None:
            seen.setdefault(conversation_key(record.source), []).append(record.source)
        else:
            assert_malformed(record.noise, record.source, earlier, seen)
        earlier.add(orjson.dumps(record.source))


def test_support_router_mix_and_grounded_arguments() -> None:
    records = [r.source for r in generate("support_router", 3000, noise_rate=0.0)]
    classes = Counter(calls(s)[0]["function"]["name"] if calls(s) else "no_tool" for s in records)
    assert set(classes) == {
        "get_order_status",
        "track_shipment",
        "start_return",
        "search_products",
        "get_product_details",
        "update_shipping_address",
        "talk_to_human",
        "no_tool",
    }
    assert classes.most_common(1)[0][0] == "get_order_status"
    assert classes["talk_to_human"] < 0.08 * len(records)
    identifier = re.compile(r"^(?:[A-Z]-\d{5}|[A-Z]{2}-\d{4}-[A-Z]{3}|1Z[0-9A-Z]{16}|\d{10,22})$")
    for source in records:
        said = " ".join(m["content"] or "" for m in source["request"]["messages"])
        for call in calls(source):
            values = list(json.loads(call["function"]["arguments"]).values())
            values += [item for value in values if isinstance(value, list) for item in value]
            for value in values:
                if isinstance(value, str) and identifier.match(value):
                    assert value in said, (value, said)
    texts = {s["request"]["messages"][-1]["content"] for s in records}
    assert len(texts) > 0.6 * len(records)  # varied phrasing, not a handful of strings
    roles = [[m["role"] for m in s["request"]["messages"]] for s in records]
    assert any("tool" in r for r in roles)  # earlier tool call and result, then a new user turn
    assert any(r[:4] == ["system", "user", "assistant", "user"] for r in roles)  # earlier small talk


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "nope"}, "unknown demo workload kind"),
        ({"start": datetime(2026, 11, 20)}, "timezone-aware"),
        ({"end": START}, "empty data interval"),
        ({"count": -1}, "count must be"),
        ({"noise_rate": 1.5}, "noise_rate"),
        ({"client_ids": []}, "client_ids"),
    ],
)
def test_bad_arguments_raise_at_call_time(overrides: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "kind": "support_router",
        "workload_id": "w",
        "start": START,
        "end": END,
        "count": 10,
        "seed": 0,
        "client_ids": CLIENTS,
    }
    arguments.update(overrides)
    with pytest.raises(ValueError, match=message):
        generate_traffic(**arguments)


# --- the router's API change -----------------------------------------------------------------------


def teacher_calls(source: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every tool call the teacher made in a conversation: its earlier turns' and its answer's."""
    messages = [*source["request"]["messages"], source["response"]["choices"][0]["message"]]
    return [
        (call["function"]["name"], json.loads(call["function"]["arguments"]))
        for message in messages
        for call in message.get("tool_calls") or ()
    ]


def assert_calls_follow_own_schemas(sources: list[dict[str, Any]]) -> None:
    """Every teacher call names a tool of its own request and validates against that tool's JSON schema."""
    from jsonschema import Draft202012Validator

    for source in sources:
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in source["request"]["tools"]}
        for name, arguments in teacher_calls(source):
            assert name in schemas, (name, sorted(schemas))
            errors = [e.message for e in Draft202012Validator(schemas[name]).iter_errors(arguments)]
            assert errors == [], (name, arguments, errors)


def test_after_the_api_change_the_teacher_follows_the_new_api() -> None:
    from flywheel.demo.support_router import API_V1, API_V2, TOOLS

    before = [r.source for r in generate("support_router", 1500, noise_rate=0.0)]
    after = [r.source for r in generate("support_router", 1500, noise_rate=0.0, api_changed=True)]

    # Before: tool set A in every request, and only its tools called.
    assert all(s["request"]["tools"] == TOOLS for s in before)
    assert {name for s in before for name, _ in teacher_calls(s)} <= API_V1.tool_names
    # After: one tool renamed, a required parameter added to another, a new tool; in the schemas...
    assert all(s["request"]["tools"] == API_V2.tools for s in after)
    assert API_V2.tool_names == API_V1.tool_names - {"track_shipment"} | {"track_package", "cancel_order"}
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in API_V2.tools}
    assert "refund_method" in schemas["start_return"]["required"]
    assert all(s["request"]["messages"][0]["content"] == API_V2.system_prompt for s in after)
    # ...and in the teacher's calls, which always fill the new required parameter.
    called = Counter(name for s in after for name, _ in teacher_calls(s))
    assert called["track_package"] > 0 and called["cancel_order"] > 0 and called["track_shipment"] == 0
    returns = [args for s in after for name, args in teacher_calls(s) if name == "start_return"]
    assert returns and all("refund_method" in args for args in returns)
    assert {args["refund_method"] for args in returns} == {"original_payment", "store_credit"}
    assert_calls_follow_own_schemas(before + after)
    for source in after:
        assert_clean(source)
    # The customers' wording shifts too: phrasings that never occurred before the change.
    words = ("parcel", "delivery")
    share = [
        sum(any(w in s["request"]["messages"][-1]["content"].lower() for w in words) for s in sources)
        / len(sources)
        for sources in (before, after)
    ]
    assert share[1] > share[0] + 0.05, share


def test_the_api_change_is_deterministic_and_bfcl_has_none() -> None:
    first = [orjson.dumps(r.source) for r in generate("support_router", 300, api_changed=True)]
    assert first == [orjson.dumps(r.source) for r in generate("support_router", 300, api_changed=True)]
    with pytest.raises(ValueError, match="api_changed"):
        generate_traffic(
            kind="bfcl_live",
            workload_id="w",
            start=START,
            end=END,
            count=1,
            seed=0,
            client_ids=CLIENTS,
            api_changed=True,
        )


def test_records_dated_before_the_change_day_follow_the_old_api() -> None:
    """A change day's records whose timestamps fall in the day before (outside-window noise) belong to
    that day, which still ran on the old API: the day before the change holds no new-API record."""
    from flywheel.demo.support_router import API_V1, API_V2

    records = list(generate("support_router", 2000, noise_rate=0.2, api_changed=True))
    earlier = [r.source for r in records if parse_ts(r.source["timestamp"]) < START]
    inside = [r.source for r in records if r.noise is None]

    assert earlier and all(s["request"]["tools"] == API_V1.tools for s in earlier)
    assert all(s["request"]["tools"] == API_V2.tools for s in inside)
    assert_calls_follow_own_schemas(earlier)
