"""Signature verification, one pure module per provider scheme, looked up by :class:`Provider`
through the registry (``webhook_server.verify.registry``)."""

from __future__ import annotations

from webhook_server.verify.base import Reason, Rejected, Result, Signer, Verified, Verifier
from webhook_server.verify.registry import PROVIDERS, SIGNERS, VERIFIERS

__all__ = [
    "PROVIDERS",
    "SIGNERS",
    "VERIFIERS",
    "Reason",
    "Rejected",
    "Result",
    "Signer",
    "Verified",
    "Verifier",
]
