"""BackupSchedule handlers: its service says NotSupportedYet for now (SyncSchedule's are in
``handlers.syncschedule``)."""

from __future__ import annotations

from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule
from dfm_operator.handlers.events import emitter
from dfm_operator.services.backupschedule import reconcile_backup_schedule

BACKUP = BackupSchedule.names.plural


@kopf.on.resume(c.GROUP, c.VERSION, BACKUP)
@kopf.on.create(c.GROUP, c.VERSION, BACKUP)
@kopf.on.update(c.GROUP, c.VERSION, BACKUP)
async def backup_schedule(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    await reconcile_backup_schedule(memo.ctx, body, emitter(body))
