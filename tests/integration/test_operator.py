"""The real operator (kopf + our handlers) against an emulated Kubernetes API over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kopf.testing import KopfRunner

from dfm_operator.handlers import webhooksource as handlers
from dfm_operator.kernel import Context, OperatorMetrics
from dfm_operator.kube import connect
from dfm_operator.services.webhooksource import reconcile_webhook_source
from dfm_operator.settings import OperatorSettings
from kube_emulator import DEPLOYMENTS, WEBHOOKSOURCES, DfmKubernetesEmulator
from tests.kube.conftest_helpers import k8s, kopf_running, kubeconfig
from tests.kube.dfm import OPERATOR, create_secret, install_crds, ready
from tests.tools import free_ports

__all__ = ["k8s", "kubeconfig"]  # pytest fixtures, imported for this module

NS = "payments"
CONFIGMAPS = "v1/configmaps"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
PDBS = "policy/v1/poddisruptionbudgets"
NETPOLS = "networking.k8s.io/v1/networkpolicies"


def source(name: str = "stripe-main", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "provider": "stripe",
            "verification": {"secretRef": {"name": "stripe-webhook", "key": "secret"}},
            **spec,
        },
    }


@pytest.fixture
async def cluster(k8s: DfmKubernetesEmulator, kubeconfig: Path) -> DfmKubernetesEmulator:
    install_crds(k8s)
    await create_secret(k8s, NS, "dfm-events-db", url="postgresql://db/events")
    return k8s


@pytest.fixture
async def operator(cluster: DfmKubernetesEmulator) -> AsyncIterator[KopfRunner]:
    async with kopf_running(OPERATOR) as runner:
        yield runner
    assert runner.exception is None
    assert runner.exit_code == 0


async def wait_ready(
    k8s: DfmKubernetesEmulator, name: str, status: str, reason: str, generation: int | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = k8s.get_object(WEBHOOKSOURCES, NS, name)
        cond = ready(obj)
        if cond.get("status") != status or cond.get("reason") != reason:
            return None
        if (
            generation is not None
            and (obj or {}).get("status", {}).get("observedGeneration") != generation
        ):
            return None
        return obj

    return await k8s.wait_for(check, seconds=20, what=f"{name} Ready={status}/{reason}")


async def test_lifecycle_create_ready_update_and_repair(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")
    await k8s.create(WEBHOOKSOURCES, source(), NS)

    obj = await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=1)
    uid = obj["metadata"]["uid"]
    progressing = next(c for c in obj["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "True"
    assert obj["status"]["endpoint"] == (
        "http://stripe-main-receiver.payments.svc/hooks/payments/stripe-main"
    )
    for gvp, name in [
        (CONFIGMAPS, "stripe-main-receiver-config"),
        (DEPLOYMENTS, "stripe-main-receiver"),
        (SERVICES, "stripe-main-receiver"),
        (NETPOLS, "stripe-main-receiver"),
    ]:
        child = k8s.get_object(gvp, NS, name)
        assert child is not None, name
        owners = child["metadata"]["ownerReferences"]
        assert owners[0]["uid"] == uid
        assert owners[0]["controller"] is True
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == (
            "df-middleware-operator"
        )
    assert k8s.get_object(PDBS, NS, "stripe-main-receiver") is None
    config = k8s.get_object(CONFIGMAPS, NS, "stripe-main-receiver-config")
    assert config is not None
    assert "whsec_x" not in yaml.safe_dump(config)

    # The test plays kubelet: the Deployment becomes available.
    await k8s.mark_deployment_available(NS, "stripe-main-receiver")
    obj = await wait_ready(k8s, "stripe-main", "True", "Available", generation=1)
    assert obj["status"]["readyReplicas"] == 1
    await k8s.wait_for(
        lambda: k8s.events(NS, name="stripe-main", reason="Ready"), what="a Ready event"
    )

    # A spec change: config updated, pods rolled (new config hash), a PDB for 2 replicas.
    def config_hash() -> str:
        dep = k8s.get_object(DEPLOYMENTS, NS, "stripe-main-receiver") or {}
        return str(dep["spec"]["template"]["metadata"]["annotations"]["dfm.dev/config-hash"])

    before = config_hash()
    await k8s.patch_object(
        WEBHOOKSOURCES,
        NS,
        "stripe-main",
        {"spec": {"replicas": 2, "verification": {"toleranceSeconds": 60}}},
    )
    await k8s.wait_for(lambda: config_hash() != before, seconds=20, what="a new config hash")
    config = k8s.get_object(CONFIGMAPS, NS, "stripe-main-receiver-config") or {}
    assert "toleranceSeconds: 60" in config["data"]["receiver.yaml"]
    assert await k8s.wait_for(
        lambda: k8s.get_object(PDBS, NS, "stripe-main-receiver"), what="a PodDisruptionBudget"
    )
    await k8s.mark_deployment_available(NS, "stripe-main-receiver", replicas=2)
    obj = await wait_ready(k8s, "stripe-main", "True", "Available", generation=2)
    assert obj["status"]["readyReplicas"] == 2

    # A hand edit of the Deployment (scaled by someone) is undone.
    await k8s.patch_object(DEPLOYMENTS, NS, "stripe-main-receiver", {"spec": {"replicas": 7}})
    await k8s.wait_for(
        lambda: (
            (k8s.get_object(DEPLOYMENTS, NS, "stripe-main-receiver") or {})["spec"]["replicas"] == 2
        ),
        seconds=20,
        what="the hand edit undone",
    )

    # A child deleted by hand comes back.
    await k8s.delete_object(SERVICES, NS, "stripe-main-receiver")
    recreated = await k8s.wait_for(
        lambda: k8s.get_object(SERVICES, NS, "stripe-main-receiver"),
        seconds=20,
        what="the Service re-created",
    )
    assert recreated["metadata"]["ownerReferences"][0]["uid"] == uid


async def test_workers_reach_the_receiver_config_and_size_the_default_resources(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")

    def rendered() -> tuple[int, dict[str, Any], str]:
        config = k8s.get_object(CONFIGMAPS, NS, "stripe-main-receiver-config") or {}
        pod = (k8s.get_object(DEPLOYMENTS, NS, "stripe-main-receiver") or {})["spec"]["template"]
        [container] = pod["spec"]["containers"]
        workers = yaml.safe_load(config["data"]["receiver.yaml"])["workers"]
        return (
            workers,
            container["resources"],
            pod["metadata"]["annotations"]["dfm.dev/config-hash"],
        )

    await k8s.create(WEBHOOKSOURCES, source(workers=2), NS)
    await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=1)
    workers, resources, two = rendered()
    assert workers == 2
    assert resources == {
        "requests": {"cpu": "100m", "memory": "192Mi"},
        "limits": {"memory": "640Mi"},
    }

    await k8s.patch_object(WEBHOOKSOURCES, NS, "stripe-main", {"spec": {"workers": 3}})
    await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=2)
    workers, resources, three = rendered()
    assert workers == 3
    assert three != two, "the pods roll to the new config"
    assert resources["limits"] == {"memory": "896Mi"}

    # The field removed: one worker, and the resources a source without it always had.
    await k8s.patch_object(WEBHOOKSOURCES, NS, "stripe-main", {"spec": {"workers": None}})
    await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=3)
    workers, resources, one = rendered()
    assert workers == 1
    assert one not in (two, three)
    assert resources == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }

    # Resources the user sets are used as they are.
    mine = {"requests": {"cpu": "2"}, "limits": {"memory": "2Gi"}}
    await k8s.patch_object(
        WEBHOOKSOURCES, NS, "stripe-main", {"spec": {"workers": 4, "resources": mine}}
    )
    await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=4)
    workers, resources, _ = rendered()
    assert (workers, resources) == (4, mine)


async def test_missing_secret_is_reported_and_heals_when_it_appears(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    await k8s.create(WEBHOOKSOURCES, source("late"), NS)
    obj = await wait_ready(k8s, "late", "False", "SecretNotFound")
    assert "stripe-webhook" in ready(obj)["message"]
    assert k8s.get_object(DEPLOYMENTS, NS, "late-receiver") is None
    events = await k8s.wait_for(
        lambda: k8s.events(NS, name="late", reason="SecretNotFound"), what="a SecretNotFound event"
    )
    assert events[0]["type"] == "Warning"

    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_y")
    await wait_ready(k8s, "late", "False", "DeploymentUnavailable")
    assert k8s.get_object(DEPLOYMENTS, NS, "late-receiver") is not None


def configmap_applies(k8s: DfmKubernetesEmulator) -> int:
    """Server-side applies of receiver ConfigMaps the emulator has served so far."""
    return sum(
        1
        for request in k8s
        if request.method is not None
        and request.method.value == "PATCH"
        and "/configmaps/" in request.url.path
        and request.headers.get("Content-Type", "").startswith("application/apply-patch")
    )


async def quiet(k8s: DfmKubernetesEmulator, seconds: float = 2.0) -> None:
    """Until the emulator has served no request for ``seconds`` (at most 30 s)."""
    seen, since = len(list(k8s)), asyncio.get_running_loop().time()

    def settled() -> bool:
        nonlocal seen, since
        now, count = asyncio.get_running_loop().time(), len(list(k8s))
        if count != seen:
            seen, since = count, now
        return now - since >= seconds

    await k8s.wait_for(settled, seconds=30, what="the operator quiet")


async def create_sources(k8s: DfmKubernetesEmulator, count: int) -> list[str]:
    """``count`` WebhookSources (src-0, src-1, …) and the Secret they verify with; their names."""
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")
    names = [f"src-{i}" for i in range(count)]
    for name in names:
        await k8s.create(WEBHOOKSOURCES, source(name), NS)
    return names


async def test_an_operator_started_over_existing_sources_reconciles_each_once(
    cluster: DfmKubernetesEmulator,
) -> None:
    # A restart over many sources: the Secret and Deployments kopf lists at start-up must not
    # each reconcile their sources again (the work, and the memory held, tripled).
    k8s = cluster
    names = await create_sources(k8s, 3)
    async with kopf_running(OPERATOR) as runner:
        for name in names:
            await wait_ready(k8s, name, "False", "DeploymentUnavailable")
        await quiet(k8s)
        assert configmap_applies(k8s) == len(names), "one full reconcile per source"
        # Events after the listing still count: the Secret changes, every source re-applies.
        await k8s.patch_object(SECRETS, NS, "stripe-webhook", {"stringData": {"secret": "new"}})
        await k8s.wait_for(
            lambda: configmap_applies(k8s) == 2 * len(names), seconds=20, what="re-applied"
        )
    assert runner.exception is None


async def test_no_more_than_max_concurrent_reconciles_sources_build_at_once(
    cluster: DfmKubernetesEmulator,
) -> None:
    k8s = cluster
    names = await create_sources(k8s, 6)
    gate, inside, most = asyncio.Event(), 0, 0

    async with connect() as kube:
        real_apply = kube.apply

        async def apply(obj: dict[str, Any]) -> dict[str, Any]:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            try:
                await gate.wait()
                return await real_apply(obj)
            finally:
                inside -= 1

        kube.apply = apply  # type: ignore[method-assign]
        settings = OperatorSettings(max_concurrent_reconciles=2)
        ctx = Context(kube=kube, settings=settings, metrics=OperatorMetrics())
        bodies = [k8s.get_object(WEBHOOKSOURCES, NS, name) or {} for name in names]
        tasks = [
            asyncio.create_task(reconcile_webhook_source(ctx, body, lambda *_: None))
            for body in bodies
        ]
        await k8s.wait_for(lambda: inside == 2, what="two reconciliations applying")
        for _ in range(20):  # give the other four every chance to start too
            await asyncio.sleep(0)
        assert inside == 2
        gate.set()
        await asyncio.gather(*tasks)
    assert most == 2
    for name in names:
        assert k8s.get_object(CONFIGMAPS, NS, f"{name}-receiver-config") is not None


async def test_the_periodic_timer_checks_drift_every_five_minutes_not_every_tick(
    cluster: DfmKubernetesEmulator,
) -> None:
    # One kopf timer per source for both periods: every tick reads the event store, and only
    # a tick at which the drift check is due re-asserts the children.
    k8s = cluster
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")
    await k8s.create(WEBHOOKSOURCES, source(), NS)

    def replicas() -> int:
        return int(
            (k8s.get_object(DEPLOYMENTS, NS, "stripe-main-receiver") or {})["spec"]["replicas"]
        )

    async with connect() as kube:
        settings = OperatorSettings(store_status=False)
        ctx = Context(kube=kube, settings=settings, metrics=OperatorMetrics())
        body = k8s.get_object(WEBHOOKSOURCES, NS, "stripe-main") or {}
        await reconcile_webhook_source(ctx, body, lambda *_: None)
        await k8s.patch_object(DEPLOYMENTS, NS, "stripe-main-receiver", {"spec": {"replicas": 7}})
        memo = kopf.Memo(ctx=ctx)  # kopf's per-object copy
        live = k8s.get_object(WEBHOOKSOURCES, NS, "stripe-main") or {}
        await handlers.periodic(memo=memo, body=kopf.Body(live), secret_names=None)
        assert replicas() == 7, "the first tick only schedules the drift check"
        assert memo.drift_check_due > asyncio.get_running_loop().time() + 200
        memo.drift_check_due = 0.0  # five minutes later
        await handlers.periodic(memo=memo, body=kopf.Body(live), secret_names=None)
        assert replicas() == 1, "the hand edit undone"
        assert memo.drift_check_due > asyncio.get_running_loop().time() + 200


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # Passes the structural schema (the emulator evaluates no CEL), fails the model's rule.
        ({"provider": "hmac"}, "hmac requires verification.header"),
        # A key the receiver could never use: it used to crash-loop on it (issue 9).
        (
            {"provider": "jwt", "auth": {"publicKey": "-----BEGIN PUBLIC KEY-----\nAAAA"}},
            "auth.publicKey is not a PEM public key",
        ),
        (
            {"provider": "highlevel", "verification": {"publicKey": "not a key"}},
            "publicKey holds no PEM block",
        ),
        # Twilio signs the public URL: without it or an Ingress to derive it from, nothing verifies.
        (
            {"provider": "twilio", "verification": {"secretRef": {"name": "t"}}},
            "provider twilio requires verification.publicUrl or exposure.ingress",
        ),
    ],
)
async def test_invalid_spec_is_reported_with_an_event(
    cluster: DfmKubernetesEmulator, operator: KopfRunner, spec: dict[str, Any], message: str
) -> None:
    k8s = cluster
    await k8s.create(WEBHOOKSOURCES, source("broken", **spec), NS)
    obj = await wait_ready(k8s, "broken", "False", "InvalidSpec")
    assert message in ready(obj)["message"]
    events = await k8s.wait_for(
        lambda: k8s.events(NS, name="broken", reason="InvalidSpec"), what="an InvalidSpec event"
    )
    assert events[0]["type"] == "Warning"
    assert k8s.get_object(DEPLOYMENTS, NS, "broken-receiver") is None


async def test_the_dfm_operator_process_reconciles_and_serves_metrics_and_liveness(
    cluster: DfmKubernetesEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    """`dfm operator` as a user runs it: its own process, talking HTTP to the API server."""

    def fetch(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read().decode()
        except OSError:
            return 0, ""

    k8s = cluster
    metrics_port, liveness_port = free_ports(2)
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waits are threaded
        [
            sys.executable,
            "-m",
            "dfm.cli",
            "operator",
            "--standalone",
            "-A",
            "--metrics-port",
            str(metrics_port),
            "--liveness",
            f"http://127.0.0.1:{liveness_port}/healthz",
        ],
        env=dict(os.environ, KUBECONFIG=str(kubeconfig)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await create_secret(k8s, NS, "stripe-webhook", secret="whsec_z")
        await k8s.create(WEBHOOKSOURCES, source("proc"), NS)
        await k8s.wait_for(
            lambda: k8s.get_object(DEPLOYMENTS, NS, "proc-receiver"),
            seconds=30,
            what="the Deployment from the operator process",
        )
        await k8s.mark_deployment_available(NS, "proc-receiver")
        await wait_ready(k8s, "proc", "True", "Available", generation=1)

        managed = {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "ManagedSecret",
            "metadata": {"name": "m", "namespace": NS},
            "spec": {"type": "random", "random": {}, "rotation": {"every": "1h"}},
        }
        await k8s.create("dfm.dev/v1alpha1/managedsecrets", managed, NS)
        await k8s.wait_for(
            lambda: k8s.get_object(SECRETS, NS, "m"), seconds=20, what="the ManagedSecret's Secret"
        )
        expected = [
            'dfm_managedsecret_rotations_total{kind="random",result="success"} 1.0',
            'dfm_managedsecret_next_rotation_timestamp_seconds{name="m",namespace="payments"}',
            'dfm_operator_reconciliations_total{kind="WebhookSource",result="ready"}',
            'dfm_operator_webhooksources{ready="true"} 1.0',
        ]

        # The process counts after its writes (which the test has seen): its metrics are read
        # until they show them (at most 30 s), rather than after a sleep a loaded machine may
        # outlast; the assertions below say what is missing.
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 30
        while True:
            status, body = await asyncio.to_thread(fetch, url)
            if all(line in body for line in expected) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 200
        for line in expected:
            assert line in body
        status, _ = await asyncio.to_thread(fetch, f"http://127.0.0.1:{liveness_port}/healthz")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-2000:]


async def test_a_source_on_a_managed_secret_mounts_it_and_rotation_never_rolls_pods(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    managed = {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "ManagedSecret",
        "metadata": {"name": "signing", "namespace": NS},
        "spec": {
            "type": "random",
            "random": {"prefix": "whsec_"},
            "rotation": {"every": "720h", "gracePeriod": "1h"},
            "secretName": "stripe-signing",
        },
    }
    await k8s.create("dfm.dev/v1alpha1/managedsecrets", managed, NS)
    await k8s.create(
        WEBHOOKSOURCES,
        source(
            "clerk", provider="standard", verification={"managedSecretRef": {"name": "signing"}}
        ),
        NS,
    )
    deployment = await k8s.wait_for(
        lambda: k8s.get_object(DEPLOYMENTS, NS, "clerk-receiver"),
        seconds=20,
        what="the receiver of a ManagedSecret-backed source",
    )
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "signing", "secret": {"secretName": "stripe-signing"}} in volumes
    config = k8s.get_object(CONFIGMAPS, NS, "clerk-receiver-config") or {}
    assert "dir: /etc/dfm/secrets/stripe-signing" in config["data"]["receiver.yaml"]
    template_hash = deployment["spec"]["template"]["metadata"]["annotations"]

    await k8s.patch_object(
        "dfm.dev/v1alpha1/managedsecrets",
        NS,
        "signing",
        {"metadata": {"annotations": {"dfm.dev/rotate-now": "1"}}},
    )
    await k8s.wait_for(
        lambda: (
            (
                (k8s.get_object("dfm.dev/v1alpha1/managedsecrets", NS, "signing") or {}).get(
                    "status"
                )
                or {}
            ).get("currentVersion")
            == 2
        ),
        seconds=15,
        what="the rotation",
    )
    await asyncio.sleep(0.5)  # let the Secret event reach the source
    after = k8s.get_object(DEPLOYMENTS, NS, "clerk-receiver") or {}
    assert after["spec"]["template"]["metadata"]["annotations"] == template_hash


async def test_a_spec_change_seen_first_through_a_deployment_event_updates_the_config_first(
    cluster: DfmKubernetesEmulator,
) -> None:
    # A Deployment event can reach the reconciler with the new spec before the update handler
    # does. The pods must not roll to a config hash whose ConfigMap is not written yet.
    k8s = cluster
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")
    await k8s.create(WEBHOOKSOURCES, source(), NS)
    events: list[tuple[str, str, str]] = []

    def emit(*event: str) -> None:
        events.append(event)

    async with connect() as kube:
        ctx = Context(kube=kube, settings=OperatorSettings(), metrics=OperatorMetrics())
        body = k8s.get_object(WEBHOOKSOURCES, NS, "stripe-main") or {}
        await reconcile_webhook_source(ctx, body, emit)
        await k8s.patch_object(
            WEBHOOKSOURCES, NS, "stripe-main", {"spec": {"verification": {"toleranceSeconds": 60}}}
        )
        changed = k8s.get_object(WEBHOOKSOURCES, NS, "stripe-main") or {}
        live = k8s.get_object(DEPLOYMENTS, NS, "stripe-main-receiver")
        await reconcile_webhook_source(ctx, changed, emit, apply=False, deployment=live)

    config = k8s.get_object(CONFIGMAPS, NS, "stripe-main-receiver-config") or {}
    deployment = k8s.get_object(DEPLOYMENTS, NS, "stripe-main-receiver") or {}
    assert "toleranceSeconds: 60" in config["data"]["receiver.yaml"]
    assert deployment["metadata"]["generation"] == 2, "the pods roll to the new config"
    written = int(config["metadata"]["resourceVersion"])
    assert written < int(deployment["metadata"]["resourceVersion"]), "ConfigMap first"


async def test_children_the_spec_no_longer_asks_for_are_deleted(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    # Removing exposure.ingress must stop the public route, not just clear the endpoint.
    k8s = cluster
    ingresses = "networking.k8s.io/v1/ingresses"
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")
    exposed = source(replicas=2, exposure={"ingress": {"host": "hooks.example.com"}})
    await k8s.create(WEBHOOKSOURCES, exposed, NS)
    for gvp in (ingresses, PDBS):
        await k8s.wait_for(
            lambda gvp=gvp: k8s.get_object(gvp, NS, "stripe-main-receiver"), what=gvp
        )
    await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=1)

    await k8s.patch_object(
        WEBHOOKSOURCES, NS, "stripe-main", {"spec": {"replicas": 1, "exposure": None}}
    )
    for gvp in (ingresses, PDBS):
        await k8s.wait_for(
            lambda gvp=gvp: k8s.get_object(gvp, NS, "stripe-main-receiver") is None,
            seconds=20,
            what=f"{gvp} deleted",
        )
    obj = await wait_ready(k8s, "stripe-main", "False", "DeploymentUnavailable", generation=2)
    assert obj["status"].get("externalEndpoint") is None
    # What is still asked for stays.
    assert k8s.get_object(SERVICES, NS, "stripe-main-receiver") is not None
    assert k8s.get_object(NETPOLS, NS, "stripe-main-receiver") is not None


async def test_a_servicemonitor_crd_removed_while_running_stops_being_used(
    cluster: DfmKubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prometheus Operator uninstalled: the next reconcile must not try ServiceMonitors forever.
    k8s = cluster
    monitors = "monitoring.coreos.com/v1/servicemonitors"
    monkeypatch.setenv("DFM_SERVICE_MONITOR", "true")
    k8s.set_servicemonitors(True)
    await create_secret(k8s, NS, "stripe-webhook", secret="whsec_x")
    async with kopf_running(OPERATOR) as runner:
        await k8s.create(WEBHOOKSOURCES, source(), NS)
        await k8s.wait_for(
            lambda: k8s.get_object(monitors, NS, "stripe-main-receiver"), what="a ServiceMonitor"
        )
        k8s.set_servicemonitors(False)
        await k8s.patch_object(WEBHOOKSOURCES, NS, "stripe-main", {"spec": {"replicas": 2}})
        await k8s.mark_deployment_available(NS, "stripe-main-receiver", replicas=2)

        def reconciled() -> dict[str, Any] | None:
            obj = k8s.get_object(WEBHOOKSOURCES, NS, "stripe-main") or {}
            return obj if obj.get("status", {}).get("observedGeneration") == 2 else None

        await k8s.wait_for(reconciled, seconds=30, what="generation 2 reconciled")

        def retrying() -> list[str]:
            annotations = (k8s.get_object(WEBHOOKSOURCES, NS, "stripe-main") or {})["metadata"]
            return [
                key
                for key in annotations.get("annotations", {})
                if key.startswith("kopf.dfm.dev/")
                and not key.endswith("last-handled-configuration")
            ]

        # One failed attempt (404), then kopf's retry, 10 s later, without a ServiceMonitor:
        # the update handler finishes and kopf drops its progress record.
        await k8s.wait_for(lambda: not retrying(), seconds=30, what="the update handler done")
    assert runner.exception is None


async def test_schedules_say_what_keeps_them_from_running(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    # kubectl get must say why, not stay blank. (Their runs: test_sync_operator.py and
    # test_operator_backups.py.)
    k8s = cluster
    syncs, backups = "dfm.dev/v1alpha1/syncschedules", "dfm.dev/v1alpha1/backupschedules"
    sync = {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "SyncSchedule",
        "metadata": {"name": "crm", "namespace": NS},
        "spec": {
            "schedule": "*/15 * * * *",
            "connector": {"http": {"url": "https://api.example.com/items"}},
            "sink": {"webhookSourceRef": {"name": "stripe-main"}},
        },
    }
    backup = {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {
            "schedule": "0 3 30 2 *",  # 30 February: never
            "databaseSecretRef": {"name": "events-db", "key": "url"},
            "destination": {"pvc": {"claimName": "events-backups"}},
        },
    }
    await k8s.create(syncs, sync, NS)
    await k8s.create(backups, backup, NS)

    def ready_of(gvp: str, name: str) -> dict[str, Any] | None:
        return ready(k8s.get_object(gvp, NS, name)) or None

    sync_ready = await k8s.wait_for(lambda: ready_of(syncs, "crm"), what="SyncSchedule Ready")
    assert (sync_ready["status"], sync_ready["reason"]) == ("False", "SinkNotFound")
    assert "WebhookSource stripe-main not found" in sync_ready["message"]
    await k8s.wait_for(
        lambda: k8s.events(NS, name="crm", reason="SinkNotFound"), what="a Warning Event"
    )
    backup_ready = await k8s.wait_for(
        lambda: ready_of(backups, "nightly"), what="BackupSchedule Ready"
    )
    assert (backup_ready["status"], backup_ready["reason"]) == ("False", "InvalidSpec")
    assert "schedule" in backup_ready["message"]
