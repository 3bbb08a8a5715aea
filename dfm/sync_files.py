"""SyncSchedules read from files: what `dfm render` and `dfm sync run -f` resolve offline.

The operator reads the sink WebhookSource and the ManagedSecret from the cluster; offline they
come from the same files as the SyncSchedule. The sink must be there (its database and retention
decide where the items go); a ManagedSecret that is not is taken to write the Secret of its own
name (its default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dfm.manifests import (
    Document,
    ManifestError,
    load_documents,
    managed_secrets,
    secrets,
    sync_schedules,
    webhook_sources,
)
from dfm_operator.api import SyncSchedule, WebhookSource
from dfm_operator.builders.syncschedule import SyncInputs, build_sync_config
from dfm_operator.builders.webhooksource import database_secret
from dfm_operator.settings import OperatorSettings
from webhook_server.config import DatabaseConfig
from webhook_server.secrets import ACCESS_TOKEN
from webhook_server.sync.config import SyncConfig, TokenConfig


@dataclass(frozen=True)
class Resolved:
    doc: Document
    schedule: SyncSchedule
    sink: WebhookSource
    inputs: SyncInputs


def resolve(docs: list[Document], settings: OperatorSettings) -> list[Resolved]:
    """Every SyncSchedule in ``docs`` with what its children are built from."""
    sinks = {(s.metadata.namespace, s.metadata.name): s for _, s in webhook_sources(docs)}
    managed = {(m.metadata.namespace, m.metadata.name): m for _, m in managed_secrets(docs)}
    resolved = []
    for doc, schedule in sync_schedules(docs):
        ns = schedule.metadata.namespace
        ref = schedule.spec.sink.webhook_source_ref.name
        sink = sinks.get((ns, ref))
        if sink is None:
            raise ManifestError(
                f"{doc.label}: spec.sink.webhookSourceRef: WebhookSource {ns}/{ref} is not in the "
                "given files (its database decides where the items go)"
            )
        token_secret = None
        auth = schedule.spec.connector.http.auth
        if auth is not None:
            owner = managed.get((ns, auth.managed_secret_ref.name))
            token_secret = owner.secret_name if owner else auth.managed_secret_ref.name
        inputs = SyncInputs(
            settings=settings,
            sink=sink.key,
            database=database_secret(sink, settings),
            retention_days=sink.spec.store.retention_days,
            token_secret=token_secret,
        )
        resolved.append(Resolved(doc, schedule, sink, inputs))
    return resolved


def pick(resolved: list[Resolved], name: str | None, paths: Sequence[str]) -> Resolved:
    """The one SyncSchedule to run: by ``name``, or the only one in the files."""
    where = ", ".join(paths)
    if name is not None:
        named = [r for r in resolved if r.schedule.metadata.name == name]
        if not named:
            raise ManifestError(f"no SyncSchedule named {name!r} in {where}")
        if len(named) > 1:
            raise ManifestError(f"several SyncSchedules named {name!r} in {where}")
        return named[0]
    if not resolved:
        raise ManifestError(f"no SyncSchedule (apiVersion dfm.dev/v1alpha1) found in {where}")
    if len(resolved) > 1:
        names = ", ".join(r.schedule.metadata.name for r in resolved)
        raise ManifestError(f"several SyncSchedules in {where} ({names}): choose one with --name")
    return resolved[0]


def local_config(
    paths: Sequence[str],
    *,
    name: str | None,
    database_url: str,
    token_file: str | None,
) -> SyncConfig:
    """The config `dfm sync run -f` runs: the database URL given, the token from ``token_file``
    (re-read after a 401, as in a pod) or from the Secret the ManagedSecret would write, if
    the files hold one (key access_token)."""
    docs = load_documents(paths)
    chosen = pick(resolve(docs, OperatorSettings()), name, paths)
    schedule, inputs = chosen.schedule, chosen.inputs
    token: TokenConfig | None = None
    if inputs.token_secret is not None:
        if token_file is not None:
            if not Path(token_file).is_file():
                raise ManifestError(f"--token-file {token_file}: no such file")
            token = TokenConfig(file=token_file)
        else:
            values = secrets(docs).get((schedule.metadata.namespace, inputs.token_secret))
            if not values or not values.get(ACCESS_TOKEN):
                raise ManifestError(
                    f"{chosen.doc.label}: spec.connector.http.auth: no token: pass --token-file, "
                    f"or add the Secret {inputs.token_secret} (key {ACCESS_TOKEN}) that the "
                    "ManagedSecret writes to the files"
                )
            token = TokenConfig(value=values[ACCESS_TOKEN])
    return build_sync_config(
        schedule,
        sink=inputs.sink,
        retention_days=inputs.retention_days,
        database=DatabaseConfig(url=database_url),
        token=token,
    )
