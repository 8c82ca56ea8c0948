"""Log documents as sources hand them over: top-level fields kept as raw JSON, and the few readers of them.

Every log source yields records with a ``document`` (field name -> undecoded JSON) and the source's own
record id (:class:`flywheel.extract.sources.SourceRecord`). Sources that build records themselves (files,
the user's own, ``flywheel validate``, demo traffic) use :class:`RawRecord`; the routing fields are read
with the same functions the raw partition's writer uses, so a source filters exactly as it converts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

UNPARSEABLE_FIELD = "unparseable_line"
"""The one field of a document made from a line that is not a JSON object: the line, as a JSON string."""


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
    quarantine record shows what the line held: a broken line is never dropped silently.
    """
    try:
        return _decode_fields(line)
    except msgspec.DecodeError:
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        return {UNPARSEABLE_FIELD: msgspec.Raw(_encode(text))}


def as_text(raw: msgspec.Raw) -> str | None:
    """A routing field as text: strings as they are, JSON null as None, anything else as its JSON."""
    value = decode(raw)
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
    return None if raw is None else epoch_ms(decode(raw))
