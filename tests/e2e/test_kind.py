"""The end-to-end scenario on a real cluster: what docs/install.md walks a reader through.

helm install (with the evaluation PostgreSQL) -> the examples applied -> every WebhookSource
Ready -> signed webhooks sent with `dfm send` through `kubectl port-forward` -> each one found in
PostgreSQL -> a ManagedSecret rotated, and both the previous and the current secret accepted
during the grace period.

It runs when a cluster is at hand and is skipped, saying why, otherwise:

- ``kubectl`` and ``helm`` on PATH (or in .tools/bin, from scripts/fetch-tools.sh);
- a cluster: ``$DFM_E2E_KUBECONFIG``, or else a kind cluster (``kind`` on PATH; the one named
  ``$DFM_E2E_KIND_CLUSTER``, default the first of ``kind get clusters``). The user's current
  kubectl context is never used: only a kind cluster or an explicitly given kubeconfig;
- the image: ``$DFM_E2E_IMAGE`` (already pullable by the cluster, e.g. `kind load`-ed, as
  .github/workflows/e2e.yml does), else built with ``docker build`` and `kind load`-ed here.

It installs into the namespace ``default`` (where the examples live) and removes everything it
created afterwards, CRDs included, unless ``DFM_E2E_KEEP=1``. ``DFM_E2E=0`` skips it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml

from dfm_operator.crds import all_crds
from dfm_operator.rotation import ANNOTATION_ROTATE_NOW
from webhook_server.secrets import CURRENT, PREVIOUS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "df-middleware"
EXAMPLES = ROOT / "examples"
RELEASE = "df-middleware"  # as in docs/install.md
NAMESPACE = "default"  # the examples' namespace
POSTGRES = f"{RELEASE}-postgresql"
DEFAULT_IMAGE = "df-middleware:e2e"
# Example sources `dfm send` can sign for (highlevel needs HighLevel's private key).
SENDABLE = {
    "github": "github.yaml",
    "stripe": "stripe.yaml",
    "clerk": "clerk.yaml",
    "shopify": "shopify.yaml",
    "slack": "slack.yaml",
    "forgejo": "forgejo-hmac.yaml",
}
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2) -> T:
    """``probe()``'s first truthy result, polling until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --- the environment --------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    """The pinned binary from scripts/fetch-tools.sh when there is one, else the one on PATH."""
    local = ROOT / ".tools" / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


@dataclass
class Cluster:
    kubeconfig: str
    kubectl_bin: str
    helm_bin: str
    image: str

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args]
        try:
            result = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            # A clean-up that hangs (finalizers of a broken operator) must not hide the failure.
            if check:
                pytest.fail(f"kubectl {' '.join(args)}: no answer within {timeout:.0f}s")
            return subprocess.CompletedProcess(command, -1, "", f"timed out: {exc}")
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.helm_bin, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)}: {result.stderr.strip()}")
        return result

    def psql(self, sql: str, **variables: str) -> str:
        """``sql`` run in the evaluation PostgreSQL; ``:'name'`` in it quotes a variable."""
        settings = [f"--variable={name}={value}" for name, value in variables.items()]
        return self.kubectl(
            "-n", NAMESPACE, "exec", "-i", f"statefulset/{POSTGRES}", "-c", "postgresql", "--",
            "psql", "-U", "dfm", "-d", "dfm", "-tA", "--no-psqlrc", *settings,
            stdin=sql,
        ).stdout.strip()  # fmt: skip


