"""Tests of PII scrubbing: planted PII of every kind is found, lookalikes stay, demo traffic is untouched."""

from __future__ import annotations

import copy
import ipaddress
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from flywheel.demo.traffic import generate_traffic
from flywheel.validate.pii import PiiKind, PiiScrubber, Placeholders

START = datetime(2026, 11, 20, tzinfo=UTC)
END = START + timedelta(days=1)
PLACEHOLDER = re.compile(r"<(EMAIL|PHONE|CARD|IP)_[1-9][0-9]*>")


def scrub(text: str, kinds: Any = tuple(PiiKind)) -> str:
    return PiiScrubber(kinds).scrub_text(text, Placeholders())


# --------------------------------------------------------------------------------------------------
# Planted PII

PLANTED = [
    # e-mail
    ("mail me at bob@example.com please", "mail me at <EMAIL_1> please"),
    ("Bob.Smith+orders@Mail.Example.co.uk.", "<EMAIL_1>."),
    ("<jane_doe-99@sub.domain.io>", "<<EMAIL_1>>"),
    ("contact:ANNA%x@EXAMPLE.ORG,", "contact:<EMAIL_1>,"),
    ('{"to":"first.last@company.travel"}', '{"to":"<EMAIL_1>"}'),
    ("...dots@example.com", "...<EMAIL_1>"),
    # phone
    ("call (555) 123-4567 today", "call <PHONE_1> today"),
    ("555-123-4567", "<PHONE_1>"),
    ("555.123.4567.", "<PHONE_1>."),
    ("555 123 4567", "<PHONE_1>"),
    ("(555)123-4567", "<PHONE_1>"),
    ("1-800-555-0199", "<PHONE_1>"),
    ("1 (800) 555-0199", "<PHONE_1>"),
    ("phone:555-123-4567", "phone:<PHONE_1>"),
    ("020 7946 0958", "<PHONE_1>"),
    ("+44 20 7946 0958", "<PHONE_1>"),
    ("+44 (0)20 7946 0958", "<PHONE_1>"),
    ("+1-202-555-0143", "<PHONE_1>"),
    ("+1 (202) 555-0143", "<PHONE_1>"),
    ("+1.202.555.0143", "<PHONE_1>"),
    ("+14155552671", "<PHONE_1>"),
    ("+49 30 12345678", "<PHONE_1>"),
    ("0044 20 7946 0958", "<PHONE_1>"),
    ("01 23 45 67 89", "<PHONE_1>"),
    ("01.23.45.67.89", "<PHONE_1>"),
    ("030 12345678", "<PHONE_1>"),
    ("(030) 1234567", "<PHONE_1>"),
    ("ring me on 555-123-4567, thanks", "ring me on <PHONE_1>, thanks"),
    # a phone number next to other numbers, separated by a space
    ("call 555-123-4567 8am-6pm", "call <PHONE_1> 8am-6pm"),
    ("555-123-4567 24/7", "<PHONE_1> 24/7"),
    ("order 12345 555-123-4567", "order 12345 <PHONE_1>"),
    ("555-123-4567 2 days ago", "<PHONE_1> 2 days ago"),
    ("020 7946 0958 2 days ago", "<PHONE_1> 2 days ago"),
    ("555-123-4567 4111 1111 1111 1112", "<PHONE_1> 4111 1111 1111 1112"),
    ("on 2026-11-20 10:30 call (555) 123-4567 10 times", "on 2026-11-20 10:30 call <PHONE_1> 10 times"),
    # card (all Luhn-valid test numbers of real issuers)
    ("card 4111 1111 1111 1111 ok", "card <CARD_1> ok"),
    ("4111-1111-1111-1111", "<CARD_1>"),
    ("4111111111111111", "<CARD_1>"),
    ("4222222222222", "<CARD_1>"),  # Visa, 13 digits
    ("378282246310005", "<CARD_1>"),  # Amex
    ("3782 822463 10005", "<CARD_1>"),  # Amex grouped 4-6-5
    ("5555 5555 5555 4444", "<CARD_1>"),  # Mastercard 51-55
    ("2223003122003222", "<CARD_1>"),  # Mastercard 2221-2720
    ("6011111111111117", "<CARD_1>"),  # Discover 6011
    ("6500000000000002", "<CARD_1>"),  # Discover 65
    ("3530111333300000", "<CARD_1>"),  # JCB
    ("30569309025904", "<CARD_1>"),  # Diners 14 digits
    ("card 4111 1111 1111 1111 12/27 cvv 123", "card <CARD_1> 12/27 cvv 123"),
    ("4111111111111111 exp 12/27", "<CARD_1> exp 12/27"),
    ("4111 1111 1111 1111 2027", "<CARD_1> 2027"),
    # IP
    ("from 192.168.1.1.", "from <IP_1>."),
    ("http://10.0.0.1:8080/api", "http://<IP_1>:8080/api"),
    ("IP:255.255.255.0", "IP:<IP_1>"),
    ("0.0.0.0 and 8.8.8.8", "<IP_1> and <IP_2>"),
    ("2001:db8::1", "<IP_1>"),
    ("fe80::1ff:fe23:4567:890a", "<IP_1>"),
    ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:443", "[<IP_1>]:443"),
    ("::ffff:192.0.2.128", "<IP_1>"),
    ("host FE80::ABCD", "host <IP_1>"),
]


