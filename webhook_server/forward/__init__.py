"""Forwarding: every stored event of a source with ``forward`` reaches its consumer.

A transactional outbox in PostgreSQL (``webhook_server.store.outbox``): the event and its
delivery commit together, any receiver replica claims due deliveries with a lease, deliveries
are signed with Standard Webhooks and retried with jittered back-off behind a circuit breaker per
target, and dead-lettered (kept, visible) after ``maxAttempts`` or ``maxAgeSeconds``.
See docs/receiver.md, "Forwarding".
"""

from webhook_server.forward.forwarder import Forwarder

__all__ = ["Forwarder"]
