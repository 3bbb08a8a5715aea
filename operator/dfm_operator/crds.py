"""CustomResourceDefinitions generated from the API models.

The models are the single source of truth; ``crds/*.yaml`` is this module's output, committed
and checked for drift by the tests. Kubernetes wants *structural* schemas (OpenAPI v3.0, no
``$ref``, no ``anyOf`` with null, a ``type`` on every node), while pydantic writes JSON Schema
2020-12, so :func:`structural` translates one into the other and refuses what it cannot express.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from dfm_operator.api import KINDS, CustomResource
from dfm_operator.api.names import NameRule
from dfm_operator.constants import GROUP, VERSION

JsonDict = dict[str, Any]

CATEGORIES = ("dfm",)
READY = '.status.conditions[?(@.type=="Ready")].status'
CEL_KEY = "x-kubernetes-validations"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"

# Schema keywords that mean the same in pydantic's JSON Schema and in Kubernetes' OpenAPI v3.0.
_COPIED = frozenset(
    {
        "type",
        "description",
        "enum",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "uniqueItems",
        "required",
    }
)
_DROPPED = frozenset({"title"})


class UnsupportedSchemaError(ValueError):
    """A model uses a schema construct that a structural CRD schema cannot express."""


@dataclass(frozen=True)
class Column:
    """One `kubectl get` column; priority 1 columns show only with ``-o wide``."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def as_dict(self) -> JsonDict:
        column: JsonDict = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


_READY = Column("Ready", "string", READY, "Whether the resource does its job.")
_REASON = Column(
    "Reason",
    "string",
    '.status.conditions[?(@.type=="Ready")].reason',
    "Why Ready is what it is.",
)
_AGE = Column("Age", "date", ".metadata.creationTimestamp", "When the resource was created.")

COLUMNS: dict[str, tuple[Column, ...]] = {
    "WebhookSource": (
        Column("Provider", "string", ".spec.provider", "The signature scheme."),
        _READY,
        _REASON,
        Column("Endpoint", "string", ".status.endpoint", "The in-cluster URL."),
        Column("Replicas", "integer", ".status.readyReplicas", "Receiver pods ready."),
        _AGE,
        Column("External", "string", ".status.externalEndpoint", "The public URL.", priority=1),
    ),
    "ManagedSecret": (
        Column("Type", "string", ".spec.type", "random or oauth2."),
        _READY,
        _REASON,
        Column("Last Rotation", "date", ".status.lastRotationTime", "When the value changed."),
        # A future time: kubectl shows "date" columns as an age, which is "<invalid>" when ahead.
        Column("Next Rotation", "string", ".status.nextRotationTime", "When it changes next."),
        _AGE,
        Column("Version", "integer", ".status.currentVersion", "The value's version.", priority=1),
        Column(
            "Token Expires",
            "string",
            ".status.tokenExpiresAt",
            "oauth2: when the access token expires.",
            priority=1,
        ),
    ),
    "SyncSchedule": (
        Column("Schedule", "string", ".spec.schedule", "The cron schedule."),
        Column("Suspend", "boolean", ".spec.suspend", "Whether runs are skipped."),
        _READY,
        _REASON,
        Column("Last Success", "date", ".status.lastSuccessfulTime", "The last good run."),
        Column("Items", "integer", ".status.itemsSynced", "Items of the last good run."),
        _AGE,
        Column(
            "Failures",
            "integer",
            ".status.consecutiveFailures",
            "Failed runs since the last success.",
            priority=1,
        ),
        Column(
            "Last Schedule", "date", ".status.lastScheduleTime", "The last run started.", priority=1
        ),
        Column("Last Job", "string", ".status.lastRun.job", "The last finished run.", priority=1),
    ),
    "BackupSchedule": (
        Column("Schedule", "string", ".spec.schedule", "The cron schedule."),
        _READY,
        _REASON,
        Column("Last Success", "date", ".status.lastSuccessfulTime", "The last good backup."),
        Column("Failures", "integer", ".status.consecutiveFailures", "Failed backups since then."),
        _AGE,
        Column("Backup", "string", ".status.lastSuccessfulBackup.name", "Its name.", priority=1),
        Column(
            "Size",
            "integer",
            ".status.lastSuccessfulBackup.sizeBytes",
            "Its size in bytes.",
            priority=1,
        ),
        Column(
            "Verified", "date", ".status.lastVerifiedTime", "The last verification.", priority=1
        ),
    ),
}


