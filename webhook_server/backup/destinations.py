"""Where backups live: a directory (a PersistentVolumeClaim in a pod, any path on a laptop) or
S3-compatible object storage. Both keep the same promise: a backup appears whole or not at all.

A directory: ``pg_dump`` writes ``.<name>.dump.partial``, which is renamed to ``<name>.dump`` once
verified; the manifest is written the same way, last (each file fsynced before its rename).

S3: the dump is uploaded (multipart above 64 MiB; an object appears only when its upload
completes, and a failed multipart upload is aborted), its size checked, then the manifest is put.

Either way a dump without a manifest is not a backup: listing, restore and retention ignore it,
and a later run deletes it (and, in S3, aborts stale multipart uploads) once it is a day old.
Deletion goes the other way round: manifest first, then the dump.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pydantic import ValidationError

from webhook_server.backup import BackupError
from webhook_server.backup.manifest import (
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    Manifest,
    is_backup_name,
    name_time,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PARTIAL = ".partial"
LEFTOVER_AGE = timedelta(days=1)
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 64 * 1024 * 1024


class Destination(Protocol):
    """Blocking calls (files, boto3): the caller runs them in a thread."""

    @property
    def description(self) -> str:
        """Where, for a person (never a credential)."""
        ...

    def staging_path(self, name: str) -> Path:
        """Where pg_dump writes the dump of backup ``name`` before it is published."""
        ...

    def publish(self, staged: Path, manifest: Manifest) -> None:
        """Make ``staged`` the backup ``manifest.name``: the dump first, the manifest last."""
        ...

    def discard(self, staged: Path) -> None:
        """Remove a staged dump that will not be published."""
        ...

    def backups(self) -> list[Manifest]:
        """Every complete backup (a readable manifest), oldest first."""
        ...

    def fetch(self, name: str, workdir: Path) -> tuple[Path, Manifest]:
        """A local path of backup ``name``'s dump (downloaded into ``workdir`` if remote)."""
        ...

    def delete(self, name: str) -> None: ...

    def clean_leftovers(self, now: datetime) -> list[str]:
        """Remove what interrupted runs left (a day old at least); returns what was removed."""
        ...