@pytest.mark.parametrize(("text", "expected"), PLANTED)
def test_planted_pii_is_replaced(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_one_text_with_every_kind() -> None:
    placeholders = Placeholders()
    text = (
        "I'm Bob (bob@example.com, or Bob@Example.COM at work), call +1 (202) 555-0143 or 202-555-0143. "
        "Pay with 4111 1111 1111 1111 or 5555555555554444; I connect from 203.0.113.7 and 2001:db8::7. "
        "My wife is alice@example.com, her number is (202) 555-0143."
    )
    scrubbed = PiiScrubber().scrub_text(text, placeholders)
    assert scrubbed == (
        "I'm Bob (<EMAIL_1>, or <EMAIL_1> at work), call <PHONE_1> or <PHONE_2>. "
        "Pay with <CARD_1> or <CARD_2>; I connect from <IP_1> and <IP_2>. "
        "My wife is <EMAIL_2>, her number is <PHONE_2>."
    )
    assert placeholders.counts == Counter({"email": 3, "phone": 3, "card": 2, "ip": 2})
    assert placeholders.distinct == Counter({"email": 2, "phone": 2, "card": 2, "ip": 2})


# --------------------------------------------------------------------------------------------------
# Lookalikes

LOOKALIKES = [
    # order numbers, SKUs, tracking numbers (UPS, USPS, FedEx, DHL shapes), account-like digit runs
    "order A-48213",
    "order #A-48213, and W-10001",
    "SKU-10442-BL",
    "EL-4821-BLK and KT-3310-BLK",
    "1Z999AA10123456784",
    "1Z4F82E60312345678",
    "9400111899223334445566",
    "9400 1118 9922 3334 4455 66",
    "123456789012",
    "1234 5678 9012",
    "4567890123",
    "5551234567",
    "12345678901",
    "ref 20261120-000123",
    # dates, times, timestamps
    "2026-11-20",
    "20/11/2026",
    "11/20/2026",
    "11.20.2026",
    "20.11.2026",
    "2026.11.20",
    "1.5.2026",
    "01.02.2026 10.30",
    "05.11.2026 12:30",
    "Nov 20, 2026",
    "10:30",
    "10:30:00",
    "23:59:59.999",
    "2026-11-20T10:30:00Z",
    "2026-11-20T10:30:00.000+05:30",
    "2026-11-20 10:30:00",
    "UTC+1 2026-11-20",
    "+05:30",
    "8am-8pm ET, Monday to Saturday",
    # prices, quantities, zip codes, addresses
    "$1,299.00",
    "1 299,00 €",
    "1,000,000",
    "10 000 000 000",
    "1 000 000 000 000",
    "SKU 555-123-4567-BL",
    "555-123-4567/home",
    "under $50",
    "30 days",
    "97205",
    "97205-1234",
    "01234-5678",
    "M5V 2T6",
    "BS1 6HU",
    "1234 Elm Street Apt 12, Portland, OR 97205, USA",
    "Torstraße 10, 10119 Berlin",
    # version strings, numbers
    "v1.2.3",
    "1.2.3",
    "v2.10.4-beta",
    "10.0.19045.2965",
    "v1.2.3.4",
    "1.2.3.4.5",
    "256.1.1.1",
    "01.02.03.04",
    "3.14159265358979323846",
    "ISBN 978-0-306-40615-7",
    "123-456-7890",
    "+1 2026",
    # card-shaped numbers that fail Luhn or have no issuer prefix
    "4111111111111112",  # Visa prefix, fails Luhn
    "4111 1111 1111 1112",
    "5555555555554445",
    "1234567812345678",
    "9111111111111110",  # Luhn-valid, but no issuer starts with 9
    "9111 1111 1111 1110",
    "1234567812345670",  # Luhn-valid, starts with 1
    "7992739871300008",  # Luhn-valid, starts with 7
    "4111111111111111111111",  # too long: part of a longer digit run
    "x4111111111111111",
    "4111111111111111-BL",
    "3.4111111111111111",
    "+4111111111111111",  # a "+" makes it a phone shape, not a card; and 16 digits is too long for one
    # e-mail and IPv6 lookalikes
    "logo@2x.png",
    "user@localhost",
    "@mention and @team",
    "git@github.com:org/repo.git",
    "pip install pkg@1.2.3",
    "00:1A:2B:3C:4D:5E",
    "std::vector<int>",
    "::",
    "::1",
    "12:30:45:00",
    "call_fd7cb00302845292ff93bb2c",
    # text that already holds placeholders
    "<EMAIL_1> wrote to <EMAIL_2> from <IP_1>, call <PHONE_3>, card <CARD_1>",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_stay(text: str) -> None:
    assert scrub(text) == text


def test_luhn_valid_number_without_issuer_is_really_luhn_valid() -> None:
    """Guard the lookalike list: the 9-prefixed number fails only on the issuer, not on Luhn."""

    def luhn(number: str) -> bool:
        digits = [int(char) for char in number][::-1]
        doubled = [d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)]
        return sum(doubled) % 10 == 0

    assert all(luhn(number) for number in ("9111111111111110", "1234567812345670", "7992739871300008"))
    assert luhn("4111111111111111")
    assert not any(luhn(number) for number in ("4111111111111112", "5555555555554445", "1234567812345678"))


# --------------------------------------------------------------------------------------------------
# Conversations


def conversation() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    messages = [
        {"role": "system", "content": "You are a support assistant. Hours 8am-8pm ET."},
        {"role": "user", "content": "Change the e-mail on order A-48213 to Jane.Doe@example.com"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "arguments": (
                            '{"order_id":"A-48213","phone":"555-123-4567","note":"x\\n555 123 4567"}'
                        ),
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": (
                '{"order_id": "A-48213", "email": "old@example.com", "tracking": "1Z999AA10123456784"}'
            ),
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Also cc old@example.com, my card 4111 1111 1111 1111"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
    ]
    arguments = [
        {"order_id": "A-48213", "email": "jane.doe@example.com", "cc": ["OLD@example.com"], "count": 2},
    ]
    return messages, arguments, "Done: mail goes to jane.doe@example.com from 10.0.0.1."


def test_scrub_conversation_is_consistent_and_counts() -> None:
    messages, arguments, content = conversation()
    new_messages, new_arguments, new_content, counts = PiiScrubber().scrub_conversation(
        messages, arguments, content
    )
    assert new_messages[0] == messages[0]
    assert new_messages[1]["content"] == "Change the e-mail on order A-48213 to <EMAIL_1>"
    history_arguments = orjson.loads(new_messages[2]["tool_calls"][0]["function"]["arguments"])
    # the escaped "\n" does not hide the second spelling of the same phone number
    assert history_arguments == {"order_id": "A-48213", "phone": "<PHONE_1>", "note": "x\n<PHONE_1>"}
    assert orjson.loads(new_messages[3]["content"]) == {
        "order_id": "A-48213",
        "email": "<EMAIL_2>",
        "tracking": "1Z999AA10123456784",
    }
    assert new_messages[4]["content"] == [
        {"type": "text", "text": "Also cc <EMAIL_2>, my card <CARD_1>"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    # the same e-mail in the user message and the answer's arguments gets the same placeholder
    assert new_arguments == [{"order_id": "A-48213", "email": "<EMAIL_1>", "cc": ["<EMAIL_2>"], "count": 2}]
    assert new_content == "Done: mail goes to <EMAIL_1> from <IP_1>."
    assert counts == Counter({"email": 6, "phone": 2, "card": 1, "ip": 1})


def test_inputs_are_not_mutated_and_outputs_are_new_objects() -> None:
    messages, arguments, content = conversation()
    before = copy.deepcopy((messages, arguments, content))
    new_messages, new_arguments, _, _ = PiiScrubber().scrub_conversation(messages, arguments, content)
    assert (messages, arguments, content) == before
    assert all(new is not old for new, old in zip(new_messages, messages, strict=True))
    assert new_messages[2]["tool_calls"][0] is not messages[2]["tool_calls"][0]
    assert new_messages[2]["tool_calls"][0]["function"] is not messages[2]["tool_calls"][0]["function"]
    assert new_messages[4]["content"][1] is not messages[4]["content"][1]
    assert new_arguments[0] is not arguments[0]
    assert new_arguments[0]["cc"] is not arguments[0]["cc"]
    # mutating the result leaves the input alone
    new_messages[0]["content"] = "changed"
    new_arguments[0]["cc"].append("x")
    assert (messages, arguments, content) == before


def test_unchanged_json_keeps_its_spelling_and_broken_json_is_scrubbed_as_text() -> None:
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": '{"order_id": "A-48213"}'}},
                {"type": "function", "function": {"name": "g", "arguments": '{"to": "bob@example.com", '}},
            ],
        }
    ]
    new_messages, _, _, counts = PiiScrubber().scrub_conversation(messages, [], None)
    calls = new_messages[0]["tool_calls"]
    assert calls[0]["function"]["arguments"] == '{"order_id": "A-48213"}'
    assert calls[1]["function"]["arguments"] == '{"to": "<EMAIL_1>", '
    assert counts == Counter({"email": 1})