def _merge(base: JsonDict, overlay: JsonDict) -> JsonDict:
    """``base`` with ``overlay``'s keywords on top; CEL rules of both are kept."""
    merged = dict(base)
    for key, value in overlay.items():
        if key == CEL_KEY and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def _prose(text: str) -> str:
    """Docstring text as paragraphs: line breaks within a paragraph become spaces."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def _resolve(node: JsonDict, defs: JsonDict, path: str) -> JsonDict:
    """``node`` with its ``$ref`` inlined and ``Optional`` (anyOf [X, null]) reduced to X."""
    if "$ref" in node:
        ref = str(node["$ref"])
        name = ref.removeprefix("#/$defs/")
        if name == ref or name not in defs:
            raise UnsupportedSchemaError(f"{path or '.'}: unresolvable $ref {ref}")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = _merge(_resolve(defs[name], defs, path), siblings)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1 or len(options) == len(node["anyOf"]):
            raise UnsupportedSchemaError(f"{path or '.'}: only Optional[X] unions are supported")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", ...) is None:
            del rest["default"]
        node = _merge(_resolve(options[0], defs, path), rest)
    return node


def structural(node: JsonDict, defs: JsonDict | None = None, path: str = "") -> JsonDict:
    """A structural schema (as Kubernetes requires of CRDs) equivalent to pydantic's ``node``.

    ``defs`` are the ``$defs`` that ``$ref`` points into (default: the ones in ``node``).

    Optional fields are simply not required (no ``nullable``); free-form objects
    (``dict[str, Any]``) keep unknown fields; string maps become ``additionalProperties``.
    ``additionalProperties: false`` (pydantic's ``extra="forbid"``) is dropped: the API server
    prunes unknown fields, and rejects them under strict field validation.
    """
    if defs is None:
        defs = node.get("$defs", {})
        node = {k: v for k, v in node.items() if k != "$defs"}
    node = _resolve(node, defs, path)
    out: JsonDict = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "description":
            out[key] = _prose(value)
        elif key in _COPIED or key.startswith("x-kubernetes-"):
            # A copy: lists shared between pydantic's $defs would become YAML aliases.
            out[key] = copy.deepcopy(value)
        elif key == "default":
            if value is not None:
                out[key] = copy.deepcopy(value)
        elif key == "properties":
            out[key] = {
                name: structural(sub, defs, f"{path}.{name}") for name, sub in value.items()
            }
        elif key == "items":
            out[key] = structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is True:
                out[PRESERVE_UNKNOWN] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs, f"{path}.*")
        elif key == "exclusiveMinimum" or key == "exclusiveMaximum":
            # JSON Schema 2020-12 gives the bound; OpenAPI v3.0 a flag on minimum/maximum.
            out[key.replace("exclusiveM", "m")] = value
            out[key] = True
        else:
            raise UnsupportedSchemaError(f"{path or '.'}: keyword {key!r} has no structural form")
    if "type" not in out:
        raise UnsupportedSchemaError(f"{path or '.'}: no type")
    if out["type"] == "object" and "properties" not in out and "additionalProperties" not in out:
        out[PRESERVE_UNKNOWN] = True
    if out.get("required") == []:
        del out["required"]
    return out


def _top_level_schema(kind_model: type[CustomResource]) -> JsonDict:
    schema = kind_model.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    props = schema["properties"]
    top: JsonDict = {
        "type": "object",
        "description": _prose(schema["description"]),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "The versioned schema of this representation of an object.",
            },
            "kind": {
                "type": "string",
                "description": "The REST resource this object represents.",
            },
            "metadata": {"type": "object"},
            "spec": structural(props["spec"], defs, ".spec"),
            "status": structural(props["status"], defs, ".status"),
        },
    }
    # The root is the only place a CEL rule may read metadata.name.
    name_rule: NameRule | None = getattr(kind_model, "name_rule", None)
    if name_rule is not None:
        rule = name_rule.cel()
        top[CEL_KEY] = [{"rule": rule.rule, "message": rule.message}]
    return top


def build_crd(kind_model: type[CustomResource]) -> JsonDict:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of ``kind_model``."""
    names = kind_model.names
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{names.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": names.kind,
                "listKind": f"{names.kind}List",
                "plural": names.plural,
                "singular": names.singular,
                "shortNames": list(names.short_names),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.as_dict() for c in COLUMNS[names.kind]],
                    "schema": {"openAPIV3Schema": _top_level_schema(kind_model)},
                }
            ],
        },
    }


def all_crds() -> list[JsonDict]:
    """The CRDs of every kind, in a fixed order."""
    return [build_crd(kind) for kind in KINDS]


def crd_filename(crd: JsonDict) -> str:
    """``<plural>.<group>.yaml``, the CRD's file name under ``crds/``."""
    return f"{crd['metadata']['name']}.yaml"


HEADER = (
    "# Generated from the models in operator/dfm_operator/api; do not edit.\n"
    "# Regenerate with `dfm crds --output-dir crds`.\n"
)


def dump_crd(crd: JsonDict) -> str:
    """``crd`` as YAML, keys sorted, as committed under ``crds/``."""
    return HEADER + yaml.safe_dump(crd, sort_keys=True, width=100, allow_unicode=True)
