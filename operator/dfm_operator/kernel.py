"""The operator's kernel: what every kind's service shares.

The context a service runs in (the API door, settings, metrics, a clock, per-object locks), the
two errors a service raises (:class:`InvalidSpec`, :class:`Retry`), the metrics registry, and
:func:`write_status`, the one way a status is written. Services (``dfm_operator.services``) hold
each kind's reconciliation; handlers only translate kopf events into service calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import Status
from dfm_operator.conditions import ConditionUpdate, find, merge_conditions
from dfm_operator.eventstore import EventStores
from dfm_operator.kube import Kube
from dfm_operator.settings import OperatorSettings
from webhook_server.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
# Reasons whose arrival deserves a Warning event.
WARNING_REASONS = {
    c.REASON_INVALID_SPEC,
    c.REASON_SECRET_NOT_FOUND,
    c.REASON_APPLY_FAILED,
    c.REASON_CLAIM_NOT_FOUND,
    c.REASON_SINK_NOT_FOUND,
    c.REASON_TOKEN_UNAVAILABLE,
}
# A sync run's duration, from seconds to hours.
SYNC_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)

EmitFn = Callable[[str, str, str], None]  # (type, reason, message): a Kubernetes Event


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
        # BackupSchedules, from the operator's view of their Jobs: a backup job lives for
        # minutes, so nothing would scrape it. Set from status at every reconcile (so after a
        # restart too); removed when the schedule is deleted.
        per_schedule = ["namespace", "name"]
        self.backup_last_success = Gauge(
            "dfm_backupschedule_last_success_timestamp_seconds",
            "When each BackupSchedule's last successful (verified) backup ended (unix time).",
            per_schedule,
            registry=self.registry,
        )
        self.backup_last_size = Gauge(
            "dfm_backupschedule_last_backup_size_bytes",
            "Size of each BackupSchedule's last successful backup.",
            per_schedule,
            registry=self.registry,
        )
        self.backup_last_verified = Gauge(
            "dfm_backupschedule_last_verified_timestamp_seconds",
            "When a backup of each BackupSchedule last passed verification (unix time).",
            per_schedule,
            registry=self.registry,
        )
        self.backup_failures = Gauge(
            "dfm_backupschedule_consecutive_failures",
            "Failed backups of each BackupSchedule since its last success.",
            per_schedule,
            registry=self.registry,
        )
        self.backup_verify_failing = Gauge(
            "dfm_backupschedule_verify_failing",
            "1 while each BackupSchedule's last backup failed its verification.",
            per_schedule,
            registry=self.registry,
        )
        self.backup_created = Gauge(
            "dfm_backupschedule_created_timestamp_seconds",
            "When each BackupSchedule was created (unix time; for schedules that never succeeded).",
            per_schedule,
            registry=self.registry,
        )
        self.backup_suspended = Gauge(
            "dfm_backupschedule_suspended",
            "1 while each BackupSchedule is suspended.",
            per_schedule,
            registry=self.registry,
        )
        self.backup_runs = Counter(
            "dfm_backupschedule_runs",
            "Backup Jobs whose outcome the operator recorded, by result "
            "(success, failed, verify_failed).",
            ["result"],
            registry=self.registry,
        )
        # SyncSchedules, per schedule: what the operator learns from each finished Job (the
        # jobs are too short-lived to scrape) and what the alert on missed runs needs.
        self.sync_runs = Counter(
            "dfm_syncschedule_runs",
            "Finished sync runs by result (succeeded, failed).",
            [*per_schedule, "result"],
            registry=self.registry,
        )
        self.sync_items = Counter(
            "dfm_syncschedule_items",
            "Items fetched by sync runs: stored (new events) or duplicate (already stored).",
            [*per_schedule, "outcome"],
            registry=self.registry,
        )
        self.sync_duration = Histogram(
            "dfm_syncschedule_run_duration_seconds",
            "How long finished sync runs took.",
            per_schedule,
            buckets=SYNC_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.sync_last_success = Gauge(
            "dfm_syncschedule_last_success_timestamp_seconds",
            "When each SyncSchedule last finished a run successfully (unix time).",
            per_schedule,
            registry=self.registry,
        )
        self.sync_created = Gauge(
            "dfm_syncschedule_created_timestamp_seconds",
            "When each SyncSchedule was created (unix time): the start of the wait for a first "
            "success.",
            per_schedule,
            registry=self.registry,
        )
        self.sync_interval = Gauge(
            "dfm_syncschedule_interval_seconds",
            "The longest gap between two runs of each SyncSchedule's cron schedule.",
            per_schedule,
            registry=self.registry,
        )
        self.sync_suspended = Gauge(
            "dfm_syncschedule_suspended",
            "1 when a SyncSchedule is suspended (its runs are skipped), else 0.",
            per_schedule,
            registry=self.registry,
        )
        self.sync_failures = Gauge(
            "dfm_syncschedule_consecutive_failures",
            "Failed runs of each SyncSchedule since its last success.",
            per_schedule,
            registry=self.registry,
        )
        self._ready: dict[str, bool] = {}

    def forget_sync(self, namespace: str, name: str) -> None:
        """Drop a deleted SyncSchedule's series: a stale last success would alert forever."""
        remove_series(
            (
                self.sync_last_success,
                self.sync_created,
                self.sync_interval,
                self.sync_suspended,
                self.sync_failures,
                self.sync_duration,
            ),
            namespace,
            name,
        )
        for counter, values in (
            (self.sync_runs, ("succeeded", "failed")),
            (self.sync_items, ("stored", "duplicate")),
        ):
            for value in values:
                remove_series((counter,), namespace, name, value)

    def source_ready(self, key: str, ready: bool | None) -> None:
        if ready is None:
            self._ready.pop(key, None)
        else:
            self._ready[key] = ready
        ready_count = sum(self._ready.values())
        self.sources.labels("true").set(ready_count)
        self.sources.labels("false").set(len(self._ready) - ready_count)