def test_numbering_follows_first_appearance_per_kind() -> None:
    messages = [
        {"role": "user", "content": "a@example.com 555-123-4567"},
        {"role": "user", "content": "b@example.com then a@example.com, 555-765-4321"},
    ]
    new_messages, _, content, counts = PiiScrubber().scrub_conversation(messages, [], "c@example.com")
    assert [message["content"] for message in new_messages] == [
        "<EMAIL_1> <PHONE_1>",
        "<EMAIL_2> then <EMAIL_1>, <PHONE_2>",
    ]
    assert content == "<EMAIL_3>"
    assert counts == Counter({"email": 4, "phone": 2})


def test_same_phone_in_other_spellings_gets_one_placeholder() -> None:
    text = "(555) 123-4567 / 555.123.4567 / 555-123-4567 / +1 555 123 4567"
    assert scrub(text) == "<PHONE_1> / <PHONE_1> / <PHONE_1> / <PHONE_2>"


def test_placeholders_already_in_the_data_are_not_reused() -> None:
    """Partly scrubbed data: a new value never gets a placeholder that already stands for another."""
    messages = [
        {"role": "user", "content": "new one: carol@example.com"},
        {"role": "user", "content": "the old one was <EMAIL_1>, and <EMAIL_2> before that"},
    ]
    new_messages, _, content, counts = PiiScrubber().scrub_conversation(
        messages, [], "write to carol@example.com"
    )
    assert new_messages[0]["content"] == "new one: <EMAIL_3>"
    assert new_messages[1]["content"] == messages[1]["content"]
    assert content == "write to <EMAIL_3>"
    assert counts == Counter({"email": 2})


