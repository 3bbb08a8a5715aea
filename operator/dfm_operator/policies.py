"""Small pure decisions of the control plane: (inputs) -> decision, no I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from dfm_operator import constants as c
from dfm_operator.api.common import parse_rfc3339
from dfm_operator.conditions import ConditionUpdate
from webhook_server.store.stats import SourceStats


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


# -- forwarding, from the event store's figures (webhook_server.store.stats) ---------------------

# Retries with no success for this long: the target is failing, not merely slow.
TARGET_FAILING_AFTER = timedelta(minutes=5)
# The oldest pending delivery older than this while deliveries succeed: lagging behind.
LAGGING_AFTER = timedelta(minutes=5)
# No pending delivery and none made for this long: idle.
IDLE_AFTER = timedelta(minutes=15)
# Forwarding reasons worth a Warning Event when they arrive.
FORWARD_WARNINGS = frozenset(
    {
        c.REASON_CIRCUIT_OPEN,
        c.REASON_TARGET_FAILING,
        c.REASON_DEAD_LETTERED,
        c.REASON_STORE_UNREACHABLE,
    }
)
_CIRCUITS = {"open": "Open", "half_open": "HalfOpen"}


def forwarding_condition(
    stats: SourceStats | None, now: datetime, error: str | None = None
) -> ConditionUpdate:
    """The Forwarding condition of a source with ``spec.forward``, most serious cause first.

    Its messages name no changing figure (those are in ``status.forward``), so that the
    condition itself only changes when the state does.
    """
    if error is not None:
        return ConditionUpdate(
            c.FORWARDING, None, c.REASON_STORE_UNREACHABLE,
            f"the event store could not be read ({error}); figures are from the last read",
        )  # fmt: skip
    if stats is None:
        return ConditionUpdate(
            c.FORWARDING, True, c.REASON_IDLE, "no receiver has written to the event store yet"
        )
    if "open" in stats.circuits:
        opened = stats.circuits.count("open")
        return ConditionUpdate(
            c.FORWARDING, False, c.REASON_CIRCUIT_OPEN,
            f"the circuit to the target is open on {opened} of {len(stats.circuits)} receivers: "
            "deliveries wait in the event store until a probe succeeds",
        )  # fmt: skip
    delivered_lately = (
        stats.last_delivered_at is not None and now - stats.last_delivered_at < TARGET_FAILING_AFTER
    )
    oldest_age = now - stats.oldest_pending_at if stats.oldest_pending_at else timedelta(0)
    if stats.retrying and not delivered_lately and oldest_age >= TARGET_FAILING_AFTER:
        return ConditionUpdate(
            c.FORWARDING, False, c.REASON_TARGET_FAILING,
            "deliveries are being retried and none has succeeded for 5 minutes",
        )  # fmt: skip
    if stats.dead_recently:
        return ConditionUpdate(
            c.FORWARDING, False, c.REASON_DEAD_LETTERED,
            "deliveries were dead-lettered in the last hour (status.forward.deadLetters)",
        )  # fmt: skip
    if oldest_age >= LAGGING_AFTER:
        return ConditionUpdate(
            c.FORWARDING, True, c.REASON_LAGGING,
            "deliveries succeed, but the oldest pending one is more than 5 minutes old",
        )  # fmt: skip
    recently = stats.last_delivered_at is not None and now - stats.last_delivered_at < IDLE_AFTER
    if stats.pending or recently:
        return ConditionUpdate(c.FORWARDING, True, c.REASON_DELIVERING, "deliveries succeed")
    return ConditionUpdate(c.FORWARDING, True, c.REASON_IDLE, "nothing to deliver")


def settled_time(written: str | None, now: datetime | None) -> datetime | None:
    """``now``, unless the time in status (``written``) is in the same minute: times are exact
    when written, and rewritten at most once a minute, so a busy source's status stays quiet."""
    if now is None:
        return None
    old = parse_rfc3339(written)
    minute = now.replace(second=0, microsecond=0)
    if old is not None and old.replace(second=0, microsecond=0) == minute:
        return old
    return now


def settled_count(written: int | None, now: int) -> int:
    """``now``, unless the figure in status (``written``) is close enough to keep: a count is
    rewritten when it moves by a tenth, on any change below 10, and from or to zero."""
    if written is None or written == now:
        return now
    small = min(written, now) < 10
    if small or abs(now - written) * 10 >= written:
        return now
    return written


def forward_figures(stats: SourceStats, written: Mapping[str, Any] | None) -> dict[str, Any]:
    """``status.forward`` (camelCase, as the API has it) from the store's figures and what the
    status holds now (``written``), settled so that figures that barely moved are not rewritten."""
    written = written or {}
    circuit = "Closed"
    for state in ("open", "half_open"):
        if state in stats.circuits:
            circuit = _CIRCUITS[state]
            break
    return {
        "backlog": settled_count(written.get("backlog"), stats.pending),
        "deadLetters": settled_count(written.get("deadLetters"), stats.dead),
        "oldestPendingTime": settled_time(
            written.get("oldestPendingTime"), stats.oldest_pending_at
        ),
        "lastDeliveryTime": settled_time(written.get("lastDeliveryTime"), stats.last_delivered_at),
        "circuit": circuit,
    }
