"""BackupSchedule -> its CronJob (running `dfm backup run`) and, when asked for, its
PersistentVolumeClaim. Pure: the same inputs give the same dicts."""

from __future__ import annotations

from typing import Any

from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule
from dfm_operator.api.common import parse_duration
from dfm_operator.builders.meta import object_meta, owner_reference, standard_labels
from dfm_operator.builders.pods import (
    build_cronjob,
    restricted_container_security,
    restricted_pod_security,
)
from dfm_operator.settings import OperatorSettings

DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
DATABASE_DIR = "/etc/dfm/database"
WORK_DIR = "/work"
# A run missed by more than this (the controller was down) is skipped, not started late; without
# a deadline a CronJob that missed 100 runs stops scheduling altogether.
STARTING_DEADLINE_SECONDS = 3600
# What S3 credentials Secrets hold: the names every S3 tool reads from its environment.
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)


def cronjob_name(schedule: BackupSchedule) -> str:
    return f"{schedule.metadata.name}-backup"


def labels(schedule: BackupSchedule, settings: OperatorSettings) -> dict[str, str]:
    return standard_labels(
        schedule.metadata.name,
        c.BACKUP_APP_NAME,
        c.BACKUP_COMPONENT,
        settings.version,
        {c.LABEL_BACKUP_SCHEDULE: schedule.metadata.name},
    )


def s3_prefix(schedule: BackupSchedule) -> str:
    s3 = schedule.spec.destination.s3
    assert s3 is not None
    return s3.prefix or f"{schedule.metadata.namespace}/{schedule.metadata.name}"


def location(schedule: BackupSchedule) -> str:
    """Where the backups are, for status and Events: pvc://claim/dir or s3://bucket/prefix."""
    destination = schedule.spec.destination
    if destination.pvc is not None:
        return f"pvc://{destination.pvc.claim_name}/{schedule.metadata.name}"
    return f"s3://{destination.s3.bucket}/{s3_prefix(schedule)}" if destination.s3 else ""


def referenced_secrets(schedule: BackupSchedule) -> list[str]:
    """The Secrets the job mounts (the operator waits for them to exist)."""
    names = {schedule.spec.database_secret_ref.name}
    if schedule.spec.destination.s3 is not None:
        names.add(schedule.spec.destination.s3.credentials_secret_ref.name)
    return sorted(names)


def _args(schedule: BackupSchedule) -> list[str]:
    spec = schedule.spec
    db = spec.database_secret_ref
    args = [
        "backup",
        "run",
        "--database-url-file",
        f"{DATABASE_DIR}/{db.key}",
        "--name-prefix",
        schedule.metadata.name,
        "--verify",
        spec.verify.value,
        "--summary-file",
        c.TERMINATION_LOG,
    ]
    if spec.retention.keep_last is not None:
        args += ["--keep-last", str(spec.retention.keep_last)]
    if spec.retention.max_age is not None:
        args += ["--max-age", spec.retention.max_age]
    if spec.destination.pvc is not None:
        args += ["--to", f"{c.BACKUPS_DIR}/{schedule.metadata.name}"]
    elif spec.destination.s3 is not None:
        s3 = spec.destination.s3
        args += ["--to", f"s3://{s3.bucket}/{s3_prefix(schedule)}", "--workdir", WORK_DIR]
        if s3.endpoint:
            args += ["--s3-endpoint", s3.endpoint]
        if s3.region:
            args += ["--s3-region", s3.region]
        if s3.force_path_style:
            args.append("--s3-path-style")
    return args


def _env(schedule: BackupSchedule) -> list[dict[str, Any]]:
    s3 = schedule.spec.destination.s3
    if s3 is None:
        return []
    secret = s3.credentials_secret_ref.name
    env: list[dict[str, Any]] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in S3_CREDENTIAL_KEYS
    ]
    env += [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for key in S3_OPTIONAL_KEYS
    ]
    if s3.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": s3.region})
    return env


def _volumes(schedule: BackupSchedule) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "database", "secret": {"secretName": schedule.spec.database_secret_ref.name}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
        {"name": "database", "mountPath": DATABASE_DIR, "readOnly": True},
    ]
    pvc = schedule.spec.destination.pvc
    if pvc is not None:
        volumes.append({"name": "backups", "persistentVolumeClaim": {"claimName": pvc.claim_name}})
        mounts.append({"name": "backups", "mountPath": c.BACKUPS_DIR})
    else:
        # An S3 backup is dumped and verified here before it is uploaded: node-local storage
        # of the dump's size.
        volumes.append({"name": "work", "emptyDir": {}})
        mounts.append({"name": "work", "mountPath": WORK_DIR})
    return volumes, mounts


def build_backup_cronjob(schedule: BackupSchedule, settings: OperatorSettings) -> dict[str, Any]:
    """The CronJob: concurrency Forbid (two dumps of one database at once help nobody), one
    attempt per run (a failure is reported, and the next run is the retry), the summary in the
    container's termination message."""
    volumes, mounts = _volumes(schedule)
    container = {
        "name": c.BACKUP_COMPONENT,
        "image": settings.receiver_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": _args(schedule),
        "env": _env(schedule),
        "resources": schedule.spec.resources or DEFAULT_RESOURCES,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": c.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    pod_spec = {
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    own = labels(schedule, settings)
    return build_cronjob(
        metadata=object_meta(schedule, cronjob_name(schedule), own),
        pod_labels=own,
        schedule=schedule.spec.schedule,
        time_zone=schedule.spec.time_zone,
        suspend=schedule.spec.suspend,
        concurrency_policy="Forbid",
        pod_spec=pod_spec,
        starting_deadline_seconds=STARTING_DEADLINE_SECONDS,
        active_deadline_seconds=int(parse_duration(schedule.spec.timeout).total_seconds()),
        backoff_limit=0,
    )


def build_backup_pvc(schedule: BackupSchedule, settings: OperatorSettings) -> dict[str, Any] | None:
    """The claim to create when ``destination.pvc.size`` is given, else None.

    It carries the standard labels, but an ownerReference only with ``deleteWithSchedule``:
    backups must outlive a deleted (or re-created) schedule unless the user asked otherwise.
    """
    pvc = schedule.spec.destination.pvc
    if pvc is None or pvc.size is None:
        return None
    meta: dict[str, Any] = {
        "name": pvc.claim_name,
        "namespace": schedule.metadata.namespace,
        "labels": standard_labels(
            schedule.metadata.name,
            c.BACKUP_APP_NAME,
            "backup-storage",
            settings.version,
            {c.LABEL_BACKUP_SCHEDULE: schedule.metadata.name},
        ),
    }
    if pvc.delete_with_schedule:
        meta["ownerReferences"] = [owner_reference(schedule)]
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": pvc.size}},
    }
    if pvc.storage_class_name:
        spec["storageClassName"] = pvc.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def build_children(schedule: BackupSchedule, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Everything `dfm render` shows for a BackupSchedule (the claim first: the job mounts it)."""
    pvc = build_backup_pvc(schedule, settings)
    return [*([pvc] if pvc else []), build_backup_cronjob(schedule, settings)]
