"""What an outsider can send to the verifiers and the config: never an exception, always a verdict.

Headers reach a verifier as aiohttp decodes them: UTF-8 with ``surrogateescape``, so a byte that is
not UTF-8 arrives as a lone surrogate. Every case here used to raise (a 500 from the receiver,
which makes a provider retry forever) or to be accepted by the config and fail later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pydantic import ValidationError

from webhook_server.auth import JwtAuthenticator
from webhook_server.config import (
    AuthConfig,
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    TokenScheme,
    VerificationConfig,
)
from webhook_server.verify import SIGNERS, VERIFIERS, Reason, Rejected, Verified

NOW = 1_800_000_000.0
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# 100,000 levels: far past the interpreter's recursion limit, well under the default body limit.
DEEP = b'{"type":"x","id":"deep","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

HMAC_WITH_ID = VerificationConfig(
    secrets=[SecretSource(value="k")],
    header="X-Sig",
    id_header="X-Id",
    timestamp_header="X-Ts",
    signed_content="{id}.{timestamp}.{body}",
)
# Telnyx's and SendGrid's published-format keys (any valid key: the point is to reach the code
# past the key, where the request's own bytes are parsed).
TELNYX_KEY = "ntQI+FAb1Auk4X/ifNXqDF/+cz9tkCJARQDjhsSdcZE="
SENDGRID_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw"
    "+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
PUBLIC_URL = "https://hooks.example.com/hooks/default/x"
SETTINGS: dict[Provider, VerificationConfig] = {
    Provider.HMAC: HMAC_WITH_ID,
    Provider.TWILIO: VerificationConfig(public_url=PUBLIC_URL),
    Provider.MANDRILL: VerificationConfig(public_url=PUBLIC_URL),
    Provider.TELNYX: VerificationConfig(public_key=TELNYX_KEY),
    Provider.SENDGRID: VerificationConfig(public_key=SENDGRID_KEY),
    Provider.TOKEN: VerificationConfig(token_scheme=TokenScheme.HEADER, header="X-Sig"),
}
SECRETS: dict[Provider, list[bytes]] = {
    Provider.STANDARD: [STANDARD_SECRET.encode()],
    Provider.HIGHLEVEL: [],
    Provider.JWT: [],
    Provider.HMAC: [b"k"],
    Provider.TELNYX: [],
    Provider.SENDGRID: [],
}
HEADER_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "Stripe-Signature",
    "X-Hub-Signature-256",
    "X-GitHub-Delivery",
    "X-GitHub-Event",
    "X-Shopify-Hmac-Sha256",
    "X-Shopify-Webhook-Id",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "X-GHL-Signature",
    "X-WH-Signature",
    "X-Sig",
    "X-Id",
    "X-Ts",
    "Idempotency-Key",
    "Authorization",
    "X-Twilio-Signature",
    "X-Twilio-Webhooks-Signature-Settings",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "X-Twilio-Email-Event-Webhook-Signature",
    "X-Twilio-Email-Event-Webhook-Timestamp",
    "X-Mandrill-Signature",
]

# Header values as aiohttp hands them over: any text, lone surrogates included.
header_values = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(
        [
            "v1,é",
            "t=1,v1=zz",
            "sha256=é",
            "\udce9",
            "v0=",
            "1800000000",
            "v1,",
            "Bearer a.b.c",
            "Bearer \udce9.e30.AAAA",
            "Basic \udce9",
            "algorithm=HMAC_\udce9",
            "AAAA",
        ]
    ),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            DEEP,
            b"[" * 5000,
            b'{"a":' * 5000,
            b"payload=%7B%7D",
            b"{}",
            b"mandrill_events=" + b"%5B" * 5000,
            b'{"signature":{"timestamp":"1800000000","token":"\xff","signature":"00"}}',
            b"timestamp=1800000000&token=%FF&signature=00",
            b"a=%FF&MessageSid=x&MessageStatus=y",
        ]
    ),
)
queries = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.sampled_from(["bodySHA256=%FF", "bodySHA256=\udce9", "a=%zz&bodySHA256=00"]),
)


def _verify(provider: Provider, headers: dict[str, str], body: bytes, query: str = "") -> Any:
    settings_ = SETTINGS.get(provider, VerificationConfig())
    secrets = SECRETS.get(provider, [b"s3cr3t"])
    return VERIFIERS[provider](CIMultiDict(headers), body, secrets, settings_, NOW, query)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    provider=st.sampled_from(list(Provider)),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=8),
    body=bodies,
    query=queries,
)
def test_no_header_body_or_query_makes_a_verifier_raise(
    provider: Provider, headers: dict[str, str], body: bytes, query: str
) -> None:
    assert isinstance(_verify(provider, headers, body, query), Verified | Rejected)


@pytest.mark.parametrize(
    ("provider", "headers"),
    [
        (Provider.STANDARD, {"webhook-id": "msg_\udce9", "webhook-timestamp": "1800000000"}),
        (Provider.STANDARD, {"svix-id": "msg_\udcff", "svix-timestamp": "1800000000"}),
        (Provider.HMAC, {"X-Id": "id-\udce9", "X-Ts": "1800000000"}),
    ],
)
def test_an_id_that_is_not_utf8_is_compared_byte_for_byte_not_a_crash(
    provider: Provider, headers: dict[str, str]
) -> None:
    body = b'{"type":"t"}'
    forged = headers | {"webhook-signature": "v1,AAAA", "svix-signature": "v1,AAAA"}
    forged["X-Sig"] = "00" * 32
    assert _reason(_verify(provider, forged, body)) is Reason.BAD_SIGNATURE

    # Signed over the very bytes that were sent: it verifies (the receiver then refuses the id
    # as unstorable, 400, rather than failing).
    raw_id = next(v for k, v in headers.items() if k.endswith("id") or k == "X-Id")
    id_bytes = raw_id.encode("utf-8", "surrogateescape")
    if provider is Provider.STANDARD:
        key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
        mac = hmac.new(key, id_bytes + b".1800000000." + body, hashlib.sha256).digest()
        signed = headers | {"webhook-signature": "v1," + base64.b64encode(mac).decode()}
    else:
        mac = hmac.new(b"k", id_bytes + b".1800000000." + body, hashlib.sha256).digest()
        signed = headers | {"X-Sig": mac.hex()}
    result = _verify(provider, signed, body)
    assert isinstance(result, Verified)
    assert result.event_id == raw_id


@pytest.mark.parametrize(
    ("provider", "headers"),
    [
        (Provider.HIGHLEVEL, {"X-GHL-Signature": "sïgnature"}),
        (Provider.HIGHLEVEL, {"X-WH-Signature": "\udce9\udce9"}),
        (
            Provider.STANDARD,
            {"webhook-id": "m", "webhook-timestamp": "1800000000", "webhook-signature": "v1,é"},
        ),
        (Provider.HMAC, {"X-Sig": "é", "X-Id": "i", "X-Ts": "1800000000"}),
        (Provider.STRIPE, {"Stripe-Signature": "t=1800000000,v1=é"}),
        (Provider.SLACK, {"X-Slack-Signature": "v0=é", "X-Slack-Request-Timestamp": "1800000000"}),
        (Provider.TWILIO, {"X-Twilio-Signature": "é"}),
        (Provider.MANDRILL, {"X-Mandrill-Signature": "\udce9"}),
        (Provider.TELNYX, {"telnyx-signature-ed25519": "é", "telnyx-timestamp": "1800000000"}),
        (
            Provider.SENDGRID,
            {
                "X-Twilio-Email-Event-Webhook-Signature": "é",
                "X-Twilio-Email-Event-Webhook-Timestamp": "1800000000",
            },
        ),
        (Provider.VONAGE, {"Authorization": "Bearer é.é.é"}),
    ],
)
def test_a_signature_that_is_not_ascii_is_malformed(
    provider: Provider, headers: dict[str, str]
) -> None:
    assert _reason(_verify(provider, headers, b"{}")) is Reason.MALFORMED


@pytest.mark.parametrize(
    "provider", [Provider.STANDARD, Provider.SLACK, Provider.JWT, Provider.VONAGE, Provider.TOKEN]
)
def test_a_deeply_nested_signed_body_verifies_without_a_type(provider: Provider) -> None:
    secret = STANDARD_SECRET.encode() if provider is Provider.STANDARD else b"s3cr3t"
    headers = SIGNERS[provider](DEEP, secret, VerificationConfig(), NOW, "evt_deep")
    result = VERIFIERS[provider](CIMultiDict(headers), DEEP, [secret], VerificationConfig(), NOW)
    assert isinstance(result, Verified)
    assert result.event_type is None


async def test_a_token_with_a_deeply_nested_header_or_payload_is_an_invalid_token() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    authenticator = JwtAuthenticator(AuthConfig(public_key=pem), clock=lambda: NOW)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    deep = b"[" * 4000 + b"]" * 4000
    header = b64(b'{"alg":"ES256","x":' + deep + b"}")
    nested_header = f"{header}.{b64(b'{}')}.{b64(b'sig')}"
    payload = pyjwt.encode({"exp": NOW + 60}, key, algorithm="ES256").split(".")
    deep_claims = b64(b'{"exp":1,"x":' + deep + b"}")
    nested_payload = f"{payload[0]}.{deep_claims}.{payload[2]}"
    for token in (nested_header, nested_payload):
        result = await authenticator.authenticate({"Authorization": f"Bearer {token}"})
        assert result == Rejected(Reason.BAD_TOKEN, "invalid token")


# -- configuration that can never work is refused when it is read ---------------------------------


def _ec_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"publicKey": "not a key"}, "auth.publicKey is not a PEM public key"),
        (
            {"publicKey": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
            "not a PEM public key",
        ),
        # An EC P-256 key verifies ES256 only.
        ({"publicKey": _ec_pem(), "algorithms": ["RS256"]}, "cannot verify any of auth.algorithms"),
    ],
)
def test_an_unusable_jwt_public_key_is_refused(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuthConfig.model_validate(auth)


@pytest.mark.parametrize("field", ["header", "timestampHeader", "idHeader", "typeHeader"])
@pytest.mark.parametrize("name", ["X Signature", "X-Sig:", "X-Sïg", ""])
def test_a_header_name_that_cannot_arrive_is_refused(field: str, name: str) -> None:
    with pytest.raises(ValidationError, match="should match pattern"):
        VerificationConfig.model_validate({field: name})


@pytest.mark.parametrize(
    ("provider", "value", "message"),
    [
        (Provider.GITHUB, "", "verification secret is empty"),
        (Provider.STRIPE, "  ", "verification secret is empty"),
        (Provider.STANDARD, "whsec_not*base64!", "not a Standard Webhooks secret"),
    ],
)
def test_a_literal_secret_that_can_never_verify_is_refused(
    provider: Provider, value: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        SourceConfig(
            name="s",
            provider=provider,
            verification=VerificationConfig(secrets=[SecretSource(value=value)]),
        )
    assert "not*base64" not in str(caught.value).split("input_value")[0]


def test_two_sources_with_one_name_are_refused_even_on_different_paths() -> None:
    secret = VerificationConfig(secrets=[SecretSource(value="s")])
    sources = [
        SourceConfig(namespace="a", name="x", provider=Provider.GITHUB, verification=secret),
        SourceConfig(
            namespace="a", name="x", provider=Provider.STRIPE, path="/other", verification=secret
        ),
    ]
    with pytest.raises(ValidationError, match="two sources are named a/x"):
        ReceiverConfig(sources=sources, database=DatabaseConfig(url="postgresql://"))


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
