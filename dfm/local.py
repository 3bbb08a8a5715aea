"""`dfm local`: serve WebhookSource manifests on this machine, no cluster needed."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from dfm.manifests import Document, ManifestError, load_documents, secrets, webhook_sources
from dfm_operator.api import WebhookSource
from dfm_operator.builders.receiver_config import build_source_config
from webhook_server.config import DatabaseConfig, ReceiverConfig, SecretSource, SourceConfig

DATABASE_URL_ENV = "DFM_DATABASE_URL"
DATA_DIR_ENV = "DFM_DATA_DIR"


def default_data_dir() -> Path:
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dfm"


def local_secrets(
    doc: Document, source: WebhookSource, found: dict[tuple[str, str], dict[str, str]]
) -> list[SecretSource]:
    """The source's secret values, read from ``kind: Secret`` manifests in the same files."""
    ns = source.metadata.namespace
    ref = source.spec.verification.secret_ref
    if ref is not None:
        values = found.get((ns, ref.name))
        if values is None:
            raise ManifestError(
                f"{doc.label}: spec.verification.secretRef: Secret {ns}/{ref.name} "
                "not found in the given files"
            )
        if ref.key not in values:
            raise ManifestError(
                f"{doc.label}: spec.verification.secretRef: Secret {ns}/{ref.name} "
                f"has no key {ref.key!r}"
            )
        return [SecretSource(value=values[ref.key])]
    managed = source.spec.verification.managed_secret_ref
    if managed is not None:
        values = found.get((ns, managed.name))
        if values is None or "current" not in values:
            raise ManifestError(
                f"{doc.label}: spec.verification.managedSecretRef: a Secret {ns}/{managed.name} "
                "with key 'current' is needed in local mode"
            )
        return [SecretSource(value=values["current"])]
    return []


def source_configs(paths: Sequence[str]) -> tuple[list[SourceConfig], dict[str, Path]]:
    """Every WebhookSource in ``paths`` as a receiver source, and the file each came from."""
    docs = load_documents(paths)
    found = secrets(docs)
    configs: list[SourceConfig] = []
    files: dict[str, Path] = {}
    for doc, source in webhook_sources(docs):
        configs.append(build_source_config(source, local_secrets(doc, source, found)))
        files[source.key] = doc.file
    if not configs:
        raise ManifestError(
            f"no WebhookSource (apiVersion dfm.dev/v1alpha1) found in {', '.join(paths)}"
        )
    return configs, files


def build_config(
    paths: Sequence[str], *, host: str, port: int, database_url: str
) -> tuple[ReceiverConfig, dict[str, Path]]:
    sources, files = source_configs(paths)
    try:
        config = ReceiverConfig(
            host=host, port=port, sources=sources, database=DatabaseConfig(url=database_url)
        )
    except ValueError as exc:
        raise ManifestError(str(exc).splitlines()[-1].strip()) from exc
    return config, files


def _program() -> str:
    prog = Path(sys.argv[0])
    try:
        return str(prog.resolve().relative_to(Path.cwd()))
    except ValueError:
        return prog.name


def banner(config: ReceiverConfig, files: dict[str, Path]) -> str:
    base = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '') else config.host}:{config.port}"  # noqa: S104
    lines = [f"dfm local: serving {len(config.sources)} source(s) on {base}"]
    for source in config.sources:
        url = base + source.route
        lines.append(f"  {source.key:<28} {source.provider.value:<10} POST {url}")
        send = [_program(), "send", str(files[source.key]), "--name", source.name, "--url", url]
        lines.append(f"      try: {shlex.join(send)}")
    lines.append(f"  health: {base}/readyz   metrics: {base}/metrics")
    return "\n".join(lines)
