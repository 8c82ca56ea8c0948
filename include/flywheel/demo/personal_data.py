"""Personal data planted in demo conversations: what real support traffic carries and validation scrubs.

Customers type their e-mail address, phone number, card number or IP address into a chat, and the
teacher copies them into its tool calls. The demo workloads write none of that on their own, so
:func:`flywheel.demo.traffic.generate_traffic` plants one value in a share of the conversations
(``pii_rate``): always in the customer's last message, and where the workload's tools take it, in the
teacher's answer too (:func:`flywheel.demo.support_router.plant_personal_data`). Validation must
replace every one of them (:mod:`flywheel.validate.pii`), which the demo's ``pii`` counts then show.

The values are fake and come from ranges reserved for examples: ``example.com`` / ``.org`` / ``.net``
addresses, the ``555-01xx`` and Ofcom drama phone ranges, Luhn-valid numbers with a Visa or
Mastercard prefix, and the IPv4 and IPv6 documentation networks. Each one is written in a form the
scrubber detects, and none has a space where a re-typed near duplicate could double it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from flywheel.demo.conversation import Conversation
from flywheel.validate.pii import PiiKind

__all__ = ["PlantedPii", "append_sentence", "fake_value", "plant_in_user_message", "with_user_sentence"]


@dataclass(frozen=True, slots=True)
class PlantedPii:
    """One planted value and its kind: ground truth beside a demo record, never in the document."""

    kind: PiiKind
    value: str


_FIRST_NAMES = ("jane", "omar", "li", "maria", "sam", "priya", "lukas", "amara", "tom", "yuki")
_LAST_NAMES = ("doe", "haddad", "wei", "garcia", "okafor", "patel", "becker", "nguyen", "smith", "sato")
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
_AREA_CODES = ("206", "312", "415", "512", "646", "720")


def _email(rng: random.Random) -> str:
    separator = rng.choice((".", "_", ""))
    number = rng.randrange(10, 10_000)
    return f"{rng.choice(_FIRST_NAMES)}{separator}{rng.choice(_LAST_NAMES)}{number}@{rng.choice(_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    area, line = rng.choice(_AREA_CODES), f"01{rng.randrange(100):02d}"
    how = rng.randrange(3)
    if how == 0:
        return f"+1 {area}-555-{line}"
    if how == 1:
        return f"({area}) 555-{line}"
    return f"+44 20 7946 0{rng.randrange(1000):03d}"  # Ofcom's range for drama (London)


def _card(rng: random.Random) -> str:
    prefix = "4" if rng.random() < 0.5 else str(rng.randrange(51, 56))  # Visa or Mastercard
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(15 - len(prefix)))
    digits = body + _luhn_check_digit(body)
    separator = rng.choice((" ", "-", ""))
    return separator.join(digits[i : i + 4] for i in range(0, 16, 4))


def _luhn_check_digit(body: str) -> str:
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char)
        if position % 2 == 0:  # doubled: the check digit will sit to the right of this one
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str(-total % 10)


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.75:
        network = rng.choice(("192.0.2", "198.51.100", "203.0.113"))  # RFC 5737 documentation networks
        return f"{network}.{rng.randrange(1, 255)}"
    return f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"  # RFC 3849


_MAKERS: dict[PiiKind, Callable[[random.Random], str]] = {
    PiiKind.EMAIL: _email,
    PiiKind.PHONE: _phone,
    PiiKind.CARD: _card,
    PiiKind.IP: _ip,
}


def fake_value(kind: PiiKind, rng: random.Random) -> str:
    """A fake value of ``kind`` from a range reserved for examples, in a form the scrubber detects."""
    return _MAKERS[kind](rng)


# How customers mention each kind in passing (the request itself stays what the teacher answers).
_SENTENCES: dict[PiiKind, tuple[str, ...]] = {
    PiiKind.EMAIL: (
        "My email is {value} if you need it.",
        "You can also reach me at {value} by email.",
        "(account email: {value})",
    ),
    PiiKind.PHONE: (
        "My number is {value} in case you need to call.",
        "Call me on {value} if anything is unclear.",
    ),
    PiiKind.CARD: (
        "I paid with my card {value} if that helps.",
        "The card on the order was {value} by the way.",
    ),
    PiiKind.IP: (
        "Your site keeps blocking me from {value} when I log in.",
        "I'm writing from {value} at work, if that matters.",
    ),
}


def append_sentence(text: str, sentence: str) -> str:
    """``sentence`` after the message ``text``, as a customer would add it."""
    stripped = text.rstrip()
    if not stripped:
        return sentence
    return f"{stripped}{'' if stripped[-1] in '.!?' else '.'} {sentence}"


def plant_in_user_message(
    conversation: Conversation, rng: random.Random, kind: PiiKind | None = None
) -> tuple[Conversation, tuple[PlantedPii, ...]]:
    """``conversation`` with one value of ``kind`` (any, when None) mentioned in its last user message.

    The teacher's answer stays as it was: the value is said in passing. The messages list and the
    edited message are new objects.
    """
    kind = kind or rng.choice(tuple(PiiKind))
    value = fake_value(kind, rng)
    sentence = rng.choice(_SENTENCES[kind]).format(value=value)
    return with_user_sentence(conversation, sentence), (PlantedPii(kind, value),)


def with_user_sentence(conversation: Conversation, sentence: str) -> Conversation:
    """``conversation`` with ``sentence`` appended to its last user message (new list and message)."""
    messages = list(conversation.messages)
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            message = messages[index]
            messages[index] = {**message, "content": append_sentence(message["content"], sentence)}
            break
    else:
        raise ValueError("the conversation has no user message to plant personal data in")
    return conversation._replace(messages=messages)
