"""Rotation and refresh policies with explicit times, DST and month-end included."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
from croniter import CroniterBadDateError
from kopf._cogs.aiokits.aioenums import FlagSetter
from pydantic import ValidationError

from dfm_operator import oauth
from dfm_operator.api.managedsecret import ManagedSecret, RandomSecret, Rotation
from dfm_operator.builders.managedsecret import owned_by
from dfm_operator.handlers import managedsecret as managedsecret_handlers
from dfm_operator.kernel import Context, InvalidSpec, OperatorMetrics
from dfm_operator.rotation import (
    ANNOTATION_LAST_ROTATION,
    ANNOTATION_ROTATE_NOW,
    ANNOTATION_ROTATE_NOW_HANDLED,
    ANNOTATION_SCHEDULED_SLOT,
    ANNOTATION_VERSION,
    Action,
    SecretState,
    encode_random,
    forced,
    next_rotation,
    next_wakeup,
    oauth_action,
    random_action,
    refresh_margin,
    retry_wakeup,
    rfc3339,
    rotated_data,
    scheduled_slot,
)
from dfm_operator.services import managedsecret as reconcile_managed
from dfm_operator.services.managedsecret import reconcile_managed_secret
from dfm_operator.settings import OperatorSettings

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


# -- no busy loop: back-off, held rejections, short-lived tokens ---------------------------------


def test_a_token_living_no_longer_than_the_margin_is_refreshed_at_half_its_life() -> None:
    # Keycloak's default 300 s lifetime equals the default refreshBeforeSeconds.
    token = SecretState(
        {"access_token": "a", "expires_at": "2026-11-27T12:05:00Z"},
        {ANNOTATION_LAST_ROTATION: "2026-11-27T12:00:00Z"},
    )
    margin = timedelta(seconds=300)
    assert refresh_margin(margin, token) == timedelta(seconds=150)
    assert oauth_action(margin, token, None, T0) is Action.NONE
    assert next_wakeup(None, token, margin, T0) == T0 + timedelta(seconds=150)
    # A long-lived token keeps the configured margin.
    assert refresh_margin(margin, state(access_token="a", expires_at="2026-11-27T13:00:00Z")) == (
        margin
    )


def test_oauth2_with_a_rotation_refreshes_when_the_rotation_is_due() -> None:
    token = SecretState(
        {"access_token": "a", "expires_at": "2026-11-27T13:00:00Z"},
        {ANNOTATION_LAST_ROTATION: T0.isoformat()},
    )
    later = T0 + timedelta(minutes=11)
    rotation = Rotation(every="10m")
    assert oauth_action(timedelta(seconds=300), token, None, later, rotation) is Action.REFRESH
    assert oauth_action(timedelta(seconds=300), token, None, T0, rotation) is Action.NONE


def test_a_retry_time_wins_over_a_passed_plan_and_nothing_is_due_now() -> None:
    past = T0 - timedelta(minutes=5)
    retry = T0 + timedelta(seconds=40)
    assert retry_wakeup(past, retry, T0, timedelta(seconds=1)) == retry
    assert retry_wakeup(past, None, T0, timedelta(seconds=1)) == T0 + timedelta(seconds=1)
    assert retry_wakeup(None, None, T0, timedelta(seconds=1)) is None


def test_impossible_cron_schedules_are_refused_by_the_model() -> None:
    for schedule in ("61 * * * *", "0 3 * * 8", "0 3 30 2 *"):
        with pytest.raises(ValidationError, match="invalid cron schedule"):
            Rotation(schedule=schedule)
    assert Rotation(schedule="0 0 29 2 *").schedule == "0 0 29 2 *"


def test_a_late_cron_rotation_does_not_fire_again_when_the_clocks_go_back() -> None:
    rotation = Rotation(schedule="30 1 * * *", time_zone="America/New_York")
    slot = datetime(2024, 11, 3, 5, 30, tzinfo=UTC)  # 01:30 EDT
    ran = datetime(2024, 11, 3, 5, 31, tzinfo=UTC)  # 01:31 EDT, a minute late
    before = SecretState({"current": "A"}, {ANNOTATION_LAST_ROTATION: "2024-11-02T05:30:00Z"})
    assert scheduled_slot(rotation, before, ran) == slot
    after = SecretState(
        {"current": "B"},
        {ANNOTATION_LAST_ROTATION: rfc3339(ran), ANNOTATION_SCHEDULED_SLOT: rfc3339(slot)},
    )
    # Not at 01:30 EST (06:30 UTC) the same night: the next day's 01:30 EST.
    assert next_rotation(rotation, ran, after.scheduled_slot) == datetime(
        2024, 11, 4, 6, 30, tzinfo=UTC
    )
    assert random_action(rotation, after, None, datetime(2024, 11, 3, 6, 30, tzinfo=UTC)) is (
        Action.NONE
    )
    # A slot from long ago (another schedule) does not drag the next rotation into the past.
    old_slot = datetime(2024, 11, 1, 3, 0, tzinfo=UTC)
    assert next_rotation(Rotation(schedule="0 3 * * *"), ran, old_slot) == datetime(
        2024, 11, 4, 3, 0, tzinfo=UTC
    )


# -- the reconciler against an in-memory API -----------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeKube:
    """Enough of kube.Kube for the ManagedSecret reconciler: objects by (kind, name)."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.applies = 0

    async def get(self, api_version: str, kind: str, ns: str | None, name: str) -> Any:
        return copy.deepcopy(self.objects.get((kind, name)))

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applies += 1
        self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj

    async def patch_status(
        self, api_version: str, kind: str, ns: str, name: str, status: dict[str, Any]
    ) -> None:
        body = self.objects[(kind, name)]
        merged = {**body.get("status", {}), **status}
        body["status"] = {k: v for k, v in merged.items() if v is not None}