def remove_series(metrics: Iterable[Counter | Gauge | Histogram], *labels: str) -> None:
    """Drop the series ``labels`` from each of ``metrics``, as when their object is deleted (a
    value left behind would alert forever); one never written is no error."""
    for metric in metrics:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)


@dataclass
class Context:
    kube: Kube
    settings: OperatorSettings
    metrics: OperatorMetrics
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _service_monitor_crd: bool | None = None
    _slots: asyncio.Semaphore | None = None
    # The Ready (status, reason, generation) last announced per object uid: kopf sometimes hands
    # a handler a body older than our own status write, which would announce it a second time.
    announced: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)
    # Reconciles triggered by another object's event, waiting for their object's turn, by
    # "<namespace>/<name>": later events join the waiting one (services.webhooksource._Turn).
    waiting: dict[str, Any] = field(default_factory=dict)
    # Work handed off by event handlers (``spawn``), until it is done.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # What wakes a per-object scheduler early (a ManagedSecret's), by "<namespace>/<name>".
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    # The event store's door: figures for status that only the database knows.
    eventstores: EventStores = field(default_factory=EventStores)
    # Spans of reconciles (webhook_server.tracing), when OTEL_* turns tracing on.
    tracing: Tracing | None = None

    def spawn(
        self,
        coro: Coroutine[Any, Any, None],
        name: str,
        context: contextvars.Context | None = None,
    ) -> None:
        """Run ``coro`` in the background (an event handler hands work off, so that kopf lets
        go of the event while the work waits its turn), in ``context`` (default: a copy of the
        current one); its failure is logged, and :meth:`stop_background` cancels what is left
        at shutdown."""
        task = asyncio.get_running_loop().create_task(coro, name=name, context=context)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed: %s", task.get_name(), exc, exc_info=exc)

    async def stop_background(self) -> None:
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def reconcile_slot(self) -> asyncio.Semaphore:
        """One of ``settings.max_concurrent_reconciles`` slots; take it inside the object's
        lock (never the other way round), so that a slot is never held while waiting."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.max_concurrent_reconciles)
        return self._slots

    def wakeup(self, key: str) -> asyncio.Event:
        return self.wakeups.setdefault(key, asyncio.Event())

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


def object_key(body: Mapping[str, Any]) -> str:
    """``<namespace>/<name>`` of a raw object."""
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


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


@contextlib.asynccontextmanager
async def measured(
    ctx: Context, kind: str, body: Mapping[str, Any] | None = None
) -> AsyncIterator[list[str]]:
    """Count one reconciliation of ``kind`` and time it; with tracing on, it is a
    ``reconcile <kind>`` span too (the object's namespace, name and generation; no spec).

    The block sets the result (``ready``, ``not_ready``, ``invalid``) in the yielded list;
    anything else that leaves the block counts as ``error``.
    """
    started = time.perf_counter()
    result = ["error"]
    span: Any = None
    with contextlib.ExitStack() as stack:
        if ctx.tracing is not None:
            span = stack.enter_context(ctx.tracing.span(f"reconcile {kind}", _span_of(kind, body)))
        try:
            yield result
        except InvalidSpec:
            result[0] = "invalid"
            raise
        finally:
            ctx.metrics.reconciliations.labels(kind, result[0]).inc()
            ctx.metrics.duration.labels(kind).observe(time.perf_counter() - started)
            if span is not None:
                span.set_attribute("dfm.result", result[0])


def _span_of(kind: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = (body or {}).get("metadata") or {}
    return {
        "dfm.kind": kind,
        "k8s.namespace.name": meta.get("namespace"),
        "dfm.name": meta.get("name"),
        "dfm.generation": meta.get("generation"),
    }


async def write_status(
    ctx: Context,
    kind: str,
    body: Mapping[str, Any],
    conditions: list[ConditionUpdate],
    fields: Status,
    emit: EmitFn,
    *,
    drop: Collection[str] = (),
    observe: bool = True,
) -> bool:
    """Write status if it changed, emit Events for Ready transitions; returns the new Ready.

    ``fields`` is the kind's own Status model with the fields this write sets; a field set to
    None is removed, a field not set is kept as it was. The whole status is validated by that
    model (unknown fields refused, as the CRD's structural schema would prune them) before it
    is sent. ``drop`` removes conditions of those types. ``observe=False`` is for writes that
    do not come from reconciling the spec (figures read from elsewhere): observedGeneration
    stays as it was.
    """
    meta = body.get("metadata") or {}
    old: dict[str, Any] = dict(body.get("status") or {})
    generation = meta.get("generation")
    changes = fields.model_dump(mode="json", by_alias=True, exclude_unset=True)
    merged = merge_conditions(
        old.get("conditions") or [], conditions, generation, ctx.clock(), drop
    )
    new = {**{k: v for k, v in old.items() if k not in changes}, **changes}
    if observe or "observedGeneration" not in old:
        new["observedGeneration"] = generation
    new["conditions"] = merged
    typed = type(fields).model_validate({k: v for k, v in new.items() if v is not None})
    new = typed.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    old_ready = find(old.get("conditions") or [], c.READY) or {}
    ready = find(new["conditions"], c.READY) or {}
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
