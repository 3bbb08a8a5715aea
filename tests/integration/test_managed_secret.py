"""ManagedSecret through the real operator against the emulated API server."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kube_emulator import MANAGEDSECRETS, DfmKubernetesEmulator
from tests.kube.conftest_helpers import k8s, kopf_running, kubeconfig
from tests.kube.dfm import OPERATOR, install_crds

__all__ = ["k8s", "kubeconfig"]  # pytest fixtures, imported for this module

NS = "payments"
SECRETS = "v1/secrets"


def managed(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "ManagedSecret",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def secret_data(k8s: DfmKubernetesEmulator, name: str) -> dict[str, str]:
    obj = k8s.get_object(SECRETS, NS, name) or {}
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def status(k8s: DfmKubernetesEmulator, name: str) -> dict[str, Any]:
    return dict((k8s.get_object(MANAGEDSECRETS, NS, name) or {}).get("status") or {})


def condition(k8s: DfmKubernetesEmulator, name: str, type_: str) -> dict[str, Any]:
    for cond in status(k8s, name).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def reads(k8s: DfmKubernetesEmulator, name: str) -> int:
    """How often the ManagedSecret ``name`` was read (GET): once per pass of its scheduler."""
    return sum(
        1
        for r in k8s._requests
        if r.method.value == "GET"
        and r.name == name
        and r.resource is not None
        and r.resource.plural == "managedsecrets"
        and r.params.get("watch") is None
    )


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def cluster(k8s: DfmKubernetesEmulator, kubeconfig: Path) -> DfmKubernetesEmulator:
    install_crds(k8s)
    return k8s


async def test_random_secret_is_created_rotated_on_demand_and_survives_a_restart(
    cluster: DfmKubernetesEmulator,
) -> None:
    k8s = cluster
    spec = {
        "type": "random",
        "random": {"length": 24, "encoding": "base64", "prefix": "whsec_"},
        "rotation": {"every": "720h", "gracePeriod": "24h"},
        "secretName": "stripe-signing",
    }
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(MANAGEDSECRETS, managed("signing", **spec), NS)
        first = await k8s.wait_for(
            lambda: secret_data(k8s, "stripe-signing").get("current"),
            seconds=15,
            what="the generated Secret",
        )
        assert first.startswith("whsec_")
        assert len(base64.b64decode(first.removeprefix("whsec_"))) == 24
        owner = (k8s.get_object(SECRETS, NS, "stripe-signing") or {})["metadata"][
            "ownerReferences"
        ][0]
        assert (owner["kind"], owner["name"]) == ("ManagedSecret", "signing")
        await k8s.wait_for(
            lambda: condition(k8s, "signing", "Ready").get("status") == "True", what="Ready"
        )
        st = status(k8s, "signing")
        assert st["currentVersion"] == 1
        assert when(st["nextRotationTime"]) - when(st["lastRotationTime"]) == timedelta(days=30)

        await k8s.patch_object(
            MANAGEDSECRETS,
            NS,
            "signing",
            {"metadata": {"annotations": {"dfm.dev/rotate-now": "r1"}}},
        )
        await k8s.wait_for(
            lambda: status(k8s, "signing").get("currentVersion") == 2, seconds=15, what="version 2"
        )
        data = secret_data(k8s, "stripe-signing")
        assert data["previous"] == first
        assert data["current"] != first
        st = status(k8s, "signing")
        assert when(data["previous-expires-at"]) == when(st["lastRotationTime"]) + timedelta(
            hours=24
        )
        assert st["previousExpiresAt"] == data["previous-expires-at"]
        assert await k8s.wait_for(
            lambda: k8s.events(NS, name="signing", reason="Rotated"), what="a Rotated event"
        )
    assert runner.exception is None

    # A new operator process mid-grace: no second rotation, previous kept. Each pass of the
    # scheduler starts by reading the ManagedSecret: once a pass has begun, the one before it
    # (with any write it would have made) is over.
    passes = reads(k8s, "signing")
    async with kopf_running(OPERATOR) as runner:
        await k8s.wait_for(lambda: reads(k8s, "signing") >= passes + 1, what="a first pass")
        # The same annotation value does not rotate again (a change wakes the scheduler).
        for touch in ("yes", "again"):
            await k8s.patch_object(
                MANAGEDSECRETS, NS, "signing", {"metadata": {"labels": {"touched": touch}}}
            )
            passes += 1
            await k8s.wait_for(lambda n=passes: reads(k8s, "signing") > n, what="a pass")
            assert status(k8s, "signing")["currentVersion"] == 2
            assert secret_data(k8s, "stripe-signing") == data
    assert runner.exception is None


# -- oauth2 --------------------------------------------------------------------------------------


class TokenServer:
    """A token endpoint that rotates refresh tokens, like HighLevel's."""

    def __init__(self) -> None:
        self.valid_refresh = "rt-0"
        self.issued = 0
        self.requests = 0
        self.mode = "ok"
        self.expires_in = 6

    async def token(self, request: web.Request) -> web.Response:
        self.requests += 1
        form = await request.post()
        if self.mode == "error":
            return web.json_response({"error": "server_error"}, status=500)
        if form.get("client_secret") != "cs" or form.get("client_id") != "cid":
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != (
            self.valid_refresh
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.issued += 1
        self.valid_refresh = f"rt-{self.issued}"
        return web.json_response(
            {
                "access_token": f"at-{self.issued}",
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "refresh_token": self.valid_refresh,
            }
        )


@pytest.fixture
async def token_server(aiohttp_server: Any) -> tuple[TokenServer, str]:
    server = TokenServer()
    app = web.Application()
    app.router.add_post("/oauth/token", server.token)
    running = await aiohttp_server(app)
    return server, str(running.make_url("/oauth/token"))


async def oauth2_spec(
    k8s: DfmKubernetesEmulator,
    url: str,
    client: str,
    bootstrap: str,
    *,
    client_secret: str = "cs",  # noqa: S107 - the test token server's fake client
    key: str = "rt",
    **oauth2: Any,
) -> dict[str, Any]:
    """The client-credentials and bootstrap refresh-token Secrets, and an oauth2 spec using them."""
    await k8s.create(
        SECRETS,
        {
            "metadata": {"name": client},
            "stringData": {"client_id": "cid", "client_secret": client_secret},
        },
        NS,
    )
    await k8s.create(SECRETS, {"metadata": {"name": bootstrap}, "stringData": {key: "rt-0"}}, NS)
    return {
        "type": "oauth2",
        "oauth2": {
            "tokenUrl": url,
            "clientSecretRef": {"name": client},
            "refreshTokenSecretRef": {"name": bootstrap, "key": key},
            **oauth2,
        },
    }


async def test_oauth_tokens_refresh_before_expiry_and_rotated_refresh_tokens_are_kept(
    cluster: DfmKubernetesEmulator, token_server: tuple[TokenServer, str]
) -> None:
    k8s = cluster
    server, url = token_server
    spec = await oauth2_spec(
        k8s, url, "ghl-client", "ghl-bootstrap", key="refresh_token", refreshBeforeSeconds=1
    )
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(MANAGEDSECRETS, managed("ghl-oauth", **spec), NS)
        await k8s.wait_for(
            lambda: secret_data(k8s, "ghl-oauth").get("access_token") == "at-1",
            seconds=15,
            what="the first token",
        )
        data = secret_data(k8s, "ghl-oauth")
        assert data["refresh_token"] == "rt-1"
        assert data["token_type"] == "Bearer"
        await k8s.wait_for(
            lambda: status(k8s, "ghl-oauth").get("tokenExpiresAt") == data["expires_at"],
            what="status.tokenExpiresAt",
        )
        # 6 s tokens refreshed 1 s early: the next one comes at about 5 s, with rt-1.
        await k8s.wait_for(
            lambda: secret_data(k8s, "ghl-oauth").get("access_token") == "at-2",
            seconds=30,
            what="a refresh before expiry",
        )
        assert secret_data(k8s, "ghl-oauth")["refresh_token"] == "rt-2"
        assert await k8s.wait_for(
            lambda: k8s.events(NS, name="ghl-oauth", reason="TokenRefreshed"), what="an event"
        )

        # The provider revokes the grant: RefreshTokenRejected, an Event, and no retry storm.
        server.valid_refresh = "revoked"
        await k8s.wait_for(
            lambda: (
                condition(k8s, "ghl-oauth", "RotationFailed").get("reason")
                == "RefreshTokenRejected"
            ),
            seconds=30,
            what="RefreshTokenRejected",
        )
        assert await k8s.wait_for(
            lambda: k8s.events(NS, name="ghl-oauth", reason="RefreshTokenRejected"),
            what="a Warning event",
        )
        # Nothing is planned until something changes (test_managed_secret_scheduler.py shows on
        # a fake clock that the refused request is never sent again).
        assert "nextRotationTime" not in status(k8s, "ghl-oauth")
        assert status(k8s, "ghl-oauth")["consecutiveFailures"] >= 1

        # A new bootstrap refresh token heals it.
        server.valid_refresh = "rt-new"
        await k8s.patch_object(
            SECRETS, NS, "ghl-bootstrap", {"stringData": {"refresh_token": "rt-new"}}
        )
        await k8s.wait_for(
            lambda: condition(k8s, "ghl-oauth", "RotationFailed").get("status") == "False",
            seconds=30,
            what="recovery",
        )
        await k8s.wait_for(
            lambda: status(k8s, "ghl-oauth").get("consecutiveFailures") == 0,
            what="consecutiveFailures reset",
        )
    assert runner.exception is None


async def test_token_endpoint_errors_are_retried_with_backoff(
    cluster: DfmKubernetesEmulator, token_server: tuple[TokenServer, str]
) -> None:
    k8s = cluster
    server, url = token_server
    server.mode = "error"
    spec = await oauth2_spec(k8s, url, "c", "b")
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(MANAGEDSECRETS, managed("flaky", **spec), NS)
        await k8s.wait_for(
            lambda: (
                condition(k8s, "flaky", "RotationFailed").get("reason")
                == "TokenEndpointUnavailable"
            ),
            seconds=30,
            what="TokenEndpointUnavailable",
        )
        st = status(k8s, "flaky")
        assert st["consecutiveFailures"] == 1
        assert condition(k8s, "flaky", "Ready").get("status") == "False"
        # The retry is scheduled 10 s out (capped exponential back-off), not immediately.
        retry_at = when(st["nextRotationTime"])
        assert retry_at - when(
            condition(k8s, "flaky", "RotationFailed")["lastTransitionTime"]
        ) >= timedelta(seconds=9)
        assert server.requests == 1
        # The retry itself, 10 s later: test_managed_secret_scheduler.py, on a fake clock.
    assert runner.exception is None


async def test_deleting_the_written_secret_wakes_the_scheduler_to_write_it_again(
    cluster: DfmKubernetesEmulator,
) -> None:
    k8s = cluster
    spec = {"type": "random", "random": {"length": 16}, "rotation": {"every": "720h"}}
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(MANAGEDSECRETS, managed("woken", **spec), NS)
        first = await k8s.wait_for(
            lambda: secret_data(k8s, "woken").get("current"), seconds=15, what="the Secret"
        )
        # Ready is the pass's last write: the scheduler goes to its (hour-long) sleep next, and
        # a wake-up set before it sleeps is not lost.
        await k8s.wait_for(
            lambda: condition(k8s, "woken", "Ready").get("status") == "True", what="Ready"
        )
        await k8s.delete_object(SECRETS, NS, "woken")
        # The Secret watch wakes the scheduler: far sooner than its next planned look.
        second = await k8s.wait_for(
            lambda: secret_data(k8s, "woken").get("current"), seconds=30, what="a new Secret"
        )
        assert second != first
    assert runner.exception is None


async def test_new_client_credentials_end_a_client_rejection_at_once(
    cluster: DfmKubernetesEmulator, token_server: tuple[TokenServer, str]
) -> None:
    k8s = cluster
    server, url = token_server
    spec = await oauth2_spec(k8s, url, "cc", "bb", client_secret="no")
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(MANAGEDSECRETS, managed("creds", **spec), NS)
        await k8s.wait_for(
            lambda: condition(k8s, "creds", "RotationFailed").get("reason") == "ClientRejected",
            seconds=30,
            what="ClientRejected",
        )
        # The same refused request is not sent again before an hour has passed.
        refused = condition(k8s, "creds", "RotationFailed")
        await k8s.wait_for(
            lambda: status(k8s, "creds").get("nextRotationTime"), what="the next attempt"
        )
        assert when(status(k8s, "creds")["nextRotationTime"]) - when(
            refused["lastTransitionTime"]
        ) >= timedelta(minutes=59)
        assert server.requests == 1
        await k8s.patch_object(SECRETS, NS, "cc", {"stringData": {"client_secret": "cs"}})
        await k8s.wait_for(
            lambda: secret_data(k8s, "creds").get("access_token") == "at-1",
            seconds=30,
            what="a token with the new client credentials",
        )
        assert server.requests == 2
    assert runner.exception is None


async def test_a_failed_secret_write_is_retried_so_the_rotated_refresh_token_survives(
    cluster: DfmKubernetesEmulator, token_server: tuple[TokenServer, str]
) -> None:
    k8s = cluster
    server, url = token_server
    server.expires_in = 3600
    spec = await oauth2_spec(k8s, url, "c2", "b2")
    # The provider has retired rt-0 once it answers: the first write must not be given up on.
    k8s.inject_fault("apply", SECRETS, name="durable", status=503, times=2)
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(MANAGEDSECRETS, managed("durable", **spec), NS)
        await k8s.wait_for(
            lambda: secret_data(k8s, "durable").get("access_token") == "at-1",
            seconds=30,
            what="the token written after two failed writes",
        )
        assert secret_data(k8s, "durable")["refresh_token"] == "rt-1"
        assert server.issued == 1
        await k8s.wait_for(
            lambda: condition(k8s, "durable", "Ready").get("status") == "True", what="Ready"
        )
        assert not k8s.events(NS, name="durable", reason="RefreshTokenRejected")
    assert runner.exception is None


async def test_a_secret_the_api_server_refuses_is_reported_not_retried_forever(
    cluster: DfmKubernetesEmulator,
) -> None:
    # E.g. an admission policy that refuses the Secret: the same object would be refused again.
    k8s = cluster
    k8s.inject_fault(
        "apply", SECRETS, name="refused", status=422, message="denied by policy", times=None
    )
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(
            MANAGEDSECRETS, managed("refused", type="random", random={"length": 16}), NS
        )
        ready = await k8s.wait_for(
            lambda: condition(k8s, "refused", "Ready") or None, what="a Ready condition"
        )
        assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
        assert "422" in ready["message"]
        await k8s.wait_for(
            lambda: k8s.events(NS, name="refused", reason="ApplyFailed"), what="an Event"
        )

        # That it is not applied again without a change: test_managed_secret_scheduler.py.
    assert runner.exception is None