class FakeProvider:
    def __init__(self, mode: str, expires_in: int = 3600) -> None:
        self.mode = mode
        self.expires_in = expires_in
        self.calls = 0

    async def request_token(self, session: Any, **kw: Any) -> oauth.TokenResponse:
        self.calls += 1
        if self.mode == "5xx":
            raise oauth.TokenEndpointUnavailable("server_error", "x", status=503)
        if self.mode == "rejected":
            raise oauth.TokenRejected("invalid_grant", "x", status=400)
        if self.mode == "client rejected":
            raise oauth.TokenRejected("invalid_client", "x", status=401)
        expires = kw["now"] + timedelta(seconds=self.expires_in)
        return oauth.TokenResponse(f"at-{self.calls}", "Bearer", expires, None, None)


def oauth_cluster(
    annotations: dict[str, str] | None = None, secret: dict[str, Any] | None = None
) -> FakeKube:
    body = {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "ManagedSecret",
        "metadata": {
            "name": "tok",
            "namespace": "ns",
            "uid": "u1",
            "generation": 1,
            "annotations": annotations or {},
        },
        "spec": {
            "type": "oauth2",
            "oauth2": {"tokenUrl": "https://idp/token", "clientSecretRef": {"name": "cli"}},
        },
    }
    objects = {
        ("ManagedSecret", "tok"): body,
        ("Secret", "cli"): {"data": {"client_id": b64("a"), "client_secret": b64("b")}},
    }
    if secret is not None:
        objects[("Secret", "tok")] = secret
    return FakeKube(objects)


async def reconcile_times(
    kube: FakeKube,
    times: int,
    monkeypatch: pytest.MonkeyPatch,
    provider: FakeProvider,
    at: datetime = T0,
) -> tuple[list[datetime | None], list[tuple[str, str]]]:
    monkeypatch.setattr(oauth, "request_token", provider.request_token)
    ctx = Context(
        kube=kube, settings=OperatorSettings(), metrics=OperatorMetrics(), clock=lambda: at
    )  # type: ignore[arg-type]
    events: list[tuple[str, str]] = []
    wakeups: list[datetime | None] = []
    for _ in range(times):
        body = copy.deepcopy(kube.objects[("ManagedSecret", "tok")])
        outcome = await reconcile_managed_secret(
            ctx,
            body,
            lambda type_, reason, _: events.append((type_, reason)),
            None,  # type: ignore[arg-type]
        )
        wakeups.append(outcome.next_at)
    return wakeups, events


