"""A SyncSchedule on the real API server, its operator running as the chart's ServiceAccount: the
CronJob it applies is accepted as built, the real CronJob controller starts a Job on schedule and
the real Job controller its Pod; the test plays kubelet for that one Pod (it runs the Pod's
command, `dfm sync run`, with the ConfigMap's config, against a loopback API and PostgreSQL, then
reports the container terminated with the run's summary as its termination message); the Job
controller completes the Job, and the operator reads the outcome back into status.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml
from aiohttp import web

from tests.fake_api import FakeApi, contacts
from tests.realkube.cluster import Api, JsonDict, wait_for
from tests.realkube.running import DFM, OperatorProcess, clean_env, path_of, wait_ready

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def served(api: FakeApi) -> Iterator[str]:
    """The fake API on a loopback port, served by its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(api.app(), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def run_pod_once(admin: Api, ns: str, pod: JsonDict, database_url: str, workdir: Path) -> None:
    """Kubelet's part for one run-to-completion Pod: its command with its mounted files put
    where this machine has them, then the container's terminated state with the message the
    command left in its terminationMessagePath."""
    [container] = pod["spec"]["containers"]
    config_map = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v)
    data = admin.get(path_of("configmaps", ns, config_map, group="v1"))["data"]
    config = yaml.safe_load(data["sync.yaml"])
    url_file = workdir / "database-url"
    url_file.write_text(database_url)
    config["database"]["urlFile"] = str(url_file)
    config_file = workdir / "sync.yaml"
    config_file.write_text(yaml.safe_dump(config))
    termination = workdir / "termination-log"
    args = list(container["args"])
    args[args.index("--config") + 1] = str(config_file)
    assert args[args.index("--summary-file") + 1] == container["terminationMessagePath"]
    args[args.index("--summary-file") + 1] = str(termination)
    result = subprocess.run(
        [sys.executable, "-m", "dfm.cli", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    message = termination.read_text() if termination.exists() else None
    terminated: JsonDict = {
        "exitCode": result.returncode,
        "reason": "Completed" if result.returncode == 0 else "Error",
        "startedAt": pod["metadata"]["creationTimestamp"],
        "finishedAt": pod["metadata"]["creationTimestamp"],
    }
    if message:
        terminated["message"] = message
    admin.merge_patch(
        path_of("pods", ns, pod["metadata"]["name"], group="v1") + "/status",
        {
            "status": {
                "phase": "Succeeded" if result.returncode == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        },
    )


def test_a_cronjob_run_reaches_the_status_through_the_real_controllers(
    admin: Api, operator: OperatorProcess, namespace: str, database: str, tmp_path: Path
) -> None:
    ns = namespace
    api = FakeApi(contacts(12), "cursor", page_size=5)
    with served(api) as base:
        admin.create(
            path_of("secrets", ns, group="v1"),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "dfm-events-db"},
                "stringData": {"url": database},
            },
        )
        admin.create(
            path_of("webhooksources", ns),
            {
                "apiVersion": DFM,
                "kind": "WebhookSource",
                "metadata": {"name": "crm"},
                "spec": {"provider": "highlevel"},
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
                            "url": f"{base}/items",
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

        # The real CronJob controller starts a Job within the minute, the Job controller its Pod.
        pods = path_of("pods", ns, group="v1") + "?labelSelector=dfm.dev%2Fsyncschedule%3Dcontacts"
        pod = wait_for("the first run's Pod", lambda: admin.get(pods)["items"], timeout=120)[0]
        job_name = pod["metadata"]["labels"]["batch.kubernetes.io/job-name"]
        assert job_name.startswith("contacts-sync-")
        run_pod_once(admin, ns, pod, database, tmp_path)

        obj = wait_ready(admin, "syncschedules", ns, "contacts", "True", "Synced", timeout=120)
        status = obj["status"]
        assert status["lastRun"]["job"] == job_name
        assert (status["itemsSynced"], status["lastRun"]["stored"]) == (12, 12)
        assert status["consecutiveFailures"] == 0
        assert status["lastScheduleTime"]
        job = admin.get(path_of("jobs", ns, job_name, group="batch/v1"))
        assert any(c["type"] == "Complete" for c in job["status"]["conditions"])

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

    # Suspended: the real CronJob object says so, and so does Ready.
    admin.merge_patch(path_of("syncschedules", ns, "contacts"), {"spec": {"suspend": True}})
    wait_ready(admin, "syncschedules", ns, "contacts", "False", "Suspended")
    suspended = admin.get(path_of("cronjobs", ns, "contacts-sync", group="batch/v1"))
    assert suspended["spec"]["suspend"] is True
