"""Record-level rules: is one raw log record a usable conversation, and if not, why.

:func:`check_record` takes one row of a raw partition (:data:`flywheel.extract.partition.RAW_SCHEMA`) and
returns either a :class:`Conversation` (the request's messages and tools and the teacher's answer, parsed
and checked) or a :class:`Violation` (a stable :class:`QuarantineReason` code, the JSON path of the
offending field and a short explanation) for the quarantine partition. It never raises, whatever the
row holds.

Rules run cheapest first and the first failing rule wins: record size, workload, timestamp, then the
request (messages, roles, tools), then the response (choices, the answer, its tool calls and their
arguments), and last a scan of all conversation text for control characters and broken encoding.
Only ``choices[0]`` is the teacher's answer; further choices are ignored. A plain-text answer is clean
even when tools were offered: its label is :data:`NO_TOOL`. Duplicates are not a record-level defect.

The hot path decodes with msgspec and checks types with ``type(x) is ...`` comparisons; paths and
messages are only formatted for a failing record. The request's tool definitions (most of its bytes,
identical across a workload's records) are decoded and checked once per distinct JSON text and cached:
the ``tools`` list of a :class:`Conversation` is shared between records and must be treated as
read-only (copy it before editing). The tools' ``parameters`` schemas are not validated.
About 60,000 demo router records (5.5 KB) per second on one core.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec

from flywheel.extract.documents import (
    UNPARSEABLE_DETAIL_FIELD,
    UNPARSEABLE_REASON_FIELD,
    UnparseableReason,
)


class QuarantineReason(StrEnum):
    """Why a record was quarantined. The values are stored and queried: never rename one."""

    record_too_large = "record_too_large"
    """``request_json`` + ``response_json`` take more UTF-8 bytes than the configured maximum."""
    document_too_large = UnparseableReason.document_too_large.value
    """The log document took more bytes than ``log_source.max_document_bytes``: extraction kept only its
    opening bytes (``extra_json``: ``unparseable_line``), so it has no workload, timestamp or request."""
    document_too_deep = UnparseableReason.document_too_deep.value
    """The log document was nested too deeply to decode (about 1,000 levels): extraction kept its text
    (``extra_json``: ``unparseable_line``) instead of its fields."""
    workload_mismatch = "workload_mismatch"
    """The record's ``workload_id`` is not the workload being validated (including a null one)."""
    timestamp_missing = "timestamp_missing"
    """No timestamp: absent or unreadable in the log document (extraction stores null), or not a datetime."""
    timestamp_outside_interval = "timestamp_outside_interval"
    """The timestamp is outside the data interval ``[start, end)``; exactly ``end`` is outside."""
    missing_request = "missing_request"
    """No request: the ``request`` key is absent, JSON null, or not a JSON object (detail says what it is)."""
    unreadable_json = "unreadable_json"
    """``request`` or ``response`` is not valid JSON text (syntax error, nesting too deep, number out of
    range, not text at all)."""
    missing_messages = "missing_messages"
    """``request.messages`` is absent, null, or not an array (detail says what it is)."""
    empty_messages = "empty_messages"
    """``request.messages`` is an empty array."""
    invalid_message = "invalid_message"
    """A message of ``request.messages`` is not an object; its ``content`` is neither a string, null nor an
    array of content parts; or its ``tool_calls`` are malformed (not an array of objects with a
    ``function`` holding a string ``name`` and string ``arguments``, or present on a non-assistant message).
    History arguments are not parsed: only the answer's are."""
    unknown_role = "unknown_role"
    """A message's ``role`` is not one of system, user, assistant, tool, developer (exact, case-sensitive
    strings; a missing, null or non-string role counts as unknown)."""
    invalid_tools = "invalid_tools"
    """``request.tools`` is present but not an array of ``{"type": "function", "function": {"name": ...}}``
    with a non-empty string name."""
    missing_response = "missing_response"
    """No response: the ``response`` key is absent (upstream timeout), JSON null, or not a JSON object."""
    missing_choices = "missing_choices"
    """``response.choices`` is absent, null, or not an array."""
    empty_choices = "empty_choices"
    """``response.choices`` is an empty array."""
    invalid_answer = "invalid_answer"
    """``choices[0]`` or its ``message`` is not an object; the message has a role other than assistant,
    non-text content, neither non-blank text content nor tool calls, ``tool_calls`` that are not an array,
    or a tool call that is not an object, lacks a ``function`` object or a non-empty string name."""
    wrong_tool_type = "wrong_tool_type"
    """A tool call of the answer has a ``type`` other than ``"function"`` (an absent or null type is
    taken as ``"function"``, the only type chat completions define)."""
    unknown_tool = "unknown_tool"
    """The answer calls a function that is not among the names in ``request.tools`` (or no tools were
    offered at all)."""
    arguments_not_json = "arguments_not_json"
    """A tool call's ``arguments`` is not a string holding valid JSON (truncated text, an empty string, or
    an object/array/null logged instead of JSON text)."""
    arguments_not_object = "arguments_not_object"
    """A tool call's ``arguments`` is valid JSON but not an object (an array, string, number, null...)."""
    invalid_text = "invalid_text"
    """Conversation text (message contents and text parts, tool-call arguments, the answer's text) holds a
    C0 control character other than tab, newline and carriage return, DEL, U+FFFD (the trace of a broken
    encoding), or a lone surrogate (also found anywhere in the request or response JSON). The answer's
    arguments are checked both as JSON text and as the strings they decode to; history arguments only
    as text. Bytes that are not UTF-8 in ``request_json``/``response_json`` count too."""
    check_error = "check_error"
    """The checker itself failed on this row (a bug to report); the row is quarantined, not lost."""


