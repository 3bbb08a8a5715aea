"""ManagedSecret handlers: one scheduler per resource (a kopf daemon) runs the service's loop."""

from __future__ import annotations

from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.api import ManagedSecret
from dfm_operator.handlers.events import emitter
from dfm_operator.kernel import Context
from dfm_operator.services import managedsecret as service

PLURAL = ManagedSecret.names.plural
# On shutdown, pause or deletion kopf first sets `stopped` and waits this long before cancelling:
# enough for a token request (10 s timeout) and its Secret write (with retries) to finish, since
# the provider may already have retired the refresh token it was given. The loop checks
# `stopped` whenever it is idle, so an idle scheduler still exits at once.
CANCELLATION_BACKOFF_SECONDS = 20.0
CANCELLATION_TIMEOUT_SECONDS = 5.0


@kopf.daemon(
    c.GROUP,
    c.VERSION,
    PLURAL,
    cancellation_backoff=CANCELLATION_BACKOFF_SECONDS,
    cancellation_timeout=CANCELLATION_TIMEOUT_SECONDS,
)
async def scheduler(
    memo: kopf.Memo,
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    ctx: Context = memo.ctx
    assert namespace is not None
    try:
        await service.run_scheduler(ctx, namespace, name, stopped, emitter, memo.http)
    finally:
        if (
            stopped.reason is not None
            and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED
        ):
            service.forget(ctx, namespace, name)


@kopf.on.update(c.GROUP, c.VERSION, PLURAL)
async def changed(memo: kopf.Memo, namespace: str | None, name: str, **_: Any) -> None:
    """Spec or annotations (dfm.dev/rotate-now) changed: the scheduler acts now."""
    service.wake(memo.ctx, namespace, name)


@kopf.index(c.GROUP, c.VERSION, PLURAL)
async def managed_by_secret(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, Secret name) -> ManagedSecrets that read or write it."""
    refs = service.managed_secret_refs(name, body.get("spec") or {})
    return {(namespace, ref): name for ref in refs}
