"""WebhookSource -> children: pure builders and policies, asserted on plain dicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dfm.manifests import load_documents, webhook_sources
from dfm_operator import constants as c
from dfm_operator.api import BackupSchedule, ManagedSecret, SyncSchedule, WebhookSource
from dfm_operator.builders.backupschedule import build_children as build_backup_children
from dfm_operator.builders.managedsecret import build_secret
from dfm_operator.builders.meta import controlled_by
from dfm_operator.builders.syncschedule import SyncInputs
from dfm_operator.builders.syncschedule import build_children as build_sync_children
from dfm_operator.builders.webhooksource import (
    ReceiverInputs,
    build_children,
    build_config_map,
    build_receiver_config,
    config_hash,
    endpoints,
    obsolete_children,
    referenced_secrets,
)
from dfm_operator.conditions import ConditionUpdate, merge_conditions
from dfm_operator.kube import KINDS
from dfm_operator.policies import deployment_progress, needs_reapply, receiver_conditions
from dfm_operator.rbac import required_rules
from dfm_operator.settings import OperatorSettings
from webhook_server.config import MAX_WORKERS, STOP_MARGIN_SECONDS, ReceiverConfig, SecretSource
from webhook_server.server import BASE_MEMORY_BYTES, memory_bound

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
K8S_VERSION = "1.37.0"
SETTINGS = OperatorSettings()


def source(**spec: Any) -> WebhookSource:
    body = {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": "stripe-main", "namespace": "payments", "uid": "u-1", "generation": 3},
        "spec": {
            "provider": "stripe",
            "verification": {"secretRef": {"name": "stripe-webhook", "key": "secret"}},
            **spec,
        },
    }
    return WebhookSource.model_validate(body)


def everything_on() -> WebhookSource:
    return source(
        replicas=3,
        resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        exposure={
            "service": {"type": "LoadBalancer", "port": 8443},
            "ingress": {
                "host": "hooks.example.com",
                "className": "nginx",
                "tlsSecretName": "hooks-tls",
            },
        },
        store={"databaseSecretRef": {"name": "events-db", "key": "dsn"}, "retentionDays": 90},
        cors={"allowedOrigins": ["https://app.example.com"]},
        limits={"maxBodyBytes": 2048, "requestsPerSecond": 5, "burst": 10},
    )


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in children}


def test_default_children_and_their_metadata() -> None:
    children = build_children(source(), ReceiverInputs(settings=SETTINGS))
    assert [ch["kind"] for ch in children] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "payments"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "dfm.dev/v1alpha1",
                "kind": "WebhookSource",
                "name": "stripe-main",
                "uid": "u-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        for label in (
            c.LABEL_NAME,
            c.LABEL_INSTANCE,
            c.LABEL_COMPONENT,
            c.LABEL_PART_OF,
            c.LABEL_MANAGED_BY,
            c.LABEL_VERSION,
        ):
            assert meta["labels"][label]
    assert {ch["metadata"]["name"] for ch in children} == {
        "stripe-main-receiver",
        "stripe-main-receiver-config",
    }


def test_every_option_on_adds_pdb_ingress_and_service_monitor() -> None:
    inputs = ReceiverInputs(settings=SETTINGS, service_monitor=True)
    kinds = by_kind(build_children(everything_on(), inputs))
    assert set(kinds) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
        "ServiceMonitor",
    }
    ingress = kinds["Ingress"]["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["hooks.example.com"], "secretName": "hooks-tls"}]
    assert ingress["rules"][0]["http"]["paths"][0]["path"] == "/hooks/payments/stripe-main"
    assert kinds["Service"]["spec"]["type"] == "LoadBalancer"
    assert kinds["Deployment"]["spec"]["replicas"] == 3
    assert "topologySpreadConstraints" in kinds["Deployment"]["spec"]["template"]["spec"]


def test_config_map_holds_paths_never_secret_values() -> None:
    kinds = by_kind(build_children(everything_on(), ReceiverInputs(settings=SETTINGS)))
    config = kinds["ConfigMap"]["data"]["receiver.yaml"]
    assert "file: /etc/dfm/secrets/stripe-webhook/secret" in config
    assert "urlFile: /etc/dfm/database/dsn" in config
    assert "value:" not in config
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert mounted == {"stripe-webhook", "events-db"}
    assert all("subPath" not in m for m in pod["containers"][0]["volumeMounts"])


def test_config_map_states_the_caps_the_pod_runs_with_and_a_queue_that_holds_a_body() -> None:
    # Issue 9 asks the caps be explicit: every server and store limit is rendered, defaults too;
    # and a queue smaller than the source's largest body (which the config refuses) is raised
    # to hold it.
    config_map = build_config_map(
        source(limits={"maxBodyBytes": 48 * 1024 * 1024}), ReceiverInputs(settings=SETTINGS)
    )
    config = yaml.safe_load(config_map["data"]["receiver.yaml"])
    assert {
        "maxConnections",
        "headerTimeoutSeconds",
        "bodyTimeoutSeconds",
        "idleTimeoutSeconds",
        "maxHeadBytes",
        "headBudgetBytes",
        "bodyBudgetBytes",
        "verificationLane",
        "trustedProxies",
    } <= set(config["server"])
    assert config["database"]["maxQueuedBytes"] == 48 * 1024 * 1024
    default = yaml.safe_load(
        build_config_map(source(), ReceiverInputs(settings=SETTINGS))["data"]["receiver.yaml"]
    )
    assert default["database"]["maxQueuedBytes"] == 32 * 1024 * 1024


def test_rendered_examples_never_contain_the_example_secrets() -> None:
    docs = load_documents([EXAMPLES])
    secret_values = [
        v for d in docs if d.kind == "Secret" for v in (d.body.get("stringData") or {}).values()
    ]
    rendered = json.dumps(
        [build_children(s, ReceiverInputs(settings=SETTINGS)) for _, s in webhook_sources(docs)]
    )
    assert secret_values
    for value in secret_values:
        assert value not in rendered


def test_pods_run_restricted() -> None:
    deployment = by_kind(build_children(source(), ReceiverInputs(settings=SETTINGS)))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["args"] == ["receiver", "--config", "/etc/dfm/config/receiver.yaml"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_config_hash_follows_the_receiver_config_only() -> None:
    def hash_of(s: WebhookSource) -> str:
        kinds = by_kind(build_children(s, ReceiverInputs(settings=SETTINGS)))
        annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations[c.ANNOTATION_CONFIG_HASH] == config_hash(kinds["ConfigMap"])
        return str(annotations[c.ANNOTATION_CONFIG_HASH])

    base = hash_of(source())
    assert hash_of(source()) == base
    assert (
        hash_of(
            source(verification={"secretRef": {"name": "stripe-webhook"}, "toleranceSeconds": 60})
        )
        != base
    )
    assert hash_of(source(replicas=4)) == base


def receiver(s: WebhookSource) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rendered receiver config (as the pod reads it) and the container."""
    kinds = by_kind(build_children(s, ReceiverInputs(settings=SETTINGS)))
    config = yaml.safe_load(kinds["ConfigMap"]["data"][c.CONFIG_FILE])
    return config, kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_workers_are_rendered_and_default_resources_grow_with_them() -> None:
    config, container = receiver(source())
    assert config["workers"] == 1
    one = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    assert container["resources"] == one, "a source without workers keeps its resources"

    config, container = receiver(source(workers=2))
    assert config["workers"] == 2
    assert ReceiverConfig.model_validate(config).workers == 2, "the receiver reads it back"
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "192Mi"},
        "limits": {"memory": "640Mi"},
    }
    _, container = receiver(source(workers=MAX_WORKERS))
    assert container["resources"] == {
        "requests": {"cpu": "800m", "memory": "1088Mi"},
        "limits": {"memory": "4224Mi"},
    }


