"""The generated CRDs: committed, structural, valid, and agreeing with the models they come from.

Manifests are checked against a CRD's schema the way the API server would: the OpenAPI v3.0
schema (JSON Schema draft 4 semantics, e.g. boolean ``exclusiveMinimum``) with unknown fields
refused, as under `kubectl apply`'s default strict field validation, and then the CEL rules
(``x-kubernetes-validations``) when a CEL evaluator (cel-python) is installed.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from dfm import crds_cmd
from dfm_operator.api import KINDS, CustomResource, WebhookSource
from dfm_operator.constants import GROUP, VERSION
from dfm_operator.crds import (
    CEL_KEY,
    PRESERVE_UNKNOWN,
    UnsupportedSchemaError,
    all_crds,
    build_crd,
    crd_filename,
    dump_crd,
    structural,
)
from dfm_operator.peering import CRDS_FILENAME as PEERING_CRDS_FILENAME
from dfm_operator.peering import peering_crd_files, peering_crds_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"
KUBERNETES_VERSION = "1.33"
celpy: ModuleType | None
try:
    import celpy
except ImportError:  # pragma: no cover - a dev dependency; the rules are then only inspected
    celpy = None
needs_cel = pytest.mark.skipif(celpy is None, reason="cel-python is not installed")

JsonDict = dict[str, Any]
MODELS: dict[str, type[CustomResource]] = {kind.names.kind: kind for kind in KINDS}
CRDS: dict[str, JsonDict] = {crd["spec"]["names"]["kind"]: crd for crd in all_crds()}


def schema_of(kind: str) -> JsonDict:
    schema: JsonDict = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: JsonDict, path: str = "") -> Iterator[tuple[str, JsonDict]]:
    """Every schema node with its path, the root first."""
    yield path or ".", schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")


def strict(schema: JsonDict) -> JsonDict:
    """``schema`` refusing unknown fields, as strict field validation does."""
    out = copy.deepcopy(schema)
    for _, node in nodes(out):
        if "properties" in node and not node.get(PRESERVE_UNKNOWN):
            node["additionalProperties"] = False
    return out


def cel_failures(schema: JsonDict, value: Any, path: str = "") -> list[str]:
    """The messages of the CEL rules ``value`` breaks, evaluated where the API server would."""
    assert celpy is not None
    failures: list[str] = []
    env = celpy.Environment()
    for rule in schema.get(CEL_KEY, []):
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if not isinstance(result, celpy.celtypes.BoolType) or not result:
            failures.append(f"{path or '.'}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                failures += cel_failures(sub, value[name], f"{path}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            for name, item in value.items():
                failures += cel_failures(schema["additionalProperties"], item, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            failures += cel_failures(schema["items"], item, f"{path}[{index}]")
    return failures


def openapi_errors(manifest: JsonDict) -> list[str]:
    """What the CRD's OpenAPI schema refuses in ``manifest`` (CEL rules aside)."""
    validator = jsonschema.Draft4Validator(strict(schema_of(manifest["kind"])))
    return [
        f".{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def schema_errors(manifest: JsonDict) -> list[str]:
    """What the API server would refuse in ``manifest``: schema errors, then CEL rule failures."""
    errors = openapi_errors(manifest)
    if not errors and celpy is not None:
        errors += cel_failures(schema_of(manifest["kind"]), manifest)
    return errors


def model_error(manifest: JsonDict) -> str | None:
    try:
        MODELS[manifest["kind"]].model_validate(manifest)
    except ValidationError as exc:
        return str(exc)
    return None


def example_sources() -> list[Any]:
    found = []
    for file in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc and doc.get("kind") in MODELS:
                found.append(pytest.param(doc, id=f"{file.name}:{doc['metadata']['name']}"))
    return found


# --- the committed files ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_committed_crd_matches_the_models(kind: str) -> None:
    crd = CRDS[kind]
    path = CRD_DIR / crd_filename(crd)
    assert path.exists(), f"{path} is missing: run `dfm crds --output-dir crds`"
    assert path.read_text() == dump_crd(crd), (
        f"{path} is out of date with the models: run `dfm crds --output-dir crds`"
    )


def test_no_stray_files_in_crds_dir() -> None:
    expected = {crd_filename(crd) for crd in CRDS.values()} | set(peering_crd_files())
    assert {p.name for p in CRD_DIR.glob("*.yaml")} == expected


def test_kopf_peering_crds_are_in_crds_dir_and_the_chart() -> None:
    # `kubectl apply -f crds/` then `dfm operator` (the README) needs kopf's peering CRDs too.
    for name, text in peering_crd_files().items():
        assert (CRD_DIR / name).read_text() == text, f"crds/{name}: run `make generate`"
    chart = ROOT / "charts" / "df-middleware" / "crds" / PEERING_CRDS_FILENAME
    assert chart.read_text() == peering_crds_yaml(), f"{chart}: run `make generate`"


def test_crds_are_deterministic() -> None:
    assert [dump_crd(crd) for crd in all_crds()] == [dump_crd(crd) for crd in CRDS.values()]
    assert all("&id" not in dump_crd(crd) for crd in CRDS.values()), "no YAML aliases"


# --- the CRD objects --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural", "short_name"),
    [
        ("WebhookSource", "webhooksources", "whs"),
        ("ManagedSecret", "managedsecrets", "msec"),
        ("SyncSchedule", "syncschedules", "sync"),
        ("BackupSchedule", "backupschedules", "bks"),
    ],
)
def test_crd_names_and_version(kind: str, plural: str, short_name: str) -> None:
    crd = CRDS[kind]
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": [short_name],
        "categories": ["dfm"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_is_a_valid_kubernetes_object(kind: str) -> None:
    assert kubernetes_validate.validate(CRDS[kind], KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("const", "x"), ("exclusiveMinimum", 0), ("examples", ["x"])],
)
def test_kubernetes_validate_catches_json_schema_2020_keywords(keyword: str, value: Any) -> None:
    # The control for the test above: what pydantic writes, unconverted, is refused.
    crd = copy.deepcopy(CRDS["WebhookSource"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["replicas"][keyword] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    for path, node in nodes(schema_of(kind)):
        if path == ".metadata":
            assert node == {"type": "object"}  # the API server supplies ObjectMeta's schema
            continue
        for keyword in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable"):
            assert keyword not in node, f"{kind} {path}: {keyword}"
        assert "type" in node, f"{kind} {path}: no type"
        assert node.get("additionalProperties") is not False, f"{kind} {path}"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind} {path}"
        if node.get(PRESERVE_UNKNOWN):
            assert node["type"] == "object", f"{kind} {path}"
        if node["type"] == "object":
            assert {"properties", "additionalProperties", PRESERVE_UNKNOWN} & node.keys(), path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_defaults_satisfy_their_own_schema(kind: str) -> None:
    # The API server refuses a CRD whose defaults would not validate.
    for path, node in nodes(schema_of(kind)):
        if "default" in node:
            errors = list(jsonschema.Draft4Validator(node).iter_errors(node["default"]))
            assert errors == [], f"{kind} {path}"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described_for_kubectl_explain(kind: str) -> None:
    # AuthConfig, LimitsConfig and CorsConfig come from webhook_server.config without
    # field descriptions; their fields are described on the field that holds them (auth twice:
    # spec.auth and spec.eventsApi.auth).
    undescribed = {
        path
        for path, node in nodes(schema_of(kind)["properties"]["spec"], ".spec")
        if "description" not in node and not path.endswith("[]") and not path.endswith(".*")
    }
    inherited = {".spec.auth.", ".spec.limits.", ".spec.cors.", ".spec.eventsApi.auth."}
    assert {p for p in undescribed if not any(p.startswith(i) for i in inherited)} == set()


def _column_node(schema: JsonDict, json_path: str) -> JsonDict:
    node = schema
    for part in json_path.removeprefix(".").split("."):
        name, _, _filter = part.partition("[")
        node = node["properties"][name]
        if _filter:
            node = node["items"]
    return node


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_fields_of_their_type(kind: str) -> None:
    schema = schema_of(kind)
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    visible = [c["name"] for c in columns if not c.get("priority")]
    assert "Ready" in visible
    assert visible[-1] == "Age"
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        if column["name"] in ("Ready", "Reason"):
            field = column["name"].lower() if column["name"] == "Reason" else "status"
            assert column["jsonPath"] == f'.status.conditions[?(@.type=="Ready")].{field}'
            node = _column_node(schema, f".status.conditions[].{field}")
        elif column["jsonPath"].startswith(".status.conditions[?("):
            # Another condition's field (e.g. Forwarding's reason).
            field = column["jsonPath"].rpartition(".")[2]
            node = _column_node(schema, f".status.conditions[].{field}")
        else:
            node = _column_node(schema, column["jsonPath"])
        if column["type"] == "date" or column["name"] in ("Next Rotation", "Token Expires"):
            assert node.get("format") == "date-time", column
        else:
            assert node["type"] == column["type"], column


def test_default_columns_are_the_documented_ones() -> None:
    def visible(kind: str) -> list[str]:
        columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
        return [c["name"] for c in columns if not c.get("priority")]

    assert visible("WebhookSource") == [
        "Provider",
        "Ready",
        "Reason",
        "Endpoint",
        "Replicas",
        "Forwarding",
        "Backlog",
        "Last Delivery",
        "Age",
    ]
    assert visible("ManagedSecret") == [
        "Type",
        "Ready",
        "Reason",
        "Last Rotation",
        "Next Rotation",
        "Age",
    ]
    assert visible("SyncSchedule") == [
        "Schedule",
        "Suspend",
        "Ready",
        "Reason",
        "Last Success",
        "Items",
        "Age",
    ]
    assert visible("BackupSchedule") == [
        "Schedule",
        "Ready",
        "Reason",
        "Last Success",
        "Failures",
        "Age",
    ]


# --- the converter ----------------------------------------------------------------------------


def test_converter_inlines_refs_and_drops_null_unions() -> None:
    class Inner(BaseModel):
        """Inner thing."""

        size: int = 3

    class Outer(BaseModel):
        inner: Inner | None = None
        free: dict[str, Any] = {}
        labels: dict[str, str] = {}

    out = structural(Outer.model_json_schema())
    assert out["properties"]["inner"] == {
        "type": "object",
        "description": "Inner thing.",
        "properties": {"size": {"type": "integer", "default": 3}},
    }
    assert out["properties"]["free"] == {
        "type": "object",
        "default": {},
        PRESERVE_UNKNOWN: True,
    }
    assert out["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "required" not in out


def test_converter_refuses_what_kubernetes_cannot_express() -> None:
    class Either(BaseModel):
        value: int | str

    with pytest.raises(UnsupportedSchemaError, match=r"\.value"):
        structural(Either.model_json_schema())


def test_exclusive_bounds_use_openapi_v3_0_form() -> None:
    forward = schema_of("WebhookSource")["properties"]["spec"]["properties"]["forward"]
    timeout = forward["properties"]["timeoutSeconds"]
    assert (timeout["minimum"], timeout["exclusiveMinimum"]) == (0, True)


# --- manifests against the schema and the models ----------------------------------------------


@pytest.mark.parametrize("manifest", example_sources())
def test_examples_are_accepted_by_schema_and_model(manifest: JsonDict) -> None:
    assert schema_errors(manifest) == []
    assert model_error(manifest) is None


def test_there_are_examples() -> None:
    assert len(example_sources()) >= 5


def _source(**spec: Any) -> JsonDict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WebhookSource",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": spec,
    }


def _managed(**spec: Any) -> JsonDict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ManagedSecret",
        "metadata": {"name": "m"},
        "spec": spec,
    }