def test_scrubbing_twice_changes_nothing_the_second_time() -> None:
    scrubber = PiiScrubber()
    messages, arguments, content = conversation()
    once = scrubber.scrub_conversation(messages, arguments, content)
    twice = scrubber.scrub_conversation(once[0], once[1], once[2])
    assert twice[:3] == once[:3]
    assert twice[3] == Counter()
    for text, _ in PLANTED:
        first = scrub(text)
        assert scrub(first) == first


GLUE_TOKENS = (
    "bob@x.com", "a.b@x.io", "555-123-4567", "(555) 123-4567", "+44 20 7946 0958", "020 7946 0958",
    "4111 1111 1111 1111", "4111111111111111", "10.0.0.1", "1.2.3.4", "2001:db8::1", "ffff:", "2026-11-20",
    "10:30", "A-48213", "1Z999AA10123456784", "<EMAIL_1>", "<PHONE_1>", "12", "345", "6789", "0", "x", "é",
    " ", " 2 ", "-", ".", ",", "(", ")", "+", "+1 ", ":", "::", "/", "@", "\n",
)  # fmt: skip


def test_scrubbing_glued_random_texts_twice_changes_nothing() -> None:
    """Values glued to each other or to noise: whatever the first pass does, the second changes nothing."""
    scrubber = PiiScrubber()
    rng = random.Random(3)
    for _ in range(3000):
        text = "".join(rng.choice(GLUE_TOKENS) for _ in range(rng.randint(1, 14)))
        once = scrubber.scrub_text(text, Placeholders())
        assert scrubber.scrub_text(once, Placeholders()) == once, text


