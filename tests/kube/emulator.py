"""A Kubernetes API server emulated in memory, served over real HTTP on the loopback interface.

It builds on ``kmock.KubernetesEmulator`` (kopf's sister project) and keeps kmock's pieces that
already fit: the aiohttp test server, request recording (``emu[kmock.action.CREATE]`` & co.),
the API discovery endpoints, the error rendering and the ``emu.objects`` store with full history.

kmock stores objects as plain dicts: no uid, no resourceVersion, no generation, no status
subresource, ``test`` ops fail with HTTP 500, no server-side apply, no PUT, and the watch always
replays every object instead of resuming from a resourceVersion. Kopf depends on all of that, so
this module serves every resource request itself (see ``DfmKubernetesEmulator.__call__``) with
the API server semantics kopf and our operator rely on. Only discovery goes through kmock.

Typical use::

    async with emulated_cluster() as k8s:
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig")
        await k8s.create(WEBHOOKSOURCES, {"metadata": {"name": "gh"}, "spec": {...}}, "default")
        await k8s.wait_for(lambda: k8s.get_object(WEBHOOKSOURCES, "default", "gh")...)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import re
import secrets
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
T = TypeVar("T")

# Content types of PATCH bodies.
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Short names for the resources the tests use most.
WEBHOOKSOURCES = "dfm.dev/v1alpha1/webhooksources"
MANAGEDSECRETS = "dfm.dev/v1alpha1/managedsecrets"
SYNCSCHEDULES = "dfm.dev/v1alpha1/syncschedules"
BACKUPSCHEDULES = "dfm.dev/v1alpha1/backupschedules"
DEPLOYMENTS = "apps/v1/deployments"
SERVICEMONITORS = "monitoring.coreos.com/v1/servicemonitors"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
EVENTS = "v1/events"
EVENTS_K8S = "events.k8s.io/v1/events"

ALL_VERBS = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as in k8s.io/apimachinery
_SYSTEM_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """What the emulated cluster serves for one group/version/plural."""

    gvp: str  # e.g. "apps/v1/deployments" or "v1/pods"
    kind: str
    namespaced: bool = True
    status: bool = True  # has the /status subresource
    singular: str | None = None
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()


BUILTIN_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("v1/namespaces", "Namespace", namespaced=False, shortnames=("ns",)),
    ResourceSpec("v1/pods", "Pod", shortnames=("po",)),
    ResourceSpec("v1/services", "Service", shortnames=("svc",)),
    ResourceSpec("v1/configmaps", "ConfigMap", status=False, shortnames=("cm",)),
    ResourceSpec("v1/secrets", "Secret", status=False),
    ResourceSpec("v1/serviceaccounts", "ServiceAccount", status=False, shortnames=("sa",)),
    ResourceSpec("v1/persistentvolumeclaims", "PersistentVolumeClaim", shortnames=("pvc",)),
    ResourceSpec("v1/events", "Event", status=False, shortnames=("ev",)),
    ResourceSpec("apps/v1/deployments", "Deployment", shortnames=("deploy",)),
    ResourceSpec("apps/v1/replicasets", "ReplicaSet", shortnames=("rs",)),
    ResourceSpec("apps/v1/statefulsets", "StatefulSet", shortnames=("sts",)),
    ResourceSpec("batch/v1/jobs", "Job"),
    ResourceSpec("batch/v1/cronjobs", "CronJob", shortnames=("cj",)),
    ResourceSpec("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", shortnames=("pdb",)),
    ResourceSpec("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", status=False),
    ResourceSpec("networking.k8s.io/v1/ingresses", "Ingress", shortnames=("ing",)),
    ResourceSpec("coordination.k8s.io/v1/leases", "Lease", status=False),
    ResourceSpec("events.k8s.io/v1/events", "Event", status=False, shortnames=("ev",)),
    ResourceSpec("rbac.authorization.k8s.io/v1/roles", "Role", status=False),
    ResourceSpec("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", status=False),
    ResourceSpec(
        "rbac.authorization.k8s.io/v1/clusterroles", "ClusterRole", namespaced=False, status=False
    ),
    ResourceSpec(
        "rbac.authorization.k8s.io/v1/clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
        status=False,
    ),
    ResourceSpec(CRDS, "CustomResourceDefinition", namespaced=False, shortnames=("crd", "crds")),
)

# Served as CustomResourceDefinitions: they appear in the CRD list and can come and go.
CRD_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec(WEBHOOKSOURCES, "WebhookSource"),
    ResourceSpec(MANAGEDSECRETS, "ManagedSecret"),
    ResourceSpec(SYNCSCHEDULES, "SyncSchedule"),
    ResourceSpec(BACKUPSCHEDULES, "BackupSchedule"),
    ResourceSpec("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    ResourceSpec("kopf.dev/v1/kopfpeerings", "KopfPeering"),
)
SERVICEMONITOR_RESOURCE = ResourceSpec(SERVICEMONITORS, "ServiceMonitor", status=False)


class ApiError(Exception):
    """A non-2xx answer to one of the emulator's own HTTP helpers."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_resource(gvp: str | kmock.resource) -> kmock.resource:
    """Parse ``"apps/v1/deployments"``, ``"v1/pods"`` or a ``kmock.resource`` into a resource."""
    res = gvp if isinstance(gvp, kmock.resource) else kmock.resource(gvp)
    if res.group is None or res.version is None or res.plural is None:
        raise ValueError(f"Not a group/version/plural: {gvp!r}")
    return res


