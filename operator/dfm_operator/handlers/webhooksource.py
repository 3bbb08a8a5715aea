"""WebhookSource handlers: thin. They decide when to reconcile; reconcile.py decides what."""

from __future__ import annotations

from typing import Any, cast

import kopf

from dfm_operator import constants as c
from dfm_operator.handlers.managedsecret import wake
from dfm_operator.reconcile import Context, InvalidSpec, Retry, reconcile_webhook_source

DRIFT_CHECK_SECONDS = 300.0
CHILD_LABELS = {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_COMPONENT: c.RECEIVER_COMPONENT}


def _emitter(body: kopf.Body) -> Any:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    return emit


async def _run(memo: kopf.Memo, body: kopf.Body, *, apply: bool = True) -> None:
    ctx: Context = memo.ctx
    try:
        await reconcile_webhook_source(ctx, body, _emitter(body), apply=apply)
    except InvalidSpec as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except Retry as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.resume(c.GROUP, c.VERSION, "webhooksources")
@kopf.on.create(c.GROUP, c.VERSION, "webhooksources")
@kopf.on.update(c.GROUP, c.VERSION, "webhooksources")
async def reconcile(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    await _run(memo, body)


@kopf.timer(
    c.GROUP,
    c.VERSION,
    "webhooksources",
    interval=DRIFT_CHECK_SECONDS,
    initial_delay=DRIFT_CHECK_SECONDS,
    idle=30,
)
async def drift_check(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    """Re-assert every child: repairs hand edits that no watch event reports."""
    await _run(memo, body)


@kopf.on.delete(c.GROUP, c.VERSION, "webhooksources", optional=True)
async def forget(memo: kopf.Memo, namespace: str | None, name: str, **_: Any) -> None:
    """Children go with their owner (ownerReferences); only our metrics need to forget it."""
    ctx: Context = memo.ctx
    ctx.metrics.source_ready(f"{namespace}/{name}", None)


@kopf.index(c.GROUP, c.VERSION, "webhooksources")
async def sources_by_secret(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, Secret name) -> the sources that mount it; lets a Secret event find them."""
    spec = body.get("spec") or {}
    verification = spec.get("verification") or {}
    store = spec.get("store") or {}
    refs = [
        (verification.get("secretRef") or {}).get("name"),
        (verification.get("managedSecretRef") or {}).get("name"),
        (store.get("databaseSecretRef") or {}).get("name"),
    ]
    return {(namespace, ref): name for ref in refs if ref}


async def _reconcile_owner(memo: kopf.Memo, namespace: str, owner: str, *, apply: bool) -> None:
    ctx: Context = memo.ctx
    body = await ctx.kube.get(c.API_VERSION, c.WEBHOOK_SOURCE, namespace, owner)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        await reconcile_webhook_source(
            ctx, body, _emitter(kopf.Body(cast(kopf.RawBody, body))), apply=apply
        )
    except (InvalidSpec, Retry):
        return  # reported in status; the source's own handlers retry


def _owner(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == c.WEBHOOK_SOURCE and ref.get("apiVersion") == c.API_VERSION:
            return str(ref.get("name"))
    return None


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_changed(
    memo: kopf.Memo, body: kopf.Body, event: kopf.RawEvent, namespace: str | None, **_: Any
) -> None:
    owner = _owner(body)
    if owner is not None and namespace:
        deleted = event.get("type") == "DELETED"
        await _reconcile_owner(memo, namespace, owner, apply=deleted)


@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
@kopf.on.event("networking.k8s.io", "v1", "ingresses", labels=CHILD_LABELS)
async def child_deleted(
    memo: kopf.Memo, body: kopf.Body, event: kopf.RawEvent, namespace: str | None, **_: Any
) -> None:
    owner = _owner(body)
    if owner is not None and namespace and event.get("type") == "DELETED":
        await _reconcile_owner(memo, namespace, owner, apply=True)


@kopf.on.event("", "v1", "secrets")
async def secret_changed(memo: kopf.Memo, namespace: str | None, name: str, **kwargs: Any) -> None:
    """A referenced Secret appeared, changed or went away: reconcile the sources using it."""
    if not namespace:
        return
    sources: kopf.Index[Any, str] = kwargs["sources_by_secret"]
    managed: kopf.Index[Any, str] = kwargs["managed_by_secret"]
    for owner in managed.get((namespace, name), []):
        wake(memo, namespace, owner)
    # A ManagedSecret's Secret may have a name of its own: sources refer to the ManagedSecret.
    body: kopf.Body = kwargs["body"]
    refs = {name} | {
        ref.get("name")
        for ref in body.get("metadata", {}).get("ownerReferences") or []
        if ref.get("kind") == c.MANAGED_SECRET
    }
    for ref in refs:
        for owner in sources.get((namespace, ref), []):
            await _reconcile_owner(memo, namespace, owner, apply=True)
