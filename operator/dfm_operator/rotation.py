"""Pure rotation and refresh decisions for ManagedSecrets: (spec, state, now) -> decision.

State lives in the written Secret (its keys and annotations) and in status, never in memory, so
a restarted operator reaches the same decisions.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from dfm_operator.api.common import parse_rfc3339, rfc3339
from dfm_operator.api.managedsecret import RandomEncoding, RandomSecret, Rotation
from webhook_server.secrets import ACCESS_TOKEN, CURRENT, PREVIOUS, PREVIOUS_EXPIRES_AT

# The keys a receiver reads from a mounted ManagedSecret (CURRENT, PREVIOUS, PREVIOUS_EXPIRES_AT)
# and the one a sync job reads (ACCESS_TOKEN) are the data plane's: webhook_server.secrets.
# The other oauth2 keys are for the Secret's other consumers.
TOKEN_TYPE = "token_type"
EXPIRES_AT = "expires_at"
REFRESH_TOKEN = "refresh_token"
SCOPE = "scope"

# Annotations on the written Secret: the durable record of what was done.
ANNOTATION_VERSION = "dfm.dev/version"
ANNOTATION_LAST_ROTATION = "dfm.dev/last-rotation"
ANNOTATION_ROTATE_NOW_HANDLED = "dfm.dev/rotate-now-handled"
ANNOTATION_ROTATE_NOW = "dfm.dev/rotate-now"
# The cron slot the last scheduled rotation was for (it may have run a little later).
ANNOTATION_SCHEDULED_SLOT = "dfm.dev/scheduled-slot"

# Never refresh an oauth2 token earlier than this fraction of its lifetime: a refreshBeforeSeconds
# as long as the token lives (Keycloak's default 300 s lifetime and our default margin) would
# otherwise make every fresh token due at once, and the operator would refresh in a loop.
MAX_MARGIN_FRACTION = 0.5
MIN_REFRESH_INTERVAL = timedelta(seconds=5)
# Steps to look for the latest cron slot before now; past this, the slot is simply not recorded.
MAX_SLOT_STEPS = 10_000


class Action(enum.StrEnum):
    NONE = "none"
    CREATE = "create"  # no value yet
    ROTATE = "rotate"  # replace current; keep the old one as previous during the grace period
    EXPIRE_PREVIOUS = "expire-previous"  # the grace period is over: drop previous
    REFRESH = "refresh"  # oauth2: get a new access token


@dataclass(frozen=True)
class SecretState:
    """What the written Secret says (decoded), or None when it does not exist."""

    data: dict[str, str]
    annotations: dict[str, str]

    @property
    def version(self) -> int:
        try:
            return int(self.annotations.get(ANNOTATION_VERSION, "0"))
        except ValueError:
            return 0

    @property
    def last_rotation(self) -> datetime | None:
        return parse_rfc3339(self.annotations.get(ANNOTATION_LAST_ROTATION))

    @property
    def previous_expires_at(self) -> datetime | None:
        return parse_rfc3339(self.data.get(PREVIOUS_EXPIRES_AT))

    @property
    def token_expires_at(self) -> datetime | None:
        return parse_rfc3339(self.data.get(EXPIRES_AT))

    @property
    def scheduled_slot(self) -> datetime | None:
        return parse_rfc3339(self.annotations.get(ANNOTATION_SCHEDULED_SLOT))


def next_rotation(
    rotation: Rotation | None, last: datetime | None, slot: datetime | None = None
) -> datetime | None:
    """When the value after the one written at ``last`` is due (None: never).

    For a cron schedule in a zone with daylight saving, a wall-clock time that repeats when the
    clocks go back counts once, and one that is skipped when they go forward fires at the first
    valid instant after it (croniter's behaviour). ``slot`` is the cron slot the value at
    ``last`` was written for: counting from it rather than from ``last`` keeps a rotation that
    ran a little late (01:31 EDT for a 01:30 slot) from firing again at the repeated 01:30 EST.
    A slot whose successor is not after ``last`` (the schedule changed since) is ignored.
    """
    if rotation is None or last is None:
        return None
    interval = rotation.interval
    if interval is not None:
        return last + interval
    if slot is not None and slot <= last:
        after_slot = _next_cron(rotation, slot)
        if after_slot > last:
            return after_slot
    return _next_cron(rotation, last)


def _next_cron(rotation: Rotation, last: datetime) -> datetime:
    assert rotation.schedule is not None
    zone = ZoneInfo(rotation.time_zone or "UTC")
    local_last = last.astimezone(zone)
    schedule = croniter(rotation.schedule, local_last)
    candidate: datetime = schedule.get_next(datetime)
    while candidate.replace(tzinfo=None) == local_last.replace(tzinfo=None):
        candidate = schedule.get_next(datetime)
    return candidate.astimezone(UTC)


def scheduled_slot(
    rotation: Rotation | None, state: SecretState | None, now: datetime
) -> datetime | None:
    """The cron slot a rotation at ``now`` serves: the latest one due by now (None: not cron,
    or the rotation is not a scheduled one — a first value or a rotate-now between slots)."""
    if rotation is None or rotation.schedule is None or state is None:
        return None
    last = state.last_rotation
    slot = next_rotation(rotation, last, state.scheduled_slot)
    if slot is None or slot > now:
        return None
    for _ in range(MAX_SLOT_STEPS):
        following = _next_cron(rotation, slot)
        if following > now:
            return slot
        slot = following
    return None


def forced(annotations: dict[str, str], state: SecretState | None) -> str | None:
    """The rotate-now token still to act on, if any (each new value forces one rotation)."""
    wanted = annotations.get(ANNOTATION_ROTATE_NOW)
    if not wanted:
        return None
    handled = state.annotations.get(ANNOTATION_ROTATE_NOW_HANDLED) if state else None
    return None if wanted == handled else wanted


def random_action(
    rotation: Rotation | None,
    state: SecretState | None,
    rotate_now: str | None,
    now: datetime,
) -> Action:
    """What a random ManagedSecret needs now, most urgent first."""
    if state is None or not state.data.get(CURRENT):
        return Action.CREATE
    if rotate_now is not None:
        return Action.ROTATE
    due = next_rotation(rotation, state.last_rotation or now, state.scheduled_slot)
    if due is not None and due <= now:
        return Action.ROTATE
    expires = state.previous_expires_at
    if state.data.get(PREVIOUS) and (expires is None or expires <= now):
        return Action.EXPIRE_PREVIOUS
    return Action.NONE


def refresh_margin(refresh_before: timedelta, state: SecretState | None) -> timedelta:
    """How long before expiry to refresh: refreshBeforeSeconds, at most half the token's life.

    The lifetime is from the write (dfm.dev/last-rotation) to expires_at; unknown, the margin
    is used as configured.
    """
    if state is None or state.token_expires_at is None or state.last_rotation is None:
        return refresh_before
    lifetime = state.token_expires_at - state.last_rotation
    return max(min(refresh_before, lifetime * MAX_MARGIN_FRACTION), timedelta(0))


def refresh_at(refresh_before: timedelta, state: SecretState) -> datetime | None:
    """When the token is due for a refresh: the margin before it expires, but never sooner than
    MIN_REFRESH_INTERVAL after the last one. A provider announcing tokens of 0 or 1 s would
    otherwise have each refresh due the moment it is written, and the write wakes the scheduler."""
    if state.token_expires_at is None:
        return None
    due = state.token_expires_at - refresh_margin(refresh_before, state)
    if state.last_rotation is not None:
        due = max(due, state.last_rotation + MIN_REFRESH_INTERVAL)
    return due


def oauth_action(
    refresh_before: timedelta,
    state: SecretState | None,
    rotate_now: str | None,
    now: datetime,
    rotation: Rotation | None = None,
) -> Action:
    """What an oauth2 ManagedSecret needs now: a refresh before expiry, or when rotation is due."""
    if state is None or not state.data.get(ACCESS_TOKEN):
        return Action.REFRESH
    if rotate_now is not None:
        return Action.REFRESH
    due_refresh = refresh_at(refresh_before, state)
    if due_refresh is not None and due_refresh <= now:
        return Action.REFRESH
    due = next_rotation(rotation, state.last_rotation, state.scheduled_slot)
    if due is not None and due <= now:
        return Action.REFRESH
    return Action.NONE


def next_wakeup(
    rotation: Rotation | None,
    state: SecretState | None,
    refresh_before: timedelta | None,
    now: datetime,
) -> datetime | None:
    """The next instant something is due: a rotation, the end of a grace period, a refresh."""
    if state is None:
        return now
    moments: list[datetime] = []
    rotate_at = next_rotation(rotation, state.last_rotation, state.scheduled_slot)
    if rotate_at is not None:
        moments.append(rotate_at)
    if state.data.get(PREVIOUS) and state.previous_expires_at is not None:
        moments.append(state.previous_expires_at)
    due_refresh = refresh_at(refresh_before, state) if refresh_before is not None else None
    if due_refresh is not None:
        moments.append(due_refresh)
    return min(moments) if moments else None


def retry_wakeup(
    planned: datetime | None, retry_at: datetime | None, now: datetime, minimum: timedelta
) -> datetime | None:
    """When to look again: a failure's back-off wins over the plan (whose moment has passed,
    or the attempt would not have been made), and nothing is ever due sooner than ``minimum``
    from now, so a decision that keeps coming out "due now" cannot become a busy loop."""
    wake = retry_at if retry_at is not None else planned
    if wake is None:
        return None
    return max(wake, now + minimum)


def encode_random(settings: RandomSecret, raw: bytes) -> str:
    """``raw`` random bytes in the configured encoding, after the prefix."""
    if settings.encoding is RandomEncoding.HEX:
        text = raw.hex()
    elif settings.encoding is RandomEncoding.BASE64URL:
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    else:
        text = base64.b64encode(raw).decode()
    return settings.prefix + text


def rotated_data(
    state: SecretState | None, new_value: str, grace: timedelta, now: datetime
) -> dict[str, str]:
    """The Secret's keys after a rotation: the old current stays valid for ``grace``."""
    if state is None or not state.data.get(CURRENT):
        return {CURRENT: new_value}
    return {
        CURRENT: new_value,
        PREVIOUS: state.data[CURRENT],
        PREVIOUS_EXPIRES_AT: rfc3339(now + grace),
    }


def without_previous(state: SecretState) -> dict[str, str]:
    return {k: v for k, v in state.data.items() if k not in (PREVIOUS, PREVIOUS_EXPIRES_AT)}
