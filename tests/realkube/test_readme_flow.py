"""The README's operator section, exactly as written, against the real API server:

    kubectl apply -f crds/
    kubectl create secret generic dfm-events-db --from-literal=url=postgresql://…
    dfm operator
    kubectl apply -f examples/
    kubectl get webhooksources

Only the operator's two ports are chosen free (8080 and 8081 may be taken on a shared machine),
and the receivers it creates run under the kubelet player. These tests start from an API server
without CRDs and leave none behind (conftest runs them before the chart is installed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.realkube.cluster import Api, ControlPlane, wait_for
from tests.realkube.kubelet import KubeletPlayer
from tests.realkube.running import ROOT, clean_env, condition, kubectl, path_of
from tests.realkube.tools import Tools
from tests.tools import free_ports

NS = "default"  # the examples' namespace


def dfm_operator(kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    metrics_port, liveness_port = free_ports(2)
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "dfm.cli", "operator",
                "--metrics-port", str(metrics_port),
                "--liveness", f"http://127.0.0.1:{liveness_port}/healthz",
            ],
            env=clean_env(KUBECONFIG=str(kubeconfig)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def example_sources() -> list[str]:
    names = []
    for file in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc and doc["kind"] == "WebhookSource":
                names.append(doc["metadata"]["name"])
    return names


def test_without_the_peering_crds_dfm_operator_says_what_to_apply(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # An API server without crds/ applied: one line naming the fix, a non-zero exit, no hang.
    proc = dfm_operator(control_plane.admin_kubeconfig, tmp_path / "operator.log")
    code = proc.wait(60)
    said = (tmp_path / "operator.log").read_text()
    assert code == 2, said
    assert "kopf peering is not installed" in said
    assert "kubectl apply -f crds/" in said
    assert "--standalone" in said


def drop_finalizers(admin: Api) -> None:
    """Lets what a stopped operator left behind be deleted (kopf's finalizers)."""
    for plural in ("webhooksources", "managedsecrets", "syncschedules", "backupschedules"):
        found = admin.find(f"/apis/dfm.dev/v1alpha1/{plural}") or {"items": []}
        for obj in found["items"]:
            if obj["metadata"].get("finalizers"):
                meta = obj["metadata"]
                admin.merge_patch(
                    path_of(plural, meta["namespace"], meta["name"]),
                    {"metadata": {"finalizers": None}},
                )


@pytest.fixture
def cleanup(control_plane: ControlPlane, admin: Api, tools: Tools) -> Iterator[None]:
    yield
    kc = control_plane.admin_kubeconfig
    drop_finalizers(admin)
    kubectl(tools, kc, "delete", "-f", str(ROOT / "examples"), "--ignore-not-found", check=False)
    kubectl(tools, kc, "delete", "secret", "dfm-events-db", "--ignore-not-found", check=False)
    kubectl(
        tools, kc, "delete", "clusterkopfpeering", "df-middleware", "--ignore-not-found",
        check=False,
    )  # fmt: skip
    kubectl(tools, kc, "delete", "-f", str(ROOT / "crds"), "--ignore-not-found", "--wait")


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("cleanup")
def test_the_readme_operator_flow_reaches_ready(
    control_plane: ControlPlane, admin: Api, tools: Tools, database: str, tmp_path: Path
) -> None:
    kc = control_plane.admin_kubeconfig
    kubectl(tools, kc, "apply", "-f", str(ROOT / "crds"))
    kubectl(
        tools, kc, "create", "secret", "generic", "dfm-events-db", f"--from-literal=url={database}"
    )
    operator = dfm_operator(kc, tmp_path / "operator.log")
    pg_port = urlsplit(database).port or 5432
    player = KubeletPlayer(admin, NS, tmp_path / "kubelet", services=[pg_port]).start()
    try:
        # The operator made the peering object it needs (the CRD came from crds/) and is active.
        peering = wait_for(
            "the ClusterKopfPeering with the operator's heartbeat",
            lambda: (admin.find("/apis/kopf.dev/v1/clusterkopfpeerings/df-middleware") or {}).get(
                "status"
            ),
            timeout=60,
        )
        assert len(peering) == 1
        kubectl(tools, kc, "apply", "-f", str(ROOT / "examples"))

        sources = example_sources()
        assert len(sources) >= 7

        def all_available() -> bool:
            return all(
                (condition(admin.find(path_of("webhooksources", NS, name))).get("reason"))
                == "Available"
                for name in sources
            )

        try:
            wait_for("every example WebhookSource Ready=True/Available", all_available, timeout=300)
        except TimeoutError:
            states = {
                name: condition(admin.find(path_of("webhooksources", NS, name))) for name in sources
            }
            pytest.fail(
                f"not all Available: {states}\nplayer errors: {player.errors}\n"
                f"operator log:\n{(tmp_path / 'operator.log').read_text()[-3000:]}"
            )
        table = kubectl(tools, kc, "get", "webhooksources").stdout
        lines = table.splitlines()
        assert lines[0].split()[:5] == ["NAME", "PROVIDER", "READY", "REASON", "ENDPOINT"]
        for name in sources:
            [row] = [line.split() for line in lines[1:] if line.split()[0] == name]
            assert row[2:4] == ["True", "Available"], table
        assert player.errors == []
        # Deleted while the operator runs: it removes its finalizers, the GC the children.
        kubectl(tools, kc, "delete", "-f", str(ROOT / "examples"))
    finally:
        player.stop()
        code = stop(operator)
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]
    assert "created ClusterKopfPeering df-middleware" in (tmp_path / "operator.log").read_text()
