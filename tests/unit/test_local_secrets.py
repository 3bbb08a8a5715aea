"""`dfm local` writes the manifests' Secrets to files (to reload them as kubelet would): where
they go must not outlive the run, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from dfm.local import secrets_dir

HOLDER = """
import sys, time
from pathlib import Path
from dfm.local import secrets_dir
with secrets_dir(Path(sys.argv[1])) as root:
    (root / "secret").write_text("whsec_plaintext")
    print(root, flush=True)
    time.sleep(600)
"""


def _holder(data_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_runs_secrets_are_removed_by_the_next_start_and_a_live_runs_are_kept(
    tmp_path: Path,
) -> None:
    # Before: a `dfm-secrets-*` folder in /tmp stayed behind, plaintext secrets in it.
    killed, killed_root = _holder(tmp_path)
    live, live_root = _holder(tmp_path)
    try:
        assert (killed_root / "secret").read_text() == "whsec_plaintext"
        assert killed_root.parent == tmp_path / "secrets"
        assert (killed_root.stat().st_mode & 0o777) == 0o700
        assert (killed_root.parent.stat().st_mode & 0o777) == 0o700
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        assert (killed_root / "secret").exists()  # nothing can clean up after SIGKILL itself

        with secrets_dir(tmp_path) as mine:
            assert not killed_root.exists()
            assert (live_root / "secret").exists()  # another run, still going: left alone
            (mine / "secret").write_text("x")
        assert not mine.exists()  # an orderly end removes its own
    finally:
        live.kill()
        live.wait(10)
