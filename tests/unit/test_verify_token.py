"""The shared-token provider: three places for the token, constant-time digests, rotation
through a ManagedSecret's current and previous, and no unauthenticated mode."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict
from pydantic import ValidationError

from webhook_server.config import (
    AuthConfig,
    Provider,
    SecretSource,
    SourceConfig,
    TokenScheme,
    VerificationConfig,
)
from webhook_server.secrets import SourceSecrets
from webhook_server.verify import Reason, Rejected, Verified, shared_token

TOKEN = "a-shared-token-of-some-length"
BODY = b'{"id":"evt_1","type":"contact.tag_added"}'


def _verify(
    headers: dict[str, str], settings: VerificationConfig, secrets: list[bytes] | None = None
) -> Verified | Rejected:
    return shared_token.verify(
        CIMultiDict(headers), BODY, secrets or [TOKEN.encode()], settings, 0.0
    )


BEARER = VerificationConfig()
HEADER = VerificationConfig(
    token_scheme=TokenScheme.HEADER, header="X-Webhook-Token", id_header="X-Delivery"
)
BASIC = VerificationConfig(token_scheme=TokenScheme.BASIC)


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.mark.parametrize(
    ("settings", "headers"),
    [
        (BEARER, {"Authorization": f"Bearer {TOKEN}"}),
        (BEARER, {"Authorization": f"bearer   {TOKEN}"}),
        (HEADER, {"X-Webhook-Token": TOKEN}),
        (BASIC, {"Authorization": _basic(f"anyone:{TOKEN}")}),
    ],
)
def test_the_token_where_the_scheme_says_verifies(
    settings: VerificationConfig, headers: dict[str, str]
) -> None:
    result = _verify(headers, settings)
    assert result == Verified(event_id="evt_1", event_type="contact.tag_added")


def test_the_id_header_names_the_event() -> None:
    result = _verify({"X-Webhook-Token": TOKEN, "X-Delivery": "d-1"}, HEADER)
    assert isinstance(result, Verified)
    assert result.event_id == "d-1"


def test_basic_with_a_user_in_the_secret_needs_both() -> None:
    secret = [b"hl:" + TOKEN.encode()]
    assert isinstance(_verify({"Authorization": _basic(f"hl:{TOKEN}")}, BASIC, secret), Verified)
    assert (
        _reason(_verify({"Authorization": _basic(f"other:{TOKEN}")}, BASIC, secret))
        is Reason.BAD_TOKEN
    )


@pytest.mark.parametrize(
    ("settings", "headers", "reason"),
    [
        (BEARER, {}, Reason.MISSING_TOKEN),
        (BEARER, {"Authorization": "Basic abc"}, Reason.MISSING_TOKEN),
        (BEARER, {"Authorization": f"Bearer {TOKEN}x"}, Reason.BAD_TOKEN),
        (BEARER, {"Authorization": f"Bearer {TOKEN[:-1]}"}, Reason.BAD_TOKEN),
        (BEARER, {"Authorization": "Bearer \udce9"}, Reason.BAD_TOKEN),
        (HEADER, {"Authorization": f"Bearer {TOKEN}"}, Reason.MISSING_TOKEN),
        (BASIC, {"Authorization": "Basic !!"}, Reason.MALFORMED),
        (BASIC, {"Authorization": _basic("anyone:wrong")}, Reason.BAD_TOKEN),
    ],
)
def test_refusals(settings: VerificationConfig, headers: dict[str, str], reason: Reason) -> None:
    assert _reason(_verify(headers, settings)) is reason


def test_rotation_through_a_managed_secret_accepts_previous_until_it_expires(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "managed"
    folder.mkdir()
    (folder / "current").write_text("the-new-token-after-rotation")
    (folder / "previous").write_text(TOKEN)
    (folder / "previous-expires-at").write_text("2026-01-01T00:00:00Z")
    secrets = SourceSecrets([SecretSource(dir=str(folder))], Provider.TOKEN)
    assert secrets.loaded
    before = datetime(2025, 12, 31, tzinfo=UTC).timestamp()
    after = datetime(2026, 1, 2, tzinfo=UTC).timestamp()
    old = {"Authorization": f"Bearer {TOKEN}"}
    new = {"Authorization": "Bearer the-new-token-after-rotation"}
    assert isinstance(_verify(old, BEARER, secrets.valid_at(before)), Verified)
    assert isinstance(_verify(new, BEARER, secrets.valid_at(before)), Verified)
    assert _reason(_verify(old, BEARER, secrets.valid_at(after))) is Reason.BAD_TOKEN
    assert isinstance(_verify(new, BEARER, secrets.valid_at(after)), Verified)


def test_there_is_no_unauthenticated_mode() -> None:
    with pytest.raises(ValidationError, match="requires a verification secret"):
        SourceConfig(name="t", provider=Provider.TOKEN)
    with pytest.raises(ValidationError, match="shorter than 16 characters"):
        SourceConfig(
            name="t",
            provider=Provider.TOKEN,
            verification=VerificationConfig(secrets=[SecretSource(value="short")]),
        )
    assert (
        _reason(
            shared_token.verify(CIMultiDict({"Authorization": "Bearer x"}), BODY, [], BEARER, 0)
        )
        is Reason.NO_SECRET
    )


def test_a_header_scheme_needs_its_header_and_bearer_excludes_spec_auth() -> None:
    secret = [SecretSource(value=TOKEN)]
    with pytest.raises(ValidationError, match="tokenScheme: header"):
        SourceConfig(
            name="t",
            provider=Provider.TOKEN,
            verification=VerificationConfig(secrets=secret, token_scheme=TokenScheme.HEADER),
        )
    with pytest.raises(ValidationError, match="both read the Authorization header"):
        SourceConfig(
            name="t",
            provider=Provider.TOKEN,
            verification=VerificationConfig(secrets=secret),
            auth=AuthConfig(jwks_url="https://x.example/jwks"),
        )
    SourceConfig(
        name="t",
        provider=Provider.TOKEN,
        verification=VerificationConfig(
            secrets=secret, token_scheme=TokenScheme.HEADER, header="X-Token"
        ),
        auth=AuthConfig(jwks_url="https://x.example/jwks"),
    )


def test_what_dfm_send_adds_verifies() -> None:
    for settings in (BEARER, HEADER, BASIC):
        headers = shared_token.sign(BODY, TOKEN.encode(), settings, 0.0, "d-9")
        assert isinstance(_verify(headers, settings), Verified)


def _reason(result: object) -> Reason:
    assert isinstance(result, Rejected), result
    return result.reason
