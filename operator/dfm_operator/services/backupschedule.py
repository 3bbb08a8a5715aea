"""BackupSchedule: a CronJob running `dfm backup run`, its claim, and the outcome of each Job.

Two entries. :func:`reconcile_backup_schedule` (create, update, resume, drift check): gather
(the Secrets the job mounts, the claim when the operator does not create it), build (pure
builders), apply, and report Ready from the spec and the outcomes recorded so far.
:func:`record_backup_job` (a finished Job, from the Job watch or the drift check's catch-up):
a pure :func:`plan_outcome` turns the Job's outcome and its summary into status fields, a
condition, an Event and a metric; then they are written. Outcomes are recorded once each, in
order (``status.lastBackupJob``), so a restarted operator replaying every Job counts nothing
twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule, BackupScheduleStatus
from dfm_operator.api.backupschedule import BackupInfo
from dfm_operator.api.common import parse_rfc3339
from dfm_operator.builders.backupschedule import (
    S3_CREDENTIAL_KEYS,
    build_backup_cronjob,
    build_backup_pvc,
    location,
)
from dfm_operator.builders.managedsecret import decode_data
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kernel import (
    Context,
    EmitFn,
    InvalidSpec,
    Retry,
    measured,
    plain_body,
    remove_series,
    validation_message,
    write_status,
)
from dfm_operator.kube import Invalid, KubeError
from dfm_operator.services.jobs import JobOutcome, finished_jobs, is_newer
from webhook_server.backup.manifest import JobSummary, human_size

KIND = c.BACKUP_SCHEDULE
FAILURE_REASONS = (c.REASON_BACKUP_FAILED, c.REASON_VERIFY_FAILED)


def _lock_key(namespace: str, name: str) -> str:
    return f"backupschedule:{namespace}/{name}"


# --- pure decisions ---------------------------------------------------------------------------


def ready_condition(schedule: BackupSchedule, status: BackupScheduleStatus) -> ConditionUpdate:
    """Ready from the spec and the outcomes recorded so far (a failure stays reported until a
    backup succeeds)."""
    if schedule.spec.suspend:
        return ConditionUpdate(
            c.READY, False, c.REASON_SUSPENDED, "spec.suspend is true: no backups are taken"
        )
    previous = status.condition(c.READY)
    failing = status.consecutive_failures and previous is not None
    if failing and previous is not None and previous.reason in FAILURE_REASONS:
        return ConditionUpdate(c.READY, False, previous.reason, previous.message)
    last = status.last_successful_backup
    if last is not None:
        return ConditionUpdate(c.READY, True, c.REASON_BACKUP_SUCCEEDED, _describe(last))
    return ConditionUpdate(
        c.READY,
        True,
        c.REASON_SCHEDULED,
        f"no backup yet; scheduled {schedule.spec.schedule!r} ({schedule.spec.time_zone})",
    )


def _describe(backup: BackupInfo) -> str:
    return (
        f"{backup.name} in {backup.location}: {human_size(backup.size_bytes)}, "
        f"verified by {backup.verification.value}"
    )


@dataclass(frozen=True)
class OutcomePlan:
    """What recording one Job's outcome writes and says."""

    status: BackupScheduleStatus  # only the fields to set
    condition: ConditionUpdate
    events: list[tuple[str, str, str]]
    result: str  # the runs metric's label: success, failed, verify_failed


def plan_outcome(
    schedule: BackupSchedule, status: BackupScheduleStatus, outcome: JobOutcome
) -> OutcomePlan:
    """Pure: (schedule, recorded status, a finished Job) -> the status, condition, Events."""
    summary = JobSummary.from_message(outcome.termination_message)
    fields = BackupScheduleStatus(
        last_backup_time=outcome.started_at or outcome.finished_at,
        last_backup_job=outcome.job,
    )
    where = location(schedule)
    if outcome.succeeded and (summary is None or summary.ok):
        ended = summary.finished_at if summary is not None else None
        fields.last_successful_time = ended or outcome.finished_at
        fields.consecutive_failures = 0
        events: list[tuple[str, str, str]] = []
        if summary is not None and summary.name and summary.sha256 and summary.verification:
            info = BackupInfo(
                name=summary.name,
                location=where,
                size_bytes=summary.size_bytes or 0,
                sha256=summary.sha256,
                verification=summary.verification,
            )
            fields.last_successful_backup = info
            fields.last_verified_time = summary.verified_at
            message = f"{_describe(info)}, sha256 {info.sha256[:12]}…"
            if summary.pruned:
                message += f"; {summary.pruned} old backup(s) deleted by retention"
            events.append(("Normal", c.REASON_BACKUP_SUCCEEDED, message))
            condition = ConditionUpdate(c.READY, True, c.REASON_BACKUP_SUCCEEDED, _describe(info))
        else:
            # The Pod (and its summary) is gone: the Job's word is all there is.
            message = f"Job {outcome.job} completed (its summary is no longer available)"
            events.append(("Normal", c.REASON_BACKUP_SUCCEEDED, message))
            condition = ConditionUpdate(c.READY, True, c.REASON_BACKUP_SUCCEEDED, message)
        if summary is not None and summary.error:
            events.append(("Warning", "RetentionFailed", summary.error))
        return OutcomePlan(fields, condition, events, "success")
    verify = summary is not None and summary.stage == "verify"
    reason = c.REASON_VERIFY_FAILED if verify else c.REASON_BACKUP_FAILED
    if summary is not None and summary.error:
        stage = "" if verify else f" ({summary.stage})"
        detail = f"{summary.error}{stage}"
    else:
        detail = f"Job {outcome.job} failed: {outcome.reason}"
        if outcome.message:
            detail += f": {outcome.message}"
        if outcome.exit_code is not None:
            detail += f" (exit code {outcome.exit_code})"
    if verify and summary is not None and summary.name:
        message = f"backup {summary.name} could not be verified, so it was not kept: {detail}"
    else:
        message = f"backup failed: {detail}"
    fields.consecutive_failures = status.consecutive_failures + 1
    return OutcomePlan(
        fields,
        ConditionUpdate(c.READY, False, reason, message),
        [("Warning", reason, message)],
        "verify_failed" if verify else "failed",
    )


