"""A BackupSchedule end to end on the real API server and controllers, through the chart's
operator (as its ServiceAccount): the claim it creates is provisioned by the kubelet player and
bound by the real PersistentVolume controller; a run started the way a user starts one
(`kubectl create job --from=cronjob/...`) becomes a Pod through the real Job controller; the
player runs `dfm backup run` in it against the real PostgreSQL; the operator reads the Job and
the Pod's termination message and reports the backup (or the failure) in status and Events.
The backup on the claim is then listed and restored with `dfm backup`, as the runbook says."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.realkube.cluster import Api, ControlPlane, JsonDict, wait_for
from tests.realkube.kubelet import KubeletPlayer
from tests.realkube.running import (
    DFM,
    OperatorProcess,
    clean_env,
    condition,
    kubectl,
    path_of,
    wait_ready,
)
from tests.realkube.tools import Tools
from tests.tools import free_port, scratch_database
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.metrics import ReceiverMetrics
from webhook_server.store import Event, Store

pytestmark = pytest.mark.timeout(600)
SOURCE = ("payments", "github")
EVENTS = 5


async def store_events(url: str) -> list[str]:
    """A few events stored by the receiver's own store (its migrations, its partitions)."""
    source = SourceConfig(
        namespace=SOURCE[0],
        name=SOURCE[1],
        provider=Provider.GITHUB,
        verification=VerificationConfig(secrets=[SecretSource(value="s")]),
    )
    store = Store(DatabaseConfig(url=url), [source], ReceiverMetrics())
    await store.start()
    now = datetime.now(UTC)
    try:
        assert await store.wait_ready(30)
        events = [
            Event(
                source="/".join(SOURCE),
                event_id=f"delivery-{n}",
                event_type="push",
                received_at=now - timedelta(minutes=n),
                request_id=f"req-{n}",
                payload=json.dumps({"n": n}).encode(),
                headers={"content-type": "application/json"},
            )
            for n in range(EVENTS)
        ]
        assert all(await asyncio.gather(*(store.submit(e) for e in events)))
    finally:
        await store.close()
    return sorted(e.event_id for e in events)


async def event_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT event_id FROM webhook_events ORDER BY event_id")
    finally:
        await conn.close()
    return [r["event_id"] for r in rows]


@pytest.fixture
def restore_target(postgres_server: str) -> Iterator[str]:
    """A second, empty database: where the backup is restored."""
    with scratch_database(postgres_server) as url:
        yield url


def events_about(admin: Api, ns: str, name: str, reason: str) -> list[JsonDict]:
    """The Events the operator posted about BackupSchedule ``name`` with ``reason``."""
    return [
        e
        for e in admin.get(f"/api/v1/namespaces/{ns}/events")["items"]
        if e["involvedObject"].get("kind") == "BackupSchedule"
        and e["involvedObject"].get("name") == name
        and e["reason"] == reason
    ]


def the_job_finished(admin: Api, ns: str, job: str, player: KubeletPlayer) -> tuple[str, JsonDict]:
    """(Complete|Failed, its Pod), as the real Job controller decided from the Pod's status."""

    def check() -> tuple[str, JsonDict] | None:
        obj = admin.get(path_of("jobs", ns, job, group="batch/v1"))
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                selector = f"batch.kubernetes.io/job-name={job}"
                [pod] = admin.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")["items"]
                return str(cond["type"]), pod
        return None

    try:
        return wait_for(f"Job {job} finished", check, timeout=180)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; player errors: {player.errors}") from None


def wait_recorded(admin: Api, ns: str, name: str, job: str, player: KubeletPlayer) -> JsonDict:
    """The BackupSchedule once the operator recorded ``job``'s outcome."""

    def check() -> JsonDict | None:
        obj = admin.get(path_of("backupschedules", ns, name))
        return obj if (obj.get("status") or {}).get("lastBackupJob") == job else None

    try:
        return wait_for(f"{job} recorded on {name}", check, timeout=60)
    except TimeoutError as exc:
        pods = admin.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        logs = {p["metadata"]["name"]: player.log_of(p["metadata"]["name"])[-2000:] for p in pods}
        raise AssertionError(f"{exc}; job logs: {logs}") from None


