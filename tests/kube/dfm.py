"""This project's operator against the emulated Kubernetes API: how it is run, the CRDs it
needs installed, and the conditions it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kube_emulator import DfmKubernetesEmulator

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
OPERATOR = ["run", "-A", "--standalone", "-m", "dfm_operator.handlers"]  # for kopf_running


def install_crds(k8s: DfmKubernetesEmulator) -> None:
    """Every CRD in crds/, as `kubectl apply -f crds/` would."""
    for file in sorted(CRD_DIR.glob("*.yaml")):
        k8s.install_crd(yaml.safe_load(file.read_text()))


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition ``type_`` in ``obj``'s status, or ``{}`` while it has none."""
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return dict(found)
    return {}


def ready(obj: dict[str, Any] | None) -> dict[str, Any]:
    return condition(obj, "Ready")


async def create_secret(k8s: DfmKubernetesEmulator, namespace: str, name: str, **data: str) -> None:
    """The Secret ``name`` in ``namespace``, holding ``data`` (given as stringData)."""
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    }
    await k8s.create("v1/secrets", body, namespace)
