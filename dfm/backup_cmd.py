"""`dfm backup run|list|restore`: thin commands over ``webhook_server.backup``.

A destination (``--to``, ``list``'s argument) is a directory or ``s3://bucket/prefix``; a backup
(``--from``) is a destination plus the backup's name, or the path of its ``.dump`` or manifest.
``--local`` uses `dfm local`'s embedded PostgreSQL (``$DFM_DATA_DIR``) instead of a URL.
S3 credentials come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
optionally ``AWS_SESSION_TOKEN``), as every S3 tool reads them; they are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from webhook_server.backup import BackupError
from webhook_server.backup.destinations import (
    Destination,
    DirectoryDestination,
    S3Destination,
    S3Location,
    s3_client,
)
from webhook_server.backup.manifest import (
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    VerifyMethod,
    human_size,
)
from webhook_server.backup.tools import PG_BIN_DIR_ENV

DATABASE_URL_ENV = "DFM_DATABASE_URL"


class UsageError(Exception):
    """Arguments that do not fit together: exit code 2."""


def _s3_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3-compatible object storage (for s3:// destinations)")
    g.add_argument("--s3-endpoint", metavar="URL", help="the S3 API's URL (default: AWS)")
    g.add_argument("--s3-region", metavar="REGION", help="the bucket's region")
    g.add_argument(
        "--s3-path-style",
        action="store_true",
        help="address buckets as URL paths (MinIO and most self-hosted stores need it)",
    )


def _database_options(p: argparse.ArgumentParser, *, required_help: str) -> None:
    g = p.add_argument_group("database (one of)")
    g.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_ENV),
        metavar="URL",
        help=f"postgresql:// URL {required_help} (default: ${DATABASE_URL_ENV})",
    )
    g.add_argument(
        "--database-url-file",
        metavar="FILE",
        type=Path,
        help="a file holding the URL (a mounted Secret key)",
    )
    g.add_argument(
        "--local",
        action="store_true",
        help="dfm local's embedded PostgreSQL (started if it is not running)",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser(
        "backup",
        help="back up the event store, list backups, restore one",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    actions = top.add_subparsers(dest="backup_command", required=True)

    run = actions.add_parser(
        "run",
        help="dump, verify and store one backup, then apply retention (the backup job)",
    )
    run.add_argument(
        "--to", required=True, metavar="DEST", help="a directory or s3://bucket/prefix"
    )
    _database_options(run, required_help="of the database to back up")
    run.add_argument(
        "--name-prefix",
        default="backup",
        help="backups are named <prefix>-<UTC time>; retention only touches this prefix's",
    )
    run.add_argument(
        "--verify",
        choices=[m.value for m in VerifyMethod],
        default=VerifyMethod.LIST.value,
        help="list: pg_restore reads the whole archive; restore: also restore it into a "
        "scratch database and compare (needs CREATEDB)",
    )
    run.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest backups")
    run.add_argument(
        "--max-age", metavar="DURATION", help="keep backups younger than this, e.g. 720h"
    )
    run.add_argument(
        "--summary-file",
        type=Path,
        metavar="FILE",
        help="also write the JSON summary here (the job's /dev/termination-log)",
    )
    run.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="where an S3 backup is staged (default: $TMPDIR)",
    )
    run.add_argument("--pg-bin-dir", metavar="DIR", help=f"pg_dump's directory (${PG_BIN_DIR_ENV})")
    run.add_argument("--log-format", choices=["json", "console"], default="json")
    _s3_options(run)

    ls = actions.add_parser("list", help="list the complete backups at a destination")
    ls.add_argument("destination", metavar="DEST", help="a directory or s3://bucket/prefix")
    ls.add_argument("--json", action="store_true", help="print the manifests as JSON")
    _s3_options(ls)

    restore = actions.add_parser(
        "restore",
        help="restore one backup into a database (checksum first; empty target unless --force)",
    )
    restore.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="BACKUP",
        help="DIR/NAME, s3://bucket/prefix/NAME, or the path of a .dump or manifest",
    )
    _database_options(restore, required_help="of the database to restore into (it must exist)")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore into a database that is not empty: restored beside it, then swapped; "
        "the current contents are kept as <database>_before_restore_<time>",
    )
    restore.add_argument(
        "--workdir", type=Path, metavar="DIR", help="where an S3 backup is downloaded"
    )
    restore.add_argument(
        "--pg-bin-dir", metavar="DIR", help=f"pg_restore's directory (${PG_BIN_DIR_ENV})"
    )
    _s3_options(restore)


def _destination(text: str, args: argparse.Namespace, workdir: Path) -> Destination:
    if text.startswith("s3://"):
        client = s3_client(
            endpoint_url=args.s3_endpoint, region=args.s3_region, path_style=args.s3_path_style
        )
        return S3Destination(S3Location.parse(text), client, workdir)
    if "://" in text:
        raise UsageError(f"{text}: expected a directory or s3://bucket/prefix")
    return DirectoryDestination(Path(text))


def split_backup(text: str) -> tuple[str, str]:
    """(destination, name) of a ``--from`` value."""
    text = text.rstrip("/")
    for suffix in (MANIFEST_SUFFIX, DUMP_SUFFIX):
        if text.endswith(suffix):
            text = text.removesuffix(suffix)
            break
    where, _, name = text.rpartition("/")
    if not name:
        raise UsageError(f"{text}: no backup name in it")
    if text.startswith("s3://") and where in ("s3:", "s3:/"):
        raise UsageError(f"{text}: expected s3://bucket/[prefix/]NAME")
    return where or ".", name


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The URL the arguments name; for --local, dfm local's server, started if need be and
    stopped afterwards unless another process (a running `dfm local`) owns it."""
    given = [bool(args.local), args.database_url_file is not None]
    if sum(given) > 1:
        raise UsageError("give one of --database-url, --database-url-file, --local")
    if args.database_url_file is not None:
        yield args.database_url_file.read_text().strip()
        return
    if not args.local:
        if not args.database_url:
            raise UsageError(
                f"no database: give --database-url (or ${DATABASE_URL_ENV}) or --local"
            )
        yield args.database_url
        return
    from dfm.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
    from dfm.local import default_data_dir

    server = EmbeddedPostgres(default_data_dir() / "postgres")
    try:
        server.start()
    except EmbeddedPostgresError as exc:
        raise UsageError(f"--local: {exc}") from exc
    try:
        yield server.url
    finally:
        server.release()