NO_TOOL = "<no_tool>"
"""Label of records answered in plain text (no tool call)."""

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
"""Message roles a request may use."""

DETAIL_CHARS = 200
"""Longest :attr:`Violation.detail`."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call of the teacher's answer, its arguments parsed."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Conversation:
    """A clean record: the prompt side and the teacher's answer, parsed and checked.

    ``messages`` is this record's own decoded list; ``tools`` is shared with every record logged with
    the same tool definitions (decoded once): never mutate it in place.
    """

    messages: list[dict[str, Any]]  # request.messages as logged (OpenAI shape)
    tools: list[dict[str, Any]]  # request.tools ([] when absent)
    tool_calls: list[ToolCall]  # the answer's calls, arguments parsed ([] for a text answer)
    content: str | None  # the answer's text (None for a pure tool call)

    @property
    def label(self) -> str:
        """The first tool call's function name, or :data:`NO_TOOL` for a text answer."""
        return self.tool_calls[0].name if self.tool_calls else NO_TOOL


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a record goes to quarantine: reason code, JSON path of the offending field, explanation."""

    reason: QuarantineReason
    field: str  # e.g. "response.choices[0].message.tool_calls[1].function.arguments"
    detail: str  # short human explanation including what was found (at most DETAIL_CHARS)


def check_record(
    row: Mapping[str, Any], *, workload_id: str, start: datetime, end: datetime, max_record_bytes: int
) -> Conversation | Violation:
    """Apply every record-level rule to one raw row; never raises, whatever the row holds.

    `start` and `end` bound the data interval ``[start, end)`` and must be timezone-aware (a
    ``ValueError`` otherwise: that is the caller's mistake, not the row's). A naive row timestamp is
    taken as UTC. ``request_json`` / ``response_json`` may be ``str`` or UTF-8 ``bytes``.
    """
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("start and end must be timezone-aware datetimes")
    try:
        return _check(row, workload_id, start, end, max_record_bytes)
    except Exception as exc:  # the contract is to quarantine, never to raise
        return _violation(
            QuarantineReason.check_error, "record", f"checker failed: {type(exc).__name__}: {exc}"
        )


# --------------------------------------------------------------------------------------------------
# The rules

_decode = msgspec.json.Decoder().decode
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_TOOLS_CACHE: dict[bytes, tuple[list[dict[str, Any]], frozenset[str]] | Violation] = {}
_TOOLS_CACHE_SIZE = 256  # distinct tool sets remembered (cleared when full)
_DECODE_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeError, ValueError, TypeError)
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ud800-\udfff]")
_GOOD_ASCII = bytes(b for b in range(128) if _BAD_TEXT.match(chr(b)) is None)  # deleted by the scan
_SURROGATE = re.compile("[\ud800-\udfff]")
_ANSWER = "response.choices[0].message"
_ROLE_LIST = ", ".join(sorted(ROLES))


def _check(
    row: Mapping[str, Any], workload_id: str, start: datetime, end: datetime, max_record_bytes: int
) -> Conversation | Violation:
    request_text = row.get("request_json")
    response_text = row.get("response_json")
    size = _utf8_len(request_text) + _utf8_len(response_text)
    if size > max_record_bytes:
        return _violation(
            QuarantineReason.record_too_large,
            "record",
            f"request and response take {size} bytes, limit {max_record_bytes}",
        )

    found_workload = row.get("workload_id")
    if found_workload != workload_id:
        if found_workload is None and (kept := _unparseable(row.get("extra_json"))) is not None:
            return kept
        return _violation(
            QuarantineReason.workload_mismatch,
            "workload_id",
            f"expected {workload_id!r}, found {_show(found_workload)}",
        )

    ts = row.get("timestamp")
    if not isinstance(ts, datetime):
        detail = "no timestamp (absent or unreadable in the log document)"
        if ts is not None:
            detail = f"expected a datetime, found {type(ts).__name__} {_show(ts)}"
        return _violation(QuarantineReason.timestamp_missing, "timestamp", detail)
    if ts.utcoffset() is None:
        ts = ts.replace(tzinfo=UTC)
    if not start <= ts < end:
        return _violation(
            QuarantineReason.timestamp_outside_interval,
            "timestamp",
            f"{ts.isoformat()} is not in [{start.isoformat()}, {end.isoformat()})",
        )

    # ---- request
    if request_text is None:
        return _violation(QuarantineReason.missing_request, "request", "no request logged")
    if type(request_text) is not str:
        request_text = _as_text(request_text, "request")
        if type(request_text) is Violation:
            return request_text
    request = _split_request(request_text)
    if type(request) is Violation:
        return request

    messages = _member(request, "messages", "request.messages")
    if type(messages) is not list:
        if type(messages) is Violation:
            return messages
        what = "absent" if "messages" not in request else f"expected an array, found {_kind(messages)}"
        return _violation(QuarantineReason.missing_messages, "request.messages", what)
    if not messages:
        return _violation(QuarantineReason.empty_messages, "request.messages", "no messages")

    texts: list[str] = []  # every text the invalid-text scan covers (see _text_fields for the same walk)
    for i, message in enumerate(messages):
        if type(message) is not dict:
            return _violation(
                QuarantineReason.invalid_message,
                f"request.messages[{i}]",
                f"expected an object, found {_kind(message)}",
            )
        role = message.get("role")
        if type(role) is not str or role not in ROLES:
            what = "absent" if "role" not in message else _show(role)
            return _violation(
                QuarantineReason.unknown_role,
                f"request.messages[{i}].role",
                f"role {what} is not one of {_ROLE_LIST}",
            )
        content = message.get("content")
        if type(content) is str:
            texts.append(content)
        elif type(content) is list:
            problem = _content_parts(content, texts)
            if problem is not None:
                j, what = problem
                return _violation(
                    QuarantineReason.invalid_message, f"request.messages[{i}].content[{j}]", what
                )
        elif content is not None:
            return _violation(
                QuarantineReason.invalid_message,
                f"request.messages[{i}].content",
                f"expected a string, null or content parts, found {_kind(content)} {_show(content)}",
            )
        calls = message.get("tool_calls")
        if calls is not None:
            problem = _history_calls(calls, role, texts)
            if problem is not None:
                where, what = problem
                return _violation(
                    QuarantineReason.invalid_message, f"request.messages[{i}].tool_calls{where}", what
                )

    offered = _offered_tools(request.get("tools"))
    if type(offered) is Violation:
        return offered
    tools, names = offered

    # ---- response
    if response_text is None:
        return _violation(
            QuarantineReason.missing_response, "response", "no response logged (upstream timeout or error)"
        )
    if type(response_text) is not str:
        response_text = _as_text(response_text, "response")
        if type(response_text) is Violation:
            return response_text
    response = _load(response_text, "response", QuarantineReason.unreadable_json)
    if type(response) is Violation:
        return response
    if type(response) is not dict:
        return _violation(
            QuarantineReason.missing_response, "response", f"expected an object, found {_kind(response)}"
        )
    choices = response.get("choices")
    if type(choices) is not list:
        what = "absent" if "choices" not in response else f"expected an array, found {_kind(choices)}"
        return _violation(QuarantineReason.missing_choices, "response.choices", what)
    if not choices:
        return _violation(QuarantineReason.empty_choices, "response.choices", "no choices")
    choice = choices[0]
    if type(choice) is not dict:
        return _violation(
            QuarantineReason.invalid_answer,
            "response.choices[0]",
            f"expected an object, found {_kind(choice)}",
        )
    answer = choice.get("message")
    if type(answer) is not dict:
        what = "absent" if "message" not in choice else f"expected an object, found {_kind(answer)}"
        return _violation(QuarantineReason.invalid_answer, _ANSWER, what)
    role = answer.get("role")
    if role is not None and role != "assistant":
        return _violation(
            QuarantineReason.invalid_answer, f"{_ANSWER}.role", f"expected 'assistant', found {_show(role)}"
        )
    text = answer.get("content")
    if text is not None and type(text) is not str:
        return _violation(
            QuarantineReason.invalid_answer,
            f"{_ANSWER}.content",
            f"expected a string or null, found {_kind(text)}",
        )

    calls = answer.get("tool_calls")
    tool_calls: list[ToolCall] = []
    if calls is None or calls == []:
        if not text or text.isspace():
            return _violation(
                QuarantineReason.invalid_answer,
                _ANSWER,
                f"neither text content nor tool calls (content {_show(text)})",
            )
    elif type(calls) is not list:
        return _violation(
            QuarantineReason.invalid_answer,
            f"{_ANSWER}.tool_calls",
            f"expected an array, found {_kind(calls)}",
        )
    else:
        for k, call in enumerate(calls):
            checked = _answer_call(call, k, names)
            if type(checked) is Violation:
                return checked
            tool_calls.append(checked)
            arguments = call["function"]["arguments"]
            texts.append(arguments)
            if "\\" in arguments:  # escapes: the parsed strings may hold what the JSON text hides
                texts.extend(_strings(checked.arguments))
    if text:
        texts.append(text)

    if _has_bad_text("\n".join(texts)):
        return _bad_text_violation(messages, answer)
    return Conversation(messages=messages, tools=tools, tool_calls=tool_calls, content=text or None)


def _split_request(text: Any) -> dict[str, Any] | Violation:
    """The request's top-level members, values left as undecoded ``msgspec.Raw`` on the fast path.

    Only ``messages`` and ``tools`` are needed, and the tool definitions (most of a request's bytes) are
    the same for every record of a workload: decoding them once per distinct text is the main saving.
    msgspec still checks the whole text is valid JSON. Anything but an object goes the generic way.
    """
    try:
        return _decode_members(text)
    except _DECODE_ERRORS:
        pass
    request = _load(text, "request", QuarantineReason.unreadable_json)
    if type(request) is Violation:
        return request
    if type(request) is not dict:
        return _violation(
            QuarantineReason.missing_request, "request", f"expected an object, found {_kind(request)}"
        )
    return request


def _member(members: dict[str, Any], key: str, field: str) -> Any:
    """Decoded value of a top-level member (None when absent), or a Violation if it does not decode."""
    value = members.get(key)
    if type(value) is msgspec.Raw:
        return _load(value, field, QuarantineReason.unreadable_json)
    return value


def _offered_tools(raw: Any) -> tuple[list[dict[str, Any]], frozenset[str]] | Violation:
    """``request.tools`` checked, with the set of function names; cached by the tools' JSON text."""
    if type(raw) is not msgspec.Raw:
        return _check_tools(raw)
    key = bytes(raw)
    entry = _TOOLS_CACHE.get(key)
    if entry is None:
        tools = _load(raw, "request.tools", QuarantineReason.unreadable_json)
        entry = tools if type(tools) is Violation else _check_tools(tools)
        if len(_TOOLS_CACHE) >= _TOOLS_CACHE_SIZE:
            _TOOLS_CACHE.clear()
        _TOOLS_CACHE[key] = entry
    return entry


def _check_tools(tools: Any) -> tuple[list[dict[str, Any]], frozenset[str]] | Violation:
    if tools is None:
        return [], frozenset()
    if type(tools) is not list:
        return _violation(
            QuarantineReason.invalid_tools, "request.tools", f"expected an array, found {_kind(tools)}"
        )
    names = []
    for i, tool in enumerate(tools):
        problem = _tool_problem(tool)
        if problem is not None:
            where, what = problem
            return _violation(QuarantineReason.invalid_tools, f"request.tools[{i}]{where}", what)
        names.append(tool["function"]["name"])
    return tools, frozenset(names)


def _content_parts(parts: list[Any], texts: list[str]) -> tuple[int, str] | None:
    """Check an array of content parts, collecting text parts; (index, problem) of the first bad one."""
    for j, part in enumerate(parts):
        if type(part) is not dict:
            return j, f"expected a content part object, found {_kind(part)}"
        kind = part.get("type")
        if type(kind) is not str:
            return j, f"content part type must be a string, found {_kind(kind)}"
        if kind == "text":
            value = part.get("text")
            if type(value) is not str:
                return j, f"text part without string text (found {_kind(value)})"
            texts.append(value)
    return None


def _history_calls(calls: Any, role: str, texts: list[str]) -> tuple[str, str] | None:
    """Check the tool calls of a history message, collecting their arguments; (path, problem) if bad."""
    if type(calls) is not list:
        return "", f"expected an array, found {_kind(calls)}"
    if calls and role != "assistant":
        return "", f"tool calls on a {role!r} message"
    for k, call in enumerate(calls):
        if type(call) is not dict:
            return f"[{k}]", f"expected an object, found {_kind(call)}"
        function = call.get("function")
        if type(function) is not dict:
            return f"[{k}].function", f"expected an object, found {_kind(function)}"
        name = function.get("name")
        if type(name) is not str or not name:
            return f"[{k}].function.name", f"expected a non-empty string, found {_show(name)}"
        arguments = function.get("arguments")
        if type(arguments) is not str:
            return f"[{k}].function.arguments", f"expected a JSON string, found {_kind(arguments)}"
        texts.append(arguments)
    return None


def _tool_problem(tool: Any) -> tuple[str, str] | None:
    """(path suffix, problem) when a ``request.tools`` entry is not a function tool with a name."""
    if type(tool) is not dict:
        return "", f"expected an object, found {_kind(tool)}"
    kind = tool.get("type")
    if kind != "function":
        return ".type", f"expected 'function', found {_show(kind)}"
    function = tool.get("function")
    if type(function) is not dict:
        return ".function", f"expected an object, found {_kind(function)}"
    name = function.get("name")
    if type(name) is not str or not name:
        return ".function.name", f"expected a non-empty string, found {_show(name)}"
    return None


def _answer_call(call: Any, k: int, names: frozenset[str]) -> ToolCall | Violation:
    """Check one tool call of the teacher's answer and parse its arguments."""
    if type(call) is not dict:
        return _violation(
            QuarantineReason.invalid_answer,
            f"{_ANSWER}.tool_calls[{k}]",
            f"expected an object, found {_kind(call)}",
        )
    kind = call.get("type")
    if kind is not None and kind != "function":
        return _violation(
            QuarantineReason.wrong_tool_type,
            f"{_ANSWER}.tool_calls[{k}].type",
            f"expected 'function', found {_show(kind)}",
        )
    function = call.get("function")
    if type(function) is not dict:
        what = "absent" if "function" not in call else f"expected an object, found {_kind(function)}"
        return _violation(QuarantineReason.invalid_answer, f"{_ANSWER}.tool_calls[{k}].function", what)
    name = function.get("name")
    if type(name) is not str or not name:
        what = "absent" if "name" not in function else f"expected a non-empty string, found {_show(name)}"
        return _violation(QuarantineReason.invalid_answer, f"{_ANSWER}.tool_calls[{k}].function.name", what)
    if name not in names:
        offered = ", ".join(sorted(names)) if names else "none"
        return _violation(
            QuarantineReason.unknown_tool,
            f"{_ANSWER}.tool_calls[{k}].function.name",
            f"{name!r} is not among the tools offered ({offered})",
        )
    arguments = function.get("arguments")
    field = f"{_ANSWER}.tool_calls[{k}].function.arguments"
    if type(arguments) is not str:
        what = "absent" if "arguments" not in function else _kind(arguments)
        return _violation(QuarantineReason.arguments_not_json, field, f"expected a JSON string, got {what}")
    parsed = _load(arguments, field, QuarantineReason.arguments_not_json)
    if type(parsed) is Violation:
        return parsed
    if type(parsed) is not dict:
        return _violation(
            QuarantineReason.arguments_not_object,
            field,
            f"expected a JSON object, found {_kind(parsed)} {_show(arguments)}",
        )
    return ToolCall(name, parsed)


def _unparseable(extra: Any) -> Violation | None:
    """The violation of a document that extraction kept as unparseable for a known reason (too large,
    too deep: :mod:`flywheel.extract.documents`); None for any other record."""
    if type(extra) is not str or UNPARSEABLE_REASON_FIELD not in extra:
        return None
    try:
        fields = _decode(extra)
        reason = QuarantineReason(UnparseableReason(fields[UNPARSEABLE_REASON_FIELD]).value)
    except (*_DECODE_ERRORS, KeyError):
        return None
    return _violation(reason, "document", str(fields.get(UNPARSEABLE_DETAIL_FIELD) or reason.value))


# --------------------------------------------------------------------------------------------------
# JSON decoding


def _load(text: Any, field: str, reason: QuarantineReason) -> Any:
    """The JSON value of `text`, or a :class:`Violation` with `reason` at `field` when it is not JSON.

    msgspec rejects lone surrogate escapes (``"\\ud800"``) as malformed; when the stdlib decoder reads
    the text anyway, the record is reported as invalid text at the path of the surrogate instead.
    """
    try:
        return _decode(text)
    except _DECODE_ERRORS as exc:
        return _load_slow(text, field, reason, exc)


def _as_text(value: Any, field: str) -> Any:
    """A JSON column as ``str``: UTF-8 bytes decoded (a Violation when they are not UTF-8)."""
    if isinstance(value, bytes | bytearray | memoryview | msgspec.Raw):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            return _violation(QuarantineReason.invalid_text, field, f"not UTF-8 text: {exc}")
    return value  # not text: the decoder's error says so


def _load_slow(text: Any, field: str, reason: QuarantineReason, error: Exception) -> Any:
    text = _as_text(text, field)
    if type(text) is Violation:
        return text
    if not isinstance(text, str):
        return _violation(reason, field, f"expected JSON text, found {type(text).__name__}")
    if not text:
        return _violation(reason, field, "empty string")
    message = str(error) if not isinstance(error, RecursionError) else "nested too deep"
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return _violation(reason, field, f"not valid JSON ({message}): {_show(text)}")
    try:
        found = _find_surrogate(value, field)
    except RecursionError:
        return _violation(reason, field, f"not valid JSON ({message}): {_show(text)}")
    if found is not None:
        return _violation(QuarantineReason.invalid_text, found, "lone surrogate (broken encoding)")
    return value  # valid JSON that msgspec declined (so far: none known); the other rules decide


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text}")
    return value


