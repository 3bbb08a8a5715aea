from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks.webhooks
import svix.webhooks
from multidict import CIMultiDict

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, standard

SETTINGS = VerificationConfig()
# The Standard Webhooks spec's example, reproduced by its reference libraries' tests.
SECRET = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
EVENT = b'{"type":"user.created","data":{"id":"user_1"}}'


def _headers(
    signature: str = SIGNATURE, msg_id: str = MSG_ID, ts: str = str(TS), prefix: str = "webhook"
) -> CIMultiDict[str]:
    return CIMultiDict(
        {f"{prefix}-id": msg_id, f"{prefix}-timestamp": ts, f"{prefix}-signature": signature}
    )


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_spec_vector() -> None:
    result = standard.verify(_headers(), BODY, [SECRET], SETTINGS, TS)
    assert result == Verified(event_id=MSG_ID, event_type=None)


def test_spec_vector_with_svix_headers() -> None:
    result = standard.verify(_headers(prefix="svix"), BODY, [SECRET], SETTINGS, TS)
    assert result == Verified(event_id=MSG_ID, event_type=None)


def test_sign_reproduces_the_spec_vector() -> None:
    headers = standard.sign(BODY, SECRET, SETTINGS, TS, MSG_ID)
    assert headers["webhook-signature"] == SIGNATURE
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == str(TS)


def test_standardwebhooks_library_signature_verifies() -> None:
    wh = standardwebhooks.webhooks.Webhook(SECRET.decode())
    signature = wh.sign("msg_lib", datetime.fromtimestamp(TS, tz=UTC), EVENT.decode())
    result = standard.verify(_headers(signature, "msg_lib"), EVENT, [SECRET], SETTINGS, TS)
    assert result == Verified(event_id="msg_lib", event_type="user.created")


def test_standardwebhooks_library_accepts_our_signature() -> None:
    now = time.time()  # the library checks the timestamp against its own clock
    headers = standard.sign(EVENT, SECRET, SETTINGS, now, "msg_ours")
    wh = standardwebhooks.webhooks.Webhook(SECRET.decode())
    assert wh.verify(EVENT, headers) == {"type": "user.created", "data": {"id": "user_1"}}


def test_svix_library_signature_verifies_with_svix_headers() -> None:
    wh = svix.webhooks.Webhook(SECRET.decode())
    signature = wh.sign("msg_svix", datetime.fromtimestamp(TS, tz=UTC), EVENT.decode())
    headers = _headers(signature, "msg_svix", prefix="svix")
    result = standard.verify(headers, EVENT, [SECRET], SETTINGS, TS + 5)
    assert result == Verified(event_id="msg_svix", event_type="user.created")


def test_svix_library_accepts_our_signature_under_svix_names() -> None:
    now = time.time()
    ours = standard.sign(EVENT, SECRET, SETTINGS, now, "msg_ours")
    headers = {k.replace("webhook-", "svix-"): v for k, v in ours.items()}
    svix.webhooks.Webhook(SECRET.decode()).verify(EVENT, headers)  # raises when invalid


def test_multiple_signatures_any_may_match_and_other_versions_are_ignored() -> None:
    value = f"v1a,{base64.b64encode(b'x' * 64).decode()} v1,{'A' * 43}= {SIGNATURE}"
    assert isinstance(standard.verify(_headers(value), BODY, [SECRET], SETTINGS, TS), Verified)


def test_only_unsupported_versions_is_malformed() -> None:
    value = f"v1a,{base64.b64encode(b'x' * 64).decode()}"
    result = standard.verify(_headers(value), BODY, [SECRET], SETTINGS, TS)
    assert _reason(result) is Reason.MALFORMED


def test_tampered_body_is_rejected() -> None:
    result = standard.verify(_headers(), b'{"test": 2432232315}', [SECRET], SETTINGS, TS)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_tampered_id_is_rejected() -> None:
    result = standard.verify(_headers(msg_id="msg_other"), BODY, [SECRET], SETTINGS, TS)
    assert _reason(result) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [301, -301])
def test_stale_timestamp(offset: int) -> None:
    result = standard.verify(_headers(), BODY, [SECRET], SETTINGS, TS + offset)
    assert _reason(result) is Reason.STALE_TIMESTAMP


def test_wrong_secret_is_rejected() -> None:
    other = b"whsec_" + base64.b64encode(b"another secret of 24 bytes")
    result = standard.verify(_headers(), BODY, [other], SETTINGS, TS)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_rotation_accepts_the_second_secret() -> None:
    current = b"whsec_" + base64.b64encode(b"the brand new secret key!")
    assert isinstance(standard.verify(_headers(), BODY, [current, SECRET], SETTINGS, TS), Verified)


def test_secret_without_prefix_or_padding_and_with_newline() -> None:
    secret = b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    assert isinstance(standard.verify(_headers(), BODY, [secret], SETTINGS, TS), Verified)


def test_undecodable_secret_is_skipped() -> None:
    assert isinstance(
        standard.verify(_headers(), BODY, [b"whsec_!!!", SECRET], SETTINGS, TS), Verified
    )
    result = standard.verify(_headers(), BODY, [b"whsec_!!!"], SETTINGS, TS)
    assert _reason(result) is Reason.NO_SECRET


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    assert _reason(standard.verify(headers, BODY, [SECRET], SETTINGS, TS)) is Reason.MISSING_HEADER


@pytest.mark.parametrize(
    ("signature", "ts"),
    [
        (SIGNATURE, "16142653.30"),
        (SIGNATURE, "soon"),
        ("v1,***", str(TS)),
        ("garbage", str(TS)),
        (SIGNATURE, "9" * 5000),
    ],
)
def test_malformed_header(signature: str, ts: str) -> None:
    result = standard.verify(_headers(signature, ts=ts), BODY, [SECRET], SETTINGS, TS)
    assert _reason(result) is Reason.MALFORMED


def test_no_secret() -> None:
    assert _reason(standard.verify(_headers(), BODY, [], SETTINGS, TS)) is Reason.NO_SECRET


def test_sign_refuses_an_undecodable_secret() -> None:
    with pytest.raises(ValueError, match="Standard Webhooks secret"):
        standard.sign(BODY, b"whsec_!!!", SETTINGS, TS, None)
