"""Reconciliation of a ManagedSecret: generate, rotate, expire, or refresh; write Secret, status.

Everything this needs to decide lives in the written Secret and the status, so a restarted
operator neither rotates twice nor forgets a previous value. Returns when to look again, so the
scheduler sleeps until exactly then instead of polling.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator import oauth
from dfm_operator.api.managedsecret import ManagedSecret, SecretType
from dfm_operator.builders.managedsecret import build_secret, decode_data, owned_by
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kube import KubeError
from dfm_operator.reconcile import (
    Context,
    EmitFn,
    InvalidSpec,
    Retry,
    plain_body,
    validation_message,
    write_status,
)
from dfm_operator.rotation import (
    ACCESS_TOKEN,
    ANNOTATION_LAST_ROTATION,
    ANNOTATION_ROTATE_NOW_HANDLED,
    ANNOTATION_VERSION,
    CURRENT,
    EXPIRES_AT,
    PREVIOUS,
    PREVIOUS_EXPIRES_AT,
    REFRESH_TOKEN,
    SCOPE,
    TOKEN_TYPE,
    Action,
    SecretState,
    encode_random,
    forced,
    next_rotation,
    next_wakeup,
    oauth_action,
    random_action,
    rfc3339,
    rotated_data,
    without_previous,
)

ROTATION_FAILED = "RotationFailed"
ANNOTATION_BOOTSTRAP_HASH = "dfm.dev/bootstrap-refresh-token-sha256"
REASON_CURRENT = "Current"
REASON_TOKEN_VALID = "TokenValid"
REASON_TOKEN_EXPIRED = "TokenExpired"
REASON_SECRET_CONFLICT = "SecretOwnedElsewhere"


@dataclass
class Outcome:
    ready: bool
    next_at: datetime | None


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _read_state(ctx: Context, source: ManagedSecret) -> tuple[SecretState | None, bool]:
    """The written Secret's state, and whether someone else owns a Secret of that name."""
    secret = await ctx.kube.get("v1", "Secret", source.metadata.namespace, source.secret_name)
    if secret is None:
        return None, False
    if not owned_by(secret, source):
        return None, True
    annotations = dict((secret.get("metadata") or {}).get("annotations") or {})
    return SecretState(decode_data(secret), annotations), False


def _annotations(
    state: SecretState | None, version: int, last_rotation: datetime, handled: str | None
) -> dict[str, str]:
    kept = dict(state.annotations) if state else {}
    kept = {k: v for k, v in kept.items() if k.startswith(f"{c.GROUP}/")}
    kept[ANNOTATION_VERSION] = str(version)
    kept[ANNOTATION_LAST_ROTATION] = rfc3339(last_rotation)
    if handled:
        kept[ANNOTATION_ROTATE_NOW_HANDLED] = handled
    return kept


def _status_fields(
    source: ManagedSecret, state: SecretState | None, failures: int, next_at: datetime | None
) -> dict[str, Any]:
    previous_expires = state.previous_expires_at if state and state.data.get(PREVIOUS) else None
    return {
        "currentVersion": state.version if state else None,
        "lastRotationTime": rfc3339(state.last_rotation) if state and state.last_rotation else None,
        "nextRotationTime": rfc3339(next_at) if next_at else None,
        "previousExpiresAt": rfc3339(previous_expires) if previous_expires else None,
        "tokenExpiresAt": rfc3339(state.token_expires_at)
        if state and state.token_expires_at and source.spec.type is SecretType.OAUTH2
        else None,
        "consecutiveFailures": failures,
    }


def _record_metrics(
    ctx: Context, source: ManagedSecret, state: SecretState | None, next_at: datetime | None
) -> None:
    ns, name = source.metadata.namespace, source.metadata.name
    if next_at is not None:
        ctx.metrics.next_rotation.labels(ns, name).set(next_at.timestamp())
    if source.spec.oauth2 is not None:
        ctx.metrics.refresh_before.labels(ns, name).set(source.spec.oauth2.refresh_before_seconds)
        if state is not None and state.token_expires_at is not None:
            ctx.metrics.token_expiry.labels(ns, name).set(state.token_expires_at.timestamp())


async def _write(
    ctx: Context, source: ManagedSecret, data: dict[str, str], annotations: dict[str, str]
) -> SecretState:
    await ctx.kube.apply(build_secret(source, data, annotations, ctx.settings.version))
    return SecretState(data, annotations)


