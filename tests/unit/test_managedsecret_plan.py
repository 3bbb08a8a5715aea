"""The oauth2 plan of a ManagedSecret: (inputs, now) -> decision, on a fake clock, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from dfm_operator import oauth
from dfm_operator.api.common import rfc3339
from dfm_operator.rotation import (
    ANNOTATION_LAST_ROTATION,
    ANNOTATION_VERSION,
    EXPIRES_AT,
    REFRESH_TOKEN,
    SecretState,
)
from dfm_operator.services.managedsecret import (
    ANNOTATION_BOOTSTRAP_HASH,
    ANNOTATION_REJECTED_REQUEST,
    NEEDS_CREDENTIALS,
    REJECTED_CLIENT_RETRY,
    Exchange,
    OAuthInputs,
    _fingerprint,
    _Step,
    after_rejection,
    after_unavailable,
    plan_oauth2,
)
from webhook_server.secrets import ACCESS_TOKEN

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CREDENTIALS = ("client", "secret")


def token(expires_in: timedelta, refresh: str = "r1", **annotations: str) -> SecretState:
    return SecretState(
        {ACCESS_TOKEN: "a", EXPIRES_AT: rfc3339(T0 + expires_in), REFRESH_TOKEN: refresh},
        {ANNOTATION_VERSION: "3", ANNOTATION_LAST_ROTATION: rfc3339(T0 - timedelta(hours=1))}
        | annotations,
    )


def inputs(state: SecretState | None, **changes: object) -> OAuthInputs:
    base = OAuthInputs(
        state=state,
        failures=0,
        rotate_now=None,
        bootstrap=None,
        previous_reason=None,
        generation=1,
        refresh_before=timedelta(minutes=5),
        rotation=None,
        client_secret_name="cli",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def with_credentials(given: OAuthInputs) -> OAuthInputs:
    return replace(given, credentials=CREDENTIALS, credentials_read=True)


def ready(step: _Step) -> tuple[bool, str]:
    condition = next(c for c in step.conditions if c.type == "Ready")
    return condition.status, condition.reason


def test_a_valid_token_is_left_alone_without_reading_the_client_secret() -> None:
    plan = plan_oauth2(inputs(token(timedelta(hours=1))), T0)
    assert isinstance(plan, _Step)
    assert ready(plan) == (True, "TokenValid")
    assert plan.failures == 0
    assert plan.retry_at is None


def test_a_token_inside_its_refresh_margin_is_exchanged_with_the_stored_refresh_token() -> None:
    due = inputs(token(timedelta(minutes=4), refresh="stored"))
    assert plan_oauth2(due, T0) is NEEDS_CREDENTIALS
    plan = plan_oauth2(with_credentials(due), T0)
    assert isinstance(plan, Exchange)
    assert plan.refresh_token == "stored"
    # The same clock one hour earlier: still valid, nothing to do.
    assert isinstance(plan_oauth2(due, T0 - timedelta(hours=1)), _Step)


def test_a_new_bootstrap_refresh_token_wins_over_the_stored_one() -> None:
    state = token(timedelta(hours=1), refresh="stored", **{ANNOTATION_BOOTSTRAP_HASH: "old"})
    plan = plan_oauth2(with_credentials(inputs(state, bootstrap="fresh")), T0)
    assert isinstance(plan, Exchange)
    assert plan.refresh_token == "fresh"
    recorded = {ANNOTATION_BOOTSTRAP_HASH: _fingerprint("fresh")}
    same = inputs(token(timedelta(hours=1), **recorded), bootstrap="fresh")
    assert isinstance(plan_oauth2(same, T0), _Step)


def test_missing_client_credentials_back_off_and_keep_ready_while_the_token_lives() -> None:
    due = replace(inputs(token(timedelta(minutes=1)), failures=2), credentials_read=True)
    plan = plan_oauth2(due, T0)
    assert isinstance(plan, _Step)
    assert ready(plan) == (True, "TokenValid")
    assert plan.failures == 3
    assert plan.retry_at == T0 + timedelta(seconds=oauth.backoff_seconds(3))
    expired = replace(due, state=token(-timedelta(minutes=1)))
    assert ready(plan_oauth2(expired, T0)) == (False, "SecretNotFound")  # type: ignore[arg-type]


def test_a_refused_refresh_token_waits_for_a_change_without_a_retry_time() -> None:
    due = with_credentials(inputs(token(timedelta(minutes=1))))
    request = due.request()
    refused = token(
        timedelta(minutes=1), **{ANNOTATION_REJECTED_REQUEST: f"{request}@{rfc3339(T0)}"}
    )
    waiting = replace(due, state=refused, previous_reason=oauth.REASON_REFRESH_TOKEN_REJECTED)
    plan = plan_oauth2(waiting, T0 + timedelta(days=3))
    assert isinstance(plan, _Step)
    assert plan.waiting
    assert plan.retry_at is None
    # A new rotate-now value is one more attempt; so is a different request (new credentials).
    assert isinstance(plan_oauth2(replace(waiting, rotate_now="2"), T0), Exchange)
    assert isinstance(plan_oauth2(replace(waiting, credentials=("other", "x")), T0), Exchange)


def test_a_refused_client_is_asked_again_an_hour_after_the_refusal() -> None:
    refused_at = T0 - timedelta(minutes=20)
    due = with_credentials(inputs(token(timedelta(minutes=1))))
    annotation = {ANNOTATION_REJECTED_REQUEST: f"{due.request()}@{rfc3339(refused_at)}"}
    refused = replace(
        due,
        state=token(timedelta(minutes=1), **annotation),
        previous_reason=oauth.REASON_CLIENT_REJECTED,
    )
    plan = plan_oauth2(refused, T0)
    assert isinstance(plan, _Step)
    assert plan.retry_at == refused_at + REJECTED_CLIENT_RETRY
    assert isinstance(plan_oauth2(refused, refused_at + REJECTED_CLIENT_RETRY), Exchange)


def test_after_a_refusal_the_fingerprint_is_recorded_and_the_wait_depends_on_the_reason() -> None:
    due = with_credentials(inputs(token(timedelta(minutes=1)), failures=1))
    exchange = plan_oauth2(due, T0)
    assert isinstance(exchange, Exchange)
    dead = after_rejection(due, exchange, oauth.REASON_REFRESH_TOKEN_REJECTED, "invalid_grant", T0)
    assert dead.rejected_request == f"{exchange.request}@{rfc3339(T0)}"
    assert dead.step.waiting
    assert dead.step.failures == 2
    assert dead.event[:2] == ("Warning", oauth.REASON_REFRESH_TOKEN_REJECTED)
    client = after_rejection(due, exchange, oauth.REASON_CLIENT_REJECTED, "invalid_client", T0)
    assert client.step.retry_at == T0 + REJECTED_CLIENT_RETRY
    assert not client.step.waiting


def test_an_unavailable_endpoint_backs_off_and_retry_after_wins() -> None:
    due = with_credentials(inputs(token(timedelta(minutes=1)), failures=3))
    failure = after_unavailable(due, "503", None, T0)
    assert failure.step.retry_at == T0 + timedelta(seconds=oauth.backoff_seconds(4))
    assert failure.rejected_request is None
    assert failure.event[1] == "RotationFailed"
    assert after_unavailable(due, "429", 42.0, T0).step.retry_at == T0 + timedelta(seconds=42)
