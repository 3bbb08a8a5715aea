"""Names shared across the control plane: API group, kinds, labels, condition types."""

GROUP = "dfm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

WEBHOOK_SOURCE = "WebhookSource"
MANAGED_SECRET = "ManagedSecret"
SYNC_SCHEDULE = "SyncSchedule"
BACKUP_SCHEDULE = "BackupSchedule"

DEFAULT_SECRET_KEY = "secret"
DEFAULT_NAMESPACE = "default"
