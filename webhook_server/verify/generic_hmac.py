"""Generic HMAC, for senders without a dedicated module: the header, digest, encoding, prefix and
signed content all come from the source's configuration.

The signed content is a template over ``{timestamp}``, ``{id}`` and ``{body}``; the body bytes are
spliced in raw (never decoded and re-encoded), so any body, UTF-8 or not, verifies byte-exactly.
Named ``generic_hmac`` so it never shadows the standard library's ``hmac``.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping, Sequence

from webhook_server.config import SignatureEncoding, VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Signer,
    Verified,
    Verifier,
    constant_time_any,
    event_from_body,
    generic_sample,
    header_bytes,
    hmac_digest,
    is_timestamp,
    within_tolerance,
)

BODY = "{body}"
_PLACEHOLDER = re.compile(r"\{(timestamp|id)\}")
# Unix timestamps above this are taken as milliseconds (year 5138 in seconds).
_MILLISECONDS_FROM = 100_000_000_000


def signed_content(
    template: str, body: bytes, timestamp: str | None, event_id: str | None
) -> bytes:
    if template == BODY:
        # The usual scheme (GitHub, Shopify, most generic sources): the body alone, not copied.
        return body
    values = {"timestamp": timestamp or "", "id": event_id or ""}
    parts = [
        header_bytes(_PLACEHOLDER.sub(lambda match: values[match.group(1)], part))
        for part in template.split(BODY)
    ]
    return body.join(parts)


def _decode(value: str, encoding: SignatureEncoding) -> bytes | None:
    try:
        if encoding is SignatureEncoding.BASE64:
            return base64.b64decode(value, validate=True)
        return bytes.fromhex(value)
    except (ValueError, binascii.Error):
        return None


def _optional_header(headers: Mapping[str, str], name: str | None) -> str | None:
    return (headers.get(name, "").strip() or None) if name else None


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets or not settings.header:
        return Rejected(Reason.NO_SECRET, "no secret or signature header configured")
    value = headers.get(settings.header, "").strip()
    if not value:
        return Rejected(Reason.MISSING_HEADER, f"missing {settings.header} header")
    if not value.startswith(settings.prefix):
        return Rejected(Reason.MALFORMED, f"malformed {settings.header} header")
    given = _decode(value.removeprefix(settings.prefix), settings.encoding)
    if given is None:
        return Rejected(Reason.MALFORMED, f"malformed {settings.header} header")

    timestamp = _optional_header(headers, settings.timestamp_header)
    header_id = _optional_header(headers, settings.id_header)
    template = settings.signed_content
    if (settings.timestamp_header or "{timestamp}" in template) and timestamp is None:
        return Rejected(Reason.MISSING_HEADER, "missing timestamp header")
    if "{id}" in template and header_id is None:
        return Rejected(Reason.MISSING_HEADER, "missing id header")
    if timestamp is not None and not is_timestamp(timestamp):
        return Rejected(Reason.MALFORMED, "malformed timestamp header")

    content = signed_content(template, body, timestamp, header_id)
    expected = [hmac_digest(secret, content, settings.algorithm.value) for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if timestamp is not None:
        seconds = int(timestamp)
        if seconds >= _MILLISECONDS_FROM:
            seconds //= 1000
        if not within_tolerance(seconds, now, settings.tolerance_seconds):
            return Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")

    event_type = _optional_header(headers, settings.type_header)
    if header_id is not None and event_type is not None:
        return Verified(event_id=header_id, event_type=event_type)
    # Only now parse the body: the headers usually say it all (GitHub, Shopify).
    return event_from_body(body, header_id, event_type)


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    if not settings.header:
        raise ValueError("generic HMAC signing needs verification.header")
    timestamp = str(int(now))
    msg_id = event_id or str(uuid.uuid4())
    digest = hmac_digest(
        secret,
        signed_content(settings.signed_content, body, timestamp, msg_id),
        settings.algorithm.value,
    )
    encoded = (
        base64.b64encode(digest).decode()
        if settings.encoding is SignatureEncoding.BASE64
        else digest.hex()
    )
    headers = {"Content-Type": "application/json", settings.header: settings.prefix + encoded}
    if settings.timestamp_header:
        headers[settings.timestamp_header] = timestamp
    if settings.id_header:
        headers[settings.id_header] = msg_id
    return headers


def preset_verifier(scheme: VerificationConfig) -> Verifier:
    """The generic scheme with fixed settings, as a provider's own verifier (GitHub, Shopify):
    the source's settings are not read."""

    def verify_preset(
        headers: Mapping[str, str],
        body: bytes,
        secrets: Sequence[bytes],
        settings: VerificationConfig,
        now: float,
        query: str = "",
    ) -> Result:
        return verify(headers, body, secrets, scheme, now)

    return verify_preset


def preset_signer(scheme: VerificationConfig) -> Signer:
    """The signer that goes with :func:`preset_verifier`."""

    def sign_preset(
        body: bytes,
        secret: bytes,
        settings: VerificationConfig,
        now: float,
        event_id: str | None,
    ) -> dict[str, str]:
        return sign(body, secret, scheme, now, event_id)

    return sign_preset


sample = generic_sample
