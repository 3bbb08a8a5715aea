"""Vonage signed webhooks against its SDK's verifier (vonage-jwt's verify_signature) and tokens
made by PyJWT the way Vonage documents them (developer.vonage.com, "Decoding signed webhooks":
HS256 with the signature secret; claims iat, jti, iss, payload_hash, api_key, application_id).
vonage-jwt cannot make HS256 tokens, so PyJWT is the independent signer."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import jwt as pyjwt
import pytest
from multidict import CIMultiDict
from pydantic import ValidationError
from vonage_jwt import verify_signature

from webhook_server.config import (
    AuthConfig,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.verify import Reason, Rejected, Verified, vonage

SECRET = "demo-vonage-signature-secret-long-enough-for-hs512-0123456789abcdef"
NOW = 1_800_000_000
BODY = (
    b'{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","status":"delivered","channel":"sms"}'
)


def _token(
    body: bytes = BODY, secret: str = SECRET, algorithm: str = "HS256", **claims: Any
) -> str:
    payload: dict[str, Any] = {
        "iat": NOW,
        "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": "a1b2c3d",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, secret, algorithm=algorithm)


def _verify(
    token: str, body: bytes = BODY, now: float = NOW, secrets: list[bytes] | None = None
) -> Verified | Rejected:
    headers = CIMultiDict({"Authorization": f"Bearer {token}"})
    return vonage.verify(headers, body, secrets or [SECRET.encode()], VerificationConfig(), now)


def test_what_we_sign_the_vonage_sdk_verifies() -> None:
    headers = vonage.sign(BODY, SECRET.encode(), VerificationConfig(), time.time(), None)
    token = headers["Authorization"].removeprefix("Bearer ")
    assert verify_signature(token, SECRET)
    assert not verify_signature(token, "another-secret-as-long-as-the-real-one-0123456789")
    claims = pyjwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["payload_hash"] == hashlib.sha256(BODY).hexdigest()


def test_a_documented_token_verifies_and_names_the_status_change() -> None:
    result = _verify(_token())
    assert result == Verified(
        event_id="aaaaaaaa-bbbb-cccc-dddd-0123456789ab:delivered", event_type="message.delivered"
    )


def test_a_body_other_than_the_hashed_one_is_refused() -> None:
    assert (
        _reason(_verify(_token(), BODY.replace(b"delivered", b"rejected"))) is Reason.BAD_SIGNATURE
    )


def test_a_token_without_payload_hash_does_not_cover_the_body() -> None:
    assert _reason(_verify(_token(payload_hash=None))) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_the_algorithm_is_pinned_to_hs256(algorithm: str) -> None:
    assert _reason(_verify(_token(algorithm=algorithm))) is Reason.BAD_TOKEN


def test_an_unsigned_token_is_refused() -> None:
    header = pyjwt.utils.base64url_encode(b'{"alg":"none"}').decode()
    body = _token().split(".")[1]
    assert _reason(_verify(f"{header}.{body}.")) in (Reason.BAD_TOKEN, Reason.MALFORMED)


def test_stale_expired_and_wrong_secret_tokens_are_refused() -> None:
    assert _reason(_verify(_token(), now=NOW + 301)) is Reason.STALE_TIMESTAMP
    assert _reason(_verify(_token(exp=NOW - 1))) is Reason.STALE_TIMESTAMP
    assert (
        _reason(
            _verify(
                _token(secret="not-the-secret-but-as-long-as-one-0123456789abcdef0123456789abcdef")
            )
        )
        is Reason.BAD_SIGNATURE
    )
    assert _reason(_verify(_token(iat=None))) is Reason.MALFORMED


def test_the_previous_secret_verifies_during_a_rotation() -> None:
    assert isinstance(_verify(_token(), secrets=[b"the-new-secret", SECRET.encode()]), Verified)


@pytest.mark.parametrize(
    "authorization", ["", "Basic abc", "Bearer", "Bearer a.b", "Bearer é.é.é", "Bearer !!.!!.!!"]
)
def test_missing_and_malformed_tokens(authorization: str) -> None:
    headers = CIMultiDict({"Authorization": authorization})
    result = vonage.verify(headers, BODY, [SECRET.encode()], VerificationConfig(), NOW)
    assert _reason(result) in (Reason.MISSING_TOKEN, Reason.MALFORMED)


def test_a_voice_event_is_named_by_its_call() -> None:
    body = b'{"uuid":"call-1","conversation_uuid":"CON-1","status":"answered"}'
    assert _verify(_token(body), body) == Verified(
        event_id="call-1:answered", event_type="call.answered"
    )


def test_vonage_cannot_be_combined_with_spec_auth() -> None:
    with pytest.raises(ValidationError, match="both read the Authorization header"):
        SourceConfig(
            name="v",
            provider=Provider.VONAGE,
            verification=VerificationConfig(secrets=[SecretSource(value=SECRET)]),
            auth=AuthConfig(jwks_url="https://x.example/jwks"),
        )


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
