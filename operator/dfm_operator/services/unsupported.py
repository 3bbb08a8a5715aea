"""Kinds whose API is installed but whose controller is not built yet.

Without a handler their `kubectl get` Ready and Reason columns would stay empty forever, which
reads as "still working on it". Instead every one says plainly that nothing is scheduled:
Ready=False, reason NotSupportedYet, with a Warning Event (or InvalidSpec when the spec is wrong),
both posted by write_status like every other kind's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule, SyncSchedule
from dfm_operator.api.common import Status
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kernel import Context, EmitFn, plain_body, validation_message, write_status


def not_supported_yet(kind: str) -> ConditionUpdate:
    return ConditionUpdate(
        c.READY,
        False,
        c.REASON_NOT_SUPPORTED_YET,
        f"this df-middleware version accepts {kind} objects but does not run them yet: "
        "nothing is scheduled",
    )


async def report_not_supported(
    ctx: Context,
    model: type[SyncSchedule] | type[BackupSchedule],
    status: Status,
    body: Mapping[str, Any],
    emit: EmitFn,
) -> None:
    """Ready=False NotSupportedYet for a valid spec, InvalidSpec (naming the field) otherwise."""
    kind = model.names.kind
    try:
        model.model_validate(plain_body(body))
        condition = not_supported_yet(kind)
    except ValidationError as exc:
        condition = ConditionUpdate(c.READY, False, c.REASON_INVALID_SPEC, validation_message(exc))
    await write_status(ctx, kind, body, [condition], status, emit)
