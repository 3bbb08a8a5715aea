"""SyncSchedule: gather the sink and the token, apply a ConfigMap and a CronJob, account each
finished Job's run, report.

``reconcile_sync_schedule`` is the one entry. It re-reads the SyncSchedule under its lock (so two
Job events never count a run twice), gathers what the build needs (the sink WebhookSource's
store, the ManagedSecret's Secret, the database Secret), applies the children unless something
is missing, accounts a finished Job handed to it (``services.jobs``: the Pod's termination
message is the run's summary), and writes status: ``Ready`` from
:func:`dfm_operator.syncruns.sync_ready`. :func:`record_sync_job` is how the Job watch
(``handlers.jobs``) hands a finished Job over; :func:`catch_up` finds the ones no event brought.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import SyncSchedule, SyncScheduleStatus
from dfm_operator.api.common import parse_rfc3339
from dfm_operator.api.managedsecret import SecretType
from dfm_operator.api.syncschedule import SyncRun
from dfm_operator.api.webhooksource import Store
from dfm_operator.builders.syncschedule import SyncInputs, build_children
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kernel import (
    Context,
    EmitFn,
    InvalidSpec,
    Retry,
    measured,
    plain_body,
    validation_message,
    write_status,
)
from dfm_operator.kube import Invalid, KubeError
from dfm_operator.services.jobs import JobOutcome, finished_jobs, is_newer
from dfm_operator.syncruns import (
    after_run,
    later,
    longest_interval,
    next_run,
    run_record,
    sync_ready,
)
from webhook_server.secrets import ACCESS_TOKEN
from webhook_server.sync.summary import parse_summary

SYNC_FAILED = "SyncFailed"


@dataclass(frozen=True)
class _Gathered:
    inputs: SyncInputs | None
    problem: ConditionUpdate | None


def _problem(reason: str, message: str) -> _Gathered:
    return _Gathered(None, ConditionUpdate(c.READY, False, reason, message))


async def reconcile_sync_schedule(
    ctx: Context,
    body: Mapping[str, Any],
    emit: EmitFn,
    *,
    apply: bool = True,
    outcome: JobOutcome | None = None,
) -> bool:
    """Converge one SyncSchedule (``apply=False``: status only) and account ``outcome`` (a
    finished Job) unless it is already; returns whether it is Ready. Raises InvalidSpec
    (permanent) or Retry."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    async with measured(ctx, c.SYNC_SCHEDULE, body) as result:
        async with ctx.lock(f"syncschedule:{namespace}/{name}"):
            try:
                fresh = await ctx.kube.get(c.API_VERSION, c.SYNC_SCHEDULE, namespace, name)
            except KubeError as exc:
                raise Retry(str(exc)) from exc
            if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                result[0] = "not_ready"
                return False
            ready = await _reconcile(ctx, fresh, emit, apply=apply, outcome=outcome)
        result[0] = "ready" if ready else "not_ready"
        return ready


async def reconcile_by_name(
    ctx: Context,
    namespace: str,
    name: str,
    emit_for: Callable[[dict[str, Any]], EmitFn],
    *,
    apply: bool,
    outcome: JobOutcome | None = None,
) -> None:
    """Reconcile a schedule that a Job, a Secret's or a sink's event points at, if it exists.
    Its failures are reported in its status; its own handlers retry them."""
    try:
        body = await ctx.kube.get(c.API_VERSION, c.SYNC_SCHEDULE, namespace, name)
    except KubeError:
        return
    if body is None:
        return
    try:
        await reconcile_sync_schedule(ctx, body, emit_for(body), apply=apply, outcome=outcome)
    except (InvalidSpec, Retry):
        return


def schedule_of(child: Mapping[str, Any]) -> str | None:
    """The SyncSchedule a child (CronJob, ConfigMap) belongs to, by its label."""
    labels = (child.get("metadata") or {}).get("labels") or {}
    value = labels.get(c.LABEL_SYNC)
    return str(value) if value else None


async def record_sync_job(
    ctx: Context, outcome: JobOutcome, emit_for: Callable[[dict[str, Any]], EmitFn]
) -> None:
    """A finished Job of a SyncSchedule (from the Job watch): account its run, once."""
    name = outcome.labels.get(c.LABEL_SYNC)
    if name and outcome.namespace:
        await reconcile_by_name(ctx, outcome.namespace, name, emit_for, apply=True, outcome=outcome)


