"""`dfm local` writes the manifests' Secrets to files (to reload them as kubelet would): where
they go must not outlive the run, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
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


STARTING = """
import os, sys, time
from pathlib import Path
import dfm.local
from dfm.local import secrets_dir

made, go = Path(sys.argv[2]), Path(sys.argv[3])
mkdir = Path.mkdir

def paused(self, *args, **kwargs):
    mkdir(self, *args, **kwargs)
    if self.name == str(os.getpid()):  # this run's directory exists, its lock is not taken yet
        made.touch()
        for _ in range(1000):
            if go.exists():
                break
            time.sleep(0.01)

Path.mkdir = paused
with secrets_dir(Path(sys.argv[1])) as root:
    print(root.is_dir() and (root / ".lock").exists(), flush=True)
"""


def test_a_run_starting_at_the_same_moment_never_removes_anothers_directory(
    tmp_path: Path,
) -> None:
    # Before (review): between a run's mkdir and its flock, a second `dfm local` starting at the
    # same moment found the new directory without a lock, took it for a killed run's and
    # removed it.
    made, go = tmp_path / "made", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", STARTING, str(tmp_path), str(made), str(go)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1000):
            if made.exists():
                break
            time.sleep(0.01)
        assert made.exists()
        its_dir = tmp_path / "secrets" / str(first.pid)

        def start_another() -> None:
            with secrets_dir(tmp_path):
                pass

        second = threading.Thread(target=start_another)
        second.start()
        second.join(0.5)  # a start waits for the other's to finish: still waiting
        assert its_dir.is_dir()
        go.touch()
        assert first.communicate(timeout=10)[0].strip() == "True"
        second.join(10)
        assert not second.is_alive()
    finally:
        go.touch()
        first.kill()
        first.wait(10)
