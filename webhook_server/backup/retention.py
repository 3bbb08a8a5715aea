"""Which backups to delete: a pure decision over (name, time) pairs and ``now``.

A backup is kept when any rule keeps it (restic's ``--keep-last`` / ``--keep-within``): among the
``keep_last`` newest, or taken within ``max_age`` of ``now``. With no rule nothing is deleted.
The newest backup is always kept, whatever the rules say: retention runs after a backup
succeeded, and only complete backups (with a manifest, hence verified) are ever candidates, so
the newest successful backup is never the one deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def to_delete(
    backups: Sequence[tuple[str, datetime]],
    *,
    keep_last: int | None,
    max_age: timedelta | None,
    now: datetime,
) -> list[str]:
    """Names of the backups the rules no longer keep, oldest first."""
    if keep_last is None and max_age is None:
        return []
    newest_first = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    doomed = []
    for position, (name, taken) in enumerate(newest_first):
        if position == 0:
            continue
        if keep_last is not None and position < keep_last:
            continue
        if max_age is not None and now - taken <= max_age:
            continue
        doomed.append((taken, name))
    return [name for _, name in sorted(doomed)]
