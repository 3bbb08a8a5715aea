"""SyncSchedule and BackupSchedule handlers: their services say NotSupportedYet for now."""

from __future__ import annotations

from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule, SyncSchedule
from dfm_operator.handlers.events import emitter
from dfm_operator.services.backupschedule import reconcile_backup_schedule
from dfm_operator.services.syncschedule import reconcile_sync_schedule

SYNC = SyncSchedule.names.plural
BACKUP = BackupSchedule.names.plural


@kopf.on.resume(c.GROUP, c.VERSION, SYNC)
@kopf.on.create(c.GROUP, c.VERSION, SYNC)
@kopf.on.update(c.GROUP, c.VERSION, SYNC)
async def sync_schedule(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    await reconcile_sync_schedule(memo.ctx, body, emitter(body))


@kopf.on.resume(c.GROUP, c.VERSION, BACKUP)
@kopf.on.create(c.GROUP, c.VERSION, BACKUP)
@kopf.on.update(c.GROUP, c.VERSION, BACKUP)
async def backup_schedule(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    await reconcile_backup_schedule(memo.ctx, body, emitter(body))
