"""Personal data planted in demo traffic: fake values from reserved ranges, planted where a customer and the
teacher would write them, every one found by the validation scrubber, and the rate a demo setting."""

from __future__ import annotations

import ipaddress
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from flywheel.demo import support_router
from flywheel.demo.conversation import Conversation
from flywheel.demo.personal_data import fake_value, plant_in_user_message
from flywheel.demo.traffic import PII_RATE, WORKLOAD_KINDS, DemoRecord, NoiseKind, generate_traffic
from flywheel.validate.pii import PiiKind, PiiScrubber

START = datetime(2026, 11, 20, tzinfo=UTC)
END = START + timedelta(days=1)


def generate(kind: str, count: int = 2000, **overrides: Any) -> list[DemoRecord]:
    arguments: dict[str, Any] = {
        "kind": kind,
        "workload_id": "w",
        "start": START,
        "end": END,
        "count": count,
        "seed": 5,
        "client_ids": ["web"],
    } | overrides
    return list(generate_traffic(**arguments))


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


@pytest.mark.parametrize("kind", list(PiiKind))
def test_fake_values_come_from_reserved_ranges_and_the_scrubber_finds_each_as_planted(kind: PiiKind) -> None:
    rng = random.Random(3)
    scrubber = PiiScrubber()
    seen = set()
    for _ in range(300):
        planted, (found,) = plant_in_user_message(conversation([]), rng, kind)
        value = found.value
        seen.add(value)
        if kind is PiiKind.EMAIL:
            assert value == value.lower() and value.rsplit("@", 1)[1].split(".")[-2] == "example"
        elif kind is PiiKind.PHONE:
            digits = "".join(c for c in value if c.isdigit())
            assert ("555" in value and digits[-4:-2] == "01") or digits.startswith("442079460"), value
        elif kind is PiiKind.CARD:
            digits = value.replace(" ", "").replace("-", "")
            assert len(digits) == 16 and luhn_valid(digits) and digits[0] in "45", value
        else:
            address = ipaddress.ip_address(value)
            documentation = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
            assert any(address in ipaddress.ip_network(n) for n in documentation), value
        messages, _, _, counts = scrubber.scrub_conversation(planted.messages, [], None)
        assert counts == Counter({kind.value: 1}), planted.messages[-1]
        assert value not in json.dumps(messages)
    assert len(seen) > 100  # distinct values, each one a thing to look for downstream
    assert fake_value(kind, random.Random(1)) == fake_value(kind, random.Random(1))


def conversation(calls: list[tuple[str, dict[str, Any]]], content: str | None = None) -> Conversation:
    messages = [
        {"role": "system", "content": "You route support requests."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "please move order A-12345"},
    ]
    tools = support_router.TOOLS
    return Conversation(messages, tools, 100, [(name, json.dumps(args)) for name, args in calls], content)


def test_plant_in_user_message_says_the_value_in_the_last_user_message_only() -> None:
    original = conversation([("get_order_status", {"order_id": "A-12345"})])
    planted, (found,) = plant_in_user_message(original, random.Random(1), PiiKind.CARD)

    assert found.kind is PiiKind.CARD
    assert planted.messages[-1]["content"].startswith("please move order A-12345. ")
    assert found.value in planted.messages[-1]["content"]
    assert planted.messages[:-1] == original.messages[:-1]
    assert planted.tool_calls == original.tool_calls and planted.content is None
    assert original.messages[-1]["content"] == "please move order A-12345"  # the input is not modified


def test_the_router_teacher_copies_a_courier_phone_into_the_address_update() -> None:
    address = {
        "street": "12 Pine Road",
        "city": "Denver",
        "state": "CO",
        "postal_code": "80203",
        "country": "US",
    }
    original = conversation([("update_shipping_address", {"order_id": "A-12345", "address": address})])

    planted, (found,) = support_router.plant_personal_data(original, random.Random(2))

    assert found.kind is PiiKind.PHONE
    ((name, arguments),) = planted.tool_calls
    assert name == "update_shipping_address"
    assert json.loads(arguments) == {"order_id": "A-12345", "address": {**address, "phone": found.value}}
    assert found.value in planted.messages[-1]["content"]
    # The tool's schema takes it: an optional phone of the address.
    (tool,) = (t for t in support_router.TOOLS if t["function"]["name"] == name)
    schema = tool["function"]["parameters"]["properties"]["address"]
    assert schema["properties"]["phone"]["type"] == "string" and "phone" not in schema["required"]