def api_version_of(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def fieldset(applied: Mapping[str, Any]) -> JsonDict:
    """The ``fieldsV1`` set of an applied configuration; lists are atomic (owned as a whole)."""
    result: JsonDict = {}
    for key, value in applied.items():
        result[f"f:{key}"] = fieldset(value) if isinstance(value, dict) else {}
    return result


def prune_fields(obj: JsonDict, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Remove from ``obj`` the fields a manager applied before but no longer applies."""
    for fkey, sub in previous.items():
        key = fkey.removeprefix("f:")
        if fkey not in current:
            obj.pop(key, None)
        elif sub and current[fkey] and isinstance(obj.get(key), dict):
            prune_fields(obj[key], sub, current[fkey])


def _split_selector(selector: str) -> list[str]:
    terms: list[str] = []
    depth, current = 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality- and set-based label selectors: ``a=b,c!=d,e,!f,g in (h,i),j notin (k)``."""
    for term in _split_selector(selector):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            key, op, raw = m.groups()
            values = {value.strip() for value in raw.split(",") if value.strip()}
            inside = key in labels and labels[key] in values
            if inside != (op == "in"):
                return False
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str, obj: Mapping[str, Any]) -> bool:
    """Field selectors: ``metadata.name=x``, ``metadata.namespace!=y``, ``spec.foo==z``."""
    for term in _split_selector(selector):
        negate = "!=" in term
        path, value = (part.strip() for part in re.split(r"!=|==|=", term, maxsplit=1))
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        actual = (
            ""
            if current is None
            else str(current).lower()
            if isinstance(current, bool)
            else str(current)
        )
        if (actual == value) == negate:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class K8sPath:
    """A parsed resource URL: /api/v1/namespaces/ns/pods/name/status and alike."""

    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)


