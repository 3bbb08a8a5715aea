"""ManagedSecret -> the Secret it owns. Pure: values and times are passed in."""

from __future__ import annotations

import base64
from typing import Any

from dfm_operator import constants as c
from dfm_operator.api.managedsecret import ManagedSecret
from dfm_operator.builders.meta import object_meta, standard_labels

COMPONENT = "managed-secret"


def build_secret(
    source: ManagedSecret, data: dict[str, str], annotations: dict[str, str], version: str
) -> dict[str, Any]:
    """The whole Secret as the operator owns it; keys not in ``data`` are removed by the apply."""
    labels = standard_labels(
        source.metadata.name,
        "df-middleware-managed-secret",
        COMPONENT,
        version,
        {f"{c.GROUP}/managedsecret": source.metadata.name},
    )
    meta = object_meta(source, source.secret_name, labels)
    meta["annotations"] = dict(sorted(annotations.items()))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }


def decode_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's data as text (undecodable values are skipped, never guessed)."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def owned_by(secret: dict[str, Any], source: ManagedSecret) -> bool:
    """Whether ``source`` owns ``secret``: kind and name are not enough, since another
    operator's kind may also be called ManagedSecret, and a ManagedSecret deleted and created
    again under the same name is a different owner (its predecessor's Secret is being garbage
    collected). The group must be ours and, when both are known, the uid must match."""
    for ref in (secret.get("metadata") or {}).get("ownerReferences") or []:
        group = str(ref.get("apiVersion") or "").partition("/")[0]
        if (group, ref.get("kind"), ref.get("name")) != (
            c.GROUP,
            c.MANAGED_SECRET,
            source.metadata.name,
        ):
            continue
        if source.metadata.uid and ref.get("uid") and ref["uid"] != source.metadata.uid:
            continue
        return True
    return False