def test_resources_the_user_set_are_kept_whatever_the_workers() -> None:
    mine = {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    config, container = receiver(source(workers=4, resources=mine))
    assert config["workers"] == 4
    assert container["resources"] == mine


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * 1024 * 1024


@pytest.mark.parametrize("workers", range(1, MAX_WORKERS + 1))
def test_the_default_memory_limit_holds_every_worker_at_its_worst(workers: int) -> None:
    # Each worker holds what its own limits allow (docs/receiver.md, "Memory"); the supervisor,
    # with more than one, is one more idle process.
    s = source(workers=workers)
    config = build_receiver_config(s, ReceiverInputs(settings=SETTINGS))
    worst = workers * memory_bound(config, config.server.max_connections)
    if workers > 1:
        worst += BASE_MEMORY_BYTES
    _, container = receiver(s)
    assert worst <= mebibytes(container["resources"]["limits"]["memory"])


def test_the_documented_default_resources_are_the_built_ones() -> None:
    # docs/operator.md, "Worker processes": the table of defaults by workers.
    text = (EXAMPLES.parent / "docs" / "operator.md").read_text()
    section = text.split("### Worker processes (`spec.workers`)", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]
    assert len(rows) >= 3
    for workers, cpu, memory, limit in rows:
        _, container = receiver(source(workers=int(workers.split()[0])))
        assert container["resources"] == {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": limit},
        }


@pytest.mark.parametrize(("delay", "grace"), [(None, 40), (0, 35), (45, 80)])
def test_a_receiver_serves_on_after_sigterm_and_the_kubelet_waits_for_its_whole_stop(
    delay: float | None, grace: int
) -> None:
    # The chart's receivers.shutdownDelaySeconds (5 s unless set): connections kube-proxy still
    # routes to a terminating pod are served, not refused.
    settings = (
        SETTINGS
        if delay is None
        else SETTINGS.model_copy(update={"receiver_shutdown_delay_seconds": delay})
    )
    kinds = by_kind(build_children(source(workers=2), ReceiverInputs(settings=settings)))
    config = ReceiverConfig.model_validate(
        yaml.safe_load(kinds["ConfigMap"]["data"][c.CONFIG_FILE])
    )
    assert config.shutdown_delay_seconds == (5 if delay is None else delay)
    # The delay, the drain (20 s), forwarding's grace (5 s), then the supervisor's margin to
    # kill and exit: the kubelet's SIGKILL comes after all of them.
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == grace
    assert grace >= config.stop_seconds() + 2 * STOP_MARGIN_SECONDS


def test_changing_workers_rolls_the_pods() -> None:
    def hash_of(workers: int) -> str:
        kinds = by_kind(build_children(source(workers=workers), ReceiverInputs(settings=SETTINGS)))
        template = kinds["Deployment"]["spec"]["template"]
        return str(template["metadata"]["annotations"][c.ANNOTATION_CONFIG_HASH])

    assert len({hash_of(1), hash_of(2), hash_of(3)}) == 3


def test_builders_are_deterministic() -> None:
    inputs = ReceiverInputs(settings=SETTINGS, service_monitor=True)
    assert build_children(everything_on(), inputs) == build_children(everything_on(), inputs)


def test_managed_secret_is_mounted_as_a_directory() -> None:
    s = source(verification={"managedSecretRef": {"name": "stripe-signing"}})
    inputs = ReceiverInputs(settings=SETTINGS, managed_secret_name="stripe-signing-v")
    kinds = by_kind(build_children(s, inputs))
    assert "dir: /etc/dfm/secrets/stripe-signing-v" in kinds["ConfigMap"]["data"]["receiver.yaml"]
    assert referenced_secrets(s, inputs) == ["dfm-events-db", "stripe-signing-v"]


def test_forward_is_rendered_and_its_signing_secret_mounted() -> None:
    s = source(
        forward={
            "url": "http://orders.shop.svc:8080/events",
            "signingSecretRef": {"name": "orders-forward"},
            "timeoutSeconds": 3,
            "maxAttempts": 12,
            "maxAge": "6h",
            "backoff": {"minSeconds": 2, "maxSeconds": 120},
            "maxConcurrency": 4,
            "circuitBreaker": {"failureThreshold": 7, "coolDownSeconds": 45},
        }
    )
    inputs = ReceiverInputs(settings=SETTINGS, forward_secret_name="orders-forward-v")
    kinds = by_kind(build_children(s, inputs))
    config = ReceiverConfig.model_validate(
        yaml.safe_load(kinds["ConfigMap"]["data"]["receiver.yaml"])
    )
    forward = config.sources[0].forward
    assert forward is not None
    assert forward.url == "http://orders.shop.svc:8080/events"
    assert forward.signing_secrets == [SecretSource(dir="/etc/dfm/secrets/orders-forward-v")]
    assert (forward.timeout_seconds, forward.max_attempts, forward.max_age_seconds) == (
        3,
        12,
        6 * 3600,
    )
    assert (forward.backoff.min_seconds, forward.backoff.max_seconds) == (2, 120)
    assert forward.max_concurrency == 4
    assert forward.circuit_breaker.failure_threshold == 7
    assert forward.circuit_breaker.cool_down_seconds == 45
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["forward-signing"] == "/etc/dfm/secrets/orders-forward-v"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["forward-signing"]["secret"] == {"secretName": "orders-forward-v"}
    assert referenced_secrets(s, inputs) == ["dfm-events-db", "orders-forward-v", "stripe-webhook"]
    # No Egress policy: the receiver reaches its target wherever it is.
    assert kinds["NetworkPolicy"]["spec"]["policyTypes"] == ["Ingress"]
    _validate(kinds["Deployment"])


def test_one_secret_that_verifies_and_signs_is_mounted_once() -> None:
    s = source(
        verification={"managedSecretRef": {"name": "shared"}},
        forward={"url": "http://x.svc/e", "signingSecretRef": {"name": "shared"}},
    )
    inputs = ReceiverInputs(
        settings=SETTINGS, managed_secret_name="shared", forward_secret_name="shared"
    )
    pod = by_kind(build_children(s, inputs))["Deployment"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"] if "secret" in v] == ["database", "signing"]
    _validate(by_kind(build_children(s, inputs))["Deployment"])


def test_a_source_without_forward_has_no_forward_config() -> None:
    config = yaml.safe_load(
        by_kind(build_children(source(), ReceiverInputs(settings=SETTINGS)))["ConfigMap"]["data"][
            "receiver.yaml"
        ]
    )
    assert "forward" not in config["sources"][0]


def test_the_events_api_is_rendered_only_when_set() -> None:
    def rendered(s: WebhookSource) -> dict[str, Any]:
        children = by_kind(build_children(s, ReceiverInputs(settings=SETTINGS)))
        config: dict[str, Any] = yaml.safe_load(children["ConfigMap"]["data"]["receiver.yaml"])
        # The receiver accepts what the operator renders.
        ReceiverConfig.model_validate(config)
        return config["sources"][0]

    assert "eventsApi" not in rendered(source())
    api = rendered(
        source(
            eventsApi={
                "auth": {"jwksUrl": "https://clerk.example.com/.well-known/jwks.json",
                         "issuer": "https://clerk.example.com", "audiences": ["ops"]},
                "replayScope": "events:admin",
            }
        )
    )["eventsApi"]  # fmt: skip
    assert api["auth"]["jwksUrl"] == "https://clerk.example.com/.well-known/jwks.json"
    assert api["auth"]["audiences"] == ["ops"]
    assert (api["readScope"], api["replayScope"]) == ("events:read", "events:admin")


def test_endpoints() -> None:
    assert endpoints(source(), SETTINGS) == (
        "http://stripe-main-receiver.payments.svc/hooks/payments/stripe-main",
        None,
    )
    assert endpoints(everything_on(), SETTINGS) == (
        "http://stripe-main-receiver.payments.svc:8443/hooks/payments/stripe-main",
        "https://hooks.example.com/hooks/payments/stripe-main",
    )


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_children_of_every_example_pass_kubernetes_validate(example: str) -> None:
    for _, s in webhook_sources(load_documents([EXAMPLES / example])):
        for child in build_children(s, ReceiverInputs(settings=SETTINGS)):
            _validate(child)


def test_children_with_every_option_on_pass_kubernetes_validate() -> None:
    inputs = ReceiverInputs(settings=SETTINGS, service_monitor=True)
    for child in build_children(everything_on(), inputs):
        if child["kind"] == "ServiceMonitor":
            continue  # a prometheus-operator CRD: not in the Kubernetes schemas
        _validate(child)


def test_kubernetes_validate_would_catch_a_broken_child() -> None:
    broken = by_kind(build_children(source(), ReceiverInputs(settings=SETTINGS)))["Service"]
    broken["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


# -- policies ------------------------------------------------------------------------------------


def deployment(
    generation: int = 2, observed: int = 2, updated: int = 2, available: int = 2
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": available,
        },
    }


def test_deployment_progress() -> None:
    assert deployment_progress(None, 2)[0] is False
    assert deployment_progress(deployment(observed=1), 2) == (
        False,
        "deployment change not yet observed",
    )
    assert deployment_progress(deployment(updated=1), 2) == (False, "1/2 replicas updated")
    assert deployment_progress(deployment(available=1), 2) == (False, "1/2 replicas available")
    assert deployment_progress(deployment(), 2) == (True, "2/2 replicas available")


def test_receiver_conditions_most_serious_cause_first() -> None:
    ready = {
        cond.type: cond
        for cond in receiver_conditions(
            invalid="spec.x: bad", missing_secrets=["s"], deployment=deployment(), replicas=2
        )
    }
    assert (ready["Ready"].status, ready["Ready"].reason) == (False, "InvalidSpec")
    assert ready["Degraded"].status is True
    missing = {cond.type: cond for cond in receiver_conditions(missing_secrets=["a", "b"])}
    assert missing["Ready"].reason == "SecretNotFound"
    assert missing["Ready"].message == "Secret not found: a, b"
    rolling = {cond.type: cond for cond in receiver_conditions(deployment=None)}
    assert (rolling["Ready"].reason, rolling["Progressing"].status) == (
        "DeploymentUnavailable",
        True,
    )
    ok = {cond.type: cond for cond in receiver_conditions(deployment=deployment(), replicas=2)}
    assert (ok["Ready"].status, ok["Ready"].reason) == (True, "Available")


def test_last_transition_time_moves_only_when_status_flips() -> None:
    t0 = datetime(2026, 11, 27, 12, tzinfo=UTC)
    first = merge_conditions([], [ConditionUpdate("Ready", False, "RollingOut", "0/1")], 1, t0)
    same = merge_conditions(
        first,
        [ConditionUpdate("Ready", False, "DeploymentUnavailable", "x")],
        2,
        t0 + timedelta(minutes=1),
    )
    assert same[0]["lastTransitionTime"] == "2026-11-27T12:00:00Z"
    assert same[0]["reason"] == "DeploymentUnavailable"
    assert same[0]["observedGeneration"] == 2
    flipped = merge_conditions(
        same, [ConditionUpdate("Ready", True, "Available")], 2, t0 + timedelta(minutes=2)
    )
    assert flipped[0]["lastTransitionTime"] == "2026-11-27T12:02:00Z"


def test_needs_reapply_on_replica_or_template_drift() -> None:
    desired = by_kind(build_children(source(), ReceiverInputs(settings=SETTINGS)))["Deployment"]
    assert not needs_reapply(json.loads(json.dumps(desired)), desired)
    scaled = json.loads(json.dumps(desired))
    scaled["spec"]["replicas"] = 5
    assert needs_reapply(scaled, desired)
    edited = json.loads(json.dumps(desired))
    edited["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_CONFIG_HASH] = "x"
    assert needs_reapply(edited, desired)


def test_the_rbac_for_owner_finalizers_covers_exactly_the_owners() -> None:
    # blockOwnerDeletion on a child needs `update` on its owner's finalizers (RBAC derives it from
    # kube.KINDS' owns_children); every kind that owns a child must say so, and no other.
    managed = ManagedSecret.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "ManagedSecret",
            "metadata": {"name": "signing", "namespace": "payments", "uid": "u-2"},
            "spec": {"type": "random", "random": {"length": 32}},
        }
    )
    schedule = SyncSchedule.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "SyncSchedule",
            "metadata": {"name": "contacts", "namespace": "payments", "uid": "u-3"},
            "spec": {
                "schedule": "@hourly",
                "connector": {"http": {"url": "https://api.example.com/items"}},
                "sink": {"webhookSourceRef": {"name": "stripe-main"}},
            },
        }
    )
    sync_inputs = SyncInputs(
        settings=SETTINGS,
        sink="payments/stripe-main",
        database=SETTINGS.default_database_secret,
        retention_days=30,
    )
    backup = BackupSchedule.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "BackupSchedule",
            "metadata": {"name": "nightly", "namespace": "payments", "uid": "u-3"},
            "spec": {
                "schedule": "30 2 * * *",
                "databaseSecretRef": {"name": "db"},
                "destination": {"pvc": {"claimName": "b", "size": "1Gi"}},
            },
        }
    )
    children = [
        *build_children(everything_on(), ReceiverInputs(settings=SETTINGS)),
        build_secret(managed, {"current": "x"}, {}, "0.1.0"),
        *build_backup_children(backup, SETTINGS),
        *build_sync_children(schedule, sync_inputs),
    ]
    owners = {
        (ref["apiVersion"], ref["kind"])
        for child in children
        for ref in child["metadata"].get("ownerReferences") or []
        if ref["blockOwnerDeletion"]
    }
    assert owners == {(k.api_version, k.kind) for k in KINDS if k.owns_children}
    finalizers = {r.resource for r in required_rules() if r.resource.endswith("/finalizers")}
    assert finalizers == {
        "webhooksources/finalizers",
        "managedsecrets/finalizers",
        "backupschedules/finalizers",
        "syncschedules/finalizers",
    }


def test_obsolete_children_are_the_optional_ones_not_built() -> None:
    default = build_children(source(), ReceiverInputs(settings=SETTINGS))
    assert obsolete_children(source(), default) == [
        ("policy/v1", "PodDisruptionBudget", "stripe-main-receiver"),
        ("networking.k8s.io/v1", "Ingress", "stripe-main-receiver"),
        ("monitoring.coreos.com/v1", "ServiceMonitor", "stripe-main-receiver"),
    ]
    full = build_children(everything_on(), ReceiverInputs(settings=SETTINGS, service_monitor=True))
    assert obsolete_children(everything_on(), full) == []


def test_only_children_we_control_count_as_ours() -> None:
    [config_map, *_] = build_children(source(), ReceiverInputs(settings=SETTINGS))
    assert controlled_by(config_map, "u-1")
    assert not controlled_by(config_map, "someone-else")
    assert not controlled_by({"metadata": {}}, "u-1")
