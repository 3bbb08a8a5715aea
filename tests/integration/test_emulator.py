"""The emulated Kubernetes API (the kube_emulator package): HTTP semantics, then a real kopf run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from kube_emulator import (
    APPLY_PATCH,
    CRDS,
    DEPLOYMENTS,
    JSON_PATCH,
    MERGE_PATCH,
    SERVICEMONITORS,
    STRATEGIC_MERGE_PATCH,
    WEBHOOKSOURCES,
    ApiError,
    DfmKubernetesEmulator,
    emulated_cluster,
)
from tests.kube.conftest_helpers import k8s, kopf_running, kubeconfig, login_to

__all__ = ["k8s", "kubeconfig"]  # fixtures used by the tests below

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"
NS = "default"
WHS = "/apis/dfm.dev/v1alpha1/namespaces/default/webhooksources"


@pytest.fixture
async def http(k8s: DfmKubernetesEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(base_url=k8s.base_url, timeout=timeout) as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else body if isinstance(body, str) else json.dumps(body)
    headers = {"Content-Type": content_type}
    async with http.request(method, path, data=data, headers=headers, params=params) as resp:
        return resp.status, await resp.json(content_type=None)


def source(name: str = "gh", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": name},
        "spec": spec or {"provider": "github"},
    }


# ------------------------------------------------------------------------ raw HTTP semantics


async def test_discovery_serves_what_kopf_scans(http: aiohttp.ClientSession) -> None:
    status, api = await call(http, "GET", "/api")
    assert status == 200
    assert api["versions"] == ["v1"]
    status, core = await call(http, "GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    core_names = {r["name"] for r in core["resources"]}
    assert {
        "namespaces",
        "events",
        "secrets",
        "configmaps",
        "services",
        "pods/status",
    } <= core_names

    _, apis = await call(http, "GET", "/apis")
    groups = {g["name"] for g in apis["groups"]}
    assert {
        "apps",
        "policy",
        "networking.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
        "kopf.dev",
        "monitoring.coreos.com",
        "dfm.dev",
    } <= groups

    _, dfm = await call(http, "GET", "/apis/dfm.dev/v1alpha1")
    by_name = {r["name"]: r for r in dfm["resources"]}
    assert {"webhooksources", "managedsecrets", "syncschedules", "backupschedules"} <= set(by_name)
    assert by_name["webhooksources"]["kind"] == "WebhookSource"
    assert by_name["webhooksources"]["namespaced"] is True
    assert {"list", "watch", "patch"} <= set(by_name["webhooksources"]["verbs"])
    assert "webhooksources/status" in by_name
    _, apps = await call(http, "GET", "/apis/apps/v1")
    assert "deployments/status" in {r["name"] for r in apps["resources"]}
    _, kopf_dev = await call(http, "GET", "/apis/kopf.dev/v1")
    assert {"clusterkopfpeerings", "kopfpeerings"} <= {r["name"] for r in kopf_dev["resources"]}
    _, crds = await call(http, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert "webhooksources.dfm.dev" in {c["metadata"]["name"] for c in crds["items"]}


async def test_servicemonitor_crd_is_optional() -> None:
    async with emulated_cluster(servicemonitors=False) as k8s:
        status, _ = await k8s.api_request("GET", "/apis/monitoring.coreos.com/v1")
        assert status == 404
        status, _ = await k8s.api_request("GET", k8s.path_for(SERVICEMONITORS, NS))
        assert status == 404
        _, apis = await k8s.api_request("GET", "/apis")
        assert "monitoring.coreos.com" not in {g["name"] for g in apis["groups"]}

        k8s.set_servicemonitors(True)  # "helm install kube-prometheus-stack", later
        status, _ = await k8s.api_request("GET", "/apis/monitoring.coreos.com/v1")
        assert status == 200
        assert k8s.get_object(CRDS, None, "servicemonitors.monitoring.coreos.com") is not None
        created = await k8s.create(SERVICEMONITORS, {"metadata": {"name": "m"}, "spec": {}}, NS)
        assert created["kind"] == "ServiceMonitor"

        k8s.set_servicemonitors(False)  # uninstalling a CRD deletes its objects too
        assert k8s.get_object(SERVICEMONITORS, NS, "m") is None
        status, _ = await k8s.api_request("GET", "/apis/monitoring.coreos.com/v1")
        assert status == 404


async def test_create_get_list_and_errors(http: aiohttp.ClientSession) -> None:
    status, created = await call(http, "POST", WHS, {**source(), "status": {"phase": "Fake"}})
    assert status == 201
    meta = created["metadata"]
    assert meta["namespace"] == NS
    assert meta["generation"] == 1
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["resourceVersion"].isdigit()
    assert "status" not in created  # the status subresource: status is not writable on create

    status, again = await call(http, "POST", WHS, source())
    assert status == 409
    assert again["reason"] == "AlreadyExists"
    status, missing = await call(http, "GET", f"{WHS}/nope")
    assert status == 404
    assert missing["kind"] == "Status"
    assert missing["code"] == 404
    status, _ = await call(http, "PATCH", f"{WHS}/nope", {"spec": {}}, content_type=MERGE_PATCH)
    assert status == 404
    status, _ = await call(http, "DELETE", f"{WHS}/nope")
    assert status == 404
    status, _ = await call(http, "GET", "/apis/dfm.dev/v1alpha1/namespaces/default/nothings")
    assert status == 404

    status, fetched = await call(http, "GET", f"{WHS}/gh")
    assert status == 200
    assert fetched == created
    await call(
        http, "POST", WHS, {**source("other"), "metadata": {"name": "b", "labels": {"x": "1"}}}
    )
    status, listing = await call(http, "GET", "/apis/dfm.dev/v1alpha1/webhooksources")
    assert listing["kind"] == "WebhookSourceList"
    assert sorted(i["metadata"]["name"] for i in listing["items"]) == ["b", "gh"]
    assert int(listing["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    _, selected = await call(http, "GET", WHS, params={"labelSelector": "x=1"})
    assert [i["metadata"]["name"] for i in selected["items"]] == ["b"]
    _, other_ns = await call(http, "GET", "/apis/dfm.dev/v1alpha1/namespaces/x/webhooksources")
    assert other_ns["items"] == []

    _, namespaces = await call(http, "GET", "/api/v1/namespaces")
    assert {"default", "kube-system"} <= {n["metadata"]["name"] for n in namespaces["items"]}
    status, namespace = await call(http, "GET", "/api/v1/namespaces/default")
    assert status == 200
    assert "namespace" not in namespace["metadata"]  # cluster-scoped

    status, invalid = await call(http, "POST", WHS, source("Not_A_Name"))
    assert status == 422
    assert invalid["reason"] == "Invalid"


async def test_generation_resource_version_and_status_split(
    http: aiohttp.ClientSession, k8s: DfmKubernetesEmulator
) -> None:
    _, created = await call(http, "POST", WHS, source())
    rv0 = int(created["metadata"]["resourceVersion"])

    # A spec change bumps both the generation and the resourceVersion.
    _, patched = await call(
        http, "PATCH", f"{WHS}/gh", {"spec": {"provider": "stripe"}}, content_type=MERGE_PATCH
    )
    assert patched["spec"] == {"provider": "stripe"}
    assert patched["metadata"]["generation"] == 2
    rv1 = int(patched["metadata"]["resourceVersion"])
    assert rv1 > rv0

    # Status in a write to the main resource is ignored: a no-op, nothing changes.
    _, ignored = await call(
        http, "PATCH", f"{WHS}/gh", {"status": {"phase": "X"}}, content_type=MERGE_PATCH
    )
    assert "status" not in ignored
    assert int(ignored["metadata"]["resourceVersion"]) == rv1

    # Metadata-only changes do not bump the generation.
    _, labelled = await call(
        http, "PATCH", f"{WHS}/gh", {"metadata": {"labels": {"a": "b"}}}, content_type=MERGE_PATCH
    )
    assert labelled["metadata"]["generation"] == 2
    rv2 = int(labelled["metadata"]["resourceVersion"])
    assert rv2 > rv1

    # The /status subresource changes only the status and never bumps the generation.
    body = {"spec": {"provider": "slack"}, "status": {"phase": "Ready"}}
    _, with_status = await call(http, "PATCH", f"{WHS}/gh/status", body, content_type=MERGE_PATCH)
    assert with_status["status"] == {"phase": "Ready"}
    assert with_status["spec"] == {"provider": "stripe"}
    assert with_status["metadata"]["generation"] == 2
    assert int(with_status["metadata"]["resourceVersion"]) > rv2

    # PUT replaces the main resource, keeping the status and the system metadata.
    replacement = {**source(provider="github"), "status": {"phase": "Nope"}}
    status, replaced = await call(http, "PUT", f"{WHS}/gh", replacement)
    assert status == 200
    assert replaced["status"] == {"phase": "Ready"}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["generation"] == 3
    assert "labels" not in replaced["metadata"]
    stale = {**source(), "metadata": {"name": "gh", "resourceVersion": str(rv0)}}
    status, conflict = await call(http, "PUT", f"{WHS}/gh", stale)
    assert status == 409
    assert conflict["reason"] == "Conflict"

    # Deployments have the split too; the helper reports a rollout through the API.
    deployment = {"metadata": {"name": "d"}, "spec": {"replicas": 2}}
    await k8s.create(DEPLOYMENTS, deployment, NS)
    available = await k8s.mark_deployment_available(NS, "d")
    assert available["status"]["availableReplicas"] == 2
    assert available["status"]["observedGeneration"] == 1
    assert {"type": "Available", "status": "True"}.items() <= available["status"]["conditions"][
        0
    ].items()
    history = k8s.objects[DEPLOYMENTS, NS, "d"].history
    assert len(history) == 2  # created, then the status write


async def test_json_patch_with_test_op(http: aiohttp.ClientSession) -> None:
    _, created = await call(http, "POST", WHS, source())
    rv = created["metadata"]["resourceVersion"]
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]
    status, failed = await call(http, "PATCH", f"{WHS}/gh", ops, content_type=JSON_PATCH)
    assert status == 422
    assert failed["code"] == 422
    ops[0]["value"] = rv
    status, patched = await call(http, "PATCH", f"{WHS}/gh", ops, content_type=JSON_PATCH)
    assert status == 200
    assert patched["metadata"]["finalizers"] == ["x/y"]
    bad_path = [{"op": "remove", "path": "/spec/nothing"}]
    status, _ = await call(http, "PATCH", f"{WHS}/gh", bad_path, content_type=JSON_PATCH)
    assert status == 422

    # Custom resources refuse strategic merge (built-ins accept it, as a merge patch here).
    status, refused = await call(
        http, "PATCH", f"{WHS}/gh", {"spec": {}}, content_type=STRATEGIC_MERGE_PATCH
    )
    assert status == 415
    assert refused["code"] == 415
    await call(http, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    status, cm = await call(
        http,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/c",
        {"data": {"k": "v"}},
        content_type=STRATEGIC_MERGE_PATCH,
    )
    assert status == 200
    assert cm["data"] == {"k": "v"}


async def test_server_side_apply(http: aiohttp.ClientSession, k8s: DfmKubernetesEmulator) -> None:
    params = {"fieldManager": "op", "force": "true"}
    yaml_body = (
        "apiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\nmetadata:\n  name: gh\n"
        "  labels: {a: b}\nspec:\n  provider: github\n  path: /gh\n"
    )
    status, created = await call(
        http, "PATCH", f"{WHS}/gh", yaml_body, content_type=APPLY_PATCH, params=params
    )
    assert status == 201
    assert created["spec"] == {"provider": "github", "path": "/gh"}
    assert created["metadata"]["managedFields"][0]["manager"] == "op"
    assert created["metadata"]["managedFields"][0]["operation"] == "Apply"

    # Another manager's field survives; a field dropped from this manager's config is removed.
    await call(http, "PATCH", f"{WHS}/gh", {"spec": {"extra": 1}}, content_type=MERGE_PATCH)
    json_body = {**source(provider="stripe"), "metadata": {"name": "gh", "labels": {"a": "b"}}}
    status, applied = await call(
        http, "PATCH", f"{WHS}/gh", json_body, content_type=APPLY_PATCH, params=params
    )
    assert status == 200
    assert applied["spec"] == {"provider": "stripe", "extra": 1}
    assert applied["metadata"]["generation"] == 3

    # Re-applying the same configuration is a no-op.
    _, same = await call(
        http, "PATCH", f"{WHS}/gh", json_body, content_type=APPLY_PATCH, params=params
    )
    assert same["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"]

    status, _ = await call(http, "PATCH", f"{WHS}/gh", json_body, content_type=APPLY_PATCH)
    assert status == 400  # fieldManager is required for apply
    via_helper = await k8s.apply(WEBHOOKSOURCES, {**source("x"), "status": {"phase": "Ready"}}, NS)
    assert "status" not in via_helper  # the main resource ignores status, even with apply
    with_status = await k8s.apply(
        WEBHOOKSOURCES, {**source("x"), "status": {"phase": "Ready"}}, NS, subresource="status"
    )
    assert with_status["status"] == {"phase": "Ready"}


async def test_finalizers_block_deletion(k8s: DfmKubernetesEmulator) -> None:
    body = source()
    body["metadata"]["finalizers"] = ["dfm.dev/cleanup"]
    await k8s.create(WEBHOOKSOURCES, body, NS)
    deleting = await k8s.delete_object(WEBHOOKSOURCES, NS, "gh")
    assert deleting["metadata"]["deletionTimestamp"]
    assert k8s.get_object(WEBHOOKSOURCES, NS, "gh") is not None  # kept until finalizers are gone

    finalizers = {"metadata": {"finalizers": ["dfm.dev/cleanup", "new/one"]}}
    with pytest.raises(ApiError) as e:
        await k8s.patch_object(WEBHOOKSOURCES, NS, "gh", finalizers)
    assert e.value.status == 422  # no new finalizers while being deleted

    await k8s.patch_object(WEBHOOKSOURCES, NS, "gh", {"metadata": {"finalizers": None}})
    assert k8s.get_object(WEBHOOKSOURCES, NS, "gh") is None
    history = k8s.objects[WEBHOOKSOURCES, NS, "gh"].history
    assert history[-1] is None
    last_seen = history[-2]
    assert last_seen is not None
    assert last_seen["metadata"]["deletionTimestamp"]


async def test_garbage_collection_of_owned_children(k8s: DfmKubernetesEmulator) -> None:
    owner = await k8s.create(WEBHOOKSOURCES, source(), NS)
    ref = {"apiVersion": "dfm.dev/v1alpha1", "kind": "WebhookSource", "name": "gh"}
    ref["uid"] = owner["metadata"]["uid"]
    child = {"metadata": {"name": "gh-receiver", "ownerReferences": [ref]}, "spec": {}}
    await k8s.create(DEPLOYMENTS, child, NS)
    await k8s.delete_object(WEBHOOKSOURCES, NS, "gh")
    assert k8s.get_object(DEPLOYMENTS, NS, "gh-receiver") is None


async def test_deployments_can_roll_out_by_themselves() -> None:
    async with emulated_cluster(deployment_rollout_delay=0.05) as k8s:
        await k8s.create(DEPLOYMENTS, {"metadata": {"name": "d"}, "spec": {"replicas": 1}}, NS)
        await k8s.patch_object(DEPLOYMENTS, NS, "d", {"spec": {"replicas": 3}})
        status = await k8s.wait_for(
            lambda: (k8s.get_object(DEPLOYMENTS, NS, "d") or {}).get("status"), seconds=3
        )
        assert status["observedGeneration"] == 2
        assert status["availableReplicas"] == 3


async def test_installs_the_committed_crds() -> None:
    manifests = [yaml.safe_load(p.read_text()) for p in sorted(CRDS_DIR.glob("*.yaml"))]
    if not manifests:
        pytest.skip("no CRDs committed under crds/")
    async with emulated_cluster() as k8s:
        for manifest in manifests:
            k8s.install_crd(manifest)
        for manifest in manifests:
            spec = manifest["spec"]
            version = spec["versions"][0]["name"]
            _, found = await k8s.api_request("GET", f"/apis/{spec['group']}/{version}")
            names = {r["name"] for r in found["resources"]}
            assert spec["names"]["plural"] in names
            has_status = "status" in (spec["versions"][0].get("subresources") or {})
            assert (f"{spec['names']['plural']}/status" in names) == has_status
            crd = k8s.get_object(CRDS, None, manifest["metadata"]["name"])
            assert crd is not None


async def test_secrets_string_data_and_events(k8s: DfmKubernetesEmulator) -> None:
    secret = await k8s.create(
        "v1/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}, NS
    )
    assert secret["data"] == {"k": "dg=="}
    assert "stringData" not in secret

    event = {
        "metadata": {"generateName": "dfm-"},
        "type": "Normal",
        "reason": "Synced",
        "message": "ok",
        "involvedObject": {"kind": "WebhookSource", "name": "gh", "namespace": NS},
    }
    posted = await k8s.create("v1/events", event, NS)
    assert posted["metadata"]["name"].startswith("dfm-")
    assert [e["message"] for e in k8s.events(NS, name="gh", reason="Synced")] == ["ok"]
    assert k8s.events(NS, name="other") == []


async def test_watch_resumes_from_resource_version_and_streams_live(
    http: aiohttp.ClientSession, k8s: DfmKubernetesEmulator
) -> None:
    await k8s.create(WEBHOOKSOURCES, source("before"), NS)
    _, listing = await call(http, "GET", "/apis/dfm.dev/v1alpha1/webhooksources")
    since = listing["metadata"]["resourceVersion"]
    await k8s.create(WEBHOOKSOURCES, source("between"), NS)  # after the list, before the watch

    params = {"watch": "true", "resourceVersion": since, "allowWatchBookmarks": "true"}
    async with http.get("/apis/dfm.dev/v1alpha1/webhooksources", params=params) as resp:

        async def next_event() -> dict[str, Any]:
            async with asyncio.timeout(3):
                return dict(json.loads(await resp.content.readline()))

        first = await next_event()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "between")
        await k8s.patch_object(WEBHOOKSOURCES, NS, "before", {"spec": {"provider": "x"}})
        second = await next_event()
        assert (second["type"], second["object"]["metadata"]["name"]) == ("MODIFIED", "before")
        assert int(second["object"]["metadata"]["resourceVersion"]) > int(
            first["object"]["metadata"]["resourceVersion"]
        )
        await k8s.delete_object(WEBHOOKSOURCES, NS, "between")
        third = await next_event()
        assert (third["type"], third["object"]["metadata"]["name"]) == ("DELETED", "between")

    # Without a resourceVersion: the current state as ADDED, and timeoutSeconds ends the stream.
    params = {"watch": "true", "timeoutSeconds": "1"}
    async with http.get("/apis/dfm.dev/v1alpha1/webhooksources", params=params) as resp:
        async with asyncio.timeout(3):
            lines = [json.loads(line) async for line in resp.content if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "before")]


async def test_watch_too_old_resource_version_is_gone() -> None:
    async with emulated_cluster(watch_log_size=2) as k8s:
        for name in ("a", "b", "c", "d"):
            await k8s.create(WEBHOOKSOURCES, source(name), NS)
        params = {"watch": "true", "resourceVersion": "1"}
        async with k8s.request("GET", k8s.path_for(WEBHOOKSOURCES), params=params) as resp:
            async with asyncio.timeout(3):
                event = json.loads(await resp.content.readline())
        assert event["type"] == "ERROR"
        assert event["object"]["code"] == 410


async def test_injected_faults_and_token_auth(tmp_path: Path) -> None:
    async with emulated_cluster(require_token="s3cret") as k8s:
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.get(f"{k8s.base_url}/api/v1/namespaces") as resp,
        ):
            assert resp.status == 401
        k8s.inject_fault("patch", WEBHOOKSOURCES, status=409, times=1)
        await k8s.create(WEBHOOKSOURCES, source(), NS)
        with pytest.raises(ApiError) as e:
            await k8s.patch_object(WEBHOOKSOURCES, NS, "gh", {"spec": {"a": 1}})
        assert e.value.status == 409
        patched = await k8s.patch_object(WEBHOOKSOURCES, NS, "gh", {"spec": {"a": 1}})
        assert patched["spec"]["a"] == 1
        config = k8s.write_kubeconfig(tmp_path / "kubeconfig").read_text()
        assert "s3cret" in config
        assert k8s.base_url in config


# ------------------------------------------------------------------------ a real kopf operator


def tiny_operator(deleted: list[str]) -> kopf.OperatorRegistry:
    """Handlers in their own registry: nothing leaks into kopf's global default registry."""
    registry = kopf.OperatorRegistry()
    # What kopf's default registry uses with the async client installed (via $KUBECONFIG).
    kopf.on.login(registry=registry)(kopf.login_via_async_client)

    @kopf.on.create("dfm.dev", "v1alpha1", "webhooksources", id="created", registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> dict[str, Any]:
        patch.status["phase"] = "Ready"
        kopf.info(body, reason="Provisioned", message=f"Provisioned {body['metadata']['name']}")
        return {"observedGeneration": body["metadata"]["generation"]}

    @kopf.on.delete("dfm.dev", "v1alpha1", "webhooksources", registry=registry)
    def removed(name: str, **_: Any) -> None:
        deleted.append(name)

    return registry


async def test_kopf_operator_against_the_emulator(
    k8s: DfmKubernetesEmulator, kubeconfig: Path
) -> None:
    deleted: list[str] = []
    registry = tiny_operator(deleted)
    args = ["run", "-A", "--standalone", "--verbose"]
    async with kopf_running(args, registry=registry) as runner:
        await k8s.create(WEBHOOKSOURCES, source(), NS)
        ready = await k8s.wait_for(
            lambda: (k8s.get_object(WEBHOOKSOURCES, NS, "gh") or {}).get("status", {}).get("phase"),
            what="the status written by the operator",
        )
        assert ready == "Ready"
        events = await k8s.wait_for(lambda: k8s.events(NS, name="gh", reason="Provisioned"))
        assert events[0]["message"] == "Provisioned gh"
        obj = k8s.get_object(WEBHOOKSOURCES, NS, "gh")
        assert obj is not None
        assert events[0]["involvedObject"]["uid"] == obj["metadata"]["uid"]
        assert obj["status"]["created"] == {"observedGeneration": 1}
        assert obj["metadata"]["finalizers"]  # kopf's, because there is a deletion handler

        await k8s.delete_object(WEBHOOKSOURCES, NS, "gh")
        await k8s.wait_for(
            lambda: k8s.get_object(WEBHOOKSOURCES, NS, "gh") is None, what="deletion"
        )
        assert deleted == ["gh"]

    assert runner.exit_code == 0
    assert runner.exception is None
    assert "Creation is processed: 1 succeeded" in runner.output
    assert "Deleted, really deleted" in runner.output


async def test_kopf_notices_a_crd_installed_later() -> None:
    seen: list[str] = []
    registry = kopf.OperatorRegistry()
    async with emulated_cluster(servicemonitors=False) as k8s:
        kopf.on.login(registry=registry)(login_to(k8s))

        @kopf.on.event("monitoring.coreos.com", "v1", "servicemonitors", registry=registry)
        def monitor_event(name: str, **_: Any) -> None:
            seen.append(name)

        async with kopf_running(["run", "-A", "--standalone"], registry=registry) as runner:
            await k8s.wait_for(
                lambda: any(r.params.get("watch") for r in k8s if r.resource == CRDS),
                what="kopf to watch the CRDs",
            )
            k8s.set_servicemonitors(True)
            await k8s.wait_for(
                lambda: any(r.resource == SERVICEMONITORS for r in k8s),
                what="kopf to start watching ServiceMonitors",
            )
            await k8s.create(SERVICEMONITORS, {"metadata": {"name": "m"}, "spec": {}}, NS)
            await k8s.wait_for(lambda: "m" in seen, what="the ServiceMonitor event handler")
        assert runner.exit_code == 0
        assert runner.exception is None
