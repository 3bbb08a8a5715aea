"""BackupSchedule's pure parts: the CronJob and claim it builds, how a finished Job is read, and
what its outcome does to status, Ready and Events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import pytest

from dfm import cli
from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule, BackupScheduleStatus
from dfm_operator.builders.backupschedule import (
    build_backup_cronjob,
    build_backup_pvc,
    build_children,
    location,
)
from dfm_operator.services.backupschedule import plan_outcome, ready_condition
from dfm_operator.services.jobs import JobOutcome, is_newer, job_outcome
from dfm_operator.settings import OperatorSettings
from webhook_server.backup.manifest import JobSummary, VerifyMethod

SETTINGS = OperatorSettings()
T0 = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)


def schedule(**spec: Any) -> BackupSchedule:
    return BackupSchedule.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "BackupSchedule",
            "metadata": {"name": "events-nightly", "namespace": "payments", "uid": "u-1"},
            "spec": {
                "schedule": "30 2 * * *",
                "timeZone": "Europe/Berlin",
                "databaseSecretRef": {"name": "events-db", "key": "url"},
                "destination": {"pvc": {"claimName": "events-backups", "size": "20Gi"}},
                "retention": {"keepLast": 7, "maxAge": "720h"},
                **spec,
            },
        }
    )


S3 = {
    "s3": {
        "bucket": "acme-backups",
        "endpoint": "https://minio.example:9000",
        "region": "eu-central-1",
        "forcePathStyle": True,
        "credentialsSecretRef": {"name": "s3-creds"},
    }
}


def test_the_cronjob_runs_dfm_backup_under_the_restricted_profile() -> None:
    cronjob = build_backup_cronjob(schedule(verify="restore"), SETTINGS)
    kubernetes_validate.validate(cronjob, "1.31.0", strict=True)
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == (
        "30 2 * * *",
        "Europe/Berlin",
        False,
    )
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (0, 6 * 3600)
    pod = job["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    args = container["args"]
    assert args[:2] == ["backup", "run"]
    assert args[args.index("--to") + 1] == "/backups/events-nightly"
    assert args[args.index("--verify") + 1] == "restore"
    assert args[args.index("--keep-last") + 1] == "7"
    assert args[args.index("--max-age") + 1] == "720h"
    assert args[args.index("--database-url-file") + 1] == "/etc/dfm/database/url"
    # The arguments are the CLI's own.
    parsed = cli.parser().parse_args(args)
    assert parsed.backup_command == "run"
    owner = cronjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("BackupSchedule", "u-1", True)
    labels = cronjob["metadata"]["labels"]
    assert labels[c.LABEL_BACKUP_SCHEDULE] == "events-nightly"
    assert labels[c.LABEL_COMPONENT] == "backup"
    # The Jobs and Pods carry the labels the operator's Job watch selects on.
    assert spec["jobTemplate"]["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.MANAGED_BY


def test_s3_credentials_come_from_the_secret_never_the_args() -> None:
    cronjob = build_backup_cronjob(schedule(destination=S3), SETTINGS)
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--to") + 1] == "s3://acme-backups/payments/events-nightly"
    assert args[args.index("--s3-endpoint") + 1] == "https://minio.example:9000"
    assert "--s3-path-style" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-creds",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert location(schedule(destination=S3)) == "s3://acme-backups/payments/events-nightly"
    assert build_backup_pvc(schedule(destination=S3), SETTINGS) is None


def test_the_claim_outlives_the_schedule_unless_asked() -> None:
    pvc = build_backup_pvc(schedule(), SETTINGS)
    assert pvc is not None
    kubernetes_validate.validate(pvc, "1.31.0", strict=True)
    assert "ownerReferences" not in pvc["metadata"]
    assert pvc["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.MANAGED_BY
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    owned = build_backup_pvc(
        schedule(
            destination={"pvc": {"claimName": "b", "size": "1Gi", "deleteWithSchedule": True}}
        ),
        SETTINGS,
    )
    assert owned is not None
    assert owned["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    # Without a size the claim is the user's: nothing is built for it.
    existing = schedule(destination={"pvc": {"claimName": "theirs"}})
    assert [o["kind"] for o in build_children(existing, SETTINGS)] == ["CronJob"]


# --- reading Jobs -----------------------------------------------------------------------------


def job(condition: str | None, **status: Any) -> dict[str, Any]:
    conditions = (
        [{"type": condition, "status": "True", "reason": status.pop("reason", "")}]
        if condition
        else []
    )
    return {
        "metadata": {
            "name": "events-nightly-backup-29400000",
            "namespace": "payments",
            "uid": "job-uid",
            "labels": {c.LABEL_BACKUP_SCHEDULE: "events-nightly"},
        },
        "status": {"startTime": "2026-11-27T02:30:00Z", "conditions": conditions, **status},
    }


def pod(message: str | None, exit_code: int, reason: str = "Completed") -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "reason": reason, "finishedAt": "2026-11-27T02:31:00Z"}
    if message is not None:
        terminated["message"] = message
    return {
        "metadata": {"ownerReferences": [{"uid": "job-uid"}]},
        "status": {"containerStatuses": [{"name": "backup", "state": {"terminated": terminated}}]},
    }


SUMMARY = JobSummary(
    ok=True,
    name="events-nightly-20261127T013000Z",
    size_bytes=5 * 1024 * 1024,
    sha256="ab" * 32,
    verification=VerifyMethod.RESTORE,
    verified_at=datetime(2026, 11, 27, 2, 31, tzinfo=UTC),
    finished_at=datetime(2026, 11, 27, 2, 31, tzinfo=UTC),
    kept=7,
    pruned=1,
)


def test_a_running_job_has_no_outcome_and_a_finished_one_has() -> None:
    assert job_outcome(job(None), [], "backup") is None
    outcome = job_outcome(
        job("Complete", completionTime="2026-11-27T02:31:05Z"),
        [pod(SUMMARY.to_message(), 0), {"metadata": {"ownerReferences": [{"uid": "other"}]}}],
        "backup",
    )
    assert outcome is not None
    assert outcome.succeeded
    assert outcome.termination_message == SUMMARY.to_message()
    assert outcome.started_at == T0
    oom = job_outcome(
        job("Failed", reason="BackoffLimitExceeded"), [pod(None, 137, "OOMKilled")], "backup"
    )
    assert oom is not None
    assert (oom.succeeded, oom.reason, oom.exit_code) == (False, "OOMKilled", 137)


def outcome(succeeded: bool, summary: JobSummary | None, **extra: Any) -> JobOutcome:
    return JobOutcome(
        namespace="payments",
        job=extra.get("job", "events-nightly-backup-29400000"),
        labels={c.LABEL_BACKUP_SCHEDULE: "events-nightly"},
        started_at=extra.get("started_at", T0),
        finished_at=T0,
        succeeded=succeeded,
        reason=extra.get("reason", "Completed" if succeeded else "BackoffLimitExceeded"),
        message=extra.get("message", ""),
        termination_message=summary.to_message() if summary else None,
        exit_code=0 if succeeded else 1,
    )


def test_a_success_records_the_backup() -> None:
    plan = plan_outcome(
        schedule(), BackupScheduleStatus(consecutive_failures=2), outcome(True, SUMMARY)
    )
    assert plan.result == "success"
    assert plan.status.consecutive_failures == 0
    info = plan.status.last_successful_backup
    assert info is not None
    assert (info.name, info.size_bytes, info.sha256) == (
        SUMMARY.name,
        SUMMARY.size_bytes,
        SUMMARY.sha256,
    )
    assert info.location == "pvc://events-backups/events-nightly"
    assert plan.status.last_verified_time == SUMMARY.verified_at
    assert (plan.condition.status, plan.condition.reason) == (True, "BackupSucceeded")
    [(kind, reason, message)] = plan.events
    assert (kind, reason) == ("Normal", "BackupSucceeded")
    assert "5.0 MiB" in message
    assert "1 old backup(s) deleted" in message


@pytest.mark.parametrize(
    ("summary", "reason", "words"),
    [
        (
            JobSummary(ok=False, name="n", stage="verify", error="pg_restore failed: bad block"),
            "VerifyFailed",
            "could not be verified, so it was not kept: pg_restore failed",
        ),
        (
            JobSummary(ok=False, name="n", stage="connect", error="cannot connect"),
            "BackupFailed",
            "backup failed: cannot connect (connect)",
        ),
        (None, "BackupFailed", "Job events-nightly-backup-29400000 failed: DeadlineExceeded"),
    ],
)
def test_a_failure_says_why_and_counts(summary: JobSummary | None, reason: str, words: str) -> None:
    plan = plan_outcome(
        schedule(),
        BackupScheduleStatus(consecutive_failures=1),
        outcome(False, summary, reason="DeadlineExceeded"),
    )
    assert plan.status.consecutive_failures == 2
    assert (plan.condition.status, plan.condition.reason) == (False, reason)
    assert words in plan.condition.message
    assert plan.events == [("Warning", reason, plan.condition.message)]


def test_ready_follows_suspend_failures_and_the_last_success() -> None:
    assert ready_condition(schedule(), BackupScheduleStatus()).reason == "Scheduled"
    assert ready_condition(schedule(suspend=True), BackupScheduleStatus()).reason == "Suspended"
    recorded = plan_outcome(schedule(), BackupScheduleStatus(), outcome(True, SUMMARY)).status
    assert ready_condition(schedule(), recorded).reason == "BackupSucceeded"


def test_outcomes_are_recorded_once_and_in_order() -> None:
    first = outcome(True, SUMMARY)
    assert is_newer(first, None, None)
    assert not is_newer(first, T0, first.job)
    later = outcome(
        True, SUMMARY, job="events-nightly-backup-29400060", started_at=T0.replace(hour=3)
    )
    assert is_newer(later, T0, first.job)
    assert not is_newer(first, later.started_at, later.job)
