"""Log documents as sources hand them over: top-level fields kept as raw JSON, and the few readers of them.

Every log source yields records with a ``document`` (field name -> undecoded JSON) and the source's own
record id (:class:`flywheel.extract.sources.SourceRecord`). Sources that build records themselves (files,
the user's own, ``flywheel validate``, demo traffic) use :class:`RawRecord`; the routing fields are read
with the same functions the raw partition's writer uses, so a source filters exactly as it converts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec

UNPARSEABLE_FIELD = "unparseable_line"
"""The one field of a document made from a line that is not a JSON object: the line, as a JSON string.

A source that cannot decode a document it read (nested too deeply, too large to keep) keeps it the same
way, so that validation quarantines it with a reason instead of the read failing."""

UNPARSEABLE_REASON_FIELD = "unparseable_reason"
"""Beside :data:`UNPARSEABLE_FIELD` where a source knows why it could not keep the document as read: an
:class:`UnparseableReason`, which validation quarantines the record as."""

UNPARSEABLE_DETAIL_FIELD = "unparseable_detail"
"""Beside :data:`UNPARSEABLE_REASON_FIELD`: what was found, in words (the quarantine record's detail)."""

_UNPARSEABLE_FIELDS = frozenset({UNPARSEABLE_FIELD, UNPARSEABLE_REASON_FIELD, UNPARSEABLE_DETAIL_FIELD})


class UnparseableReason(StrEnum):
    """Why a source kept a document as unparseable; each is also a quarantine reason of the same name
    (:class:`flywheel.validate.records.QuarantineReason`)."""

    document_too_large = "document_too_large"
    """Larger than ``log_source.max_document_bytes``: only its first :data:`OPENING_BYTES` are kept."""
    document_too_deep = "document_too_deep"
    """Nested too deeply for the decoders (about 1,000 levels): its text is kept whole."""


TOO_DEEP = "nested too deeply to decode (about 1,000 levels or more)"
"""The detail of a document kept as :attr:`UnparseableReason.document_too_deep`."""

OPENING_BYTES = 1_000
"""How much of a document over ``max_document_bytes`` is kept, for the quarantine record to show."""


class RawRecord(msgspec.Struct, frozen=True):
    """One log document and its id in the source it was read from."""

    source_record_id: str
    document: dict[str, msgspec.Raw]


decode = msgspec.json.Decoder().decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


def decode_document(line: bytes) -> dict[str, msgspec.Raw]:
    """The top-level fields of a JSON object line; any other line is kept whole as :data:`UNPARSEABLE_FIELD`.

    Such a document has no timestamp or workload, so validation quarantines it with a reason and the
    quarantine record shows what the line held: a broken line is never dropped silently. A line nested
    deeper than the decoder's recursion limit (about 1,000 levels) is kept the same way, as
    :attr:`UnparseableReason.document_too_deep`: it must not fail the whole day's read on every retry.
    """
    try:
        return _decode_fields(line)
    except msgspec.DecodeError:
        return unparseable_document(_line_text(line))
    except RecursionError:
        return unparseable_document(_line_text(line), UnparseableReason.document_too_deep, TOO_DEEP)


def _line_text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def unparseable_document(
    text: str, reason: UnparseableReason | None = None, detail: str | None = None
) -> dict[str, msgspec.Raw]:
    """A document that only holds ``text`` (what was read) and, if known, why it could not be kept as read."""
    document = {UNPARSEABLE_FIELD: msgspec.Raw(_encode(text))}
    if reason is not None:
        document[UNPARSEABLE_REASON_FIELD] = msgspec.Raw(_encode(reason.value))
        document[UNPARSEABLE_DETAIL_FIELD] = msgspec.Raw(_encode(detail or reason.value))
    return document


def is_unparseable(document: dict[str, msgspec.Raw]) -> bool:
    """Whether ``document`` is one a source could not keep as read (:func:`unparseable_document`)."""
    return UNPARSEABLE_FIELD in document and document.keys() <= _UNPARSEABLE_FIELDS


def document_bytes(document: dict[str, msgspec.Raw]) -> int:
    """About the bytes of the document's JSON text: its field names and raw values."""
    return sum(len(key) + len(value) + 4 for key, value in document.items())


def too_large_document(opening: str, size: int, limit: int) -> dict[str, msgspec.Raw]:
    """The stand-in of a document of ``size`` bytes over ``log_source.max_document_bytes`` (``limit``):
    its ``opening`` text (at most :data:`OPENING_BYTES`) and why, for validation to quarantine."""
    detail = (
        f"document of {size} bytes is larger than log_source.max_document_bytes ({limit}); "
        f"only its first {OPENING_BYTES} bytes are kept"
    )
    return unparseable_document(opening, UnparseableReason.document_too_large, detail)


def within_budget(document: dict[str, msgspec.Raw], limit: int | None) -> tuple[dict[str, msgspec.Raw], int]:
    """``document``, or its stand-in (:func:`too_large_document`) when it takes more than ``limit`` bytes
    (None: no limit); and the bytes of the document as read (:func:`document_bytes`)."""
    size = document_bytes(document)
    if limit is None or size <= limit:
        return document, size
    return too_large_document(_opening(document, OPENING_BYTES), size, limit), size


def _opening(document: dict[str, msgspec.Raw], limit: int) -> str:
    """The first ``limit`` bytes of the document's JSON text, without copying the rest of it."""
    out = bytearray(b"{")
    for key, value in document.items():
        if len(out) >= limit:
            break
        out += _encode(key) + b":"
        out += memoryview(value)[: max(0, limit - len(out))]
        out += b","
    return bytes(out[:limit]).decode("utf-8", errors="replace")


def decode_or_none(raw: msgspec.Raw) -> Any:
    """The JSON value of one field; None when it is nested too deeply to decode here (validation, which
    decodes it again, quarantines such a record with a reason)."""
    try:
        return decode(raw)
    except RecursionError:
        return None


def as_text(raw: msgspec.Raw) -> str | None:
    """A routing field as text: strings as they are, JSON null as None, anything else as its JSON."""
    try:
        value = decode(raw)
    except RecursionError:
        return bytes(raw).decode()
    if value is None or isinstance(value, str):
        return value
    return bytes(raw).decode()


def epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds of a logged timestamp (ISO 8601 text or epoch millis); None if unreadable."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return int(value) if value.isdigit() else None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def field_epoch_ms(document: dict[str, msgspec.Raw], field: str) -> int | None:
    """Epoch milliseconds of the document's timestamp field; None when absent or unreadable."""
    raw = document.get(field)
    return None if raw is None else epoch_ms(decode_or_none(raw))


# Splitting JSON text into its members without recursion, for documents too deep for the decoders.

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(rb"[^ \t\r\n,\]}]+")
_BRACKET_OR_QUOTE = re.compile(rb'[\[\]{}"]')


def split_object(text: bytes) -> dict[str, msgspec.Raw]:
    """The members of a JSON object, each value its raw JSON text, found without recursion at any depth.

    msgspec (and every other decoder here) recurses once per level of nesting, so a value nested about
    1,000 levels deep raises ``RecursionError`` even when it is only skipped. This walks the text with
    a depth counter instead: slower, it is only used on what the fast decoders could not read. Raises
    ``ValueError`` when ``text`` is not a JSON object.
    """
    return {str(key): value for key, value in _items(text, b"{", b"}")}


def split_array(text: bytes) -> list[msgspec.Raw]:
    """The elements of a JSON array as raw JSON texts, found without recursion (see :func:`split_object`)."""
    return [value for _, value in _items(text, b"[", b"]")]


def _items(text: bytes, opening: bytes, closing: bytes) -> list[tuple[str | None, msgspec.Raw]]:
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != opening:
        raise ValueError(f"expected {opening.decode()!r} at offset {pos}")
    items: list[tuple[str | None, msgspec.Raw]] = []
    pos = _skip_space(text, pos + 1)
    if text[pos : pos + 1] == closing:
        return items
    while True:
        key = None
        if opening == b"{":
            key_end = _match(_STRING, text, pos)
            key = decode(text[pos:key_end])
            pos = _skip_space(text, key_end)
            if text[pos : pos + 1] != b":":
                raise ValueError(f"expected ':' at offset {pos}")
            pos = _skip_space(text, pos + 1)
        end = _value_end(text, pos)
        items.append((key, msgspec.Raw(text[pos:end])))
        pos = _skip_space(text, end)
        separator = text[pos : pos + 1]
        if separator == closing:
            return items
        if separator != b",":
            raise ValueError(f"expected ',' or {closing.decode()!r} at offset {pos}")
        pos = _skip_space(text, pos + 1)


def _value_end(text: bytes, pos: int) -> int:
    """Offset just past the JSON value starting at ``pos``: brackets are counted, never recursed into."""
    first = text[pos : pos + 1]
    if first == b'"':
        return _match(_STRING, text, pos)
    if first not in (b"{", b"["):
        return _match(_SCALAR, text, pos)
    depth = 0
    while True:
        found = _BRACKET_OR_QUOTE.search(text, pos)
        if found is None:
            raise ValueError(f"unterminated JSON value at offset {pos}")
        char = found.group()
        if char == b'"':
            pos = _match(_STRING, text, found.start())
            continue
        pos = found.end()
        depth += 1 if char in (b"{", b"[") else -1
        if depth == 0:
            return pos


def _match(pattern: re.Pattern[bytes], text: bytes, pos: int) -> int:
    found = pattern.match(text, pos)
    if found is None:
        raise ValueError(f"invalid JSON at offset {pos}")
    return found.end()


def _skip_space(text: bytes, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
