from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from multidict import CIMultiDict
from slack_sdk.signature import Clock, SignatureVerifier

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, slack

SETTINGS = VerificationConfig()
# The example in Slack's "Verifying requests from Slack" guide.
SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
TS = 1531420618
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
EVENT = json.dumps(
    {"type": "event_callback", "event_id": "Ev123", "event": {"type": "app_mention"}}
).encode()


class FixedClock(Clock):
    def now(self) -> float:
        return float(TS)


def _headers(signature: str = DOC_SIGNATURE, ts: str = str(TS)) -> CIMultiDict[str]:
    return CIMultiDict({"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": ts})


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_slack_documented_example() -> None:
    result = slack.verify(_headers(), DOC_BODY, [SECRET], SETTINGS, TS)
    assert result == Verified(event_id=None, event_type="/webhook-collect")


def test_sign_reproduces_the_documented_example() -> None:
    headers = slack.sign(DOC_BODY, SECRET, SETTINGS, TS, None)
    assert headers["X-Slack-Signature"] == DOC_SIGNATURE
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_slack_sdk_signature_verifies() -> None:
    signature = SignatureVerifier(SECRET.decode()).generate_signature(timestamp=str(TS), body=EVENT)
    assert signature is not None
    result = slack.verify(_headers(signature), EVENT, [SECRET], SETTINGS, TS)
    assert result == Verified(event_id="Ev123", event_type="app_mention")


def test_slack_sdk_accepts_our_signature() -> None:
    headers = slack.sign(EVENT, SECRET, SETTINGS, TS, None)
    verifier = SignatureVerifier(SECRET.decode(), clock=FixedClock())
    assert verifier.is_valid_request(EVENT, headers)


def test_url_verification_returns_the_challenge() -> None:
    body = b'{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",'
    body += b'"type":"url_verification"}'
    headers = CIMultiDict(slack.sign(body, SECRET, SETTINGS, TS, None))
    result = slack.verify(headers, body, [SECRET], SETTINGS, TS)
    assert result == Verified(
        event_type="url_verification",
        challenge="3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
    )


def test_url_verification_needs_a_valid_signature() -> None:
    body = b'{"challenge":"c","type":"url_verification"}'
    headers = CIMultiDict(slack.sign(body, b"attacker", SETTINGS, TS, None))
    assert _reason(slack.verify(headers, body, [SECRET], SETTINGS, TS)) is Reason.BAD_SIGNATURE


def test_interactivity_payload_type() -> None:
    body = urlencode({"payload": json.dumps({"type": "block_actions"})}).encode()
    headers = CIMultiDict(slack.sign(body, SECRET, SETTINGS, TS, None))
    result = slack.verify(headers, body, [SECRET], SETTINGS, TS)
    assert result == Verified(event_id=None, event_type="block_actions")


def test_tampered_body_is_rejected() -> None:
    body = DOC_BODY.replace(b"roadrunner", b"coyote")
    assert _reason(slack.verify(_headers(), body, [SECRET], SETTINGS, TS)) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [301, -301])
def test_stale_timestamp(offset: int) -> None:
    result = slack.verify(_headers(), DOC_BODY, [SECRET], SETTINGS, TS + offset)
    assert _reason(result) is Reason.STALE_TIMESTAMP


def test_tampered_timestamp_is_rejected() -> None:
    result = slack.verify(_headers(ts=str(TS + 1)), DOC_BODY, [SECRET], SETTINGS, TS)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_wrong_secret_is_rejected() -> None:
    result = slack.verify(_headers(), DOC_BODY, [b"other"], SETTINGS, TS)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_rotation_accepts_the_second_secret() -> None:
    result = slack.verify(_headers(), DOC_BODY, [b"new-secret", SECRET], SETTINGS, TS)
    assert isinstance(result, Verified)


@pytest.mark.parametrize("missing", ["X-Slack-Signature", "X-Slack-Request-Timestamp"])
def test_missing_header(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    assert _reason(slack.verify(headers, DOC_BODY, [SECRET], SETTINGS, TS)) is Reason.MISSING_HEADER


@pytest.mark.parametrize(
    ("signature", "ts"),
    [
        (DOC_SIGNATURE.replace("v0=", "v1="), str(TS)),
        ("v0=not-hex", str(TS)),
        ("a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503", str(TS)),
        (DOC_SIGNATURE, "yesterday"),
        (DOC_SIGNATURE, "9" * 5000),
    ],
)
def test_malformed_header(signature: str, ts: str) -> None:
    result = slack.verify(_headers(signature, ts), DOC_BODY, [SECRET], SETTINGS, TS)
    assert _reason(result) is Reason.MALFORMED


def test_no_secret() -> None:
    assert _reason(slack.verify(_headers(), DOC_BODY, [], SETTINGS, TS)) is Reason.NO_SECRET
