"""Reading manifests from files, with errors that name the file, the object and the field."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from dfm_operator.api import CustomResource, ManagedSecret, SyncSchedule, WebhookSource
from dfm_operator.constants import API_VERSION, DEFAULT_NAMESPACE

R = TypeVar("R", bound=CustomResource)

YAML_SUFFIXES = (".yaml", ".yml")


class ManifestError(Exception):
    """A manifest problem, phrased as one line: ``file: Kind ns/name: field: message``."""


@dataclass(frozen=True)
class Document:
    file: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def namespace(self) -> str:
        meta = self.body.get("metadata") or {}
        return str(meta.get("namespace") or DEFAULT_NAMESPACE)

    @property
    def name(self) -> str:
        meta = self.body.get("metadata") or {}
        return str(meta.get("name") or f"#{self.index}")

    @property
    def label(self) -> str:
        return f"{self.file}: {self.kind or 'object'} {self.namespace}/{self.name}"


def _files(paths: Iterable[str | Path]) -> list[Path]:
    """The manifest files ``paths`` name, each once (`-f examples -f examples/github.yaml`)."""
    found: dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise ManifestError(f"{path}: no such file or directory")
        for file in files:
            found.setdefault(file.resolve(), file)
    return list(found.values())


def load_documents(paths: Iterable[str | Path]) -> list[Document]:
    docs: list[Document] = []
    for file in _files(paths):
        try:
            loaded = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{file}: not UTF-8 text (byte {exc.start})") from exc
        except OSError as exc:
            raise ManifestError(f"{file}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ManifestError(f"{file}:{where} not valid YAML") from exc
        for index, body in enumerate(loaded):
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ManifestError(f"{file}: document {index + 1} is not a mapping")
            for field in ("metadata", "data", "stringData"):
                if not isinstance(body.get(field) or {}, dict):
                    raise ManifestError(f"{file}: document {index + 1}: {field} is not a mapping")
            docs.append(Document(file, index, body))
    return docs


def _field(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(object)"


def describe_validation_error(error: ValidationError) -> str:
    """One line: the first problem, where it is, and how many more there are."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    where = f"{_field(first['loc'])}: " if first["loc"] else ""
    return f"{where}{message}{more}"


def format_validation_error(doc: Document, error: ValidationError) -> str:
    return f"{doc.label}: {describe_validation_error(error)}"


def custom_resources(docs: Iterable[Document], model: type[R]) -> list[tuple[Document, R]]:
    """The documents of ``model``'s kind, validated (a bad one is a ManifestError)."""
    found = []
    for doc in docs:
        if doc.kind != model.names.kind:
            continue
        if doc.body.get("apiVersion") != API_VERSION:
            raise ManifestError(f"{doc.label}: apiVersion: expected {API_VERSION}")
        body = dict(doc.body)
        body["metadata"] = {"namespace": DEFAULT_NAMESPACE, **(body.get("metadata") or {})}
        try:
            found.append((doc, model.model_validate(body)))
        except ValidationError as exc:
            raise ManifestError(format_validation_error(doc, exc)) from exc
    return found


def webhook_sources(docs: Iterable[Document]) -> list[tuple[Document, WebhookSource]]:
    return custom_resources(docs, WebhookSource)


def sync_schedules(docs: Iterable[Document]) -> list[tuple[Document, SyncSchedule]]:
    return custom_resources(docs, SyncSchedule)


def managed_secrets(docs: Iterable[Document]) -> list[tuple[Document, ManagedSecret]]:
    return custom_resources(docs, ManagedSecret)


def secrets(docs: Iterable[Document]) -> dict[tuple[str, str], dict[str, str]]:
    """``kind: Secret`` manifests as {(namespace, name): {key: value}}."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for doc in docs:
        if doc.kind != "Secret":
            continue
        values: dict[str, str] = {}
        for key, raw in (doc.body.get("data") or {}).items():
            try:
                values[key] = base64.b64decode(str(raw), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ManifestError(f"{doc.label}: data.{key}: not valid base64") from exc
        values.update({k: str(v) for k, v in (doc.body.get("stringData") or {}).items()})
        found[(doc.namespace, doc.name)] = values
    return found
