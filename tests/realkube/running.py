"""The project as a user runs it against the real API server: helm, kubectl, `dfm operator`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realkube.cluster import Api, ControlPlane, JsonDict, wait_for
from tests.realkube.tools import Tools
from tests.tools import free_ports

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "df-middleware"
DFM = "dfm.dev/v1alpha1"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without DFM_* settings or a kubeconfig of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DFM_", "KUBECONFIG"))}
    env.update(extra)
    return env


def kubectl(
    tools: Tools, kubeconfig: Path, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [tools.kubectl, *args],
        env=clean_env(KUBECONFIG=str(kubeconfig)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {result.stderr.strip()}", pytrace=False)
    return result


def helm(tools: Tools, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as home:
        env = clean_env(KUBECONFIG=str(kubeconfig))
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = f"{home}/{var.lower()}"
        result = subprocess.run(
            [tools.helm, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )
    if result.returncode != 0:
        pytest.fail(f"helm {' '.join(args[:3])}: {result.stderr.strip()}", pytrace=False)
    return result


@dataclass(frozen=True)
class Release:
    """A `helm install`ed df-middleware: where its operator would run, and as whom."""

    name: str
    namespace: str
    deployment: JsonDict

    @property
    def container(self) -> JsonDict:
        [container] = self.deployment["spec"]["template"]["spec"]["containers"]
        return dict(container)

    @property
    def service_account(self) -> str:
        return str(self.deployment["spec"]["template"]["spec"]["serviceAccountName"])

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def install_chart(
    tools: Tools, plane: ControlPlane, name: str, namespace: str, values: JsonDict
) -> Release:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        helm(
            tools, plane.admin_kubeconfig,
            "install", name, str(CHART), "--namespace", namespace, "--create-namespace",
            "--values", file.name,
        )  # fmt: skip
    admin = plane.admin()
    deployments = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    [deployment] = [d for d in deployments if d["metadata"]["labels"].get(
        "app.kubernetes.io/instance") == name]  # fmt: skip
    return Release(name=name, namespace=namespace, deployment=deployment)


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_operator(
    plane: ControlPlane,
    release: Release,
    workdir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    expect_exit: int = 0,
) -> Iterator[OperatorProcess]:
    """`dfm operator` with the args and env of the chart's Deployment, as the chart's
    ServiceAccount (a token from the TokenRequest API, as kubelet would mount it). Only the ports
    are changed: in a pod they are the pod's own, here they must be free on this machine."""
    kubeconfig = plane.service_account_kubeconfig(
        workdir / f"{release.name}-sa.kubeconfig", release.namespace, release.service_account
    )
    container = release.container
    metrics_port, health_port = free_ports(2)
    args = []
    for arg in container["args"]:
        if arg.startswith("--metrics-port="):
            arg = f"--metrics-port={metrics_port}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{health_port}/healthz"
        args.append(arg)
    env = clean_env(KUBECONFIG=str(kubeconfig), **(extra_env or {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = f"{release.name}-operator-test"
    log = workdir / f"{release.name}-operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dfm.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    running = OperatorProcess(proc=proc, log=log, metrics_port=metrics_port)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == expect_exit, (
        f"dfm operator exited {proc.returncode}:\n{running.output()[-3000:]}"
    )


# --- reading objects ----------------------------------------------------------------------------


def path_of(plural: str, namespace: str, name: str = "", group: str = DFM) -> str:
    base = "/api/v1" if group == "v1" else f"/apis/{group}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def condition(obj: JsonDict | None, kind: str = "Ready") -> JsonDict:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def wait_ready(
    admin: Api,
    plural: str,
    namespace: str,
    name: str,
    status: str,
    reason: str,
    timeout: float = 90,
) -> JsonDict:
    seen: dict[str, Any] = {}

    def check() -> JsonDict | None:
        obj = admin.find(path_of(plural, namespace, name))
        cond = condition(obj)
        seen["last"] = cond
        return obj if (cond.get("status"), cond.get("reason")) == (status, reason) else None

    try:
        return wait_for(f"{plural} {name} Ready={status}/{reason}", check, timeout=timeout)
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}; last Ready condition: {json.dumps(seen.get('last'))}"
        ) from None


# --- the audit log ------------------------------------------------------------------------------


def requests_by(plane: ControlPlane, username: str) -> list[JsonDict]:
    return [e for e in plane.audit_events() if e.get("user", {}).get("username") == username]


