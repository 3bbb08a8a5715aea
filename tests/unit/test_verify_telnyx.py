"""Telnyx against its SDK's verifier (telnyx.lib.webhook_verification), and an independent Ed25519
signer (PyNaCl, which that verifier uses) for the other direction: Telnyx publishes no vector."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict
from nacl.signing import SigningKey
from pydantic import ValidationError
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

from webhook_server.config import Provider, SourceConfig, VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, telnyx

KEY = Ed25519PrivateKey.generate()
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
PUBLIC_B64 = base64.b64encode(
    KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()
SETTINGS = VerificationConfig(public_key=PUBLIC_B64)
BODY = b'{"data":{"event_type":"message.sent","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"}}'


def _verify(
    headers: dict[str, str], body: bytes, now: float, settings: VerificationConfig = SETTINGS
) -> Verified | Rejected:
    return telnyx.verify(CIMultiDict(headers), body, [], settings, now)


def test_what_we_sign_the_telnyx_sdk_verifies() -> None:
    now = time.time()  # the SDK checks its tolerance against the wall clock
    headers = telnyx.sign(BODY, PEM, VerificationConfig(), now, None)
    verify_webhook_signature(BODY, headers, PUBLIC_B64)
    with pytest.raises(WebhookVerificationError):
        verify_webhook_signature(BODY + b" ", headers, PUBLIC_B64)


def test_what_an_independent_ed25519_signer_makes_verifies_and_names_the_event() -> None:
    seed = KEY.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    signed = SigningKey(seed).sign(b"1800000000|" + BODY)
    headers = {
        "telnyx-timestamp": "1800000000",
        "telnyx-signature-ed25519": base64.b64encode(signed.signature).decode(),
    }
    result = _verify(headers, BODY, 1_800_000_010)
    assert result == Verified(
        event_id="0ccc7b54-4df3-4bca-a65a-3da1ecc777f0", event_type="message.sent"
    )


def test_tampered_stale_and_foreign_deliveries_are_refused() -> None:
    headers = telnyx.sign(BODY, PEM, VerificationConfig(), 1_800_000_000, None)
    assert (
        _reason(_verify(headers, BODY.replace(b"sent", b"failed"), 1_800_000_000))
        is Reason.BAD_SIGNATURE
    )
    assert _reason(_verify(headers, BODY, 1_800_000_301)) is Reason.STALE_TIMESTAMP
    forged = dict(headers, **{"telnyx-timestamp": "1800000300"})  # a fresh timestamp is signed too
    assert _reason(_verify(forged, BODY, 1_800_000_300)) is Reason.BAD_SIGNATURE
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert (
        _reason(
            _verify(
                telnyx.sign(BODY, other, VerificationConfig(), 1_800_000_000, None),
                BODY,
                1_800_000_000,
            )
        )
        is Reason.BAD_SIGNATURE
    )


def test_any_of_several_keys_may_verify_and_pem_is_accepted() -> None:
    pem_public = (
        KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    new = base64.b64encode(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    headers = telnyx.sign(BODY, PEM, VerificationConfig(), 1_800_000_000, None)
    assert isinstance(
        _verify(headers, BODY, 1_800_000_000, VerificationConfig(public_key=f"{new} {PUBLIC_B64}")),
        Verified,
    )
    assert isinstance(
        _verify(headers, BODY, 1_800_000_000, VerificationConfig(public_key=pem_public)), Verified
    )


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, Reason.MISSING_HEADER),
        ({"telnyx-timestamp": "1800000000"}, Reason.MISSING_HEADER),
        ({"telnyx-timestamp": "soon", "telnyx-signature-ed25519": "AAAA"}, Reason.MALFORMED),
        ({"telnyx-timestamp": "1800000000", "telnyx-signature-ed25519": "AAAA"}, Reason.MALFORMED),
        ({"telnyx-timestamp": "1800000000", "telnyx-signature-ed25519": "é"}, Reason.MALFORMED),
    ],
)
def test_missing_and_malformed_headers(headers: dict[str, str], reason: Reason) -> None:
    assert _reason(_verify(headers, BODY, 1_800_000_000)) is reason


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not base64!", "neither a PEM block nor base64"),
        ("AAAA", "not an Ed25519 public key"),
        (base64.b64encode(b"x" * 91).decode(), "not an Ed25519 public key"),
    ],
)
def test_a_key_that_is_not_ed25519_is_refused_by_the_config(key: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SourceConfig(
            name="t", provider=Provider.TELNYX, verification=VerificationConfig(public_key=key)
        )


def test_telnyx_needs_its_public_key() -> None:
    with pytest.raises(ValidationError, match=r"provider telnyx requires verification\.publicKey"):
        SourceConfig(name="t", provider=Provider.TELNYX)


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
