"""The emulator prunes custom resources by their CRD's structural schema, as an API server does.

Each case is an example or a rule of the Kubernetes documentation:

* *Extend the Kubernetes API with CustomResourceDefinitions*, "Field pruning" and "Controlling
  pruning" (kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
  custom-resource-definitions/): the CronTab with ``someRandomField: 42``, the ``json`` field under
  ``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-embedded-resource``;
* the same page, "Status subresource": the status is written through ``/status`` only;
* *API Concepts*, "Field validation" (kubernetes.io/docs/reference/using-api/api-concepts/):
  ``fieldValidation=Ignore|Warn|Strict``, Warn being the default.

The last test is the reason it matters here: a misspelt status key written by the operator
disappears, as it would on a real cluster, instead of passing every test below e2e.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kube_emulator import DfmKubernetesEmulator, emulated_cluster

CRONTABS = "stable.example.com/v1/crontabs"
NS = "default"
CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


def crontab_crd(schema: dict[str, Any]) -> dict[str, Any]:
    """The documentation's CronTab CRD, with the schema of each example."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


CRONTAB_SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "cronSpec": {"type": "string"},
                "image": {"type": "string"},
                "replicas": {"type": "integer"},
            },
        },
        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
    },
}


@pytest.fixture
async def k8s() -> AsyncIterator[DfmKubernetesEmulator]:
    async with emulated_cluster() as emulator:
        emulator.install_crd(crontab_crd(CRONTAB_SCHEMA))
        yield emulator


def crontab(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "c"},
            "spec": spec}  # fmt: skip


async def test_an_unknown_spec_field_is_pruned_before_it_is_stored(
    k8s: DfmKubernetesEmulator,
) -> None:
    created = await k8s.create(CRONTABS, crontab(cronSpec="* * * * */5", someRandomField=42), NS)
    assert created["spec"] == {"cronSpec": "* * * * */5"}
    assert k8s.get_object(CRONTABS, NS, "c")["spec"] == {"cronSpec": "* * * * */5"}  # type: ignore[index]

    await k8s.patch_object(CRONTABS, NS, "c", {"spec": {"image": "x", "imagee": "typo"}})
    assert k8s.get_object(CRONTABS, NS, "c")["spec"] == {"cronSpec": "* * * * */5", "image": "x"}  # type: ignore[index]


async def test_unknown_metadata_fields_are_dropped_and_known_ones_kept(
    k8s: DfmKubernetesEmulator,
) -> None:
    body = crontab(cronSpec="x")
    body["metadata"] |= {"labels": {"a": "b"}, "annotations": {"c": "d"}, "colour": "red"}
    created = await k8s.create(CRONTABS, body, NS)
    assert "colour" not in created["metadata"]
    assert created["metadata"]["labels"] == {"a": "b"}
    assert created["metadata"]["annotations"] == {"c": "d"}
    assert created["apiVersion"] == "stable.example.com/v1"


async def test_status_is_pruned_on_the_status_subresource_too(k8s: DfmKubernetesEmulator) -> None:
    await k8s.create(CRONTABS, crontab(cronSpec="x"), NS)
    written = await k8s.put_status(CRONTABS, NS, "c", {"replicas": 2, "replicaz": 3})
    assert written["status"] == {"replicas": 2}
    # The main endpoint ignores status altogether.
    await k8s.patch_object(CRONTABS, NS, "c", {"status": {"replicas": 5}})
    assert k8s.get_object(CRONTABS, NS, "c")["status"] == {"replicas": 2}  # type: ignore[index]


async def test_preserve_unknown_fields_keeps_unknowns_but_prunes_what_it_specifies() -> None:
    """The documentation's ``json`` example: ``json.spec.something`` goes, ``json.status`` stays."""
    schema = {
        "type": "object",
        "properties": {
            "json": {
                "x-kubernetes-preserve-unknown-fields": True,
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "properties": {"foo": {"type": "string"}, "bar": {"type": "string"}},
                    }
                },
            }
        },
    }
    async with emulated_cluster() as k8s:
        k8s.install_crd(crontab_crd(schema))
        body = {
            "metadata": {"name": "c"},
            "json": {
                "spec": {"foo": "abc", "bar": "def", "something": "x"},
                "status": {"something": "x"},
            },
        }
        created = await k8s.create(CRONTABS, body, NS)
    assert created["json"] == {"spec": {"foo": "abc", "bar": "def"}, "status": {"something": "x"}}


