"""PII scrubbing: e-mail addresses, phone numbers, payment card numbers and IP addresses.

Training data must not carry customers' contact or payment details, and it must not be corrupted
either: an order number, a SKU, a tracking number, a date or a price that gets replaced by a
placeholder teaches the student model to invent identifiers. The detectors therefore put precision
first: a phone number needs separators or a leading ``+``, a card number needs both the Luhn check and
a real issuer prefix, an IPv4 address is exactly four dotted octets, an IPv6 address must parse.

Replacements are consistent within one conversation (:class:`Placeholders`): the same value always
becomes the same placeholder (``<EMAIL_1>``, ``<PHONE_2>``, ...), so a tool call that repeats the
customer's e-mail still repeats it after scrubbing, and the model still learns to copy it.

Most texts contain no PII, so each detector runs only when a cheap test on the text says it could
match (an ``@``; enough digits; ``::`` or six colons); typical demo conversations scrub at well over
50,000 per second on one core.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

import orjson

__all__ = ["PiiKind", "PiiScrubber", "Placeholders"]


class PiiKind(StrEnum):
    """Kinds of PII the scrubber detects; the value names the kind in counts and configuration."""

    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    IP = "ip"


_PLACEHOLDER = re.compile(r"<(EMAIL|PHONE|CARD|IP)_([1-9][0-9]{0,8})>")
"""A placeholder this module writes (or one already present in the data)."""


class Placeholders:
    """Consistent placeholders within one conversation.

    The same value always gets the same placeholder (``<EMAIL_1>``, ``<PHONE_2>``, ...), numbered from
    1 per kind in order of first appearance, so a tool call that repeats the user's e-mail still
    repeats it after scrubbing. Values are compared normalised: e-mails case-insensitively, phone and
    card numbers by their digits, IP addresses by their canonical form.

    ``counts`` holds how many occurrences were replaced per kind (``Counter({"email": 2})`` for one
    address written twice); ``distinct`` how many different values per kind got a placeholder.
    Placeholders that the data already contains (text scrubbed earlier) are never handed out again
    for another value.
    """

    __slots__ = ("_assigned", "_clash", "_issued", "_next", "_taken", "counts", "replaced")

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.counts: Counter[str] = Counter()
        self.replaced = 0  # occurrences replaced so far, all kinds together
        self._assigned: dict[tuple[str, str], str] = {}
        self._next: dict[str, int] = {}
        self._taken: set[str] = set(reserved)
        self._issued: set[str] = set()
        self._clash = False

    def placeholder(self, kind: PiiKind, key: str) -> str:
        """The placeholder of the normalised value `key` of `kind` (allocated on first use); counted."""
        kind_name = kind.value
        self.counts[kind_name] += 1
        self.replaced += 1
        slot = (kind_name, key)
        text = self._assigned.get(slot)
        if text is None:
            number = self._next.get(kind_name, 0)
            tag = kind_name.upper()
            while True:
                number += 1
                text = f"<{tag}_{number}>"
                if text not in self._taken:
                    break
            self._next[kind_name] = number
            self._assigned[slot] = text
            self._issued.add(text)
        return text

    @property
    def distinct(self) -> Counter[str]:
        """How many different values got a placeholder, per kind."""
        return Counter(kind_name for kind_name, _ in self._assigned)

    def reserve(self, text: str) -> None:
        """Note the placeholders already present in `text`, so no other value gets them."""
        for match in _PLACEHOLDER.finditer(text):
            found = match.group()
            if found in self._issued:
                self._clash = True  # handed out before it was seen: the caller redoes the conversation
            self._taken.add(found)


# --------------------------------------------------------------------------------------------------
# Detectors. Each finds candidates (a regex, or a scan around "@") and checks them; a check returns the
# normalised value (the placeholder key) or None to leave the candidate alone. The regexes start with
# the character class of their first character, so the regex engine can skip ahead quickly; the
# boundary lookbehinds therefore span that first character too.

_EMAIL_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_%+-.")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*")
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})"
    r"(?![\w\-])(?!\.[A-Za-z0-9])(?!:[\w/~.\-<])"
)
# "logo@2x.png" is a file name and "git@github.com:org/repo" an SSH remote (scp syntax), not addresses.
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf"})


def _replace_emails(text: str, placeholders: Placeholders) -> str:
    """Replace local@domain.tld addresses; the scan starts from each "@", which is rare in text."""
    pieces: list[str] = []
    done = 0
    at = text.find("@")
    while at != -1:
        start = at
        while start > done and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        # Right after an address just replaced, the text will read "<EMAIL_1>": judge by that ">".
        before = ">" if pieces and start == done else text[start - 1] if start > 0 else " "
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if (
            domain is not None
            and not (before.isalnum() or before in "_%+-")
            and at - start <= 64
            and _EMAIL_LOCAL.fullmatch(text, start, at) is not None
            and domain.group(1).lower() not in _FILE_SUFFIXES
        ):
            pieces.append(text[done:start])
            pieces.append(placeholders.placeholder(PiiKind.EMAIL, text[start : domain.end()].lower()))
            done = domain.end()
            at = text.find("@", done)
        else:
            at = text.find("@", at + 1)
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


# 13-19 digits, contiguous or in groups joined by one consistent separator (4-4-4-4, 4-6-5, ...);
# not glued to letters, digits, a "+" (that is a phone number) or a decimal point.
_CARD = re.compile(
    r"[0-9](?<![\w+][0-9])(?<![\w][.,/\-][0-9])"
    r"(?:[0-9]{3}(?P<sep>[ \-])[0-9]{3,6}(?:(?P=sep)[0-9]{1,6}){1,3}|[0-9]{12,18})"
    r"(?!\w)(?![.,/\-]\w)"
)


def _luhn(digits: str) -> bool:
    total = 0
    double = False
    for char in reversed(digits):
        value = ord(char) - 48
        if double:
            value *= 2
            if value > 9:
                value -= 9
        total += value
        double = not double
    return total % 10 == 0


def _issuer_fits(digits: str) -> bool:
    """Whether `digits` starts with a real card issuer's prefix and has that issuer's length."""
    length = len(digits)
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if four == 6011 or two == 65 or 644 <= three <= 649:  # Discover
        return 16 <= length <= 19
    if 3528 <= four <= 3589:  # JCB
        return 16 <= length <= 19
    if 300 <= three <= 305 or two in (36, 38):  # Diners Club
        return 14 <= length <= 19
    return False


def _is_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _issuer_fits(digits) and _luhn(digits)


def _replace_cards(text: str, placeholders: Placeholders) -> str:
    def substitute(match: re.Match[str]) -> str:
        found = match.group()
        sep = match.group("sep")
        if sep is None:
            return placeholders.placeholder(PiiKind.CARD, found) if _is_card(found) else found
        # Grouped: the longest leading groups that form a card ("4111 1111 1111 1111 2027": card, year).
        groups = found.split(sep)
        for end in range(len(groups), 2, -1):
            digits = "".join(groups[:end])
            if _is_card(digits):
                rest = found[len(sep.join(groups[:end])) :]
                return placeholders.placeholder(PiiKind.CARD, digits) + rest
        return found

    return _CARD.sub(substitute, text)


# Four dotted groups of 1-3 digits, not part of a longer dotted number ("1.2.3.4.5") or a word ("v1.2.3.4").
_IPV4_SOURCE = r"[0-9](?<![\w.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\w)(?!\.\w)"
_IPV4 = re.compile(_IPV4_SOURCE)


def _ipv4_key(match: re.Match[str]) -> str | None:
    for octet in match.group().split("."):
        if (octet[0] == "0" and len(octet) > 1) or int(octet) > 255:
            return None
    return match.group()


# Candidates: hex digits and colons, a colon within the first five characters, optionally ending in
# dotted IPv4; ipaddress decides, so "10:30:00" and MAC addresses stay.
_IPV6_SOURCE = (
    r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f]{0,3}:[0-9A-Fa-f:]{0,37}"
    r"(?:(?<=:)(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?![\w:])(?!\.[0-9])"
)
# Both in one pass, so IP placeholders are numbered in order of appearance and "::ffff:192.0.2.128"
# stays one address.
_IP = re.compile(rf"(?P<v6>{_IPV6_SOURCE})|{_IPV4_SOURCE}")


def _ip_key(match: re.Match[str]) -> str | None:
    text = match.group()
    if match.group("v6") is None:
        return _ipv4_key(match)
    if sum(1 for group in text.split(":") if group) < 2:  # "::", "::1": not a real address
        return None
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        return None


# A run of digit groups joined by one separator each (space, dot, dash, parentheses), optionally led
# by "+". Nothing glued to it: no letters or digits around, no "-12" / ":30" / "/11" / "-BL" continuing
# it, so a piece of a date, time, SKU or order id never becomes a candidate. A space may end a run
# ("555-123-4567 8am-6pm" yields "555-123-4567"); a run that is not a phone number as a whole is tried
# again in space-separated windows (:func:`_phone_windows`).
_PHONE = re.compile(
    r"[+(0-9](?<![\w+][+(0-9])(?<![0-9][.,:/\-][+(0-9])(?<![^\W\d][\-/][+(0-9])"
    r"(?:(?<=\+)\(?[0-9]|(?<=\()[0-9]|(?<=[0-9]))[0-9]*(?:(?:\)[ .\-]?|[ .\-]\(?)[0-9]+)*\)?"
    r"(?![\w(])(?!\)?[.\-]\(?[0-9])(?!\)[0-9])(?![.,:/][0-9])(?![\-/][^\W\d])"
)
_DIGIT_GROUPS = re.compile(r"[0-9]+")
_SEPARATORS = re.compile(r"[^0-9]+")
_DATE_INSIDE = re.compile(
    r"(?<![0-9])(?:[0-9]{4}[\-./][0-9]{1,2}[\-./][0-9]{1,2}|[0-9]{1,2}[\-./][0-9]{1,2}[\-./][0-9]{4})(?![0-9])"
)


def _phone_key(run: str) -> str | None:
    """The normalised number if the candidate `run` is a phone number as a whole, else None."""
    opening = run.count("(")
    if opening != run.count(")") or opening > 1:
        return None
    groups = _DIGIT_GROUPS.findall(run)
    digits = "".join(groups)
    length = len(digits)
    if run[0] == "+":  # E.164: country code and subscriber number, any grouping
        if not 8 <= length <= 15 or digits[0] == "0" or _DATE_INSIDE.search(run):
            return None
        return "+" + digits
    if len(groups) < 2:  # a plain digit run: order, tracking or account number
        return None
    in_parens = -1
    if opening:
        inside = run[run.index("(") + 1 : run.index(")")]
        if not inside.isdigit():
            return None
        in_parens = groups.index(inside)
    lengths = [len(group) for group in groups]
    if lengths == [3, 3, 4] and digits[0] not in "01" and in_parens in (-1, 0):  # (555) 123-4567
        return digits
    if lengths == [1, 3, 3, 4] and digits[0] == "1" and digits[1] not in "01" and in_parens in (-1, 1):
        return digits  # 1-800-555-0199
    if digits[0] != "0" or not 9 <= length <= 17 or in_parens > 0:
        return None
    separators = {sep.strip("()") or "()" for sep in _SEPARATORS.findall(run.strip("()"))}
    if len(separators) != 1:
        return None
    if digits[1] == "0":  # 0044 20 7946 0958: international prefix instead of "+"
        return "+" + digits[2:] if 10 <= length <= 17 and digits[2] != "0" else None
    # National number with a trunk prefix: 020 7946 0958, 01 23 45 67 89, 030 12345678, (030) 1234567.
    if length > 12 or not 2 <= lengths[0] <= 5 or any(not 2 <= size <= 8 for size in lengths[1:]):
        return None
    if len(groups) == 2 and (lengths[1] < 6 or separators not in ({" "}, {"()"})):
        return None  # "01234-5678" is a ZIP+4 code
    if lengths[:3] in ([2, 2, 4], [4, 2, 2]):  # 01.02.2026 ...
        return None
    return digits


def _phone_windows(run: str, placeholders: Placeholders) -> str:
    """Phone numbers among the space-separated chunks of a run that is none as a whole.

    For "order 12345 555-123-4567" or "555-123-4567 2 days"; the longest window wins. A window of
    groups joined only by spaces counts only at the start of the run, so "10 000 000 000" never
    yields "000 000 000".
    """
    chunks = run.split(" ")
    pieces: list[str] = []
    start = 0
    while start < len(chunks):
        for end in range(min(len(chunks), start + 5), start, -1):
            window = " ".join(chunks[start:end])
            if start > 0 and window[0] != "+" and not any(sep in window for sep in ".-()"):
                continue
            key = _phone_key(window)
            if key is not None:
                pieces.append(placeholders.placeholder(PiiKind.PHONE, key))
                start = end
                break
        else:
            pieces.append(chunks[start])
            start += 1
    return " ".join(pieces)


def _replace_phones(text: str, placeholders: Placeholders) -> str:
    def substitute(match: re.Match[str]) -> str:
        run = match.group()
        key = _phone_key(run)
        if key is not None:
            return placeholders.placeholder(PiiKind.PHONE, key)
        return _phone_windows(run, placeholders) if " " in run else run

    return _PHONE.sub(substitute, text)


_DIGITS = b"0123456789"


def _has_digit(text: str) -> bool:
    return (
        "0" in text or "1" in text or "2" in text or "3" in text or "4" in text
        or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text
    )  # fmt: skip


def _count_digits(text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    return len(data) - len(data.translate(None, _DIGITS))


def _may_hold_ipv6(text: str) -> bool:
    # Compressed ("::"), or eight groups (six with a dotted IPv4 tail).
    return ":" in text and ("::" in text or text.count(":") >= 6)


def _replace(
    pattern: re.Pattern[str],
    text: str,
    kind: PiiKind,
    key_of: Callable[[re.Match[str]], str | None],
    placeholders: Placeholders,
) -> str:
    def substitute(match: re.Match[str]) -> str:
        key = key_of(match)
        return match.group() if key is None else placeholders.placeholder(kind, key)

    return pattern.sub(substitute, text)


class PiiScrubber:
    """Replaces e-mail addresses, phone numbers, card numbers and IP addresses by placeholders.

    `kinds` picks the detectors (all by default); names are :class:`PiiKind` values ("email", ...).
    The scrubber holds no state and may be shared between threads; the per-conversation state lives
    in :class:`Placeholders`.
    """

    def __init__(self, kinds: Iterable[PiiKind | str] = tuple(PiiKind)) -> None:
        if isinstance(kinds, str):  # one name
            kinds = (kinds,)
        chosen = {PiiKind(str(kind).lower()) for kind in kinds}
        self.kinds: frozenset[PiiKind] = frozenset(chosen)
        self._email = PiiKind.EMAIL in chosen
        self._card = PiiKind.CARD in chosen
        self._ip = PiiKind.IP in chosen
        self._phone = PiiKind.PHONE in chosen
        self._digits = self._card or self._ip or self._phone

    def __repr__(self) -> str:
        return f"PiiScrubber(kinds={sorted(kind.value for kind in self.kinds)})"

    def could_contain(self, text: str) -> bool:
        """Cheap test: False means `text` certainly holds no PII of the enabled kinds."""
        return (
            (self._email and "@" in text)
            or (self._digits and _has_digit(text))
            or (self._ip and _may_hold_ipv6(text))
        )

    def scrub_text(self, text: str, placeholders: Placeholders) -> str:
        """`text` with every detected value replaced by its placeholder (placeholders stay as they are).

        Order: e-mails, cards, IP addresses, phone numbers; each detector runs only when a cheap test
        on the text allows a match (an "@"; at least 13 digits; "::", six colons or four digits and
        three dots; at least 8 digits). A text in which something was replaced is scrubbed again until
        nothing changes: a value glued to another one ("...0958+44 20 7946 0958") is only recognised
        once its neighbour has become a placeholder, and scrubbing twice must change nothing.
        """
        if "<" in text:
            placeholders.reserve(text)
        before = placeholders.replaced
        text = self._scrub_once(text, placeholders)
        for _ in range(8):
            if placeholders.replaced == before:
                break
            before = placeholders.replaced
            text = self._scrub_once(text, placeholders)
        return text

    def _scrub_once(self, text: str, placeholders: Placeholders) -> str:
        if self._email and "@" in text:
            text = _replace_emails(text, placeholders)
        digits = _count_digits(text) if self._digits and _has_digit(text) else 0
        if self._card and digits >= 13:
            text = _replace_cards(text, placeholders)
        if self._ip:
            if _may_hold_ipv6(text):
                text = _replace(_IP, text, PiiKind.IP, _ip_key, placeholders)
            elif digits >= 4 and text.count(".") >= 3:
                text = _replace(_IPV4, text, PiiKind.IP, _ipv4_key, placeholders)
        if self._phone and digits >= 8:
            text = _replace_phones(text, placeholders)
        return text

    def scrub_value(self, value: Any, placeholders: Placeholders) -> Any:
        """Strings scrubbed, dicts/lists walked recursively (keys kept), other values unchanged.

        Dicts and lists are always new objects; `value` itself is never modified.
        """
        if isinstance(value, str):
            return self.scrub_text(value, placeholders)
        if isinstance(value, dict):
            return {key: self.scrub_value(item, placeholders) for key, item in value.items()}
        if isinstance(value, list):
            return [self.scrub_value(item, placeholders) for item in value]
        return value

    def scrub_conversation(
        self, messages: list[dict], arguments: list[dict], content: str | None
    ) -> tuple[list[dict], list[dict], str | None, Counter[str]]:
        """Scrub one logged exchange with one set of placeholders.

        Covers message contents (a string, or a list of content parts whose "text" is scrubbed), the
        argument strings of assistant tool calls in the history (parsed as JSON and written back
        compact when something was replaced; scrubbed as text when they do not parse), tool messages,
        the answer's tool-call arguments (`arguments`: already parsed dicts) and the answer text
        `content`. Placeholders are numbered in that order of appearance.

        Returns new messages, new arguments, the new content and the replacements per kind
        (``Counter({"email": 2, "phone": 1})``). The inputs are not modified; every message dict,
        content part, tool call and arguments dict in the result is a new object.
        """
        placeholders = Placeholders()
        result = self._scrub_conversation(messages, arguments, content, placeholders)
        if placeholders._clash:  # the data already held a placeholder that was handed out again
            placeholders = Placeholders(placeholders._taken)
            result = self._scrub_conversation(messages, arguments, content, placeholders)
        return (*result, placeholders.counts)

    # ----------------------------------------------------------------------------------------------

    def _scrub_conversation(
        self, messages: list[dict], arguments: list[dict], content: str | None, placeholders: Placeholders
    ) -> tuple[list[dict], list[dict], str | None]:
        new_messages = [self._scrub_message(message, placeholders) for message in messages]
        new_arguments = [self.scrub_value(item, placeholders) for item in arguments]
        new_content = self.scrub_text(content, placeholders) if isinstance(content, str) else content
        return new_messages, new_arguments, new_content

    def _scrub_message(self, message: Any, placeholders: Placeholders) -> Any:
        if not isinstance(message, dict):
            return message
        scrubbed = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            if message.get("role") == "tool" and content[:1] in ("{", "["):
                scrubbed["content"] = self._scrub_json_text(content, placeholders)  # a JSON tool result
            else:
                scrubbed["content"] = self.scrub_text(content, placeholders)
        elif isinstance(content, list):
            scrubbed["content"] = [self._scrub_part(part, placeholders) for part in content]
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            scrubbed["tool_calls"] = [self._scrub_call(call, placeholders) for call in calls]
        return scrubbed

    def _scrub_part(self, part: Any, placeholders: Placeholders) -> Any:
        if not isinstance(part, dict):
            return self.scrub_text(part, placeholders) if isinstance(part, str) else part
        scrubbed = dict(part)
        text = part.get("text")
        if isinstance(text, str):
            scrubbed["text"] = self.scrub_text(text, placeholders)
        return scrubbed

    def _scrub_call(self, call: Any, placeholders: Placeholders) -> Any:
        if not isinstance(call, dict):
            return call
        scrubbed = dict(call)
        function = call.get("function")
        if isinstance(function, dict):
            function = scrubbed["function"] = dict(function)
            raw = function.get("arguments")
            if isinstance(raw, str):
                function["arguments"] = self._scrub_json_text(raw, placeholders)
            elif isinstance(raw, (dict, list)):
                function["arguments"] = self.scrub_value(raw, placeholders)
        return scrubbed

    def _scrub_json_text(self, raw: str, placeholders: Placeholders) -> str:
        """Scrub JSON text (tool-call arguments, a tool result) through its parsed values.

        Escapes such as "\\n" then cannot hide a value. The text is written back compact only when
        something was replaced; text that does not parse is scrubbed as text.
        """
        if not self.could_contain(raw):
            return raw
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.scrub_text(raw, placeholders)
        before = placeholders.replaced
        scrubbed = self.scrub_value(parsed, placeholders)
        if placeholders.replaced == before:
            return raw  # keep the original spelling when nothing changed
        return orjson.dumps(scrubbed).decode()
