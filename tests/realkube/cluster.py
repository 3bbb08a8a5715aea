"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

What controller-runtime's envtest gives Go operators, plus the controller manager: the binaries
are built from the Go module proxy by ``scripts/build-kube.sh`` (cached outside the repository),
started on free loopback ports with self-made certificates, a static token file, RBAC, the
service-account token issuer (so a ServiceAccount's token can be requested and used), an audit log
of every ServiceAccount request (to hold the chart's RBAC to what the operator really calls) and
the controllers whose behaviour the operator relies on: garbage collection, Deployment ->
ReplicaSet -> Pod, CronJob -> Job -> Pod, claims bound to volumes, ServiceAccounts and namespace
deletion. There is no scheduler and no kubelet: pods stay Pending unless
``tests/realkube/kubelet.py`` plays kubelet (and volume provisioner) for them.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.tools import free_ports

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-kube.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
# The controllers the operator's behaviour depends on (names as kube-controller-manager spells
# them since 1.29; `kube-controller-manager --help` lists them): garbage collection, the
# receivers' Deployments, the scheduled jobs' CronJobs and Jobs, the claims they write to (bound
# by the PersistentVolume controller, protected while in use), ServiceAccounts and namespaces.
CONTROLLERS = (
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "cronjob-controller",
    "job-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "serviceaccount-controller",
    "namespace-controller",
)
ADMIN_TOKEN_USER = "admin"
T = TypeVar("T")
JsonDict = dict[str, Any]


class ControlPlaneError(RuntimeError):
    pass


def build_binaries(log: Path) -> Path:
    """The bin directory of etcd, kube-apiserver and kube-controller-manager: built once by
    scripts/build-kube.sh (tens of minutes the first time), reused afterwards. The build's
    output goes to ``log``; a failure raises with its last lines."""
    with log.open("w") as out:
        result = subprocess.run(
            [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=out, text=True, check=False
        )
    bin_dir = Path(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    if result.returncode != 0 or bin_dir is None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ControlPlaneError(
            f"scripts/build-kube.sh failed (exit {result.returncode}); the real-API tests need "
            f"etcd, kube-apiserver and kube-controller-manager built from the Go module proxy. "
            f"Last lines of {log}:\n{tail}"
        )
    return bin_dir


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60, every: float = 0.2
) -> T:
    """``probe()``'s first truthy result; ControlPlaneError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# --- certificates -----------------------------------------------------------------------------


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificates(directory: Path) -> None:
    """ca.crt, apiserver.crt/.key (for 127.0.0.1 and the in-cluster names), sa.key/sa.pub."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfm-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(name)
        for name in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "apiserver.key").write_bytes(_pem_key(server_key))
    (directory / "sa.key").write_bytes(_pem_key(sa_key))
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# Every request made by a ServiceAccount: what the operator really calls, compared with what the
# chart grants (Metadata: no bodies, so no Secret data). Status writes of the dfm.dev kinds with
# request and response: what the operator sent, and what the structural schema kept of it.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "RequestResponse",
            "userGroups": ["system:serviceaccounts"],
            "verbs": ["patch", "update"],
            "resources": [
                {
                    "group": "dfm.dev",
                    "resources": [
                        f"{plural}/status"
                        for plural in (
                            "webhooksources",
                            "managedsecrets",
                            "syncschedules",
                            "backupschedules",
                        )
                    ],
                }
            ],
        },
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


# --- a small REST client ----------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: JsonDict, what: str) -> None:
        self.status = status
        self.body = body
        self.message = str(body.get("message", ""))
        super().__init__(f"{what}: {status} {self.message}")


@dataclass
class Api:
    """The API server over HTTPS as one user (a bearer token): plain JSON in, JSON out."""

    server: str
    ca_file: Path
    token: str
    _context: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._context = ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> JsonDict:
        raw = self.raw(method, path, body, content_type=content_type, timeout=timeout)
        return json.loads(raw) if raw else {}

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - https to our own loopback server
            self.server + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                "Content-Type": content_type,
            },
        )
        try:
            with urllib.request.urlopen(req, context=self._context, timeout=timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                payload = {"message": raw.decode(errors="replace")}
            raise ApiError(exc.code, payload, f"{method} {path}") from None
        return raw

    def get(self, path: str) -> JsonDict:
        return self.request("GET", path)

    def find(self, path: str) -> JsonDict | None:
        """GET, or None on 404."""
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, obj: JsonDict) -> JsonDict:
        return self.request("POST", path, obj)

    def merge_patch(self, path: str, patch: JsonDict) -> JsonDict:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def apply(self, path: str, obj: JsonDict, manager: str, *, force: bool = False) -> JsonDict:
        query = f"?fieldManager={manager}" + ("&force=true" if force else "")
        return self.request("PATCH", path + query, obj, content_type="application/apply-patch+yaml")

    def delete(self, path: str, body: JsonDict | None = None) -> JsonDict | None:
        try:
            return self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


