"""The Jobs the operator's CronJobs run: each finished one is handed to its kind's service.

Generic over the owning kind: a Job carries the ``app.kubernetes.io/component`` label of its
CronJob's pod template, and :data:`RECORDERS` maps that component to the service that records
the outcome (a BackupSchedule's, a SyncSchedule's).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.handlers.events import emitter
from dfm_operator.kernel import Context, EmitFn
from dfm_operator.kube import KubeError
from dfm_operator.services import backupschedule, jobs, syncschedule

Recorder = Callable[[Context, jobs.JobOutcome, Callable[[dict[str, Any]], EmitFn]], Awaitable[None]]
RECORDERS: dict[str, Recorder] = {
    c.BACKUP_COMPONENT: backupschedule.record_backup_job,
    c.SYNC_COMPONENT: syncschedule.record_sync_job,
}
JOB_LABELS = {c.LABEL_MANAGED_BY: c.MANAGED_BY}

log = logging.getLogger(__name__)


@kopf.on.event("batch", "v1", "jobs", labels=JOB_LABELS)
async def job_changed(memo: kopf.Memo, body: kopf.Body, event: kopf.RawEvent, **_: Any) -> None:
    """A Job changed: once it has finished, its outcome is recorded (once: the services keep
    track of what they recorded; a missed one is caught up by their drift checks)."""
    if event.get("type") == "DELETED":
        return
    component = (body.get("metadata", {}).get("labels") or {}).get(c.LABEL_COMPONENT)
    recorder = RECORDERS.get(str(component))
    if recorder is None:
        return
    ctx: Context = memo.ctx
    try:
        outcome = await jobs.read_outcome(ctx, body, container=str(component))
        if outcome is not None:
            await recorder(ctx, outcome, emitter)
    except KubeError as exc:
        log.warning("job outcome not recorded yet: %s", exc)