def parse_k8s_path(path: str) -> K8sPath | None:
    """Parse a K8s API path (kmock's own parser fails on ``/api/v1/namespaces``)."""
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    namespace_object = rest[:1] == ["namespaces"] and (
        len(rest) <= 2 or (len(rest) == 3 and rest[2] in {"status", "finalize"})
    )
    if rest[:1] == ["namespaces"] and not namespace_object:
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return K8sPath(group, version, namespace=namespace)
    return K8sPath(
        group,
        version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


@dataclasses.dataclass(eq=False)
class _Watch:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    label_selector: str
    field_selector: str
    queue: asyncio.Queue[JsonDict | None] = dataclasses.field(default_factory=asyncio.Queue)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        if self.label_selector and not label_selector_matches(
            self.label_selector, meta.get("labels") or {}
        ):
            return False
        return not self.field_selector or field_selector_matches(self.field_selector, obj)


@dataclasses.dataclass
class _Fault:
    verb: str
    resource: kmock.resource | None
    name: str | None
    status: int
    message: str
    times: int | None


@attrs.define(kw_only=True)
class DfmKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the API-server semantics that kopf relies on.

    Options:

    * ``servicemonitors`` — whether the monitoring.coreos.com ServiceMonitor CRD is installed
      (toggle later with :meth:`set_servicemonitors`).
    * ``require_token`` — if set, requests without ``Authorization: Bearer <token>`` get 401.
    * ``garbage_collection`` — delete dependents (by ``ownerReferences[].uid``) of deleted owners.
    * ``validate`` — reject invalid names, labels and ConfigMap/Secret keys with 422 as K8s does.
    * ``deployment_rollout_delay`` — if set, a Deployment becomes available this many seconds
      after each spec change, as if the deployment controller and the kubelets were there.
    """

    servicemonitors: bool = True
    require_token: str | None = None
    garbage_collection: bool = True
    validate: bool = True
    deployment_rollout_delay: float | None = None
    watch_log_size: int = 100_000

    _rv: int = attrs.field(default=0, init=False)
    _crd_resources: set[kmock.resource] = attrs.field(factory=set, init=False)
    _log: deque[tuple[int, kmock.resource, JsonDict]] = attrs.field(
        default=attrs.Factory(lambda self: deque(maxlen=self.watch_log_size), takes_self=True),
        init=False,
    )
    _log_floor: int = attrs.field(default=0, init=False)
    _watches: set[_Watch] = attrs.field(factory=set, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _faults: list[_Fault] = attrs.field(factory=list, init=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    failures: list[Exception] = attrs.field(factory=list, init=False)  # emulator bugs (HTTP 500)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in BUILTIN_RESOURCES:
            self.declare_resource(spec)
        for spec in CRD_RESOURCES:
            self.install_crd(crd_manifest(spec))
        if self.servicemonitors:
            self.install_crd(crd_manifest(SERVICEMONITOR_RESOURCE))
        for namespace in ("default", "kube-system"):
            self._upsert(
                kmock.resource("", "v1", "namespaces"), None, {"metadata": {"name": namespace}}
            )

    # ----------------------------------------------------------------- resources & CRDs

    def declare_resource(self, spec: ResourceSpec) -> kmock.resource:
        """Serve a resource (discovery + CRUD/watch) without a CRD object for it."""
        res = as_resource(spec.gvp)
        self.resources[res] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.singular or spec.kind.lower(),
            namespaced=spec.namespaced,
            verbs=ALL_VERBS,
            shortnames=set(spec.shortnames),
            categories=set(spec.categories),
            subresources={"status"} if spec.status else set(),
        )
        return res

    def install_crd(self, manifest: Mapping[str, Any]) -> JsonDict:
        """Install a CustomResourceDefinition (e.g. one from ``dfm_operator.crds``).

        Its served versions appear in discovery, and the CRD object itself is stored, so that
        watchers of CRDs (kopf does watch them) see it ADDED/MODIFIED and rescan the group.
        """
        spec = manifest["spec"]
        names = spec["names"]
        top_subresources = spec.get("subresources") or {}
        for version in spec.get("versions") or [{"name": spec.get("version")}]:
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or top_subresources
            res = self.declare_resource(
                ResourceSpec(
                    f"{spec['group']}/{version['name']}/{names['plural']}",
                    names["kind"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    status="status" in subresources,
                    singular=names.get("singular"),
                    shortnames=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                )
            )
            self._crd_resources.add(res)
        body = copy.deepcopy(dict(manifest))
        body["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
            ],
            "storedVersions": [v["name"] for v in spec.get("versions") or []],
        }
        return self._upsert(as_resource(CRDS), None, body)

    def uninstall_crd(self, name: str) -> None:
        """Remove a CRD by its name (``<plural>.<group>``) with all its objects, as K8s does."""
        crds = as_resource(CRDS)
        current = self._current(crds, None, name)
        if current is None:
            return
        spec = current["spec"]
        for version in spec.get("versions") or []:
            res = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            for obj in list(self._iter_current(res, None)):
                meta = obj["metadata"]
                self._finally_delete(res, meta.get("namespace"), meta["name"], obj)
            self.resources.pop(res, None)
            self._crd_resources.discard(res)
        self._finally_delete(crds, None, name, current)

    def set_servicemonitors(self, installed: bool) -> None:
        """Install or uninstall the ServiceMonitor CRD (kopf notices it via the CRD watch)."""
        self.servicemonitors = installed
        if installed:
            self.install_crd(crd_manifest(SERVICEMONITOR_RESOURCE))
        else:
            self.uninstall_crd(f"servicemonitors.{as_resource(SERVICEMONITORS).group}")

    # ----------------------------------------------------------------- test-side accessors

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return str(self.url).rstrip("/")

    def path_for(
        self,
        gvp: str | kmock.resource,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        res = as_resource(gvp)
        parts = ["/api" if not res.group else "/apis", api_version_of(res)]
        namespaced = self.resources[res].namespaced if res in self.resources else True
        if namespace is not None and namespaced is not False:
            parts += ["namespaces", namespace]
        parts.append(str(res.plural))
        parts += [part for part in (name, subresource) if part]
        return "/".join(parts)

    def get_object(
        self, gvp: str | kmock.resource, namespace: str | None, name: str
    ) -> JsonDict | None:
        """The current stored state of an object (a deep copy), or None if absent."""
        obj = self._current(as_resource(gvp), namespace, name)
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(
        self, gvp: str | kmock.resource, namespace: str | None = None
    ) -> list[JsonDict]:
        """All current objects of a resource (deep copies), optionally of one namespace."""
        res = as_resource(gvp)
        return [copy.deepcopy(obj) for obj in self._iter_current(res, namespace)]

    def events(
        self,
        namespace: str | None = None,
        *,
        name: str | None = None,
        kind: str | None = None,
        reason: str | None = None,
    ) -> list[JsonDict]:
        """Posted Events (core v1 and events.k8s.io/v1), filtered by the object they are about."""
        result: list[JsonDict] = []
        for gvp in (EVENTS, EVENTS_K8S):
            for event in self.list_objects(gvp, namespace):
                about = event.get("involvedObject") or event.get("regarding") or {}
                if name is not None and about.get("name") != name:
                    continue
                if kind is not None and about.get("kind") != kind:
                    continue
                if reason is not None and event.get("reason") != reason:
                    continue
                result.append(event)
        return result

    async def wait_for(
        self, predicate: Callable[[], T | None], *, seconds: float = 10.0, what: str = "a condition"
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        Re-checked on every write to the state, and at least every 0.5 s (for predicates about
        something else, e.g. the recorded requests: ``any(r.resource == ... for r in k8s)``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"Timed out after {seconds}s waiting for {what}.")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 0.5))

    def write_kubeconfig(
        self, path: str | Path, *, token: str | None = None, namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig pointing at this emulator (plain http, a bearer token)."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "dfm-emulator", "cluster": {"server": self.base_url}}],
            "users": [
                {
                    "name": "dfm-emulator",
                    "user": {"token": token or self.require_token or "dummy-token"},
                }
            ],
            "contexts": [
                {
                    "name": "dfm-emulator",
                    "context": {
                        "cluster": "dfm-emulator",
                        "user": "dfm-emulator",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "dfm-emulator",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def inject_fault(
        self,
        verb: str,
        gvp: str | kmock.resource | None = None,
        *,
        name: str | None = None,
        status: int = 500,
        message: str = "Injected fault",
        times: int | None = 1,
    ) -> None:
        """Fail the next ``times`` matching requests (verb: get/list/watch/create/update/patch/
        delete/apply) with ``status`` before they touch the state. ``times=None``: forever."""
        res = as_resource(gvp) if gvp is not None else None
        self._faults.append(_Fault(verb, res, name, status, message, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    # ----------------------------------------------------------------- HTTP helpers (via the API)

    async def api_request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request through the real HTTP server; return (status, decoded JSON body)."""
        data = None
        if body is not None:
            data = body if isinstance(body, str | bytes) else json.dumps(body)
        headers = {"Content-Type": content_type}
        if self.require_token:
            headers["Authorization"] = f"Bearer {self.require_token}"
        async with self.request(method, path, data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def _checked(self, method: str, path: str, **kwargs: Any) -> JsonDict:
        status, payload = await self.api_request(method, path, **kwargs)
        if not 200 <= status < 300:
            raise ApiError(status, payload)
        return dict(payload)

    async def create(
        self, gvp: str | kmock.resource, body: Mapping[str, Any], namespace: str | None = None
    ) -> JsonDict:
        namespace = namespace or body.get("metadata", {}).get("namespace")
        return await self._checked("POST", self.path_for(gvp, namespace), body=dict(body))

    async def patch_object(
        self,
        gvp: str | kmock.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> JsonDict:
        path = self.path_for(gvp, namespace, name, subresource)
        return await self._checked("PATCH", path, body=patch, content_type=content_type)

    async def apply(
        self,
        gvp: str | kmock.resource,
        body: Mapping[str, Any],
        namespace: str | None = None,
        *,
        field_manager: str = "test",
        subresource: str | None = None,
    ) -> JsonDict:
        """Server-side apply (``force=true``), like ``kubectl apply --server-side``."""
        meta = body.get("metadata", {})
        namespace = namespace or meta.get("namespace")
        path = self.path_for(gvp, namespace, meta["name"], subresource)
        params = {"fieldManager": field_manager, "force": "true"}
        return await self._checked(
            "PATCH", path, body=dict(body), content_type=APPLY_PATCH, params=params
        )

    async def delete_object(
        self, gvp: str | kmock.resource, namespace: str | None, name: str
    ) -> JsonDict:
        return await self._checked("DELETE", self.path_for(gvp, namespace, name))

    async def put_status(
        self, gvp: str | kmock.resource, namespace: str | None, name: str, status: JsonDict
    ) -> JsonDict:
        """Merge-patch ``.status`` through the /status subresource (watchers see MODIFIED)."""
        return await self.patch_object(
            gvp, namespace, name, {"status": status}, subresource="status"
        )

    async def mark_deployment_available(
        self, namespace: str, name: str, *, available: bool = True, replicas: int | None = None
    ) -> JsonDict:
        """Report a Deployment rolled out (or not), as the deployment controller would."""
        current = self.get_object(DEPLOYMENTS, namespace, name)
        if current is None:
            raise ApiError(404, f"deployments.apps {name!r} not found in {namespace!r}")
        status = deployment_status(current, available=available, replicas=replicas)
        return await self.put_status(DEPLOYMENTS, namespace, name, status)

    # ----------------------------------------------------------------- lifecycle

    async def close_watches(self) -> None:
        """End all watch-streams (before the HTTP server stops) and background rollouts."""
        self._closing = True
        for watch in list(self._watches):
            watch.queue.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ----------------------------------------------------------------- HTTP entry point

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw_request.read()
        parsed = parse_k8s_path(raw_request.path)
        try:
            self._check_auth(raw_request)
            if parsed is None or parsed.plural is None:
                # Discovery & arbitrary endpoints: kmock's own handling (incl. user reactions).
                return await super().__call__(raw_request)
            request = await self._record(raw_request, parsed)
            return await self._serve(raw_request, request, parsed)
        except kmock.KubernetesError as e:
            return await self._render_error(e)
        except Exception as e:  # an emulator bug: report it to the client and to the test
            logger.exception("The emulated Kubernetes API failed on %s", raw_request.path)
            self.failures.append(e)
            return await self._render_error(e)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip kmock's state-changing interceptor: objects are only changed by _serve() here.
        return await kmock.RawHandler._handle(self, request)

    async def _serve_version(self, request: kmock.Request) -> Any:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and str(result.get("groupVersion", "")).startswith("/"):
            result["groupVersion"] = result["groupVersion"][1:]  # "v1", not "/v1" for the core
        return result

    def _get_resources(self) -> list[kmock.resource]:
        # Only what is declared (kmock would also list resources of stored, orphaned objects).
        return kmock.KubernetesScaffold._get_resources(self)

    def _check_auth(self, raw_request: aiohttp.web.BaseRequest) -> None:
        if self.require_token is None:
            return
        if raw_request.headers.get("Authorization") != f"Bearer {self.require_token}":
            raise _error(401, "Unauthorized", "Unauthorized")

    async def _record(self, raw_request: aiohttp.web.BaseRequest, parsed: K8sPath) -> kmock.Request:
        body = await raw_request.read()
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        method = raw_request.method.upper()
        params = dict(raw_request.query)
        action: kmock.action | None
        if method == "GET" and params.get("watch") in {"true", "1"}:
            action = kmock.action.WATCH
        elif method == "GET":
            action = kmock.action.FETCH if parsed.name else kmock.action.LIST
        elif method == "POST":
            action = kmock.action.CREATE
        elif method in {"PATCH", "PUT"}:
            action = kmock.action.UPDATE
        elif method == "DELETE":
            action = kmock.action.DELETE
        else:
            action = None
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=method,
            params=params,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=text,
            data=data,
            action=action,
            resource=parsed.resource,
            namespace=parsed.namespace,
            name=parsed.name,
            subresource=parsed.subresource,
        )
        self._requests.append(request)
        return request

    # ----------------------------------------------------------------- request dispatching

    async def _serve(
        self, raw_request: aiohttp.web.BaseRequest, request: kmock.Request, parsed: K8sPath
    ) -> aiohttp.web.StreamResponse:
        res = parsed.resource
        if res not in self.resources:
            raise _error(
                404, "NotFound", f"the server could not find the requested resource ({res.plural})"
            )
        info = self._info(res)
        namespace = parsed.namespace if info.namespaced else None
        if parsed.subresource is not None and parsed.subresource not in info.subresources:
            raise _error(
                404,
                "NotFound",
                f"the server could not find the requested resource "
                f"({res.plural}/{parsed.subresource})",
            )
        method, params, name = request.method.value, dict(request.params), parsed.name
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        watching = params.get("watch") in {"true", "1"}
        verb = (
            "watch" if method == "GET" and watching else
            "get" if method == "GET" and name else
            "list" if method == "GET" else
            "create" if method == "POST" and not name else
            "update" if method == "PUT" and name else
            "apply" if method == "PATCH" and name and content_type == APPLY_PATCH else
            "patch" if method == "PATCH" and name else
            "delete" if method == "DELETE" and name else
            "deletecollection" if method == "DELETE" else
            ""
        )  # fmt: skip
        if not verb:
            raise _error(
                405, "MethodNotAllowed", f"{method} is not supported on {raw_request.path}"
            )
        self._check_faults(verb, res, name)
        dry_run = bool(params.get("dryRun"))
        manager = params.get("fieldManager") or self._manager_from(request)

        if verb == "watch":
            return await self._stream_watch(raw_request, res, namespace, name, params)
        wants_table = "as=Table" in request.headers.get("Accept", "")
        if verb == "list":
            listing = self._list(res, namespace, params)
            if wants_table and res in self._crd_resources:
                return self._json(200, self._table(res, listing["items"]))
            return self._json(200, listing)
        if verb == "deletecollection":
            listing = self._list(res, namespace, params)
            for item in listing["items"]:
                meta = item["metadata"]
                self._delete(res, meta.get("namespace"), meta["name"], dry_run=dry_run)
            return self._json(200, listing)
        if verb == "create":
            body = self._json_body(request, dict)
            return self._json(
                201, self._create(res, namespace, body, manager=manager, dry_run=dry_run)
            )
        assert name is not None
        if verb == "get":
            obj = self._current(res, namespace, name)
            if obj is None:
                raise self._not_found(res, name)
            if wants_table and res in self._crd_resources:
                return self._json(200, self._table(res, [obj]))
            return self._json(200, obj)
        if verb == "delete":
            return self._json(200, self._delete(res, namespace, name, dry_run=dry_run))

        # Writes to an existing object: PUT, PATCH (json/merge/strategic), and apply.
        sub = parsed.subresource
        if verb == "update":
            body = self._json_body(request, dict)
            precondition = body.get("metadata", {}).get("resourceVersion")
            result = self._update(
                res, namespace, name, lambda _: copy.deepcopy(body),
                subresource=sub, manager=manager, operation="Update",
                precondition=precondition, dry_run=dry_run,
            )  # fmt: skip
            return self._json(200, result)
        if verb == "apply":
            return self._serve_apply(request, res, namespace, name, sub, params, dry_run)
        if content_type == JSON_PATCH:
            ops = self._json_body(request, list)
            result = self._update(
                res, namespace, name, lambda current: apply_json_patch(current, ops),
                subresource=sub, manager=manager, operation="Update", dry_run=dry_run,
            )  # fmt: skip
            return self._json(200, result)
        if content_type in {MERGE_PATCH, STRATEGIC_MERGE_PATCH}:
            if content_type == STRATEGIC_MERGE_PATCH and res in self._crd_resources:
                raise _error(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources; "
                    f"accepted media types: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}",
                )
            patch = self._json_body(request, dict)
            precondition = (patch.get("metadata") or {}).get("resourceVersion")
            result = self._update(
                res, namespace, name, lambda current: merge_patch(current, patch),
                subresource=sub, manager=manager, operation="Update",
                precondition=precondition, dry_run=dry_run,
            )  # fmt: skip
            return self._json(200, result)
        raise _error(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format: {content_type!r}",
        )

    def _table(self, res: kmock.resource, items: list[JsonDict]) -> JsonDict:
        """Server-side printing (what kubectl asks for): the CRD's additionalPrinterColumns."""
        crd = self._current(as_resource(CRDS), None, f"{res.plural}.{res.group}") or {}
        versions = (crd.get("spec") or {}).get("versions") or []
        version = next((v for v in versions if v.get("name") == res.version), {})
        columns = version.get("additionalPrinterColumns") or []
        definitions = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name must be unique within a namespace.",
            }
        ]
        definitions += [
            {
                "name": c["name"],
                "type": c["type"],
                "format": c.get("format", ""),
                "priority": c.get("priority", 0),
                "description": c.get("description", ""),
            }
            for c in columns
        ]
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for column in columns:
                value = printer_value(obj, column["jsonPath"])
                if column["type"] == "date" and isinstance(value, str):
                    value = age(value)
                cells.append(value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    def _serve_apply(
        self,
        request: kmock.Request,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        params: Mapping[str, str],
        dry_run: bool,
    ) -> aiohttp.web.StreamResponse:
        manager = params.get("fieldManager")
        if not manager:
            raise _error(400, "BadRequest", "PATCH /apply requests require fieldManager to be set")
        try:
            applied = yaml.safe_load(request.text or "{}")
        except yaml.YAMLError as e:
            raise _error(400, "BadRequest", f"error decoding YAML: {e}") from None
        if not isinstance(applied, dict):
            raise _error(400, "BadRequest", "the apply body must be an object")
        info = self._info(res)
        if applied.get("apiVersion") != api_version_of(res) or applied.get("kind") != info.kind:
            raise _error(
                400,
                "BadRequest",
                f"apiVersion/kind must be {api_version_of(res)}/{info.kind} in an apply body",
            )
        meta = applied.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise _error(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})",
            )
        if self._current(res, namespace, name) is None:
            if subresource is not None:
                raise self._not_found(res, name)
            body = copy.deepcopy(applied)
            body.setdefault("metadata", {})["name"] = name
            created = self._create(
                res,
                namespace,
                body,
                manager=manager,
                dry_run=dry_run,
                operation="Apply",
                applied=applied,
            )
            return self._json(201, created)
        precondition = meta.get("resourceVersion")

        def compute(current: JsonDict) -> JsonDict:
            previous = self._applied_fields(current, manager, subresource)
            pruned = copy.deepcopy(current)
            prune_fields(pruned, previous, self._fieldset_of(applied))
            return dict(merge_patch(pruned, applied))

        result = self._update(
            res, namespace, name, compute,
            subresource=subresource, manager=manager, operation="Apply",
            precondition=precondition, dry_run=dry_run, applied=applied,
        )  # fmt: skip
        return self._json(200, result)

    # ----------------------------------------------------------------- list & watch

    def _list(
        self, res: kmock.resource, namespace: str | None, params: Mapping[str, str]
    ) -> JsonDict:
        watch = _Watch(
            res, namespace, None, params.get("labelSelector", ""), params.get("fieldSelector", "")
        )
        items = [obj for obj in self._iter_current(res, namespace) if watch.matches(obj)]
        return {
            "apiVersion": api_version_of(res),
            "kind": f"{self._info(res).kind}List",
            "metadata": {"resourceVersion": str(self._rv), "continue": ""},
            "items": items,
        }

    async def _stream_watch(
        self,
        raw_request: aiohttp.web.BaseRequest,
        res: kmock.resource,
        namespace: str | None,
        name: str | None,
        params: Mapping[str, str],
    ) -> aiohttp.web.StreamResponse:
        watch = _Watch(
            res, namespace, name, params.get("labelSelector", ""), params.get("fieldSelector", "")
        )
        since = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") == "true"
        backlog: list[JsonDict] = []
        gone = False
        if since in {"", "0"} or initial:
            objs = [obj for obj in self._iter_current(res, namespace) if watch.matches(obj)]
            backlog = [{"type": "ADDED", "object": obj} for obj in objs]
            if initial:
                bookmark = {
                    "kind": self._info(res).kind,
                    "apiVersion": api_version_of(res),
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {INITIAL_EVENTS_END: "true"},
                    },
                }
                backlog.append({"type": "BOOKMARK", "object": bookmark})
        else:
            try:
                start = int(since)
            except ValueError:
                raise _error(400, "BadRequest", f"invalid resource version: {since!r}") from None
            if start < self._log_floor:
                gone = True
                backlog = [{"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {start} ({self._log_floor})",
                }}]  # fmt: skip
            else:
                backlog = [
                    event for rv, eres, event in self._log
                    if rv > start and eres == res and watch.matches(event["object"])
                ]  # fmt: skip
        # Subscribe in the same synchronous step as the backlog is taken: no events are lost.
        if not gone:
            self._watches.add(watch)
        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        try:
            await response.prepare(raw_request)
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            loop = asyncio.get_running_loop()
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = loop.time() + timeout if timeout is not None else None
            while not gone and not self._closing:
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - loop.time()))
                try:
                    item = await asyncio.wait_for(watch.queue.get(), timeout=wait)
                except TimeoutError:
                    transport = raw_request.transport
                    if transport is None or transport.is_closing():
                        break  # the client has gone
                    if deadline is not None and loop.time() >= deadline:
                        break  # ?timeoutSeconds=N is over
                    continue
                if item is None:
                    break  # the emulator is closing
                await response.write(json.dumps(item).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client disconnected while we were writing
        finally:
            self._watches.discard(watch)
        return response

    # ----------------------------------------------------------------- state transitions

    def _create(
        self,
        res: kmock.resource,
        namespace: str | None,
        body: JsonDict,
        *,
        manager: str,
        dry_run: bool = False,
        operation: str = "Update",
        applied: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        info = self._info(res)
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _error(400, "BadRequest", "metadata must be an object")
        if info.namespaced:
            body_namespace = meta.get("namespace")
            if namespace and body_namespace and body_namespace != namespace:
                raise _error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            namespace = namespace or body_namespace or "default"
        else:
            namespace = None
        name = meta.get("name")
        if not name and meta.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATE_NAME_ALPHABET) for _ in range(5))
            name = f"{meta['generateName']}{suffix}"
        if not name:
            raise self._invalid(res, "", "metadata.name", "name or generateName is required")
        if self._current(res, namespace, name) is not None:
            raise _error(
                409,
                "AlreadyExists",
                f'{self._kind_ref(res)} "{name}" already exists',
                name=name,
                kind=res.plural,
            )
        body["apiVersion"] = api_version_of(res)
        body["kind"] = info.kind
        if "status" in info.subresources:
            body.pop("status", None)
        for key in _SYSTEM_METADATA:
            meta.pop(key, None)
        meta["name"] = name
        if namespace is not None:
            meta["namespace"] = namespace
        self._normalize(res, body)
        self._validate(res, body)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["managedFields"] = self._managed_fields([], manager, operation, res, None, applied)
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return body
        meta["resourceVersion"] = self._bump()
        self._store(res, namespace, name, body)
        self._emit(res, "ADDED", body)
        self._after_write(res, None, body)
        return copy.deepcopy(body)

    def _update(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        compute: Callable[[JsonDict], Any],
        *,
        subresource: str | None,
        manager: str,
        operation: str,
        precondition: str | None = None,
        dry_run: bool = False,
        applied: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        info = self._info(res)
        old = self._current(res, namespace, name)
        if old is None:
            raise self._not_found(res, name)
        old_meta = old["metadata"]
        if precondition is not None and str(precondition) != old_meta["resourceVersion"]:
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {self._kind_ref(res)} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                name=name,
                kind=res.plural,
            )
        candidate = compute(copy.deepcopy(old))
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise self._invalid(res, name, "", "the result is not a valid object")

        # The status subresource split: each endpoint only changes its own part.
        has_status = "status" in info.subresources
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            if has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        new_meta = new.setdefault("metadata", {})
        for key in ("name", "namespace"):
            if new_meta.get(key, old_meta.get(key)) != old_meta.get(key):
                raise _error(
                    400,
                    "BadRequest",
                    f"metadata.{key} cannot be changed "
                    f"({old_meta.get(key)!r} -> {new_meta.get(key)!r})",
                )
        for key in _SYSTEM_METADATA:
            if key in old_meta:
                new_meta[key] = copy.deepcopy(old_meta[key])
            else:
                new_meta.pop(key, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        self._normalize(res, new)
        self._validate(res, new)
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise self._invalid(
                    res,
                    name,
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted, "
                    f"found new finalizers {sorted(added)!r}",
                )
        if new == old:
            return copy.deepcopy(old)  # a no-op write: no new resourceVersion, no watch event

        excluded = {"metadata", "apiVersion", "kind"} | ({"status"} if has_status else set())
        if {k: v for k, v in new.items() if k not in excluded} != {
            k: v for k, v in old.items() if k not in excluded
        }:
            new_meta["generation"] = int(old_meta.get("generation", 0)) + 1
        new_meta["managedFields"] = self._managed_fields(
            old_meta.get("managedFields") or [], manager, operation, res, subresource, applied
        )
        if dry_run:
            return new
        new_meta["resourceVersion"] = self._bump()
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            # The last finalizer is gone: the object disappears (watchers see DELETED only).
            self._store(res, namespace, name, new)
            self._finally_delete(res, namespace, name, new, bump=False)
            return copy.deepcopy(new)
        self._store(res, namespace, name, new)
        self._emit(res, "MODIFIED", new)
        self._after_write(res, old, new)
        return copy.deepcopy(new)

    def _delete(
        self, res: kmock.resource, namespace: str | None, name: str, *, dry_run: bool = False
    ) -> JsonDict:
        old = self._current(res, namespace, name)
        if old is None:
            raise self._not_found(res, name)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp") or dry_run:
                return copy.deepcopy(old)
            new = copy.deepcopy(old)
            meta = new["metadata"]
            meta["deletionTimestamp"] = _now()
            meta["deletionGracePeriodSeconds"] = 0
            meta["generation"] = int(meta.get("generation", 0)) + 1
            meta["resourceVersion"] = self._bump()
            self._store(res, namespace, name, new)
            self._emit(res, "MODIFIED", new)
            return copy.deepcopy(new)
        if dry_run:
            return copy.deepcopy(old)
        return self._finally_delete(res, namespace, name, old)

    def _finally_delete(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        last: JsonDict,
        *,
        bump: bool = True,
    ) -> JsonDict:
        final = copy.deepcopy(last)
        if bump:
            final["metadata"]["resourceVersion"] = self._bump()
        self.objects[res, namespace, name].delete()
        self._emit(res, "DELETED", final)
        if self.garbage_collection:
            self._collect_garbage(final["metadata"].get("uid"))
        return copy.deepcopy(final)

    def _collect_garbage(self, owner_uid: str | None) -> None:
        if not owner_uid:
            return
        dependents = [
            (res, namespace, name)
            for (res, namespace, name), obj in list(self.objects.items())
            if not obj.deleted
            if any(
                ref.get("uid") == owner_uid
                for ref in obj.raw.get("metadata", {}).get("ownerReferences") or []
            )
        ]
        for res, namespace, name in dependents:
            if res in self.resources and self._current(res, namespace, name) is not None:
                self._delete(res, namespace, name)

    def _upsert(self, res: kmock.resource, namespace: str | None, body: JsonDict) -> JsonDict:
        """Write a whole object (incl. status) bypassing the API rules: for seeding the state."""
        name = body["metadata"]["name"]
        if self._current(res, namespace, name) is None:
            result = self._create(res, namespace, body, manager="emulator")
        else:
            result = self._update(
                res, namespace, name,
                lambda current: {
                    **copy.deepcopy(body),
                    "metadata": {**current["metadata"], **body["metadata"]},
                },
                subresource=None, manager="emulator", operation="Update",
            )  # fmt: skip
        if "status" in body:
            result = self._update(
                res, namespace, name,
                lambda current: {**current, "status": copy.deepcopy(body["status"])},
                subresource="status", manager="emulator", operation="Update",
            )  # fmt: skip
        return result

    def _after_write(self, res: kmock.resource, old: JsonDict | None, new: JsonDict) -> None:
        if self.deployment_rollout_delay is None or res != as_resource(DEPLOYMENTS):
            return
        generation = new["metadata"]["generation"]
        if old is not None and old["metadata"].get("generation") == generation:
            return
        namespace, name = new["metadata"].get("namespace"), new["metadata"]["name"]
        task = asyncio.get_running_loop().create_task(self._roll_out(namespace, name, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _roll_out(self, namespace: str | None, name: str, generation: int) -> None:
        await asyncio.sleep(self.deployment_rollout_delay or 0)
        res = as_resource(DEPLOYMENTS)
        current = self._current(res, namespace, name)
        if current is None or current["metadata"].get("generation") != generation:
            return
        status = deployment_status(current, available=True)
        self._update(
            res, namespace, name, lambda obj: merge_patch(obj, {"status": status}),
            subresource="status", manager="kube-controller-manager", operation="Update",
        )  # fmt: skip

    # ----------------------------------------------------------------- internals

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, res: kmock.resource, event_type: str, obj: JsonDict) -> None:
        event = {"type": event_type, "object": obj}
        if self._log.maxlen is not None and len(self._log) == self._log.maxlen:
            self._log_floor = self._log[0][0]
        self._log.append((int(obj["metadata"]["resourceVersion"]), res, event))
        for watch in list(self._watches):
            if watch.resource == res and watch.matches(obj):
                watch.queue.put_nowait(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def _store(self, res: kmock.resource, namespace: str | None, name: str, body: JsonDict) -> None:
        key = (res, namespace, name)
        if key in self.objects:
            self.objects[key].create(body)  # appends a new version to the object's history
        else:
            self.objects[key] = body

    def _current(self, res: kmock.resource, namespace: str | None, name: str) -> JsonDict | None:
        key = (res, namespace, name)
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj.raw

    def _iter_current(self, res: kmock.resource, namespace: str | None) -> Iterator[JsonDict]:
        for (ores, onamespace, _), obj in list(self.objects.items()):
            if ores == res and not obj.deleted and (namespace is None or onamespace == namespace):
                yield obj.raw

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo:
        if res not in self.resources:
            raise _error(
                404, "NotFound", f"the server could not find the requested resource ({res.plural})"
            )
        return self.resources[res]

    def _kind_ref(self, res: kmock.resource) -> str:
        return f"{res.plural}.{res.group}" if res.group else str(res.plural)

    def _not_found(self, res: kmock.resource, name: str) -> kmock.KubernetesError:
        return _error(
            404, "NotFound", f'{self._kind_ref(res)} "{name}" not found', name=name, kind=res.plural
        )

    def _invalid(
        self, res: kmock.resource, name: str, field: str, detail: str
    ) -> kmock.KubernetesError:
        kind = self._info(res).kind
        group = f".{res.group}" if res.group else ""
        message = f'{kind}{group} "{name}" is invalid: {field}: {detail}'
        return _error(
            422,
            "Invalid",
            message,
            name=name,
            kind=kind,
            causes=[{"field": field, "message": detail}],
        )

    def _check_faults(self, verb: str, res: kmock.resource, name: str | None) -> None:
        for fault in list(self._faults):
            if fault.verb != verb or (fault.resource is not None and fault.resource != res):
                continue
            if fault.name is not None and fault.name != name:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            raise _error(fault.status, "InjectedFault", fault.message)

    @staticmethod
    def _json(status: int, payload: Any) -> aiohttp.web.Response:
        return aiohttp.web.json_response(payload, status=status)

    @staticmethod
    def _json_body(request: kmock.Request, expected: type[Any]) -> Any:
        try:
            data = json.loads(request.text)
        except ValueError:
            raise _error(400, "BadRequest", "the request body is not valid JSON") from None
        if not isinstance(data, expected):
            raise _error(400, "BadRequest", f"the request body must be a JSON {expected.__name__}")
        return data

    @staticmethod
    def _manager_from(request: kmock.Request) -> str:
        agent = request.headers.get("User-Agent", "")
        return agent.split("/", 1)[0].split(" ", 1)[0] or "unknown"

    @staticmethod
    def _fieldset_of(applied: Mapping[str, Any]) -> JsonDict:
        trimmed = {k: v for k, v in applied.items() if k not in {"apiVersion", "kind"}}
        meta = {
            k: v for k, v in (applied.get("metadata") or {}).items() if k not in _SYSTEM_METADATA
        }
        if meta:
            trimmed["metadata"] = meta
        else:
            trimmed.pop("metadata", None)
        return fieldset(trimmed)

    @staticmethod
    def _applied_fields(current: JsonDict, manager: str, subresource: str | None) -> JsonDict:
        for entry in current.get("metadata", {}).get("managedFields") or []:
            if (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == (
                manager,
                "Apply",
                subresource,
            ):
                return dict(entry.get("fieldsV1") or {})
        return {}

    def _managed_fields(
        self,
        entries: Iterable[JsonDict],
        manager: str,
        operation: str,
        res: kmock.resource,
        subresource: str | None,
        applied: Mapping[str, Any] | None,
    ) -> list[JsonDict]:
        """A simplified ``metadata.managedFields``: one entry per manager/operation/subresource;
        for Apply, ``fieldsV1`` holds the applied field set (used to prune dropped fields)."""
        entry: JsonDict = {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version_of(res),
            "time": _now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": self._fieldset_of(applied) if applied is not None else {},
        }
        if subresource:
            entry["subresource"] = subresource
        ident = (manager, operation, subresource)
        kept = [
            e
            for e in entries
            if (e.get("manager"), e.get("operation"), e.get("subresource")) != ident
        ]
        return [*copy.deepcopy(kept), entry]

    def _normalize(self, res: kmock.resource, body: JsonDict) -> None:
        """What the API server rewrites on every write (Secrets: stringData -> data)."""
        if res == kmock.resource("", "v1", "secrets"):
            string_data = body.pop("stringData", None) or {}
            data = body.setdefault("data", {}) if string_data or "data" in body else {}
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            for key, value in (body.get("data") or {}).items():
                try:
                    base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError):
                    raise _error(
                        400, "BadRequest", f"Secret.data[{key}]: illegal base64 data"
                    ) from None

    def _validate(self, res: kmock.resource, body: JsonDict) -> None:
        if not self.validate:
            return
        meta = body["metadata"]
        name = meta["name"]
        plural = res.plural
        if plural in {"services", "namespaces"}:
            pattern, limit = (_DNS_1035_LABEL if plural == "services" else _DNS_LABEL), 63
        else:
            pattern, limit = _DNS_SUBDOMAIN, 253
        if len(name) > limit or not pattern.fullmatch(name):
            raise self._invalid(
                res,
                name,
                "metadata.name",
                f"Invalid value: {name!r}: must be a lowercase RFC 1123 name "
                f"of at most {limit} characters",
            )
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, short = key.rpartition("/")
            key_ok = bool(_QUALIFIED_NAME.fullmatch(short)) and len(short) <= 63
            key_ok = key_ok and (
                not prefix or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(prefix)))
            )
            if not key_ok:
                raise self._invalid(
                    res, name, "metadata.labels", f"Invalid value: {key!r}: invalid label key"
                )
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                raise self._invalid(
                    res,
                    name,
                    "metadata.labels",
                    f"Invalid value: {value!r}: a label value must be 63 characters or less, "
                    "alphanumeric, '-', '_' or '.'",
                )
        for key, value in (meta.get("annotations") or {}).items():
            if not isinstance(value, str):
                raise _error(400, "BadRequest", f"metadata.annotations[{key}] must be a string")
        if plural in {"configmaps", "secrets"} and not res.group:
            for field in ("data", "binaryData"):
                for key in body.get(field) or {}:
                    if len(key) > 253 or not _CONFIG_KEY.fullmatch(key):
                        raise self._invalid(
                            res,
                            name,
                            f"{field}[{key}]",
                            "a valid config key must consist of alphanumeric characters, "
                            "'-', '_' or '.'",
                        )


_FILTER = re.compile(r'^(\w+)\[\?\(@\.(\w+)=="([^"]*)"\)\]$')


def printer_value(obj: Any, json_path: str) -> Any:
    """The few JSONPath forms printer columns use: ``.a.b`` and ``.a[?(@.k=="v")].b``."""
    node: Any = obj
    for part in re.split(r"\.(?![^\[]*\])", json_path.removeprefix(".")):
        match = _FILTER.match(part)
        if match:
            field, key, wanted = match.groups()
            items = node.get(field) if isinstance(node, dict) else None
            node = next((i for i in items or [] if i.get(key) == wanted), None)
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def age(timestamp: str) -> str:
    """kubectl's short duration of how long ago ``timestamp`` was."""
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 0:
        return "<invalid>"  # what the API server prints for a time in the future
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def apply_json_patch(document: JsonDict, ops: list[Any]) -> JsonDict:
    """RFC 6902 JSON patch; a failed ``test`` or a bad path is HTTP 422, as in Kubernetes."""
    try:
        return dict(jsonpatch.apply_patch(document, ops, in_place=False))
    except jsonpatch.JsonPatchTestFailed as e:
        raise _error(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: test failed: {e}",
        ) from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
        raise _error(
            422, "Invalid", f"the server rejected our request due to an error in our request: {e}"
        ) from None


def deployment_status(
    deployment: Mapping[str, Any], *, available: bool = True, replicas: int | None = None
) -> JsonDict:
    """The ``.status`` the deployment controller reports for a (non-)available Deployment."""
    now = _now()
    wanted = (
        replicas if replicas is not None else int(deployment.get("spec", {}).get("replicas", 1))
    )
    ready = wanted if available else 0
    name = deployment["metadata"]["name"]
    return {
        "observedGeneration": deployment["metadata"].get("generation", 1),
        "replicas": wanted,
        "updatedReplicas": wanted,
        "readyReplicas": ready,
        "availableReplicas": ready,
        **({} if available else {"unavailableReplicas": wanted}),
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                "message": f'ReplicaSet "{name}" has successfully progressed.'
                if available
                else f'ReplicaSet "{name}" is progressing.',
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ],
    }