async def test_token_endpoint_errors_back_off_exponentially(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = FakeProvider("5xx")
    wakeups, _ = await reconcile_times(oauth_cluster(), 4, monkeypatch, provider)
    assert [(w - T0).total_seconds() for w in wakeups if w] == [10.0, 20.0, 40.0, 80.0]
    assert provider.calls == 4


def issued_token() -> dict[str, Any]:
    """The Secret of a ManagedSecret that once got a token."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "tok",
            "annotations": {ANNOTATION_LAST_ROTATION: rfc3339(T0 - timedelta(hours=2))},
            "ownerReferences": [
                {
                    "apiVersion": "dfm.dev/v1alpha1",
                    "kind": "ManagedSecret",
                    "name": "tok",
                    "uid": "u1",
                }
            ],
        },
        "data": {"access_token": b64("at-0"), "expires_at": b64("2026-11-27T11:00:00Z")},
    }


async def test_a_rejected_refresh_waits_for_a_change_instead_of_looping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Re-reads (the scheduler's hourly safety net, or a restart) do not repeat a refused request:
    # its fingerprint is on the Secret.
    provider = FakeProvider("rejected")
    kube = oauth_cluster(secret=issued_token())
    wakeups, events = await reconcile_times(kube, 4, monkeypatch, provider)
    assert wakeups == [None] * 4
    assert provider.calls == 1
    assert events.count(("Warning", "RefreshTokenRejected")) == 1
    # New client credentials are a new request: tried once more, then held again.
    kube.objects[("Secret", "cli")]["data"]["client_secret"] = b64("rotated")
    wakeups, _ = await reconcile_times(kube, 3, monkeypatch, provider)
    assert provider.calls == 2
    assert wakeups == [None] * 3


async def test_after_a_refusal_ready_turns_false_when_the_token_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Waiting for a new refresh token, the scheduler still wakes when the current token expires.
    secret = issued_token()
    secret["data"]["expires_at"] = b64(rfc3339(T0 + timedelta(minutes=5)))
    kube = oauth_cluster({ANNOTATION_ROTATE_NOW: "r1"}, secret)
    provider = FakeProvider("rejected")
    wakeups, _ = await reconcile_times(kube, 1, monkeypatch, provider)
    assert wakeups == [T0 + timedelta(minutes=5)]

    def ready() -> dict[str, Any]:
        conditions = kube.objects[("ManagedSecret", "tok")]["status"]["conditions"]
        return next(c for c in conditions if c["type"] == "Ready")

    assert ready()["status"] == "True"  # the token still works until then
    await reconcile_times(kube, 1, monkeypatch, provider, at=T0 + timedelta(minutes=5))
    assert (ready()["status"], ready()["reason"]) == ("False", "RefreshTokenRejected")
    assert provider.calls == 1


async def test_a_refused_client_is_asked_again_hourly_without_any_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # invalid_client may be fixed on the provider's side, where no input of ours changes.
    provider = FakeProvider("client rejected")
    kube = oauth_cluster(secret=issued_token())
    wakeups, _ = await reconcile_times(kube, 3, monkeypatch, provider)
    assert provider.calls == 1
    assert wakeups == [T0 + timedelta(hours=1)] * 3
    provider.mode = "ok"
    await reconcile_times(kube, 1, monkeypatch, provider, at=T0 + timedelta(minutes=59))
    assert provider.calls == 1
    await reconcile_times(kube, 1, monkeypatch, provider, at=T0 + timedelta(hours=1))
    assert provider.calls == 2
    written = kube.objects[("Secret", "tok")]["data"]["access_token"]
    assert base64.b64decode(written) == b"at-2"


async def test_a_first_token_request_refused_writes_no_empty_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An empty Secret would look usable to whatever mounts it. Nothing is written; the scheduler
    # waits for a change (no timed retry), so only its hourly re-read asks again.
    provider = FakeProvider("rejected")
    kube = oauth_cluster()
    wakeups, events = await reconcile_times(kube, 2, monkeypatch, provider)
    assert ("Secret", "tok") not in kube.objects
    assert wakeups == [None, None]
    assert events.count(("Warning", "RefreshTokenRejected")) == provider.calls == 2


async def test_rotate_now_that_fails_is_handled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    current = issued_token()
    current["data"]["expires_at"] = b64("2026-11-27T13:00:00Z")
    provider = FakeProvider("rejected")
    kube = oauth_cluster({ANNOTATION_ROTATE_NOW: "r1"}, current)
    _, events = await reconcile_times(kube, 4, monkeypatch, provider)
    assert provider.calls == 1
    assert events.count(("Warning", "RefreshTokenRejected")) == 1
    written = kube.objects[("Secret", "tok")]["metadata"]["annotations"]
    assert written[ANNOTATION_ROTATE_NOW_HANDLED] == "r1"
    assert base64.b64decode(kube.objects[("Secret", "tok")]["data"]["access_token"]) == b"at-0"


@pytest.mark.parametrize("expires_in", [0, 1])
async def test_a_token_that_lives_a_second_or_less_is_refreshed_every_5s_at_most(
    monkeypatch: pytest.MonkeyPatch, expires_in: int
) -> None:
    # Each refresh's own write wakes the scheduler: without a floor it would refresh at once.
    provider = FakeProvider("ok", expires_in=expires_in)
    wakeups, _ = await reconcile_times(oauth_cluster(), 4, monkeypatch, provider)
    assert provider.calls == 1
    assert wakeups == [T0 + timedelta(seconds=5)] * 4


async def test_a_token_as_short_as_the_margin_is_not_refreshed_in_a_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = FakeProvider("ok", expires_in=300)
    wakeups, _ = await reconcile_times(oauth_cluster(), 4, monkeypatch, provider)
    assert provider.calls == 1
    assert wakeups == [T0 + timedelta(seconds=150)] * 4


async def test_a_schedule_croniter_cannot_evaluate_is_an_invalid_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def impossible(*_: Any) -> Any:
        raise CroniterBadDateError("failed to find next date")

    monkeypatch.setattr(reconcile_managed, "next_wakeup", impossible)
    kube = oauth_cluster()
    with pytest.raises(InvalidSpec):
        await reconcile_times(kube, 1, monkeypatch, FakeProvider("ok"))
    ready = kube.objects[("ManagedSecret", "tok")]["status"]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")


async def test_a_deleted_managed_secret_leaves_no_metrics_behind() -> None:
    kube = oauth_cluster()
    ctx = Context(kube=kube, settings=OperatorSettings(), metrics=OperatorMetrics())  # type: ignore[arg-type]
    ctx.metrics.token_expiry.labels("ns", "tok").set(1.0)
    ctx.metrics.refresh_before.labels("ns", "tok").set(300.0)
    ctx.metrics.next_rotation.labels("ns", "tok").set(1.0)
    del kube.objects[("ManagedSecret", "tok")]
    memo = kopf.Memo(ctx=ctx, http=None, managed_wakeups={})
    await managedsecret_handlers.scheduler(
        memo=memo, namespace="ns", name="tok", stopped=kopf.DaemonStopped(FlagSetter())
    )
    names = {
        s.name
        for m in ctx.metrics.registry.collect()
        for s in m.samples
        if s.labels.get("name") == "tok"
    }
    assert names == set()


def test_only_our_managed_secret_owns_a_secret() -> None:
    source = ManagedSecret.model_validate(
        {
            "metadata": {"name": "tok", "namespace": "ns", "uid": "u1"},
            "spec": {"type": "random", "random": {}},
        }
    )

    def secret(**ref: str) -> dict[str, Any]:
        base = {"apiVersion": "dfm.dev/v1alpha1", "kind": "ManagedSecret", "name": "tok"}
        return {"metadata": {"ownerReferences": [{**base, **ref}]}}

    assert owned_by(secret(uid="u1"), source)
    assert owned_by(secret(), source)
    assert not owned_by(secret(apiVersion="secrets.example.com/v1"), source)
    assert not owned_by(secret(uid="an-older-one"), source)
