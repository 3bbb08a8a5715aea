"""ManagedSecret handlers: one scheduler per resource sleeps until its next rotation is due."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, cast

import kopf

from dfm_operator import constants as c
from dfm_operator.reconcile import Context, InvalidSpec, Retry
from dfm_operator.reconcile_managed import forget_metrics, reconcile_managed_secret

# Re-read state at least this often even when nothing is due (a safety net, not the schedule).
MAX_SLEEP_SECONDS = 3600.0
# Never sleep less than this between reconciles, whatever was decided: no busy loop.
MIN_SLEEP_SECONDS = 1.0
PLURAL = "managedsecrets"
WAKEUPS = "managed_wakeups"
# On shutdown, pause or deletion kopf first sets `stopped` and waits this long before cancelling:
# enough for a token request (10 s timeout) and its Secret write (with retries) to finish, since
# the provider may already have retired the refresh token it was given. The loop checks
# `stopped` whenever it is idle, so an idle scheduler still exits at once.
CANCELLATION_BACKOFF_SECONDS = 20.0
CANCELLATION_TIMEOUT_SECONDS = 5.0


def wake_event(memo: kopf.Memo, namespace: str, name: str) -> asyncio.Event:
    """The event that wakes the scheduler of ``namespace/name``.

    The dict comes from the startup handler: kopf gives each object (and each handler's
    object) a shallow copy of the operator's memo, so a dict created here, in one copy, would
    never be seen by the Secret handlers that wake the scheduler.
    """
    events: dict[str, asyncio.Event] = memo.setdefault(WAKEUPS, {})
    return events.setdefault(f"{namespace}/{name}", asyncio.Event())


def wake(memo: kopf.Memo, namespace: str | None, name: str) -> None:
    if namespace:
        wake_event(memo, namespace, name).set()


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
    """Reconcile, then sleep until exactly the next due moment or until woken by a change."""
    ctx: Context = memo.ctx
    assert namespace is not None
    event = wake_event(memo, namespace, name)
    try:
        while not stopped:
            event.clear()
            body = await ctx.kube.get(c.API_VERSION, c.MANAGED_SECRET, namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                forget(memo, ctx, namespace, name)
                return
            next_at: datetime | None = None
            delay = MAX_SLEEP_SECONDS
            try:
                outcome = await reconcile_managed_secret(ctx, body, _emitter(body), memo.http)
                next_at = outcome.next_at
            except InvalidSpec:
                next_at = None
            except Retry as exc:
                delay = exc.delay
            if next_at is not None:
                delay = (next_at - ctx.clock()).total_seconds()
            delay = min(max(delay, MIN_SLEEP_SECONDS), MAX_SLEEP_SECONDS)
            await _sleep(event, stopped, delay)
    finally:
        if (
            stopped.reason is not None
            and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED
        ):
            forget(memo, ctx, namespace, name)


def forget(memo: kopf.Memo, ctx: Context, namespace: str, name: str) -> None:
    """A deleted ManagedSecret: drop its metrics and its wake-up event."""
    forget_metrics(ctx, namespace, name)
    memo.get(WAKEUPS, {}).pop(f"{namespace}/{name}", None)


async def _sleep(event: asyncio.Event, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Until ``seconds`` pass, the scheduler is woken, or kopf asks it to stop."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _emitter(body: dict[str, Any]) -> Any:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)

    return emit


@kopf.on.update(c.GROUP, c.VERSION, PLURAL)
async def changed(memo: kopf.Memo, namespace: str | None, name: str, **_: Any) -> None:
    """Spec or annotations (dfm.dev/rotate-now) changed: the scheduler acts now."""
    wake(memo, namespace, name)


@kopf.index(c.GROUP, c.VERSION, PLURAL)
async def managed_by_secret(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, Secret name) -> ManagedSecrets that read or write it."""
    spec = body.get("spec") or {}
    oauth2 = spec.get("oauth2") or {}
    refs = [
        spec.get("secretName") or name,
        (oauth2.get("clientSecretRef") or {}).get("name"),
        (oauth2.get("refreshTokenSecretRef") or {}).get("name"),
    ]
    return {(namespace, ref): name for ref in refs if ref}
