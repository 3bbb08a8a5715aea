"""The request a delivery is sent as: the raw payload, Standard Webhooks headers, trace context.

Headers (docs/receiver.md, "Forwarding"):

* ``webhook-id`` — stable per stored event (webhook_server.store.outbox.webhook_id): a retry or
  a duplicate after a crash carries the same one, which is what consumers deduplicate on;
* ``webhook-timestamp`` — when this attempt was signed (unix seconds);
* ``webhook-signature`` — ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}`` per valid
  signing secret: current and, during a ManagedSecret rotation's grace period, previous;
* ``traceparent`` — the trace the delivery continues (the span that stored its event, or the
  provider's own ``traceparent``), or a new one; with tracing on, the attempt's span replaces it
  (webhook_server.tracing);
* ``content-type`` — as the provider sent it (``application/json`` when it sent none);
* ``dfm-source``, ``dfm-event-type`` (when known), ``dfm-attempt`` — for routing and logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from webhook_server import tracing
from webhook_server.verify import standard

USER_AGENT = "df-middleware-forwarder/0.1"
SOURCE_HEADER = "dfm-source"
EVENT_TYPE_HEADER = "dfm-event-type"
ATTEMPT_HEADER = "dfm-attempt"
DEFAULT_CONTENT_TYPE = "application/json"
# Visible ASCII and spaces only: anything else is not sent as a header value.
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]{1,256}$")


def signing_keys(secrets: Sequence[bytes]) -> list[bytes]:
    """The HMAC keys inside the valid ``whsec_`` secrets (those that are not one are skipped)."""
    keys = []
    for secret in secrets:
        key = standard.decode_secret(secret)
        if key is not None and key not in keys:
            keys.append(key)
    return keys


def build_headers(
    *,
    payload: bytes,
    webhook_id: str,
    keys: Sequence[bytes],
    now: float,
    stored_headers: Mapping[str, str],
    source: str,
    event_type: str | None,
    attempt: int,
    parent: str | None = None,
) -> dict[str, str]:
    """The headers of one attempt; ``keys`` must not be empty (an unsigned delivery is never
    sent). ``stored_headers`` are the event's headers as stored (lower-case names); ``parent``
    the delivery's own trace context (``webhook_deliveries.trace_parent``), which comes first."""
    if not keys:
        raise ValueError("no signing key: deliveries are never sent unsigned")
    timestamp = str(int(now))
    content_type = stored_headers.get("content-type", "")
    headers = {
        "content-type": content_type if _HEADER_VALUE.match(content_type) else DEFAULT_CONTENT_TYPE,
        "user-agent": USER_AGENT,
        standard.ID_HEADER: webhook_id,
        standard.TIMESTAMP_HEADER: timestamp,
        standard.SIGNATURE_HEADER: standard.signature_header(payload, keys, webhook_id, timestamp),
        tracing.TRACEPARENT: tracing.child_traceparent(
            parent or stored_headers.get(tracing.TRACEPARENT)
        ),
        SOURCE_HEADER: source,
        ATTEMPT_HEADER: str(attempt),
    }
    if event_type and _HEADER_VALUE.match(event_type):
        headers[EVENT_TYPE_HEADER] = event_type
    return headers
