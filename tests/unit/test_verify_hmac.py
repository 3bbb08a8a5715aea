from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import CIMultiDict
from pydantic import ValidationError

from webhook_server.config import HmacAlgorithm, SignatureEncoding, VerificationConfig
from webhook_server.verify import Reason, Rejected, Verified, generic_hmac

NOW = 1_700_000_000.0
SECRET = b"It's a Secret to Everybody"
BODY = b'{"id":"evt_1","type":"order.paid"}'
GITHUB_LIKE = VerificationConfig(header="X-Hub-Signature-256", prefix="sha256=")
TIMESTAMPED = VerificationConfig(
    header="X-Signature",
    timestamp_header="X-Timestamp",
    signed_content="{timestamp}.{body}",
    encoding=SignatureEncoding.BASE64,
)


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_github_like_config_accepts_the_github_official_vector() -> None:
    headers = CIMultiDict(
        {
            "x-hub-signature-256": (
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
            )
        }
    )
    result = generic_hmac.verify(headers, b"Hello, World!", [SECRET], GITHUB_LIKE, NOW)
    assert result == Verified(event_id=None, event_type=None)


@pytest.mark.parametrize("algorithm", list(HmacAlgorithm))
@pytest.mark.parametrize("encoding", list(SignatureEncoding))
def test_algorithms_and_encodings_match_an_independent_computation(
    algorithm: HmacAlgorithm, encoding: SignatureEncoding
) -> None:
    settings = VerificationConfig(header="X-Signature", algorithm=algorithm, encoding=encoding)
    digest = hmac.new(SECRET, BODY, getattr(hashlib, algorithm.value)).digest()
    value = (
        base64.b64encode(digest).decode() if encoding is SignatureEncoding.BASE64 else digest.hex()
    )
    headers = CIMultiDict({"X-Signature": value})
    result = generic_hmac.verify(headers, BODY, [SECRET], settings, NOW)
    assert result == Verified(event_id="evt_1", event_type="order.paid")
    assert generic_hmac.sign(BODY, SECRET, settings, NOW, None)["X-Signature"] == value


def test_sha1_digest_is_not_accepted_for_sha256() -> None:
    settings = VerificationConfig(header="X-Signature")
    value = hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    headers = CIMultiDict({"X-Signature": value})
    assert (
        _reason(generic_hmac.verify(headers, BODY, [SECRET], settings, NOW)) is Reason.BAD_SIGNATURE
    )


def test_timestamp_template() -> None:
    digest = hmac.new(SECRET, f"{int(NOW)}.".encode() + BODY, hashlib.sha256).digest()
    headers = CIMultiDict(
        {"X-Signature": base64.b64encode(digest).decode(), "X-Timestamp": str(int(NOW))}
    )
    assert isinstance(generic_hmac.verify(headers, BODY, [SECRET], TIMESTAMPED, NOW + 10), Verified)


def test_millisecond_timestamps() -> None:
    ms = str(int(NOW) * 1000)
    digest = hmac.new(SECRET, f"{ms}.".encode() + BODY, hashlib.sha256).digest()
    headers = CIMultiDict({"X-Signature": base64.b64encode(digest).decode(), "X-Timestamp": ms})
    assert isinstance(generic_hmac.verify(headers, BODY, [SECRET], TIMESTAMPED, NOW), Verified)
    result = generic_hmac.verify(headers, BODY, [SECRET], TIMESTAMPED, NOW + 3600)
    assert _reason(result) is Reason.STALE_TIMESTAMP


def test_body_is_inserted_as_raw_bytes() -> None:
    settings = VerificationConfig(
        header="X-Sig",
        signed_content="v1:{id}:{body}:{timestamp}",
        id_header="X-Id",
        timestamp_header="X-Ts",
    )
    body = b"\xff\xfe not utf-8 {timestamp}"
    ts = str(int(NOW))
    content = b"v1:abc:" + body + f":{ts}".encode()
    headers = CIMultiDict(
        {"X-Sig": hmac.new(SECRET, content, hashlib.sha256).hexdigest(), "X-Id": "abc", "X-Ts": ts}
    )
    result = generic_hmac.verify(headers, body, [SECRET], settings, NOW)
    assert result == Verified(event_id="abc", event_type=None)


def test_id_and_type_headers() -> None:
    settings = VerificationConfig(header="X-Sig", id_header="X-Event-Id", type_header="X-Event")
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, settings, NOW, "from-header"))
    headers["X-Event"] = "thing.happened"
    result = generic_hmac.verify(headers, BODY, [SECRET], settings, NOW)
    assert result == Verified(event_id="from-header", event_type="thing.happened")


def test_sign_then_verify_round_trip() -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, TIMESTAMPED, NOW, None))
    assert headers["X-Timestamp"] == str(int(NOW))
    assert isinstance(generic_hmac.verify(headers, BODY, [SECRET], TIMESTAMPED, NOW), Verified)