async def catch_up(
    ctx: Context, namespace: str, name: str, emit_for: Callable[[dict[str, Any]], EmitFn]
) -> None:
    """Account the finished Jobs of this schedule that no watch event brought (an operator that
    was down while they ran), oldest first, so each counts in order."""
    try:
        outcomes = await finished_jobs(ctx, namespace, f"{c.LABEL_SYNC}={name}", c.SYNC_COMPONENT)
    except KubeError:
        return
    for outcome in outcomes:
        await reconcile_by_name(ctx, namespace, name, emit_for, apply=False, outcome=outcome)


def forget(ctx: Context, namespace: str | None, name: str, uid: str) -> None:
    if namespace:
        ctx.metrics.forget_sync(namespace, name)
    ctx.announced.pop(uid, None)


def references(name: str, spec: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """(kind of reference, name) -> this schedule: its sink and its ManagedSecret."""
    refs: dict[tuple[str, str], str] = {}
    sink = ((spec.get("sink") or {}).get("webhookSourceRef") or {}).get("name")
    if sink:
        refs[("sink", str(sink))] = name
    auth = ((spec.get("connector") or {}).get("http") or {}).get("auth") or {}
    managed = (auth.get("managedSecretRef") or {}).get("name")
    if managed:
        refs[("token", str(managed))] = name
    return refs


async def _reconcile(
    ctx: Context,
    body: dict[str, Any],
    emit: EmitFn,
    *,
    apply: bool,
    outcome: JobOutcome | None,
) -> bool:
    try:
        schedule = SyncSchedule.model_validate(plain_body(body))
    except ValidationError as exc:
        message = validation_message(exc)
        invalid = [ConditionUpdate(c.READY, False, c.REASON_INVALID_SPEC, message)]
        await _write(ctx, body, invalid, SyncScheduleStatus(), emit)
        raise InvalidSpec(message) from exc
    now = ctx.clock()
    ns, name = schedule.metadata.namespace, schedule.metadata.name
    try:
        gathered = await _gather(ctx, schedule)
        problem = gathered.problem
        cronjob: dict[str, Any] | None = None
        if problem is None and apply and gathered.inputs is not None:
            try:
                # In order: the ConfigMap before the CronJob whose Jobs mount it.
                applied = [
                    await ctx.kube.apply(ch) for ch in build_children(schedule, gathered.inputs)
                ]
                cronjob = applied[-1]
            except Invalid as exc:
                problem = ConditionUpdate(c.READY, False, c.REASON_APPLY_FAILED, str(exc))
        current = _status(body)
        fields = SyncScheduleStatus()
        last_run = current.last_run
        recorded = last_run.start_time if last_run else None
        counted: SyncRun | None = None
        if outcome is not None and is_newer(outcome, recorded, last_run.job if last_run else None):
            summary = parse_summary(outcome.termination_message)
            counted = run_record(outcome, summary, ns, now)
            fields = after_run(current, counted)
            last_run = counted
        scheduled = later(
            current.last_schedule_time,
            parse_rfc3339(((cronjob or {}).get("status") or {}).get("lastScheduleTime")),
            outcome.started_at if outcome is not None else None,
        )
        if scheduled is not None and scheduled != current.last_schedule_time:
            fields.last_schedule_time = scheduled
        upcoming = next_run(schedule.spec.schedule, schedule.spec.time_zone, now)
        ready = sync_ready(problem, schedule.spec.suspend, last_run, upcoming)
        result = await _write(ctx, body, [ready], fields, emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc
    if counted is not None:
        # Once the run is in status: a failed write is retried and counts it then, once.
        _count_run(ctx, ns, name, counted)
        if not counted.succeeded:
            message = f"job {counted.job}: {counted.reason}: {counted.message}"
            emit("Warning", SYNC_FAILED, message[:1024])
    _gauges(ctx, schedule, body, current, fields)
    if problem is not None and problem.reason == c.REASON_APPLY_FAILED:
        raise InvalidSpec(problem.message)
    return result


async def _write(
    ctx: Context,
    body: Mapping[str, Any],
    conditions: list[ConditionUpdate],
    fields: SyncScheduleStatus,
    emit: EmitFn,
) -> bool:
    return await write_status(ctx, c.SYNC_SCHEDULE, body, conditions, fields, emit)


def _status(body: Mapping[str, Any]) -> SyncScheduleStatus:
    try:
        return SyncScheduleStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return SyncScheduleStatus()


async def _gather(ctx: Context, schedule: SyncSchedule) -> _Gathered:
    """The sink's store, the token's Secret, the database Secret; or what is missing."""
    ns = schedule.metadata.namespace
    sink_name = schedule.spec.sink.webhook_source_ref.name
    sink = await ctx.kube.get(c.API_VERSION, c.WEBHOOK_SOURCE, ns, sink_name)
    if sink is None:
        return _problem(c.REASON_SINK_NOT_FOUND, f"WebhookSource {sink_name} not found")
    try:
        store = Store.model_validate((sink.get("spec") or {}).get("store") or {})
    except ValidationError:
        return _problem(
            c.REASON_SINK_NOT_FOUND, f"WebhookSource {sink_name} has an invalid spec.store"
        )
    token_secret = None
    auth = schedule.spec.connector.http.auth
    if auth is not None:
        managed_name = auth.managed_secret_ref.name
        managed = await ctx.kube.get(c.API_VERSION, c.MANAGED_SECRET, ns, managed_name)
        if managed is None:
            return _problem(c.REASON_TOKEN_UNAVAILABLE, f"ManagedSecret {managed_name} not found")
        spec = managed.get("spec") or {}
        if spec.get("type") != SecretType.OAUTH2.value:
            return _problem(
                c.REASON_TOKEN_UNAVAILABLE,
                f"ManagedSecret {managed_name} is not of type oauth2: it holds no access token",
            )
        token_secret = str(spec.get("secretName") or managed_name)
        secret = await ctx.kube.get("v1", "Secret", ns, token_secret)
        if secret is None or ACCESS_TOKEN not in (secret.get("data") or {}):
            return _problem(
                c.REASON_TOKEN_UNAVAILABLE,
                f"ManagedSecret {managed_name} has not written an access token yet "
                f"(Secret {token_secret}, key {ACCESS_TOKEN})",
            )
    database = store.database_secret_ref or ctx.settings.default_database_secret
    if await ctx.kube.get("v1", "Secret", ns, database.name) is None:
        return _problem(
            c.REASON_SECRET_NOT_FOUND,
            f"Secret not found: {database.name} (the database of WebhookSource {sink_name})",
        )
    inputs = SyncInputs(
        settings=ctx.settings,
        sink=f"{ns}/{sink_name}",
        database=database,
        retention_days=store.retention_days,
        token_secret=token_secret,
    )
    return _Gathered(inputs, None)


def _count_run(ctx: Context, namespace: str, name: str, run: SyncRun) -> None:
    metrics = ctx.metrics
    metrics.sync_runs.labels(namespace, name, "succeeded" if run.succeeded else "failed").inc()
    if run.items is not None and run.stored is not None:
        metrics.sync_items.labels(namespace, name, "stored").inc(run.stored)
        metrics.sync_items.labels(namespace, name, "duplicate").inc(max(run.items - run.stored, 0))
    if run.duration_seconds is not None:
        metrics.sync_duration.labels(namespace, name).observe(run.duration_seconds)


def _gauges(
    ctx: Context,
    schedule: SyncSchedule,
    body: Mapping[str, Any],
    current: SyncScheduleStatus,
    fields: SyncScheduleStatus,
) -> None:
    """The per-schedule gauges, from the status (so an operator restart restores them)."""
    metrics = ctx.metrics
    ns, name = schedule.metadata.namespace, schedule.metadata.name
    success = fields.last_successful_time or current.last_successful_time
    if success is not None:
        metrics.sync_last_success.labels(ns, name).set(success.timestamp())
    created = parse_rfc3339((body.get("metadata") or {}).get("creationTimestamp"))
    if created is not None:
        metrics.sync_created.labels(ns, name).set(created.timestamp())
    spec = schedule.spec
    interval = longest_interval(spec.schedule, spec.time_zone, ctx.clock())
    metrics.sync_interval.labels(ns, name).set(interval)
    metrics.sync_suspended.labels(ns, name).set(1 if spec.suspend else 0)
    failures = (
        fields.consecutive_failures
        if "consecutive_failures" in fields.model_fields_set
        else current.consecutive_failures
    )
    metrics.sync_failures.labels(ns, name).set(failures)
