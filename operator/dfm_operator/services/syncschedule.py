"""SyncSchedule: accepted, not run yet (``services.unsupported``); its controller goes here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dfm_operator.api import SyncSchedule, SyncScheduleStatus
from dfm_operator.kernel import Context, EmitFn
from dfm_operator.services.unsupported import report_not_supported


async def reconcile_sync_schedule(ctx: Context, body: Mapping[str, Any], emit: EmitFn) -> None:
    await report_not_supported(ctx, SyncSchedule, SyncScheduleStatus(), body, emit)