def _max_age(text: str | None) -> timedelta | None:
    if text is None:
        return None
    from dfm_operator.api.common import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--max-age: {exc}") from exc


def cmd_run(args: argparse.Namespace) -> int:
    from webhook_server import logs
    from webhook_server.backup.run import BackupRun, run_backup

    logs.configure(json=args.log_format == "json", stream=sys.stderr)
    if args.keep_last is not None and args.keep_last < 1:
        raise UsageError("--keep-last: must be at least 1")
    max_age = _max_age(args.max_age)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        destination = _destination(args.to, args, workdir)
        url = stack.enter_context(_database(args))
        summary = asyncio.run(
            run_backup(
                BackupRun(
                    database_url=url,
                    destination=destination,
                    prefix=args.name_prefix,
                    verify=VerifyMethod(args.verify),
                    keep_last=args.keep_last,
                    max_age=max_age,
                    bin_dir=args.pg_bin_dir,
                )
            )
        )
    message = summary.to_message()
    if args.summary_file is not None:
        args.summary_file.write_text(message)
    print(message)
    if not summary.ok:
        print(f"dfm backup: error: {summary.stage}: {summary.error}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        manifests = _destination(args.destination, args, Path(tmp)).backups()
    if args.json:
        print(json.dumps([m.model_dump(mode="json", by_alias=True) for m in manifests], indent=2))
        return 0
    rows = [("NAME", "TAKEN", "SIZE", "ROWS", "VERIFIED", "SHA-256")]
    for m in manifests:
        verified = m.verification.method.value if m.verification else "-"
        taken = m.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append((m.name, taken, human_size(m.size_bytes), str(m.rows), verified, m.sha256[:16]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not manifests:
        print(f"(no backups in {args.destination})", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from webhook_server.backup.restore import restore

    where, name = split_backup(args.source)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        destination = _destination(where, args, workdir)
        url = stack.enter_context(_database(args))
        path, manifest = destination.fetch(name, workdir)
        done = asyncio.run(restore(path, manifest, url, force=args.force, bin_dir=args.pg_bin_dir))
    print(
        f"dfm backup: restored {done.name} into database {done.database}: "
        f"{done.tables} tables, {done.rows} rows, checksums match"
    )
    if done.previous:
        print(f"dfm backup: its previous contents are kept in database {done.previous}")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "restore": cmd_restore}


def run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.backup_command](args)
    except BackupError as exc:
        print(f"dfm backup {args.backup_command}: error: {exc.stage}: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"dfm backup {args.backup_command}: error: {exc}", file=sys.stderr)
        return 2