def crd_manifest(spec: ResourceSpec) -> JsonDict:
    """A minimal CustomResourceDefinition for a resource (schema: preserve unknown fields)."""
    res = as_resource(spec.gvp)
    names: JsonDict = {
        "plural": res.plural,
        "singular": spec.singular or spec.kind.lower(),
        "kind": spec.kind,
        "listKind": f"{spec.kind}List",
    }
    if spec.shortnames:
        names["shortNames"] = list(spec.shortnames)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{res.plural}.{res.group}"},
        "spec": {
            "group": res.group,
            "scope": "Namespaced" if spec.namespaced else "Cluster",
            "names": names,
            "versions": [
                {
                    "name": res.version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {"status": {}} if spec.status else {},
                }
            ],
        },
    }


@contextlib.asynccontextmanager
async def emulated_cluster(**options: Any) -> AsyncIterator[DfmKubernetesEmulator]:
    """Run a :class:`DfmKubernetesEmulator` on ``127.0.0.1:<random port>`` for the block.

    Unexpected emulator failures (HTTP 500s, i.e. bugs here) are re-raised on a clean exit;
    K8s-level errors such as 404/409/422 are normal answers and are not.
    """
    emulator = DfmKubernetesEmulator(**options)
    async with emulator:
        server = kmock.Server(emulator, host="127.0.0.1", port=0)
        async with server:
            try:
                yield emulator
            finally:
                await emulator.close_watches()
    if emulator.failures:
        raise ExceptionGroup("The Kubernetes emulator failed", emulator.failures)
