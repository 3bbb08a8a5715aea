"""SyncSchedule handlers: thin. They decide when to reconcile (spec changes, its children deleted,
a sink created or deleted, a drift check that also counts finished Jobs no event brought); the
service decides what. Finished Jobs come through ``handlers.jobs``."""

from __future__ import annotations

from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.api import SyncSchedule, WebhookSource
from dfm_operator.handlers.errors import kopf_errors
from dfm_operator.handlers.events import emitter
from dfm_operator.kernel import Context, InvalidSpec, Retry
from dfm_operator.services import syncschedule as service

PLURAL = SyncSchedule.names.plural
DRIFT_CHECK_SECONDS = 300.0
CHILD_LABELS = {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_COMPONENT: c.SYNC_COMPONENT}


@kopf.on.resume(c.GROUP, c.VERSION, PLURAL)
@kopf.on.create(c.GROUP, c.VERSION, PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, PLURAL)
async def reconcile(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    ctx: Context = memo.ctx
    with kopf_errors():
        await service.reconcile_sync_schedule(ctx, body, emitter(body))


@kopf.timer(
    c.GROUP,
    c.VERSION,
    PLURAL,
    interval=DRIFT_CHECK_SECONDS,
    initial_delay=DRIFT_CHECK_SECONDS,
    idle=30,
)
async def drift_check(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    """Count finished Jobs no watch event brought, re-assert the children (hand edits) and
    re-read what the spec refers to."""
    if namespace:
        await service.catch_up(memo.ctx, namespace, name, emitter)
    try:
        await service.reconcile_sync_schedule(memo.ctx, body, emitter(body))
    except (InvalidSpec, Retry):
        return


@kopf.on.delete(c.GROUP, c.VERSION, PLURAL, optional=True)
async def forget(memo: kopf.Memo, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    service.forget(memo.ctx, namespace, name, uid)


@kopf.index(c.GROUP, c.VERSION, PLURAL)
async def syncs_by_ref(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, "sink" | "token", name) -> the schedules whose sink or ManagedSecret it is."""
    refs = service.references(name, body.get("spec") or {})
    return {(namespace, kind, ref): schedule for (kind, ref), schedule in refs.items()}


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


def _added_or_deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") in (None, "ADDED", "DELETED")


@kopf.on.event("batch", "v1", "cronjobs", labels=CHILD_LABELS, when=_deleted)
@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS, when=_deleted)
async def child_deleted(memo: kopf.Memo, body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A child deleted by hand: re-create it."""
    schedule = service.schedule_of(body)
    if schedule is not None and namespace:
        await service.reconcile_by_name(memo.ctx, namespace, schedule, emitter, apply=True)


@kopf.on.event(c.GROUP, c.VERSION, WebhookSource.names.plural, when=_added_or_deleted)
async def sink_changed(memo: kopf.Memo, namespace: str | None, name: str, **kwargs: Any) -> None:
    """A sink appeared or went away: the schedules that store into it."""
    syncs: kopf.Index[Any, str] = kwargs["syncs_by_ref"]
    if namespace:
        for schedule in syncs.get((namespace, "sink", name), []):
            await service.reconcile_by_name(memo.ctx, namespace, schedule, emitter, apply=True)
