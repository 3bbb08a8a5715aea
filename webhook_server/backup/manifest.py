"""What a backup says about itself (the manifest), how backups are named, and the summary a
backup job leaves for the operator (its container's termination message).

The summary is a contract between the job (this package) and the operator, which reads it from
the Pod's ``status.containerStatuses[].state.terminated.message``: one model, here, for both.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

MANIFEST_FORMAT = "dfm-backup/1"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".manifest.json"
# <prefix>-<UTC time>: sorts by time within a prefix, and says when it was taken wherever it is
# copied to.
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<stamp>\d{8}T\d{6}Z)$")
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def human_size(n: int) -> str:
    """A byte count as people read it: ``512 B``, ``1.5 KiB`` … ``3.2 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class VerifyMethod(enum.StrEnum):
    """How a backup is proven restorable before it counts."""

    LIST = "list"  # pg_restore --list reads the whole archive's table of contents
    RESTORE = "restore"  # restored into a scratch database and compared


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Verification(_Model):
    method: VerifyMethod
    verified_at: datetime
    toc_entries: Annotated[int, Field(ge=0)]
    # restore only: the scratch database it was restored into (dropped afterwards).
    scratch_database: str | None = None


class Manifest(_Model):
    """``<name>.manifest.json``: written last, so its presence is what makes a backup."""

    format: Literal["dfm-backup/1"] = "dfm-backup/1"
    name: str
    started_at: datetime
    finished_at: datetime
    database: str
    server_version: str
    pg_dump_version: str
    dump_file: str
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    tables: dict[str, int] = Field(
        description="Rows per table (schema.table) in the dump's snapshot."
    )
    checksums: dict[str, str] = Field(
        default_factory=dict,
        description="Content checksums of the event tables in the dump's snapshot.",
    )
    verification: Verification | None = None

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)


def backup_name(prefix: str, at: datetime) -> str:
    """``<prefix>-20261127T023000Z``."""
    name = f"{prefix}-{at.astimezone(UTC).strftime(_STAMP)}"
    if not _NAME.match(name):
        raise ValueError(f"invalid backup name prefix {prefix!r}: use letters, digits, . _ -")
    return name


def name_time(name: str) -> datetime | None:
    """When the backup ``name`` was taken, from its name; None for names not made here."""
    match = _NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group("stamp"), _STAMP).replace(tzinfo=UTC)


def is_backup_name(name: str) -> bool:
    return _NAME.match(name) is not None


class JobSummary(_Model):
    """What ``dfm backup run`` writes to its termination message; never a credential.

    ``ok`` false: ``stage`` says where it failed (``verify`` for a backup that was written but
    could not be proven restorable) and ``error`` why, in one line. Unknown fields are ignored:
    an older operator still reads a newer job's summary.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    ok: bool
    name: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    verification: VerifyMethod | None = None
    verified_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    tables: int | None = None
    rows: int | None = None
    kept: int | None = None
    pruned: int | None = None
    stage: str | None = None
    error: str | None = None

    def to_message(self) -> str:
        """The JSON, within Kubernetes' 4096-byte limit (the error is shortened if need be)."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and self.error:
            over = len(text.encode()) - TERMINATION_MESSAGE_LIMIT
            cut = self.error[: max(0, len(self.error) - over - 3)]
            short = self.model_copy(update={"error": cut})
            text = short.model_dump_json(by_alias=True, exclude_none=True)
        return text

    @classmethod
    def from_message(cls, text: str | None) -> JobSummary | None:
        """The summary in a termination message, or None when it holds none (a killed job)."""
        if not text or not text.strip().startswith("{"):
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            return None
