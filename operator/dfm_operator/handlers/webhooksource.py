"""WebhookSource handlers: thin. They decide when to reconcile; the service decides what."""

from __future__ import annotations

import time
from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.api import WebhookSource
from dfm_operator.handlers.errors import kopf_errors
from dfm_operator.handlers.events import detached_context, emitter
from dfm_operator.kernel import Context, object_key
from dfm_operator.services import webhooksource as service

DRIFT_CHECK_SECONDS = 300.0
# How often a source's figures (forward backlog, last event) are read from its event store.
STORE_STATUS_SECONDS = 30.0
CHILD_LABELS = {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_COMPONENT: c.RECEIVER_COMPONENT}
PLURAL = WebhookSource.names.plural


async def _run(memo: kopf.Memo, body: kopf.Body, known: Any, *, prune: bool = False) -> None:
    ctx: Context = memo.ctx
    with kopf_errors():
        await service.reconcile_webhook_source(
            ctx, body, emitter(body), known_secrets=known, prune=prune
        )


@kopf.on.resume(c.GROUP, c.VERSION, PLURAL)
@kopf.on.create(c.GROUP, c.VERSION, PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, PLURAL)
async def reconcile(memo: kopf.Memo, body: kopf.Body, reason: str, **kwargs: Any) -> None:
    """A new or changed spec, or the operator's start (its settings may have changed). A new
    source has nothing obsolete to prune; a changed one or one met at start-up may have."""
    await _run(memo, body, kwargs["secret_names"], prune=reason != kopf.Reason.CREATE)


@kopf.timer(c.GROUP, c.VERSION, PLURAL, interval=STORE_STATUS_SECONDS, initial_delay=5)
async def periodic(memo: kopf.Memo, body: kopf.Body, **kwargs: Any) -> None:
    """One timer per source, for two periods (each kopf timer is a task and its state for as
    long as the source exists):

    - every 30 s, status.forward, status.lastEventTime and the Forwarding condition from the
      event store (receivers cannot write status; see docs/operator.md). Never raises: a
      failure to read the store is itself the status (Forwarding=Unknown);
    - every 5 minutes, the drift check: re-assert every child, which repairs hand edits that
      no watch event reports. Not while a reconcile of the source runs or waits (it does the
      same); a failed one is tried again at the next tick.

    ``memo`` is kopf's per-object copy: the next drift check's time lives with the source.
    """
    ctx: Context = memo.ctx
    await service.refresh_store_status(ctx, body, emitter(body))
    now = time.monotonic()
    due: float = memo.setdefault("drift_check_due", now + DRIFT_CHECK_SECONDS)
    if now >= due and not ctx.lock(object_key(body)).locked():
        await _run(memo, body, kwargs["secret_names"])
        memo.drift_check_due = time.monotonic() + DRIFT_CHECK_SECONDS


@kopf.on.delete(c.GROUP, c.VERSION, PLURAL, optional=True)
async def forget(memo: kopf.Memo, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    service.forget(memo.ctx, namespace, name, uid)


@kopf.index(c.GROUP, c.VERSION, PLURAL)
async def sources_by_secret(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, Secret name) -> the sources that mount it; lets a Secret event find them."""
    return {(namespace, ref): name for ref in service.secret_refs(body.get("spec") or {})}


@kopf.index("", "v1", "secrets")
async def secret_names(namespace: str | None, name: str, **_: Any) -> Any:
    """Every Secret's (namespace, name): existence checks come from the watch, not GETs."""
    return {(namespace, name): True}


def _not_listed(event: kopf.RawEvent, **_: Any) -> bool:
    """Not kopf's initial listing (type None): at start-up every source is reconciled by its
    resume handler, so reconciling it again for each of its children and Secrets found there
    would only double the work, and the memory held while 1,000 sources are in flight."""
    return event.get("type") is not None


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, when=_not_listed)
async def deployment_changed(
    memo: kopf.Memo, body: kopf.Body, event: kopf.RawEvent, namespace: str | None, **kwargs: Any
) -> None:
    """Status-only refresh from the Deployment in the event; a deleted one is re-created."""
    owner = service.owner_of(body)
    if owner is not None and namespace:
        deleted = event.get("type") == "DELETED"
        live = None if deleted else event.get("object")
        service.request_reconcile(
            memo.ctx, namespace, owner, emitter, kwargs["secret_names"], apply=deleted,
            deployment=live, context=detached_context(),
        )  # fmt: skip


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS, when=_deleted)
@kopf.on.event("", "v1", "services", labels=CHILD_LABELS, when=_deleted)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS, when=_deleted)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS, when=_deleted)
@kopf.on.event("networking.k8s.io", "v1", "ingresses", labels=CHILD_LABELS, when=_deleted)
async def child_deleted(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, **kwargs: Any
) -> None:
    """A child deleted by hand: re-create it (edits are undone by the drift check)."""
    owner = service.owner_of(body)
    if owner is not None and namespace:
        service.request_reconcile(
            memo.ctx, namespace, owner, emitter, kwargs["secret_names"], apply=True,
            context=detached_context(),
        )  # fmt: skip
