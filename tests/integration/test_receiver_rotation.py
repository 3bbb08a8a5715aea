"""A receiver follows a ManagedSecret rotation without a restart: A, then A and B, then only B."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from tests.receivers import ReceiverServer
from webhook_server import logs, secrets
from webhook_server.app import ACCESS_LOG, STORE, create_app, reload_secrets
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
    client = await aiohttp_client(ReceiverServer(app))
    assert await app[STORE].wait_ready(60)
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


async def test_reload_loop_outlives_an_unreadable_secret_and_a_failing_flush(
    aiohttp_client: Any, database_url: str, tmp_path: Path
) -> None:
    # One bad pass (a secret path that is briefly a directory, stdout refusing a flush) must not
    # end the loop: rotations after it are still picked up, and shutdown still flushes.
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET_A)
    source = SourceConfig(
        name="clerk",
        provider=Provider.STANDARD,
        verification=VerificationConfig(secrets=[SecretSource(file=str(secret_file))]),
    )
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        app = create_app(
            ReceiverConfig(
                sources=[source],
                database=DatabaseConfig(url=database_url),
                secret_reload_seconds=0.05,
            )
        )
        flushes = {"fail_next": 0, "failed": 0, "done": 0}
        real_flush = app[ACCESS_LOG].flush

        def flaky_flush() -> None:
            if flushes["fail_next"]:
                flushes["fail_next"] = 0
                flushes["failed"] += 1
                raise BrokenPipeError("stdout closed")
            flushes["done"] += 1
            real_flush()

        app[ACCESS_LOG].flush = flaky_flush  # type: ignore[method-assign]
        client = await aiohttp_client(ReceiverServer(app))
        assert await app[STORE].wait_ready(60)
        body = b'{"type":"user.created","data":{}}'

        async def post(secret: str, msg_id: str) -> int:
            headers = signed_by(secret, msg_id, body, time.time())
            return (await client.post(source.route, data=body, headers=headers)).status

        assert await post(SECRET_A, "msg_1") == 200
        secret_file.unlink()
        secret_file.mkdir()  # read_bytes() now raises IsADirectoryError
        # The bad pass happened (waited for, not slept for: a loaded machine may take longer).
        deadline = time.monotonic() + 30
        while "secrets not reloaded" not in stream.getvalue():
            assert time.monotonic() < deadline, "no reload pass met the unreadable secret"
            await asyncio.sleep(0.05)
        flushes["fail_next"] = 1  # the pass that would pick up B starts with a failing flush
        secret_file.rmdir()
        secret_file.write_text(SECRET_B)
        deadline = time.monotonic() + 30
        while await post(SECRET_B, "msg_2") != 200:
            assert time.monotonic() < deadline, "the rotated secret was never picked up"
            await asyncio.sleep(0.05)
        flushed_while_serving = flushes["done"]
        await client.close()  # runs the cleanup: the last flush
    finally:
        logs.configure()
    assert flushes["failed"] == 1
    assert flushes["done"] > flushed_while_serving
    text = stream.getvalue()
    assert "IsADirectoryError" in text
    assert "BrokenPipeError" in text
    assert SECRET_A not in text
    assert SECRET_B not in text


def kubelet_write(folder: Path, version: str, files: dict[str, str]) -> None:
    """Publish ``files`` the way kubelet's atomic writer updates a mounted Secret: a new
    timestamped directory, ``..data`` switched to it by one rename, then the per-key symlinks
    added or removed, then the old directory deleted."""
    folder.mkdir(exist_ok=True)
    fresh = folder / f"..{version}"
    fresh.mkdir()
    for name, value in files.items():
        (fresh / name).write_text(value)
    data = folder / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    (folder / "..data_tmp").symlink_to(fresh.name)
    os.rename(folder / "..data_tmp", data)
    for entry in folder.iterdir():
        if entry.is_symlink() and not entry.name.startswith(".."):
            entry.unlink()
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(folder / old)


def test_a_kubelet_mounted_managed_secret_is_read_from_one_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kubelet swaps every file at once; reading current, previous and previous-expires-at one by
    # one through the per-key links could mix two versions. Here the rotation lands right after
    # the first file is read: a mixed read would keep A twice and lose B.
    folder = tmp_path / "signing"
    kubelet_write(folder, "2026_01_01_00_00_00.1", {"current": SECRET_A})
    expires = "2030-01-01T00:00:00Z"
    rotated = {"current": SECRET_B, "previous": SECRET_A, "previous-expires-at": expires}
    source = [SecretSource(dir=str(folder))]
    assert secrets.load(source) == (secrets.SecretValue(SECRET_A.encode()),)

    real_read = secrets._read
    reads: list[Path] = []

    def read_then_rotate(path: Path) -> bytes | None:
        value = real_read(path)
        reads.append(path)
        if len(reads) == 1:
            kubelet_write(folder, "2026_01_02_00_00_00.2", rotated)
        return value

    monkeypatch.setattr(secrets, "_read", read_then_rotate)
    expiry = datetime.fromisoformat(expires).timestamp()
    assert secrets.load(source) == (
        secrets.SecretValue(SECRET_B.encode()),
        secrets.SecretValue(SECRET_A.encode(), expiry),
    )


def test_an_unreadable_expiry_refuses_previous_and_says_so_once(tmp_path: Path) -> None:
    # A typo in previous-expires-at must not keep the old secret alive, nor go unexplained.
    folder = tmp_path / "signing"
    folder.mkdir()
    (folder / "current").write_text(SECRET_B)
    (folder / "previous").write_text(SECRET_A)
    (folder / "previous-expires-at").write_text("in-a-bit")
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        for _ in range(3):  # three reloads
            values = secrets.load([SecretSource(dir=str(folder))])
    finally:
        logs.configure()
    assert secrets.valid_at(values, time.time()) == [SECRET_B.encode()]
    warnings = [line for line in stream.getvalue().splitlines() if "previous-expires-at" in line]
    assert len(warnings) == 1
    assert "in-a-bit" in warnings[0]
    assert SECRET_A not in stream.getvalue()
