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


async def _run(memo: kopf.Memo, body: kopf.Body, known: Any, *, prune: bool = False) -> None:
    ctx: Context = memo.ctx
    try:
        await reconcile_webhook_source(ctx, body, _emitter(body), known_secrets=known, prune=prune)
    except InvalidSpec as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except Retry as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.resume(c.GROUP, c.VERSION, "webhooksources")
@kopf.on.create(c.GROUP, c.VERSION, "webhooksources")
@kopf.on.update(c.GROUP, c.VERSION, "webhooksources")
async def reconcile(memo: kopf.Memo, body: kopf.Body, reason: str, **kwargs: Any) -> None:
    """A new or changed spec, or the operator's start (its settings may have changed). A new
    source has nothing obsolete to prune; a changed one or one met at start-up may have."""
    await _run(memo, body, kwargs["secret_names"], prune=reason != kopf.Reason.CREATE)


@kopf.timer(
    c.GROUP,
    c.VERSION,
    "webhooksources",
    interval=DRIFT_CHECK_SECONDS,
    initial_delay=DRIFT_CHECK_SECONDS,
    idle=30,
)
async def drift_check(memo: kopf.Memo, body: kopf.Body, **kwargs: Any) -> None:
    """Re-assert every child: repairs hand edits that no watch event reports."""
    await _run(memo, body, kwargs["secret_names"])


@kopf.on.delete(c.GROUP, c.VERSION, "webhooksources", optional=True)
async def forget(memo: kopf.Memo, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Children go with their owner (ownerReferences); only our metrics and memory forget it."""
    ctx: Context = memo.ctx
    ctx.metrics.source_ready(f"{namespace}/{name}", None)
    ctx.announced.pop(uid, None)


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


async def _reconcile_owner(
    memo: kopf.Memo,
    namespace: str,
    owner: str,
    known: Any,
    *,
    apply: bool,
    deployment: dict[str, Any] | None = None,
) -> None:
    ctx: Context = memo.ctx
    body = await ctx.kube.get(c.API_VERSION, c.WEBHOOK_SOURCE, namespace, owner)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    emit = _emitter(kopf.Body(cast(kopf.RawBody, body)))
    try:
        await reconcile_webhook_source(
            ctx, body, emit, apply=apply, known_secrets=known, deployment=deployment
        )
    except (InvalidSpec, Retry):
        return  # reported in status; the source's own handlers retry


def _owner(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == c.WEBHOOK_SOURCE and ref.get("apiVersion") == c.API_VERSION:
            return str(ref.get("name"))
    return None


@kopf.index("", "v1", "secrets")
async def secret_names(namespace: str | None, name: str, **_: Any) -> Any:
    """Every Secret's (namespace, name): existence checks come from the watch, not GETs."""
    return {(namespace, name): True}


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
async def deployment_changed(
    memo: kopf.Memo, body: kopf.Body, event: kopf.RawEvent, namespace: str | None, **kwargs: Any
) -> None:
    """Status-only refresh from the Deployment in the event; a deleted one is re-created."""
    owner = _owner(body)
    if owner is not None and namespace:
        deleted = event.get("type") == "DELETED"
        live = None if deleted else dict(event.get("object") or {})
        await _reconcile_owner(
            memo, namespace, owner, kwargs["secret_names"], apply=deleted, deployment=live
        )


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
    owner = _owner(body)
    if owner is not None and namespace:
        await _reconcile_owner(memo, namespace, owner, kwargs["secret_names"], apply=True)


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
            await _reconcile_owner(memo, namespace, owner, kwargs["secret_names"], apply=True)
