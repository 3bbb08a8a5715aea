"""What the API server rewrites and refuses on every write, whatever the schema says: Secret
``stringData``, names, label keys and values, annotation values, ConfigMap and Secret keys."""

from __future__ import annotations

import base64
import binascii
import re

import kmock

from kube_emulator.errors import api_error
from kube_emulator.resources import JsonDict

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


class Validation:
    """Built-in object rules (mixed into the emulator; ``validate=False`` turns them off)."""

    validate: bool

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
                    raise api_error(
                        400, "BadRequest", f"Secret.data[{key}]: illegal base64 data"
                    ) from None

    def _validate(self, res: kmock.resource, body: JsonDict) -> None:
        if not self.validate:
            return
        meta = body["metadata"]
        name = meta["name"]
        plural = res.plural
        if plural in {"services", "namespaces"}:
            pattern, limit = (DNS_1035_LABEL if plural == "services" else DNS_LABEL), 63
        else:
            pattern, limit = DNS_SUBDOMAIN, 253
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
            key_ok = bool(QUALIFIED_NAME.fullmatch(short)) and len(short) <= 63
            key_ok = key_ok and (
                not prefix or (len(prefix) <= 253 and bool(DNS_SUBDOMAIN.fullmatch(prefix)))
            )
            if not key_ok:
                raise self._invalid(
                    res, name, "metadata.labels", f"Invalid value: {key!r}: invalid label key"
                )
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
                raise self._invalid(
                    res,
                    name,
                    "metadata.labels",
                    f"Invalid value: {value!r}: a label value must be 63 characters or less, "
                    "alphanumeric, '-', '_' or '.'",
                )
        for key, value in (meta.get("annotations") or {}).items():
            if not isinstance(value, str):
                raise api_error(400, "BadRequest", f"metadata.annotations[{key}] must be a string")
        if plural in {"configmaps", "secrets"} and not res.group:
            for field in ("data", "binaryData"):
                for key in body.get(field) or {}:
                    if len(key) > 253 or not CONFIG_KEY.fullmatch(key):
                        raise self._invalid(
                            res,
                            name,
                            f"{field}[{key}]",
                            "a valid config key must consist of alphanumeric characters, "
                            "'-', '_' or '.'",
                        )


_FILTER = re.compile(r'^(\w+)\[\?\(@\.(\w+)=="([^"]*)"\)\]$')
