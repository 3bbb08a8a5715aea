"""SyncSchedule -> its sync config, ConfigMap and CronJob. Pure: same inputs, same dicts.

The job runs `dfm sync run` from the ConfigMap's config, with two Secrets mounted (never their
values in the config, only the files' paths): the access token of the referenced oauth2
ManagedSecret, and the sink WebhookSource's database URL. Both are mounted without subPath, so
kubelet replaces the token file when the ManagedSecret refreshes it, even during a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfm_operator import constants as c
from dfm_operator.api import SyncSchedule
from dfm_operator.api.common import SecretKeyRef
from dfm_operator.builders.meta import object_meta, standard_labels
from dfm_operator.builders.pods import (
    build_cronjob,
    config_volumes,
    restricted_container_security,
    restricted_pod_spec,
    tracing_env,
)
from dfm_operator.settings import OperatorSettings
from webhook_server.config import DatabaseConfig
from webhook_server.secrets import ACCESS_TOKEN
from webhook_server.sync.config import (
    HttpConfig,
    RetryConfig,
    SinkConfig,
    SyncConfig,
    TokenConfig,
)

DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
# The Job is ended this long after the run's own timeout: time to write its summary.
DEADLINE_GRACE_SECONDS = 60
TOKEN_FILE = f"{c.TOKEN_DIR}/{ACCESS_TOKEN}"


@dataclass(frozen=True)
class SyncInputs:
    """What the builder needs beyond the SyncSchedule, resolved by the caller (the operator reads
    the cluster; `dfm render` and `dfm sync run -f` read the files).

    ``sink``: the WebhookSource's key (``<namespace>/<name>``); ``database``: its database
    Secret key (its own or the operator's default); ``retention_days``: its retention;
    ``token_secret``: the Secret the referenced ManagedSecret writes, if the connector has auth.
    """

    settings: OperatorSettings
    sink: str
    database: SecretKeyRef
    retention_days: int
    token_secret: str | None = None


def cronjob_name(schedule: SyncSchedule) -> str:
    return f"{schedule.metadata.name}-sync"


def config_map_name(schedule: SyncSchedule) -> str:
    return f"{schedule.metadata.name}-sync"


def _labels(schedule: SyncSchedule, settings: OperatorSettings) -> dict[str, str]:
    return standard_labels(
        schedule.metadata.name,
        c.SYNC_NAME,
        c.SYNC_COMPONENT,
        settings.version,
        {c.LABEL_SYNC: schedule.metadata.name},
    )


def _meta(schedule: SyncSchedule, name: str, settings: OperatorSettings) -> dict[str, Any]:
    return object_meta(schedule, name, _labels(schedule, settings))


def build_sync_config(
    schedule: SyncSchedule,
    *,
    sink: str,
    retention_days: int,
    database: DatabaseConfig,
    token: TokenConfig | None,
) -> SyncConfig:
    """The job's config. In a pod ``database`` and ``token`` are mounted files; `dfm sync run -f`
    passes a URL and a literal token instead."""
    spec = schedule.spec
    http = spec.connector.http
    return SyncConfig(
        schedule=schedule.key,
        sink=SinkConfig(source=sink, retention_days=retention_days),
        http=HttpConfig(
            url=http.url,
            query=http.query,
            headers=http.headers,
            items_path=http.items_path,
            id_field=http.id_field,
            version_field=http.version_field,
            event_type=schedule.event_type,
            cursor=http.cursor,
            link=http.link,
            offset=http.offset,
            page=http.page,
            incremental=http.incremental,
            max_pages=http.max_pages,
            timeout_seconds=http.timeout_seconds,
            requests_per_second=http.rate_limit.requests_per_second,
            burst=http.rate_limit.burst,
        ),
        token=token if http.auth is not None else None,
        retry=RetryConfig(
            max_attempts=spec.retry.max_attempts, backoff_seconds=spec.retry.backoff_seconds
        ),
        run_timeout_seconds=spec.run_timeout_seconds,
        database=database,
    )


def build_job_config(schedule: SyncSchedule, inputs: SyncInputs) -> SyncConfig:
    """The config as the job sees it: paths of the mounted Secrets, never their values."""
    return build_sync_config(
        schedule,
        sink=inputs.sink,
        retention_days=inputs.retention_days,
        database=DatabaseConfig(url_file=f"{c.DATABASE_DIR}/{inputs.database.key}"),
        token=TokenConfig(file=TOKEN_FILE),
    )


def build_config_map(schedule: SyncSchedule, inputs: SyncInputs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(schedule, config_map_name(schedule), inputs.settings),
        "data": {c.SYNC_CONFIG_FILE: build_job_config(schedule, inputs).dump_yaml()},
    }


def _volumes(
    schedule: SyncSchedule, inputs: SyncInputs
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    db = inputs.database
    volumes, mounts = config_volumes(
        config_map_name(schedule),
        {"secretName": db.name, "items": [{"key": db.key, "path": db.key}]},
    )
    if schedule.spec.connector.http.auth is not None and inputs.token_secret is not None:
        # Only the access token (not the refresh token beside it); optional, so that a run
        # while the Secret is missing says TokenUnavailable at once instead of never starting.
        volumes.append(
            {
                "name": "token",
                "secret": {
                    "secretName": inputs.token_secret,
                    "items": [{"key": ACCESS_TOKEN, "path": ACCESS_TOKEN}],
                    "optional": True,
                },
            }
        )
        mounts.append({"name": "token", "mountPath": c.TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def build_sync_cronjob(schedule: SyncSchedule, inputs: SyncInputs) -> dict[str, Any]:
    settings = inputs.settings
    spec = schedule.spec
    volumes, mounts = _volumes(schedule, inputs)
    container = {
        "name": "sync",
        "image": settings.receiver_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "sync",
            "run",
            "--config",
            f"{c.CONFIG_DIR}/{c.SYNC_CONFIG_FILE}",
            "--summary-file",
            c.TERMINATION_LOG,
        ],
        # The run's summary (counts, reason; never a token) is how the operator learns the
        # outcome: from the Pod's status, not from its logs.
        "terminationMessagePath": c.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "resources": spec.resources or DEFAULT_RESOURCES,
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    env = tracing_env(
        settings.tracing,
        "dfm-sync",
        {
            "k8s.namespace.name": schedule.metadata.namespace,
            "k8s.cronjob.name": cronjob_name(schedule),
            "dfm.syncschedule": schedule.metadata.name,
        },
    )
    if env:
        container["env"] = env
    return build_cronjob(
        metadata=_meta(schedule, cronjob_name(schedule), settings),
        pod_labels=_labels(schedule, settings),
        schedule=spec.schedule,
        time_zone=spec.time_zone,
        suspend=spec.suspend,
        concurrency_policy=spec.concurrency_policy.value,
        pod_spec=restricted_pod_spec(container, volumes),
        starting_deadline_seconds=spec.starting_deadline_seconds,
        successful_jobs_history_limit=spec.successful_jobs_history_limit,
        failed_jobs_history_limit=spec.failed_jobs_history_limit,
        active_deadline_seconds=spec.run_timeout_seconds + DEADLINE_GRACE_SECONDS,
        backoff_limit=0,
    )


def build_children(schedule: SyncSchedule, inputs: SyncInputs) -> list[dict[str, Any]]:
    """Every object the schedule needs, in apply order (the config before the CronJob)."""
    return [build_config_map(schedule, inputs), build_sync_cronjob(schedule, inputs)]


def referenced_secrets(schedule: SyncSchedule, inputs: SyncInputs) -> list[str]:
    """The Secrets the job mounts and the operator waits for: the database's. (The token's is
    awaited as TokenUnavailable, and mounted optional.)"""
    return [inputs.database.name]
