"""`dfm render`: the objects the operator would apply, offline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from dfm import sync_files
from dfm.manifests import custom_resources, load_documents, webhook_sources
from dfm_operator.api import BackupSchedule
from dfm_operator.builders import backupschedule, syncschedule
from dfm_operator.builders.webhooksource import ReceiverInputs, build_children
from dfm_operator.settings import OperatorSettings


def render(paths: Sequence[str], *, service_monitor: bool = False) -> list[dict[str, Any]]:
    """The children of every WebhookSource, BackupSchedule and SyncSchedule in the files."""
    settings = OperatorSettings()
    docs = load_documents(paths)
    objects: list[dict[str, Any]] = []
    for _, source in webhook_sources(docs):
        inputs = ReceiverInputs(settings=settings, service_monitor=service_monitor)
        objects.extend(build_children(source, inputs))
    for _, schedule in custom_resources(docs, BackupSchedule):
        objects.extend(backupschedule.build_children(schedule, settings))
    for resolved in sync_files.resolve(docs, settings):
        objects.extend(syncschedule.build_children(resolved.schedule, resolved.inputs))
    return objects


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the receiver config in a ConfigMap) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: Sequence[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True)
