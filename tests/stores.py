"""What the store tests share: a GitHub source and an event of it."""

from __future__ import annotations

from datetime import UTC, datetime

from webhook_server.config import Provider, SecretSource, SourceConfig, VerificationConfig
from webhook_server.store import Event

SOURCE = SourceConfig(
    namespace="ns",
    name="gh",
    provider=Provider.GITHUB,
    verification=VerificationConfig(secrets=[SecretSource(value="s")]),
)


def event(event_id: str) -> Event:
    """A push of SOURCE, received now."""
    return Event(
        source=SOURCE.key,
        event_id=event_id,
        event_type="push",
        received_at=datetime.now(UTC),
        request_id="r",
        payload=b"{}",
        headers={"x-github-event": "push"},
    )
