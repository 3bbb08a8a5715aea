from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from multidict import CIMultiDict
from pydantic import ValidationError

from webhook_server.config import Provider, SourceConfig, VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, highlevel

NOW = 1_738_075_000.0  # 2025-01-28T14:36:40Z
BODY = json.dumps(
    {"type": "ContactCreate", "webhookId": "abc123xyz", "timestamp": "2025-01-28T14:35:00Z"}
).encode()
DEFAULTS = VerificationConfig()

ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


KEYS = VerificationConfig(public_key=_public_pem(ED_KEY) + _public_pem(RSA_KEY))


def _signed(body: bytes, *keys: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key in keys:
        headers.update(highlevel.sign(body, _private_pem(key), DEFAULTS, NOW, None))
    return headers


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_ed25519_signature_verifies() -> None:
    headers = _signed(BODY, ED_KEY)
    assert set(headers) == {"Content-Type", "X-GHL-Signature"}
    result = highlevel.verify(headers, BODY, [], KEYS, NOW)
    assert result == Verified(event_id="abc123xyz", event_type="ContactCreate")


def test_legacy_rsa_signature_verifies() -> None:
    headers = _signed(BODY, RSA_KEY)
    assert set(headers) == {"Content-Type", "X-WH-Signature"}
    result = highlevel.verify(headers, BODY, [], KEYS, NOW)
    assert result == Verified(event_id="abc123xyz", event_type="ContactCreate")


def test_signature_made_by_cryptography_directly_verifies() -> None:
    signature = RSA_KEY.sign(BODY, padding.PKCS1v15(), hashes.SHA256())
    headers = CIMultiDict({"x-wh-signature": base64.b64encode(signature).decode()})
    assert isinstance(highlevel.verify(headers, BODY, [], KEYS, NOW), Verified)


def test_both_headers_verify() -> None:
    assert isinstance(
        highlevel.verify(_signed(BODY, ED_KEY, RSA_KEY), BODY, [], KEYS, NOW), Verified
    )


def test_falls_back_to_legacy_when_only_an_rsa_key_is_configured() -> None:
    rsa_only = VerificationConfig(public_key=_public_pem(RSA_KEY))
    result = highlevel.verify(_signed(BODY, ED_KEY, RSA_KEY), BODY, [], rsa_only, NOW)
    assert isinstance(result, Verified)


def test_prefers_ed25519_reason_when_both_fail() -> None:
    headers = _signed(BODY, ED_KEY, RSA_KEY)
    assert _reason(highlevel.verify(headers, BODY + b" ", [], KEYS, NOW)) is Reason.BAD_SIGNATURE


def test_tampered_body_is_rejected() -> None:
    for key in (ED_KEY, RSA_KEY):
        tampered = BODY.replace(b"abc123xyz", b"abc123xyZ")
        result = highlevel.verify(_signed(BODY, key), tampered, [], KEYS, NOW)
        assert _reason(result) is Reason.BAD_SIGNATURE


def test_wrong_key_is_rejected() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    result = highlevel.verify(_signed(BODY, other), BODY, [], KEYS, NOW)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_rotation_any_configured_key_may_match() -> None:
    old, new = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    both = VerificationConfig(public_key=_public_pem(new) + "\n" + _public_pem(old))
    assert isinstance(highlevel.verify(_signed(BODY, old), BODY, [], both, NOW), Verified)


@pytest.mark.parametrize("offset", [301, -301])
def test_stale_iso_timestamp(offset: int) -> None:
    signed_at = NOW - 100  # the body's "2025-01-28T14:35:00Z"
    result = highlevel.verify(_signed(BODY, ED_KEY), BODY, [], KEYS, signed_at + offset)
    assert _reason(result) is Reason.STALE_TIMESTAMP


@pytest.mark.parametrize("timestamp", [int(NOW) - 1000, (int(NOW) - 1000) * 1000, "1738074000"])
def test_stale_unix_timestamp(timestamp: int | str) -> None:
    body = json.dumps({"webhookId": "w", "timestamp": timestamp}).encode()
    result = highlevel.verify(_signed(body, ED_KEY), body, [], KEYS, NOW)
    assert _reason(result) is Reason.STALE_TIMESTAMP


@pytest.mark.parametrize("timestamp", [int(NOW), int(NOW) * 1000, "2025-01-28T14:36:40+00:00"])
def test_fresh_timestamps(timestamp: int | str) -> None:
    body = json.dumps({"webhookId": "w", "timestamp": timestamp}).encode()
    assert isinstance(highlevel.verify(_signed(body, ED_KEY), body, [], KEYS, NOW), Verified)


def test_body_without_timestamp_is_accepted() -> None:
    body = b'{"type":"INSTALL","webhookId":"w"}'
    result = highlevel.verify(_signed(body, RSA_KEY), body, [], KEYS, NOW + 10**6)
    assert result == Verified(event_id="w", event_type="INSTALL")


def test_missing_header() -> None:
    headers = CIMultiDict({"X-GHL-Signature": "", "Content-Type": "application/json"})
    assert _reason(highlevel.verify(headers, BODY, [], KEYS, NOW)) is Reason.MISSING_HEADER


def test_malformed_header() -> None:
    headers = CIMultiDict({"X-GHL-Signature": "%%% not base64 %%%"})
    assert _reason(highlevel.verify(headers, BODY, [], KEYS, NOW)) is Reason.MALFORMED


def test_header_without_a_matching_key_type() -> None:
    ed_only = VerificationConfig(public_key=_public_pem(ED_KEY))
    result = highlevel.verify(_signed(BODY, RSA_KEY), BODY, [], ed_only, NOW)
    assert _reason(result) is Reason.NO_SECRET


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "block 1 is not a public key",
        ),
        ("not a key at all", "no PEM block"),
        (
            # The second block is an EC key: HighLevel signs with Ed25519 or RSA only.
            "\n".join([_public_pem(ED_KEY), _public_pem(ec.generate_private_key(ec.SECP256R1()))]),
            "block 2 is neither an Ed25519 nor an RSA key",
        ),
    ],
)
def test_an_unparseable_public_key_is_refused_by_the_config(pem: str, message: str) -> None:
    # It used to be accepted and then refuse every delivery (NO_SECRET) with /readyz ready.
    with pytest.raises(ValidationError, match=message):
        SourceConfig(
            name="ghl", provider=Provider.HIGHLEVEL, verification=VerificationConfig(public_key=pem)
        )


def test_default_published_keys_parse() -> None:
    ed_keys, rsa_keys = highlevel.public_keys(highlevel.DEFAULT_PUBLIC_KEYS)
    assert len(ed_keys) == 1
    assert len(rsa_keys) == 1
    assert rsa_keys[0].key_size == 4096
    spki = ed_keys[0].public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        base64.b64encode(spki).decode()
        == "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg="
    )


def test_default_keys_reject_a_random_signer() -> None:
    headers = _signed(BODY, ED_KEY, RSA_KEY)
    assert _reason(highlevel.verify(headers, BODY, [], DEFAULTS, NOW)) is Reason.BAD_SIGNATURE


def test_sign_refuses_other_key_types() -> None:
    pem = _private_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match="Ed25519 or RSA"):
        highlevel.sign(BODY, pem, DEFAULTS, NOW, None)
