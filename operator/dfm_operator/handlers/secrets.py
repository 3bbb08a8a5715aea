"""Secret events: wake the ManagedSecrets, reconcile the WebhookSources that use the Secret and
the SyncSchedules whose token (a ManagedSecret's Secret) or sink's database it is."""

from __future__ import annotations

from typing import Any

import kopf

from dfm_operator.handlers.events import emitter
from dfm_operator.services import managedsecret, syncschedule, webhooksource


@kopf.on.event("", "v1", "secrets")
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
    schedules: set[str] = set()
    for ref in webhooksource.names_of_secret(name, owners):
        schedules.update(syncs.get((namespace, "token", ref), []))
        for owner in sources.get((namespace, ref), []):
            schedules.update(syncs.get((namespace, "sink", owner), []))
            await webhooksource.reconcile_by_name(
                memo.ctx, namespace, owner, emitter, kwargs["secret_names"], apply=True
            )
    for schedule in sorted(schedules):
        await syncschedule.reconcile_by_name(memo.ctx, namespace, schedule, emitter, apply=True)
