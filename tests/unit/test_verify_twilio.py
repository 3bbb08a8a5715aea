"""Twilio against Twilio's published examples and its own SDK's RequestValidator, both ways."""

from __future__ import annotations

import hashlib
from urllib.parse import quote, urlencode

import pytest
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from webhook_server.config import VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, twilio

PUBLIC = "https://hooks.example.com/hooks/default/twilio"
TOKEN = "12345"
# Twilio's security guide (twilio.com/docs/usage/security#validating-requests) and the test suites
# of its SDKs: this URL, these parameters and Auth Token 12345 give this signature.
DOC_URL = "https://mycompany.com/myapp.php"
DOC_QUERY = "foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
# twilio-python's tests (tests/unit/test_request_validator.py): a JSON body signed through the URL.
DOC_JSON = b'{"property": "value", "boolean": true}'
DOC_JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
DOC_JSON_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="


def _verify(
    headers: dict[str, str], body: bytes, query: str = "", url: str = PUBLIC, token: str = TOKEN
) -> Verified | Rejected:
    settings = VerificationConfig(public_url=url)
    return twilio.verify(CIMultiDict(headers), body, [token.encode()], settings, 0.0, query)


def test_twilios_published_example_verifies() -> None:
    body = urlencode(DOC_PARAMS).encode()
    result = _verify({"X-Twilio-Signature": DOC_SIGNATURE}, body, DOC_QUERY, DOC_URL)
    assert isinstance(result, Verified)
    # A voice request without a CallStatus names no event: its id is a hash of the parameters,
    # so a replay that re-encodes the form (or reorders it) is still the same event.
    reordered = urlencode(sorted(DOC_PARAMS.items(), reverse=True), quote_via=quote).encode()
    replay = _verify({"X-Twilio-Signature": DOC_SIGNATURE}, reordered, DOC_QUERY, DOC_URL)
    assert isinstance(replay, Verified)
    assert result.event_id is not None
    assert replay.event_id == result.event_id


def test_twilios_published_json_example_verifies_through_bodysha256() -> None:
    assert hashlib.sha256(DOC_JSON).hexdigest() == DOC_JSON_HASH
    query = f"{DOC_QUERY}&bodySHA256={DOC_JSON_HASH}"
    result = _verify({"X-Twilio-Signature": DOC_JSON_SIGNATURE}, DOC_JSON, query, DOC_URL)
    assert isinstance(result, Verified)
    tampered = DOC_JSON.replace(b"true", b"false")
    assert (
        _reason(_verify({"X-Twilio-Signature": DOC_JSON_SIGNATURE}, tampered, query, DOC_URL))
        is Reason.BAD_SIGNATURE
    )


PARAMS = [
    ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
    ("MessageStatus", "delivered"),
    ("SmsStatus", "delivered"),
    ("Body", "héllo & goodbye+1 = 2"),
    ("To", "+15005550001"),
    ("From", "+15005550006"),
    ("Media", "b"),
    ("Media", "a"),  # a repeated name: each value, sorted
    ("Empty", ""),
]


def test_what_the_sdk_signs_verifies_and_names_the_status_change() -> None:
    validator = RequestValidator(TOKEN)
    url = f"{PUBLIC}?source=sms"
    signature = validator.compute_signature(url, MultiDict(PARAMS))
    result = _verify({"X-Twilio-Signature": signature}, urlencode(PARAMS).encode(), "source=sms")
    assert result == Verified(
        event_id="SM0123456789abcdef0123456789abcdef:delivered", event_type="message.delivered"
    )


def test_what_we_sign_the_sdk_validates() -> None:
    body = urlencode(PARAMS).encode()
    headers = twilio.sign(body, TOKEN.encode(), VerificationConfig(public_url=PUBLIC), 0.0, None)
    assert RequestValidator(TOKEN).validate(
        PUBLIC, MultiDict(PARAMS), headers["X-Twilio-Signature"]
    )
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_json_body_we_sign_the_sdk_validates_with_its_hash_in_the_url() -> None:
    settings = VerificationConfig(public_url=PUBLIC)
    headers = twilio.sign(DOC_JSON, TOKEN.encode(), settings, 0.0, None)
    query = twilio.query(DOC_JSON, settings)
    assert query == f"bodySHA256={DOC_JSON_HASH}"
    url = f"{PUBLIC}?{query}"
    assert RequestValidator(TOKEN).validate(url, DOC_JSON.decode(), headers["X-Twilio-Signature"])
    assert isinstance(_verify(headers, DOC_JSON, query), Verified)


