"""The RBAC rules the operator needs: derived from kube.KINDS plus what kopf itself does.

The Helm chart's ClusterRole/Role must grant exactly these (a test renders the chart and compares).
"""

from __future__ import annotations

from dataclasses import dataclass

from dfm_operator.kube import KINDS


@dataclass(frozen=True, order=True)
class Rule:
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    cluster_scoped: bool = False
    # "cluster-wide" or "namespaced" when only that mode of the operator needs the rule.
    mode: str | None = None

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "apiGroups": [self.api_group],
            "resources": [self.resource],
            "verbs": list(self.verbs),
        }


# kopf's own needs: posting Events, peering between replicas, discovering namespaces and CRDs.
KOPF_RULES: tuple[Rule, ...] = (
    Rule("", "events", ("create",)),
    Rule("kopf.dev", "kopfpeerings", ("get", "list", "patch", "watch"), mode="namespaced"),
    Rule(
        "kopf.dev",
        "clusterkopfpeerings",
        ("get", "list", "patch", "watch"),
        cluster_scoped=True,
        mode="cluster-wide",
    ),
    Rule("", "namespaces", ("list", "watch"), cluster_scoped=True),
)
CLUSTER_SCOPED_RESOURCES = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}


def required_rules(mode: str | None = None) -> list[Rule]:
    """Every rule, or those the operator needs in ``mode`` ("cluster-wide" or "namespaced")."""
    rules: list[Rule] = []
    for kind in KINDS:
        cluster = kind.plural in CLUSTER_SCOPED_RESOURCES
        rules.append(Rule(kind.group, kind.plural, tuple(sorted(kind.verbs)), cluster))
        if kind.status_verbs:
            rules.append(
                Rule(kind.group, f"{kind.plural}/status", tuple(sorted(kind.status_verbs)), cluster)
            )
        if kind.owns_children:
            # Setting blockOwnerDeletion on a child's ownerReference needs `update` on the
            # owner's finalizers where OwnerReferencesPermissionEnforcement is on (OpenShift).
            rules.append(Rule(kind.group, f"{kind.plural}/finalizers", ("update",), cluster))
    rules.extend(KOPF_RULES)
    return sorted(r for r in rules if mode is None or r.mode in (None, mode))
