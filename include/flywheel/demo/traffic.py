"""Demo traffic: what an LLM gateway logs to Elasticsearch for one workload and one data interval.

:func:`generate_traffic` streams documents shaped like the ``_source`` of a production log index:
an OpenAI chat-completions request and the teacher model's response, tagged with ``workload_id``
and ``client_id``. A workload module (:mod:`flywheel.demo.support_router`, :mod:`flywheel.demo.bfcl`)
only produces clean conversations (:class:`~flywheel.demo.conversation.Conversation`); this module
turns them into documents and injects the noise that real logs carry (duplicates, broken tool-call
arguments, missing responses, wrong types, records outside the window...). Which noise a record
carries is returned next to it as ground truth (:class:`DemoRecord`) and is never written into the
document itself, so the extractor and the validator must find it on their own. A share of the
conversations (``pii_rate``) also carries a customer's e-mail address, phone number, card number or IP
address (:mod:`flywheel.demo.personal_data`), which validation must scrub; the planted values are
ground truth beside the record too.

Generation is a pure function of its arguments (the seed is mixed with the workload and the interval
start), streams in constant memory and needs no I/O beyond reading the packaged BFCL sample.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from flywheel.demo import bfcl, support_router
from flywheel.demo.conversation import Conversation, new_call_id
from flywheel.demo.personal_data import PlantedPii, plant_in_user_message

TEACHER_MODEL = "teacher-70b-instruct"
"""Model name the gateway logs for the production (teacher) model."""

WORKLOAD_KINDS = ("support_router", "bfcl_live")
"""Kinds of demo workload :func:`generate_traffic` can produce."""

PII_RATE = 0.05
"""Share of demo conversations that carry planted personal data unless ``pii_rate`` says otherwise."""

API_CHANGE_KINDS = ("support_router",)
"""Kinds whose backend API can change (``generate_traffic(api_changed=True)``): the router's
:data:`~flywheel.demo.support_router.API_V2`. BFCL requests replay fixed tool sets."""


class NoiseKind(StrEnum):
    """Ground truth of the defect injected into a demo record; never written into the log document."""

    EXACT_DUPLICATE = "exact_duplicate"  # same document logged twice (identical _source incl. timestamp)
    NEAR_DUPLICATE = "near_duplicate"  # same conversation, user text differs only in whitespace/case
    ARGUMENTS_NOT_JSON = "arguments_not_json"  # tool_calls[].function.arguments is truncated JSON
    ARGUMENTS_NOT_OBJECT = "arguments_not_object"  # valid JSON but a list/string/number
    MISSING_RESPONSE = "missing_response"  # no "response" key (upstream timeout)
    EMPTY_CHOICES = "empty_choices"  # response.choices == []
    EMPTY_MESSAGES = "empty_messages"  # request.messages == []
    WRONG_TYPES = "wrong_types"  # request.messages is a string, content a number, arguments an object
    UNKNOWN_ROLE = "unknown_role"  # a message with role "bot"/"narrator"
    UNKNOWN_TOOL = "unknown_tool"  # called tool not in request.tools
    WRONG_TOOL_TYPE = "wrong_tool_type"  # tool_call "type" other than "function"
    OUTSIDE_WINDOW = "outside_window"  # timestamp just before start, exactly end, or just after end


@dataclass(frozen=True, slots=True)
class DemoRecord:
    """One generated log document, the noise injected into it (``None``: clean teacher traffic) and the
    personal data planted in it (``()``: none)."""

    source: dict[str, Any]
    noise: NoiseKind | None
    pii: tuple[PlantedPii, ...] = ()


def generate_traffic(
    *,
    kind: str,
    workload_id: str,
    start: datetime,
    end: datetime,
    count: int,
    seed: int,
    client_ids: Sequence[str],
    noise_rate: float = 0.08,
    api_changed: bool = False,
    pii_rate: float = PII_RATE,
) -> Iterator[DemoRecord]:
    """Yield `count` records for one data interval [start, end) (aware UTC datetimes).

    `kind` picks the workload (one of :data:`WORKLOAD_KINDS`). Duplicates count as records, as they
    do in production logs. About `noise_rate` of the records carry noise, spread over every
    :class:`NoiseKind` (each kind appears at least once when ``count >= 200`` and ``noise_rate > 0``).
    Clean records have timestamps uniformly inside the interval, and when ``count >= 10`` the first
    record is a clean one exactly at `start` (millisecond precision). The same arguments give the same
    records; another interval start gives other records. Arguments are checked when this is called,
    not on the first ``next()``.

    `api_changed`: the teacher works against the workload's changed backend API (one of
    :data:`API_CHANGE_KINDS`): the requests log the changed tool schemas and the teacher calls them.

    `pii_rate`: the share of conversations (clean or noisy) with one planted personal value
    (:attr:`DemoRecord.pii`). It is drawn from a random stream of its own, so the records, their noise
    and their timestamps are the same at every rate; only the planted text differs.
    """
    if kind not in WORKLOAD_KINDS:
        raise ValueError(f"unknown demo workload kind {kind!r}; expected one of {WORKLOAD_KINDS}")
    if api_changed and kind not in API_CHANGE_KINDS:
        raise ValueError(
            f"api_changed: the {kind!r} demo workload has no API change; {API_CHANGE_KINDS} have"
        )
    for label, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{label} must be a timezone-aware datetime, got {value!r}")
    start_ms, end_ms = _ceil_ms(start), _ceil_ms(end)
    if end_ms <= start_ms:
        raise ValueError(f"empty data interval [{start.isoformat()}, {end.isoformat()})")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be within [0, 1], got {noise_rate}")
    if not 0.0 <= pii_rate <= 1.0:
        raise ValueError(f"pii_rate must be within [0, 1], got {pii_rate}")
    clients = tuple(client_ids)
    if not clients:
        raise ValueError("client_ids must name at least one client")
    mixed = hashlib.blake2b(f"{seed}|{kind}|{workload_id}|{start_ms}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(mixed, "big"))  # nosec B311 # reproducible demo traffic
    pii_rng = random.Random(int.from_bytes(mixed, "big") ^ _PII_STREAM)  # nosec B311 # reproducible demo traffic
    at_start_ms = start_ms if count >= 10 and _floor_ms(start) == start_ms else None
    return _generate(
        _conversation_maker(kind, api_changed),
        _PII_PLANTERS[kind],
        rng,
        pii_rng,
        pii_rate,
        workload_id,
        start_ms,
        end_ms,
        at_start_ms,
        count,
        clients,
        noise_rate,
        # Records dated before the interval belong to the day before, which ran on the old API.
        _conversation_maker(kind, False) if api_changed else None,
    )


# --------------------------------------------------------------------------------------------------
# Generation loop

_NOISE_KINDS = tuple(NoiseKind)


# Relative frequency of each kind once every kind has appeared once: duplicates, timeouts and broken
# arguments are what real gateways log most; structural damage is rarer.
_NOISE_WEIGHTS = {
    NoiseKind.EXACT_DUPLICATE: 2.0,
    NoiseKind.NEAR_DUPLICATE: 2.0,
    NoiseKind.ARGUMENTS_NOT_JSON: 1.5,
    NoiseKind.ARGUMENTS_NOT_OBJECT: 1.0,
    NoiseKind.MISSING_RESPONSE: 1.5,
    NoiseKind.EMPTY_CHOICES: 0.7,
    NoiseKind.EMPTY_MESSAGES: 0.5,
    NoiseKind.WRONG_TYPES: 0.7,
    NoiseKind.UNKNOWN_ROLE: 0.5,
    NoiseKind.UNKNOWN_TOOL: 1.0,
    NoiseKind.WRONG_TOOL_TYPE: 0.5,
    NoiseKind.OUTSIDE_WINDOW: 1.5,
}
_NOISE_CUM = list(itertools.accumulate(_NOISE_WEIGHTS[kind] for kind in _NOISE_KINDS))

# Noise that edits a tool call of the teacher's answer: such records are drawn from tool-call answers.
_NEEDS_TOOL_CALL = frozenset(
    {
        NoiseKind.ARGUMENTS_NOT_JSON,
        NoiseKind.ARGUMENTS_NOT_OBJECT,
        NoiseKind.UNKNOWN_TOOL,
        NoiseKind.WRONG_TOOL_TYPE,
    }
)
_MAX_DRAWS = 1000
_DUPLICATE_POOL = 32  # earlier clean records a duplicate may copy
_SNAPSHOT_RATE = 0.05  # share of clean records kept (serialized) as duplicate candidates
_UPSTREAM_TIMEOUT_MS = (30_000, 60_000, 120_000)
_OUTSIDE_MAX_MS = 5 * 60 * 1000


_PII_STREAM = 0x5049_4920_5049_4921
"""Mixed into the seed of the personal-data stream, so it is independent of the records' stream."""

