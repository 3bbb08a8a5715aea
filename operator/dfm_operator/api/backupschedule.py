"""BackupSchedule: scheduled, verified logical backups of the event store, to a
PersistentVolumeClaim or S3-compatible object storage."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from dfm_operator.api.common import (
    DNS_SUBDOMAIN,
    HTTP_URL,
    ApiModel,
    CelRule,
    CronSchedule,
    CustomResource,
    Duration,
    KindNames,
    LocalObjectRef,
    Quantity,
    SecretKeyRef,
    Status,
    StatusModel,
    Timestamp,
    TimeZone,
    cel_rules,
)
from dfm_operator.api.names import BACKUP_SCHEDULE_NAME, NameRule
from dfm_operator.constants import BACKUP_SCHEDULE
from webhook_server.backup.manifest import VerifyMethod

# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens.
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class PvcDestination(ApiModel):
    """A PersistentVolumeClaim for the backups; each schedule writes into a directory of its
    own name on it."""

    claim_name: Annotated[
        str, Field(max_length=253, pattern=DNS_SUBDOMAIN, description="The claim's name.")
    ]
    size: Quantity | None = Field(
        default=None,
        description="Create the claim with this size if it does not exist. Without it the "
        "claim must exist (Ready=False ClaimNotFound until it does).",
    )
    storage_class_name: str | None = Field(
        default=None,
        description="The created claim's StorageClass (default: the cluster's default).",
    )
    delete_with_schedule: bool = Field(
        default=False,
        description="Give the created claim an ownerReference to the schedule, so deleting the "
        "schedule deletes the claim and every backup on it. By default the claim, and the "
        "backups, outlive the schedule.",
    )


class S3Destination(ApiModel):
    """S3-compatible object storage (AWS S3, MinIO, Ceph RGW, GCS's S3 API, …)."""

    bucket: Annotated[str, Field(pattern=BUCKET_PATTERN, description="The bucket (must exist).")]
    prefix: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[^/].*[^/]$|^[^/]$",
        description="The key prefix (default: <namespace>/<name>).",
    )
    endpoint: str | None = Field(
        default=None,
        pattern=HTTP_URL,
        max_length=2048,
        description="The S3 API's URL (default: AWS).",
    )
    region: str | None = Field(default=None, max_length=64, description="The bucket's region.")
    force_path_style: bool = Field(
        default=False,
        description="Address the bucket as a URL path (MinIO and most self-hosted stores).",
    )
    credentials_secret_ref: LocalObjectRef = Field(
        description="A Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_SESSION_TOKEN)."
    )


class Destination(ApiModel):
    """Where backups are written: exactly one of pvc or s3."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule("has(self.pvc) != has(self.s3)", "set exactly one of pvc or s3")
        )
    )

    pvc: PvcDestination | None = None
    s3: S3Destination | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.pvc is None) == (self.s3 is None):
            raise ValueError("set exactly one of pvc or s3")
        return self


class Retention(ApiModel):
    """Which backups are kept after each successful backup: those any rule keeps. The newest
    backup is never deleted; only complete, verified backups of this schedule are counted."""

    keep_last: Annotated[
        int | None, Field(ge=1, le=1000, description="Keep the N newest backups.")
    ] = 7
    max_age: Duration | None = Field(
        default=None, description="Keep every backup younger than this, e.g. 720h."
    )


class BackupScheduleSpec(ApiModel):
    """When to back up which database, where to, how to verify, and what to keep."""

    schedule: CronSchedule
    time_zone: TimeZone = "UTC"
    suspend: bool = Field(default=False, description="Skip backups until set back to false.")
    database_secret_ref: SecretKeyRef = Field(
        description="The database to back up: a postgresql:// URL, as a Secret key."
    )
    destination: Destination
    verify: VerifyMethod = Field(
        default=VerifyMethod.LIST,
        description="list: pg_restore reads the archive's table of contents and every data "
        "block. restore: also restores it into a scratch database on the same server and "
        "compares row counts and content checksums (the database user needs CREATEDB).",
    )
    retention: Retention = Field(default_factory=Retention)
    timeout: Duration = Field(
        default="6h", description="A backup still running after this is stopped and failed."
    )
    resources: dict[str, Any] | None = Field(
        default=None,
        description="The backup container's resources (requests and limits), as in a Pod.",
    )


class BackupInfo(StatusModel):
    """One backup, as the job reported it."""

    name: str = Field(description="The backup's name (<schedule>-<UTC time>).")
    location: str = Field(description="Where it is: pvc://<claim>/<dir> or s3://<bucket>/<prefix>.")
    size_bytes: Annotated[int, Field(ge=0, description="The dump's size.")]
    sha256: str = Field(description="The dump's SHA-256, also in its manifest.")
    verification: VerifyMethod = Field(description="How it was verified.")


class BackupScheduleStatus(Status):
    """The last backup's outcome, from the Jobs the CronJob ran."""

    last_backup_time: Timestamp | None = Field(
        default=None, description="When the last backup (successful or not) started."
    )
    last_backup_job: str | None = Field(
        default=None, description="The Job of the last backup whose outcome is recorded."
    )
    last_successful_time: Timestamp | None = Field(
        default=None, description="When the last successful (written and verified) backup ended."
    )
    last_successful_backup: BackupInfo | None = None
    last_verified_time: Timestamp | None = Field(
        default=None, description="When a backup last passed verification."
    )
    consecutive_failures: Annotated[
        int, Field(ge=0, description="Failed backups since the last success.")
    ] = 0


class BackupSchedule(CustomResource):
    """Logical backups of the event store: a CronJob running `dfm backup run` (pg_dump custom
    format of one snapshot, SHA-256 and a manifest, verified before it counts, retention), and
    the volume it writes to when it is a PersistentVolumeClaim."""

    names: ClassVar[KindNames] = KindNames(BACKUP_SCHEDULE, "backupschedules", ("bks",))
    name_rule: ClassVar[NameRule] = BACKUP_SCHEDULE_NAME

    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["BackupSchedule"] = "BackupSchedule"
    spec: BackupScheduleSpec
    status: BackupScheduleStatus | None = None
