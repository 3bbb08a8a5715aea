"""A receiver follows a ManagedSecret rotation without a restart: A, then A and B, then only B."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from standardwebhooks.webhooks import Webhook

from webhook_server.app import STORE, create_app, reload_secrets
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)

SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed_by(secret: str, msg_id: str, body: bytes, at: float) -> dict[str, str]:
    """Headers as the Standard Webhooks SDK makes them (what Svix/Clerk send)."""
    moment = datetime.fromtimestamp(at, UTC)
    signature = Webhook(secret).sign(msg_id, moment, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def write_managed(
    folder: Path, current: str, previous: str | None = None, expires: datetime | None = None
) -> None:
    """The files kubelet writes for a mounted ManagedSecret Secret."""
    folder.mkdir(exist_ok=True)
    (folder / "current").write_text(current)
    for name in ("previous", "previous-expires-at"):
        (folder / name).unlink(missing_ok=True)
    if previous is not None and expires is not None:
        (folder / "previous").write_text(previous)
        (folder / "previous-expires-at").write_text(expires.isoformat().replace("+00:00", "Z"))


async def test_previous_secret_is_accepted_only_until_it_expires(
    aiohttp_client: Any, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "stripe-signing"
    write_managed(folder, SECRET_A)
    start = time.time()
    clock = Clock(start)
    source = SourceConfig(
        name="clerk",
        provider=Provider.STANDARD,
        verification=VerificationConfig(secrets=[SecretSource(dir=str(folder))]),
    )
    app = create_app(
        ReceiverConfig(sources=[source], database=DatabaseConfig(url=database_url)), clock=clock
    )
    client = await aiohttp_client(app)
    assert await app[STORE].wait_ready(15)
    body = b'{"type":"user.created","data":{}}'

    async def post(secret: str, msg_id: str) -> int:
        resp = await client.post(
            source.route, data=body, headers=signed_by(secret, msg_id, body, clock.now)
        )
        return resp.status

    # Before: only A.
    assert await post(SECRET_A, "msg_1") == 200
    assert await post(SECRET_B, "msg_2") == 401

    # The operator rotates: B is current, A stays valid for an hour.
    expires = datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=1)
    write_managed(folder, SECRET_B, previous=SECRET_A, expires=expires)
    assert reload_secrets(app) == ["default/clerk"]
    assert await post(SECRET_A, "msg_3") == 200
    assert await post(SECRET_B, "msg_4") == 200

    # After the grace period: only B, with the same files still on disk.
    clock.now = expires.timestamp() + 1
    assert await post(SECRET_A, "msg_5") == 401
    assert await post(SECRET_B, "msg_6") == 200

    metrics = await (await client.get("/metrics")).text()
    assert 'dfm_receiver_secret_reloads_total{source="default/clerk"} 1.0' in metrics
    conn = await asyncpg.connect(database_url)
    try:
        stored = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM webhook_events")}
    finally:
        await conn.close()
    assert stored == {"msg_1", "msg_3", "msg_4", "msg_6"}
