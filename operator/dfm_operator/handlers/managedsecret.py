"""ManagedSecret handlers: one scheduler per resource sleeps until its next rotation is due."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any, cast

import kopf

from dfm_operator import constants as c
from dfm_operator.reconcile import Context, InvalidSpec, Retry
from dfm_operator.reconcile_managed import reconcile_managed_secret

# Re-read state at least this often even when nothing is due (a safety net, not the schedule).
MAX_SLEEP_SECONDS = 3600.0
PLURAL = "managedsecrets"


def wake_event(memo: kopf.Memo, namespace: str, name: str) -> asyncio.Event:
    events: dict[str, asyncio.Event] = memo.setdefault("managed_wakeups", {})
    return events.setdefault(f"{namespace}/{name}", asyncio.Event())


def wake(memo: kopf.Memo, namespace: str | None, name: str) -> None:
    if namespace:
        wake_event(memo, namespace, name).set()


@kopf.daemon(c.GROUP, c.VERSION, PLURAL, cancellation_timeout=1.0)
async def scheduler(memo: kopf.Memo, namespace: str | None, name: str, **_: Any) -> None:
    """Reconcile, then sleep until exactly the next due moment or until woken by a change."""
    ctx: Context = memo.ctx
    assert namespace is not None
    event = wake_event(memo, namespace, name)
    while True:
        event.clear()
        body = await ctx.kube.get(c.API_VERSION, c.MANAGED_SECRET, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
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
        delay = min(max(delay, 0.0), MAX_SLEEP_SECONDS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()


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