def _sorted(manifests: list[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=lambda m: (m.started_at, m.name))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class DirectoryDestination:
    root: Path

    @property
    def description(self) -> str:
        return str(self.root)

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackupError("upload", f"cannot create {self.root}: {exc.strerror}") from None

    def staging_path(self, name: str) -> Path:
        self._ensure_root()
        return self.root / f".{name}{DUMP_SUFFIX}{PARTIAL}"

    def publish(self, staged: Path, manifest: Manifest) -> None:
        dump = self.root / manifest.dump_file
        final = self.root / f"{manifest.name}{MANIFEST_SUFFIX}"
        partial = self.root / f".{manifest.name}{MANIFEST_SUFFIX}{PARTIAL}"
        try:
            _fsync(staged)
            os.replace(staged, dump)
            partial.write_bytes(manifest.to_json())
            _fsync(partial)
            os.replace(partial, final)
            _fsync(self.root)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise BackupError(
                "upload", f"writing {manifest.name} to {self.root} failed: {exc.strerror}"
            ) from None

    def discard(self, staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def backups(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob(f"*{MANIFEST_SUFFIX}"):
            manifest = _read_manifest(path.read_bytes())
            if manifest is not None and (self.root / manifest.dump_file).exists():
                found.append(manifest)
        return _sorted(found)

    def _manifest(self, name: str) -> Manifest:
        path = self.root / f"{name}{MANIFEST_SUFFIX}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BackupError("fetch", f"no backup {name} in {self.root}") from None
        manifest = _read_manifest(data)
        if manifest is None:
            raise BackupError("fetch", f"{path} is not a readable backup manifest")
        return manifest

    def fetch(self, name: str, workdir: Path) -> tuple[Path, Manifest]:
        manifest = self._manifest(name)
        dump = self.root / manifest.dump_file
        if not dump.exists():
            raise BackupError("fetch", f"{dump} is missing")
        return dump, manifest

    def delete(self, name: str) -> None:
        (self.root / f"{name}{MANIFEST_SUFFIX}").unlink(missing_ok=True)
        (self.root / f"{name}{DUMP_SUFFIX}").unlink(missing_ok=True)

    def clean_leftovers(self, now: datetime) -> list[str]:
        if not self.root.is_dir():
            return []
        removed = []
        complete = {
            p.name.removesuffix(MANIFEST_SUFFIX) for p in self.root.glob(f"*{MANIFEST_SUFFIX}")
        }
        for path in self.root.iterdir():
            name = _leftover_name(path.name, complete)
            taken = name_time(name) if name else None
            if taken is not None and now - taken > LEFTOVER_AGE:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return sorted(removed)


def _leftover_name(filename: str, complete: set[str]) -> str | None:
    """The backup name of a file an interrupted run left: a partial, or a dump without manifest."""
    base = filename
    if base.startswith(".") and base.endswith(PARTIAL):
        base = base[1:].removesuffix(PARTIAL)
        for suffix in (DUMP_SUFFIX, MANIFEST_SUFFIX):
            if base.endswith(suffix):
                return base.removesuffix(suffix)
        return None
    if base.endswith(DUMP_SUFFIX):
        name = base.removesuffix(DUMP_SUFFIX)
        return name if name not in complete and is_backup_name(name) else None
    return None


def _read_manifest(data: bytes) -> Manifest | None:
    try:
        return Manifest.from_json(data)
    except ValidationError:
        return None


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/some/prefix``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BackupError("fetch", f"{url!r} is not an s3://bucket/prefix URL")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, filename: str) -> str:
        return f"{self.prefix}/{filename}" if self.prefix else filename

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def s3_client(
    *, endpoint_url: str | None, region: str | None, path_style: bool = False
) -> S3Client:
    """A boto3 S3 client; credentials from boto3's usual sources (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY in a backup job, from the Secret the BackupSchedule names)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        s3={"addressing_style": "path" if path_style else "auto"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _s3_error(exc: Exception) -> str:
    """boto3's error in one line: the code and message S3 returned, never a credential."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


@dataclass
class S3Destination:
    location: S3Location
    client: Any  # S3Client; Any so that boto3 stays an import of this class's users only
    workdir: Path
    multipart_threshold: int = MULTIPART_THRESHOLD
    multipart_chunk: int = MULTIPART_CHUNK
    _s3_errors: tuple[type[Exception], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        self._s3_errors = (ClientError, BotoCoreError, S3UploadFailedError)

    @property
    def description(self) -> str:
        return str(self.location)

    @contextlib.contextmanager
    def _call(self, stage: str, what: str) -> Iterator[None]:
        try:
            yield
        except self._s3_errors as exc:
            raise BackupError(stage, f"{what} in {self.location}: {_s3_error(exc)}") from None

    def staging_path(self, name: str) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir / f"{name}{DUMP_SUFFIX}"

    def publish(self, staged: Path, manifest: Manifest) -> None:
        from boto3.s3.transfer import TransferConfig

        dump_key = self.location.key(manifest.dump_file)
        transfer = TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_chunk
        )
        with self._call("upload", f"uploading {manifest.dump_file}"):
            self.client.upload_file(
                str(staged),
                self.location.bucket,
                dump_key,
                ExtraArgs={"Metadata": {"sha256": manifest.sha256}},
                Config=transfer,
            )
            head = self.client.head_object(Bucket=self.location.bucket, Key=dump_key)
        if int(head["ContentLength"]) != manifest.size_bytes:
            raise BackupError(
                "upload",
                f"{dump_key} has {head['ContentLength']} bytes in the bucket, "
                f"{manifest.size_bytes} were uploaded",
            )
        with self._call("upload", f"writing the manifest of {manifest.name}"):
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self.location.key(manifest.name + MANIFEST_SUFFIX),
                Body=manifest.to_json(),
                ContentType="application/json",
            )
        staged.unlink(missing_ok=True)

    def discard(self, staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def _keys(self) -> list[tuple[str, datetime]]:
        prefix = self.location.key("")
        keys = []
        with self._call("destination", "listing backups"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            ):
                for item in page.get("Contents") or []:
                    rest = item["Key"][len(prefix) :]
                    if "/" not in rest:
                        keys.append((rest, item["LastModified"]))
        return keys

    def _get(self, filename: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(
                Bucket=self.location.bucket, Key=self.location.key(filename)
            )["Body"]
            data: bytes = body.read()
            return data
        except ClientError as exc:
            if (exc.response.get("Error") or {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise BackupError("fetch", f"reading {filename}: {_s3_error(exc)}") from None

    def backups(self) -> list[Manifest]:
        keys = {name for name, _ in self._keys()}
        found = []
        for filename in sorted(keys):
            if not filename.endswith(MANIFEST_SUFFIX):
                continue
            data = self._get(filename)
            manifest = _read_manifest(data) if data is not None else None
            if manifest is not None and manifest.dump_file in keys:
                found.append(manifest)
        return _sorted(found)

    def fetch(self, name: str, workdir: Path) -> tuple[Path, Manifest]:
        data = self._get(name + MANIFEST_SUFFIX)
        if data is None:
            raise BackupError("fetch", f"no backup {name} in {self.location}")
        manifest = _read_manifest(data)
        if manifest is None:
            raise BackupError("fetch", f"the manifest of {name} in {self.location} is unreadable")
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / manifest.dump_file
        with self._call("fetch", f"downloading {manifest.dump_file}"):
            self.client.download_file(
                self.location.bucket, self.location.key(manifest.dump_file), str(path)
            )
        return path, manifest

    def delete(self, name: str) -> None:
        with self._call("retention", f"deleting {name}"):
            for suffix in (MANIFEST_SUFFIX, DUMP_SUFFIX):
                self.client.delete_object(
                    Bucket=self.location.bucket, Key=self.location.key(name + suffix)
                )

    def clean_leftovers(self, now: datetime) -> list[str]:
        keys = dict(self._keys())
        complete = {k.removesuffix(MANIFEST_SUFFIX) for k in keys if k.endswith(MANIFEST_SUFFIX)}
        removed = []
        with self._call("retention", "removing leftovers"):
            for filename in sorted(keys):
                name = _leftover_name(filename, complete)
                taken = name_time(name) if name else None
                if taken is not None and now - taken > LEFTOVER_AGE:
                    self.client.delete_object(
                        Bucket=self.location.bucket, Key=self.location.key(filename)
                    )
                    removed.append(filename)
            uploads = self.client.list_multipart_uploads(
                Bucket=self.location.bucket, Prefix=self.location.key("")
            )
            for upload in uploads.get("Uploads") or []:
                if now - upload["Initiated"] > LEFTOVER_AGE:
                    self.client.abort_multipart_upload(
                        Bucket=self.location.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed.append(f"{upload['Key']} (unfinished upload)")
        return removed