# --- reconcile --------------------------------------------------------------------------------


async def reconcile_backup_schedule(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> bool:
    """Converge one BackupSchedule; returns whether it is Ready. Raises InvalidSpec or Retry."""
    async with measured(ctx, KIND, body) as result:
        meta = body.get("metadata") or {}
        async with ctx.lock(_lock_key(str(meta.get("namespace")), str(meta.get("name")))):
            ready = await _reconcile(ctx, body, emit)
        result[0] = "ready" if ready else "not_ready"
        return ready


def _status(body: Mapping[str, Any]) -> BackupScheduleStatus:
    try:
        return BackupScheduleStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return BackupScheduleStatus()


async def _parse(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> BackupSchedule:
    try:
        return BackupSchedule.model_validate(plain_body(body))
    except ValidationError as exc:
        message = validation_message(exc)
        invalid = [ConditionUpdate(c.READY, False, c.REASON_INVALID_SPEC, message)]
        await _write(ctx, body, invalid, BackupScheduleStatus(), emit)
        raise InvalidSpec(message) from exc


async def _write(
    ctx: Context,
    body: Mapping[str, Any],
    conditions: list[ConditionUpdate],
    fields: BackupScheduleStatus,
    emit: EmitFn,
) -> bool:
    try:
        return await write_status(ctx, KIND, body, conditions, fields, emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc


async def _missing(ctx: Context, schedule: BackupSchedule) -> tuple[str, str] | None:
    """(reason, message) when something the job needs is not there yet, else None."""
    ns = schedule.metadata.namespace
    needs = [(schedule.spec.database_secret_ref.name, [schedule.spec.database_secret_ref.key])]
    if schedule.spec.destination.s3 is not None:
        needs.append(
            (schedule.spec.destination.s3.credentials_secret_ref.name, list(S3_CREDENTIAL_KEYS))
        )
    for name, keys in needs:
        secret = await ctx.kube.get("v1", "Secret", ns, name)
        if secret is None:
            return c.REASON_SECRET_NOT_FOUND, f"Secret {name} not found"
        data = decode_data(secret)
        absent = [k for k in keys if not data.get(k)]
        if absent:
            return c.REASON_SECRET_NOT_FOUND, f"Secret {name} has no key {', '.join(absent)}"
    pvc = schedule.spec.destination.pvc
    if pvc is not None and pvc.size is None:
        claim = await ctx.kube.get("v1", "PersistentVolumeClaim", ns, pvc.claim_name)
        if claim is None:
            return (
                c.REASON_CLAIM_NOT_FOUND,
                f"PersistentVolumeClaim {pvc.claim_name} not found (give destination.pvc.size "
                "to have it created)",
            )
    return None


async def _reconcile(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> bool:
    schedule = await _parse(ctx, body, emit)
    status = _status(body)
    try:
        missing = await _missing(ctx, schedule)
    except KubeError as exc:
        raise Retry(str(exc)) from exc
    if missing is not None:
        await _write(ctx, body, [ConditionUpdate(c.READY, False, *missing)], status_fields(), emit)
        record_metrics(ctx, schedule, status)
        return False
    try:
        pvc = build_backup_pvc(schedule, ctx.settings)
        if pvc is not None:
            await ctx.kube.create(pvc)  # created once, never resized or replaced by the operator
        await ctx.kube.apply(build_backup_cronjob(schedule, ctx.settings))
    except Invalid as exc:
        failed = [ConditionUpdate(c.READY, False, c.REASON_APPLY_FAILED, str(exc))]
        await _write(ctx, body, failed, status_fields(), emit)
        raise InvalidSpec(str(exc)) from exc
    except KubeError as exc:
        raise Retry(str(exc)) from exc
    ready = await _write(ctx, body, [ready_condition(schedule, status)], status_fields(), emit)
    record_metrics(ctx, schedule, status)
    return ready


def status_fields() -> BackupScheduleStatus:
    """A status write that sets no field (conditions and observedGeneration only)."""
    return BackupScheduleStatus()


# --- Job outcomes -----------------------------------------------------------------------------


async def record_backup_job(
    ctx: Context, outcome: JobOutcome, emit_for: Callable[[dict[str, Any]], EmitFn]
) -> None:
    """Record a finished backup Job on its BackupSchedule (once; older ones are ignored)."""
    name = outcome.labels.get(c.LABEL_BACKUP_SCHEDULE)
    if not name or not outcome.namespace:
        return
    async with ctx.lock(_lock_key(outcome.namespace, name)):
        body = await ctx.kube.get(c.API_VERSION, KIND, outcome.namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        await _record(ctx, body, outcome, emit_for(body))


async def _record(ctx: Context, body: Mapping[str, Any], outcome: JobOutcome, emit: EmitFn) -> None:
    status = _status(body)
    if not is_newer(outcome, status.last_backup_time, status.last_backup_job):
        return
    try:
        schedule = BackupSchedule.model_validate(plain_body(body))
    except ValidationError:
        return  # reported as InvalidSpec by the reconcile; the next Job is recorded once fixed
    plan = plan_outcome(schedule, status, outcome)
    condition = plan.condition
    if schedule.spec.suspend:
        condition = ready_condition(schedule, status)
    await write_status(ctx, KIND, body, [condition], plan.status, emit)
    for event in plan.events:
        emit(*event)
    ctx.metrics.backup_runs.labels(plan.result).inc()
    merged = status.model_copy(update=plan.status.model_dump(exclude_unset=True))
    record_metrics(ctx, schedule, merged, verify_failed=plan.result == "verify_failed")


async def catch_up(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> None:
    """Record the finished Jobs of this schedule that no watch event brought (the drift check)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    try:
        outcomes = await finished_jobs(
            ctx, namespace, f"{c.LABEL_BACKUP_SCHEDULE}={name}", c.BACKUP_COMPONENT
        )
        for outcome in outcomes:
            async with ctx.lock(_lock_key(namespace, name)):
                fresh = await ctx.kube.get(c.API_VERSION, KIND, namespace, name)
                if fresh is None:
                    return
                await _record(ctx, fresh, outcome, emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc


# --- metrics ----------------------------------------------------------------------------------


def _timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def record_metrics(
    ctx: Context,
    schedule: BackupSchedule,
    status: BackupScheduleStatus,
    *,
    verify_failed: bool | None = None,
) -> None:
    m = ctx.metrics
    labels = (schedule.metadata.namespace, schedule.metadata.name)
    created = (schedule.metadata.model_extra or {}).get("creationTimestamp")
    created_at = parse_rfc3339(created) if isinstance(created, str) else None
    if created_at is not None:
        m.backup_created.labels(*labels).set(created_at.timestamp())
    success = _timestamp(status.last_successful_time)
    if success is not None:
        m.backup_last_success.labels(*labels).set(success)
    if status.last_successful_backup is not None:
        m.backup_last_size.labels(*labels).set(status.last_successful_backup.size_bytes)
    verified = _timestamp(status.last_verified_time)
    if verified is not None:
        m.backup_last_verified.labels(*labels).set(verified)
    m.backup_failures.labels(*labels).set(status.consecutive_failures)
    m.backup_suspended.labels(*labels).set(1 if schedule.spec.suspend else 0)
    if verify_failed is None:
        ready = status.condition(c.READY)
        verify_failed = bool(
            status.consecutive_failures and ready and ready.reason == c.REASON_VERIFY_FAILED
        )
    m.backup_verify_failing.labels(*labels).set(1 if verify_failed else 0)


def forget(ctx: Context, namespace: str, name: str, uid: str | None) -> None:
    """A deleted BackupSchedule: its series go (its CronJob goes with it, its claim stays
    unless deleteWithSchedule)."""
    m = ctx.metrics
    remove_series(
        (
            m.backup_last_success,
            m.backup_last_size,
            m.backup_last_verified,
            m.backup_failures,
            m.backup_verify_failing,
            m.backup_created,
            m.backup_suspended,
        ),
        namespace,
        name,
    )
    if uid:
        ctx.announced.pop(uid, None)


def secret_refs(spec: Mapping[str, Any]) -> list[str]:
    """The Secrets a BackupSchedule's spec names (for the Secret watch)."""
    s3 = (spec.get("destination") or {}).get("s3") or {}
    refs = [
        (spec.get("databaseSecretRef") or {}).get("name"),
        (s3.get("credentialsSecretRef") or {}).get("name"),
    ]
    return [ref for ref in refs if ref]
