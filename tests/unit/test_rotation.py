"""Rotation and refresh policies with explicit times, DST and month-end included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dfm_operator.api.managedsecret import RandomSecret, Rotation
from dfm_operator.rotation import (
    ANNOTATION_LAST_ROTATION,
    ANNOTATION_ROTATE_NOW,
    ANNOTATION_ROTATE_NOW_HANDLED,
    ANNOTATION_VERSION,
    Action,
    SecretState,
    encode_random,
    forced,
    next_rotation,
    next_wakeup,
    oauth_action,
    random_action,
    rotated_data,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def state(last: datetime = T0, **data: str) -> SecretState:
    return SecretState(
        data={"current": "B", **data},
        annotations={ANNOTATION_VERSION: "2", ANNOTATION_LAST_ROTATION: last.isoformat()},
    )


def test_interval_rotation_is_due_exactly_one_interval_after_the_last() -> None:
    rotation = Rotation(every="720h")
    assert next_rotation(rotation, T0) == T0 + timedelta(days=30)
    assert random_action(rotation, state(), None, T0 + timedelta(days=30, seconds=-1)) is (
        Action.NONE
    )
    assert random_action(rotation, state(), None, T0 + timedelta(days=30)) is Action.ROTATE


def test_no_secret_yet_means_create() -> None:
    assert random_action(None, None, None, T0) is Action.CREATE
    assert random_action(None, SecretState({}, {}), None, T0) is Action.CREATE


def test_without_rotation_the_value_is_kept_forever() -> None:
    assert random_action(None, state(), None, T0 + timedelta(days=3650)) is Action.NONE
    assert next_wakeup(None, state(), None, T0) is None


def test_cron_in_a_time_zone() -> None:
    rotation = Rotation(schedule="0 3 * * 0", time_zone="Europe/Berlin")  # Sundays 03:00
    # Friday 2026-11-27 12:00 UTC -> Sunday 2026-11-29 03:00 CET = 02:00 UTC
    assert next_rotation(rotation, T0) == datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def test_cron_when_clocks_go_forward_fires_once_at_the_first_valid_instant() -> None:
    rotation = Rotation(schedule="30 2 * * *", time_zone="Europe/Berlin")
    last = datetime(2026, 3, 28, 1, 30, tzinfo=UTC)  # 02:30 CET on the 28th
    # 02:30 does not exist on 2026-03-29 in Berlin: 03:00 CEST = 01:00 UTC.
    assert next_rotation(rotation, last) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_cron_when_clocks_go_back_fires_once_not_twice() -> None:
    rotation = Rotation(schedule="30 2 * * *", time_zone="Europe/Berlin")
    first = next_rotation(rotation, datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert first is not None
    # 02:30 comes again an hour later (CET); it must not rotate a second time.
    assert next_rotation(rotation, first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_cron_on_the_31st_skips_short_months() -> None:
    rotation = Rotation(schedule="0 3 31 * *")
    assert next_rotation(rotation, datetime(2026, 1, 31, 3, 0, tzinfo=UTC)) == datetime(
        2026, 3, 31, 3, 0, tzinfo=UTC
    )


def test_cron_on_the_last_day_of_february_in_a_leap_year() -> None:
    rotation = Rotation(schedule="0 0 29 2 *")
    assert next_rotation(rotation, datetime(2026, 3, 1, tzinfo=UTC)) == datetime(
        2028, 2, 29, tzinfo=UTC
    )


def test_rotate_now_forces_one_rotation_per_new_value() -> None:
    handled = SecretState(
        data={"current": "B"},
        annotations={ANNOTATION_ROTATE_NOW_HANDLED: "2026-11-27T12:00"},
    )
    assert forced({ANNOTATION_ROTATE_NOW: "2026-11-27T12:00"}, handled) is None
    assert forced({ANNOTATION_ROTATE_NOW: "again"}, handled) == "again"
    assert forced({}, handled) is None
    assert random_action(Rotation(every="720h"), state(), "again", T0) is Action.ROTATE


def test_previous_is_kept_for_the_grace_period_then_dropped() -> None:
    rotated = rotated_data(state(), "C", timedelta(hours=24), T0)
    assert rotated == {
        "current": "C",
        "previous": "B",
        "previous-expires-at": "2026-11-28T12:00:00Z",
    }
    during = SecretState(rotated, {ANNOTATION_LAST_ROTATION: T0.isoformat()})
    rotation = Rotation(every="720h", grace_period="24h")
    assert random_action(rotation, during, None, T0 + timedelta(hours=23)) is Action.NONE
    assert random_action(rotation, during, None, T0 + timedelta(hours=24)) is (
        Action.EXPIRE_PREVIOUS
    )
    assert next_wakeup(rotation, during, None, T0) == T0 + timedelta(hours=24)


def test_a_restart_mid_grace_decides_nothing_new() -> None:
    rotation = Rotation(every="1h", grace_period="30m")
    during = SecretState(
        rotated_data(state(), "C", timedelta(minutes=30), T0),
        {ANNOTATION_LAST_ROTATION: T0.isoformat()},
    )
    for minutes in (0, 5, 29):
        assert random_action(rotation, during, None, T0 + timedelta(minutes=minutes)) is (
            Action.NONE
        )


def test_oauth_refresh_before_expiry() -> None:
    token = SecretState({"access_token": "a", "expires_at": "2026-11-27T13:00:00Z"}, {})
    margin = timedelta(minutes=5)
    assert oauth_action(margin, token, None, T0) is Action.NONE
    assert oauth_action(margin, token, None, T0 + timedelta(minutes=54, seconds=59)) is (
        Action.NONE
    )
    assert oauth_action(margin, token, None, T0 + timedelta(minutes=55)) is Action.REFRESH
    assert oauth_action(margin, None, None, T0) is Action.REFRESH
    assert oauth_action(margin, token, "now", T0) is Action.REFRESH
    assert next_wakeup(None, token, margin, T0) == T0 + timedelta(minutes=55)


@pytest.mark.parametrize(
    ("encoding", "prefix", "pattern_len"),
    [("hex", "", 64), ("base64", "whsec_", 6 + 44), ("base64url", "", 43)],
)
def test_random_encodings(encoding: str, prefix: str, pattern_len: int) -> None:
    value = encode_random(RandomSecret(length=32, encoding=encoding, prefix=prefix), bytes(32))
    assert value.startswith(prefix)
    assert len(value) == pattern_len


def test_standard_webhooks_secret_comes_out_in_its_native_form() -> None:
    import base64

    value = encode_random(RandomSecret(length=24, encoding="base64", prefix="whsec_"), b"\x01" * 24)
    assert value.startswith("whsec_")
    assert base64.b64decode(value.removeprefix("whsec_")) == b"\x01" * 24
