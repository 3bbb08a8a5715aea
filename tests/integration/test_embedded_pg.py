"""The embedded PostgreSQL of `dfm local`: shared by concurrent runs, stopped by its owner only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfm.embedded_pg import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
# What a second `dfm local` does with the same data directory: start (or join), then release.
SECOND_RUN = (
    "import sys; from pathlib import Path; from dfm.embedded_pg import EmbeddedPostgres; "
    "pg = EmbeddedPostgres(Path(sys.argv[1])); pg.start(); print(pg.port); pg.release()"
)


@pytest.fixture
def first(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.start()
    yield server
    server.destroy()


def second_run(datadir: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SECOND_RUN, str(datadir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    return int(done.stdout.strip())


def test_a_second_run_shares_the_server_and_leaves_it_running(first: EmbeddedPostgres) -> None:
    assert second_run(first.datadir) == first.port
    assert first.running(), "the second run stopped the first run's database"
    first.release()
    assert not first.running()


def test_a_server_whose_owner_is_gone_is_adopted_and_stopped(first: EmbeddedPostgres) -> None:
    # The owner crashed (its PID is no longer alive): the next run takes the server over.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    first.owner_file.write_text(gone.stdout)
    second_run(first.datadir)
    assert not first.running(), "a server nobody owns was left running"
