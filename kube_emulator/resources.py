"""What the emulated cluster serves: resource kinds, their URLs, and minimal CRDs."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import kmock

JsonDict = dict[str, Any]

# Short names for the resources the tests use most.
WEBHOOKSOURCES = "dfm.dev/v1alpha1/webhooksources"
MANAGEDSECRETS = "dfm.dev/v1alpha1/managedsecrets"
SYNCSCHEDULES = "dfm.dev/v1alpha1/syncschedules"
BACKUPSCHEDULES = "dfm.dev/v1alpha1/backupschedules"
DEPLOYMENTS = "apps/v1/deployments"
CRONJOBS = "batch/v1/cronjobs"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
SERVICEMONITORS = "monitoring.coreos.com/v1/servicemonitors"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
EVENTS = "v1/events"
EVENTS_K8S = "events.k8s.io/v1/events"

ALL_VERBS = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
# Metadata only the API server writes: never taken from a request body.
SYSTEM_METADATA = (
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


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_resource(gvp: str | kmock.resource) -> kmock.resource:
    """Parse ``"apps/v1/deployments"``, ``"v1/pods"`` or a ``kmock.resource`` into a resource."""
    res = gvp if isinstance(gvp, kmock.resource) else kmock.resource(gvp)
    if res.group is None or res.version is None or res.plural is None:
        raise ValueError(f"Not a group/version/plural: {gvp!r}")
    return res


def api_version_of(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


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
