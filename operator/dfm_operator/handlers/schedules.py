"""SyncSchedule and BackupSchedule: their API is installed, their controllers are not built yet.

Without a handler their `kubectl get` Ready and Reason columns would stay empty forever, which
reads as "still working on it". Instead every one says plainly that nothing is scheduled:
Ready=False, reason NotSupportedYet, with a Warning Event (or InvalidSpec when the spec is wrong),
both posted by write_status like every other kind's.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule, SyncSchedule
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.reconcile import Context, plain_body, validation_message, write_status

MODELS: dict[str, type[SyncSchedule] | type[BackupSchedule]] = {
    "syncschedules": SyncSchedule,
    "backupschedules": BackupSchedule,
}


def not_supported_yet(kind: str) -> ConditionUpdate:
    return ConditionUpdate(
        c.READY,
        False,
        c.REASON_NOT_SUPPORTED_YET,
        f"this df-middleware version accepts {kind} objects but does not run them yet: "
        "nothing is scheduled",
    )


@kopf.on.resume(c.GROUP, c.VERSION, "syncschedules")
@kopf.on.create(c.GROUP, c.VERSION, "syncschedules")
@kopf.on.update(c.GROUP, c.VERSION, "syncschedules")
@kopf.on.resume(c.GROUP, c.VERSION, "backupschedules")
@kopf.on.create(c.GROUP, c.VERSION, "backupschedules")
@kopf.on.update(c.GROUP, c.VERSION, "backupschedules")
async def report(memo: kopf.Memo, body: kopf.Body, resource: kopf.Resource, **_: Any) -> None:
    ctx: Context = memo.ctx
    model = MODELS[resource.plural]
    kind = model.names.kind
    try:
        model.model_validate(plain_body(body))
        condition = not_supported_yet(kind)
    except ValidationError as exc:
        condition = ConditionUpdate(c.READY, False, c.REASON_INVALID_SPEC, validation_message(exc))

    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    await write_status(ctx, kind, body, [condition], {}, emit)
