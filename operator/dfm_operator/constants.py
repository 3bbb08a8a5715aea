"""Names shared across the control plane: API group, kinds, labels, condition types."""

from webhook_server.sync.summary import SYNCED, TOKEN_UNAVAILABLE

GROUP = "dfm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

WEBHOOK_SOURCE = "WebhookSource"
MANAGED_SECRET = "ManagedSecret"
SYNC_SCHEDULE = "SyncSchedule"
BACKUP_SCHEDULE = "BackupSchedule"

DEFAULT_SECRET_KEY = "secret"
DEFAULT_NAMESPACE = "default"

# Labels and annotations every child carries (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/)
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_SOURCE = f"{GROUP}/webhooksource"
PART_OF = "df-middleware"
MANAGED_BY = "df-middleware-operator"
RECEIVER_NAME = "df-middleware-receiver"
RECEIVER_COMPONENT = "receiver"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
LABEL_SYNC = f"{GROUP}/syncschedule"
SYNC_NAME = "df-middleware-sync"
SYNC_COMPONENT = "sync"
FIELD_MANAGER = "df-middleware-operator"

# Paths inside a receiver pod
RECEIVER_PORT = 8080
CONFIG_DIR = "/etc/dfm/config"
CONFIG_FILE = "receiver.yaml"
SECRETS_DIR = "/etc/dfm/secrets"
DATABASE_DIR = "/etc/dfm/database"
RECEIVER_UID = 10001
SYNC_CONFIG_FILE = "sync.yaml"
TOKEN_DIR = "/etc/dfm/token"
TERMINATION_LOG = "/dev/termination-log"

# Condition types and reasons
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
REASON_AVAILABLE = "Available"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_DEPLOYMENT_UNAVAILABLE = "DeploymentUnavailable"
REASON_ROLLING_OUT = "RollingOut"
REASON_APPLY_FAILED = "ApplyFailed"
# BackupSchedule and SyncSchedule: before a run finished, and while suspended.
REASON_SCHEDULED = "Scheduled"
REASON_SUSPENDED = "Suspended"
# WebhookSource forwarding (status from the event store, not from the receivers).
FORWARDING = "Forwarding"
REASON_DELIVERING = "Delivering"
REASON_IDLE = "Idle"
REASON_LAGGING = "Lagging"
REASON_CIRCUIT_OPEN = "CircuitOpen"
REASON_TARGET_FAILING = "TargetFailing"
REASON_DEAD_LETTERED = "DeadLettered"
REASON_STORE_UNREACHABLE = "StoreUnreachable"

# BackupSchedule: its CronJob's pods and Jobs, and what their conditions say.
BACKUP_COMPONENT = "backup"
BACKUP_APP_NAME = "df-middleware-backup"
LABEL_BACKUP_SCHEDULE = f"{GROUP}/backupschedule"
BACKUPS_DIR = "/backups"
REASON_BACKUP_SUCCEEDED = "BackupSucceeded"
REASON_BACKUP_FAILED = "BackupFailed"
REASON_VERIFY_FAILED = "VerifyFailed"
REASON_CLAIM_NOT_FOUND = "ClaimNotFound"

# SyncSchedule (the reasons of a failed run are the job's: webhook_server.sync.summary)
REASON_SINK_NOT_FOUND = "SinkNotFound"
REASON_TOKEN_UNAVAILABLE = TOKEN_UNAVAILABLE
REASON_SYNCED = SYNCED
REASON_JOB_FAILED = "JobFailed"
