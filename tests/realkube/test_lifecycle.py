"""Children under server-side apply on the real API server: ownership, conflicts, drift repair,
and deletion with Kubernetes' own garbage collector (ReplicaSets and Pods included)."""

from __future__ import annotations

import pytest

from tests.realkube.cluster import Api, ApiError, JsonDict, wait_for
from tests.realkube.running import DFM, OperatorProcess, condition, path_of, wait_ready

pytestmark = pytest.mark.timeout(300)
MANAGER = "df-middleware-operator"


def children(ns: str) -> list[str]:
    return [
        path_of("configmaps", ns, "github-receiver-config", group="v1"),
        path_of("deployments", ns, "github-receiver", group="apps/v1"),
        path_of("services", ns, "github-receiver", group="v1"),
        path_of("networkpolicies", ns, "github-receiver", group="networking.k8s.io/v1"),
        path_of("poddisruptionbudgets", ns, "github-receiver", group="policy/v1"),
        path_of("ingresses", ns, "github-receiver", group="networking.k8s.io/v1"),
    ]


def create_github_source(admin: Api, ns: str) -> str:
    """The WebhookSource ``github`` (two replicas, an Ingress) and the Secrets it names, in
    ``ns``; its path."""
    for name, data in (("dfm-events-db", {"url": "postgresql://db.invalid/e"}), ("gh", {"s": "x"})):
        admin.create(
            path_of("secrets", ns, group="v1"),
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data},
        )
    admin.create(
        path_of("webhooksources", ns),
        {
            "apiVersion": DFM,
            "kind": "WebhookSource",
            "metadata": {"name": "github"},
            "spec": {
                "provider": "github",
                "verification": {"secretRef": {"name": "gh", "key": "s"}},
                "replicas": 2,
                "exposure": {"ingress": {"host": "hooks.example.com"}},
            },
        },
    )
    return path_of("webhooksources", ns, "github")


def test_ownership_conflicts_drift_repair_and_garbage_collection(
    admin: Api, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    source_path = create_github_source(admin, ns)
    source = wait_ready(admin, "webhooksources", ns, "github", "False", "DeploymentUnavailable")
    uid = source["metadata"]["uid"]
    for path in children(ns):
        child = wait_for(path, lambda path=path: admin.find(path))
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (uid, True, True)
        managers = {(f["manager"], f["operation"]) for f in child["metadata"]["managedFields"]}
        assert (MANAGER, "Apply") in managers, path

    deployment, service = children(ns)[1], children(ns)[2]
    # Another manager may not take a field the operator applies...
    with pytest.raises(ApiError) as conflict:
        admin.apply(
            deployment,
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "github-receiver"},
             "spec": {"replicas": 5}},
            manager="someone-else",
        )  # fmt: skip
    assert conflict.value.status == 409
    assert MANAGER in conflict.value.message
    # ...but may add one the operator does not own, and it stays through the operator's applies.
    admin.apply(
        service,
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "github-receiver", "labels": {"team": "payments"}}},
        manager="team-tool",
    )  # fmt: skip
    # A hand edit of a field the operator owns (kubectl scale) is undone.
    admin.merge_patch(deployment, {"spec": {"replicas": 7}})
    wait_for("replicas back to 2", lambda: admin.get(deployment)["spec"]["replicas"] == 2)
    admin.merge_patch(source_path, {"spec": {"verification": {"toleranceSeconds": 60}}})
    wait_for(
        "generation 2 reconciled",
        lambda: admin.get(source_path)["status"].get("observedGeneration") == 2,
    )
    assert admin.get(service)["metadata"]["labels"]["team"] == "payments"
    # A child deleted by hand comes back.
    admin.delete(service)
    wait_for("the Service re-created", lambda: (admin.find(service) or {}).get("spec"))

    # The pods the real controllers made (Pending: no kubelet here) are the ReplicaSets'.
    pods_path = f"/api/v1/namespaces/{ns}/pods"
    pods = wait_for("pods", lambda: admin.get(pods_path)["items"])
    assert {p["metadata"]["ownerReferences"][0]["kind"] for p in pods} == {"ReplicaSet"}

    # Deleting the source takes every child with it: Kubernetes' garbage collector does it.
    admin.delete(source_path)
    for path in children(ns):
        wait_for(f"{path} collected", lambda path=path: admin.find(path) is None, timeout=60)
    replicasets = f"/apis/apps/v1/namespaces/{ns}/replicasets"
    wait_for("ReplicaSets collected", lambda: admin.get(replicasets)["items"] == [], timeout=60)
    wait_for("pods collected", lambda: admin.get(pods_path)["items"] == [], timeout=60)


def test_children_the_spec_drops_are_deleted_by_the_operator(
    admin: Api, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    source_path = create_github_source(admin, ns)
    optional = children(ns)[4:]  # the PodDisruptionBudget and the Ingress
    for path in optional:
        wait_for(path, lambda path=path: admin.find(path))
    admin.merge_patch(source_path, {"spec": {"replicas": 1, "exposure": None}})
    for path in optional:
        wait_for(f"{path} deleted", lambda path=path: admin.find(path) is None)
    assert admin.find(children(ns)[2]) is not None, "what is still asked for stays"


def test_schedules_report_what_keeps_them_from_running_through_the_real_schema(
    admin: Api, operator: OperatorProcess, namespace: str
) -> None:
    ns = namespace
    sync: JsonDict = {
        "apiVersion": DFM,
        "kind": "SyncSchedule",
        "metadata": {"name": "crm"},
        "spec": {
            "schedule": "*/15 * * * *",
            "connector": {"http": {"url": "https://api.example.com/items"}},
            "sink": {"webhookSourceRef": {"name": "github"}},
        },
    }
    backup: JsonDict = {
        "apiVersion": DFM,
        "kind": "BackupSchedule",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "0 3 30 2 *",  # 30 February: croniter cannot evaluate it
            "databaseSecretRef": {"name": "events-db", "key": "url"},
            "destination": {"pvc": {"claimName": "events-backups"}},
        },
    }
    admin.create(path_of("syncschedules", ns), sync)
    admin.create(path_of("backupschedules", ns), backup)
    obj = wait_ready(admin, "syncschedules", ns, "crm", "False", "SinkNotFound")
    assert "WebhookSource github not found" in condition(obj)["message"]
    assert obj["status"]["observedGeneration"] == 1
    obj = wait_ready(admin, "backupschedules", ns, "nightly", "False", "InvalidSpec")
    assert "schedule" in condition(obj)["message"]