def _find_surrogate(value: Any, path: str) -> str | None:
    """JSON path of the first string (value or key) in `value` holding a lone surrogate."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if type(item) is str:
            if _SURROGATE.search(item):
                return where
        elif type(item) is dict:
            for key, sub in item.items():
                if _SURROGATE.search(key):
                    return where
                stack.append((sub, f"{where}.{key}"))
        elif type(item) is list:
            stack.extend((sub, f"{where}[{i}]") for i, sub in enumerate(item))
    return None


# --------------------------------------------------------------------------------------------------
# Invalid text: located only once the fast scan found something


def _has_bad_text(text: str) -> bool:
    """Whether `text` holds a character :data:`_BAD_TEXT` matches (ASCII text: a 4x faster byte scan)."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _GOOD_ASCII))
    return _BAD_TEXT.search(text) is not None


def _bad_text_violation(messages: list[dict[str, Any]], answer: dict[str, Any]) -> Violation:
    for field, text in _text_fields(messages, answer):
        match = _BAD_TEXT.search(text)
        if match is not None:
            at = match.start()
            context = text[max(0, at - 20) : at + 20]
            return _violation(
                QuarantineReason.invalid_text,
                field,
                f"character U+{ord(match.group()):04X} at offset {at}: {_show(context)}",
            )
    return _violation(QuarantineReason.invalid_text, "record", "invalid character in conversation text")


