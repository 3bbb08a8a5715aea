"""Sample events, shaped like each provider's real deliveries, for `dfm send` (each provider's
``sample`` in its module, found through the registry)."""

from __future__ import annotations

import time

from webhook_server.config import Provider
from webhook_server.verify.registry import PROVIDERS


def sample_event(
    provider: Provider, now: float | None = None, event_id: str | None = None
) -> tuple[bytes, str]:
    """(body, event id) of a plausible delivery from ``provider``; ``event_id`` fixes the id
    (sending it again is then a redelivery of the same event)."""
    return PROVIDERS[provider].sample(time.time() if now is None else now, event_id)
