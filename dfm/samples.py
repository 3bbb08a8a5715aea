"""Sample events, shaped like each provider's real deliveries, for `dfm send`."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

from webhook_server.config import Provider


def sample_event(
    provider: Provider, now: float | None = None, event_id: str | None = None
) -> tuple[bytes, str]:
    """(body, event id) of a plausible delivery from ``provider``; ``event_id`` fixes the id
    (sending it again is then a redelivery of the same event)."""
    now = time.time() if now is None else now
    unique = uuid.uuid4().hex
    given = event_id
    iso = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    body: dict[str, object]
    match provider:
        case Provider.GITHUB:
            event_id = given or str(uuid.uuid4())
            body = {
                "zen": "Keep it logically awesome.",
                "hook_id": 1,
                "hook": {"type": "Repository"},
            }
        case Provider.STRIPE:
            event_id = given or f"evt_{unique[:24]}"
            body = {
                "id": event_id,
                "object": "event",
                "type": "payment_intent.succeeded",
                "created": int(now),
                "livemode": False,
                "data": {"object": {"id": f"pi_{unique[:24]}", "object": "payment_intent"}},
            }
        case Provider.STANDARD:
            event_id = given or f"msg_{unique[:27]}"
            body = {"type": "user.created", "timestamp": iso, "data": {"id": f"user_{unique[:8]}"}}
        case Provider.SHOPIFY:
            event_id = given or str(uuid.uuid4())
            body = {"id": int(now * 1000), "email": "buyer@example.com", "total_price": "10.00"}
        case Provider.SLACK:
            event_id = given or f"Ev{unique[:10].upper()}"
            body = {
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(now),
                "event": {"type": "app_mention", "text": "hello", "channel": "C0000000000"},
            }
        case Provider.HIGHLEVEL:
            event_id = given or str(uuid.uuid4())
            body = {
                "type": "ContactCreate",
                "webhookId": event_id,
                "timestamp": iso,
                "locationId": "loc_sample",
                "id": f"contact_{unique[:8]}",
            }
        case _:
            event_id = given or f"evt_{unique}"
            body = {"id": event_id, "type": "sample.event"}
            if given is None:
                body["created"] = int(now)
    return json.dumps(body, separators=(",", ":")).encode(), event_id
