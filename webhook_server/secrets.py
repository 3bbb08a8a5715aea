"""Secret values of a source, re-read from disk when kubelet updates the mounted files.

A source may list several secrets (each a literal, a mounted key, or a mounted ManagedSecret
directory). A ManagedSecret directory holds ``current`` and, during a rotation's grace period,
``previous`` plus ``previous-expires-at`` (RFC 3339); ``previous`` is valid only until then.

Kubelet mounts a Secret as a timestamped directory, a ``..data`` symlink to it, and one symlink per
key through ``..data``; an update writes a new directory and switches ``..data`` in one rename.
The three files of a ManagedSecret are therefore read from the directory ``..data`` resolves to,
so that they all come from one version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from webhook_server.config import Provider, SecretSource, secret_problem
from webhook_server.logs import get_logger

log = get_logger("dfm.secrets")

CURRENT = "current"
PREVIOUS = "previous"
PREVIOUS_EXPIRES_AT = "previous-expires-at"
# An oauth2 ManagedSecret's access token: the key a sync job mounts (webhook_server.sync).
ACCESS_TOKEN = "access_token"
DATA_LINK = "..data"
# Reads of a kubelet-mounted directory before giving up, should ``..data`` switch during each.
MAX_VERSION_READS = 3


class SecretsChanging(Exception):
    """A mounted directory kept changing while it was read; the caller keeps what it had."""


@dataclass(frozen=True)
class SecretValue:
    value: bytes
    # Unix time after which the value is refused; None for no expiry.
    expires_at: float | None = None


def _read(path: Path) -> bytes | None:
    try:
        # Kubernetes writes values verbatim; a trailing newline is an artefact of how a Secret
        # was made (`echo x > file`), never part of a provider's secret.
        return path.read_bytes().rstrip(b"\r\n")
    except FileNotFoundError:
        return None


_UNREADABLE_EXPIRIES_SEEN: set[bytes] = set()


def _parse_expiry(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.decode().strip().replace("Z", "+00:00")).timestamp()
    except (ValueError, UnicodeDecodeError):
        # An unreadable expiry must not keep an old secret alive forever: `previous` is refused.
        # Said once per value (it is a time, not a secret), not on every reload.
        if raw not in _UNREADABLE_EXPIRIES_SEEN:
            _UNREADABLE_EXPIRIES_SEEN.add(raw)
            log.warning(
                "previous-expires-at is not an RFC 3339 time; the previous secret is refused",
                value=raw.decode(errors="replace")[:40],
            )
        return 0.0


def load(sources: Sequence[SecretSource]) -> tuple[SecretValue, ...]:
    """Read every configured secret now; missing files are skipped (see ``loaded``)."""
    values: list[SecretValue] = []
    for source in sources:
        if source.value is not None:
            values.append(SecretValue(source.value.encode()))
        elif source.file is not None:
            raw = _read(Path(source.file))
            if raw:
                values.append(SecretValue(raw))
        elif source.dir is not None:
            values.extend(_read_managed(Path(source.dir)))
    return tuple(values)


def _read_managed(folder: Path) -> list[SecretValue]:
    """A ManagedSecret directory's values, all from one version when kubelet mounted it.

    Reading through the per-key links could take ``current`` from one version and ``previous``
    from the next (losing the new secret for a reload period). So ``..data`` is resolved once and
    every file read from there; should it have switched meanwhile (the old directory may even be
    gone), the read is done again from the new one.
    """
    link = folder / DATA_LINK
    if not os.path.lexists(link):
        return _read_version(folder)
    resolved = os.path.realpath(link)
    for _ in range(MAX_VERSION_READS):
        values = _read_version(Path(resolved))
        now_resolved = os.path.realpath(link)
        if now_resolved == resolved:
            return values
        resolved = now_resolved
    raise SecretsChanging("..data kept changing while it was read")


def _read_version(folder: Path) -> list[SecretValue]:
    values: list[SecretValue] = []
    current = _read(folder / CURRENT)
    if current:
        values.append(SecretValue(current))
    previous = _read(folder / PREVIOUS)
    if previous:
        expiry = _parse_expiry(_read(folder / PREVIOUS_EXPIRES_AT))
        values.append(SecretValue(previous, expiry))
    return values


def valid_at(values: Sequence[SecretValue], now: float) -> list[bytes]:
    return [v.value for v in values if v.expires_at is None or now < v.expires_at]


class SourceSecrets:
    """The cached secrets of one source; ``reload`` says whether they changed.

    With a ``provider``, a value that can never verify its deliveries (empty, or a ``whsec_``
    secret that is not base64 for ``standard``) does not count as loaded: ``/readyz`` says so, and
    the problem is logged once per change (never the value).
    """

    def __init__(self, sources: Sequence[SecretSource], provider: Provider | None = None) -> None:
        self._sources = tuple(sources)
        self._provider = provider
        self.values = load(self._sources)
        self._usable = self._check()

    @property
    def configured(self) -> bool:
        return bool(self._sources)

    @property
    def loaded(self) -> bool:
        return not self._sources or self._usable

    def _check(self) -> bool:
        if self._provider is None:
            return bool(self.values)
        usable = False
        for value in self.values:
            problem = secret_problem(self._provider, value.value)
            if problem is None:
                usable = True
            else:
                log.warning("a verification secret is unusable", problem=problem)
        return usable

    def reload(self) -> bool:
        fresh = load(self._sources)
        if fresh == self.values:
            return False
        self.values = fresh
        self._usable = self._check()
        return True

    def valid_at(self, now: float) -> list[bytes]:
        return valid_at(self.values, now)
