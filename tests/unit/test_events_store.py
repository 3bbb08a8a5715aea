"""The pure parts of the Events API's query module: ids, page sizes, the JSON of an event."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dfm.events_cmd import age
from webhook_server.config import AuthConfig, EventsApiConfig
from webhook_server.events_api.openapi import document
from webhook_server.store.events import (
    BadEventId,
    Delivery,
    EventFilter,
    StoredEvent,
    decode_id,
    encode_id,
    page_size,
)

times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(st.text(), st.text(), st.text(), times)
def test_ids_name_their_event_exactly(
    source: str, subject: str, event_id: str, at: datetime
) -> None:
    text = encode_id((source, subject, event_id, at))
    assert text.isascii()
    assert not set(text) - set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_id(text) == (source, subject, event_id, at)


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!!",
        "evt_123",
        _b64({"a": 1}),
        _b64(["s", "", "e"]),
        _b64(["s", "", "e", "1"]),
        _b64(["s", "", "e", True]),
        _b64(["s", "", 5, 1]),
        _b64(["s", "", "e", 10**30]),
        "A" * 20_000,
    ],
)
def test_anything_else_is_not_an_id(text: str) -> None:
    with pytest.raises(BadEventId):
        decode_id(text)


def test_page_sizes() -> None:
    assert page_size(None, False) == 50
    assert page_size(None, True) == 20
    assert page_size(500, False) == 500
    for wanted, with_payload in ((0, False), (501, False), (21, True), (-1, True)):
        with pytest.raises(ValueError, match="limit must be between 1 and 500"):
            page_size(wanted, with_payload)


def test_a_filter_knows_the_delivery_states() -> None:
    EventFilter(state="none")
    with pytest.raises(ValueError, match="state must be one of"):
        EventFilter(state="lost")


def _schema(name: str) -> jsonschema.Draft202012Validator:
    root = {"components": document()["components"], "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(root)


def test_an_event_as_json() -> None:
    at = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)
    event = StoredEvent(
        source="payments/stripe",
        subject="",
        event_id="evt_1",
        event_type="invoice.paid",
        received_at=at,
        request_id="req-1",
        event_count=1,
        size=4,
        delivery=Delivery(
            state="dead",
            webhook_id="evt_1",
            attempts=8,
            next_attempt_at=at,
            last_attempt_at=at,
            last_status=500,
            last_error="max_attempts",
            delivered_at=None,
            dead_at=at + timedelta(hours=1),
            requeued_at=None,
            replays=0,
        ),
        payload=b"\xff\x00ab",
        headers={"content-type": "application/octet-stream"},
    )
    out = event.to_json()
    _schema("Event").validate(out)
    assert out["receivedAt"] == "2026-12-05T01:02:03.456789Z"
    assert out["subject"] is None
    # Bytes that are not UTF-8 come back exactly, in base64.
    assert (out["payloadEncoding"], base64.b64decode(out["payload"])) == ("base64", b"\xff\x00ab")
    # A dead delivery has no next attempt, whatever the row's column says.
    assert out["delivery"]["nextAttemptAt"] is None
    assert decode_id(out["id"]) == event.key
    without = replace(event, payload=None, headers=None).to_json()
    _schema("Event").validate(without)
    assert "payload" not in without


def test_events_api_settings() -> None:
    auth = AuthConfig(jwks_url="https://clerk.example.com/.well-known/jwks.json")
    settings = EventsApiConfig(auth=auth)
    assert (settings.read_scope, settings.replay_scope) == ("events:read", "events:replay")
    with pytest.raises(ValidationError, match="readScope and replayScope must differ"):
        EventsApiConfig(auth=auth, read_scope="events", replay_scope="events")
    with pytest.raises(ValidationError):
        EventsApiConfig(auth=auth, read_scope="events read")
    with pytest.raises(ValidationError):
        EventsApiConfig.model_validate({})
    # HS256 is as refused here as in spec.auth.
    with pytest.raises(ValidationError, match="asymmetric"):
        AuthConfig(jwks_url="https://x.example/jwks", algorithms=["HS256"])


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (7199, "119m"), (7200, "2h"), (172_800, "2d"), (-5, "0s")],
)
def test_ages_read_like_kubectl(seconds: int, shown: str) -> None:
    assert age(timedelta(seconds=seconds)) == shown
