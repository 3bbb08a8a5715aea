"""Small pure decisions of the control plane: (inputs) -> decision, no I/O, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dfm_operator import constants as c
from dfm_operator.conditions import ConditionUpdate


def deployment_progress(deployment: dict[str, Any] | None, replicas: int) -> tuple[bool, str]:
    """Is the Deployment rolled out with every desired replica available? And a short account."""
    if deployment is None:
        return False, "deployment not created yet"
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    observed = status.get("observedGeneration") or 0
    updated = status.get("updatedReplicas") or 0
    available = status.get("availableReplicas") or 0
    if observed < generation:
        return False, "deployment change not yet observed"
    if updated < replicas:
        return False, f"{updated}/{replicas} replicas updated"
    if available < replicas:
        return False, f"{available}/{replicas} replicas available"
    return True, f"{available}/{replicas} replicas available"


def receiver_conditions(
    *,
    invalid: str | None = None,
    missing_secrets: Sequence[str] = (),
    apply_error: str | None = None,
    deployment: dict[str, Any] | None = None,
    replicas: int = 1,
) -> list[ConditionUpdate]:
    """Ready, Progressing and Degraded of a WebhookSource, most serious cause first."""

    def blocked(reason: str, message: str) -> list[ConditionUpdate]:
        return [
            ConditionUpdate(c.READY, False, reason, message),
            ConditionUpdate(c.PROGRESSING, False, reason, message),
            ConditionUpdate(c.DEGRADED, True, reason, message),
        ]

    if invalid is not None:
        return blocked(c.REASON_INVALID_SPEC, invalid)
    if missing_secrets:
        names = ", ".join(missing_secrets)
        return blocked(c.REASON_SECRET_NOT_FOUND, f"Secret not found: {names}")
    if apply_error is not None:
        return blocked(c.REASON_APPLY_FAILED, apply_error)
    ready, message = deployment_progress(deployment, replicas)
    if not ready:
        return [
            ConditionUpdate(c.READY, False, c.REASON_DEPLOYMENT_UNAVAILABLE, message),
            ConditionUpdate(c.PROGRESSING, True, c.REASON_ROLLING_OUT, message),
            ConditionUpdate(c.DEGRADED, False, c.REASON_ROLLING_OUT, ""),
        ]
    return [
        ConditionUpdate(c.READY, True, c.REASON_AVAILABLE, message),
        ConditionUpdate(c.PROGRESSING, False, c.REASON_AVAILABLE, ""),
        ConditionUpdate(c.DEGRADED, False, c.REASON_AVAILABLE, ""),
    ]


def needs_reapply(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Has a hand edit drifted the Deployment from what we apply (replicas or pod template)?"""
    live_spec = live.get("spec") or {}
    desired_spec = desired["spec"]
    if live_spec.get("replicas") != desired_spec["replicas"]:
        return True
    live_ann = ((live_spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    want_ann = desired_spec["template"]["metadata"]["annotations"]
    return bool(live_ann.get(c.ANNOTATION_CONFIG_HASH) != want_ann[c.ANNOTATION_CONFIG_HASH])
