"""The CRDs as the real API server enforces them: every invalid case of tests/unit/test_crds.py is
refused by the server (CEL rules evaluated by Kubernetes itself, with the messages the CRDs, and
so docs/crd-reference.md, carry), and every valid one accepted. Server-side dry runs, with strict
field validation as kubectl sends it; nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.realkube.cluster import Api, ApiError, JsonDict
from tests.realkube.running import Release, path_of
from tests.unit.test_crds import INVALID, VALID, cel_failures, schema_of

# Whichever test of the package runs first starts the session's control plane inside its own
# timeout (waits of up to 120 s for the API server and 120 s for the controller-manager): more
# than the default 120 s, or a loaded machine's slow start fails that test.
pytestmark = pytest.mark.timeout(600)

PLURALS = {
    "WebhookSource": "webhooksources",
    "ManagedSecret": "managedsecrets",
    "SyncSchedule": "syncschedules",
    "BackupSchedule": "backupschedules",
}


def dry_run_create(admin: Api, manifest: JsonDict, namespace: str) -> JsonDict:
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    path = path_of(PLURALS[manifest["kind"]], namespace)
    return admin.create(f"{path}?dryRun=All&fieldValidation=Strict", manifest)


def test_all_four_kinds_are_served(admin: Api, chart: Release) -> None:
    resources = {r["name"] for r in admin.get("/apis/dfm.dev/v1alpha1")["resources"]}
    for plural in PLURALS.values():
        assert {plural, f"{plural}/status"} <= resources


@pytest.mark.parametrize("case", sorted(INVALID))
def test_the_api_server_refuses_an_invalid_spec(
    admin: Api, chart: Release, namespace: str, case: str
) -> None:
    manifest, by_cel = INVALID[case]
    with pytest.raises(ApiError) as refused:
        dry_run_create(admin, manifest, namespace)
    assert refused.value.status in (400, 422), refused.value.message
    if by_cel:
        # The message each broken rule promises, as the server says it (and as cel-python,
        # which the unit tests use, predicted it).
        expected: list[Any] = cel_failures(schema_of(manifest["kind"]), manifest)
        assert expected, f"{case}: cel-python finds no broken rule, the server did"
        for failure in expected:
            message = failure.split(": ", 1)[1]
            assert message in refused.value.message, refused.value.message


@pytest.mark.parametrize("case", sorted(VALID))
def test_the_api_server_accepts_a_valid_spec(
    admin: Api, chart: Release, namespace: str, case: str
) -> None:
    created = dry_run_create(admin, VALID[case], namespace)
    assert created["kind"] == VALID[case]["kind"]


@pytest.mark.parametrize(
    ("workers", "said"),
    [
        (0, "spec.workers in body should be greater than or equal to 1"),
        (17, "spec.workers in body should be less than or equal to 16"),
    ],
)
def test_the_api_server_refuses_workers_outside_one_to_sixteen(
    admin: Api, chart: Release, namespace: str, workers: int, said: str
) -> None:
    manifest = INVALID["no workers"][0]
    manifest = {**manifest, "spec": {**manifest["spec"], "workers": workers}}
    with pytest.raises(ApiError) as refused:
        dry_run_create(admin, manifest, namespace)
    assert refused.value.status == 422, refused.value.message
    assert f"spec.workers: Invalid value: {workers}" in refused.value.message
    assert said in refused.value.message


def test_the_api_server_fills_in_one_worker(admin: Api, chart: Release, namespace: str) -> None:
    manifest = INVALID["no workers"][0]
    spec = {k: v for k, v in manifest["spec"].items() if k != "workers"}
    created = dry_run_create(admin, {**manifest, "spec": spec}, namespace)
    assert created["spec"]["workers"] == 1
