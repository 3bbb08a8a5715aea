"""A SyncSchedule on the real API server, its operator running as the chart's ServiceAccount: the
CronJob it applies is accepted as built, the real CronJob controller starts a Job on schedule and
the real Job controller its Pod; the kubelet player runs the Pod (`dfm sync run` with the
ConfigMap's config and the mounted database Secret, against a loopback API and the real
PostgreSQL, its summary written to /dev/termination-log); the Job controller completes the Job
from the Pod's status, and the operator reads the run back into status.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp import web

from tests.fake_api import FakeApi, contacts
from tests.realkube.cluster import Api, JsonDict, wait_for
from tests.realkube.kubelet import KubeletPlayer
from tests.realkube.running import DFM, OperatorProcess, path_of, wait_ready

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def served(api: FakeApi) -> Iterator[int]:
    """The fake API on a loopback port (returned), served by its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(api.app(), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = int(runner.addresses[0][1])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def first_job_finished(admin: Api, ns: str, player: KubeletPlayer) -> tuple[str, JsonDict]:
    """(the first Job's name, its Pod) once the real Job controller completed or failed it."""
    jobs = path_of("jobs", ns, group="batch/v1") + "?labelSelector=dfm.dev/syncschedule=contacts"

    def check() -> tuple[str, JsonDict] | None:
        for job in admin.get(jobs)["items"]:
            for cond in (job.get("status") or {}).get("conditions") or []:
                if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                    name = job["metadata"]["name"]
                    selector = f"batch.kubernetes.io/job-name={name}"
                    [pod] = admin.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")[
                        "items"
                    ]
                    return name, pod
        return None

    try:
        return wait_for("the first run's Job finished", check, timeout=180)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; player errors: {player.errors}") from None


def test_a_cronjob_run_reaches_the_status_through_the_real_controllers(
    admin: Api, operator: OperatorProcess, namespace: str, database: str, tmp_path: Path
) -> None:
    ns = namespace
    api = FakeApi(contacts(12), "cursor", page_size=5)
    pg_port = urlsplit(database).port or 5432
    with served(api) as api_port:
        # Inside the pod, 127.0.0.1:<port> of each service reaches the host's (as a Service would).
        player = KubeletPlayer(admin, ns, tmp_path / "kubelet", services=[pg_port, api_port])
        player.start()
        try:
            admin.create(
                path_of("secrets", ns, group="v1"),
                {"metadata": {"name": "dfm-events-db"}, "stringData": {"url": database}},
            )
            admin.create(
                path_of("webhooksources", ns),
                {
                    "apiVersion": DFM,
                    "kind": "WebhookSource",
                    "metadata": {"name": "crm"},
                    "spec": {"provider": "highlevel", "replicas": 0},
                },
            )
            admin.create(
                path_of("syncschedules", ns),
                {
                    "apiVersion": DFM,
                    "kind": "SyncSchedule",
                    "metadata": {"name": "contacts"},
                    "spec": {
                        "schedule": "* * * * *",
                        "timeZone": "Europe/Berlin",
                        "connector": {
                            "http": {
                                "url": f"http://127.0.0.1:{api_port}/items",
                                "itemsPath": "data",
                                "cursor": {"param": "cursor", "from": "next"},
                            }
                        },
                        "sink": {"webhookSourceRef": {"name": "crm"}},
                    },
                },
            )
            wait_ready(admin, "syncschedules", ns, "contacts", "True", "Scheduled")
            cronjob = admin.get(path_of("cronjobs", ns, "contacts-sync", group="batch/v1"))
            assert cronjob["spec"]["timeZone"] == "Europe/Berlin"
            assert cronjob["metadata"]["ownerReferences"][0]["kind"] == "SyncSchedule"

            # Within the minute: the CronJob controller's Job, the Job controller's Pod, the
            # player's run of it, the Job controller's verdict.
            job_name, pod = first_job_finished(admin, ns, player)
            assert job_name.startswith("contacts-sync-")
            [container] = pod["status"]["containerStatuses"]
            terminated = container["state"]["terminated"]
            log = player.log_of(pod["metadata"]["name"])
            assert terminated["exitCode"] == 0, log[-2000:]
            assert '"result":"Succeeded"' in terminated["message"]

            obj = wait_ready(admin, "syncschedules", ns, "contacts", "True", "Synced", timeout=120)
            status = obj["status"]
            assert status["lastRun"]["job"] == job_name
            assert (status["itemsSynced"], status["lastRun"]["stored"]) == (12, 12)
            assert status["consecutiveFailures"] == 0
            assert status["lastScheduleTime"]
            assert api.requests, "the pod's requests reached the loopback API"

            # Suspended: the real CronJob object says so, and so does Ready.
            admin.merge_patch(path_of("syncschedules", ns, "contacts"), {"spec": {"suspend": True}})
            wait_ready(admin, "syncschedules", ns, "contacts", "False", "Suspended")
            suspended = admin.get(path_of("cronjobs", ns, "contacts-sync", group="batch/v1"))
            assert suspended["spec"]["suspend"] is True
            assert player.errors == []
        finally:
            player.stop()

    async def stored() -> int:
        conn = await asyncpg.connect(database)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM webhook_events WHERE source = $1", f"{ns}/crm"
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(stored()) == 12
