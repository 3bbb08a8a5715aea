"""Mailchimp Transactional (Mandrill): ``X-Mandrill-Signature`` = base64 HMAC-SHA1(webhook key,
URL + every POST parameter's name and value, sorted by name).

The URL is the webhook URL exactly as entered in Mandrill (``verification.publicUrl``, or the
Ingress URL the operator derives) plus the request's query string as sent; Mandrill warns that
even a trailing slash breaks the signature, so no variant is tried.

The body is a form with one field, ``mandrill_events``: a JSON array of events. Like SendGrid's,
the batch is stored once under a hash of its (sorted) parameters, with ``event_count`` and its
kinds as the event type. Mandrill signs no timestamp; a replayed request carries the same
parameters, so it is a duplicate, never a second event. Mandrill checks a new webhook URL with a
``HEAD`` request, which a mandrill source answers 200.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from webhook_server.config import VerificationConfig
from webhook_server.verify.base import (
    JSON_ERRORS,
    Reason,
    Rejected,
    Result,
    base64_header,
    constant_time_any,
    describe_batch,
    hmac_digest,
)
from webhook_server.verify.forms import (
    FORM_CONTENT_TYPE,
    first_values,
    form_params,
    params_digest,
    signed_url,
    url_with_params,
)

SIGNATURE_HEADER = "X-Mandrill-Signature"
EVENTS_FIELD = "mandrill_events"


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    settings: VerificationConfig,
    now: float,
    query: str = "",
) -> Result:
    if not secrets or not settings.public_url:
        return Rejected(Reason.NO_SECRET, "no webhook key or publicUrl configured")
    given = base64_header(headers, SIGNATURE_HEADER)
    if isinstance(given, Rejected):
        return given
    params = form_params(body)
    if params is None:
        return Rejected(Reason.MALFORMED, "the body is not a form")
    content = url_with_params(signed_url(settings.public_url, query), params, distinct=False)
    expected = [hmac_digest(secret, content, "sha1") for secret in secrets]
    if not constant_time_any(expected, [given]):
        return Rejected(Reason.BAD_SIGNATURE, "signature mismatch")
    try:
        events = json.loads(first_values(params).get(EVENTS_FIELD, ""))
    except JSON_ERRORS:
        events = None
    return describe_batch(events, "event", params_digest(params))


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    if not settings.public_url:
        raise ValueError("Mandrill signing needs verification.publicUrl")
    params = form_params(body)
    if params is None:
        raise ValueError("a Mandrill body is a form (mandrill_events=...)")
    content = url_with_params(settings.public_url, params, distinct=False)
    signature = base64.b64encode(hmac_digest(secret, content, "sha1")).decode()
    return {"Content-Type": FORM_CONTENT_TYPE, SIGNATURE_HEADER: signature}


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A batch of one ``send`` event, form-encoded as Mandrill posts it. With ``event_id`` the
    batch is the same bytes every time that day (a redelivery)."""
    unique = event_id or uuid.uuid4().hex
    at = int(now) // 86_400 * 86_400 if event_id else int(now)
    events = [
        {
            "event": "send",
            "_id": unique,
            "ts": at,
            "msg": {
                "_id": unique,
                "ts": at,
                "email": "reader@example.com",
                "subject": "Hello from df-middleware",
                "state": "sent",
            },
        }
    ]
    params = [(EVENTS_FIELD, json.dumps(events, separators=(",", ":")))]
    return urlencode(params).encode(), params_digest(params)
