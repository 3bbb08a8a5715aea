"""The command-line tools some tests run, found the way a dev install puts them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def dev_tool(name: str, why: str) -> str:
    """``name`` beside this Python (the venv's bin), else on PATH; skips the test saying ``why``
    when neither has it."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({why})")
    return found