def _sync(connector: JsonDict) -> JsonDict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SyncSchedule",
        "metadata": {"name": "y"},
        "spec": {
            "schedule": "*/15 * * * *",
            "connector": connector,
            "sink": {"webhookSourceRef": {"name": "ghl"}},
        },
    }


def _backup(**spec: Any) -> JsonDict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackupSchedule",
        "metadata": {"name": "b"},
        "spec": {
            "schedule": "30 2 * * *",
            "databaseSecretRef": {"name": "events-db", "key": "url"},
            "destination": {"pvc": {"claimName": "events-backups"}},
            **spec,
        },
    }


SECRET = {"secretRef": {"name": "s"}}
HTTP = {"http": {"url": "https://api.example.com/items"}}
RANDOM = {"length": 32}
FORWARD: JsonDict = {
    "url": "http://orders.shop.svc:8080/events",
    "signingSecretRef": {"name": "orders-forward-signing"},
}
OAUTH2 = {"tokenUrl": "https://auth.example.com/token", "clientSecretRef": {"name": "c"}}


# (manifest, needs CEL to be refused by the API server). Every CEL rule is broken at least once.
def _named(manifest: JsonDict, name: str) -> JsonDict:
    return {**manifest, "metadata": {**manifest["metadata"], "name": name}}


