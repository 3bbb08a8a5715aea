"""The chart's cluster-wide RBAC against what its operator did in every test before this one
(conftest runs this module last): a grant no request needed is excessive and fails here; a grant
missing already failed the test whose request the server refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.realkube.cluster import Api, ControlPlane
from tests.realkube.running import (
    NOT_EXERCISED,
    NOT_IN_THE_AUDIT_LOG,
    Grant,
    Release,
    granted_by,
    pruned_status_fields,
    requests_by,
    unexplained_grants,
    used_grants,
)

# Whichever test of the package runs first starts the session's control plane inside its own
# timeout (waits of up to 120 s for the API server and 120 s for the controller-manager): more
# than the default 120 s, or a loaded machine's slow start fails that test.
pytestmark = pytest.mark.timeout(600)

ALLOW = {"authorization.k8s.io/decision": "allow"}
FORBID = {"authorization.k8s.io/decision": "forbid"}


def test_every_grant_of_the_cluster_wide_chart_was_needed(
    control_plane: ControlPlane, admin: Api, chart: Release
) -> None:
    events = requests_by(control_plane, chart.username)
    assert events, "the chart's operator ran in the tests before this one"
    granted = granted_by(admin, chart)
    assert unexplained_grants(granted, events) == {}
    # The explanations are not a blanket: each names a grant the chart really has.
    assert set(NOT_IN_THE_AUDIT_LOG) | set(NOT_EXERCISED) <= granted
    assert not (set(NOT_IN_THE_AUDIT_LOG) | set(NOT_EXERCISED)) & used_grants(events)


def test_every_grant_of_the_namespaced_chart_was_needed(
    control_plane: ControlPlane, chart: Release, rbac_record: dict[str, set[Grant]]
) -> None:
    """The same for the namespaced release (its ClusterRole and Role): both operators run the same
    code, so what either used counts; what only the namespaced mode needs (KopfPeering) must have
    been used by the namespaced one."""
    assert len(rbac_record) == 1, "the namespaced chart's test ran before this one"
    [(username, granted)] = rbac_record.items()
    own = requests_by(control_plane, username)
    events = own + requests_by(control_plane, chart.username)
    assert unexplained_grants(granted, events) == {}
    assert ("kopf.dev", "kopfpeerings", "patch") in used_grants(own)
    assert not any(resource == "clusterkopfpeerings" for _, resource, _ in granted)


def test_every_kind_had_its_status_checked_against_the_schema(
    control_plane: ControlPlane, chart: Release
) -> None:
    """The operator fixture compared each status write with what the server stored: make sure
    that comparison had writes of all four kinds to look at (as request and response)."""
    written = {
        event["objectRef"]["resource"]
        for event in requests_by(control_plane, chart.username)
        if event.get("objectRef", {}).get("subresource") == "status"
        and event.get("requestObject", {}).get("status")
        and event.get("responseObject", {}).get("status")
    }
    assert written == {"webhooksources", "managedsecrets", "syncschedules", "backupschedules"}


def test_the_status_comparison_sees_a_pruned_field() -> None:
    # The control for that comparison: a key the server dropped is reported, a deletion is not.
    event = {
        "objectRef": {"apiGroup": "dfm.dev", "resource": "webhooksources", "name": "s",
                      "subresource": "status"},
        "responseStatus": {"code": 200},
        "requestObject": {"status": {"readyReplica": 1, "endpoint": "http://x", "gone": None,
                                     "conditions": [{"type": "Ready", "reasn": "typo"}]}},
        "responseObject": {"status": {"endpoint": "http://x", "conditions": [{"type": "Ready"}]}},
    }  # fmt: skip
    assert pruned_status_fields([event]) == [
        "webhooksources/s: status.readyReplica",
        "webhooksources/s: status.conditions[0].reasn",
    ]


def test_a_grant_counts_as_used_when_rbac_allowed_the_request() -> None:
    # The control for the audit's reading: allowed requests count whatever their outcome (a 404
    # `get` needed the grant: without it, 403), a refused one does not, a creating apply is also
    # a create.
    def event(verb: str, resource: str, code: int, annotations: dict[str, str]) -> dict[str, Any]:
        return {
            "verb": verb,
            "objectRef": {"apiGroup": "", "resource": resource, "namespace": "ns"},
            "responseStatus": {"code": code},
            "annotations": annotations,
        }

    events = [
        event("get", "persistentvolumeclaims", 404, ALLOW),
        event("create", "persistentvolumeclaims", 409, ALLOW),
        event("list", "pods", 403, FORBID),
        event("patch", "configmaps", 201, ALLOW),
    ]
    assert used_grants(events) == {
        ("", "persistentvolumeclaims", "get"),
        ("", "persistentvolumeclaims", "create"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "create"),
    }
