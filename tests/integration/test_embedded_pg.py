"""The embedded PostgreSQL of `dfm local`: shared by concurrent runs, stopped by its owner only."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfm import embedded_pg
from dfm.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

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


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the pick and PostgreSQL's bind, something else took the port (on a busy machine an
    # outgoing connection can be given it as its source port). The start picks another one.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_pick = embedded_pg.free_port
        monkeypatch.setattr(
            embedded_pg, "free_port", lambda host: next(picks, None) or real_pick(host)
        )
        server = EmbeddedPostgres(tmp_path / "postgres")
        assert server.port == taken
        try:
            server.start()
            assert server.running()
            assert server.port != taken
            assert "Address already in use" in server.logfile.read_text()
        finally:
            server.destroy()


def test_a_port_given_by_the_caller_is_not_changed_when_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = EmbeddedPostgres(tmp_path / "postgres", port=taken)
        try:
            with pytest.raises(EmbeddedPostgresError, match="starting PostgreSQL"):
                server.start()
            assert server.port == taken
        finally:
            server.destroy()