def test_tampered_body_is_rejected() -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, GITHUB_LIKE, NOW, None))
    result = generic_hmac.verify(headers, BODY + b"!", [SECRET], GITHUB_LIKE, NOW)
    assert _reason(result) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [301, -301])
def test_stale_timestamp(offset: int) -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, TIMESTAMPED, NOW, None))
    result = generic_hmac.verify(headers, BODY, [SECRET], TIMESTAMPED, NOW + offset)
    assert _reason(result) is Reason.STALE_TIMESTAMP


def test_wrong_secret_is_rejected() -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, GITHUB_LIKE, NOW, None))
    result = generic_hmac.verify(headers, BODY, [b"wrong"], GITHUB_LIKE, NOW)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_rotation_accepts_the_second_secret() -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, TIMESTAMPED, NOW, None))
    result = generic_hmac.verify(headers, BODY, [b"new", SECRET], TIMESTAMPED, NOW)
    assert isinstance(result, Verified)


def test_missing_signature_header() -> None:
    result = generic_hmac.verify(CIMultiDict(), BODY, [SECRET], GITHUB_LIKE, NOW)
    assert _reason(result) is Reason.MISSING_HEADER


def test_missing_timestamp_header() -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, TIMESTAMPED, NOW, None))
    del headers["X-Timestamp"]
    result = generic_hmac.verify(headers, BODY, [SECRET], TIMESTAMPED, NOW)
    assert _reason(result) is Reason.MISSING_HEADER


def test_template_timestamp_without_a_timestamp_header_configured() -> None:
    settings = VerificationConfig(header="X-Sig", signed_content="{timestamp}.{body}")
    headers = CIMultiDict({"X-Sig": "00" * 32})
    assert (
        _reason(generic_hmac.verify(headers, BODY, [SECRET], settings, NOW))
        is Reason.MISSING_HEADER
    )


def test_template_id_without_an_id_value() -> None:
    settings = VerificationConfig(header="X-Sig", signed_content="{id}.{body}", id_header="X-Id")
    headers = CIMultiDict({"X-Sig": "00" * 32})
    assert (
        _reason(generic_hmac.verify(headers, BODY, [SECRET], settings, NOW))
        is Reason.MISSING_HEADER
    )


@pytest.mark.parametrize(
    ("settings", "headers"),
    [
        (GITHUB_LIKE, {"X-Hub-Signature-256": "757107ea0eb2509fc211221cce984b8a37570b6d"}),
        (GITHUB_LIKE, {"X-Hub-Signature-256": "sha256=xyz"}),
        (TIMESTAMPED, {"X-Signature": "not base64!", "X-Timestamp": "1"}),
        (TIMESTAMPED, {"X-Signature": "AAAA", "X-Timestamp": "noon"}),
        (TIMESTAMPED, {"X-Signature": "AAAA", "X-Timestamp": "9" * 5000}),
    ],
)
def test_malformed_header(settings: VerificationConfig, headers: dict[str, str]) -> None:
    result = generic_hmac.verify(CIMultiDict(headers), BODY, [SECRET], settings, NOW)
    assert _reason(result) is Reason.MALFORMED


def test_no_secret() -> None:
    headers = CIMultiDict(generic_hmac.sign(BODY, SECRET, GITHUB_LIKE, NOW, None))
    assert _reason(generic_hmac.verify(headers, BODY, [], GITHUB_LIKE, NOW)) is Reason.NO_SECRET


def test_no_header_configured() -> None:
    result = generic_hmac.verify(CIMultiDict(), BODY, [SECRET], VerificationConfig(), NOW)
    assert _reason(result) is Reason.NO_SECRET


def test_a_timestamp_header_must_be_signed() -> None:
    # Checked for tolerance but not signed, the timestamp could be rewritten by anyone replaying
    # a captured request: such a configuration is refused, as one without {body} is.
    with pytest.raises(ValidationError, match=r"signedContent must contain \{timestamp\}"):
        VerificationConfig(header="X-Sig", timestamp_header="X-Ts")
    with pytest.raises(ValidationError, match=r"signedContent must contain \{timestamp\}"):
        VerificationConfig.model_validate(
            {"header": "X-Sig", "timestampHeader": "X-Ts", "signedContent": "{id}.{body}"}
        )
    assert TIMESTAMPED.timestamp_header == "X-Timestamp"


def test_an_unsigned_id_header_is_allowed() -> None:
    # GitHub, Shopify and Forgejo sign only the body and send the delivery id beside it: refusing
    # an unsigned id would refuse them. The id is then only as good as the sender's (see
    # docs/receiver.md): it deduplicates redeliveries, it does not stop replays.
    settings = VerificationConfig(header="X-Sig", id_header="X-Delivery")
    assert settings.signed_content == "{body}"
