"""`dfm consume`: the laptop stand-in for a forward target verifies as a consumer should."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dfm.consume import build_app, signing_values, summary, where
from webhook_server.forward.request import build_headers, signing_keys

CURRENT = "whsec_vUHpHz5TFBOu+0P6NoXJBDoBQp/2umHp"
PREVIOUS = "whsec_f0WfAjd7HSFo6j89zIgxkTgyCdu/WPbF"


def manifest(tmp_path: Path, **secret: str) -> Path:
    lines = "\n".join(f"  {key}: {value!r}" for key, value in secret.items())
    path = tmp_path / "forwarding.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: signing}\nstringData:\n" + lines + "\n"
        "---\napiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: orders}\n"
        "spec:\n  provider: jwt\n  auth: {jwksUrl: 'https://idp.example/jwks'}\n"
        "  forward: {url: 'http://127.0.0.1:9000/events', signingSecretRef: {name: signing}}\n"
    )
    return path


def test_a_consumer_holds_current_and_previous_until_it_expires(tmp_path: Path) -> None:
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    both = manifest(tmp_path, current=CURRENT, previous=PREVIOUS, **{"previous-expires-at": ahead})
    assert signing_values([str(both)], "default/orders") == [CURRENT.encode(), PREVIOUS.encode()]
    over = manifest(tmp_path, current=CURRENT, previous=PREVIOUS, **{"previous-expires-at": past})
    assert signing_values([str(over)], "default/orders") == [CURRENT.encode()]
    assert where("http://127.0.0.1:9000/events", None, None) == ("127.0.0.1", 9000, "/events")
    assert where("https://orders.example/in", "0.0.0.0", 9443) == ("0.0.0.0", 9443, "/in")  # noqa: S104


async def test_valid_deliveries_get_the_asked_status_and_forgeries_401(aiohttp_client: Any) -> None:
    out = io.StringIO()
    app = build_app("/events", [CURRENT.encode()], 503, False, out)
    client = await aiohttp_client(app)
    body = b'{"type":"order.paid"}'
    headers = build_headers(
        payload=body, webhook_id="evt_1", keys=signing_keys([CURRENT.encode()]), now=time.time(),
        stored_headers={}, source="default/orders", event_type="order.paid", attempt=3,
    )  # fmt: skip
    assert (await client.post("/events", data=body, headers=headers)).status == 503
    forged = build_headers(
        payload=body, webhook_id="evt_2", keys=signing_keys([PREVIOUS.encode()]), now=time.time(),
        stored_headers={}, source="default/orders", event_type=None, attempt=1,
    )  # fmt: skip
    assert (await client.post("/events", data=body, headers=forged)).status == 401
    first, second = out.getvalue().splitlines()
    assert summary(first) == {
        "webhook-id": "evt_1", "type": "order.paid", "attempt": "3", "bytes": "21",
        "signature": "valid", "trace": headers["traceparent"].split("-")[1],
    }  # fmt: skip
    assert "-> 503" in first
    assert summary(second)["signature"] == "INVALID"
    assert "(bad_signature) -> 401" in second
