"""The normalised conversation key: what makes two logged records "the same example".

:func:`conversation_key` hashes the *prompt side* of a record — the request messages and the tool
signature — after removing everything that changes between two loggings of the same conversation.
Two records with the same key are duplicates (the de-duplication keeps the newest), and the key is the
only input to a record's split (:mod:`flywheel.dataset.splits`). The teacher's answer is not part of the
key: the same question answered twice is one example, not two.

What the key keeps, per request message, in order:

- ``role``;
- the content, as text: a plain string, or the ``text`` of the parts of a content-parts list joined by
  one space (so ``[{"type": "text", "text": "hi"}]`` and ``"hi"`` are equal); non-text parts (images,
  audio...) are kept as normalised JSON next to the text. For ``tool`` messages a content that parses as
  a JSON object or array is compared as JSON (key order and whitespace do not matter);
- the tool calls of assistant messages in the history, in order: function name and canonical
  arguments (JSON text parsed when possible, keys sorted, strings inside normalised like text; arguments
  that do not parse are compared as normalised text). The legacy ``function_call`` counts as one call;
- ``name`` only on legacy ``function`` messages, where it is the one thing saying which function
  answered. It is dropped on ``tool`` messages: the tool is already named by the assistant call just
  before, and whether an SDK fills it in varies by client version. It is dropped on every other role,
  where it names a person or a client, not the conversation.

Everything else is volatile and dropped: tool-call ids and ``tool_call_id``, message ids, timestamps,
``name`` (see above), ``refusal``, ``audio``, reasoning fields, any field a gateway adds.

Text is normalised by Unicode NFKC, case folding and collapsing every run of whitespace to one space
(leading and trailing whitespace removed), so re-typed near-duplicates ("Where is my order ?" /
"where is  my order ?") share a key.

The tool signature is the sorted list of ``(type, function name, sorted parameter names, sorted
required parameters)``. Descriptions, parameter types, enums and defaults are excluded: a reworded
description is the same tool set, a new or removed parameter is not. The order of ``tools`` does not
matter. Request options (``tool_choice``, ``temperature``, ``model``...) are not part of the key.

The key is part of the data contract: changing any rule here changes keys, hence splits, and a record
that was evaluated could then be trained on. :data:`KEY_VERSION` is hashed into every key; bump it only
together with a new split salt (and a new golden set).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any

import orjson

KEY_VERSION = b"flywheel.conversation_key.v1"
"""Hashed into every key; changing the normalisation without changing the split salt leaks evaluation data."""

_DUMPS_OPTIONS = orjson.OPT_SORT_KEYS  # every dict goes through _canonical: keys are str
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_SIGNATURE_CACHE_SIZE = 256
_CACHED_TEXT_MIN, _CACHED_TEXT_MAX = 256, 16_384  # characters: the cache holds at most a few MB
_TEXT_CACHE_SIZE = 512
_text_cache: dict[str, str] = {}
_signature_cache: dict[bytes, bytes] = {}
_last_signature: tuple[bytes, bytes] = (b"", b"")  # (fingerprint, signature): compared, not hashed


def conversation_key(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """32-hex-char key (blake2b-128) of a conversation's prompt side, equal for records that differ only in
    volatile fields or in whitespace/case of their text. Two records with the same key are duplicates;
    the answer is not part of the key (the same question answered twice is one example).

    Never raises on JSON-shaped input, even malformed (a message that is not an object, content of the
    wrong type...); such records still get a key, though validation should have quarantined them.
    """
    if isinstance(messages, list):
        normalised = [_message(message) for message in messages]
    else:
        normalised = [["$messages", _canonical(messages)]]
    digest = hashlib.blake2b(KEY_VERSION, digest_size=16)
    digest.update(tool_signature(tools))
    digest.update(_dumps(normalised))
    return digest.hexdigest()


def normalise_text(text: str) -> str:
    """NFKC, case-folded, every whitespace run collapsed to one space, stripped.

    Long texts (system prompts, repeated verbatim in every record of a workload) are cached: hashing a
    string costs a twentieth of normalising it.
    """
    if not _CACHED_TEXT_MIN <= len(text) <= _CACHED_TEXT_MAX:
        return _normalise_text(text)
    normalised = _text_cache.get(text)
    if normalised is None:
        normalised = _normalise_text(text)
        if len(_text_cache) >= _TEXT_CACHE_SIZE:
            _text_cache.clear()
        _text_cache[text] = normalised
    return normalised


def _normalise_text(text: str) -> str:
    if not text.isascii():
        # NFKC again after folding: case folding can leave text that is not NFKC ("toNFKC_Casefold").
        text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        return " ".join(text.split())
    return " ".join(text.lower().split())


def tool_signature(tools: list[dict[str, Any]]) -> bytes:
    """16-byte digest of the tool set: names, parameter names and required parameters, order-free.

    Cached by the JSON bytes of `tools` (a workload's records nearly always carry the same tool list,
    decoded into a fresh object per record, so an identity cache would never hit): the last tool set is
    compared byte for byte, others are looked up in a small dict. A hit costs about 2.5 µs, computing
    the signature about 10 µs (support router tools, 3.9 kB of JSON).
    """
    try:
        fingerprint = orjson.dumps(tools)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _signature(tools)
    global _last_signature
    last = _last_signature
    if fingerprint == last[0]:  # consecutive records of a workload: a memcmp, cheaper than hashing
        return last[1]
    cached = _signature_cache.get(fingerprint)
    if cached is None:
        cached = _signature(tools)
        if len(_signature_cache) >= _SIGNATURE_CACHE_SIZE:
            _signature_cache.clear()  # a handful of tool sets per workload: a rare, cheap reset
        _signature_cache[fingerprint] = cached
    _last_signature = (fingerprint, cached)
    return cached


# --------------------------------------------------------------------------------------------------


def _signature(tools: Any) -> bytes:
    entries: list[bytes] = []
    for tool in tools if isinstance(tools, list) else ([] if tools is None else [tools]):
        if not isinstance(tool, dict):
            entries.append(_dumps(["$tool", _canonical(tool)]))
            continue
        function = tool.get("function")
        if not isinstance(function, dict):
            function = {}
        parameters = function.get("parameters")
        if not isinstance(parameters, dict):
            parameters = {}
        properties = parameters.get("properties")
        required = parameters.get("required")
        entries.append(
            _dumps(
                [
                    tool.get("type", "function"),
                    function.get("name"),
                    sorted(str(name) for name in properties) if isinstance(properties, dict) else [],
                    sorted(str(name) for name in required) if isinstance(required, list) else [],
                ]
            )
        )
    entries.sort()
    return hashlib.blake2b(b"\n".join(entries), digest_size=16).digest()


def _message(message: Any) -> list[Any]:
    """``[role, content, calls]``, plus the name of a legacy ``function`` message."""
    if not isinstance(message, dict):
        return ["$message", _canonical(message)]
    role = message.get("role")
    calls = message.get("tool_calls")
    normalised_calls = [_call(call) for call in calls] if isinstance(calls, list) else []
    if calls is not None and not isinstance(calls, list):
        normalised_calls.append(["$calls", _canonical(calls)])
    function_call = message.get("function_call")
    if function_call is not None:
        normalised_calls.append(_function(function_call))
    normalised = [role, _content(message.get("content"), role == "tool"), normalised_calls]
    if role == "function":
        normalised.append(message.get("name"))
    return normalised


def _content(content: Any, json_text: bool) -> Any:
    if isinstance(content, str):
        return _json_or_text(content) if json_text else normalise_text(content)
    if content is None:
        return ""
    if not isinstance(content, list):
        return ["$content", _canonical(content)]
    texts: list[str] = []
    others: list[Any] = []
    for part in content:
        if (
            isinstance(part, dict)
            and part.get("type", "text") == "text"
            and isinstance(part.get("text"), str)
        ):
            texts.append(part["text"])
        elif isinstance(part, str):
            texts.append(part)
        else:
            others.append(_canonical(part))
    text = " ".join(texts)
    normalised = _json_or_text(text) if json_text else normalise_text(text)
    return [normalised, others] if others else normalised


def _json_or_text(text: str) -> Any:
    """A tool result: JSON object/array compared as JSON, anything else as normalised text."""
    if text.lstrip()[:1] in ("{", "["):
        try:
            return ["$json", _canonical(orjson.loads(text))]
        except orjson.JSONDecodeError:
            pass
    return normalise_text(text)


def _call(call: Any) -> Any:
    if not isinstance(call, dict):
        return ["$call", _canonical(call)]
    return _function(call.get("function"))


def _function(function: Any) -> Any:
    if not isinstance(function, dict):
        return ["$function", _canonical(function)]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = _canonical(orjson.loads(arguments))
        except orjson.JSONDecodeError:
            arguments = ["$text", normalise_text(arguments)]
    else:
        arguments = _canonical(arguments)
    return [function.get("name"), arguments]


def _canonical(value: Any) -> Any:
    """A JSON value with every string normalised; keys are kept as they are (sorted when encoded)."""
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, dict):
        return {key if isinstance(key, str) else str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else ["$int", str(value)]
    return ["$repr", repr(value)]


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_DUMPS_OPTIONS)
    except TypeError:  # lone surrogates (broken text that validation quarantines): still a stable key
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=repr)
        return text.encode("utf-8", "surrogatepass")
