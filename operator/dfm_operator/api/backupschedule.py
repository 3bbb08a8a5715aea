"""BackupSchedule: logical backups of the event store to a PersistentVolumeClaim."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from dfm_operator.api.common import (
    DNS_SUBDOMAIN,
    ApiModel,
    CronSchedule,
    CustomResource,
    KindNames,
    Quantity,
    SecretKeyRef,
    Status,
    Timestamp,
    TimeZone,
)
from dfm_operator.constants import BACKUP_SCHEDULE


class PvcDestination(ApiModel):
    """A PersistentVolumeClaim for the backup files, created by the operator if missing."""

    claim_name: Annotated[
        str, Field(max_length=253, pattern=DNS_SUBDOMAIN, description="The claim's name.")
    ]
    size: Quantity = Field(default="10Gi", description="The claim's requested storage.")
    storage_class_name: str | None = Field(
        default=None, description="The claim's StorageClass (default: the cluster's default)."
    )


class Destination(ApiModel):
    """Where backup files are written."""

    pvc: PvcDestination


class Retention(ApiModel):
    """Which backup files are kept; older ones are pruned after each successful backup."""

    keep_last: Annotated[
        int, Field(ge=1, le=1000, description="How many of the newest backups to keep.")
    ] = 7


class BackupScheduleSpec(ApiModel):
    """When to back up which database, where to, and how many backups to keep."""

    schedule: CronSchedule
    time_zone: TimeZone = "UTC"
    suspend: bool = Field(default=False, description="Skip backups until set back to false.")
    database_secret_ref: SecretKeyRef = Field(description="The database URL, as a Secret key.")
    destination: Destination
    retention: Retention = Field(default_factory=Retention)


class BackupScheduleStatus(Status):
    """The last backup's outcome."""

    last_backup_time: Timestamp | None = Field(
        default=None, description="When a backup was last attempted."
    )
    last_successful_backup: Timestamp | None = Field(
        default=None, description="When a backup last succeeded (written and verified)."
    )
    last_backup_size_bytes: Annotated[
        int | None, Field(ge=0, description="Size of the last successful backup file.")
    ] = None
    last_backup_file: str | None = Field(
        default=None, description="The last successful backup's file name on the volume."
    )


class BackupSchedule(CustomResource):
    """Logical backups of the event store: a CronJob running `dfm backup run` (pg_dump custom
    format, checksummed, verified with pg_restore --list) and the volume it writes to."""

    names: ClassVar[KindNames] = KindNames(BACKUP_SCHEDULE, "backupschedules", ("bks",))

    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["BackupSchedule"] = "BackupSchedule"
    spec: BackupScheduleSpec
    status: BackupScheduleStatus | None = None