def _text_fields(messages: list[dict[str, Any]], answer: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(path, text) of every text the fast scan covers, in the same order (records already checked)."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if type(content) is str:
            yield f"request.messages[{i}].content", content
        elif type(content) is list:
            for j, part in enumerate(content):
                if part.get("type") == "text":
                    yield f"request.messages[{i}].content[{j}].text", part["text"]
        for k, call in enumerate(message.get("tool_calls") or ()):
            yield f"request.messages[{i}].tool_calls[{k}].function.arguments", call["function"]["arguments"]
    for k, call in enumerate(answer.get("tool_calls") or ()):
        arguments = call["function"]["arguments"]
        yield f"{_ANSWER}.tool_calls[{k}].function.arguments", arguments
        if "\\" in arguments:
            for text in _strings(_decode(arguments)):
                yield f"{_ANSWER}.tool_calls[{k}].function.arguments", text
    text = answer.get("content")
    if text:
        yield f"{_ANSWER}.content", text


# --------------------------------------------------------------------------------------------------
# Helpers


def _strings(value: Any) -> list[str]:
    """Every string (keys included) in a decoded JSON value."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            out.append(item)
        elif type(item) is dict:
            out.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return out


_KINDS = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}


def _kind(value: Any) -> str:
    """The JSON type name of a decoded value."""
    return "object" if isinstance(value, dict) else _KINDS.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """A short printable rendering of a found value for a violation's detail."""
    text = ascii(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _utf8_len(text: Any) -> int:
    if type(text) is str:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if isinstance(text, bytes | bytearray | memoryview):
        return len(text)
    return 0


def _violation(reason: QuarantineReason, field: str, detail: str) -> Violation:
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 3] + "..."
    return Violation(reason, field, detail)