async def _random(
    ctx: Context, source: ManagedSecret, state: SecretState | None, emit: EmitFn, now: datetime
) -> tuple[SecretState | None, list[ConditionUpdate], int]:
    spec = source.spec
    assert spec.random is not None
    rotate_now = forced(source.metadata.annotations, state)
    action = random_action(spec.rotation, state, rotate_now, now)
    if action in (Action.CREATE, Action.ROTATE):
        value = encode_random(spec.random, secrets.token_bytes(spec.random.length))
        grace = spec.rotation.grace if spec.rotation else timedelta(0)
        data = rotated_data(state, value, grace, now)
        if grace <= timedelta(0):
            data = {CURRENT: value}
        version = (state.version if state else 0) + 1
        handled = rotate_now or (
            state.annotations.get(ANNOTATION_ROTATE_NOW_HANDLED) if state else None
        )
        state = await _write(ctx, source, data, _annotations(state, version, now, handled))
        ctx.metrics.rotations.labels("random", "success").inc()
        expires = data.get(PREVIOUS_EXPIRES_AT)
        until = f"; previous valid until {expires}" if expires else ""
        emit(
            "Normal", "Rotated", f"version {version} written to Secret {source.secret_name}{until}"
        )
    elif action is Action.EXPIRE_PREVIOUS and state is not None:
        state = await _write(ctx, source, without_previous(state), dict(state.annotations))
    conditions = [
        ConditionUpdate(c.READY, True, REASON_CURRENT, f"version {state.version if state else 0}"),
        ConditionUpdate(ROTATION_FAILED, False, REASON_CURRENT, ""),
    ]
    return state, conditions, 0


async def _client_credentials(ctx: Context, source: ManagedSecret) -> tuple[str, str] | None:
    assert source.spec.oauth2 is not None
    secret = await ctx.kube.get(
        "v1", "Secret", source.metadata.namespace, source.spec.oauth2.client_secret_ref.name
    )
    data = decode_data(secret) if secret else {}
    if not data.get("client_id") or not data.get("client_secret"):
        return None
    return data["client_id"], data["client_secret"]


async def _bootstrap_refresh_token(ctx: Context, source: ManagedSecret) -> str | None:
    assert source.spec.oauth2 is not None
    ref = source.spec.oauth2.refresh_token_secret_ref
    if ref is None:
        return None
    secret = await ctx.kube.get("v1", "Secret", source.metadata.namespace, ref.name)
    return decode_data(secret).get(ref.key) if secret else None


async def _oauth2(
    ctx: Context,
    source: ManagedSecret,
    body: Mapping[str, Any],
    state: SecretState | None,
    emit: EmitFn,
    now: datetime,
    session: aiohttp.ClientSession,
) -> tuple[SecretState | None, list[ConditionUpdate], int, datetime | None]:
    settings = source.spec.oauth2
    assert settings is not None
    failures = int(((body.get("status") or {}).get("consecutiveFailures")) or 0)
    margin = timedelta(seconds=settings.refresh_before_seconds)
    rotate_now = forced(source.metadata.annotations, state)
    token_valid = bool(state and state.token_expires_at and state.token_expires_at > now)

    def held(reason: str, message: str) -> list[ConditionUpdate]:
        return [
            ConditionUpdate(
                c.READY, token_valid, REASON_TOKEN_VALID if token_valid else reason, message
            ),
            ConditionUpdate(ROTATION_FAILED, True, reason, message),
        ]

    bootstrap = await _bootstrap_refresh_token(ctx, source)
    bootstrap_changed = bool(
        bootstrap
        and state
        and state.annotations.get(ANNOTATION_BOOTSTRAP_HASH) != _fingerprint(bootstrap)
    )
    previous_reason = None
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == ROTATION_FAILED and condition.get("status") == "True":
            previous_reason = condition.get("reason")
    # A rejected refresh token is not retried until someone changes something.
    if (
        previous_reason in ("RefreshTokenRejected", "ClientRejected", "TokenRequestRejected")
        and not bootstrap_changed
        and rotate_now is None
        and body.get("metadata", {}).get("generation")
        == (body.get("status") or {}).get("observedGeneration")
    ):
        return (
            state,
            held(previous_reason, "waiting for a new refresh token or spec"),
            failures,
            None,
        )

    action = oauth_action(margin, state, rotate_now, now)
    if action is Action.NONE and not bootstrap_changed:
        message = (
            f"token valid until {rfc3339(state.token_expires_at)}"
            if (state and state.token_expires_at)
            else "token valid"
        )
        return (
            state,
            [
                ConditionUpdate(c.READY, True, REASON_TOKEN_VALID, message),
                ConditionUpdate(ROTATION_FAILED, False, REASON_TOKEN_VALID, ""),
            ],
            0,
            None,
        )

    credentials = await _client_credentials(ctx, source)
    if credentials is None:
        message = f"Secret {settings.client_secret_ref.name} with client_id and client_secret"
        return state, held(c.REASON_SECRET_NOT_FOUND, f"{message} not found"), failures + 1, None
    refresh_token = (
        bootstrap
        if (bootstrap_changed or state is None or not state.data.get(REFRESH_TOKEN))
        else state.data[REFRESH_TOKEN]
    )
    try:
        token = await oauth.request_token(
            session,
            token_url=settings.token_url,
            client_id=credentials[0],
            client_secret=credentials[1],
            client_auth=settings.client_auth.value,
            refresh_token=refresh_token,
            scopes=settings.scopes,
            now=now,
        )
    except oauth.TokenRejected as exc:
        ctx.metrics.rotations.labels("oauth2", "failure").inc()
        emit("Warning", exc.reason, f"the token endpoint refused the request ({exc.code})")
        return state, held(exc.reason, f"token endpoint answered {exc.code}"), failures + 1, None
    except oauth.TokenEndpointUnavailable as exc:
        ctx.metrics.rotations.labels("oauth2", "failure").inc()
        delay = exc.retry_after or oauth.backoff_seconds(failures + 1)
        emit(
            "Warning",
            ROTATION_FAILED,
            f"token endpoint unavailable ({exc.code}); retrying in {int(delay)}s",
        )
        return (
            state,
            held("TokenEndpointUnavailable", f"token endpoint unavailable ({exc.code})"),
            failures + 1,
            now + timedelta(seconds=delay),
        )

    data = {ACCESS_TOKEN: token.access_token, TOKEN_TYPE: token.token_type}
    if token.expires_at is not None:
        data[EXPIRES_AT] = rfc3339(token.expires_at)
    # The rotated refresh token goes into the same write as the access token that came with it:
    # nothing can use the new access token before the new refresh token is stored.
    new_refresh = token.refresh_token or refresh_token
    if new_refresh:
        data[REFRESH_TOKEN] = new_refresh
    if token.scope:
        data[SCOPE] = token.scope
    version = (state.version if state else 0) + 1
    handled = rotate_now or (
        state.annotations.get(ANNOTATION_ROTATE_NOW_HANDLED) if state else None
    )
    annotations = _annotations(state, version, now, handled)
    if bootstrap:
        annotations[ANNOTATION_BOOTSTRAP_HASH] = _fingerprint(bootstrap)
    state = await _write(ctx, source, data, annotations)
    ctx.metrics.rotations.labels("oauth2", "success").inc()
    until = f" valid until {data[EXPIRES_AT]}" if EXPIRES_AT in data else ""
    emit("Normal", "TokenRefreshed", f"access token version {version}{until}")
    return (
        state,
        [
            ConditionUpdate(c.READY, True, REASON_TOKEN_VALID, f"token{until}"),
            ConditionUpdate(ROTATION_FAILED, False, REASON_TOKEN_VALID, ""),
        ],
        0,
        None,
    )


