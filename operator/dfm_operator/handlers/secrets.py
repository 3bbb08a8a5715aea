"""Secret events: wake the ManagedSecrets; reconcile the WebhookSources and BackupSchedules that
use the Secret, and the SyncSchedules whose token (a ManagedSecret's Secret) or sink's database
it is."""

from __future__ import annotations

import contextlib
from typing import Any

import kopf

from dfm_operator import constants as c
from dfm_operator.handlers.events import detached_context, emitter
from dfm_operator.kernel import InvalidSpec, Retry
from dfm_operator.services import backupschedule, managedsecret, syncschedule, webhooksource


def _not_listed(event: kopf.RawEvent, **_: Any) -> bool:
    """Not kopf's initial listing (type None): what uses a Secret found at start-up is
    reconciled by its own resume handler (or daemon) anyway."""
    return event.get("type") is not None


@kopf.on.event("", "v1", "secrets", when=_not_listed)
async def secret_changed(memo: kopf.Memo, namespace: str | None, name: str, **kwargs: Any) -> None:
    """A referenced Secret appeared, changed or went away."""
    if not namespace:
        return
    sources: kopf.Index[Any, str] = kwargs["sources_by_secret"]
    managed: kopf.Index[Any, str] = kwargs["managed_by_secret"]
    for owner in managed.get((namespace, name), []):
        managedsecret.wake(memo.ctx, namespace, owner)
    body: kopf.Body = kwargs["body"]
    owners = body.get("metadata", {}).get("ownerReferences") or []
    syncs: kopf.Index[Any, str] = kwargs["syncs_by_ref"]
    sync_names: set[str] = set()
    for ref in webhooksource.names_of_secret(name, owners):
        sync_names.update(syncs.get((namespace, "token", ref), []))
        for owner in sources.get((namespace, ref), []):
            sync_names.update(syncs.get((namespace, "sink", owner), []))
            webhooksource.request_reconcile(
                memo.ctx, namespace, owner, emitter, kwargs["secret_names"], apply=True,
                context=detached_context(),
            )  # fmt: skip
    backups: kopf.Index[Any, str] = kwargs["backups_by_secret"]
    for owner in backups.get((namespace, name), []):
        schedule = await memo.ctx.kube.get(c.API_VERSION, c.BACKUP_SCHEDULE, namespace, owner)
        if schedule is not None:
            # Failures are reported in its status; its own handlers retry.
            with contextlib.suppress(InvalidSpec, Retry):
                await backupschedule.reconcile_backup_schedule(
                    memo.ctx, schedule, emitter(schedule)
                )
    for sync_name in sorted(sync_names):
        await syncschedule.reconcile_by_name(memo.ctx, namespace, sync_name, emitter, apply=True)