def forbidden(events: list[JsonDict]) -> list[str]:
    """The requests the API server refused for want of a grant, as 'verb resource in ns'."""
    out = []
    for event in events:
        # RBAC's refusals only (not, say, a write into a namespace being deleted).
        decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision")
        if event.get("responseStatus", {}).get("code") == 403 and decision == "forbid":
            ref = event.get("objectRef", {})
            resource = ref.get("resource", event.get("requestURI"))
            if ref.get("subresource"):
                resource += f"/{ref['subresource']}"
            group = ref.get("apiGroup") or "core"
            out.append(f"{event['verb']} {group}/{resource} in {ref.get('namespace', '-')}")
    return sorted(set(out))


def pruned_status_fields(events: list[JsonDict]) -> list[str]:
    """Status keys the operator sent that the stored object lacks (pruned by the schema)."""
    missing: list[str] = []

    def compare(sent: Any, stored: Any, where: str) -> None:
        if isinstance(sent, dict):
            if not isinstance(stored, dict):
                missing.append(where)
                return
            for key, value in sent.items():
                if value is None:
                    continue  # a merge-patch deletion
                if key not in stored:
                    missing.append(f"{where}.{key}")
                else:
                    compare(value, stored[key], f"{where}.{key}")
        elif isinstance(sent, list) and isinstance(stored, list):
            for i, (a, b) in enumerate(zip(sent, stored, strict=False)):
                compare(a, b, f"{where}[{i}]")

    for event in events:
        ref = event.get("objectRef", {})
        if ref.get("subresource") != "status" or ref.get("apiGroup") != "dfm.dev":
            continue
        if event.get("responseStatus", {}).get("code", 500) >= 300:
            continue
        sent = (event.get("requestObject") or {}).get("status")
        stored = (event.get("responseObject") or {}).get("status")
        if sent is not None:
            compare(sent, stored, f"{ref['resource']}/{ref.get('name')}: status")
    return missing


# --- RBAC: what the chart grants against what the operator did -----------------------------------

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Grants no request of the operator shows in an audit log, and why they are needed all the same.
NOT_IN_THE_AUDIT_LOG: dict[Grant, str] = {
    ("dfm.dev", f"{plural}/finalizers", "update"): (
        "checked inside the server by OwnerReferencesPermissionEnforcement (enabled here) for "
        "every child applied with blockOwnerDeletion: without it those applies fail"
    )
    for plural in ("webhooksources", "managedsecrets", "syncschedules", "backupschedules")
}
# Grants these tests do not exercise, and why they are needed all the same.
NOT_EXERCISED: dict[Grant, str] = {
    **{
        ("monitoring.coreos.com", "servicemonitors", verb): (
            "only with metrics.serviceMonitor.enabled and the Prometheus Operator's CRD"
        )
        for verb in ("create", "delete", "get", "patch")
    },
    **{
        ("", "namespaces", verb): "kopf lists namespaces only to resolve patterns given to -n"
        for verb in ("list", "watch")
    },
    ("apps", "deployments", "get"): (
        "reconcile_webhook_source(apply=False) reads the Deployment when no event brought it; "
        "no handler calls it that way today"
    ),
}


def granted_by(admin: Api, release: Release, namespaces: list[str] | None = None) -> set[Grant]:
    """The (group, resource, verb) triples bound to the release's ServiceAccount: its
    ClusterRole, and its Role in each of ``namespaces``."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    name = release.deployment["metadata"]["name"]
    roles = [admin.get(f"{rbac}/clusterroles/{name}")]
    roles += [admin.get(f"{rbac}/namespaces/{ns}/roles/{name}") for ns in namespaces or []]
    return {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def authorized(event: JsonDict) -> bool:
    """Whether RBAC let the request through, whatever came of it: a `get` answered 404 (the
    operator's "ClaimNotFound") or a `create` answered 409 needed its grant as much as a 200;
    without it, the answer would have been 403."""
    decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision")
    if decision is not None:
        return bool(decision == "allow")
    return int(event.get("responseStatus", {}).get("code", 0)) < 400


def used_grants(events: list[JsonDict]) -> set[Grant]:
    """What the audited requests needed (those RBAC allowed); a server-side apply that created
    its object (201) also needed `create`."""
    out: set[Grant] = set()
    for event in events:
        ref = event.get("objectRef") or {}
        if "resource" not in ref or not authorized(event):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and event["responseStatus"]["code"] == 201:
            out.add((ref.get("apiGroup", ""), resource, "create"))
    return out


def unexplained_grants(granted: set[Grant], events: list[JsonDict]) -> dict[Grant, str]:
    """Granted, never needed by the operator's requests, and not explained above: excessive."""
    explained = {**NOT_IN_THE_AUDIT_LOG, **NOT_EXERCISED}
    return {
        grant: "granted, never used"
        for grant in sorted(granted - used_grants(events))
        if grant not in explained
    }