async def test_maps_and_lists_prune_their_values_and_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "byName": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {"port": {"type": "integer"}},
                        },
                    },
                    "items": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                },
            }
        },
    }
    async with emulated_cluster() as k8s:
        k8s.install_crd(crontab_crd(schema))
        spec = {
            "byName": {"a": {"port": 1, "host": "h"}},
            "items": [{"name": "x", "extra": 1}, {"name": "y"}],
        }
        created = await k8s.create(CRONTABS, {"metadata": {"name": "c"}, "spec": spec}, NS)
    assert created["spec"] == {
        "byName": {"a": {"port": 1}},
        "items": [{"name": "x"}, {"name": "y"}],
    }


async def test_an_embedded_resource_keeps_api_version_kind_and_known_metadata() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "template": {
                        "type": "object",
                        "x-kubernetes-embedded-resource": True,
                        "properties": {"spec": {"type": "object", "properties": {}}},
                    }
                },
            }
        },
    }
    async with emulated_cluster() as k8s:
        k8s.install_crd(crontab_crd(schema))
        template = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "unknown": 1},
            "spec": {"containers": []},
            "other": True,
        }
        body = {"metadata": {"name": "c"}, "spec": {"template": template}}
        created = await k8s.create(CRONTABS, body, NS)
    assert created["spec"]["template"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {},
    }


async def test_field_validation_warn_by_default_strict_refuses_ignore_is_silent(
    k8s: DfmKubernetesEmulator,
) -> None:
    path = k8s.path_for(CRONTABS, NS)
    body = crontab(cronSpec="x", someRandomField=42)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{k8s.base_url}{path}", json=body) as resp:
            assert resp.status == 201
            assert resp.headers.getall("Warning") == [
                '299 - "unknown field \\"spec.someRandomField\\""'
            ]
        async with http.post(
            f"{k8s.base_url}{path}", json=body, params={"fieldValidation": "Strict"}
        ) as resp:
            assert resp.status == 400
            status = await resp.json()
            assert (
                'strict decoding error: unknown field "spec.someRandomField"' in status["message"]
            )
        item = f"{k8s.base_url}{path}/c"
        async with http.patch(
            item,
            json={"spec": {"other": 1}},
            params={"fieldValidation": "Ignore"},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            assert resp.status == 200
            assert "Warning" not in resp.headers
        async with http.post(
            f"{k8s.base_url}{path}", json=body, params={"fieldValidation": "Loud"}
        ) as resp:
            assert resp.status == 400


async def test_a_misspelt_status_key_of_ours_would_be_pruned() -> None:
    """With the committed CRDs, the emulator stores only the status the schema declares."""
    async with emulated_cluster() as k8s:
        for file in sorted(CRDS_DIR.glob("*.yaml")):
            k8s.install_crd(yaml.safe_load(file.read_text()))
        source = {
            "metadata": {"name": "gh"},
            "spec": {"provider": "github", "verification": {"secretRef": {"name": "s"}}},
        }
        await k8s.create("dfm.dev/v1alpha1/webhooksources", source, NS)
        written = await k8s.put_status(
            "dfm.dev/v1alpha1/webhooksources",
            NS,
            "gh",
            {"readyReplicas": 1, "readyReplica": 1, "endpoint": "http://x"},
        )
        assert written["status"] == {"readyReplicas": 1, "endpoint": "http://x"}
        # kubectl apply --validate=strict (fieldValidation=Strict) refuses a misspelt spec key.
        status, _ = await k8s.api_request(
            "PATCH",
            k8s.path_for("dfm.dev/v1alpha1/webhooksources", NS, "gh"),
            body={"spec": {"replica": 2}},
            content_type="application/merge-patch+json",
            params={"fieldValidation": "Strict"},
        )
        assert status == 400
