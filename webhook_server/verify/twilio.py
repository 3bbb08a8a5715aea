"""Twilio (SMS, voice and other status callbacks): ``X-Twilio-Signature`` = base64
HMAC-SHA1(auth token, URL + every POST parameter's name and value, sorted by name).

The URL is the one Twilio called: ``verification.publicUrl`` (or the Ingress URL the operator
derives) plus the request's query string exactly as sent, never the Host the receiver sees.
Twilio has signed URLs with and without the default port, so both are tried, as its SDKs do.

A JSON body (or any body that is not a form) is signed through the URL: Twilio adds
``bodySHA256=<hex SHA-256 of the body>`` to the query string, so the body must hash to it.
Requests with ``X-Twilio-Webhooks-Signature-Settings: ...,algorithm=HMAC_SHA256`` (a SharedKey)
are checked with HMAC-SHA256 instead.

Twilio signs no timestamp, so a captured request can be replayed: it is the same body, so it is
stored once: its event id comes from the signed parameters (``MessageSid:MessageStatus``, or a
hash of them all), never from the bytes, which a replay could re-encode. ``I-Twilio-Idempotency-
Token`` is not signed and is not used.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import (
    Reason,
    Rejected,
    Result,
    Verified,
    base64_header,
    constant_time_any,
    header_bytes,
    hmac_digest,
    json_object,
    string_field,
)
from webhook_server.verify.forms import (
    FORM_CONTENT_TYPE,
    first_values,
    form_params,
    params_digest,
    port_variants,
    query_value,
    signed_url,
    url_with_params,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
BODY_HASH_PARAM = "bodySHA256"
ALGORITHMS = {"HMAC_SHA1": "sha1", "HMAC_SHA256": "sha256"}
# (sid parameter, status parameter, kind): the first pair present names the event.
_EVENT_FIELDS = (
    ("RecordingSid", "RecordingStatus", "recording"),
    ("MessageSid", "MessageStatus", "message"),
    ("MessageSid", "SmsStatus", "message"),
    ("SmsSid", "SmsStatus", "message"),
    ("CallSid", "CallStatus", "call"),
)


def _algorithm(settings_header: str) -> str | None:
    """The HMAC of ``X-Twilio-Webhooks-Signature-Settings`` (none: the Auth Token's SHA-1)."""
    for part in settings_header.split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return ALGORITHMS.get(value.strip().upper())
    return "sha1"


def _describe_form(params: list[tuple[str, str]]) -> Verified:
    values = first_values(params)
    for sid_field, status_field, kind in _EVENT_FIELDS:
        sid, status = values.get(sid_field), values.get(status_field)
        if sid and status:
            return Verified(event_id=f"{sid}:{status}", event_type=f"{kind}.{status}")
    # Nothing names the event: the signed parameters do (a hash of them, not of the bytes, which a
    # replay could re-encode).
    return Verified(event_id=params_digest(params))


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets or not settings.public_url:
        return Rejected(Reason.NO_SECRET, "no auth token or publicUrl configured")
    given = base64_header(headers, SIGNATURE_HEADER)
    if isinstance(given, Rejected):
        return given
    algorithm = _algorithm(headers.get(SETTINGS_HEADER, ""))
    if algorithm is None:
        return Rejected(Reason.MALFORMED, f"unsupported algorithm in {SETTINGS_HEADER}")

    body_hash = query_value(query, BODY_HASH_PARAM)
    params: list[tuple[str, str]] = []
    if body_hash is None:
        form = form_params(body)
        if form is None:
            return Rejected(
                Reason.MALFORMED, "the body is not a form and the URL has no bodySHA256"
            )
        params = form
    url = signed_url(settings.public_url, query)
    contents = [url_with_params(u, params, distinct=True) for u in port_variants(url)]
    expected = [hmac_digest(s, c, algorithm) for s in secrets for c in contents]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    if body_hash is not None:
        actual = hashlib.sha256(body).hexdigest().encode()
        if not constant_time_any([actual], [header_bytes(body_hash)]):
            return Rejected(Reason.BAD_SIGNATURE, "the body does not match bodySHA256")
        event = json_object(body)
        return Verified(event_id=string_field(event, "id"), event_type=string_field(event, "type"))
    return _describe_form(params)


def query(body: bytes, settings: VerificationConfig) -> str:
    """What Twilio adds to the URL's query string for ``body``: ``bodySHA256`` unless it is a form
    (``dfm send`` appends it to the URL it posts to)."""
    if form_params(body) is not None and json_object(body) is None:
        return ""
    return urlencode({BODY_HASH_PARAM: hashlib.sha256(body).hexdigest()})


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    if not settings.public_url:
        raise ValueError("Twilio signing needs verification.publicUrl")
    extra = query(body, settings)
    params = [] if extra else (form_params(body) or [])
    content = url_with_params(signed_url(settings.public_url, extra), params, distinct=True)
    signature = base64.b64encode(hmac_digest(secret, content, "sha1")).decode()
    content_type = "application/json" if extra else FORM_CONTENT_TYPE
    return {"Content-Type": content_type, SIGNATURE_HEADER: signature}


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """An SMS status callback (``delivered``), form-encoded as Twilio posts it."""
    sid = event_id or f"SM{uuid.uuid4().hex}"
    params = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "From": "+15005550006",
        "MessageSid": sid,
        "MessageStatus": "delivered",
        "SmsSid": sid,
        "SmsStatus": "delivered",
        "To": "+15005550001",
    }
    return urlencode(params).encode(), f"{sid}:delivered"
