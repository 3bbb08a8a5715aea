"""Pod pieces the workloads the operator creates share: the restricted security profile, the pod
and volumes of those that run from a config file (receivers, syncs), and the CronJob skeleton
that scheduled jobs (syncs, backups) are built on. Pure, like all builders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dfm_operator import constants as c
from dfm_operator.settings import WorkloadTracing


def restricted_container_security() -> dict[str, Any]:
    """The container half of the Pod Security Standards' "restricted" profile, plus a read-only
    root filesystem: whatever the process writes goes to a mounted emptyDir."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def tracing_env(
    tracing: WorkloadTracing, service: str, attributes: Mapping[str, str]
) -> list[dict[str, str]]:
    """The ``OTEL_*`` environment of a workload (webhook_server.tracing reads it); none when
    tracing is off. ``attributes`` (the object it serves) come before the chart's extra ones."""
    if not tracing.endpoint:
        return []
    resource = ",".join(
        [f"{key}={value}" for key, value in attributes.items()]
        + ([tracing.resource_attributes] if tracing.resource_attributes else [])
    )
    env = [
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": tracing.endpoint},
        {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"},
        {"name": "OTEL_SERVICE_NAME", "value": service},
        {"name": "OTEL_TRACES_SAMPLER", "value": tracing.sampler},
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": resource},
    ]
    if tracing.sampler_arg:
        env.append({"name": "OTEL_TRACES_SAMPLER_ARG", "value": tracing.sampler_arg})
    return env


def restricted_pod_security(uid: int = c.RECEIVER_UID) -> dict[str, Any]:
    """The pod half of the "restricted" profile, running as the image's unprivileged user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def config_volumes(
    config_map: str, database: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volumes, and their mounts, of a workload that runs from a config file: the ConfigMap
    at CONFIG_DIR, a small in-memory /tmp (the root filesystem is read-only) and ``database``
    (a Secret volume source) at DATABASE_DIR. Callers append their own."""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "database", "secret": database},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": c.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
        {"name": "database", "mountPath": c.DATABASE_DIR, "readOnly": True},
    ]
    return volumes, mounts


def restricted_pod_spec(container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod of a receiver or a sync run: its one container, no service account token (it
    never calls the API server), the restricted profile, 30 s to finish on SIGTERM."""
    return {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }


def build_cronjob(
    *,
    metadata: dict[str, Any],
    pod_labels: dict[str, str],
    schedule: str,
    time_zone: str | None,
    suspend: bool,
    concurrency_policy: str,
    pod_spec: dict[str, Any],
    starting_deadline_seconds: int | None = None,
    successful_jobs_history_limit: int = 3,
    failed_jobs_history_limit: int = 3,
    active_deadline_seconds: int | None = None,
    backoff_limit: int = 0,
) -> dict[str, Any]:
    """A batch/v1 CronJob around ``pod_spec`` (restartPolicy Never: a failed run is one failed
    Job, retried by the schedule and reported, not restarted in place behind the status)."""
    job_spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {
            "metadata": {"labels": dict(pod_labels)},
            "spec": {"restartPolicy": "Never", **pod_spec},
        },
    }
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = active_deadline_seconds
    spec: dict[str, Any] = {
        "schedule": schedule,
        "suspend": suspend,
        "concurrencyPolicy": concurrency_policy,
        "successfulJobsHistoryLimit": successful_jobs_history_limit,
        "failedJobsHistoryLimit": failed_jobs_history_limit,
        "jobTemplate": {"metadata": {"labels": dict(pod_labels)}, "spec": job_spec},
    }
    if time_zone:
        spec["timeZone"] = time_zone
    if starting_deadline_seconds is not None:
        spec["startingDeadlineSeconds"] = starting_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata, "spec": spec}
