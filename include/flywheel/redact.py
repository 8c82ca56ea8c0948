"""Credentials kept out of what the flywheel writes: URLs and storage options with their secrets removed.

A URL's ``user:password@`` and secret-looking query parameters (``token``, ``key``, ``X-Amz-Signature``
...) would otherwise reach ``error.json``, results, reports, logs and alerts wherever an endpoint URL or
an artifact URI is shown; storage options with a ``secret`` or ``token`` would reach pod specs and XCom.
The configuration refuses credentials in URLs (:func:`url_credentials`); :func:`redact_text` is the
second line of defence for free text such as an exception's message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

REDACTED = "***"

SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "signature",
    "apikey",
    "api_key",
    "api-key",
    "private",
)
"""A query parameter or storage option whose name contains one of these holds a secret."""

SECRET_NAMES = frozenset({"key", "sig", "auth", "authorization", "pass", "pwd", "account_key"})
"""Short names that hold secrets as a whole name (``key`` of s3fs, ``sig`` of an Azure SAS URL)."""

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or option called ``name`` holds a secret (case-insensitive)."""
    lowered = name.lower()
    return lowered in SECRET_NAMES or any(word in lowered for word in SECRET_WORDS)


def url_credentials(url: str) -> list[str]:
    """What in ``url`` is a credential: ``userinfo`` and the names of secret query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = ["user:password@"] if "@" in parts.netloc else []
    found += [name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if is_secret_name(name)]
    return found


def redact_url(url: str) -> str:
    """``url`` with its ``userinfo`` and secret query parameter values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{name}={REDACTED}" if is_secret_name(name) else piece
        for piece in parts.query.split("&")
        if piece
        for name in [piece.split("=", 1)[0]]
    )
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        rebuilt += f"?{query}"
    if parts.fragment:
        rebuilt += f"#{parts.fragment}"
    return rebuilt


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted (:func:`redact_url`); the rest unchanged."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def split_secret_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Storage options split into (plain, secret): top-level keys named like secrets
    (:func:`is_secret_name`) and any key holding a nested mapping with one (``client_kwargs`` ...)."""
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for name, value in options.items():
        if is_secret_name(name) or (isinstance(value, Mapping) and _has_secret(value)):
            secret[name] = value
        else:
            plain[name] = value
    return plain, secret


def _has_secret(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(is_secret_name(str(k)) or _has_secret(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_secret(v) for v in value)
    return False
