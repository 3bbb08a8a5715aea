"""BackupSchedule handlers: a BackupSchedule is reconciled into its CronJob (the Jobs it runs:
handlers.jobs). SyncSchedule's are in handlers.syncschedule."""

from __future__ import annotations

from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule
from dfm_operator.handlers.errors import kopf_errors
from dfm_operator.handlers.events import emitter
from dfm_operator.kernel import Context, Retry
from dfm_operator.services import backupschedule

BACKUP = BackupSchedule.names.plural
DRIFT_CHECK_SECONDS = 300.0


async def _reconcile_backup(ctx: Context, body: Any) -> None:
    with kopf_errors():
        await backupschedule.reconcile_backup_schedule(ctx, body, emitter(body))


@kopf.on.resume(c.GROUP, c.VERSION, BACKUP)
@kopf.on.create(c.GROUP, c.VERSION, BACKUP)
@kopf.on.update(c.GROUP, c.VERSION, BACKUP)
async def backup_schedule(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    await _reconcile_backup(memo.ctx, body)


@kopf.timer(
    c.GROUP,
    c.VERSION,
    BACKUP,
    interval=DRIFT_CHECK_SECONDS,
    initial_delay=DRIFT_CHECK_SECONDS,
    idle=30,
)
async def backup_drift_check(
    memo: kopf.Memo, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    """Re-apply the CronJob (hand edits, a deleted one, a claim that appeared) and record any
    finished Job no watch event brought."""
    ctx: Context = memo.ctx
    try:
        await backupschedule.catch_up(ctx, body, emitter(body))
    except Retry as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    fresh = await ctx.kube.get(c.API_VERSION, c.BACKUP_SCHEDULE, namespace, name)
    if fresh is not None:
        await _reconcile_backup(ctx, fresh)


@kopf.on.delete(c.GROUP, c.VERSION, BACKUP, optional=True)
async def backup_deleted(
    memo: kopf.Memo, namespace: str | None, name: str, uid: str, **_: Any
) -> None:
    backupschedule.forget(memo.ctx, str(namespace), name, uid)


@kopf.index(c.GROUP, c.VERSION, BACKUP)
async def backups_by_secret(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, Secret name) -> the BackupSchedules whose job mounts it."""
    return {(namespace, ref): name for ref in backupschedule.secret_refs(body.get("spec") or {})}
