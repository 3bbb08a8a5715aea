"""Forwarding's pure pieces: answers, retry decisions, headers, trace context, config rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from webhook_server import tracing
from webhook_server.config import (
    BackoffConfig,
    ForwardConfig,
    Provider,
    SecretSource,
    SourceConfig,
)
from webhook_server.forward.policy import DeadReason, Outcome, classify, decide
from webhook_server.forward.request import build_headers, signing_keys
from webhook_server.outbound import bounded_jitter_backoff
from webhook_server.store.outbox import State

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def fwd(**overrides: object) -> ForwardConfig:
    fields: dict[str, object] = {
        "url": "http://orders.shop.svc:8080/events",
        "signing_secrets": [SecretSource(value=SECRET)],
        "max_attempts": 5,
        "max_age_seconds": 3600,
        "backoff": BackoffConfig(min_seconds=2, max_seconds=60),
    }
    fields.update(overrides)
    return ForwardConfig.model_validate(fields)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (301, Outcome.REDIRECT),
        (307, Outcome.REDIRECT),
        (400, Outcome.CLIENT_ERROR),
        (401, Outcome.CLIENT_ERROR),
        (404, Outcome.CLIENT_ERROR),
        (408, Outcome.REQUEST_TIMEOUT),
        (410, Outcome.GONE),
        (429, Outcome.RATE_LIMITED),
        (500, Outcome.SERVER_ERROR),
        (503, Outcome.SERVER_ERROR),
        (999, Outcome.SERVER_ERROR),
    ],
)
def test_answers_are_classified(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_a_failure_waits_between_the_minimum_and_a_doubling_ceiling() -> None:
    received = NOW - timedelta(seconds=10)
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16)]:
        low = decide(
            Outcome.SERVER_ERROR, attempts=attempts, received_at=received, now=NOW,
            retry_after=None, forward=fwd(max_attempts=10), rng=lambda: 0.0,
        )  # fmt: skip
        high = decide(
            Outcome.SERVER_ERROR, attempts=attempts, received_at=received, now=NOW,
            retry_after=None, forward=fwd(max_attempts=10), rng=lambda: 1.0,
        )  # fmt: skip
        assert low.state is high.state is State.PENDING
        assert low.next_attempt_at == NOW + timedelta(seconds=2)
        assert high.next_attempt_at == NOW + timedelta(seconds=ceiling)
    capped = bounded_jitter_backoff(30, low=2, high=60, rng=lambda: 1.0)
    assert capped == 60


def test_retry_after_is_honoured_up_to_the_maximum_back_off() -> None:
    def wait(retry_after: float) -> float:
        decision = decide(
            Outcome.RATE_LIMITED, attempts=1, received_at=NOW, now=NOW,
            retry_after=retry_after, forward=fwd(), rng=lambda: 0.0,
        )  # fmt: skip
        return (decision.next_attempt_at - NOW).total_seconds()

    assert wait(30) == 30
    assert wait(0) == 2  # never sooner than the back-off
    assert wait(86_400) == 60  # backoff.maxSeconds caps a consumer's long Retry-After


def test_max_attempts_then_dead() -> None:
    decision = decide(
        Outcome.TIMEOUT, attempts=5, received_at=NOW, now=NOW, retry_after=None, forward=fwd()
    )
    assert (decision.state, decision.dead_reason) == (State.DEAD, DeadReason.MAX_ATTEMPTS)


def test_no_attempt_is_scheduled_past_max_age_and_the_one_at_it_is_the_last() -> None:
    received = NOW - timedelta(seconds=3590)
    decision = decide(
        Outcome.SERVER_ERROR, attempts=1, received_at=received, now=NOW,
        retry_after=50, forward=fwd(), rng=lambda: 1.0,
    )  # fmt: skip
    assert decision.state is State.PENDING
    assert decision.next_attempt_at == received + timedelta(seconds=3600)
    last = decide(
        Outcome.SERVER_ERROR, attempts=2, received_at=received, now=decision.next_attempt_at,
        retry_after=None, forward=fwd(),
    )  # fmt: skip
    assert (last.state, last.dead_reason) == (State.DEAD, DeadReason.EXPIRED)


def test_gone_is_final_and_2xx_is_delivered() -> None:
    gone = decide(
        Outcome.GONE, attempts=1, received_at=NOW, now=NOW, retry_after=None, forward=fwd()
    )
    assert (gone.state, gone.dead_reason) == (State.DEAD, DeadReason.GONE)
    ok = decide(
        Outcome.DELIVERED, attempts=3, received_at=NOW, now=NOW, retry_after=None, forward=fwd()
    )
    assert (ok.state, ok.dead_reason) == (State.DELIVERED, None)


# -- headers ---------------------------------------------------------------------------------


def headers(**overrides: object) -> dict[str, str]:
    fields: dict[str, object] = {
        "payload": b'{"type":"order.paid","id":7}',
        "webhook_id": "evt_7",
        "keys": signing_keys([SECRET.encode()]),
        "now": NOW.timestamp(),
        "stored_headers": {"content-type": "application/json; charset=utf-8"},
        "source": "shop/orders",
        "event_type": "order.paid",
        "attempt": 2,
    }
    fields.update(overrides)
    return build_headers(**fields)  # type: ignore[arg-type]


def test_headers_verify_with_the_standard_webhooks_sdk() -> None:
    sent = headers()
    body = b'{"type":"order.paid","id":7}'
    # The SDK checks the timestamp against the wall clock: sign now for it.
    import time

    fresh = headers(now=time.time())
    assert Webhook(SECRET).verify(body, fresh) == {"type": "order.paid", "id": 7}
    assert sent["webhook-id"] == "evt_7"
    assert sent["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert sent["content-type"] == "application/json; charset=utf-8"
    assert (sent["dfm-source"], sent["dfm-event-type"], sent["dfm-attempt"]) == (
        "shop/orders",
        "order.paid",
        "2",
    )


def test_svix_libraries_verify_them_too() -> None:
    import time

    from svix.webhooks import Webhook as SvixWebhook
    from svix.webhooks import WebhookVerificationError

    body = b'{"type":"order.paid","id":7}'
    sent = headers(now=time.time())
    SvixWebhook(SECRET).verify(body, sent)  # raises when it does not verify
    with pytest.raises(WebhookVerificationError):
        SvixWebhook(OTHER).verify(body, sent)


def test_two_secrets_give_two_signatures_either_verifies() -> None:
    import time

    sent = headers(keys=signing_keys([OTHER.encode(), SECRET.encode()]), now=time.time())
    assert len(sent["webhook-signature"].split(" ")) == 2
    body = b'{"type":"order.paid","id":7}'
    assert Webhook(SECRET).verify(body, sent)
    assert Webhook(OTHER).verify(body, sent)


def test_never_unsigned_and_odd_values_are_not_sent_as_headers() -> None:
    with pytest.raises(ValueError, match="never sent unsigned"):
        headers(keys=[])
    odd = headers(stored_headers={"content-type": "text/\x01plain"}, event_type="commande.payée")
    assert odd["content-type"] == "application/json"
    assert "dfm-event-type" not in odd
    assert signing_keys([b"not base64 !", SECRET.encode(), SECRET.encode()]) == signing_keys(
        [SECRET.encode()]
    )


def test_traceparent_continues_a_valid_trace_and_starts_one_otherwise() -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    child = tracing.child_traceparent(incoming)
    version, trace_id, span_id, flags = child.split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7"
    assert len(span_id) == 16
    for bad in (
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # invalid version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ):
        fresh = tracing.child_traceparent(bad)
        assert tracing.parse(fresh) is not None
        assert fresh.split("-")[1] != "4bf92f3577b34da6a3ce929d0e0e4736"
    # A later version with more fields is continued (W3C: parse what version 00 defines).
    assert tracing.child_traceparent(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more"
    ).split("-")[1:4:2] == ["4bf92f3577b34da6a3ce929d0e0e4736", "00"]


# -- config rules ------------------------------------------------------------------------------


def test_forward_config_refuses_what_could_never_work() -> None:
    with pytest.raises(ValidationError, match="not a Standard Webhooks secret"):
        fwd(signing_secrets=[SecretSource(value="plain text secret!")])
    with pytest.raises(ValidationError, match="at least 1 item"):
        fwd(signing_secrets=[])
    with pytest.raises(ValidationError, match="minSeconds must not exceed"):
        fwd(backoff=BackoffConfig.model_validate({"minSeconds": 10, "maxSeconds": 5}))
    with pytest.raises(ValidationError, match="should match pattern"):
        fwd(url="ftp://example.com/x")
    with pytest.raises(ValidationError, match="maxAgeSeconds must not exceed retentionDays"):
        SourceConfig(
            name="s",
            provider=Provider.JWT,
            auth={"publicKey": None, "jwksUrl": "https://idp.example/jwks"},
            retention_days=1,
            forward=fwd(max_age_seconds=2 * 86_400),
        )
