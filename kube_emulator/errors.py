"""Errors: the API server's own (rendered as a Status by kmock) and the client helpers'."""

from __future__ import annotations

from typing import Any

import kmock


class ApiError(Exception):
    """A non-2xx answer to one of the emulator's own HTTP helpers."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def api_error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)
