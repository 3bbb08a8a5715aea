"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.

GitHub signs only the body: no timestamp, and not ``X-GitHub-Delivery``. Deduplicating on the
delivery id drops GitHub's own redeliveries, but it does not stop a replay: whoever captured a
signed body can send it again with a new delivery id, and it verifies and is stored as a new
event (see docs/receiver.md). The scheme is the generic HMAC one with GitHub's header names, so
it is that, preset.
"""

from __future__ import annotations

import uuid

from webhook_server.config import SignatureEncoding, VerificationConfig
from webhook_server.verify import generic_hmac
from webhook_server.verify.base import compact_json, json_object

SIGNATURE_HEADER = "X-Hub-Signature-256"
DELIVERY_HEADER = "X-GitHub-Delivery"
EVENT_HEADER = "X-GitHub-Event"
PREFIX = "sha256="

SCHEME = VerificationConfig(
    header=SIGNATURE_HEADER,
    encoding=SignatureEncoding.HEX,
    prefix=PREFIX,
    id_header=DELIVERY_HEADER,
    type_header=EVENT_HEADER,
)

# A key that only one kind of payload carries, so ``dfm send`` can label a sample sensibly.
_EVENT_BY_KEY = (("zen", "ping"), ("pull_request", "pull_request"), ("commits", "push"))

verify = generic_hmac.preset_verifier(SCHEME)


def sign(
    body: bytes,
    secret: bytes,
    settings: VerificationConfig,
    now: float,
    event_id: str | None,
) -> dict[str, str]:
    payload = json_object(body) or {}
    event = next((name for key, name in _EVENT_BY_KEY if key in payload), "ping")
    return generic_hmac.sign(body, secret, SCHEME, now, event_id) | {EVENT_HEADER: event}


def sample(now: float, event_id: str | None) -> tuple[bytes, str]:
    """A ``ping``: what GitHub sends first to a new webhook."""
    body = {"zen": "Keep it logically awesome.", "hook_id": 1, "hook": {"type": "Repository"}}
    return compact_json(body), event_id or str(uuid.uuid4())
