"""Forwarding as a platform engineer sees it: the operator reads the event store that real
receivers write (a real PostgreSQL) and puts the figures in status and `kubectl get whs`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from dfm_operator.api import WebhookSource
from dfm_operator.builders.receiver_config import build_source_config
from dfm_operator.kernel import Context, OperatorMetrics
from dfm_operator.kube import connect
from dfm_operator.services.webhooksource import reconcile_webhook_source, refresh_store_status
from dfm_operator.settings import OperatorSettings
from kube_emulator import MANAGEDSECRETS, WEBHOOKSOURCES, DfmKubernetesEmulator
from kube_emulator.printing import table
from tests.kube.conftest_helpers import k8s, kubeconfig
from tests.kube.dfm import CRD_DIR, condition, create_secret, install_crds
from tests.receivers import ClientFactory, Clock, Consumer, ReceiverServer, eventually
from webhook_server.app import STORE, create_app
from webhook_server.config import (
    DatabaseConfig,
    ForwardingConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    VerificationConfig,
)
from webhook_server.verify import SIGNERS

__all__ = ["k8s", "kubeconfig"]  # pytest fixtures, imported for this module

NS = "shop"
SECRETS = "v1/secrets"
GITHUB_SECRET = "status-test-secret"
FORWARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def source_body(url: str, **forward: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": "orders", "namespace": NS},
        "spec": {
            "provider": "github",
            "verification": {"secretRef": {"name": "orders-webhook", "key": "secret"}},
            "forward": {
                "url": url,
                "signingSecretRef": {"name": "orders-forward"},
                "backoff": {"minSeconds": 1, "maxSeconds": 1},
                "maxConcurrency": 1,
                "circuitBreaker": {"failureThreshold": 3, "coolDownSeconds": 30},
                **forward,
            },
        },
    }


def columns(k8s: DfmKubernetesEmulator, obj: dict[str, Any], wide: bool = False) -> dict[str, Any]:
    """The row `kubectl get whs` prints for ``obj`` (the emulator's server-side printing)."""
    crd = yaml.safe_load((CRD_DIR / "webhooksources.dfm.dev.yaml").read_text())
    printer = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    printed = table([c for c in printer if wide or not c.get("priority")], [obj])
    names = [d["name"] for d in printed["columnDefinitions"]]
    return dict(zip(names, printed["rows"][0]["cells"], strict=True))


async def test_forward_state_reaches_status_events_and_kubectl(
    k8s: DfmKubernetesEmulator,
    kubeconfig: Path,
    database_url: str,
    consumer: Consumer,
    aiohttp_client: ClientFactory,
) -> None:
    consumer.default = 503  # until the circuit has opened
    install_crds(k8s)
    await create_secret(k8s, NS, "dfm-events-db", url=database_url)
    await create_secret(k8s, NS, "orders-webhook", secret=GITHUB_SECRET)
    await create_secret(k8s, NS, "orders-forward", current=FORWARD_SECRET)
    await k8s.create(MANAGEDSECRETS, managed_secret("orders-forward"), NS)
    await k8s.create(WEBHOOKSOURCES, source_body(consumer.url), NS)
    events: list[tuple[str, ...]] = []

    def emit(*event: str) -> None:
        events.append(event)

    async with connect() as kube:
        ctx = Context(kube=kube, settings=OperatorSettings(), metrics=OperatorMetrics())
        await reconcile_webhook_source(ctx, live(k8s), emit)
        config_map = k8s.get_object("v1/configmaps", NS, "orders-receiver-config") or {}
        assert "/etc/dfm/secrets/orders-forward" in config_map["data"]["receiver.yaml"]

        # The receivers: a real one on the same database, with the source's own settings, on a
        # clock a little behind (it is moved past the circuit's cool-down below).
        clock = Clock()
        clock.now -= 40
        source = WebhookSource.model_validate(live(k8s))
        config = ReceiverConfig(
            sources=[
                build_source_config(
                    source,
                    [SecretSource(value=GITHUB_SECRET)],
                    [SecretSource(value=FORWARD_SECRET)],
                )
            ],
            database=DatabaseConfig(url=database_url),
            forwarding=ForwardingConfig(poll_interval_seconds=0.02, stats_interval_seconds=0.2),
        )
        app = create_app(config, clock=clock)
        client = await aiohttp_client(ReceiverServer(app))
        assert await app[STORE].wait_ready(60)
        for n in range(5):
            body = f'{{"n": {n}}}'.encode()
            headers = SIGNERS[Provider.GITHUB](
                body, GITHUB_SECRET.encode(), VerificationConfig(), time.time(), f"d-{n}"
            )
            response = await client.post(source.route, data=body, headers=headers)
            assert response.status == 200
        db = await asyncpg.connect(database_url)
        try:
            await eventually(
                lambda: _fetch(db, "SELECT state = 'open' FROM webhook_forward_circuits"),
                "the receiver's circuit to open",
                seconds=20,
            )
        finally:
            await db.close()

        await refresh_store_status(ctx, live(k8s), emit)
        obj = live(k8s)
        forwarding = condition(obj, "Forwarding")
        assert (forwarding["status"], forwarding["reason"]) == ("False", "CircuitOpen")
        assert "1 of 1 receivers" in forwarding["message"]
        assert obj["status"]["forward"]["backlog"] == 5
        assert obj["status"]["forward"]["circuit"] == "Open"
        assert obj["status"]["forward"]["deadLetters"] == 0
        assert obj["status"]["lastEventTime"].endswith("Z")
        assert ("Warning", "CircuitOpen", forwarding["message"]) in events
        row = columns(k8s, obj)
        assert (row["Forwarding"], row["Backlog"]) == ("CircuitOpen", 5)
        assert condition(obj, "Ready")["reason"] == "DeploymentUnavailable"  # Ready is unmoved

        # Nothing moved: no status write.
        version = obj["metadata"]["resourceVersion"]
        await refresh_store_status(ctx, obj, emit)
        assert live(k8s)["metadata"]["resourceVersion"] == version

        # A timer holding an older copy of the object must not undo what a reconciliation
        # wrote meanwhile (it writes from the object as it is now).
        stale = live(k8s)
        await k8s.mark_deployment_available(NS, "orders-receiver")
        await reconcile_webhook_source(ctx, live(k8s), emit)
        assert condition(live(k8s), "Ready")["status"] == "True"
        body = b'{"n": 5}'
        headers = SIGNERS[Provider.GITHUB](
            body, GITHUB_SECRET.encode(), VerificationConfig(), time.time(), "d-5"
        )
        assert (await client.post(source.route, data=body, headers=headers)).status == 200
        await refresh_store_status(ctx, stale, emit)  # the backlog moved: a write
        assert live(k8s)["status"]["forward"]["backlog"] == 6
        assert condition(live(k8s), "Ready")["status"] == "True"

        # The consumer is back: after the cool-down one probe, then the backlog drains.
        consumer.default = 200
        clock.now += 31
        db = await asyncpg.connect(database_url)
        try:
            await eventually(
                lambda: _fetch(
                    db, "SELECT count(*) = 6 FROM webhook_deliveries WHERE state = 'delivered'"
                ),
                "the backlog to drain",
                seconds=20,
            )
            await eventually(
                lambda: _fetch(db, "SELECT state = 'closed' FROM webhook_forward_circuits"),
                "the circuit to close",
                seconds=20,
            )
        finally:
            await db.close()
        await refresh_store_status(ctx, live(k8s), emit)
        obj = live(k8s)
        forwarding = condition(obj, "Forwarding")
        assert (forwarding["status"], forwarding["reason"]) == ("True", "Delivering")
        assert obj["status"]["forward"]["backlog"] == 0
        assert obj["status"]["forward"]["circuit"] == "Closed"
        assert obj["status"]["forward"]["lastDeliveryTime"].endswith("Z")
        assert events[-1][:2] == ("Normal", "Delivering")
        row = columns(k8s, obj, wide=True)
        assert (row["Forwarding"], row["Backlog"], row["Dead Letters"]) == ("Delivering", 0, 0)
        assert row["Last Delivery"].endswith(("s", "m"))  # an age, as kubectl shows it

        # forward removed from the spec: its status goes too, lastEventTime stays.
        await k8s.patch_object(WEBHOOKSOURCES, NS, "orders", {"spec": {"forward": None}})
        await refresh_store_status(ctx, live(k8s), emit)
        obj = live(k8s)
        assert "forward" not in obj["status"]
        assert condition(obj, "Forwarding") == {}
        assert obj["status"]["lastEventTime"]
        await client.close()
        await ctx.eventstores.close()


async def test_an_unreachable_event_store_is_forwarding_unknown(
    k8s: DfmKubernetesEmulator, kubeconfig: Path
) -> None:
    install_crds(k8s)
    # A port nothing listens on: the operator cannot read the store.
    await create_secret(k8s, NS, "dfm-events-db", url="postgresql://dfm:pw@127.0.0.1:9/dfm")
    await create_secret(k8s, NS, "orders-webhook", secret=GITHUB_SECRET)
    await create_secret(k8s, NS, "orders-forward", current=FORWARD_SECRET)
    await k8s.create(MANAGEDSECRETS, managed_secret("orders-forward"), NS)
    await k8s.create(WEBHOOKSOURCES, source_body("http://orders.shop.svc/events"), NS)
    events: list[tuple[str, ...]] = []
    async with connect() as kube:
        ctx = Context(kube=kube, settings=OperatorSettings(), metrics=OperatorMetrics())
        await reconcile_webhook_source(ctx, live(k8s), lambda *e: events.append(e))
        await refresh_store_status(ctx, live(k8s), lambda *e: events.append(e))
        await ctx.eventstores.close()
    forwarding = condition(live(k8s), "Forwarding")
    assert (forwarding["status"], forwarding["reason"]) == ("Unknown", "StoreUnreachable")
    assert "pw" not in forwarding["message"]  # never the URL, which holds the password
    assert events[-1][:2] == ("Warning", "StoreUnreachable")
    assert "forward" not in live(k8s)["status"]


async def _fetch(db: asyncpg.Connection, query: str) -> bool:
    return bool(await db.fetchval(query))


def live(k8s: DfmKubernetesEmulator) -> dict[str, Any]:
    obj = k8s.get_object(WEBHOOKSOURCES, NS, "orders")
    assert obj is not None
    return obj


def managed_secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "ManagedSecret",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "random",
            "random": {"length": 32, "encoding": "base64", "prefix": "whsec_"},
        },
    }