def test_the_router_hand_over_carries_the_call_back_contact_and_a_reply_confirms_an_email() -> None:
    handover = conversation(
        [("talk_to_human", {"reason": "customer asked for a human agent", "urgency": "normal"})]
    )
    kinds = set()
    for seed in range(20):
        planted, (found,) = support_router.plant_personal_data(handover, random.Random(seed))
        reason = json.loads(planted.tool_calls[0][1])["reason"]
        assert reason.startswith("customer asked for a human agent; ") and found.value in reason
        assert found.value in planted.messages[-1]["content"]
        kinds.add(found.kind)
    assert kinds == {PiiKind.PHONE, PiiKind.EMAIL}

    reply = conversation([], content="Hello! How can I help you today?")
    confirmed = 0
    for seed in range(20):
        planted, (found,) = support_router.plant_personal_data(reply, random.Random(seed))
        assert found.value in planted.messages[-1]["content"]
        if planted.content != reply.content:
            assert found.kind is PiiKind.EMAIL
            assert (
                planted.content
                == f"Hello! How can I help you today? I've noted {found.value} as your contact address."
            )
            confirmed += 1
    assert 0 < confirmed < 20


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_every_planted_value_is_scrubbed_from_what_validation_keeps(kind: str) -> None:
    scrubber = PiiScrubber()
    records = generate(kind, 1500, pii_rate=0.3, noise_rate=0)
    planted = [r for r in records if r.pii]
    assert 0.25 * len(records) < len(planted) < 0.35 * len(records)
    assert {p.kind for r in planted for p in r.pii} == set(PiiKind)
    for record in planted:
        answer = record.source["response"]["choices"][0]["message"]
        arguments = [orjson.loads(c["function"]["arguments"]) for c in answer.get("tool_calls") or []]
        before = json.dumps([record.source["request"]["messages"], arguments, answer.get("content")])
        messages, arguments, content, counts = scrubber.scrub_conversation(
            record.source["request"]["messages"], arguments, answer.get("content")
        )
        after = json.dumps([messages, arguments, content])
        for found in record.pii:
            assert found.value in before
            assert found.value not in after, (found, after)
            assert counts[found.kind.value] >= 1


def test_the_router_plants_into_tool_arguments_and_replies_too() -> None:
    records = generate("support_router", 3000, pii_rate=0.5, noise_rate=0)
    places: Counter[str] = Counter()
    for record in records:
        for found in record.pii:
            answer = record.source["response"]["choices"][0]["message"]
            calls = " ".join(c["function"]["arguments"] for c in answer.get("tool_calls") or [])
            places["arguments"] += found.value in calls
            places["reply"] += found.value in (answer.get("content") or "")
            places["user"] += found.value in record.source["request"]["messages"][-1]["content"]
    assert places["user"] == sum(len(r.pii) for r in records)
    assert places["arguments"] > 20 and places["reply"] > 20


def test_the_rate_changes_only_the_planted_text() -> None:
    """Personal data has a random stream of its own: the records, their noise and timestamps stay."""
    without = generate("support_router", 600, pii_rate=0.0)
    default = generate("support_router", 600)
    heavy = generate("support_router", 600, pii_rate=0.5)

    assert all(not r.pii for r in without)
    share = sum(bool(r.pii) for r in default) / len(default)
    assert PII_RATE / 2 < share < PII_RATE * 2
    for a, b, c in zip(without, default, heavy, strict=True):
        assert a.noise == b.noise == c.noise
        assert a.source["timestamp"] == b.source["timestamp"] == c.source["timestamp"]
        if not b.pii:
            assert a.source == b.source
    assert generate("support_router", 300, pii_rate=0.5) == generate("support_router", 300, pii_rate=0.5)


def test_duplicates_carry_the_personal_data_of_what_they_copy() -> None:
    records = generate("support_router", 2000, pii_rate=0.5)
    copies = [
        r for r in records if r.noise in (NoiseKind.EXACT_DUPLICATE, NoiseKind.NEAR_DUPLICATE) and r.pii
    ]
    assert copies
    for record in copies:
        text = json.dumps(record.source)
        assert all(found.value in text for found in record.pii)


def test_a_rate_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"pii_rate must be within \[0, 1\], got 1.5"):
        generate("support_router", 10, pii_rate=1.5)
