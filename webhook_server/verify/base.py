"""Shared types of the verification schemes.

Every provider module exposes two pure functions:

``verify(headers, body, secrets, settings, now) -> Verified | Rejected``
    ``headers`` is a case-insensitive mapping, ``body`` the raw bytes, ``secrets`` the values valid
    right now (current and, during a rotation's grace period, previous) as bytes exactly as stored
    in the Secret, ``now`` a unix timestamp. No I/O, no clock.

``sign(body, secret, settings, now, event_id) -> dict[str, str]``
    the headers that provider would send for ``body``; used by ``dfm send`` and the tests.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from webhook_server.config import VerificationConfig


class Reason(enum.StrEnum):
    """Why a request was refused. A closed set: these are metric label values."""

    MISSING_HEADER = "missing_header"
    MALFORMED = "malformed"
    STALE_TIMESTAMP = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"
    NO_SECRET = "no_secret"
    MISSING_TOKEN = "missing_token"
    BAD_TOKEN = "bad_token"
    # Not a verdict on the request: what it needs to be checked (the JWKS) is out of reach for
    # now. Answered 503 so the sender retries, and never counted as a signature failure.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Verified:
    """The request is authentic; ``event_id`` is the provider's delivery or event id, if any."""

    event_id: str | None = None
    event_type: str | None = None
    # Set when the provider expects an immediate answer instead of a stored event
    # (Slack's url_verification handshake).
    challenge: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    # A short, generic explanation that is safe to show the caller (never a secret or signature).
    detail: str = ""


Result = Verified | Rejected


class Verifier(Protocol):
    def __call__(
        self,
        headers: Mapping[str, str],
        body: bytes,
        secrets: Sequence[bytes],
        settings: VerificationConfig,
        now: float,
    ) -> Result: ...


class Signer(Protocol):
    def __call__(
        self,
        body: bytes,
        secret: bytes,
        settings: VerificationConfig,
        now: float,
        event_id: str | None,
    ) -> dict[str, str]: ...


def constant_time_any(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """True when any given signature equals any expected one; compares every pair in constant time.

    All pairs are compared (no early exit) so timing reveals neither which secret nor which
    signature matched.
    """
    matched = False
    for e in expected:
        for g in given:
            matched |= hmac.compare_digest(e, g)
    return matched


def hmac_digest(secret: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).digest()


# Unix time in seconds has 10 digits until 2286, in milliseconds 13. Anything longer is malformed
# (and a number of thousands of digits is costly to parse).
MAX_TIMESTAMP_DIGITS = 15


def is_timestamp(raw: str) -> bool:
    """Whether ``raw`` is a plausible unix timestamp: ASCII digits, and not absurdly many."""
    return 0 < len(raw) <= MAX_TIMESTAMP_DIGITS and raw.isascii() and raw.isdigit()


def within_tolerance(timestamp: float, now: float, tolerance_seconds: int) -> bool:
    return abs(now - timestamp) <= tolerance_seconds


# What a body or header that is not JSON, or too deeply nested to parse, raises from json.loads.
# Nesting is bounded by the interpreter's recursion limit (about 1,000 levels): deeper input raises
# RecursionError, which is caught like any other parse failure and never reaches the caller.
JSON_ERRORS = (ValueError, UnicodeDecodeError, RecursionError)


def json_object(body: bytes | str) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (or nests too deeply to parse)."""
    try:
        value = json.loads(body)
    except JSON_ERRORS:
        return None
    return value if isinstance(value, dict) else None


def header_bytes(value: str) -> bytes:
    """A header value as the bytes the sender sent: aiohttp decodes header bytes as UTF-8 with
    ``surrogateescape``, so bytes that were not UTF-8 come back exactly instead of raising."""
    return value.encode("utf-8", "surrogateescape")


def string_field(obj: Mapping[str, Any] | None, *path: str) -> str | None:
    """A nested string (or integer) field of a JSON object, as a string."""
    current: Any = obj
    for part in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    if isinstance(current, bool) or current is None:
        return None
    if isinstance(current, str | int):
        return str(current)
    return None
