from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import stripe
from multidict import CIMultiDict

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified
from webhook_server.verify import stripe as stripe_scheme

SETTINGS = VerificationConfig()
SECRET = b"whsec_test_secret"
T = 1614265330
BODY = b'{"id":"evt_test","object":"event","type":"charge.succeeded"}'
VECTOR_BODY = b'{"id":"evt_test","object":"event"}'
# Self-computed (Stripe publishes no vector); recomputed independently below.
VECTOR_V1 = "fbd6bf5496b9d6310e422a2c072578f95f5eb492111ab57a5510e9cd79c1b304"


def _headers(value: str) -> CIMultiDict[str]:
    return CIMultiDict({"Stripe-Signature": value})


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_vector_matches_an_independent_computation() -> None:
    expected = hmac.new(SECRET, f"{T}.".encode() + VECTOR_BODY, hashlib.sha256).hexdigest()
    assert expected == VECTOR_V1


def test_vector_verifies() -> None:
    result = stripe_scheme.verify(
        _headers(f"t={T},v1={VECTOR_V1}"), VECTOR_BODY, [SECRET], SETTINGS, T
    )
    assert result == Verified(event_id="evt_test", event_type=None)


def test_stripe_sdk_header_verifies() -> None:
    header = stripe.WebhookSignature.generate_signature_header(
        BODY.decode(), SECRET.decode(), timestamp=T
    )
    result = stripe_scheme.verify(_headers(header), BODY, [SECRET], SETTINGS, T + 10)
    assert result == Verified(event_id="evt_test", event_type="charge.succeeded")


def test_stripe_sdk_accepts_our_signature() -> None:
    now = time.time()  # the SDK checks the tolerance against its own clock
    header = stripe_scheme.sign(BODY, SECRET, SETTINGS, now, None)["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(BODY, header, SECRET.decode(), tolerance=300)


def test_any_v1_may_match_and_v0_is_ignored() -> None:
    value = f"t={T},v1={'0' * 64},v0={'1' * 64},v1={VECTOR_V1}"
    assert isinstance(
        stripe_scheme.verify(_headers(value), VECTOR_BODY, [SECRET], SETTINGS, T), Verified
    )


def test_v0_alone_is_malformed() -> None:
    value = f"t={T},v0={VECTOR_V1}"
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [SECRET], SETTINGS, T)
    assert _reason(result) is Reason.MALFORMED


def test_tampered_body_is_rejected() -> None:
    value = f"t={T},v1={VECTOR_V1}"
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY + b"\n", [SECRET], SETTINGS, T)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_tampered_timestamp_is_rejected() -> None:
    value = f"t={T + 1},v1={VECTOR_V1}"
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [SECRET], SETTINGS, T)
    assert _reason(result) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [301, -301, 10_000])
def test_stale_timestamp(offset: int) -> None:
    value = f"t={T},v1={VECTOR_V1}"
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [SECRET], SETTINGS, T + offset)
    assert _reason(result) is Reason.STALE_TIMESTAMP


def test_tolerance_is_configurable() -> None:
    value = f"t={T},v1={VECTOR_V1}"
    wide = VerificationConfig(tolerance_seconds=3600)
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [SECRET], wide, T + 3000)
    assert isinstance(result, Verified)


def test_wrong_secret_is_rejected() -> None:
    value = f"t={T},v1={VECTOR_V1}"
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [b"whsec_other"], SETTINGS, T)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_rotation_accepts_the_second_secret() -> None:
    value = f"t={T},v1={VECTOR_V1}"
    secrets = [b"whsec_new", SECRET]
    assert isinstance(
        stripe_scheme.verify(_headers(value), VECTOR_BODY, secrets, SETTINGS, T), Verified
    )


def test_missing_header() -> None:
    result = stripe_scheme.verify(CIMultiDict(), VECTOR_BODY, [SECRET], SETTINGS, T)
    assert _reason(result) is Reason.MISSING_HEADER


@pytest.mark.parametrize(
    "value",
    [
        f"v1={VECTOR_V1}",
        f"t=abc,v1={VECTOR_V1}",
        f"t={T}",
        f"t={T},v1=zz",
        "garbage",
        f"t={'9' * 5000},v1={VECTOR_V1}",  # int() of it would raise: a 400, never a 500
    ],
)
def test_malformed_header(value: str) -> None:
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [SECRET], SETTINGS, T)
    assert _reason(result) is Reason.MALFORMED


def test_no_secret() -> None:
    value = f"t={T},v1={VECTOR_V1}"
    result = stripe_scheme.verify(_headers(value), VECTOR_BODY, [], SETTINGS, T)
    assert _reason(result) is Reason.NO_SECRET