def test_the_sha256_shared_key_variant_verifies() -> None:
    signature = RequestValidator(TOKEN).compute_signature(
        PUBLIC, dict(PARAMS[:3]), algorithm="HMAC_SHA256"
    )
    headers = {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_x,algorithm=HMAC_SHA256",
    }
    assert isinstance(_verify(headers, urlencode(PARAMS[:3]).encode()), Verified)
    headers["X-Twilio-Webhooks-Signature-Settings"] = "algorithm=HMAC_MD5"
    assert _reason(_verify(headers, urlencode(PARAMS[:3]).encode())) is Reason.MALFORMED


# -- the URL: public, not what the receiver sees ---------------------------------------------------


def _signed_for(url: str) -> tuple[dict[str, str], bytes]:
    body = urlencode(PARAMS).encode()
    signature = RequestValidator(TOKEN).compute_signature(url, MultiDict(PARAMS))
    return {"X-Twilio-Signature": signature}, body


def test_behind_an_ingress_the_public_url_verifies_and_the_internal_one_does_not() -> None:
    # Twilio called https://hooks.example.com/...; the pod sees http://10.0.0.7:8080/... with a
    # Host of its own. Only the configured public URL rebuilds what Twilio signed.
    headers, body = _signed_for(PUBLIC)
    headers["Host"] = "twilio-receiver.default.svc:8080"
    headers["X-Forwarded-Host"] = "evil.example.com"
    assert isinstance(_verify(headers, body), Verified)
    internal = "http://twilio-receiver.default.svc:8080/hooks/default/twilio"
    assert _reason(_verify(headers, body, url=internal)) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "wrong",
    [
        "http://hooks.example.com/hooks/default/twilio",  # http where Twilio called https
        "https://other.example.com/hooks/default/twilio",  # another host
        "https://hooks.example.com/hooks/default/twilio/",  # a trailing slash
        "https://hooks.example.com/default/twilio",  # a rewritten path
    ],
)
def test_a_url_other_than_the_one_twilio_called_fails(wrong: str) -> None:
    headers, body = _signed_for(PUBLIC)
    assert _reason(_verify(headers, body, url=wrong)) is Reason.BAD_SIGNATURE


def test_the_query_string_is_part_of_the_url() -> None:
    headers, body = _signed_for(f"{PUBLIC}?tenant=a%20b")
    assert isinstance(_verify(headers, body, "tenant=a%20b"), Verified)
    assert _reason(_verify(headers, body, "tenant=a+b")) is Reason.BAD_SIGNATURE
    assert _reason(_verify(headers, body)) is Reason.BAD_SIGNATURE


def test_the_default_port_may_or_may_not_be_in_the_signed_url() -> None:
    headers, body = _signed_for("https://hooks.example.com:443/hooks/default/twilio")
    assert isinstance(_verify(headers, body), Verified)
    headers, body = _signed_for(PUBLIC)
    assert isinstance(
        _verify(headers, body, url="https://hooks.example.com:443/hooks/default/twilio"), Verified
    )


# -- refusals ----------------------------------------------------------------------------------


def test_a_tampered_parameter_fails() -> None:
    headers, body = _signed_for(PUBLIC)
    assert _reason(_verify(headers, body.replace(b"delivered", b"failed"))) is Reason.BAD_SIGNATURE


def test_a_previous_token_still_verifies_during_a_rotation() -> None:
    headers, body = _signed_for(PUBLIC)
    settings = VerificationConfig(public_url=PUBLIC)
    result = twilio.verify(CIMultiDict(headers), body, [b"new-token", TOKEN.encode()], settings, 0)
    assert isinstance(result, Verified)


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, b"a=1", Reason.MISSING_HEADER),
        ({"X-Twilio-Signature": "not base64!"}, b"a=1", Reason.MALFORMED),
        ({"X-Twilio-Signature": "AAAA"}, b"a=%FF", Reason.MALFORMED),  # not UTF-8: not a form
        ({"X-Twilio-Signature": "AAAA"}, b"a=1", Reason.BAD_SIGNATURE),
    ],
)
def test_what_is_refused_and_why(headers: dict[str, str], body: bytes, reason: Reason) -> None:
    assert _reason(_verify(headers, body)) is reason


def test_without_a_public_url_nothing_verifies() -> None:
    headers, body = _signed_for(PUBLIC)
    result = twilio.verify(CIMultiDict(headers), body, [TOKEN.encode()], VerificationConfig(), 0)
    assert _reason(result) is Reason.NO_SECRET


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
