"""The real operator reconciling BackupSchedules against the emulated Kubernetes API.

The emulator has no CronJob controller and no kubelet: the test plays both, creating the Job a
CronJob would (from its jobTemplate) and its Pod, and reporting them finished with the
termination message `dfm backup run` writes.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from kube_emulator import BACKUPSCHEDULES, DfmKubernetesEmulator
from tests.kube.conftest_helpers import k8s, kopf_running, kubeconfig
from tests.kube.dfm import OPERATOR, create_secret, install_crds, ready
from webhook_server.backup.manifest import JobSummary, VerifyMethod

__all__ = ["k8s", "kubeconfig"]  # pytest fixtures, imported for this module

NS = "payments"
SECRETS = "v1/secrets"
PVCS = "v1/persistentvolumeclaims"
CRONJOBS = "batch/v1/cronjobs"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"


def backup_schedule(name: str = "nightly", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "BackupSchedule",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "schedule": "30 2 * * *",
            "databaseSecretRef": {"name": "events-db", "key": "url"},
            "destination": {"pvc": {"claimName": "events-backups", "size": "5Gi"}},
            "verify": "restore",
            **spec,
        },
    }


@pytest.fixture
async def cluster(k8s: DfmKubernetesEmulator, kubeconfig: Path) -> DfmKubernetesEmulator:
    install_crds(k8s)
    await create_secret(k8s, NS, "events-db", url="postgresql://dfm:pw@db.payments.svc/events")
    return k8s


@pytest.fixture
async def operator(cluster: DfmKubernetesEmulator) -> AsyncIterator[KopfRunner]:
    async with kopf_running(OPERATOR) as runner:
        yield runner
    assert runner.exception is None
    assert runner.exit_code == 0


async def wait_ready(
    k8s: DfmKubernetesEmulator, status: str, reason: str, name: str = "nightly"
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = k8s.get_object(BACKUPSCHEDULES, NS, name)
        cond = ready(obj)
        return obj if (cond.get("status"), cond.get("reason")) == (status, reason) else None

    return await k8s.wait_for(check, seconds=20, what=f"{name} Ready={status}/{reason}")


async def run_job(
    k8s: DfmKubernetesEmulator,
    job_name: str,
    *,
    succeeded: bool,
    summary: JobSummary | None,
    start: str,
    cronjob: str = "nightly-backup",
) -> None:
    """What the CronJob controller and kubelet do for one run: a Job from the jobTemplate, its
    Pod, the container's termination message, the Job's terminal condition."""
    template = k8s.get_object(CRONJOBS, NS, cronjob)
    assert template is not None
    job_template = template["spec"]["jobTemplate"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": NS,
            "labels": dict(job_template["metadata"]["labels"]),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cronjob,
                    "uid": template["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": copy.deepcopy(job_template["spec"]),
    }
    created = await k8s.create(JOBS, job, NS)
    pod_labels = {
        **job_template["spec"]["template"]["metadata"]["labels"],
        "batch.kubernetes.io/job-name": job_name,
        "job-name": job_name,
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job_name}-x1",
            "namespace": NS,
            "labels": pod_labels,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job_name,
                    "uid": created["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": copy.deepcopy(job_template["spec"]["template"]["spec"]),
    }
    await k8s.create(PODS, pod, NS)
    terminated: dict[str, Any] = {
        "exitCode": 0 if succeeded else 1,
        "reason": "Completed" if succeeded else "Error",
        "finishedAt": start.replace("02:30", "02:31"),
    }
    if summary is not None:
        terminated["message"] = summary.to_message()
    await k8s.put_status(
        PODS,
        NS,
        f"{job_name}-x1",
        {
            "phase": "Succeeded" if succeeded else "Failed",
            "containerStatuses": [{"name": "backup", "state": {"terminated": terminated}}],
        },
    )
    condition = {
        "type": "Complete" if succeeded else "Failed",
        "status": "True",
        "reason": "Completed" if succeeded else "BackoffLimitExceeded",
        "message": "" if succeeded else "Job has reached the specified backoff limit",
        "lastTransitionTime": start.replace("02:30", "02:31"),
    }
    status: dict[str, Any] = {"startTime": start, "conditions": [condition]}
    if succeeded:
        status["completionTime"] = condition["lastTransitionTime"]
        status["succeeded"] = 1
    else:
        status["failed"] = 1
    await k8s.put_status(JOBS, NS, job_name, status)


OK = JobSummary(
    ok=True,
    name="nightly-20261127T023000Z",
    size_bytes=3 * 1024 * 1024,
    sha256="cd" * 32,
    verification=VerifyMethod.RESTORE,
    verified_at="2026-11-27T02:30:50Z",  # type: ignore[arg-type]
    finished_at="2026-11-27T02:31:00Z",  # type: ignore[arg-type]
    kept=3,
    pruned=0,
)


async def test_cronjob_and_claim_created_suspend_and_job_outcomes(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    await k8s.create(BACKUPSCHEDULES, backup_schedule(), NS)
    obj = await wait_ready(k8s, "True", "Scheduled")
    uid = obj["metadata"]["uid"]

    cronjob = k8s.get_object(CRONJOBS, NS, "nightly-backup")
    assert cronjob is not None
    assert cronjob["metadata"]["ownerReferences"][0]["uid"] == uid
    assert cronjob["spec"]["suspend"] is False
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    claim = k8s.get_object(PVCS, NS, "events-backups")
    assert claim is not None
    assert not claim["metadata"].get("ownerReferences")  # outlives the schedule
    assert claim["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "df-middleware-operator"

    # Suspend reaches the CronJob and Ready.
    await k8s.patch_object(BACKUPSCHEDULES, NS, "nightly", {"spec": {"suspend": True}})
    await wait_ready(k8s, "False", "Suspended")
    await k8s.wait_for(
        lambda: (k8s.get_object(CRONJOBS, NS, "nightly-backup") or {})["spec"]["suspend"],
        what="the CronJob suspended",
    )
    await k8s.patch_object(BACKUPSCHEDULES, NS, "nightly", {"spec": {"suspend": False}})
    await wait_ready(k8s, "True", "Scheduled")

    # A successful run reaches the status and an Event.
    await run_job(
        k8s, "nightly-backup-29400150", succeeded=True, summary=OK, start="2026-11-27T02:30:00Z"
    )
    obj = await wait_ready(k8s, "True", "BackupSucceeded")
    status = obj["status"]
    assert status["lastSuccessfulBackup"] == {
        "name": OK.name,
        "location": "pvc://events-backups/nightly",
        "sizeBytes": OK.size_bytes,
        "sha256": OK.sha256,
        "verification": "restore",
    }
    assert status["lastSuccessfulTime"] == "2026-11-27T02:31:00Z"
    assert status["lastVerifiedTime"] == "2026-11-27T02:30:50Z"
    assert status["lastBackupJob"] == "nightly-backup-29400150"
    assert status["consecutiveFailures"] == 0
    [event] = await k8s.wait_for(
        lambda: k8s.events(NS, name="nightly", reason="BackupSucceeded"), what="BackupSucceeded"
    )
    assert event["type"] == "Normal"
    assert "3.0 MiB" in event["message"]

    # A run whose verification failed: VerifyFailed, counted, announced.
    failed = JobSummary(
        ok=False,
        name="nightly-20261128T023000Z",
        stage="verify",
        error="the restored copy differs from the database: public.t: 1 rows, expected 2",
    )
    await run_job(
        k8s, "nightly-backup-29401590", succeeded=False, summary=failed,
        start="2026-11-28T02:30:00Z",
    )  # fmt: skip
    obj = await wait_ready(k8s, "False", "VerifyFailed")
    assert obj["status"]["consecutiveFailures"] == 1
    assert "restored copy differs" in ready(obj)["message"]
    # The last good backup stays what it was.
    assert obj["status"]["lastSuccessfulBackup"]["name"] == OK.name
    [warning] = await k8s.wait_for(
        lambda: k8s.events(NS, name="nightly", reason="VerifyFailed"), what="VerifyFailed"
    )
    assert warning["type"] == "Warning"

    # A run killed without a summary (its deadline): BackupFailed, from the Job's own word.
    await run_job(
        k8s, "nightly-backup-29403030", succeeded=False, summary=None,
        start="2026-11-29T02:30:00Z",
    )  # fmt: skip
    obj = await wait_ready(k8s, "False", "BackupFailed")
    assert obj["status"]["consecutiveFailures"] == 2
    assert "BackoffLimitExceeded" in ready(obj)["message"]

    # A spec change does not forget the failure.
    await k8s.patch_object(BACKUPSCHEDULES, NS, "nightly", {"spec": {"timeout": "2h"}})
    await k8s.wait_for(
        lambda: (
            (k8s.get_object(CRONJOBS, NS, "nightly-backup") or {})["spec"]["jobTemplate"]["spec"][
                "activeDeadlineSeconds"
            ]
            == 7200
        ),
        what="the new timeout",
    )
    assert ready(k8s.get_object(BACKUPSCHEDULES, NS, "nightly"))["reason"] == "BackupFailed"

    # Deleting the schedule takes the CronJob (garbage collection), never the claim.
    await k8s.delete_object(BACKUPSCHEDULES, NS, "nightly")
    await k8s.wait_for(
        lambda: k8s.get_object(CRONJOBS, NS, "nightly-backup") is None, what="CronJob collected"
    )
    assert k8s.get_object(PVCS, NS, "events-backups") is not None


async def test_a_missing_secret_holds_the_schedule_until_it_appears(
    cluster: DfmKubernetesEmulator, operator: KopfRunner
) -> None:
    k8s = cluster
    spec = {
        "destination": {
            "s3": {"bucket": "acme-backups", "credentialsSecretRef": {"name": "s3-creds"}}
        }
    }
    await k8s.create(BACKUPSCHEDULES, backup_schedule("offsite", **spec), NS)
    obj = await wait_ready(k8s, "False", "SecretNotFound", name="offsite")
    assert "s3-creds" in ready(obj)["message"]
    assert k8s.get_object(CRONJOBS, NS, "offsite-backup") is None
    await k8s.wait_for(
        lambda: k8s.events(NS, name="offsite", reason="SecretNotFound"), what="a Warning"
    )
    # Created, but with only one of the two keys: still not usable.
    await create_secret(k8s, NS, "s3-creds", AWS_ACCESS_KEY_ID="AKIA")
    obj = await k8s.wait_for(
        lambda: (
            "AWS_SECRET_ACCESS_KEY"
            in ready(k8s.get_object(BACKUPSCHEDULES, NS, "offsite")).get("message", "")
        ),
        what="the missing key named",
    )
    await k8s.patch_object(
        SECRETS,
        NS,
        "s3-creds",
        {"stringData": {"AWS_SECRET_ACCESS_KEY": "wJalr-never-in-the-cronjob"}},
    )
    await wait_ready(k8s, "True", "Scheduled", name="offsite")
    cronjob = k8s.get_object(CRONJOBS, NS, "offsite-backup")
    assert cronjob is not None
    assert "wJalr-never-in-the-cronjob" not in yaml.safe_dump(cronjob)
    assert k8s.get_object(PVCS, NS, "events-backups") is None