def kubeconfig(server: str, ca_file: Path, token: str, namespace: str = "default") -> str:
    """A kubeconfig (YAML) for one bearer token; its context's namespace is ``namespace``."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dfm-test",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(
                            ca_file.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "dfm-test",
                    "context": {"cluster": "dfm-test", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "dfm-test",
        }
    )


# --- the control plane ------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager, and how to talk to it."""

    bin_dir: Path
    workdir: Path
    server: str = ""
    admin_token: str = ""
    admin_kubeconfig: Path = field(default=Path())
    audit_log: Path = field(default=Path())
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_seconds: float = 0.0

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    def admin(self) -> Api:
        return Api(self.server, self.ca_file, self.admin_token)

    def as_token(self, token: str) -> Api:
        return Api(self.server, self.ca_file, token)

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token of the ServiceAccount, as kubelet would mount it (the TokenRequest API).

        A namespace's `default` ServiceAccount is created by the serviceaccount controller a
        moment after the namespace: until it exists, the request is answered 404."""
        admin = self.admin()

        def request() -> JsonDict | None:
            try:
                return admin.create(
                    f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenRequest",
                        "spec": {"expirationSeconds": seconds},
                    },
                )
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise

        review = wait_for(f"ServiceAccount {namespace}/{name}", request)
        return str(review["status"]["token"])

    def service_account_kubeconfig(self, path: Path, namespace: str, name: str) -> Path:
        """A kubeconfig that acts as the ServiceAccount (a fresh token of it)."""
        return self.write_kubeconfig(path, self.service_account_token(namespace, name), namespace)

    def write_kubeconfig(self, path: Path, token: str, namespace: str = "default") -> Path:
        path.write_text(kubeconfig(self.server, self.ca_file, token, namespace))
        path.chmod(0o600)
        return path

    def audit_events(self) -> list[JsonDict]:
        """Every ServiceAccount request so far (Metadata level: who, verb, resource, code)."""
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # -- start / stop --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        started = time.monotonic()
        _certificates(self.workdir)
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        controller_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_TOKEN_USER},admin-uid,"system:masters"\n'
            f'{controller_token},system:kube-controller-manager,kcm-uid,"system:masters"\n'
        )
        tokens.chmod(0o600)
        self.audit_log = self.workdir / "audit.log"
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))

        etcd_port, peer_port, api_port = free_ports(3)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",  # a throw-away store: durability buys nothing here
                "--log-level=warn",
            ],
        )
        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--secure-port={api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--tls-cert-file={self.workdir / 'apiserver.crt'}",
                f"--tls-private-key-file={self.workdir / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
                f"--service-account-key-file={self.workdir / 'sa.pub'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",  # a loopback address cannot be an endpoint
                # A child's blockOwnerDeletion needs `update` on its owner's finalizers, as on
                # OpenShift: the chart's RBAC must grant it, and this proves it does.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                f"--cert-dir={self.workdir / 'certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        admin = self.admin()

        def ready() -> bool:
            self._check_alive()
            try:
                return admin.raw("GET", "/readyz", timeout=5) == b"ok"
            except (ApiError, OSError):
                return False

        wait_for("kube-apiserver /readyz", ready, timeout=120, every=0.5)

        kcm_config = self.write_kubeconfig(self.workdir / "kcm.kubeconfig", controller_token)
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_config}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                "--use-service-account-credentials=false",
                "--secure-port=0",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )

        def controllers_running() -> bool:
            # The ServiceAccount controller gives every namespace its `default` account.
            self._check_alive()
            return admin.find("/api/v1/namespaces/default/serviceaccounts/default") is not None

        wait_for("kube-controller-manager", controllers_running, timeout=120, every=0.5)
        self.admin_kubeconfig = self.write_kubeconfig(
            self.workdir / "admin.kubeconfig", self.admin_token
        )
        self.started_seconds = time.monotonic() - started

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.processes.clear()


def start_control_plane(bin_dir: Path) -> Iterator[ControlPlane]:
    """Starts one control plane in a temporary directory; stops it and removes the directory."""
    workdir = Path(tempfile.mkdtemp(prefix="dfm-realkube-"))
    plane = ControlPlane(bin_dir=bin_dir, workdir=workdir)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
