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

from dfm_operator.api.managedsecret import RandomEncoding, RandomSecret, Rotation

CURRENT = "current"
PREVIOUS = "previous"
PREVIOUS_EXPIRES_AT = "previous-expires-at"
ACCESS_TOKEN = "access_token"
TOKEN_TYPE = "token_type"
EXPIRES_AT = "expires_at"
REFRESH_TOKEN = "refresh_token"
SCOPE = "scope"

# Annotations on the written Secret: the durable record of what was done.
ANNOTATION_VERSION = "dfm.dev/version"
ANNOTATION_LAST_ROTATION = "dfm.dev/last-rotation"
ANNOTATION_ROTATE_NOW_HANDLED = "dfm.dev/rotate-now-handled"
ANNOTATION_ROTATE_NOW = "dfm.dev/rotate-now"


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
        return parse_time(self.annotations.get(ANNOTATION_LAST_ROTATION))

    @property
    def previous_expires_at(self) -> datetime | None:
        return parse_time(self.data.get(PREVIOUS_EXPIRES_AT))

    @property
    def token_expires_at(self) -> datetime | None:
        return parse_time(self.data.get(EXPIRES_AT))


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def next_rotation(rotation: Rotation | None, last: datetime | None) -> datetime | None:
    """When the value after the one written at ``last`` is due (None: never).

    For a cron schedule in a zone with daylight saving, a wall-clock time that repeats when the
    clocks go back counts once, and one that is skipped when they go forward fires at the first
    valid instant after it (croniter's behaviour).
    """
    if rotation is None or last is None:
        return None
    interval = rotation.interval
    if interval is not None:
        return last + interval
    assert rotation.schedule is not None
    zone = ZoneInfo(rotation.time_zone or "UTC")
    local_last = last.astimezone(zone)
    schedule = croniter(rotation.schedule, local_last)
    candidate: datetime = schedule.get_next(datetime)
    while candidate.replace(tzinfo=None) == local_last.replace(tzinfo=None):
        candidate = schedule.get_next(datetime)
    return candidate.astimezone(UTC)


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
    due = next_rotation(rotation, state.last_rotation or now)
    if due is not None and due <= now:
        return Action.ROTATE
    expires = state.previous_expires_at
    if state.data.get(PREVIOUS) and (expires is None or expires <= now):
        return Action.EXPIRE_PREVIOUS
    return Action.NONE


def oauth_action(
    refresh_before: timedelta,
    state: SecretState | None,
    rotate_now: str | None,
    now: datetime,
) -> Action:
    if state is None or not state.data.get(ACCESS_TOKEN):
        return Action.REFRESH
    if rotate_now is not None:
        return Action.REFRESH
    expires = state.token_expires_at
    if expires is not None and expires - refresh_before <= now:
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
    rotate_at = next_rotation(rotation, state.last_rotation)
    if rotate_at is not None:
        moments.append(rotate_at)
    if state.data.get(PREVIOUS) and state.previous_expires_at is not None:
        moments.append(state.previous_expires_at)
    if refresh_before is not None and state.token_expires_at is not None:
        moments.append(state.token_expires_at - refresh_before)
    return min(moments) if moments else None


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
