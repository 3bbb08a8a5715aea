"""Signature verification, one pure module per provider scheme, looked up by :class:`Provider`."""

from __future__ import annotations

from webhook_server.config import Provider
from webhook_server.verify import (
    bearer,
    generic_hmac,
    github,
    highlevel,
    shopify,
    slack,
    standard,
    stripe,
)
from webhook_server.verify.base import Reason, Rejected, Result, Signer, Verified, Verifier

VERIFIERS: dict[Provider, Verifier] = {
    Provider.GITHUB: github.verify,
    Provider.STRIPE: stripe.verify,
    Provider.STANDARD: standard.verify,
    Provider.SHOPIFY: shopify.verify,
    Provider.SLACK: slack.verify,
    Provider.HIGHLEVEL: highlevel.verify,
    Provider.HMAC: generic_hmac.verify,
    Provider.JWT: bearer.verify,
}

SIGNERS: dict[Provider, Signer] = {
    Provider.GITHUB: github.sign,
    Provider.STRIPE: stripe.sign,
    Provider.STANDARD: standard.sign,
    Provider.SHOPIFY: shopify.sign,
    Provider.SLACK: slack.sign,
    Provider.HIGHLEVEL: highlevel.sign,
    Provider.HMAC: generic_hmac.sign,
    Provider.JWT: bearer.sign,
}

__all__ = ["SIGNERS", "VERIFIERS", "Reason", "Rejected", "Result", "Signer", "Verified", "Verifier"]
