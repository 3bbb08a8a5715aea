from __future__ import annotations

import pytest
from multidict import CIMultiDict

from webhook_server.config import Provider, VerificationConfig
from webhook_server.verify import SIGNERS, VERIFIERS, Reason, Rejected, Verified, github

SETTINGS = VerificationConfig()
NOW = 1_700_000_000.0
SECRET = b"It's a Secret to Everybody"
BODY = b'{"zen":"Keep it logically awesome.","hook_id":1}'


def _reason(result: Verified | Rejected) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason


def test_github_official_vector() -> None:
    # docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries
    headers = CIMultiDict(
        {
            "X-Hub-Signature-256": (
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
            ),
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "X-GitHub-Event": "issues",
        }
    )
    result = github.verify(headers, b"Hello, World!", [SECRET], SETTINGS, NOW)
    assert result == Verified(event_id="72d3162e-cc78-11e3-81ab-4c9367dc0958", event_type="issues")


def test_sign_then_verify_round_trip() -> None:
    headers = github.sign(BODY, SECRET, SETTINGS, NOW, "delivery-1")
    assert headers["X-GitHub-Event"] == "ping"
    result = github.verify(CIMultiDict(headers), BODY, [SECRET], SETTINGS, NOW)
    assert result == Verified(event_id="delivery-1", event_type="ping")


def test_header_names_are_case_insensitive() -> None:
    signed = github.sign(BODY, SECRET, SETTINGS, NOW, "d")
    lowered = CIMultiDict({k.lower(): v for k, v in signed.items()})
    assert isinstance(github.verify(lowered, BODY, [SECRET], SETTINGS, NOW), Verified)


def test_tampered_body_is_rejected() -> None:
    headers = CIMultiDict(github.sign(BODY, SECRET, SETTINGS, NOW, "d"))
    result = github.verify(headers, BODY + b" ", [SECRET], SETTINGS, NOW)
    assert _reason(result) is Reason.BAD_SIGNATURE


def test_wrong_secret_is_rejected() -> None:
    headers = CIMultiDict(github.sign(BODY, SECRET, SETTINGS, NOW, "d"))
    assert _reason(github.verify(headers, BODY, [b"other"], SETTINGS, NOW)) is Reason.BAD_SIGNATURE


def test_rotation_accepts_the_previous_secret() -> None:
    headers = CIMultiDict(github.sign(BODY, b"previous", SETTINGS, NOW, "d"))
    assert isinstance(
        github.verify(headers, BODY, [b"current", b"previous"], SETTINGS, NOW), Verified
    )


def test_missing_header() -> None:
    # The legacy SHA-1 header alone is not enough.
    headers = CIMultiDict({"X-Hub-Signature": "sha1=" + "0" * 40})
    assert _reason(github.verify(headers, BODY, [SECRET], SETTINGS, NOW)) is Reason.MISSING_HEADER


@pytest.mark.parametrize(
    "value",
    [
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha256=not-hex",
        "sha1=ab",
    ],
)
def test_malformed_header(value: str) -> None:
    headers = CIMultiDict({"X-Hub-Signature-256": value})
    result = github.verify(headers, b"Hello, World!", [SECRET], SETTINGS, NOW)
    assert _reason(result) is Reason.MALFORMED


def test_no_secret() -> None:
    headers = CIMultiDict(github.sign(BODY, SECRET, SETTINGS, NOW, "d"))
    assert _reason(github.verify(headers, BODY, [], SETTINGS, NOW)) is Reason.NO_SECRET


def test_rejection_detail_leaks_nothing() -> None:
    headers = CIMultiDict(github.sign(BODY, SECRET, SETTINGS, NOW, "d"))
    result = github.verify(headers, BODY + b"x", [SECRET], SETTINGS, NOW)
    assert isinstance(result, Rejected)
    assert headers["X-Hub-Signature-256"][7:] not in result.detail
    assert SECRET.decode() not in result.detail


def test_registry_covers_every_provider() -> None:
    assert set(VERIFIERS) == set(Provider)
    assert set(SIGNERS) == set(Provider)
    assert VERIFIERS[Provider.GITHUB] is github.verify
