"""The operator's SyncSchedule controller against the emulated API server.

kopf and our handlers run for real; the test plays the CronJob controller and the kubelet
(``play_cronjob_run``): a Job from the CronJob's template, its Pod's termination message (the run's
summary, as `dfm sync run` writes it), the Job's final conditions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kopf.testing import KopfRunner
from prometheus_client import CollectorRegistry

from dfm_operator.kernel import Context, OperatorMetrics
from dfm_operator.kube import connect
from dfm_operator.services.jobs import read_outcome
from dfm_operator.services.syncschedule import reconcile_sync_schedule
from dfm_operator.settings import OperatorSettings
from kube_emulator import (
    CRONJOBS,
    JOBS,
    MANAGEDSECRETS,
    SYNCSCHEDULES,
    WEBHOOKSOURCES,
    DfmKubernetesEmulator,
)
from tests.kube.conftest_helpers import k8s, kopf_running, kubeconfig
from tests.kube.dfm import OPERATOR, install_crds, ready
from webhook_server.sync.summary import RunSummary

__all__ = ["k8s", "kubeconfig"]  # pytest fixtures, imported for this module

NS = "crm"
SECRETS = "v1/secrets"
CONFIGMAP = "v1/configmaps"
CRONJOB = "ghl-contacts-sync"


def sink(name: str = "ghl") -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"provider": "highlevel"},
    }


def schedule(**spec: Any) -> dict[str, Any]:
    http = {
        "url": "https://services.leadconnectorhq.com/contacts/",
        "query": {"locationId": "loc-1"},
        "headers": {"Version": "2021-07-28"},
        "itemsPath": "contacts",
        "cursor": {"param": "startAfterId", "from": "meta.startAfterId"},
    }
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "SyncSchedule",
        "metadata": {"name": "ghl-contacts", "namespace": NS},
        "spec": {
            "schedule": "*/15 * * * *",
            "timeZone": "Europe/Berlin",
            "connector": {"http": {**http, **spec.pop("http", {})}},
            "sink": {"webhookSourceRef": {"name": "ghl"}},
            **spec,
        },
    }


def summary(result: str = "Succeeded", reason: str = "Synced", **counts: Any) -> str:
    started = datetime.now(UTC) - timedelta(seconds=42)
    run = RunSummary("crm/ghl-contacts", "r1", started, started + timedelta(seconds=42))
    run.result, run.reason = result, reason
    run.message = counts.pop("message", f"{counts.get('items', 0)} item(s)")
    run.items, run.stored = counts.get("items", 0), counts.get("stored", 0)
    run.complete = result == "Succeeded"
    return run.dumps()


@pytest.fixture
async def cluster(k8s: DfmKubernetesEmulator, kubeconfig: Path) -> DfmKubernetesEmulator:
    install_crds(k8s)
    await k8s.create(
        SECRETS,
        {"metadata": {"name": "dfm-events-db"}, "stringData": {"url": "postgresql://x"}},
        NS,
    )
    return k8s


@pytest.fixture
async def operator(cluster: DfmKubernetesEmulator) -> AsyncIterator[KopfRunner]:
    async with kopf_running(OPERATOR) as runner:
        yield runner
    assert runner.exception is None


async def wait_ready(k8s: DfmKubernetesEmulator, status: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = k8s.get_object(SYNCSCHEDULES, NS, "ghl-contacts")
        cond = ready(obj)
        return obj if (cond.get("status"), cond.get("reason")) == (status, reason) else None

    return await k8s.wait_for(check, seconds=20, what=f"Ready={status}/{reason}")


async def test_the_cronjob_is_created_updated_and_suspended(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    await k8s.create(WEBHOOKSOURCES, sink(), NS)
    created = await k8s.create(SYNCSCHEDULES, schedule(), NS)
    obj = await wait_ready(k8s, "True", "Scheduled")
    assert "no run has finished yet; the first is due at" in ready(obj)["message"]

    cronjob = k8s.get_object(CRONJOBS, NS, CRONJOB)
    assert cronjob is not None
    owner = cronjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "SyncSchedule",
        created["metadata"]["uid"],
        True,
    )
    assert cronjob["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "df-middleware-operator"
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == (
        "*/15 * * * *",
        "Europe/Berlin",
        False,
    )
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["sync", "run"]
    assert container["terminationMessagePolicy"] == "File"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    config = k8s.get_object(CONFIGMAP, NS, CRONJOB)
    assert config is not None
    assert "source: crm/ghl" in config["data"]["sync.yaml"]

    await k8s.patch_object(SYNCSCHEDULES, NS, "ghl-contacts", {"spec": {"schedule": "0 * * * *"}})
    await k8s.wait_for(
        lambda: (k8s.get_object(CRONJOBS, NS, CRONJOB) or {})["spec"]["schedule"] == "0 * * * *",
        what="the new schedule on the CronJob",
    )
    await k8s.patch_object(SYNCSCHEDULES, NS, "ghl-contacts", {"spec": {"suspend": True}})
    await wait_ready(k8s, "False", "Suspended")
    assert (k8s.get_object(CRONJOBS, NS, CRONJOB) or {})["spec"]["suspend"] is True
    await k8s.patch_object(SYNCSCHEDULES, NS, "ghl-contacts", {"spec": {"suspend": False}})
    await wait_ready(k8s, "True", "Scheduled")
    assert (k8s.get_object(CRONJOBS, NS, CRONJOB) or {})["spec"]["suspend"] is False

    # Deleted by hand: re-created.
    await k8s.delete_object(CRONJOBS, NS, CRONJOB)
    await k8s.wait_for(lambda: k8s.get_object(CRONJOBS, NS, CRONJOB), what="the CronJob again")


async def test_runs_reach_the_status_the_events_and_the_columns(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    await k8s.create(WEBHOOKSOURCES, sink(), NS)
    await k8s.create(SYNCSCHEDULES, schedule(), NS)
    await wait_ready(k8s, "True", "Scheduled")

    job = await k8s.play_cronjob_run(
        NS, CRONJOB, termination_message=summary(items=230, stored=12, message="230 item(s)")
    )
    obj = await wait_ready(k8s, "True", "Synced")
    status = obj["status"]
    assert (status["itemsSynced"], status["consecutiveFailures"]) == (230, 0)
    assert status["lastRun"]["job"] == job
    assert (status["lastRun"]["items"], status["lastRun"]["stored"]) == (230, 12)
    assert status["lastRun"]["durationSeconds"] == 42
    assert status["lastSuccessfulTime"]
    assert status["lastScheduleTime"]

    failed = await k8s.play_cronjob_run(
        NS,
        CRONJOB,
        succeeded=False,
        termination_message=summary(
            "Failed", "UpstreamFailing", message="GET https://x/contacts/: answered 503"
        ),
        scheduled=datetime.now(UTC) + timedelta(minutes=15),
    )
    obj = await wait_ready(k8s, "False", "UpstreamFailing")
    assert obj["status"]["consecutiveFailures"] == 1
    assert obj["status"]["itemsSynced"] == 230  # of the last good run
    assert "answered 503" in ready(obj)["message"]
    events = await k8s.wait_for(
        lambda: k8s.events(NS, name="ghl-contacts", reason="SyncFailed"), what="a SyncFailed Event"
    )
    assert events[0]["type"] == "Warning"
    assert failed in events[0]["message"]

    # A Job that died without a summary (its Pod never ran, then its deadline passed).
    await k8s.play_cronjob_run(
        NS,
        CRONJOB,
        succeeded=False,
        pod=False,
        failure_reason="DeadlineExceeded",
        scheduled=datetime.now(UTC) + timedelta(minutes=30),
    )
    obj = await wait_ready(k8s, "False", "DeadlineExceeded")
    assert obj["status"]["consecutiveFailures"] == 2
    assert "without a summary" in ready(obj)["message"]
    await k8s.wait_for(
        lambda: len(k8s.events(NS, name="ghl-contacts", reason="SyncFailed")) == 2,
        what="one Warning per failed run",
    )

    await k8s.play_cronjob_run(
        NS,
        CRONJOB,
        termination_message=summary(items=3, stored=3),
        scheduled=datetime.now(UTC) + timedelta(minutes=45),
    )
    obj = await wait_ready(k8s, "True", "Synced")
    assert (obj["status"]["consecutiveFailures"], obj["status"]["itemsSynced"]) == (0, 3)

    # What `kubectl get syncschedules` prints (the server-side Table of the CRD's columns).
    async with k8s.request(
        "GET",
        k8s.path_for(SYNCSCHEDULES, NS),
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ) as response:
        table = await response.json()
    columns = [c["name"] for c in table["columnDefinitions"] if not c.get("priority")]
    row = dict(zip(columns, table["rows"][0]["cells"], strict=False))
    assert (row["Schedule"], row["Ready"], row["Reason"], row["Items"]) == (
        "*/15 * * * *",
        "True",
        "Synced",
        3,
    )
    assert row["Last Success"]


async def test_a_missing_sink_or_token_is_reported_and_heals(
    cluster: DfmKubernetesEmulator, operator: KopfRunner, aiohttp_server: Any
) -> None:
    k8s = cluster
    await k8s.create(
        SYNCSCHEDULES, schedule(http={"auth": {"managedSecretRef": {"name": "ghl-oauth"}}}), NS
    )
    obj = await wait_ready(k8s, "False", "SinkNotFound")
    assert "WebhookSource ghl not found" in ready(obj)["message"]
    await k8s.wait_for(
        lambda: k8s.events(NS, name="ghl-contacts", reason="SinkNotFound"), what="a Warning Event"
    )
    assert k8s.get_object(CRONJOBS, NS, CRONJOB) is None  # nothing applied until it exists

    await k8s.create(WEBHOOKSOURCES, sink(), NS)
    obj = await wait_ready(k8s, "False", "TokenUnavailable")
    assert "ManagedSecret ghl-oauth not found" in ready(obj)["message"]

    # The ManagedSecret refreshes a token from its endpoint and writes its Secret: the schedule
    # mounts that Secret's access token.
    async def token(request: web.Request) -> web.Response:
        return web.json_response(
            {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600}
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    server = await aiohttp_server(app)
    await k8s.create(
        SECRETS,
        {
            "metadata": {"name": "ghl-client"},
            "stringData": {"client_id": "c", "client_secret": "s"},
        },
        NS,
    )
    await k8s.create(
        SECRETS, {"metadata": {"name": "ghl-boot"}, "stringData": {"refresh_token": "rt"}}, NS
    )
    await k8s.create(
        MANAGEDSECRETS,
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "ManagedSecret",
            "metadata": {"name": "ghl-oauth", "namespace": NS},
            "spec": {
                "type": "oauth2",
                "secretName": "ghl-token",
                "oauth2": {
                    "tokenUrl": str(server.make_url("/oauth/token")),
                    "clientSecretRef": {"name": "ghl-client"},
                    "refreshTokenSecretRef": {"name": "ghl-boot", "key": "refresh_token"},
                },
            },
        },
        NS,
    )
    await wait_ready(k8s, "True", "Scheduled")
    cronjob = k8s.get_object(CRONJOBS, NS, CRONJOB)
    assert cronjob is not None
    volumes = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    token_volume = next(v for v in volumes if v["name"] == "token")
    assert token_volume["secret"]["secretName"] == "ghl-token"
    assert token_volume["secret"]["items"] == [{"key": "access_token", "path": "access_token"}]
    assert "at-1" not in yaml.safe_dump(k8s.get_object(CONFIGMAP, NS, CRONJOB))

    # The sink goes away: said at once (the CronJob is left as it is).
    await k8s.delete_object(WEBHOOKSOURCES, NS, "ghl")
    await wait_ready(k8s, "False", "SinkNotFound")


async def test_a_run_is_counted_once_and_measured(cluster: DfmKubernetesEmulator) -> None:
    """The service on its own (no kopf): the same finished Job seen again (a repeated watch
    event, an operator restart) changes nothing; metrics follow each counted run."""
    k8s = cluster
    await k8s.create(WEBHOOKSOURCES, sink(), NS)
    await k8s.create(SYNCSCHEDULES, schedule(), NS)
    events: list[tuple[str, str, str]] = []
    metrics = OperatorMetrics(CollectorRegistry())
    async with connect() as kube:
        ctx = Context(kube=kube, settings=OperatorSettings(), metrics=metrics)

        async def reconcile(job: dict[str, Any] | None = None) -> None:
            body = k8s.get_object(SYNCSCHEDULES, NS, "ghl-contacts")
            assert body is not None
            outcome = await read_outcome(ctx, job, "sync") if job is not None else None
            assert job is None or outcome is not None
            await reconcile_sync_schedule(ctx, body, lambda *e: events.append(e), outcome=outcome)

        await reconcile()
        name = await k8s.play_cronjob_run(
            NS, CRONJOB, succeeded=False, termination_message=summary("Failed", "BadResponse")
        )
        job = k8s.get_object(JOBS, NS, name)
        assert job is not None
        for _ in range(3):
            await reconcile(job)
        status = (k8s.get_object(SYNCSCHEDULES, NS, "ghl-contacts") or {})["status"]
        assert status["consecutiveFailures"] == 1
        assert [e[1] for e in events].count("SyncFailed") == 1

        def sample(metric: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(
                metric, {"namespace": NS, "name": "ghl-contacts", **labels}
            )

        assert sample("dfm_syncschedule_runs_total", result="failed") == 1
        assert sample("dfm_syncschedule_consecutive_failures") == 1
        assert sample("dfm_syncschedule_interval_seconds") == 900
        assert sample("dfm_syncschedule_suspended") == 0
        assert sample("dfm_syncschedule_last_success_timestamp_seconds") is None
        assert sample("dfm_syncschedule_created_timestamp_seconds") is not None

        good = await k8s.play_cronjob_run(
            NS,
            CRONJOB,
            termination_message=summary(items=10, stored=4),
            scheduled=datetime.now(UTC) + timedelta(minutes=15),
        )
        await reconcile(k8s.get_object(JOBS, NS, good))
        await reconcile(job)  # the older failed Job, listed again: not counted again
        status = (k8s.get_object(SYNCSCHEDULES, NS, "ghl-contacts") or {})["status"]
        assert (status["consecutiveFailures"], status["lastRun"]["job"]) == (0, good)
        assert sample("dfm_syncschedule_runs_total", result="succeeded") == 1
        assert sample("dfm_syncschedule_runs_total", result="failed") == 1
        assert sample("dfm_syncschedule_items_total", outcome="stored") == 4
        assert sample("dfm_syncschedule_items_total", outcome="duplicate") == 6
        assert sample("dfm_syncschedule_run_duration_seconds_count") == 2
        assert sample("dfm_syncschedule_last_success_timestamp_seconds") is not None
