"""kopf peering: the CRDs replicas coordinate through, and the start-up check that they exist.

With peering on (the default), kopf waits, paused and without a word, until its peering object
exists. `dfm operator` therefore checks before kopf starts: the CRD missing is a one-line error
naming the fix; the object missing is created (the Helm chart creates it itself, so an operator
installed by the chart only reads it and its RBAC grants no ``create``); a refused creation is a
one-line error too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from dfm_operator.kube import Kube

PEERING_NAME = "df-middleware"
PEERING_GROUP = "kopf.dev"
CRDS_FILENAME = "kopf-peerings.yaml"

_HEADER = """\
# kopf's peering CRDs (https://kopf.readthedocs.io/en/stable/peering/): operator replicas record
# their heartbeats in a ClusterKopfPeering (cluster-wide mode) or a KopfPeering (per watched
# namespace), so that only one is active. `dfm operator` creates its peering object when it is
# missing; the Helm chart creates it itself (Helm installs a chart's crds/ before its templates).
# Written by `dfm crds`; Helm never upgrades or deletes a chart's crds/, and these definitions are
# stable and schema-free.
"""


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{PEERING_GROUP}",
            "labels": {
                "app.kubernetes.io/name": "df-middleware",
                "app.kubernetes.io/component": "peering",
                "app.kubernetes.io/part-of": "df-middleware",
            },
        },
        "spec": {
            "scope": scope,
            "group": PEERING_GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": plural.removesuffix("s"),
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def peering_crds() -> list[dict[str, Any]]:
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def peering_crds_yaml() -> str:
    """The chart's crds/kopf-peerings.yaml: both CRDs in one file."""
    docs = [yaml.safe_dump(crd, sort_keys=False, width=100) for crd in peering_crds()]
    return _HEADER + "---\n".join(docs)


def peering_crd_files() -> dict[str, str]:
    """crds/: one ``<plural>.kopf.dev.yaml`` file per CRD, like the dfm.dev ones."""
    return {
        f"{crd['metadata']['name']}.yaml": _HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)
        for crd in peering_crds()
    }


class PeeringNotReady(Exception):
    """What is missing for peering, and what to do, in one line."""


async def ensure_peering(kube: Kube, namespaces: Sequence[str]) -> list[str]:
    """Make sure kopf's peering object exists (one ClusterKopfPeering cluster-wide, a KopfPeering
    per watched namespace); returns what was created, raises PeeringNotReady otherwise."""
    # Here, not at the top: `dfm crds` (and so every dfm command) imports this module for the
    # peering CRDs, and the Kubernetes client costs a second of start-up to import.
    from dfm_operator.kube import KubeError

    plural = "kopfpeerings" if namespaces else "clusterkopfpeerings"
    kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
    standalone = "or run `dfm operator --standalone` (one replica, no coordination)"
    if not await kube.crd_exists(f"{plural}.{PEERING_GROUP}"):
        raise PeeringNotReady(
            f"kopf peering is not installed (no CRD {plural}.{PEERING_GROUP}): "
            f"`kubectl apply -f crds/` installs it, {standalone}"
        )
    created = []
    where_to: list[str | None] = list(namespaces) or [None]
    for namespace in where_to:
        where = f"{namespace}/{PEERING_NAME}" if namespace else PEERING_NAME
        try:
            if await kube.peering_exists(plural, namespace, PEERING_NAME):
                continue
            await kube.create_peering(kind, plural, namespace, PEERING_NAME)
        except KubeError as exc:
            if exc.status == 403:
                raise PeeringNotReady(
                    f"no {kind} {where}, and this account may not create it: create it "
                    f"(`kubectl create -f -` with apiVersion {PEERING_GROUP}/v1, kind {kind}, "
                    f"name {PEERING_NAME}), {standalone}"
                ) from exc
            raise PeeringNotReady(f"checking {kind} {where}: {exc}") from exc
        created.append(f"{kind} {where}")
    return created
