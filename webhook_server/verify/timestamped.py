"""Public-key signatures over a timestamp and the body: what SendGrid and Telnyx send.

Both send a base64 signature over ``{timestamp}{separator}{body}`` in one header and the unix
timestamp in another, and both are checked with the account's public keys
(``verification.publicKey``; several for a key change, any may verify). They differ in the key
type, the separator and whether the signature has a fixed length: a :class:`TimestampedScheme`
names those, :func:`check` does the rest. The timestamp is signed, so it is held to the tolerance,
once the signature has verified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    base64_signature,
    header_bytes,
    is_timestamp,
    within_tolerance,
)

Key = TypeVar("Key")


@dataclass(frozen=True, slots=True)
class TimestampedScheme(Generic[Key]):
    signature_header: str
    timestamp_header: str
    # The public keys in ``verification.publicKey``; raises ValueError when there is none usable.
    load_keys: Callable[[str], Sequence[Key]]
    # Whether ``key`` verifies the signature over the message; False (never an exception) for a
    # signature that is wrong or not even well-formed for the key type.
    verifies: Callable[[Key, bytes, bytes], bool]
    # What stands between the timestamp and the body in the signed message.
    separator: bytes = b""
    # The signature's length in bytes, where the key type fixes it; another length is malformed.
    signature_bytes: int | None = None

    def signed(self, timestamp: str, body: bytes) -> bytes:
        return header_bytes(timestamp) + self.separator + body

    def public_key_problem(self, text: str) -> str | None:
        """Why ``text`` holds no public key this scheme can use, else None."""
        try:
            self.load_keys(text)
        except ValueError as exc:
            return str(exc)
        return None


def check(
    scheme: TimestampedScheme[Key],
    headers: Mapping[str, str],
    body: bytes,
    settings: VerificationConfig,
    now: float,
) -> Rejected | None:
    """None when the request is signed by one of the keys within the tolerance, else why not."""
    try:
        keys = scheme.load_keys(settings.public_key or "")
    except ValueError:
        return Rejected(Reason.NO_SECRET, "no usable publicKey configured")
    value = headers.get(scheme.signature_header, "").strip()
    timestamp = headers.get(scheme.timestamp_header, "").strip()
    if not (value and timestamp):
        return Rejected(
            Reason.MISSING_HEADER,
            f"missing {scheme.signature_header} or {scheme.timestamp_header}",
        )
    if not is_timestamp(timestamp):
        return Rejected(Reason.MALFORMED, f"malformed {scheme.timestamp_header} header")
    signature = base64_signature(value, scheme.signature_header, scheme.signature_bytes)
    if isinstance(signature, Rejected):
        return signature
    message = scheme.signed(timestamp, body)
    verified = False
    for key in keys:  # public keys: which one verified reveals nothing secret
        verified |= scheme.verifies(key, signature, message)
    if not verified:
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if not within_tolerance(int(timestamp), now, settings.tolerance_seconds):
        return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
    return None
