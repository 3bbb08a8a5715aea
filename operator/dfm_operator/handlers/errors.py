"""How a service's failure reaches kopf: its two errors as kopf's, which decide the retry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import kopf

from dfm_operator.kernel import InvalidSpec, Retry


@contextlib.contextmanager
def kopf_errors() -> Iterator[None]:
    """InvalidSpec as kopf.PermanentError (not retried until the spec changes), Retry as
    kopf.TemporaryError (retried after its delay)."""
    try:
        yield
    except InvalidSpec as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except Retry as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