INVALID: dict[str, tuple[JsonDict, bool]] = {
    # A WebhookSource's name becomes its Service's (<name>-receiver): an RFC 1035 label.
    "hmac timestamp checked but not signed": (
        _source(
            provider="hmac",
            verification={**SECRET, "header": "X-Sig", "timestampHeader": "X-Ts"},
        ),
        True,
    ),
    "source name too long for its Service": (
        _named(_source(provider="github", verification=SECRET), "s" * 55),
        True,
    ),
    "source name with a dot": (
        _named(_source(provider="github", verification=SECRET), "stripe.prod"),
        True,
    ),
    "source name starting with a digit": (
        _named(_source(provider="github", verification=SECRET), "1stripe"),
        True,
    ),
    "backup schedule name too long for its CronJob": (_named(_backup(), "b" * 46), True),
    "managed secret name too long for a label": (
        _named(_managed(type="random", random=RANDOM), "m" * 64),
        True,
    ),
    "unknown spec field": (_source(provider="github", verification=SECRET, colour="red"), False),
    "unknown nested field": (
        _source(provider="github", verification={**SECRET, "tolerence": 5}),
        False,
    ),
    "bad provider": (_source(provider="gitlab", verification=SECRET), False),
    "bad hmac algorithm": (
        _source(provider="hmac", verification={**SECRET, "header": "X-Sig", "algorithm": "md5"}),
        False,
    ),
    "bad path": (_source(provider="github", verification=SECRET, path="hooks"), False),
    "too many replicas": (_source(provider="github", verification=SECRET, replicas=101), False),
    "no workers": (_source(provider="github", verification=SECRET, workers=0), False),
    "too many workers": (_source(provider="github", verification=SECRET, workers=17), False),
    "hmac without header": (_source(provider="hmac", verification=SECRET), True),
    "jwt without auth": (_source(provider="jwt"), True),
    "github without secret": (_source(provider="github"), True),
    "two secret sources": (
        _source(provider="github", verification={**SECRET, "managedSecretRef": {"name": "m"}}),
        True,
    ),
    "auth with two key sources": (
        _source(
            provider="jwt",
            auth={"jwksUrl": "https://x.example/jwks.json", "publicKey": "-----BEGIN"},
        ),
        True,
    ),
    "auth without key source": (_source(provider="jwt", auth={"issuer": "x"}), True),
    "events api with two key sources": (
        _source(
            provider="github",
            verification=SECRET,
            eventsApi={"auth": {"jwksUrl": "https://x.example/jwks.json", "publicKey": "x"}},
        ),
        True,
    ),
    "events api with one scope for both": (
        _source(
            provider="github",
            verification=SECRET,
            eventsApi={
                "auth": {"jwksUrl": "https://x.example/jwks.json"},
                "readScope": "events",
                "replayScope": "events",
            },
        ),
        True,
    ),
    "path under the events api": (
        _source(provider="github", verification=SECRET, path="/events/mine"),
        True,
    ),
    # The provider rules of webhook_server.verify.registry, one case per CEL rule.
    "twilio without a public URL or an Ingress": (
        _source(provider="twilio", verification=SECRET),
        True,
    ),
    "mandrill without a public URL or an Ingress": (
        _source(provider="mandrill", verification=SECRET),
        True,
    ),
    "telnyx without a public key": (_source(provider="telnyx"), True),
    "telnyx with a secret it would ignore": (
        _source(provider="telnyx", verification={**SECRET, "publicKey": "AAAA"}),
        True,
    ),
    "sendgrid without a public key": (_source(provider="sendgrid"), True),
    "token in a header without the header": (
        _source(provider="token", verification={**SECRET, "tokenScheme": "header"}),
        True,
    ),
    "vonage with auth": (
        _source(provider="vonage", verification=SECRET, auth={"jwksUrl": "https://x.example/jwks"}),
        True,
    ),
    "github with a header": (
        _source(provider="github", verification={**SECRET, "header": "X-Sig"}),
        True,
    ),
    "github with a timestamp header": (
        _source(provider="github", verification={**SECRET, "timestampHeader": "X-Ts"}),
        True,
    ),
    "github with an id header": (
        _source(provider="github", verification={**SECRET, "idHeader": "X-Id"}),
        True,
    ),
    "stripe with a type header": (
        _source(provider="stripe", verification={**SECRET, "typeHeader": "X-Type"}),
        True,
    ),
    "github with a public key": (
        _source(provider="github", verification={**SECRET, "publicKey": "AAAA"}),
        True,
    ),
    "github with a public URL": (
        _source(provider="github", verification={**SECRET, "publicUrl": "https://h.example/x"}),
        True,
    ),
    "hmac with a token scheme": (
        _source(
            provider="hmac", verification={**SECRET, "header": "X-Sig", "tokenScheme": "bearer"}
        ),
        True,
    ),
    "a public URL with a query": (
        _source(provider="twilio", verification={**SECRET, "publicUrl": "https://h.example/x?a=1"}),
        False,
    ),
    "random without random": (_managed(type="random"), True),
    "random with oauth2": (_managed(type="random", random=RANDOM, oauth2=OAUTH2), True),
    "oauth2 without oauth2": (_managed(type="oauth2"), True),
    "oauth2 with random": (_managed(type="oauth2", oauth2=OAUTH2, random=RANDOM), True),
    "bad secret type": (_managed(type="uuid"), False),
    "short random": (_managed(type="random", random={"length": 8}), False),
    "rotation with both": (
        _managed(type="random", random=RANDOM, rotation={"every": "1h", "schedule": "@daily"}),
        True,
    ),
    "rotation with neither": (
        _managed(type="random", random=RANDOM, rotation={"gracePeriod": "1h"}),
        True,
    ),
    "zero rotation interval": (
        _managed(type="random", random=RANDOM, rotation={"every": "0s"}),
        True,
    ),
    "time zone without schedule": (
        _managed(type="random", random=RANDOM, rotation={"every": "1h", "timeZone": "UTC"}),
        True,
    ),
    "bad duration": (_managed(type="random", random=RANDOM, rotation={"every": "30d"}), False),
    "forward back-off upside down": (
        _source(
            provider="github",
            verification=SECRET,
            forward={**FORWARD, "backoff": {"minSeconds": 60, "maxSeconds": 5}},
        ),
        True,
    ),
    "forward without a signing secret": (
        _source(provider="github", verification=SECRET, forward={"url": FORWARD["url"]}),
        False,
    ),
    "forward to a non-http URL": (
        _source(provider="github", verification=SECRET, forward={**FORWARD, "url": "ftp://x"}),
        False,
    ),
    "forward max age not a duration": (
        _source(provider="github", verification=SECRET, forward={**FORWARD, "maxAge": "2d"}),
        False,
    ),
    "sync name too long for its CronJob": (_named(_sync(HTTP), "y" * 48), True),
    "two pagination styles": (
        _sync({"http": {**HTTP["http"], "link": {}, "offset": {"limit": 10}}}),
        True,
    ),
    "connector without http": (_sync({}), False),
    "container connector (not built, not in the API)": (
        _sync({"container": {"image": "example/sync:1"}}),
        False,
    ),
    "bad dotted path": (_sync({"http": {**HTTP["http"], "idField": "a..b"}}), False),
    "bad cron": (_backup(schedule="every night"), False),
    "bad quantity": (
        _backup(destination={"pvc": {"claimName": "b", "size": "twenty gigs"}}),
        False,
    ),
    "destination with both": (
        _backup(
            destination={
                "pvc": {"claimName": "b"},
                "s3": {"bucket": "bkt", "credentialsSecretRef": {"name": "s3"}},
            }
        ),
        True,
    ),
}