_Planter = Callable[[Conversation, random.Random], tuple[Conversation, tuple[PlantedPii, ...]]]
_PII_PLANTERS: dict[str, _Planter] = {
    "support_router": support_router.plant_personal_data,
    "bfcl_live": plant_in_user_message,  # BFCL's calls are ground truth: the value is only said
}


def _conversation_maker(kind: str, api_changed: bool) -> Callable[[random.Random], Conversation]:
    if kind == "support_router":
        return functools.partial(
            support_router.make_conversation,
            api=support_router.API_V2 if api_changed else support_router.API_V1,
        )
    return bfcl.make_conversation


def _generate(
    make: Callable[[random.Random], Conversation],
    plant: _Planter,
    rng: random.Random,
    pii_rng: random.Random,
    pii_rate: float,
    workload_id: str,
    start_ms: int,
    end_ms: int,
    at_start_ms: int | None,
    count: int,
    clients: tuple[str, ...],
    noise_rate: float,
    make_before: Callable[[random.Random], Conversation] | None = None,
) -> Iterator[DemoRecord]:
    """The record stream of :func:`generate_traffic` (arguments already checked, times in epoch ms).

    `at_start_ms` is the timestamp of record 0 when it must sit exactly at the interval start.
    Personal data is planted with `plant`, drawing only from `pii_rng`. `make_before` makes the
    conversation of a record dated before the interval (the previous day's API); None: `make`.
    """
    span = end_ms - start_ms
    # Busier clients first: weights 1, 1/2, 1/3... over the configured client ids.
    client_cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(clients))))
    client_total = client_cum[-1]

    noise_left = _noise_budget(count, noise_rate)
    first_kinds = list(_NOISE_KINDS)
    rng.shuffle(first_kinds)
    noisy_so_far = 0
    snapshots: list[tuple[bytes, tuple[PlantedPii, ...]]] = []

    def planted(conversation: Conversation) -> tuple[Conversation, tuple[PlantedPii, ...]]:
        if pii_rate and pii_rng.random() < pii_rate:
            return plant(conversation, pii_rng)
        return conversation, ()

    for index in range(count):
        client_id = clients[bisect.bisect_left(client_cum, rng.random() * client_total)]
        # Record 0 stays clean (the record at `start`); the others are noisy by selection sampling,
        # which picks exactly `noise_left` of the remaining positions without storing them.
        noise: NoiseKind | None = None
        if index and noise_left and rng.random() * (count - index) < noise_left:
            noise_left -= 1
            if noisy_so_far < len(first_kinds):
                noise = first_kinds[noisy_so_far]
            else:
                noise = _NOISE_KINDS[bisect.bisect_left(_NOISE_CUM, rng.random() * _NOISE_CUM[-1])]
            noisy_so_far += 1

        if noise is None:
            ts_ms = at_start_ms if index == 0 and at_start_ms is not None else start_ms + rng.randrange(span)
            conversation, pii = planted(make(rng))
            source = _build_source(ts_ms, workload_id, client_id, conversation, rng)
            if not snapshots or rng.random() < _SNAPSHOT_RATE:
                snapshot = (orjson.dumps(source), pii)
                if len(snapshots) < _DUPLICATE_POOL:
                    snapshots.append(snapshot)
                else:
                    snapshots[rng.randrange(_DUPLICATE_POOL)] = snapshot
            yield DemoRecord(source, None, pii)
        elif noise is NoiseKind.EXACT_DUPLICATE:
            snapshot, pii = rng.choice(snapshots)
            yield DemoRecord(orjson.loads(snapshot), noise, pii)
        elif noise is NoiseKind.NEAR_DUPLICATE:
            snapshot, pii = rng.choice(snapshots)
            source = _near_duplicate(orjson.loads(snapshot), start_ms + rng.randrange(span), rng)
            yield DemoRecord(source, noise, pii)
        else:
            conversation = make(rng)
            if noise in _NEEDS_TOOL_CALL:
                for _ in range(_MAX_DRAWS):
                    if conversation.tool_calls:
                        break
                    conversation = make(rng)
                else:
                    raise RuntimeError(f"workload produced no tool call in {_MAX_DRAWS} conversations")
            conversation, pii = planted(conversation)
            if noise is NoiseKind.OUTSIDE_WINDOW:
                ts_ms = _outside_window_ms(start_ms, end_ms, rng)
                if ts_ms < start_ms and make_before is not None:
                    # Its own stream: the interval's other records stay the same as without it.
                    conversation, pii = planted(make_before(random.Random(ts_ms)))  # nosec B311 # demo traffic
            else:
                ts_ms = start_ms + rng.randrange(span)
            source = _build_source(ts_ms, workload_id, client_id, conversation, rng)
            _CORRUPTORS[noise](source, rng)
            yield DemoRecord(source, noise, pii)


