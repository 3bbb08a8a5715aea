"""Reconciliation of a WebhookSource: read what is needed, build, apply, report.

Kept apart from kopf so that it reads as one function: handlers only decide *when* it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import WebhookSource
from dfm_operator.builders.meta import controlled_by
from dfm_operator.builders.webhooksource import (
    ReceiverInputs,
    build_children,
    endpoints,
    obsolete_children,
    receiver_name,
    referenced_secrets,
)
from dfm_operator.conditions import ConditionUpdate, find, merge_conditions
from dfm_operator.kube import Invalid, Kube, KubeError
from dfm_operator.policies import needs_reapply, receiver_conditions
from dfm_operator.settings import OperatorSettings

SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
# Reasons whose arrival deserves a Warning event.
WARNING_REASONS = {
    c.REASON_INVALID_SPEC,
    c.REASON_SECRET_NOT_FOUND,
    c.REASON_APPLY_FAILED,
    c.REASON_NOT_SUPPORTED_YET,
}

EmitFn = Callable[[str, str, str], None]  # (type, reason, message)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciliations = Counter(
            "dfm_operator_reconciliations",
            "Reconciliations by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "dfm_operator_reconcile_duration_seconds",
            "Time one reconciliation took.",
            ["kind"],
            registry=self.registry,
        )
        self.sources = Gauge(
            "dfm_operator_webhooksources",
            "Managed WebhookSources by readiness.",
            ["ready"],
            registry=self.registry,
        )
        self.rotations = Counter(
            "dfm_managedsecret_rotations",
            "ManagedSecret rotations and token refreshes by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.next_rotation = Gauge(
            "dfm_managedsecret_next_rotation_timestamp_seconds",
            "When each ManagedSecret next rotates or refreshes (unix time).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.token_expiry = Gauge(
            "dfm_managedsecret_token_expiry_timestamp_seconds",
            "When each oauth2 ManagedSecret's access token expires (unix time).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.refresh_before = Gauge(
            "dfm_managedsecret_refresh_before_seconds",
            "Each oauth2 ManagedSecret's refresh margin (for expiry alerts).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self._ready: dict[str, bool] = {}

    def source_ready(self, key: str, ready: bool | None) -> None:
        if ready is None:
            self._ready.pop(key, None)
        else:
            self._ready[key] = ready
        ready_count = sum(self._ready.values())
        self.sources.labels("true").set(ready_count)
        self.sources.labels("false").set(len(self._ready) - ready_count)


@dataclass
class Context:
    kube: Kube
    settings: OperatorSettings
    metrics: OperatorMetrics
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _service_monitor_crd: bool | None = None
    # The Ready (status, reason, generation) last announced per object uid: kopf sometimes hands
    # a handler a body older than our own status write, which would announce it a second time.
    announced: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def service_monitor_enabled(self) -> bool:
        if not self.settings.service_monitor:
            return False
        return await self.service_monitor_crd_installed()

    async def service_monitor_crd_installed(self) -> bool:
        if self._service_monitor_crd is None:
            self._service_monitor_crd = await self.kube.crd_exists(SERVICE_MONITOR_CRD)
        return self._service_monitor_crd

    def forget_crds(self) -> None:
        """Ask the API server again next time: a CRD may have been installed or removed."""
        self._service_monitor_crd = None


class InvalidSpec(Exception):
    """The resource cannot be reconciled until its spec changes."""


class Retry(Exception):
    """A transient failure: try again after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


def plain_body(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
    }


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


