"""The chart installed with the real `helm install`, its operator running as the chart's
ServiceAccount (so its RBAC is what is tested), and receivers that really run: from an empty API
server to a stored, verified webhook, then a ManagedSecret rotation reaching the running receiver
through the projected Secret files."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from tests.realkube.cluster import Api, ControlPlane, JsonDict, wait_for
from tests.realkube.kubelet import KubeletPlayer
from tests.realkube.running import (
    DFM,
    OperatorProcess,
    Release,
    clean_env,
    forbidden,
    granted_by,
    helm,
    install_chart,
    path_of,
    pruned_status_fields,
    requests_by,
    run_operator,
    wait_ready,
)
from tests.realkube.tools import Tools

pytestmark = pytest.mark.timeout(600)


def secret(namespace: str, name: str, **data: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    }


def secret_data(admin: Api, namespace: str, name: str) -> dict[str, str]:
    obj = admin.find(path_of("secrets", namespace, name, group="v1")) or {}
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def send(source: JsonDict, current: str, url: str, delivery: str, workdir: Path) -> tuple[int, str]:
    """`dfm send` as the provider would: the source and the signing Secret's value in a file."""
    ref = source["spec"]["verification"]["managedSecretRef"]["name"]
    file = workdir / f"send-{uuid.uuid4().hex[:6]}.yaml"
    file.write_text(
        yaml.safe_dump_all([source, secret(source["metadata"]["namespace"], ref, current=current)])
    )
    result = subprocess.run(
        [sys.executable, "-m", "dfm.cli", "send", str(file), "--url", url, "--id", delivery],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    status = int(result.stdout.split()[1]) if result.stdout.startswith("HTTP ") else 0
    return status, result.stdout + result.stderr


def stored_events(database: str) -> list[tuple[str, str]]:
    async def fetch() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(database)
        try:
            rows = await conn.fetch("SELECT source, event_id FROM webhook_events ORDER BY event_id")
        finally:
            await conn.close()
        return [(r["source"], r["event_id"]) for r in rows]

    return asyncio.run(fetch())


def test_from_an_empty_api_server_to_a_stored_verified_webhook(
    admin: Api,
    operator: OperatorProcess,
    namespace: str,
    database: str,
    tmp_path: Path,
) -> None:
    ns = namespace
    admin.create(path_of("secrets", ns, group="v1"), secret(ns, "dfm-events-db", url=database))
    admin.create(
        path_of("managedsecrets", ns),
        {
            "apiVersion": DFM,
            "kind": "ManagedSecret",
            "metadata": {"name": "signing", "namespace": ns},
            "spec": {
                "type": "random",
                "random": {"prefix": "whsec_"},
                "rotation": {"every": "720h", "gracePeriod": "1h"},
            },
        },
    )
    source = {
        "apiVersion": DFM,
        "kind": "WebhookSource",
        "metadata": {"name": "clerk", "namespace": ns},
        "spec": {"provider": "standard", "verification": {"managedSecretRef": {"name": "signing"}}},
    }
    admin.create(path_of("webhooksources", ns), source)
    player = KubeletPlayer(
        admin, ns, tmp_path / "kubelet", services=[urlsplit(database).port or 5432]
    ).start()
    try:
        obj = wait_ready(admin, "webhooksources", ns, "clerk", "True", "Available", timeout=240)
        assert obj["status"]["readyReplicas"] == 1
        [pod] = player.running()
        url = f"http://127.0.0.1:{player.port(pod, 8080)}/hooks/{ns}/clerk"

        first = secret_data(admin, ns, "signing")["current"]
        assert first.startswith("whsec_")
        status, said = send(source, first, url, "d-1", tmp_path)
        assert status == 200, f"{said}\nreceiver log:\n{player.log_of(pod)[-2000:]}"
        assert json.loads(said.split("\n", 1)[1])["status"] == "stored"
        assert stored_events(database) == [(f"{ns}/clerk", "d-1")]
        status, _ = send(source, "whsec_" + "A" * 43, url, "d-x", tmp_path)
        assert status == 401, "a wrong signature is refused"

        deployment_path = path_of("deployments", ns, "clerk-receiver", group="apps/v1")
        template = admin.get(deployment_path)["spec"]["template"]
        admin.merge_patch(
            path_of("managedsecrets", ns, "signing"),
            {"metadata": {"annotations": {"dfm.dev/rotate-now": "1"}}},
        )
        rotated = wait_for(
            "the rotated Secret",
            lambda: (d := secret_data(admin, ns, "signing")).get("previous") == first and d,
            timeout=60,
        )
        second = rotated["current"]
        assert second != first

        # kubelet (the player) rewrites the mounted files; the receiver re-reads them, no restart.
        def accepted(value: str, delivery: str) -> bool:
            return send(source, value, url, delivery, tmp_path)[0] == 200

        wait_for("the new secret accepted", lambda: accepted(second, "d-2"), timeout=90, every=1)
        assert accepted(first, "d-3"), "the previous secret stays valid during the grace period"
        assert stored_events(database) == [(f"{ns}/clerk", d) for d in ("d-1", "d-2", "d-3")]
        assert player.running() == [pod], "a rotation never restarts the receiver"
        assert admin.get(deployment_path)["spec"]["template"] == template, "nor rolls it"
        assert player.errors == []
    finally:
        player.stop()


@pytest.fixture
def namespaced_release(
    control_plane: ControlPlane, tools: Tools, chart: Release, namespace: str
) -> Iterator[Release]:
    """A second release, namespace-scoped (a Role in the watched namespace only); the CRDs stay
    with the cluster-wide release."""
    home = f"{namespace}-op"
    release = install_chart(
        tools,
        control_plane,
        "dfm-ns",
        home,
        {"crds": {"enabled": False}, "watchNamespaces": [namespace]},
    )
    yield release
    helm(tools, control_plane.admin_kubeconfig, "uninstall", "dfm-ns", "--namespace", home)
    control_plane.admin().delete(f"/api/v1/namespaces/{home}")


def test_the_namespaced_chart_operator_works_with_its_role_only(
    control_plane: ControlPlane,
    admin: Api,
    namespaced_release: Release,
    namespace: str,
    tmp_path: Path,
    rbac_record: dict[str, set[tuple[str, str, str]]],
) -> None:
    ns = namespace
    elsewhere = f"{ns}-unwatched"
    admin.create("/api/v1/namespaces", {"metadata": {"name": elsewhere}})
    seen = len(control_plane.audit_events())
    try:
        with run_operator(control_plane, namespaced_release, tmp_path) as op:
            for where in (ns, elsewhere):
                admin.create(
                    path_of("secrets", where, group="v1"),
                    secret(where, "dfm-events-db", url="postgresql://db.invalid/events"),
                )
                admin.create(
                    path_of("secrets", where, group="v1"), secret(where, "gh", secret="s3cret")
                )
                admin.create(
                    path_of("webhooksources", where),
                    {
                        "apiVersion": DFM,
                        "kind": "WebhookSource",
                        "metadata": {"name": "github", "namespace": where},
                        "spec": {
                            "provider": "github",
                            "verification": {"secretRef": {"name": "gh", "key": "secret"}},
                        },
                    },
                )
                # Backups to a claim the user made (the operator reads it, creates none).
                admin.create(
                    path_of("persistentvolumeclaims", where, group="v1"),
                    {
                        "metadata": {"name": "backups"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    },
                )
                admin.create(
                    path_of("backupschedules", where),
                    {
                        "apiVersion": DFM,
                        "kind": "BackupSchedule",
                        "metadata": {"name": "nightly"},
                        "spec": {
                            "schedule": "0 3 * * *",
                            "suspend": True,  # nothing runs these
                            "databaseSecretRef": {"name": "dfm-events-db", "key": "url"},
                            "destination": {"pvc": {"claimName": "backups"}},
                        },
                    },
                )
            admin.create(
                path_of("managedsecrets", ns),
                {
                    "apiVersion": DFM,
                    "kind": "ManagedSecret",
                    "metadata": {"name": "token", "namespace": ns},
                    "spec": {"type": "random", "random": {}},
                },
            )
            wait_ready(admin, "webhooksources", ns, "github", "False", "DeploymentUnavailable")
            wait_ready(admin, "managedsecrets", ns, "token", "True", "Current")
            wait_ready(admin, "backupschedules", ns, "nightly", "False", "Suspended")
            for child in ("deployments", "services"):
                group = "apps/v1" if child == "deployments" else "v1"
                assert admin.find(path_of(child, ns, "github-receiver", group=group))
            cronjob = admin.get(path_of("cronjobs", ns, "nightly-backup", group="batch/v1"))
            assert cronjob["spec"]["suspend"] is True
            # The unwatched namespace is not touched.
            for plural, name in (("webhooksources", "github"), ("backupschedules", "nightly")):
                ignored = admin.get(path_of(plural, elsewhere, name))
                assert "status" not in ignored, op.output()[-2000:]
            assert (
                admin.find(path_of("deployments", elsewhere, "github-receiver", "apps/v1")) is None
            )
            assert admin.find(path_of("cronjobs", elsewhere, "nightly-backup", "batch/v1")) is None
        user = namespaced_release.username
        new = [e for e in control_plane.audit_events()[seen:] if e["user"]["username"] == user]
        assert new, "the operator's requests are audited"
        assert forbidden(new) == [], f"the chart's Role refused the operator: {forbidden(new)}"
        assert pruned_status_fields(new) == []
        # For tests/realkube/test_rbac_audit.py, once every test has run.
        rbac_record[namespaced_release.username] = granted_by(
            admin, namespaced_release, namespaces=[ns]
        )
    finally:
        admin.delete(f"/api/v1/namespaces/{elsewhere}")


def test_a_grant_missing_from_the_chart_would_fail_these_tests(
    control_plane: ControlPlane, admin: Api, chart: Release, namespace: str, tmp_path: Path
) -> None:
    """The control for the RBAC checks: the chart's ClusterRole without `patch` on
    webhooksources/status, and the refused request is what the audit log shows."""
    name = f"dfm-without-status-{namespace[-5:]}"
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    rules = admin.get(f"{rbac}/clusterroles/{chart.deployment['metadata']['name']}")["rules"]
    for rule in rules:
        rule["resources"] = [r for r in rule["resources"] if r != "webhooksources/status"]
    rules = [rule for rule in rules if rule["resources"]]
    meta = {"name": name}
    admin.create(
        f"/api/v1/namespaces/{chart.namespace}/serviceaccounts",
        {"metadata": {"name": name, "namespace": chart.namespace}},
    )
    admin.create(f"{rbac}/clusterroles", {"metadata": meta, "rules": rules})
    admin.create(
        f"{rbac}/clusterrolebindings",
        {
            "metadata": meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": chart.namespace}],
        },
    )
    deployment = copy.deepcopy(chart.deployment)
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = name
    crippled = Release(name=name, namespace=chart.namespace, deployment=deployment)
    refused = f"patch dfm.dev/webhooksources/status in {namespace}"
    try:
        with run_operator(control_plane, crippled, tmp_path):
            admin.create(
                path_of("webhooksources", namespace),
                {
                    "apiVersion": DFM,
                    "kind": "WebhookSource",
                    "metadata": {"name": "highlevel"},
                    # No signing Secret to wait for; the database Secret is missing: the
                    # operator goes straight to writing Ready=False SecretNotFound.
                    "spec": {"provider": "highlevel"},
                },
            )
            wait_for(
                "the refused status write in the audit log",
                lambda: refused in forbidden(requests_by(control_plane, crippled.username)),
                timeout=60,
            )
    finally:
        admin.delete(f"{rbac}/clusterrolebindings/{name}")
        admin.delete(f"{rbac}/clusterroles/{name}")
        admin.delete(f"/api/v1/namespaces/{chart.namespace}/serviceaccounts/{name}")


def test_without_its_peering_object_the_chart_operator_says_so_and_exits(
    control_plane: ControlPlane, admin: Api, chart: Release, tmp_path: Path
) -> None:
    """The chart creates the ClusterKopfPeering and grants no `create`: should it be deleted,
    the operator says what is missing in one line instead of waiting silently forever."""
    path = "/apis/kopf.dev/v1/clusterkopfpeerings/df-middleware"
    peering = admin.get(path)
    admin.delete(path)
    try:
        with run_operator(control_plane, chart, tmp_path, expect_exit=2) as op:
            op.proc.wait(60)
        said = op.output()
        assert "no ClusterKopfPeering df-middleware, and this account may not create it" in said
        assert "--standalone" in said
    finally:
        meta = {k: peering["metadata"][k] for k in ("name", "labels", "annotations")}
        admin.create(
            "/apis/kopf.dev/v1/clusterkopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": meta},
        )
