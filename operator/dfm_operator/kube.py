"""The one place that talks to the Kubernetes API.

Server-side apply under one field manager; create-409 and delete-404 count as done; API errors
become this module's exceptions. Async (kubernetes_asyncio), so nothing blocks kopf's loop.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from dfm_operator import constants as c
from dfm_operator.api import KINDS as KINDS_SERVED


@dataclass(frozen=True)
class Kind:
    """A kind the operator touches, and the RBAC verbs it needs on it.

    Every call below checks its verb against this table, so the table (which the Helm chart's
    RBAC is tested against) cannot fall behind what the code does.
    """

    api_version: str
    kind: str
    plural: str
    verbs: frozenset[str]
    status_verbs: frozenset[str] = frozenset()
    # Children carry an ownerReference with blockOwnerDeletion to objects of this kind.
    owns_children: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


# What the code does with each child kind, and nothing more (tests/realkube audits the operator's
# requests against the chart's grants): server-side apply (create, patch); list and watch where a
# kopf handler watches the kind; get and delete only where reconcile reads it or prunes it.
_APPLIED = frozenset({"create", "patch"})
_WATCHED = frozenset({"list", "watch"})
_PRUNED = frozenset({"get", "delete"})
_OWNED_CR = frozenset({"get", "list", "watch", "patch"})

KINDS: tuple[Kind, ...] = (
    Kind("v1", "ConfigMap", "configmaps", _APPLIED | _WATCHED),
    Kind("v1", "Secret", "secrets", _APPLIED | _WATCHED | {"get"}),
    Kind("v1", "Service", "services", _APPLIED | _WATCHED),
    # Created once when a BackupSchedule asks for one (never patched: a claim is not resized
    # or replaced by the operator), read to tell a missing claim from a present one.
    Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims", frozenset({"create", "get"})),
    Kind("apps/v1", "Deployment", "deployments", _APPLIED | _WATCHED | {"get"}),
    # Watched for a hand deletion (a SyncSchedule's is re-created at once).
    Kind("batch/v1", "CronJob", "cronjobs", _APPLIED | _WATCHED),
    # The Jobs scheduled CronJobs run: watched for their outcome (handlers.jobs); their Pods
    # are listed for the summary the job leaves in its termination message.
    Kind("batch/v1", "Job", "jobs", _WATCHED),
    Kind("v1", "Pod", "pods", frozenset({"list"})),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", _APPLIED | _WATCHED | _PRUNED),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", _APPLIED | _WATCHED),
    Kind("networking.k8s.io/v1", "Ingress", "ingresses", _APPLIED | _WATCHED | _PRUNED),
    Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", _APPLIED | _PRUNED),
    *(
        Kind(
            c.API_VERSION,
            model.names.kind,
            model.names.plural,
            # Read again under their lock before their status is written.
            _OWNED_CR,
            frozenset({"patch"}),
            owns_children=True,  # every kind's children name it with blockOwnerDeletion
        )
        for model in KINDS_SERVED
    ),
    Kind(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        frozenset({"get", "list", "watch"}),
    ),
)
_BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


def kind_of(api_version: str, kind: str) -> Kind:
    try:
        return _BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"{api_version} {kind} is not in kube.KINDS") from None


def _require(api_version: str, kind: str, *verbs: str, status: bool = False) -> Kind:
    known = kind_of(api_version, kind)
    allowed = known.status_verbs if status else known.verbs
    missing = set(verbs) - allowed
    if missing:
        raise AssertionError(f"kube.KINDS grants no {sorted(missing)} on {kind}; declare it")
    return known


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Invalid(KubeError):
    """The API server refused the object (422): a spec problem, not a transient one."""


# The API server's own explanation, kept short; never for Secrets, whose values it may quote.
_MAX_SERVER_MESSAGE = 300


def _server_message(exc: ApiException, what: str) -> str:
    if " Secret " in f" {what} ":
        return ""
    try:
        message = json.loads(exc.body or "{}").get("message") or ""
    except (ValueError, AttributeError):
        return ""
    return str(message)[:_MAX_SERVER_MESSAGE]


def _error(exc: ApiException, what: str) -> KubeError:
    status = int(exc.status or 0)
    reason = exc.reason or "error"
    message = f"{what}: {status} {reason}"
    detail = _server_message(exc, what)
    if detail:
        message += f": {detail}"
    if status == 404:
        return NotFound(status, message)
    if status == 409:
        return Conflict(status, message)
    if status == 422:
        return Invalid(status, message)
    return KubeError(status, message)


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    plural = kind_of(api_version, kind).plural
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass
class Kube:
    api: client.ApiClient
    field_manager: str = c.FIELD_MANAGER

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
        what: str,
    ) -> Any:
        try:
            return await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            raise _error(exc, what) from exc
        except (TimeoutError, OSError) as exc:
            raise KubeError(0, f"{what}: API server unreachable ({type(exc).__name__})") from exc

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (create or update the fields we own)."""
        meta = obj["metadata"]
        _require(obj["apiVersion"], obj["kind"], "create", "patch")  # apply may create
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result: dict[str, Any] = await self._call(
            "PATCH",
            path,
            body=obj,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", self.field_manager), ("force", "true")],
            what=f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}",
        )
        return result

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        _require(api_version, kind, "get")
        try:
            result: dict[str, Any] = await self._call(
                "GET",
                resource_path(api_version, kind, namespace, name),
                what=f"get {kind} {namespace}/{name}",
            )
        except NotFound:
            return None
        return result

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` that match ``label_selector``."""
        _require(api_version, kind, "list")
        result: dict[str, Any] = await self._call(
            "GET",
            resource_path(api_version, kind, namespace),
            query=[("labelSelector", label_selector)],
            what=f"list {kind} in {namespace}",
        )
        return list(result.get("items") or [])

    async def create(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        _require(obj["apiVersion"], obj["kind"], "create")
        with contextlib.suppress(Conflict):
            await self._call(
                "POST",
                resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace")),
                body=obj,
                what=f"create {obj['kind']} {meta.get('namespace')}/{meta['name']}",
            )

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        _require(api_version, kind, "delete")
        with contextlib.suppress(NotFound):
            await self._call(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                what=f"delete {kind} {namespace}/{name}",
            )

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        _require(api_version, kind, "patch", status=True)
        await self._call(
            "PATCH",
            resource_path(api_version, kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
            what=f"update status of {kind} {namespace}/{name}",
        )

    async def crd_exists(self, name: str) -> bool:
        _require("apiextensions.k8s.io/v1", "CustomResourceDefinition", "get")
        try:
            await self._call(
                "GET",
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                what=f"get CRD {name}",
            )
        except NotFound:
            return False
        except KubeError as exc:
            if exc.status == 403:  # not allowed to look: behave as if absent
                return False
            raise
        return True

    # kopf's peering objects: only dfm_operator.peering's start-up check. They are not in KINDS:
    # kopf's own rules (rbac.KOPF_RULES) cover the reads, and `create` is only ever needed
    # outside the Helm chart, which creates the object itself.
    async def peering_exists(self, plural: str, namespace: str | None, name: str) -> bool:
        base = "/apis/kopf.dev/v1"
        path = (
            f"{base}/namespaces/{namespace}/{plural}/{name}"
            if namespace
            else f"{base}/{plural}/{name}"
        )
        try:
            await self._call("GET", path, what=f"get {plural} {namespace or ''}/{name}")
        except NotFound:
            return False
        return True

    async def create_peering(
        self, kind: str, plural: str, namespace: str | None, name: str
    ) -> None:
        base = "/apis/kopf.dev/v1"
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        with contextlib.suppress(Conflict):
            await self._call(
                "POST",
                path,
                body={"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta},
                what=f"create {kind} {namespace or ''}/{name}",
            )


# kubernetes_asyncio's generated code: a module per model and per API group, all imported with
# its `client` package (kopf imports that package too, for its optional model support).
_GENERATED = ("kubernetes_asyncio.client.models", "kubernetes_asyncio.client.api")


def shed_generated_modules() -> int:
    """Let go of kubernetes_asyncio's generated model and API classes; how many modules went.

    The operator calls the API with plain dicts (``Kube._call``: bodies as dicts, every answer
    read as ``object``), so the library's ~830 generated modules are never used, yet they hold
    about 20 MiB of the operator's peak. Dropped from ``sys.modules`` and from the ``client``
    package's namespace, they are collected, and that memory serves the per-object state of a
    start-up over many sources instead of adding to it (bench/operator/README.md). What another
    module still references stays alive (kopf keeps ``V1ObjectMeta`` and ``V1OwnerReference``
    for its isinstance checks). Call it once everything is imported, before the operator starts.

    Afterwards ``client.V1Pod``, ``client.CoreV1Api`` and typed answers (a ``response_types_map``
    naming a model) fail with an AttributeError that says why: code here must keep to
    ``ApiClient``, ``Configuration`` and plain dicts (tests/unit/test_kube.py checks this module).
    """
    import gc
    import sys

    def generated(module: str) -> bool:
        return any(module == name or module.startswith(name + ".") for name in _GENERATED)

    dropped = [name for name in sys.modules if generated(name)]
    for name in dropped:
        del sys.modules[name]
    namespace = vars(client)
    for attr, value in list(namespace.items()):
        if generated(str(getattr(value, "__module__", None) or getattr(value, "__name__", ""))):
            del namespace[attr]

    def missing(name: str) -> Any:
        raise AttributeError(
            f"kubernetes_asyncio.client.{name}: the operator let go of the client library's "
            "generated models and APIs at start-up (dfm_operator.kube.shed_generated_modules); "
            "call the API with plain dicts through Kube"
        )

    namespace["__getattr__"] = missing  # PEP 562: only names not found otherwise
    gc.collect()
    return len(dropped)


async def load_client() -> client.ApiClient:
    """In-cluster config in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # Read $KUBECONFIG now: the client's own default was fixed when it was imported.
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


class KubeconfigError(Exception):
    """A kubeconfig the client cannot use; the message is one line, never the file's content."""


def check_kubeconfig(path: str) -> None:
    """Load the kubeconfig at ``path`` once, as the operator will: raises KubeconfigError."""
    import asyncio

    import yaml

    try:
        asyncio.run(config.load_kube_config(config_file=path))
    except (config.ConfigException, OSError, yaml.YAMLError, TypeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KubeconfigError(detail.splitlines()[0] if detail else "empty") from exc


@contextlib.asynccontextmanager
async def connect() -> AsyncIterator[Kube]:
    api = await load_client()
    try:
        yield Kube(api)
    finally:
        await api.close()