def test_kinds_can_be_disabled() -> None:
    text = "bob@example.com 555-123-4567 4111 1111 1111 1111 10.0.0.1 2001:db8::1"
    assert scrub(text, ["email"]) == "<EMAIL_1> 555-123-4567 4111 1111 1111 1111 10.0.0.1 2001:db8::1"
    assert (
        scrub(text, [PiiKind.PHONE]) == "bob@example.com <PHONE_1> 4111 1111 1111 1111 10.0.0.1 2001:db8::1"
    )
    assert scrub(text, ["CARD", "ip"]) == "bob@example.com 555-123-4567 <CARD_1> <IP_1> <IP_2>"
    assert scrub(text, []) == text
    assert PiiScrubber(["email"]).kinds == PiiScrubber("EMAIL").kinds == frozenset({PiiKind.EMAIL})
    assert PiiScrubber().kinds == frozenset(PiiKind)
    messages = [{"role": "user", "content": text}]
    _, _, _, counts = PiiScrubber(["phone"]).scrub_conversation(messages, [{"to": "x@example.com"}], None)
    assert counts == Counter({"phone": 1})
    with pytest.raises(ValueError, match="ssn"):
        PiiScrubber(["ssn"])


def test_scrub_value_walks_dicts_and_lists_and_keeps_keys() -> None:
    value = {"bob@example.com": ["555-123-4567", 4111111111111111, None, {"ip": "10.0.0.1"}], "n": 1.5}
    scrubbed = PiiScrubber().scrub_value(value, Placeholders())
    assert scrubbed == {"bob@example.com": ["<PHONE_1>", 4111111111111111, None, {"ip": "<IP_1>"}], "n": 1.5}


def test_odd_shapes_do_not_raise() -> None:
    messages: list[Any] = [
        "not a dict",
        {"role": "user", "content": 42},
        {"role": "user"},
        {"role": "assistant", "content": None, "tool_calls": ["x", {"function": "y"}, {"function": {}}]},
        {"role": "tool", "content": "[not json 555-123-4567"},
        {"role": "user", "content": ["bob@example.com", {"type": "text"}, 3]},
    ]
    new_messages, _, content, counts = PiiScrubber().scrub_conversation(messages, [], None)
    assert new_messages[:4] == messages[:4]
    assert new_messages[4]["content"] == "[not json <PHONE_1>"
    assert new_messages[5]["content"] == ["<EMAIL_1>", {"type": "text"}, 3]
    assert content is None
    assert counts == Counter({"phone": 1, "email": 1})


# --------------------------------------------------------------------------------------------------
# Demo traffic


