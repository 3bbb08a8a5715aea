"""`dfm send`, `dfm local` and the jobs' commands start without importing what only the operator
uses: the Kubernetes client alone costs about a second of start-up (measured with
``python -X importtime -c 'import dfm.cli'``), paid on every `dfm send` and every job pod."""

from __future__ import annotations

import subprocess
import sys

OPERATOR_ONLY = ("kubernetes_asyncio", "kopf")


def test_the_cli_does_not_import_the_kubernetes_client_until_a_command_needs_it() -> None:
    probe = (
        "import sys, dfm.cli; dfm.cli.parser(); "
        f"print(','.join(m for m in {OPERATOR_ONLY!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""