async def write_status(
    ctx: Context,
    kind: str,
    body: Mapping[str, Any],
    conditions: list[ConditionUpdate],
    extra: dict[str, Any],
    emit: EmitFn,
) -> bool:
    """Write status if it changed, emit Events for Ready transitions; returns the new Ready.

    ``extra`` holds the kind's own status fields; a None value removes a field.
    """
    meta = body.get("metadata") or {}
    old: dict[str, Any] = dict(body.get("status") or {})
    generation = meta.get("generation")
    merged = merge_conditions(old.get("conditions") or [], conditions, generation, ctx.clock())
    new = {**{k: v for k, v in old.items() if k not in extra}, **extra}
    new["observedGeneration"] = generation
    new["conditions"] = merged
    new = {k: v for k, v in new.items() if v is not None}
    old_ready = find(old.get("conditions") or [], c.READY) or {}
    ready = find(merged, c.READY) or {}
    if new != old:
        # A merge patch: fields to drop are sent as null.
        dropped = {k: None for k in old if k not in new}
        await ctx.kube.patch_status(
            c.API_VERSION, kind, meta["namespace"], meta["name"], {**dropped, **new}
        )
    announcement = (ready["status"], ready["reason"], generation)
    uid = str(meta.get("uid") or f"{kind}/{meta.get('namespace')}/{meta.get('name')}")
    changed = (old_ready.get("status"), old_ready.get("reason")) != announcement[:2]
    if changed and ctx.announced.get(uid) != announcement:
        if ready["status"] == "True":
            emit("Normal", "Ready", ready["message"] or ready["reason"])
        elif ready["reason"] in WARNING_REASONS:
            emit("Warning", ready["reason"], ready["message"])
    ctx.announced[uid] = announcement
    return bool(ready["status"] == "True")


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
    meta = body.get("metadata") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    started = time.perf_counter()
    result = "error"
    try:
        async with ctx.lock(key):
            ready = await _reconcile(
                ctx,
                body,
                emit,
                apply=apply,
                known_secrets=known_secrets,
                live=deployment,
                prune=prune,
            )
        result = "ready" if ready else "not_ready"
        ctx.metrics.source_ready(key, ready)
        return ready
    except InvalidSpec:
        result = "invalid"
        ctx.metrics.source_ready(key, False)
        raise
    finally:
        ctx.metrics.reconciliations.labels(c.WEBHOOK_SOURCE, result).inc()
        ctx.metrics.duration.labels(c.WEBHOOK_SOURCE).observe(time.perf_counter() - started)


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
    try:
        source = WebhookSource.model_validate(plain_body(body))
    except ValidationError as exc:
        message = validation_message(exc)
        await write_status(
            ctx, c.WEBHOOK_SOURCE, body, receiver_conditions(invalid=message), {}, emit
        )
        raise InvalidSpec(message) from exc

    ns = source.metadata.namespace
    managed_name = None
    missing: list[str] = []
    try:
        ref = source.spec.verification.managed_secret_ref
        if ref is not None:
            managed = await ctx.kube.get(c.API_VERSION, c.MANAGED_SECRET, ns, ref.name)
            if managed is None:
                missing.append(f"ManagedSecret {ref.name}")
            else:
                managed_name = (managed.get("spec") or {}).get("secretName") or ref.name
        inputs = ReceiverInputs(
            settings=ctx.settings,
            managed_secret_name=managed_name,
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

    internal, external = endpoints(source, ctx.settings)
    extra: dict[str, Any] = {"endpoint": internal, "externalEndpoint": external}
    if missing:
        await write_status(
            ctx, c.WEBHOOK_SOURCE, body, receiver_conditions(missing_secrets=missing), extra, emit
        )
        return False

    children = build_children(source, inputs)
    deployment: dict[str, Any] | None
    try:
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
    except Invalid as exc:
        conditions = receiver_conditions(apply_error=str(exc))
        await write_status(ctx, c.WEBHOOK_SOURCE, body, conditions, extra, emit)
        raise InvalidSpec(str(exc)) from exc
    except KubeError as exc:
        if exc.status == 404:
            # E.g. the ServiceMonitor CRD was removed since it was looked up: the retry must not
            # build a ServiceMonitor again (it would fail the same way, forever).
            ctx.forget_crds()
        raise Retry(str(exc)) from exc

    conditions = receiver_conditions(deployment=deployment, replicas=source.spec.replicas)
    extra["readyReplicas"] = ((deployment or {}).get("status") or {}).get("readyReplicas") or 0
    try:
        return await write_status(ctx, c.WEBHOOK_SOURCE, body, conditions, extra, emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc


async def _prune(ctx: Context, source: WebhookSource, children: list[dict[str, Any]]) -> None:
    """Delete the optional children the spec no longer asks for (only ours, by controller uid)."""
    for api_version, kind, name in obsolete_children(source, children):
        if kind == "ServiceMonitor" and not await ctx.service_monitor_crd_installed():
            continue
        live = await ctx.kube.get(api_version, kind, source.metadata.namespace, name)
        if live is not None and controlled_by(live, source.metadata.uid):
            await ctx.kube.delete(api_version, kind, source.metadata.namespace, name)


Reconciler = Callable[[Context, Mapping[str, Any], EmitFn], Awaitable[bool]]
