"""The ManagedSecret scheduler on a fake clock, against the emulated API server.

The service's own loop (``run_scheduler``) runs with ``ctx.clock`` and its sleep replaced: each
sleep it asks for is recorded and moves the clock by exactly that much, at once. So "rotated 3 s
later", "retried after the 10 s back-off" and "not retried for an hour" are exact assertions
that take no wall-clock time, where the kopf-driven tests in test_managed_secret.py would have to
wait them out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfm_operator.kernel import Context, OperatorMetrics
from dfm_operator.kube import connect
from dfm_operator.services.managedsecret import MAX_SLEEP_SECONDS, run_scheduler
from dfm_operator.settings import OperatorSettings
from kube_emulator import MANAGEDSECRETS, DfmKubernetesEmulator
from tests.integration.test_managed_secret import (
    NS,
    SECRETS,
    TokenServer,
    condition,
    managed,
    oauth2_spec,
    secret_data,
    status,
    token_server,
)
from tests.kube.conftest_helpers import k8s, kubeconfig
from tests.kube.dfm import install_crds

__all__ = ["k8s", "kubeconfig", "token_server"]  # fixtures

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Stopped:
    def __init__(self) -> None:
        self.flag = asyncio.Event()

    def __bool__(self) -> bool:
        return self.flag.is_set()

    async def wait(self) -> None:
        await self.flag.wait()


class FakeClock:
    """``now`` for ctx.clock, and a sleep that moves it; stops the loop after ``limit`` sleeps.

    ``before_sleep`` runs ahead of each sleep (with its index): a test changes the world there.
    """

    def __init__(self, limit: int) -> None:
        self.now = T0
        self.limit = limit
        self.sleeps: list[float] = []
        self.stopped = Stopped()
        self.before_sleep: Any = None

    async def sleep(self, woken: asyncio.Event, stopped: Any, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.before_sleep is not None:
            await self.before_sleep(len(self.sleeps))
        if len(self.sleeps) >= self.limit:
            self.stopped.flag.set()
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def cluster(k8s: DfmKubernetesEmulator, kubeconfig: Path) -> DfmKubernetesEmulator:
    install_crds(k8s)
    return k8s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def run(
    k8s: DfmKubernetesEmulator, name: str, clock: FakeClock, http: aiohttp.ClientSession
) -> list[tuple[str, str, str]]:
    """Run the scheduler of ``name`` until the clock stops it; returns the Events it posted."""
    events: list[tuple[str, str, str]] = []
    async with connect() as kube:
        ctx = Context(
            kube=kube,
            settings=OperatorSettings(),
            metrics=OperatorMetrics(),
            clock=lambda: clock.now,
        )
        await run_scheduler(
            ctx, NS, name, clock.stopped, lambda _: lambda *e: events.append(e), http, clock.sleep
        )
    return events


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_interval_rotation_happens_on_time_and_previous_expires(
    cluster: DfmKubernetesEmulator, http: aiohttp.ClientSession
) -> None:
    k8s = cluster
    spec = {
        "type": "random",
        "random": {"length": 16, "encoding": "hex"},
        "rotation": {"every": "3s", "gracePeriod": "1s"},
    }
    await k8s.create(MANAGEDSECRETS, managed("fast", **spec), NS)
    seen: dict[int, dict[str, str]] = {}

    async def look(index: int) -> None:
        seen[index] = secret_data(k8s, "fast")

    clock = FakeClock(limit=3)
    clock.before_sleep = look
    events = await run(k8s, "fast", clock, http)

    # Created at T0; rotated at exactly T0+3 s; the previous value dropped at T0+4 s.
    assert clock.sleeps == [3.0, 1.0, 2.0]
    assert "previous" not in seen[1]
    assert seen[2]["previous"] == seen[1]["current"]
    assert at(seen[2]["previous-expires-at"]) == T0 + timedelta(seconds=4)
    assert "previous" not in seen[3]
    assert seen[3]["current"] == seen[2]["current"]
    st = status(k8s, "fast")
    assert st["currentVersion"] == 2
    assert at(st["lastRotationTime"]) == T0 + timedelta(seconds=3)
    assert at(st["nextRotationTime"]) == T0 + timedelta(seconds=6)
    assert [e[1] for e in events if e[1] == "Rotated"] == ["Rotated", "Rotated"]


async def test_token_endpoint_errors_are_retried_after_the_back_off(
    cluster: DfmKubernetesEmulator,
    token_server: tuple[TokenServer, str],
    http: aiohttp.ClientSession,
) -> None:
    k8s = cluster
    server, url = token_server
    server.mode = "error"
    server.expires_in = 3600
    await k8s.create(MANAGEDSECRETS, managed("flaky", **await oauth2_spec(k8s, url, "c", "b")), NS)

    async def recover(index: int) -> None:
        if index == 1:
            assert condition(k8s, "flaky", "RotationFailed")["reason"] == "TokenEndpointUnavailable"
            assert status(k8s, "flaky")["consecutiveFailures"] == 1
            assert at(status(k8s, "flaky")["nextRotationTime"]) == T0 + timedelta(seconds=10)
            server.mode = "ok"

    clock = FakeClock(limit=2)
    clock.before_sleep = recover
    await run(k8s, "flaky", clock, http)

    assert clock.sleeps[0] == 10.0  # the first back-off step, not at once
    assert server.requests == 2
    assert secret_data(k8s, "flaky")["access_token"] == "at-1"
    assert status(k8s, "flaky")["consecutiveFailures"] == 0


async def test_a_refused_refresh_token_is_not_asked_again_until_something_changes(
    cluster: DfmKubernetesEmulator,
    token_server: tuple[TokenServer, str],
    http: aiohttp.ClientSession,
) -> None:
    k8s = cluster
    server, url = token_server
    await k8s.create(MANAGEDSECRETS, managed("dead", **await oauth2_spec(k8s, url, "c", "b")), NS)

    async def revoke(index: int) -> None:
        if index == 1:
            assert secret_data(k8s, "dead")["access_token"] == "at-1"
            server.valid_refresh = "revoked"  # the provider revokes the grant

    clock = FakeClock(limit=4)
    clock.before_sleep = revoke
    events = await run(k8s, "dead", clock, http)

    # 6 s tokens: refreshed at 5 s and refused; then the scheduler looks again only when the
    # token expires (Ready turns False) and hourly, never asking the provider again.
    assert server.requests == 2, "the refused request was sent again"
    assert clock.sleeps == [5.0, 1.0, MAX_SLEEP_SECONDS, MAX_SLEEP_SECONDS]
    assert condition(k8s, "dead", "RotationFailed")["reason"] == "RefreshTokenRejected"
    assert condition(k8s, "dead", "Ready")["status"] == "False"
    assert "nextRotationTime" not in status(k8s, "dead")
    assert [e[1] for e in events].count("RefreshTokenRejected") == 1


async def test_a_secret_the_api_server_refuses_is_not_applied_again_without_a_change(
    cluster: DfmKubernetesEmulator, http: aiohttp.ClientSession
) -> None:
    k8s = cluster
    k8s.inject_fault(
        "apply", SECRETS, name="refused", status=422, message="denied by policy", times=None
    )
    await k8s.create(MANAGEDSECRETS, managed("refused", type="random", random={"length": 16}), NS)

    def secret_writes() -> int:
        return sum(
            1
            for r in k8s._requests
            if r.method.value == "PATCH"
            and r.name == "refused"
            and r.resource is not None
            and r.resource.plural == "secrets"
        )

    clock = FakeClock(limit=1)
    await run(k8s, "refused", clock, http)

    # An invalid spec sleeps the whole safety-net hour, not a transient error's 10 s.
    assert clock.sleeps == [MAX_SLEEP_SECONDS]
    assert secret_writes() == 1
    ready = condition(k8s, "refused", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
