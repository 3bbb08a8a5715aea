"""WebhookSource: read what is needed, build, apply, report.

``reconcile_webhook_source`` is the one entry; it runs in steps, each small: parse the spec,
gather what the build needs (which referenced Secrets exist), apply the children (or only look
at the live Deployment), and report Ready with the receiver's endpoints.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import logging
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import (
    ForwardStatus,
    LocalObjectRef,
    ManagedSecret,
    WebhookSource,
    WebhookSourceStatus,
)
from dfm_operator.builders.meta import controlled_by
from dfm_operator.builders.webhooksource import (
    ReceiverInputs,
    build_children,
    database_secret,
    endpoints,
    obsolete_children,
    receiver_name,
    referenced_secrets,
)
from dfm_operator.conditions import ConditionUpdate, find
from dfm_operator.eventstore import StoreUnreachable
from dfm_operator.kernel import (
    Context,
    EmitFn,
    InvalidSpec,
    Retry,
    measured,
    object_key,
    plain_body,
    validation_message,
    write_status,
)
from dfm_operator.kube import Invalid, KubeError
from dfm_operator.policies import (
    FORWARD_WARNINGS,
    forward_figures,
    forwarding_condition,
    needs_reapply,
    receiver_conditions,
    settled_time,
)
from webhook_server.store.stats import SourceStats

log = logging.getLogger(__name__)


async def reconcile_webhook_source(
    ctx: Context,
    body: Mapping[str, Any],
    emit: EmitFn,
    *,
    apply: bool = True,
    known_secrets: Container[tuple[str, str]] | None = None,
    deployment: dict[str, Any] | None = None,
    prune: bool = False,
) -> bool:
    """Converge one WebhookSource; returns whether it is Ready.

    ``prune`` also deletes optional children the spec no longer asks for (a removed Ingress):
    it costs a GET per absent kind, so it runs on spec changes and at start-up, not on drift.

    ``known_secrets`` answers "does this Secret exist?" from a watch (kopf index) instead of a
    GET each; ``deployment`` is the live Deployment when the caller already has it (its event).

    ``apply=False`` refreshes status from the live Deployment without re-applying children
    (used for the Deployment's own status changes, which would otherwise loop).
    Raises InvalidSpec (permanent) or Retry (transient).
    """
    key = object_key(body)
    async with ctx.lock(key), ctx.reconcile_slot():
        return await _measured_reconcile(
            ctx, key, body, emit, apply=apply, known_secrets=known_secrets, live=deployment,
            prune=prune,
        )  # fmt: skip


async def _measured_reconcile(
    ctx: Context,
    key: str,
    body: Mapping[str, Any],
    emit: EmitFn,
    *,
    apply: bool,
    known_secrets: Container[tuple[str, str]] | None,
    live: dict[str, Any] | None,
    prune: bool = False,
) -> bool:
    """``_reconcile``, counted and timed; the caller holds the source's lock and a slot."""
    async with measured(ctx, c.WEBHOOK_SOURCE, body) as result:
        try:
            ready = await _reconcile(
                ctx, body, emit, apply=apply, known_secrets=known_secrets, live=live, prune=prune
            )
        except InvalidSpec:
            ctx.metrics.source_ready(key, False)
            raise
        result[0] = "ready" if ready else "not_ready"
        ctx.metrics.source_ready(key, ready)
        return ready


@dataclass
class _Turn:
    """A by-name reconcile waiting for the source's lock and a slot. Events for the same source
    that arrive meanwhile join it instead of queueing their own, each holding its bodies: 1,000
    sources with two Deployment events each would otherwise queue 2,000 turns at once."""

    apply: bool
    deployment: dict[str, Any] | None

    def join(self, apply: bool, deployment: dict[str, Any] | None) -> None:
        self.apply = self.apply or apply
        self.deployment = deployment  # the newest event's (None: read when it runs)


def request_reconcile(
    ctx: Context,
    namespace: str,
    name: str,
    emit_for: Callable[[dict[str, Any]], EmitFn],
    known_secrets: Container[tuple[str, str]] | None,
    *,
    apply: bool,
    deployment: Mapping[str, Any] | None = None,
    context: contextvars.Context | None = None,
) -> None:
    """``reconcile_by_name`` in the background (in ``context``): returns at once, so that the
    event's handler (and kopf's worker, which holds the event) are done while the turn waits
    for the source's lock and a slot. Of the Deployment only its gist is kept meanwhile."""
    key = f"{namespace}/{name}"
    gist = None if deployment is None else deployment_gist(deployment)
    waiting: _Turn | None = ctx.waiting.get(key)
    if waiting is not None:
        waiting.join(apply, gist)
        return
    ctx.spawn(
        reconcile_by_name(
            ctx, namespace, name, emit_for, known_secrets, apply=apply, deployment=gist
        ),
        name=f"reconcile WebhookSource {key}",
        context=context,
    )


def deployment_gist(live: Mapping[str, Any]) -> dict[str, Any]:
    """What a status refresh reads of a live Deployment (``policies.deployment_progress``,
    ``policies.needs_reapply``, readyReplicas), without the rest of the object."""
    spec = live.get("spec") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    return {
        "metadata": {"generation": (live.get("metadata") or {}).get("generation")},
        "spec": {
            "replicas": spec.get("replicas"),
            "template": {"metadata": {"annotations": dict(template_meta.get("annotations") or {})}},
        },
        "status": dict(live.get("status") or {}),
    }


async def reconcile_by_name(
    ctx: Context,
    namespace: str,
    name: str,
    emit_for: Callable[[dict[str, Any]], EmitFn],
    known_secrets: Container[tuple[str, str]] | None,
    *,
    apply: bool,
    deployment: dict[str, Any] | None = None,
) -> None:
    """Reconcile a source a child's or a Secret's event points at, if it still exists.

    The source is read once its turn comes (its lock and a slot held), not before: a turn that
    waits holds nothing but what its event said, and a second event for the same source while
    it waits only updates that (``_Turn``). Failures are reported in the source's status; its
    own handlers retry them.
    """
    key = f"{namespace}/{name}"
    waiting: _Turn | None = ctx.waiting.get(key)
    if waiting is not None:
        waiting.join(apply, deployment)
        return
    turn = ctx.waiting[key] = _Turn(apply, deployment)
    try:
        async with ctx.lock(key), ctx.reconcile_slot():
            del ctx.waiting[key]  # events from now on are after this read: a turn of their own
            body = await ctx.kube.get(c.API_VERSION, c.WEBHOOK_SOURCE, namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            with contextlib.suppress(InvalidSpec, Retry):
                await _measured_reconcile(
                    ctx, key, body, emit_for(body), apply=turn.apply,
                    known_secrets=known_secrets, live=turn.deployment,
                )  # fmt: skip
    finally:
        if ctx.waiting.get(key) is turn:  # cancelled while waiting
            del ctx.waiting[key]


async def refresh_store_status(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> None:
    """What only the event store knows, into status: ``lastEventTime`` and, with
    ``spec.forward``, ``status.forward`` and the Forwarding condition.

    Written only when something moved enough to matter (a time into another minute, a count by
    a tenth; see ``policies.forward_figures``), so a busy source costs about one status write a
    minute, an idle one none. Skipped until the source has a status (its first reconcile), for an
    invalid spec, while a reconcile of the source runs or waits (the next tick reads it), or when
    ``DFM_STORE_STATUS=false``. Never raises.

    The store is read outside the source's lock (a slow database must not hold up its
    reconciliation); the status is then written from the object as it is now (a GET under the
    lock), so a status a reconciliation wrote meanwhile is not overwritten with an older one.
    """
    if not ctx.settings.store_status or not _has_status(body):
        return
    if ctx.lock(object_key(body)).locked():
        return  # a reconcile runs or waits: not another task queued behind it; the next tick
    try:
        source = WebhookSource.model_validate(plain_body(body))
        url = await _database_url(ctx, source)
    except (ValidationError, KubeError):
        return
    if url is None:
        return  # Ready says SecretNotFound already
    now = ctx.clock()
    try:
        stats, error = await ctx.eventstores.source_stats(url, source.key, now), None
    except StoreUnreachable as exc:
        stats, error = None, str(exc)
    async with ctx.lock(object_key(body)):
        try:
            live = await ctx.kube.get(
                c.API_VERSION, c.WEBHOOK_SOURCE, source.metadata.namespace, source.metadata.name
            )
            if live is None or not _has_status(live):
                return
            current = WebhookSource.model_validate(plain_body(live))
            await _write_store_status(ctx, current, live, stats, error, now, emit)
        except ValidationError:
            return
        except KubeError as exc:
            log.warning("status of %s from its event store not written: %s", source.key, exc)


def _has_status(body: Mapping[str, Any]) -> bool:
    return find((body.get("status") or {}).get("conditions") or [], c.READY) is not None


async def _write_store_status(
    ctx: Context,
    source: WebhookSource,
    body: Mapping[str, Any],
    stats: SourceStats | None,
    error: str | None,
    now: datetime,
    emit: EmitFn,
) -> None:
    old = body.get("status") or {}
    fields = WebhookSourceStatus()
    if stats is not None:
        fields.last_event_time = settled_time(old.get("lastEventTime"), stats.last_event_at)
    conditions = []
    drop: tuple[str, ...] = ()
    if source.spec.forward is None:
        if error is not None:
            log.debug("event store of %s not readable: %s", source.key, error)
            return
        fields.forward = None
        drop = (c.FORWARDING,)
    else:
        condition = forwarding_condition(stats, now, error)
        conditions.append(condition)
        if stats is not None:
            fields.forward = ForwardStatus.model_validate(
                forward_figures(stats, old.get("forward"))
            )
        if _announce_forwarding(old, condition, emit) and error is not None:
            log.warning("event store of %s not readable: %s", source.key, error)
    await write_status(
        ctx, c.WEBHOOK_SOURCE, body, conditions, fields, emit, drop=drop, observe=False
    )


def _announce_forwarding(old_status: Mapping[str, Any], new: ConditionUpdate, emit: EmitFn) -> bool:
    """A Kubernetes Event when the Forwarding reason changes to a warning, or back from one;
    returns whether the reason changed."""
    previous = find(old_status.get("conditions") or [], c.FORWARDING) or {}
    if previous.get("reason") == new.reason:
        return False
    if new.reason in FORWARD_WARNINGS:
        emit("Warning", new.reason, new.message)
    elif previous.get("reason") in FORWARD_WARNINGS:
        emit("Normal", new.reason, new.message)
    return True


async def _database_url(ctx: Context, source: WebhookSource) -> str | None:
    """The event store's URL, from the Secret the source's receivers mount (never logged)."""
    ref = database_secret(source, ctx.settings)
    secret = await ctx.kube.get("v1", "Secret", source.metadata.namespace, ref.name)
    raw = ((secret or {}).get("data") or {}).get(ref.key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw).decode().strip() or None
    except (ValueError, UnicodeDecodeError):
        return None


def forget(ctx: Context, namespace: str | None, name: str, uid: str) -> None:
    """A deleted source: children go with it (ownerReferences); our metrics and memory forget."""
    ctx.metrics.source_ready(f"{namespace}/{name}", None)
    ctx.announced.pop(uid, None)


def owner_of(child: Mapping[str, Any]) -> str | None:
    """The WebhookSource that owns a child object, by its ownerReference."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == c.WEBHOOK_SOURCE and ref.get("apiVersion") == c.API_VERSION:
            return str(ref.get("name"))
    return None


def secret_refs(spec: Mapping[str, Any]) -> list[str]:
    """The names a source's spec refers to for its Secrets (a ManagedSecret by its own name)."""
    verification = spec.get("verification") or {}
    store = spec.get("store") or {}
    forward = spec.get("forward") or {}
    refs = [
        (verification.get("secretRef") or {}).get("name"),
        (verification.get("managedSecretRef") or {}).get("name"),
        (store.get("databaseSecretRef") or {}).get("name"),
        (forward.get("signingSecretRef") or {}).get("name"),
    ]
    return [ref for ref in refs if ref]


def names_of_secret(name: str, owner_references: Iterable[Mapping[str, Any]]) -> set[str]:
    """The names sources may use for a Secret: its own, and its ManagedSecret's (a ManagedSecret
    may write a Secret of another name; sources refer to the ManagedSecret)."""
    return {name} | {
        str(ref.get("name"))
        for ref in owner_references
        if ref.get("kind") == ManagedSecret.names.kind and ref.get("name")
    }


@dataclass(frozen=True)
class _Gathered:
    inputs: ReceiverInputs
    missing: list[str]


async def _reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    emit: EmitFn,
    *,
    apply: bool,
    known_secrets: Container[tuple[str, str]] | None,
    live: dict[str, Any] | None,
    prune: bool = False,
) -> bool:
    source = await _parse(ctx, body, emit)
    gathered = await _gather(ctx, source, known_secrets)
    internal, external = endpoints(source, ctx.settings)
    status = WebhookSourceStatus(endpoint=internal, external_endpoint=external)
    if gathered.missing:
        conditions = receiver_conditions(missing_secrets=gathered.missing)
        await write_status(ctx, c.WEBHOOK_SOURCE, body, conditions, status, emit)
        return False
    children = build_children(source, gathered.inputs)
    try:
        deployment = await _converge(ctx, source, body, children, apply, live, prune)
    except Invalid as exc:
        conditions = receiver_conditions(apply_error=str(exc))
        await write_status(ctx, c.WEBHOOK_SOURCE, body, conditions, status, emit)
        raise InvalidSpec(str(exc)) from exc
    conditions = receiver_conditions(deployment=deployment, replicas=source.spec.replicas)
    status.ready_replicas = ((deployment or {}).get("status") or {}).get("readyReplicas") or 0
    try:
        return await write_status(ctx, c.WEBHOOK_SOURCE, body, conditions, status, emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc


async def _parse(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> WebhookSource:
    try:
        return WebhookSource.model_validate(plain_body(body))
    except ValidationError as exc:
        message = validation_message(exc)
        conditions = receiver_conditions(invalid=message)
        await write_status(ctx, c.WEBHOOK_SOURCE, body, conditions, WebhookSourceStatus(), emit)
        raise InvalidSpec(message) from exc


async def _gather(
    ctx: Context, source: WebhookSource, known_secrets: Container[tuple[str, str]] | None
) -> _Gathered:
    """What the build needs from the cluster: the ManagedSecret's Secret name, whether the
    ServiceMonitor CRD is there, and which referenced Secrets are missing."""
    ns = source.metadata.namespace
    missing: list[str] = []
    try:
        verification_ref = source.spec.verification.managed_secret_ref
        forward = source.spec.forward
        managed_name = await _managed_secret_name(ctx, ns, verification_ref, missing)
        forward_name = await _managed_secret_name(
            ctx, ns, forward.signing_secret_ref if forward else None, missing
        )
        inputs = ReceiverInputs(
            settings=ctx.settings,
            managed_secret_name=managed_name,
            forward_secret_name=forward_name,
            service_monitor=await ctx.service_monitor_enabled(),
        )
        for name in referenced_secrets(source, inputs):
            if known_secrets is not None:
                exists = (ns, name) in known_secrets
            else:
                exists = await ctx.kube.get("v1", "Secret", ns, name) is not None
            if not exists:
                missing.append(name)
    except KubeError as exc:
        raise Retry(str(exc)) from exc
    return _Gathered(inputs, missing)


async def _managed_secret_name(
    ctx: Context, namespace: str, ref: LocalObjectRef | None, missing: list[str]
) -> str | None:
    """The Secret a referenced ManagedSecret writes; a missing ManagedSecret is noted."""
    if ref is None:
        return None
    managed = await ctx.kube.get(c.API_VERSION, c.MANAGED_SECRET, namespace, ref.name)
    if managed is None:
        missing.append(f"ManagedSecret {ref.name}")
        return None
    return str((managed.get("spec") or {}).get("secretName") or ref.name)


async def _converge(
    ctx: Context,
    source: WebhookSource,
    body: Mapping[str, Any],
    children: list[dict[str, Any]],
    apply: bool,
    live: dict[str, Any] | None,
    prune: bool,
) -> dict[str, Any] | None:
    """Apply the children (or, for a status refresh, only when the Deployment drifted); returns
    the Deployment as the API server has it. Raises Invalid (refused) or Retry."""
    ns = source.metadata.namespace
    try:
        deployment = live
        if not apply:
            deployment = live or await ctx.kube.get(
                "apps/v1", "Deployment", ns, receiver_name(source)
            )
            desired = next(ch for ch in children if ch["kind"] == "Deployment")
            # Drifted (or a spec change seen first through a Deployment event): everything is
            # applied, in order, so pods never roll to a config hash their ConfigMap lacks.
            apply = deployment is None or needs_reapply(deployment, desired)
        if apply:
            applied = {}
            for child in children:  # the ConfigMap before the Deployment that mounts it
                applied[child["kind"]] = await ctx.kube.apply(child)
            deployment = applied.get("Deployment")
            if prune and (body.get("status") or {}).get("observedGeneration"):  # not new
                await _prune(ctx, source, children)
        return deployment
    except Invalid:
        raise
    except KubeError as exc:
        if exc.status == 404:
            # E.g. the ServiceMonitor CRD was removed since it was looked up: the retry must not
            # build a ServiceMonitor again (it would fail the same way, forever).
            ctx.forget_crds()
        raise Retry(str(exc)) from exc


async def _prune(ctx: Context, source: WebhookSource, children: list[dict[str, Any]]) -> None:
    """Delete the optional children the spec no longer asks for (only ours, by controller uid)."""
    for api_version, kind, name in obsolete_children(source, children):
        if kind == "ServiceMonitor" and not await ctx.service_monitor_crd_installed():
            continue
        live = await ctx.kube.get(api_version, kind, source.metadata.namespace, name)
        if live is not None and controlled_by(live, source.metadata.uid):
            await ctx.kube.delete(api_version, kind, source.metadata.namespace, name)