def run_by_hand(tools: Tools, plane: ControlPlane, ns: str, cronjob: str, job: str) -> None:
    """What the runbook tells a user to do for a backup now."""
    kubectl(
        tools, plane.admin_kubeconfig, "create", "job", f"--from=cronjob/{cronjob}", job, "-n", ns
    )


def dfm_backup(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dfm.cli", "backup", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_a_backup_schedule_backs_up_through_the_real_job_and_cronjob_controllers(
    control_plane: ControlPlane,
    admin: Api,
    tools: Tools,
    operator: OperatorProcess,
    namespace: str,
    database: str,
    restore_target: str,
    tmp_path: Path,
) -> None:
    ns = namespace
    stored = asyncio.run(store_events(database))
    # The job's URL holds a password (the test server trusts loopback and ignores it): it must
    # reach no status, Event, termination message or log.
    url = urlsplit(database)
    password = url.password or f"pw-{uuid.uuid4().hex}"
    netloc = f"{url.username or 'postgres'}:{password}@{url.hostname}:{url.port or 5432}"
    job_url = url._replace(netloc=netloc)
    admin.create(
        path_of("secrets", ns, group="v1"),
        {"metadata": {"name": "dfm-events-db"}, "stringData": {"url": urlunsplit(job_url)}},
    )
    pg_port = url.port or 5432
    player = KubeletPlayer(admin, ns, tmp_path / "kubelet", services=[pg_port]).start()
    schedule_path = path_of("backupschedules", ns, "nightly")
    try:
        # A claim that does not exist, without a size to create it with: said so.
        admin.create(
            path_of("backupschedules", ns),
            {
                "apiVersion": DFM,
                "kind": "BackupSchedule",
                "metadata": {"name": "nightly"},
                "spec": {
                    # Never during the test (29 February): its runs are started by hand.
                    "schedule": "0 0 29 2 *",
                    "databaseSecretRef": {"name": "dfm-events-db", "key": "url"},
                    "destination": {"pvc": {"claimName": "events-backups"}},
                },
            },
        )
        obj = wait_ready(admin, "backupschedules", ns, "nightly", "False", "ClaimNotFound")
        assert "destination.pvc.size" in condition(obj)["message"]
        # Given a size, the operator creates the claim; the player provisions a volume for it
        # and the real PersistentVolume controller binds them.
        admin.merge_patch(schedule_path, {"spec": {"destination": {"pvc": {"size": "1Gi"}}}})
        wait_ready(admin, "backupschedules", ns, "nightly", "True", "Scheduled")
        claim_path = path_of("persistentvolumeclaims", ns, "events-backups", group="v1")
        claim = wait_for(
            "the claim Bound",
            lambda: (
                (c := admin.find(claim_path) or {}).get("status", {}).get("phase") == "Bound" and c
            ),
        )
        assert "ownerReferences" not in claim["metadata"], "backups outlive their schedule"
        assert (
            claim["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "df-middleware-operator"
        )
        cronjob_path = path_of("cronjobs", ns, "nightly-backup", group="batch/v1")
        cronjob = admin.get(cronjob_path)
        assert cronjob["metadata"]["ownerReferences"][0]["kind"] == "BackupSchedule"

        # A backup now, as a user starts one.
        run_by_hand(tools, control_plane, ns, "nightly-backup", "nightly-by-hand-1")
        outcome, pod = the_job_finished(admin, ns, "nightly-by-hand-1", player)
        log = player.log_of(pod["metadata"]["name"])
        assert outcome == "Complete", log[-3000:]
        [container] = pod["status"]["containerStatuses"]
        summary = json.loads(container["state"]["terminated"]["message"])
        assert summary["ok"] is True
        # The run is the CronJob's (kubectl made the Job its child): its controller saw it end.
        wait_for(
            "the CronJob's lastSuccessfulTime",
            lambda: admin.get(cronjob_path).get("status", {}).get("lastSuccessfulTime"),
        )
        obj = wait_recorded(admin, ns, "nightly", "nightly-by-hand-1", player)
        status = obj["status"]
        backup = status["lastSuccessfulBackup"]
        assert backup["name"] == summary["name"]
        assert backup["name"].startswith("nightly-")
        assert backup["sha256"] == summary["sha256"]
        assert len(backup["sha256"]) == 64
        assert backup["sizeBytes"] == summary["sizeBytes"] > 0
        assert backup["location"] == "pvc://events-backups/nightly"
        assert backup["verification"] == "list"
        assert status["consecutiveFailures"] == 0
        assert "lastVerifiedTime" in status
        assert (condition(obj)["status"], condition(obj)["reason"]) == ("True", "BackupSucceeded")
        [event] = wait_for(
            "the BackupSucceeded Event",
            lambda: events_about(admin, ns, "nightly", "BackupSucceeded"),
        )
        assert event["type"] == "Normal"
        assert backup["name"] in event["message"]
        assert backup["sha256"][:12] in event["message"]

        # The backup is on the claim's volume: listed and restored as the runbook says, with
        # every event stored before it.
        directory = player.volume_of("events-backups") / "nightly"
        listed = json.loads(dfm_backup("list", str(directory), "--json").stdout)
        assert [(m["name"], m["sha256"]) for m in listed] == [(backup["name"], backup["sha256"])]
        dfm_backup(
            "restore", "--from", str(directory / backup["name"]), "--database-url", restore_target
        )
        assert asyncio.run(event_ids(restore_target)) == stored

        # A run that cannot reach its database fails: reported, and the last good backup kept.
        closed = job_url._replace(netloc=netloc.replace(f":{pg_port}", f":{free_port()}"))
        admin.merge_patch(
            path_of("secrets", ns, "dfm-events-db", group="v1"),
            {"data": {"url": base64.b64encode(urlunsplit(closed).encode()).decode()}},
        )
        run_by_hand(tools, control_plane, ns, "nightly-backup", "nightly-by-hand-2")
        outcome, pod = the_job_finished(admin, ns, "nightly-by-hand-2", player)
        assert outcome == "Failed"
        [container] = pod["status"]["containerStatuses"]
        terminated = container["state"]["terminated"]
        assert terminated["exitCode"] != 0
        assert json.loads(terminated["message"])["ok"] is False
        obj = wait_recorded(admin, ns, "nightly", "nightly-by-hand-2", player)
        assert obj["status"]["consecutiveFailures"] == 1
        assert obj["status"]["lastSuccessfulBackup"] == backup
        ready = condition(obj)
        assert (ready["status"], ready["reason"]) == ("False", "BackupFailed")
        assert ready["message"].startswith("backup failed: cannot connect to the database")
        [event] = wait_for(
            "the BackupFailed Event", lambda: events_about(admin, ns, "nightly", "BackupFailed")
        )
        assert event["type"] == "Warning"
        assert event["message"] == ready["message"]
        pods = admin.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        said = [json.dumps(obj), json.dumps(admin.get(f"/api/v1/namespaces/{ns}/events"))]
        said += [json.dumps(p["status"]) + player.log_of(p["metadata"]["name"]) for p in pods]
        assert len(pods) == 2
        assert not [text for text in said if password in text]

        # Suspended: the CronJob is, and Ready says so.
        admin.merge_patch(schedule_path, {"spec": {"suspend": True}})
        wait_ready(admin, "backupschedules", ns, "nightly", "False", "Suspended")
        assert admin.get(cronjob_path)["spec"]["suspend"] is True
        assert player.errors == []
    finally:
        player.stop()
