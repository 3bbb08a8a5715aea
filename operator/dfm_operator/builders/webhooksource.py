"""WebhookSource -> the objects that run its receiver. Pure: the same inputs give the same dicts."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from dfm_operator import constants as c
from dfm_operator.api import WebhookSource
from dfm_operator.api.common import SecretKeyRef
from dfm_operator.builders.meta import (
    object_meta,
    selector_labels,
    standard_labels,
)
from dfm_operator.builders.pods import (
    config_volumes,
    restricted_container_security,
    restricted_pod_spec,
    tracing_env,
)
from dfm_operator.builders.receiver_config import build_source_config, ingress_url
from dfm_operator.settings import OperatorSettings
from webhook_server.config import (
    STOP_MARGIN_SECONDS,
    DatabaseConfig,
    ReceiverConfig,
    SecretSource,
    queued_bytes_for,
)

# The receiver container's resources when spec.resources is not set, per receiver process.
# The memory limit holds what one process's default limits let it hold at worst (234 MiB:
# webhook_server.server.memory_bound, docs/receiver.md "Memory"); CPU is requested for an idle
# process and not limited, so a busy receiver uses the node's spare cores.
PROCESS_CPU_REQUEST_MILLI = 50
PROCESS_MEMORY_REQUEST_MI = 64
PROCESS_MEMORY_LIMIT_MI = 256
# With workers above 1, `dfm receiver` becomes a supervisor beside the workers: one more Python
# process that serves no request, so it needs the idle base of one (110 MiB, BASE_MEMORY_BYTES
# of webhook_server.server, rounded up) and no CPU to speak of. The workers it forks share its
# pages copy-on-write at first; counting each worker in full keeps the bound safe as they stop
# sharing.
SUPERVISOR_MEMORY_REQUEST_MI = 64
SUPERVISOR_MEMORY_LIMIT_MI = 128


def default_resources(workers: int) -> dict[str, Any]:
    """The receiver container's resources without spec.resources: one process's defaults for
    each worker, plus the supervisor's memory when there are several. One worker gets exactly
    the one-process defaults (a source without ``workers`` keeps the resources it had).

    Requests and the memory limit grow linearly: each worker holds its own pool, queue and
    buffers (the limits are per process), so N workers at their worst hold N times one; the
    CPU request grows so the scheduler places a pod of N workers where N idle receivers fit.
    """
    memory_request = workers * PROCESS_MEMORY_REQUEST_MI
    memory_limit = workers * PROCESS_MEMORY_LIMIT_MI
    if workers > 1:
        memory_request += SUPERVISOR_MEMORY_REQUEST_MI
        memory_limit += SUPERVISOR_MEMORY_LIMIT_MI
    return {
        "requests": {
            "cpu": f"{workers * PROCESS_CPU_REQUEST_MILLI}m",
            "memory": f"{memory_request}Mi",
        },
        "limits": {"memory": f"{memory_limit}Mi"},
    }


DEFAULT_RESOURCES: dict[str, Any] = default_resources(1)


@dataclass(frozen=True)
class ReceiverInputs:
    """What the builder needs beyond the resource itself, resolved by the caller.

    ``managed_secret_name``: the Secret a referenced ManagedSecret writes (its ``spec.secretName``).
    ``forward_secret_name``: the same for ``spec.forward.signingSecretRef``.
    ``service_monitor``: whether to build a ServiceMonitor (enabled and its CRD installed).
    """

    settings: OperatorSettings
    managed_secret_name: str | None = None
    forward_secret_name: str | None = None
    service_monitor: bool = False


def receiver_name(source: WebhookSource) -> str:
    return f"{source.metadata.name}-receiver"


def config_map_name(source: WebhookSource) -> str:
    return f"{source.metadata.name}-receiver-config"


def database_secret(source: WebhookSource, settings: OperatorSettings) -> SecretKeyRef:
    return source.spec.store.database_secret_ref or settings.default_database_secret


def signing_secret_name(source: WebhookSource, inputs: ReceiverInputs) -> str | None:
    v = source.spec.verification
    if v.secret_ref is not None:
        return v.secret_ref.name
    if v.managed_secret_ref is not None:
        return inputs.managed_secret_name or v.managed_secret_ref.name
    return None


def forward_secret_name(source: WebhookSource, inputs: ReceiverInputs) -> str | None:
    """The Secret that signs forwarded events: the one its ManagedSecret writes."""
    forward = source.spec.forward
    if forward is None:
        return None
    return inputs.forward_secret_name or forward.signing_secret_ref.name


def referenced_secrets(source: WebhookSource, inputs: ReceiverInputs) -> list[str]:
    """Names of the Secrets the receiver mounts (the operator waits for them to exist)."""
    names = [database_secret(source, inputs.settings).name]
    for name in (signing_secret_name(source, inputs), forward_secret_name(source, inputs)):
        if name is not None:
            names.append(name)
    return sorted(set(names))


def _labels(source: WebhookSource, settings: OperatorSettings) -> dict[str, str]:
    return standard_labels(
        source.metadata.name,
        c.RECEIVER_NAME,
        c.RECEIVER_COMPONENT,
        settings.version,
        {c.LABEL_SOURCE: source.metadata.name},
    )


def _selector(source: WebhookSource) -> dict[str, str]:
    return selector_labels(source.metadata.name, c.RECEIVER_NAME, c.RECEIVER_COMPONENT)


def _meta(source: WebhookSource, name: str, settings: OperatorSettings) -> dict[str, Any]:
    return object_meta(source, name, _labels(source, settings))


def build_receiver_config(source: WebhookSource, inputs: ReceiverInputs) -> ReceiverConfig:
    """The receiver's config: secret values never in it, only paths of mounted files."""
    secrets: list[SecretSource] = []
    v = source.spec.verification
    signing = signing_secret_name(source, inputs)
    if v.secret_ref is not None and signing is not None:
        secrets.append(SecretSource(file=f"{c.SECRETS_DIR}/{signing}/{v.secret_ref.key}"))
    elif v.managed_secret_ref is not None and signing is not None:
        secrets.append(SecretSource(dir=f"{c.SECRETS_DIR}/{signing}"))
    forwarding = forward_secret_name(source, inputs)
    # A ManagedSecret's directory: current, and during a rotation previous (+ its expiry).
    forward_signing = [SecretSource(dir=f"{c.SECRETS_DIR}/{forwarding}")] if forwarding else []
    db = database_secret(source, inputs.settings)
    sources = [build_source_config(source, secrets, forward_signing)]
    # Every limit of the server and the store is rendered (their defaults included), so the
    # ConfigMap states the caps the pod runs with (docs/receiver.md).
    return ReceiverConfig(
        host="0.0.0.0",  # noqa: S104 - in a pod, the Service reaches the container's interface
        port=c.RECEIVER_PORT,
        workers=source.spec.workers,
        shutdown_delay_seconds=inputs.settings.receiver_shutdown_delay_seconds,
        sources=sources,
        database=DatabaseConfig(
            url_file=f"{c.DATABASE_DIR}/{db.key}", max_queued_bytes=queued_bytes_for(sources)
        ),
    )