async def reconcile_managed_secret(
    ctx: Context, body: Mapping[str, Any], emit: EmitFn, session: aiohttp.ClientSession
) -> Outcome:
    """Converge one ManagedSecret; raises InvalidSpec (permanent) or Retry (transient)."""
    meta = body.get("metadata") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    started = time.perf_counter()
    result = "error"
    try:
        async with ctx.lock(f"managedsecret:{key}"):
            outcome = await _reconcile(ctx, body, emit, session)
        result = "ready" if outcome.ready else "not_ready"
        return outcome
    except InvalidSpec:
        result = "invalid"
        raise
    finally:
        ctx.metrics.reconciliations.labels(c.MANAGED_SECRET, result).inc()
        ctx.metrics.duration.labels(c.MANAGED_SECRET).observe(time.perf_counter() - started)


async def _reconcile(
    ctx: Context, body: Mapping[str, Any], emit: EmitFn, session: aiohttp.ClientSession
) -> Outcome:
    plain = plain_body(body)
    try:
        source = ManagedSecret.model_validate(plain)
    except ValidationError as exc:
        message = validation_message(exc)
        invalid = [ConditionUpdate(c.READY, False, c.REASON_INVALID_SPEC, message)]
        await write_status(ctx, c.MANAGED_SECRET, body, invalid, {}, emit)
        raise InvalidSpec(message) from exc

    now = ctx.clock()
    try:
        state, conflict = await _read_state(ctx, source)
        if conflict:
            message = f"Secret {source.secret_name} exists and is not owned by this ManagedSecret"
            conditions = [ConditionUpdate(c.READY, False, REASON_SECRET_CONFLICT, message)]
            await write_status(ctx, c.MANAGED_SECRET, body, conditions, {}, emit)
            return Outcome(False, None)
        retry_at: datetime | None = None
        if source.spec.type is SecretType.RANDOM:
            state, conditions, failures = await _random(ctx, source, state, emit, now)
            refresh_before = None
        else:
            state, conditions, failures, retry_at = await _oauth2(
                ctx, source, body, state, emit, now, session
            )
            assert source.spec.oauth2 is not None
            refresh_before = timedelta(seconds=source.spec.oauth2.refresh_before_seconds)
        next_at = next_wakeup(source.spec.rotation, state, refresh_before, now)
        if retry_at is not None:
            next_at = min(retry_at, next_at) if next_at else retry_at
        planned = next_rotation(source.spec.rotation, state.last_rotation if state else None)
        if refresh_before is not None and state is not None and state.token_expires_at:
            planned = state.token_expires_at - refresh_before
        fields = _status_fields(source, state, failures, retry_at or planned)
        ready = await write_status(ctx, c.MANAGED_SECRET, body, conditions, fields, emit)
        _record_metrics(ctx, source, state, retry_at or planned)
    except KubeError as exc:
        raise Retry(str(exc)) from exc
    return Outcome(ready, next_at)
