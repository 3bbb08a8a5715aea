"""The custom resources as pydantic models: the single source of truth for the CRDs."""

from dfm_operator.api.backupschedule import BackupSchedule, BackupScheduleSpec, BackupScheduleStatus
from dfm_operator.api.common import (
    Condition,
    ConditionStatus,
    CustomResource,
    KindNames,
    LocalObjectRef,
    ObjectMeta,
    SecretKeyRef,
    Status,
    parse_duration,
)
from dfm_operator.api.managedsecret import ManagedSecret, ManagedSecretSpec, ManagedSecretStatus
from dfm_operator.api.syncschedule import SyncSchedule, SyncScheduleSpec, SyncScheduleStatus
from dfm_operator.api.webhooksource import (
    ForwardStatus,
    WebhookSource,
    WebhookSourceSpec,
    WebhookSourceStatus,
)

KINDS: tuple[type[CustomResource], ...] = (
    WebhookSource,
    ManagedSecret,
    SyncSchedule,
    BackupSchedule,
)
"""Every kind the operator serves, in the order CRDs are listed."""

__all__ = [
    "KINDS",
    "BackupSchedule",
    "BackupScheduleSpec",
    "BackupScheduleStatus",
    "Condition",
    "ConditionStatus",
    "CustomResource",
    "ForwardStatus",
    "KindNames",
    "LocalObjectRef",
    "ManagedSecret",
    "ManagedSecretSpec",
    "ManagedSecretStatus",
    "ObjectMeta",
    "SecretKeyRef",
    "Status",
    "SyncSchedule",
    "SyncScheduleSpec",
    "SyncScheduleStatus",
    "WebhookSource",
    "WebhookSourceSpec",
    "WebhookSourceStatus",
    "parse_duration",
]
