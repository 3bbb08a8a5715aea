"""The fixture itself: a real API server that authenticates, authorizes, collects garbage and
runs Deployments, so that what the other tests see is Kubernetes' behaviour, not ours."""

from __future__ import annotations

import pytest

from tests.realkube.cluster import Api, ApiError, ControlPlane, wait_for

# Whichever test of the package runs first starts the session's control plane inside its own
# timeout (waits of up to 120 s for the API server and 120 s for the controller-manager): more
# than the default 120 s, or a loaded machine's slow start fails that test.
pytestmark = pytest.mark.timeout(600)


def test_the_api_server_is_ready_and_is_the_built_version(control_plane: ControlPlane) -> None:
    admin = control_plane.admin()
    assert admin.raw("GET", "/readyz") == b"ok"
    version = admin.get("/version")
    assert version["gitVersion"].startswith("v1.")
    assert version["major"] == "1"


def test_rbac_is_enforced(control_plane: ControlPlane, namespace: str) -> None:
    nobody = control_plane.as_token("not-a-token")
    with pytest.raises(ApiError) as unauthenticated:
        nobody.get("/api/v1/namespaces")
    assert unauthenticated.value.status == 401

    # A ServiceAccount without any binding: authenticated, and refused.
    token = control_plane.service_account_token(namespace, "default")
    with pytest.raises(ApiError) as forbidden:
        control_plane.as_token(token).get(f"/api/v1/namespaces/{namespace}/secrets")
    assert forbidden.value.status == 403
    assert f"system:serviceaccount:{namespace}:default" in forbidden.value.message


def test_deployments_get_pods_and_garbage_is_collected(admin: Api, namespace: str) -> None:
    labels = {"app": "sleeper"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/sleeper:1"}]},
            },
        },
    }
    admin.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"

    def pods() -> list[dict[str, object]]:
        return list(admin.get(pods_path)["items"])

    made = wait_for("two pods from the ReplicaSet", lambda: len(pods()) == 2 and pods())
    owner = made[0]["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert owner["kind"] == "ReplicaSet"
    # No scheduler, no kubelet: Pending until something plays kubelet.
    assert {p["status"]["phase"] for p in made} == {"Pending"}  # type: ignore[index]

    admin.delete(f"/apis/apps/v1/namespaces/{namespace}/deployments/sleeper")
    replicasets = f"/apis/apps/v1/namespaces/{namespace}/replicasets"
    wait_for("the ReplicaSet collected", lambda: admin.get(replicasets)["items"] == [])
    wait_for("the pods collected", lambda: pods() == [])
