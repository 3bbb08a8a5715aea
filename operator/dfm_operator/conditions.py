"""Kubernetes-style conditions: pure functions over plain dicts.

``lastTransitionTime`` moves only when a condition's status flips (cert-manager's rule), so
re-asserting the same state changes nothing and status writes can be skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dfm_operator.api.common import rfc3339


@dataclass(frozen=True)
class ConditionUpdate:
    """A condition a policy wants; :func:`merge_conditions` turns it into the wire form
    (``dfm_operator.api.common.Condition``) with times and generation."""

    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    existing: Sequence[dict[str, Any]],
    updates: Sequence[ConditionUpdate],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions after applying ``updates``; others are kept as they were."""
    by_type = {c.get("type"): dict(c) for c in existing}
    for update in updates:
        status = "True" if update.status else "False"
        previous = by_type.get(update.type) or {}
        since = previous.get("lastTransitionTime") if previous.get("status") == status else None
        by_type[update.type] = {
            "type": update.type,
            "status": status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": since or rfc3339(now),
            "observedGeneration": generation,
        }
    return sorted(by_type.values(), key=lambda c: str(c.get("type")))


def find(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    for condition in conditions:
        if condition.get("type") == type_:
            return condition
    return None


def is_true(conditions: Sequence[dict[str, Any]], type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"