def _noise_budget(count: int, noise_rate: float) -> int:
    """How many of `count` records carry noise (record 0 never does)."""
    if noise_rate == 0.0 or count < 2:
        return 0
    budget = round(count * noise_rate)
    if count >= 200:
        budget = max(budget, len(_NOISE_KINDS))
    return min(budget, count - 1)


# --------------------------------------------------------------------------------------------------
# Document builders


def _floor_ms(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _ceil_ms(moment: datetime) -> int:
    return _floor_ms(moment) + (1 if moment.microsecond % 1000 else 0)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC text with milliseconds and ``Z`` (``2026-11-20T10:15:02.123Z``) of epoch milliseconds."""
    seconds, millis = divmod(epoch_ms, 1000)
    t = time.gmtime(seconds)
    return f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}.{millis:03d}Z"


def _build_source(
    ts_ms: int, workload_id: str, client_id: str, conversation: Conversation, rng: random.Random
) -> dict[str, Any]:
    """The log document of one clean request/response pair."""
    messages = conversation.messages
    prompt_tokens = conversation.tools_tokens
    for message in messages:
        prompt_tokens += 4 + len(message.get("content") or "") // 4
    if conversation.tool_calls:
        calls = []
        completion_tokens = 0
        for name, arguments in conversation.tool_calls:
            calls.append(
                {
                    "id": f"call_{rng.getrandbits(96):024x}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
            completion_tokens += 8 + len(arguments) // 4
        answer = {"role": "assistant", "content": None, "tool_calls": calls}
        finish_reason = "tool_calls"
    else:
        text = conversation.content or ""
        answer = {"role": "assistant", "content": text}
        completion_tokens = 1 + len(text) // 4
        finish_reason = "stop"
    # A 70B model behind a gateway: prefill, about 20 ms per generated token, queueing jitter.
    latency_ms = int(140 + prompt_tokens * 0.06 + completion_tokens * 21 + rng.expovariate(0.008))
    return {
        "timestamp": iso_ms(ts_ms),
        "workload_id": workload_id,
        "client_id": client_id,
        "request": {
            "model": TEACHER_MODEL,
            "messages": messages,
            "tools": conversation.tools,
            "tool_choice": "auto",
            "temperature": 0.0,
        },
        "response": {
            "id": f"chatcmpl-{rng.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": ts_ms // 1000,
            "model": TEACHER_MODEL,
            "choices": [{"index": 0, "message": answer, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
        "latency_ms": latency_ms,
    }


# --------------------------------------------------------------------------------------------------
# Noise injection: each corruptor edits a freshly built clean document in place.


def _outside_window_ms(start_ms: int, end_ms: int, rng: random.Random) -> int:
    """A timestamp the extractor must not take: shortly before start, exactly end, or shortly after."""
    where = rng.random()
    if where < 0.4:
        return start_ms - rng.randint(1, _OUTSIDE_MAX_MS)
    if where < 0.7:
        return end_ms
    return end_ms + rng.randint(1, _OUTSIDE_MAX_MS)


def _near_duplicate(source: dict[str, Any], ts_ms: int, rng: random.Random) -> dict[str, Any]:
    """The same conversation retried by the client: user text re-typed, new timestamp and ids."""
    user = _last_user(source)
    user["content"] = _retyped(user["content"], rng)
    source["timestamp"] = iso_ms(ts_ms)
    response = source["response"]
    response["id"] = f"chatcmpl-{rng.getrandbits(96):024x}"
    response["created"] = ts_ms // 1000
    for call in response["choices"][0]["message"].get("tool_calls", ()):
        call["id"] = new_call_id(rng)
    source["latency_ms"] = int(source["latency_ms"] * rng.uniform(0.8, 1.25))
    return source


def _retyped(text: str, rng: random.Random) -> str:
    """`text` changed only in whitespace or letter case, never equal to it.

    Case changes are made on ASCII text only, where lower-casing both sides makes them equal again
    (``"ß".upper()`` is ``"SS"``).
    """
    how = rng.randrange(5 if text.isascii() else 3)
    if how == 0:
        variant = text + rng.choice((" ", "  ", "\n"))
    elif how == 1:
        variant = " " + text
    elif how == 2:
        variant = text.replace(" ", "  ", 1)
    elif how == 3:
        variant = text.lower()
    else:
        variant = text[:1].swapcase() + text[1:]
    return variant if variant != text else text + " "


def _answer(source: dict[str, Any]) -> dict[str, Any]:
    return source["response"]["choices"][0]["message"]


def _last_user(source: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in reversed(source["request"]["messages"]) if m["role"] == "user")


def _keep(source: dict[str, Any], rng: random.Random) -> None:
    """OUTSIDE_WINDOW: the document is clean; only its timestamp (chosen before building) is wrong."""


def _arguments_not_json(source: dict[str, Any], rng: random.Random) -> None:
    # A proper prefix of a JSON object never parses: the closing brace is missing at least.
    function = rng.choice(_answer(source)["tool_calls"])["function"]
    arguments = function["arguments"]
    function["arguments"] = arguments[: rng.randint(1, len(arguments) - 1)]


def _arguments_not_object(source: dict[str, Any], rng: random.Random) -> None:
    function = rng.choice(_answer(source)["tool_calls"])["function"]
    arguments = function["arguments"]
    how = rng.randrange(3)
    if how == 0:  # the values without their names
        function["arguments"] = orjson.dumps(list(orjson.loads(arguments).values())).decode()
    elif how == 1:  # encoded twice: a JSON string holding the object's text
        function["arguments"] = orjson.dumps(arguments).decode()
    else:
        function["arguments"] = str(rng.randint(0, 9999))


def _missing_response(source: dict[str, Any], rng: random.Random) -> None:
    del source["response"]
    source["latency_ms"] = rng.choice(_UPSTREAM_TIMEOUT_MS)


def _empty_choices(source: dict[str, Any], rng: random.Random) -> None:
    response = source["response"]
    response["choices"] = []
    usage = response["usage"]
    usage["completion_tokens"] = 0
    usage["total_tokens"] = usage["prompt_tokens"]


def _empty_messages(source: dict[str, Any], rng: random.Random) -> None:
    source["request"]["messages"] = []


def _wrong_types(source: dict[str, Any], rng: random.Random) -> None:
    calls = _answer(source).get("tool_calls")
    how = rng.randrange(3 if calls else 2)
    if how == 0:  # the gateway logged the user's text instead of the message list
        source["request"]["messages"] = _last_user(source)["content"]
    elif how == 1:
        _last_user(source)["content"] = rng.randint(0, 99_999)
    else:  # arguments logged as an object instead of JSON text
        function = rng.choice(calls)["function"]
        function["arguments"] = orjson.loads(function["arguments"])


def _unknown_role(source: dict[str, Any], rng: random.Random) -> None:
    candidates = [m for m in source["request"]["messages"] if m["role"] != "system"]
    rng.choice(candidates)["role"] = rng.choice(("bot", "narrator"))


_HALLUCINATED_TOOLS = ("lookup_order", "get_weather", "search_web", "cancel_subscription", "send_email")


def _unknown_tool(source: dict[str, Any], rng: random.Random) -> None:
    known = {tool["function"]["name"] for tool in source["request"]["tools"]}
    function = rng.choice(_answer(source)["tool_calls"])["function"]
    name = rng.choice(_HALLUCINATED_TOOLS) if rng.random() < 0.5 else function["name"] + "_v2"
    while name in known:
        name += "_v2"
    function["name"] = name


def _wrong_tool_type(source: dict[str, Any], rng: random.Random) -> None:
    rng.choice(_answer(source)["tool_calls"])["type"] = rng.choice(
        ("tool", "code_interpreter", "retrieval", "function_call")
    )


_CORRUPTORS: dict[NoiseKind, Callable[[dict[str, Any], random.Random], None]] = {
    NoiseKind.ARGUMENTS_NOT_JSON: _arguments_not_json,
    NoiseKind.ARGUMENTS_NOT_OBJECT: _arguments_not_object,
    NoiseKind.MISSING_RESPONSE: _missing_response,
    NoiseKind.EMPTY_CHOICES: _empty_choices,
    NoiseKind.EMPTY_MESSAGES: _empty_messages,
    NoiseKind.WRONG_TYPES: _wrong_types,
    NoiseKind.UNKNOWN_ROLE: _unknown_role,
    NoiseKind.UNKNOWN_TOOL: _unknown_tool,
    NoiseKind.WRONG_TOOL_TYPE: _wrong_tool_type,
    NoiseKind.OUTSIDE_WINDOW: _keep,
}
