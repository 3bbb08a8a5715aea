"""`dfm send`: sign an event exactly as the provider would and POST it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import aiohttp
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from dfm.local import source_configs
from dfm.manifests import ManifestError
from dfm.samples import sample_event
from webhook_server.config import Provider, SourceConfig
from webhook_server.verify.registry import PROVIDERS, Signing


def pick_source(sources: list[SourceConfig], name: str | None) -> SourceConfig:
    if name is None:
        if len(sources) > 1:
            names = ", ".join(s.name for s in sources)
            raise ManifestError(f"several WebhookSources found ({names}); choose one with --name")
        return sources[0]
    for source in sources:
        if source.name == name or source.key == name:
            return source
    raise ManifestError(f"no WebhookSource named {name!r}")


SEND_TIMEOUT_SECONDS = 30.0


def signing_secret(source: SourceConfig, private_key: str | None) -> bytes:
    signing = PROVIDERS[source.provider].signing
    if signing is Signing.PRIVATE_KEY:
        if private_key is None:
            raise ManifestError(
                f"{source.provider.value} deliveries are signed with the provider's private key; "
                "pass --private-key with a key whose public half is in "
                "spec.verification.publicKey"
            )
        key = Path(private_key).read_bytes()
        try:
            serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ManifestError(f"--private-key {private_key}: not a PEM private key") from exc
        return key
    if signing is Signing.BEARER_TOKEN:
        return b""
    values = [s.value for s in source.verification.secrets if s.value is not None]
    if not values:
        raise ManifestError(f"{source.key}: no secret value to sign with")
    return values[0].encode()


def build_request(
    source: SourceConfig,
    body: bytes,
    event_id: str | None,
    *,
    private_key: str | None = None,
    token: str | None = None,
    now: float | None = None,
) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, query string) of the request the provider would send: the body changes
    when the signature lives in it (Mailgun), the query string when the provider adds to the URL
    (Twilio's bodySHA256)."""
    now = time.time() if now is None else now
    secret = signing_secret(source, private_key)
    spec = PROVIDERS[source.provider]
    try:
        if spec.sign_body is not None:
            body = spec.sign_body(body, secret, source.verification, now)
        headers = spec.sign(body, secret, source.verification, now, event_id)
    except ValueError as exc:
        # The key parsed (signing_secret checked it): a key of the wrong kind, or a body the
        # provider's scheme cannot carry.
        where = f"--private-key {private_key}" if private_key else source.key
        raise ManifestError(f"{where}: {exc}") from exc
    headers.setdefault("Content-Type", "application/json")
    if source.auth is not None or source.provider is Provider.JWT:
        if not token:
            raise ManifestError(f"{source.key} requires a bearer token; pass --token")
        headers["Authorization"] = f"Bearer {token}"
    query = spec.query(body, source.verification) if spec.query is not None else ""
    return body, headers, query


async def send(
    paths: list[str],
    *,
    name: str | None,
    event_file: str | None,
    url: str | None,
    delivery_id: str | None = None,
    private_key: str | None,
    token: str | None,
) -> tuple[int, str]:
    sources, _ = source_configs(paths)
    source = pick_source(sources, name)
    if event_file is not None:
        body = await asyncio.to_thread(Path(event_file).read_bytes)
        event_id = delivery_id
    else:
        body, event_id = sample_event(source.provider, event_id=delivery_id)
    body, headers, query = build_request(
        source, body, event_id, private_key=private_key, token=token
    )
    target = url or f"http://127.0.0.1:8080{source.route}"
    if not target.startswith(("http://", "https://")):
        raise ManifestError(f"--url {target}: not an http:// or https:// URL")
    if query:
        target += ("&" if "?" in target else "?") + query
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(target, data=body, headers=headers) as response,
        ):
            text = await response.text()
    except TimeoutError as exc:
        raise ManifestError(f"{target}: no answer within {SEND_TIMEOUT_SECONDS:g}s") from exc
    except (aiohttp.ClientError, ValueError) as exc:
        raise ManifestError(f"{target}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(text), indent=2)
    return response.status, text
