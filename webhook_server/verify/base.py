"""Shared types of the verification schemes.

Every provider module exposes two pure functions:

``verify(headers, body, secrets, settings, now, query="") -> Verified | Rejected``
    ``headers`` is a case-insensitive mapping, ``body`` the raw bytes, ``secrets`` the values valid
    right now (current and, during a rotation's grace period, previous) as bytes exactly as stored
    in the Secret, ``now`` a unix timestamp, ``query`` the request's query string exactly as sent
    (percent-encoding kept, without the ``?``; schemes that sign the URL need it). No I/O, no clock.

``sign(body, secret, settings, now, event_id) -> dict[str, str]``
    the headers that provider would send for ``body``; used by ``dfm send`` and the tests.

``sample(now, event_id) -> (body, event id)``
    a plausible delivery of that provider, for ``dfm send``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
    # A one-time value (Mailgun's token) seen before with another event: a captured signature
    # re-used for a body of the replayer's choosing. Decided by the store, not the verifier.
    REPLAYED = "replayed"
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
    # How many provider events the body holds, for providers that post batches (SendGrid,
    # Mandrill); None for one event per request.
    event_count: int | None = None
    # A signed one-time value the store must refuse to see again with another event before
    # ``replay_until`` (unix time): Mailgun signs a token and a timestamp, not the body.
    replay_key: str | None = None
    replay_until: float | None = None


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
        query: str = "",
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


class Sampler(Protocol):
    def __call__(self, now: float, event_id: str | None) -> tuple[bytes, str]: ...


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
    # hmac.digest with a name is OpenSSL's one-shot HMAC: a fraction of hmac.new's cost.
    return hmac.digest(secret, message, algorithm)


# Unix time in seconds has 10 digits until 2286, in milliseconds 13. Anything longer is malformed
# (and a number of thousands of digits is costly to parse).
MAX_TIMESTAMP_DIGITS = 15


def is_timestamp(raw: str) -> bool:
    """Whether ``raw`` is a plausible unix timestamp: ASCII digits, and not absurdly many."""
    return 0 < len(raw) <= MAX_TIMESTAMP_DIGITS and raw.isascii() and raw.isdigit()


def within_tolerance(timestamp: float, now: float, tolerance_seconds: int) -> bool:
    return abs(now - timestamp) <= tolerance_seconds


def base64_signature(value: str, header: str, length: int | None = None) -> bytes | Rejected:
    """A signature header's value, decoded: malformed unless it is base64 (of ``length`` bytes,
    where the scheme fixes the length)."""
    try:
        signature = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a character that is not ASCII
        return Rejected(Reason.MALFORMED, f"malformed {header} header")
    if length is not None and len(signature) != length:
        return Rejected(Reason.MALFORMED, f"malformed {header} header")
    return signature


def base64_header(headers: Mapping[str, str], name: str) -> bytes | Rejected:
    """The signature a provider sends base64-encoded, alone, in the header ``name``."""
    value = headers.get(name, "").strip()
    if not value:
        return Rejected(Reason.MISSING_HEADER, f"missing {name} header")
    return base64_signature(value, name)


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


def event_from_body(
    body: bytes, event_id: str | None = None, event_type: str | None = None
) -> Verified:
    """The event the headers named (``event_id``, ``event_type``; None or empty when absent),
    with the body's ``id`` and ``type`` for what they did not name.

    This parses the body, so a caller whose headers named both answers without it."""
    event = json_object(body)
    return Verified(
        event_id=event_id or string_field(event, "id"),
        event_type=event_type or string_field(event, "type"),
    )


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


# -- batches (SendGrid, Mandrill) --------------------------------------------------------------

# Longer than any list of SendGrid's or Mandrill's event kinds; past it (or with odd kinds) a
# batch's type is "batch".
MAX_TYPE_CHARS = 200
BATCH = "batch"


def batch_type(kinds: set[str]) -> str:
    """The kinds of a batch as one event type: sorted, comma-separated; ``batch`` when that would
    be too long or a kind is not a plain word."""
    joined = ",".join(sorted(kinds))
    plain = all(kind and kind.replace("_", "").replace("-", "").isalnum() for kind in kinds)
    return joined if kinds and plain and len(joined) <= MAX_TYPE_CHARS else BATCH


def describe_batch(events: Any, kind_field: str, event_id: str) -> Verified:
    """A batch: stored once under ``event_id`` (a hash of what was signed), with its size and
    kinds; a body that is not a list is stored uncounted."""
    if not isinstance(events, list):
        return Verified(event_id=event_id)
    kinds = {
        e[kind_field] for e in events if isinstance(e, dict) and isinstance(e.get(kind_field), str)
    }
    return Verified(event_id=event_id, event_type=batch_type(kinds), event_count=len(events))


def body_digest(body: bytes) -> str:
    """The id of an event known by its bytes alone: ``sha256:`` and the body's hex SHA-256."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


# -- samples (for ``dfm send``) ------------------------------------------------------------------


def compact_json(value: Any) -> bytes:
    """JSON as providers send it: no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def iso_time(now: float) -> str:
    """``now`` as an RFC 3339 UTC time with a ``Z``."""
    return datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")


def generic_sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A minimal ``{"id", "type"}`` event, for schemes with no body of their own (hmac, jwt)."""
    given = event_id
    event_id = given or f"evt_{uuid.uuid4().hex}"
    body: dict[str, object] = {"id": event_id, "type": "sample.event"}
    if given is None:
        body["created"] = int(now)
    return compact_json(body), event_id