def build_config_map(
    source: WebhookSource, inputs: ReceiverInputs, config: ReceiverConfig | None = None
) -> dict[str, Any]:
    """The ConfigMap of ``config`` (by default the source's, built here)."""
    config = config or build_receiver_config(source, inputs)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(source, config_map_name(source), inputs.settings),
        "data": {c.CONFIG_FILE: config.dump_yaml()},
    }


def config_hash(config_map: dict[str, Any]) -> str:
    """Changes exactly when the receiver config does, so a new config rolls the pods."""
    encoded = json.dumps(config_map["data"], sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def _volumes(
    source: WebhookSource, inputs: ReceiverInputs
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes, mounts = config_volumes(
        config_map_name(source), {"secretName": database_secret(source, inputs.settings).name}
    )
    mounted: set[str] = set()
    for volume, secret in (
        ("signing", signing_secret_name(source, inputs)),
        ("forward-signing", forward_secret_name(source, inputs)),
    ):
        if secret is None or secret in mounted:
            continue
        mounted.add(secret)
        # Mounted whole, without subPath: kubelet then updates the files in place on rotation.
        volumes.append({"name": volume, "secret": {"secretName": secret}})
        mounts.append({"name": volume, "mountPath": f"{c.SECRETS_DIR}/{secret}", "readOnly": True})
    return volumes, mounts


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def build_deployment(
    source: WebhookSource,
    inputs: ReceiverInputs,
    config: ReceiverConfig,
    config_map: dict[str, Any],
) -> dict[str, Any]:
    settings = inputs.settings
    volumes, mounts = _volumes(source, inputs)
    pod_labels = _labels(source, settings)
    container = {
        "name": "receiver",
        "image": settings.receiver_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["receiver", "--config", f"{c.CONFIG_DIR}/{c.CONFIG_FILE}"],
        "ports": [{"name": "http", "containerPort": c.RECEIVER_PORT, "protocol": "TCP"}],
        "livenessProbe": _probe("/livez", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "startupProbe": _probe("/livez", 2, 30),
        # The user's resources as given; without them, defaults sized for the workers.
        "resources": source.spec.resources or default_resources(source.spec.workers),
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    env = tracing_env(
        settings.tracing,
        "dfm-receiver",
        {
            "k8s.namespace.name": source.metadata.namespace,
            "k8s.deployment.name": receiver_name(source),
            "dfm.webhooksource": source.metadata.name,
        },
    )
    if env:
        container["env"] = env
    pod_spec = restricted_pod_spec(container, volumes)
    # Room for the whole stop (the shutdown delay, the drain, forwarding's grace) and the
    # margin the workers' supervisor allows beyond it (and as much again to use it), before the
    # kubelet's SIGKILL.
    pod_spec["terminationGracePeriodSeconds"] = (
        math.ceil(config.stop_seconds()) + 2 * STOP_MARGIN_SECONDS
    )
    if source.spec.replicas > 1:
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": _selector(source)},
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(source, receiver_name(source), settings),
        "spec": {
            "replicas": source.spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": _selector(source)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {c.ANNOTATION_CONFIG_HASH: config_hash(config_map)},
                },
                "spec": pod_spec,
            },
        },
    }


def build_service(source: WebhookSource, inputs: ReceiverInputs) -> dict[str, Any]:
    exposure = source.spec.exposure.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(source, receiver_name(source), inputs.settings),
        "spec": {
            "type": exposure.type,
            "selector": _selector(source),
            "ports": [
                {"name": "http", "port": exposure.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_pdb(source: WebhookSource, inputs: ReceiverInputs) -> dict[str, Any] | None:
    if source.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(source, receiver_name(source), inputs.settings),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(source)}},
    }


def build_network_policy(source: WebhookSource, inputs: ReceiverInputs) -> dict[str, Any]:
    """Admit traffic to the receiver port only; webhooks come from anywhere (via the ingress).

    Egress is not restricted (no ``Egress`` policy type): receivers reach PostgreSQL, a JWKS
    URL and their forward target, wherever those are.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(source, receiver_name(source), inputs.settings),
        "spec": {
            "podSelector": {"matchLabels": _selector(source)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": c.RECEIVER_PORT, "protocol": "TCP"}]}],
        },
    }


def build_ingress(source: WebhookSource, inputs: ReceiverInputs) -> dict[str, Any] | None:
    ingress = source.spec.exposure.ingress
    if ingress is None:
        return None
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": ingress.host,
                "http": {
                    "paths": [
                        {
                            "path": source.route,
                            "pathType": "Exact",
                            "backend": {
                                "service": {
                                    "name": receiver_name(source),
                                    "port": {"name": "http"},
                                }
                            },
                        }
                    ]
                },
            }
        ]
    }
    if ingress.class_name:
        spec["ingressClassName"] = ingress.class_name
    if ingress.tls_secret_name:
        spec["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(source, receiver_name(source), inputs.settings),
        "spec": spec,
    }


def build_service_monitor(source: WebhookSource, inputs: ReceiverInputs) -> dict[str, Any] | None:
    if not inputs.service_monitor:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(source, receiver_name(source), inputs.settings),
        "spec": {
            "selector": {"matchLabels": _selector(source)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    }


def build_children(source: WebhookSource, inputs: ReceiverInputs) -> list[dict[str, Any]]:
    """Every object the source's receiver needs, in apply order (config before its users)."""
    config = build_receiver_config(source, inputs)
    config_map = build_config_map(source, inputs, config)
    children = [
        config_map,
        build_deployment(source, inputs, config, config_map),
        build_service(source, inputs),
        build_pdb(source, inputs),
        build_network_policy(source, inputs),
        build_ingress(source, inputs),
        build_service_monitor(source, inputs),
    ]
    return [child for child in children if child is not None]


# Children that come and go with the spec (replicas, exposure.ingress) or the operator's settings
# (ServiceMonitor): one that is no longer built must be deleted, or a removed Ingress would keep
# routing public traffic.
OPTIONAL_CHILDREN: tuple[tuple[str, str], ...] = (
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "Ingress"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
)


def obsolete_children(
    source: WebhookSource, children: list[dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of the optional children ``children`` no longer contains."""
    built = {(child["apiVersion"], child["kind"]) for child in children}
    return [
        (api_version, kind, receiver_name(source))
        for api_version, kind in OPTIONAL_CHILDREN
        if (api_version, kind) not in built
    ]


def endpoints(source: WebhookSource, settings: OperatorSettings) -> tuple[str, str | None]:
    """The in-cluster URL, and the external one when an Ingress exposes the source."""
    port = source.spec.exposure.service.port
    host = f"{receiver_name(source)}.{source.metadata.namespace}.svc"
    internal = f"http://{host}{'' if port == 80 else f':{port}'}{source.route}"
    return internal, ingress_url(source)