def _kind_cluster(kind: str, workdir: Path) -> tuple[str, str]:
    """(cluster name, kubeconfig path) of the kind cluster to use; skips when there is none."""
    listed = subprocess.run(
        [kind, "get", "clusters"], capture_output=True, text=True, timeout=30, check=False
    )
    clusters = listed.stdout.split()
    wanted = os.environ.get("DFM_E2E_KIND_CLUSTER")
    if wanted and wanted not in clusters:
        pytest.skip(f"kind has no cluster {wanted!r} (DFM_E2E_KIND_CLUSTER); it has {clusters}")
    if not clusters:
        pytest.skip("kind has no cluster: run `kind create cluster` (or set DFM_E2E_KUBECONFIG)")
    name = wanted or clusters[0]
    config = subprocess.run(
        [kind, "get", "kubeconfig", "--name", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if config.returncode != 0:
        pytest.skip(f"kind get kubeconfig --name {name} failed: {config.stderr.strip()}")
    path = workdir / "kubeconfig"
    path.write_text(config.stdout)
    path.chmod(0o600)
    return name, str(path)


def _image(kind: str | None, cluster_name: str | None) -> str:
    """The image under test, built and loaded into kind when none is given."""
    given = os.environ.get("DFM_E2E_IMAGE")
    if given:
        return given
    docker = shutil.which("docker")
    if kind is None or cluster_name is None or docker is None:
        pytest.skip(
            "set DFM_E2E_IMAGE to an image the cluster can pull (building one here needs "
            "docker and a kind cluster)"
        )
    for command in (
        [docker, "build", "-t", DEFAULT_IMAGE, str(ROOT)],
        [kind, "load", "docker-image", DEFAULT_IMAGE, "--name", cluster_name],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)}: {result.stderr.strip()[-2000:]}")
    return DEFAULT_IMAGE


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    if os.environ.get("DFM_E2E") == "0":
        pytest.skip("DFM_E2E=0")
    kubectl, helm = _tool("kubectl"), _tool("helm")
    if kubectl is None or helm is None:
        pytest.skip("kubectl and helm are needed on PATH (scripts/fetch-tools.sh provides both)")
    workdir = tmp_path_factory.mktemp("e2e")
    kind = shutil.which("kind")
    cluster_name = None
    if os.environ.get("DFM_E2E_KUBECONFIG"):
        kubeconfig = os.environ["DFM_E2E_KUBECONFIG"]
    elif kind is not None:
        cluster_name, kubeconfig = _kind_cluster(kind, workdir)
    else:
        pytest.skip("no cluster: needs `kind` on PATH with a cluster, or DFM_E2E_KUBECONFIG")
    reachable = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "get", "--raw=/readyz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if reachable.returncode != 0:
        pytest.skip(f"the cluster is not reachable: {reachable.stderr.strip()[-500:]}")
    return Cluster(kubeconfig, kubectl, helm, _image(kind, cluster_name))


def _image_values(image: str) -> list[str]:
    if "@" in image:
        repository, digest = image.split("@", 1)
        return ["--set", f"image.repository={repository}", "--set", f"image.digest={digest}"]
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag (a ':' belongs to a registry port)
        name, tag = image, "latest"
    return ["--set", f"image.repository={name}", "--set-string", f"image.tag={tag}"]


@pytest.fixture(scope="session")
def release(cluster: Cluster) -> Iterator[Cluster]:
    """The chart installed as docs/install.md does, with the evaluation PostgreSQL."""
    cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        *_image_values(cluster.image),
        "--set", "image.pullPolicy=IfNotPresent",
        "--set", "postgresql.enabled=true",
        "--wait", "--timeout", "10m",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        if os.environ.get("DFM_E2E_KEEP") != "1":
            _uninstall(cluster)


def _uninstall(cluster: Cluster) -> None:
    # Custom resources first, while the operator runs: kopf's finalizers need it to go away.
    cluster.kubectl("delete", "-f", str(EXAMPLES), "--ignore-not-found", check=False, timeout=300)
    cluster.kubectl(
        "-n", NAMESPACE, "delete", "webhooksources,managedsecrets", "-l", "dfm.dev/e2e=true",
        "--ignore-not-found", check=False, timeout=300,
    )  # fmt: skip
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    cluster.kubectl(
        "-n", NAMESPACE, "delete", "pvc", "-l", f"app.kubernetes.io/instance={RELEASE}",
        "--ignore-not-found", check=False,
    )  # fmt: skip
    # crds.keep keeps the CRDs on uninstall (that is the point); a test run leaves nothing.
    crds = [crd["metadata"]["name"] for crd in all_crds()]
    crds += ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    cluster.kubectl("delete", "crd", *crds, "--ignore-not-found", "--wait=false", check=False)


# --- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def port_forward(cluster: Cluster, service: str, port: int = 80) -> Iterator[int]:
    """A local port forwarded to ``service``, as docs/install.md does it."""
    process = subprocess.Popen(
        [
            cluster.kubectl_bin, "--kubeconfig", cluster.kubeconfig, "-n", NAMESPACE,
            "port-forward", "--address=127.0.0.1", f"svc/{service}", f":{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + 60
        output = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1)
            if ready:
                line = process.stdout.readline()
                output += line
                found = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
                if found:
                    yield int(found.group(1))
                    return
            if process.poll() is not None:
                break
        pytest.fail(f"kubectl port-forward svc/{service} did not start: {output}")
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


def dfm_send(source_file: Path, url: str, *extra: str) -> Answer:
    """`dfm send SOURCE_FILE --url URL`: the status line and the JSON answer it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "dfm.cli", "send", str(source_file), "--url", url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    first, _, rest = result.stdout.partition("\n")
    match = re.fullmatch(r"HTTP (\d+)", first.strip())
    assert match, f"dfm send printed {result.stdout!r} {result.stderr!r}"
    try:
        body = json.loads(rest) if rest.strip() else {}
    except ValueError:
        body = {"raw": rest}
    return Answer(int(match.group(1)), body)


def route(cluster: Cluster, source: str) -> str:
    """The URL path of a source, from the endpoint in its status."""
    endpoint = cluster.json("-n", NAMESPACE, "get", "webhooksource", source)["status"]["endpoint"]
    return urlsplit(endpoint).path


def stored(cluster: Cluster, source: str, event_id: str) -> bool:
    count = cluster.psql(
        "select count(*) from webhook_events where source = :'source' and event_id = :'id';",
        source=f"{NAMESPACE}/{source}",
        id=event_id,
    )
    return count == "1"


def wait_ready(cluster: Cluster, kind: str, name: str, timeout: int = 300) -> None:
    result = cluster.kubectl(
        "-n", NAMESPACE, "wait", f"{kind}/{name}", "--for=condition=Ready",
        f"--timeout={timeout}s", check=False, timeout=timeout + 30,
    )  # fmt: skip
    if result.returncode != 0:
        described = cluster.kubectl("-n", NAMESPACE, "describe", kind, name, check=False)
        pytest.fail(f"{kind}/{name} not Ready: {result.stderr.strip()}\n{described.stdout}")


# --- the scenario -----------------------------------------------------------------------------


def test_crds_are_established(release: Cluster) -> None:
    names = [crd["metadata"]["name"] for crd in all_crds()]
    names += ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    for name in names:
        release.kubectl("wait", f"crd/{name}", "--for=condition=Established", "--timeout=60s")


def test_operator_runs_and_joins_its_peering(release: Cluster) -> None:
    release.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=5m")

    def peers() -> dict[str, Any] | None:
        peering = release.json("get", "clusterkopfpeering", "df-middleware")
        return peering.get("status") or None

    # kopf records each live replica in the peering object; one is there (and working).
    assert len(wait_for("the operator in ClusterKopfPeering df-middleware", peers, 120)) == 1


def test_examples_become_ready(release: Cluster) -> None:
    release.kubectl("apply", "-f", str(EXAMPLES))
    names = [
        doc["metadata"]["name"]
        for file in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(file.read_text())
        if doc and doc.get("kind") == "WebhookSource"
    ]
    assert set(SENDABLE) <= set(names)
    for name in names:
        wait_ready(release, "webhooksource", name)
    table = release.kubectl("-n", NAMESPACE, "get", "webhooksources").stdout
    assert "False" not in table, table


@pytest.mark.parametrize(("source", "file"), sorted(SENDABLE.items()))
def test_signed_webhook_is_stored(release: Cluster, source: str, file: str) -> None:
    wait_ready(release, "webhooksource", source, timeout=60)
    path = route(release, source)
    with port_forward(release, f"{source}-receiver") as port:
        answer = dfm_send(EXAMPLES / file, f"http://127.0.0.1:{port}{path}")
        assert (answer.status, answer.body.get("status")) == (200, "stored"), answer
        event_id = str(answer.body["eventId"])
        assert stored(release, source, event_id)


def test_wrongly_signed_webhook_is_refused(release: Cluster, tmp_path: Path) -> None:
    forged = tmp_path / "github.yaml"
    docs = list(yaml.safe_load_all((EXAMPLES / "github.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"] = {"secret": "not-the-secret"}
    forged.write_text(yaml.safe_dump_all(docs))
    with port_forward(release, "github-receiver") as port:
        answer = dfm_send(forged, f"http://127.0.0.1:{port}{route(release, 'github')}")
    assert answer.status == 401, answer


# --- ManagedSecret rotation -------------------------------------------------------------------

SIGNING = "e2e-signing"
ROTATING = "e2e-rotating"
E2E_LABEL = {"dfm.dev/e2e": "true"}


def _rotating_source() -> dict[str, Any]:
    return {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": ROTATING, "namespace": NAMESPACE, "labels": E2E_LABEL},
        "spec": {"provider": "standard", "verification": {"managedSecretRef": {"name": SIGNING}}},
    }


def _signing_file(directory: Path, value: str) -> Path:
    """A manifest `dfm send` signs with ``value``: the source, and the Secret as if written."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SIGNING, "namespace": NAMESPACE},
        "stringData": {CURRENT: value},
    }
    path = directory / f"sign-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump_all([_rotating_source(), secret]))
    return path


def _secret_values(cluster: Cluster) -> dict[str, str]:
    data = cluster.json("-n", NAMESPACE, "get", "secret", SIGNING).get("data") or {}
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def test_rotation_accepts_previous_and_current_secret_during_grace(release: Cluster) -> None:
    managed = {
        "apiVersion": "dfm.dev/v1alpha1",
        "kind": "ManagedSecret",
        "metadata": {"name": SIGNING, "namespace": NAMESPACE, "labels": E2E_LABEL},
        "spec": {
            "type": "random",
            "random": {"length": 32, "encoding": "base64", "prefix": "whsec_"},
            "rotation": {"every": "720h", "gracePeriod": "1h"},
        },
    }
    release.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([managed, _rotating_source()]))
    wait_ready(release, "managedsecret", SIGNING)
    wait_ready(release, "webhooksource", ROTATING)
    first = _secret_values(release)[CURRENT]
    path = route(release, ROTATING)

    with (
        tempfile.TemporaryDirectory() as workdir,
        port_forward(release, f"{ROTATING}-receiver") as port,
    ):
        url = f"http://127.0.0.1:{port}{path}"

        def send(value: str) -> Answer:
            return dfm_send(_signing_file(Path(workdir), value), url)

        assert send(first).status == 200

        release.kubectl(
            "-n", NAMESPACE, "annotate", "managedsecret", SIGNING, "--overwrite",
            f"{ANNOTATION_ROTATE_NOW}={uuid.uuid4().hex}",
        )  # fmt: skip

        def rotated() -> dict[str, str] | None:
            values = _secret_values(release)
            return values if values.get(CURRENT) not in (None, first) else None

        values = wait_for("the ManagedSecret to rotate", rotated, 120)
        second = values[CURRENT]
        assert values.get(PREVIOUS) == first

        # kubelet refreshes the mounted Secret within its sync period; the receiver re-reads it.
        def new_secret_accepted() -> Answer | None:
            answer = send(second)
            return answer if answer.status == 200 else None

        answer = wait_for("the receiver to accept the new secret", new_secret_accepted, 240, 5)
        assert answer.body.get("status") == "stored"
        assert stored(release, ROTATING, str(answer.body["eventId"]))

        during_grace = send(first)
        assert (during_grace.status, during_grace.body.get("status")) == (200, "stored")
        assert send("whsec_" + base64.b64encode(os.urandom(32)).decode()).status == 401