def demo_conversations(kind: str, count: int = 2000) -> list[tuple[list[dict], list[dict], str | None]]:
    """The generators' own conversations: no noise, and no personal data planted (that is
    tests/flywheel/demo/test_personal_data.py's)."""
    conversations = []
    for record in generate_traffic(
        kind=kind,
        workload_id="w",
        start=START,
        end=END,
        count=count,
        seed=0,
        client_ids=["a"],
        noise_rate=0,
        pii_rate=0,
    ):
        message = record.source["response"]["choices"][0]["message"]
        arguments = [orjson.loads(call["function"]["arguments"]) for call in message.get("tool_calls") or []]
        conversations.append((record.source["request"]["messages"], arguments, message.get("content")))
    return conversations


IDENTIFIER_FIELDS = ("order_id", "sku", "item_skus", "tracking_number")


def identifiers(arguments: list[dict[str, Any]]) -> list[Any]:
    return [(field, item.get(field)) for item in arguments for field in IDENTIFIER_FIELDS if field in item]


def replaced_values(before: str, after: str) -> list[tuple[str, str]]:
    """(placeholder, original text) pairs: align the scrubbed text with the original one."""
    pieces = PLACEHOLDER.split(after)
    pattern = "".join(re.escape(piece) if i % 2 == 0 else "(.+?)" for i, piece in enumerate(pieces))
    match = re.fullmatch(pattern, before, flags=re.DOTALL)
    assert match is not None, (before, after)
    return list(zip(PLACEHOLDER.findall(after), match.groups(), strict=True))


def texts(messages: list[dict], arguments: list[dict], content: str | None) -> list[str]:
    out = [orjson.dumps(arguments).decode(), content or ""]
    for message in messages:
        out.append(message.get("content") or "")
        out.extend(call["function"]["arguments"] for call in message.get("tool_calls") or [])
    return out


def really_pii(kind: str, value: str) -> bool:
    if kind == "EMAIL":
        return re.fullmatch(r"[\w.+%-]+@[\w-]+(\.[\w-]+)*\.[a-zA-Z]{2,}", value) is not None
    if kind == "IP":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
        return True
    if kind == "PHONE":
        return 8 <= sum(char.isdigit() for char in value) <= 15
    return kind == "CARD"


def test_router_traffic_ids_are_untouched_and_hold_no_pii() -> None:
    scrubber = PiiScrubber()
    conversations = demo_conversations("support_router")
    total: Counter[str] = Counter()
    checked = 0
    for messages, arguments, content in conversations:
        new_messages, new_arguments, new_content, counts = scrubber.scrub_conversation(
            messages, arguments, content
        )
        total += counts
        assert identifiers(new_arguments) == identifiers(arguments)
        checked += len(identifiers(arguments))
        for before, after in zip(
            texts(messages, arguments, content), texts(new_messages, new_arguments, new_content), strict=True
        ):
            assert after == before
    assert checked > 1000  # order ids, SKUs and tracking numbers were really there to compare
    # The router generator writes no e-mail, phone, card or IP (addresses are street/city/postal code).
    assert total == Counter()


def test_bfcl_traffic_pii_hits_are_real_pii() -> None:
    scrubber = PiiScrubber()
    total: Counter[str] = Counter()
    found: set[tuple[str, str]] = set()
    for messages, arguments, content in demo_conversations("bfcl_live"):
        new_messages, new_arguments, new_content, counts = scrubber.scrub_conversation(
            messages, arguments, content
        )
        total += counts
        pairs = zip(
            texts(messages, arguments, content), texts(new_messages, new_arguments, new_content), strict=True
        )
        for before, after in pairs:
            for placeholder, value in replaced_values(before, after):
                kind = placeholder.split("_")[0].lstrip("<")
                assert really_pii(kind, value), (placeholder, value, before)
                found.add((kind, value))
    # The BFCL live sample carries e-mail addresses and IPv4 addresses (in URLs and questions).
    assert total["email"] > 0
    assert total["ip"] > 0
    assert set(total) <= {"email", "ip"}
    assert ("EMAIL", "andy@gorilla.ai") in found
