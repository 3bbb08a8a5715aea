"""Logical backups of the event store: dump, checksum, manifest, verify, store, prune, restore.

Data-plane code: it talks to PostgreSQL (asyncpg and the real ``pg_dump``/``pg_restore``), to
files and to S3-compatible object storage, never to Kubernetes. ``dfm backup run|list|restore``
are thin commands over it, and the operator's CronJobs run ``dfm backup run``.

A backup is two objects side by side: ``<name>.dump`` (``pg_dump --format=custom``) and
``<name>.manifest.json`` (:class:`~webhook_server.backup.manifest.Manifest`: SHA-256 and size of
the dump, row counts per table, content checksums of the event tables, server and tool versions,
how it was verified). The manifest is written last and only after verification passed, so a dump
without a manifest never counts as a backup: it is what a crash or a kill leaves behind, and
listing, restore and retention ignore it.
"""

from __future__ import annotations


class BackupError(Exception):
    """A backup step failed; the message is one line for a person, never a credential.

    ``stage`` says where: ``connect``, ``dump``, ``verify``, ``upload``, ``retention``,
    ``fetch``, ``checksum``, ``restore``.
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