VALID: dict[str, JsonDict] = {
    "hmac timestamp signed": _source(
        provider="hmac",
        verification={
            **SECRET,
            "header": "X-Sig",
            "timestampHeader": "X-Ts",
            "signedContent": "{timestamp}.{body}",
        },
    ),
    "source name of 54 characters": _named(
        _source(provider="github", verification=SECRET), "s" * 54
    ),
    "managed secret name with dots": _named(_managed(type="random", random=RANDOM), "a.b.c"),
    "hmac with header": _source(provider="hmac", verification={**SECRET, "header": "X-Sig"}),
    "jwt with jwks": _source(provider="jwt", auth={"jwksUrl": "https://x.example/jwks.json"}),
    "events api": _source(
        provider="github",
        verification=SECRET,
        path="/eventsful",
        eventsApi={
            "auth": {"jwksUrl": "https://x.example/jwks.json", "audiences": ["ops"]},
            "scopeClaim": "permissions",
        },
    ),
    "highlevel without secret": _source(provider="highlevel"),
    "twilio behind an Ingress": _source(
        provider="twilio",
        verification=SECRET,
        exposure={"ingress": {"host": "hooks.example.com", "tlsSecretName": "tls"}},
    ),
    "mandrill with a public URL": _source(
        provider="mandrill",
        verification={**SECRET, "publicUrl": "https://hooks.example.com/hooks/default/mandrill"},
    ),
    "token in a header with auth": _source(
        provider="token",
        verification={**SECRET, "tokenScheme": "header", "header": "X-Webhook-Token"},
        auth={"jwksUrl": "https://x.example/jwks"},
    ),
    "managed secret source": _source(
        provider="standard", verification={"managedSecretRef": {"name": "m"}}
    ),
    "sixteen workers per pod": _source(provider="github", verification=SECRET, workers=16),
    "free-form resources": _source(
        provider="github",
        verification=SECRET,
        resources={"requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}},
    ),
    "random, never rotated": _managed(type="random", random=RANDOM),
    "random every 720h": _managed(
        type="random", random=RANDOM, rotation={"every": "720h", "gracePeriod": "24h"}
    ),
    "oauth2 on a schedule": _managed(
        type="oauth2",
        oauth2=OAUTH2,
        rotation={"schedule": "0 3 * * 0", "timeZone": "Europe/Berlin"},
    ),
    "forward with every setting": _source(
        provider="github",
        verification=SECRET,
        forward={
            **FORWARD,
            "timeoutSeconds": 2.5,
            "maxAttempts": 12,
            "maxAge": "6h",
            "backoff": {"minSeconds": 0.5, "maxSeconds": 300},
            "maxConcurrency": 32,
            "circuitBreaker": {"failureThreshold": 10, "coolDownSeconds": 60},
        },
    ),
    "http connector": _sync(HTTP),
    "sync name of 47 characters": _named(_sync(HTTP), "y" * 47),
    "cursor with also": _sync(
        {
            "http": {
                **HTTP["http"],
                "cursor": {
                    "param": "startAfterId",
                    "from": "meta.startAfterId",
                    "also": [{"param": "startAfter", "from": "meta.startAfter"}],
                },
            }
        }
    ),
    "backup": _backup(),
}


def _invalid_cases() -> list[Any]:
    return [
        pytest.param(m, cel, id=name, marks=[needs_cel] if cel else [])
        for name, (m, cel) in INVALID.items()
    ]


@pytest.mark.parametrize(("manifest", "by_cel"), _invalid_cases())
def test_invalid_manifest_is_refused_by_schema_and_model(manifest: JsonDict, by_cel: bool) -> None:
    assert model_error(manifest) is not None
    if by_cel:
        assert openapi_errors(manifest) == [], "a CEL rule, not the schema, should refuse this"
    assert schema_errors(manifest) != []


@pytest.mark.parametrize("manifest", [pytest.param(m, id=k) for k, m in VALID.items()])
def test_valid_manifest_is_accepted_by_schema_and_model(manifest: JsonDict) -> None:
    assert model_error(manifest) is None
    assert schema_errors(manifest) == []


def test_hmac_without_header_names_the_field() -> None:
    error = model_error(INVALID["hmac without header"][0])
    assert error is not None
    assert "provider hmac requires verification.header" in error


def test_cross_field_rules_are_in_the_crds() -> None:
    rules = {
        (kind, path): [rule["rule"] for rule in node[CEL_KEY]]
        for kind in CRDS
        for path, node in nodes(schema_of(kind))
        if CEL_KEY in node
    }
    assert "self.provider != 'jwt' || has(self.auth)" in rules[("WebhookSource", ".spec")]
    assert any(r.startswith("self.provider != 'hmac'") for r in rules[("WebhookSource", ".spec")])
    assert rules[("WebhookSource", ".spec.auth")] == ["has(self.jwksUrl) != has(self.publicKey)"]
    assert len(rules[("WebhookSource", ".spec.verification")]) == 2
    assert len(rules[("ManagedSecret", ".spec")]) == 2
    assert "has(self.every) != has(self.schedule)" in rules[("ManagedSecret", ".spec.rotation")]
    assert len(rules[("SyncSchedule", ".spec.connector.http")]) == 1
    assert rules[("WebhookSource", ".")] == [
        "size(self.metadata.name) <= 54"
        " && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ]
    assert rules[("ManagedSecret", ".")] == ["size(self.metadata.name) <= 63"]


@needs_cel
def test_cel_rules_compile() -> None:
    assert celpy is not None
    env = celpy.Environment()
    for kind in CRDS:
        for _, node in nodes(schema_of(kind)):
            for rule in node.get(CEL_KEY, []):
                env.compile(rule["rule"])


@needs_cel
def test_every_cel_rule_is_exercised_by_an_invalid_case() -> None:
    broken = set()
    for manifest, _ in INVALID.values():
        schema = schema_of(manifest["kind"])
        for failure in cel_failures(schema, manifest):
            broken.add((manifest["kind"], failure))
    messages = {
        (kind, f"{path}: {rule['message']}")
        for kind in CRDS
        for path, node in nodes(schema_of(kind))
        for rule in node.get(CEL_KEY, [])
    }
    assert messages - broken == set()


# --- `dfm crds` -------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="dfm")
    sub = top.add_subparsers(dest="command", required=True)
    crds_cmd.add_parser(sub)
    return top.parse_args(["crds", *argv])


def test_dfm_crds_prints_a_yaml_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert crds_cmd.run(_args()) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert docs == all_crds()


def test_dfm_crds_writes_the_committed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "crds"
    assert crds_cmd.run(_args("--output-dir", str(out))) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    for name in written:
        assert (out / name).read_text() == (CRD_DIR / name).read_text()
    assert len(capsys.readouterr().out.splitlines()) == len(written)


def test_build_crd_is_per_kind() -> None:
    assert build_crd(WebhookSource) == CRDS["WebhookSource"]
