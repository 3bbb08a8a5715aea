"""Reconciliation of a ManagedSecret: generate, rotate, expire, or refresh; write Secret, status.

Everything this needs to decide lives in the written Secret and the status, so a restarted
operator neither rotates twice nor forgets a previous value. Returns when to look again, so the
scheduler sleeps until exactly then instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
from croniter import CroniterError
from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator import oauth
from dfm_operator.api.managedsecret import ManagedSecret, SecretType
from dfm_operator.builders.managedsecret import build_secret, decode_data, owned_by
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kube import Invalid, KubeError
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
    ANNOTATION_SCHEDULED_SLOT,
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
    refresh_margin,
    retry_wakeup,
    rfc3339,
    rotated_data,
    scheduled_slot,
    without_previous,
)

T = TypeVar("T")

ROTATION_FAILED = "RotationFailed"
ANNOTATION_BOOTSTRAP_HASH = "dfm.dev/bootstrap-refresh-token-sha256"
REASON_CURRENT = "Current"
REASON_TOKEN_VALID = "TokenValid"
REASON_TOKEN_EXPIRED = "TokenExpired"
REASON_SECRET_CONFLICT = "SecretOwnedElsewhere"
# The token request that was refused, as a fingerprint of everything it was made from (client
# credentials, refresh token, spec generation): the same request is not sent again until one of
# them changes, and after a restart too, since it is kept on the written Secret.
ANNOTATION_REJECTED_REQUEST = "dfm.dev/rejected-request-sha256"
REJECTION_REASONS = frozenset(
    {
        oauth.REASON_REFRESH_TOKEN_REJECTED,
        oauth.REASON_CLIENT_REJECTED,
        oauth.REASON_TOKEN_REQUEST_REJECTED,
    }
)

# A refused refresh token (invalid_grant) is dead for good: it waits for a new one. A refused
# client or request may be the provider's misconfiguration, fixed on its side without any change
# here: it is asked again this long after the refusal.
REJECTED_CLIENT_RETRY = timedelta(hours=1)

# Never look again sooner than this: a decision that keeps coming out "due now" must not spin.
MIN_WAKEUP = timedelta(seconds=1)
# A Secret write that fails for a transient reason is retried in-process this many times, these
# seconds apart: the write may carry a rotated refresh token that exists nowhere else.
WRITE_RETRY_DELAYS = (0.5, 1.0, 2.0)
TRANSIENT_KUBE_STATUSES = frozenset({0, 409, 429})
# How long a cancelled reconcile still waits for its token exchange and write to finish: within
# kopf's cancellation timeout for the scheduler (handlers.managedsecret), so nothing is orphaned.
# kopf's cancellation backoff, before it, is when a stopping scheduler normally finishes.
FINISH_SECONDS = 4.0


@dataclass
class Outcome:
    ready: bool
    next_at: datetime | None


@dataclass
class _Step:
    """One kind's result: the state written, conditions, and when to try again after a failure.

    ``waiting``: nothing will change until the user does something (a new refresh token, client
    credentials, spec or rotate-now), which wakes the scheduler; until then, no wake-up at all.
    """

    state: SecretState | None
    conditions: list[ConditionUpdate]
    failures: int
    retry_at: datetime | None = None
    waiting: bool = False


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
    state: SecretState | None,
    version: int,
    last_rotation: datetime,
    handled: str | None,
    slot: datetime | None = None,
) -> dict[str, str]:
    kept = dict(state.annotations) if state else {}
    kept = {k: v for k, v in kept.items() if k.startswith(f"{c.GROUP}/")}
    kept.pop(ANNOTATION_REJECTED_REQUEST, None)
    kept[ANNOTATION_VERSION] = str(version)
    kept[ANNOTATION_LAST_ROTATION] = rfc3339(last_rotation)
    if handled:
        kept[ANNOTATION_ROTATE_NOW_HANDLED] = handled
    if slot is not None:
        kept[ANNOTATION_SCHEDULED_SLOT] = rfc3339(slot)
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
        # The margin actually used (clamped for short-lived tokens), so the expiry alert fires
        # only when a refresh is overdue.
        margin = refresh_margin(timedelta(seconds=source.spec.oauth2.refresh_before_seconds), state)
        ctx.metrics.refresh_before.labels(ns, name).set(margin.total_seconds())
        if state is not None and state.token_expires_at is not None:
            ctx.metrics.token_expiry.labels(ns, name).set(state.token_expires_at.timestamp())


def forget_metrics(ctx: Context, namespace: str, name: str) -> None:
    """Drop a deleted ManagedSecret's series: a token expiry left behind alerts forever."""
    for gauge in (ctx.metrics.next_rotation, ctx.metrics.token_expiry, ctx.metrics.refresh_before):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)


async def _write(
    ctx: Context, source: ManagedSecret, data: dict[str, str], annotations: dict[str, str]
) -> SecretState:
    """Apply the Secret, retrying transient API errors in-process a few times.

    A refreshed token's write carries the provider's rotated refresh token, and the old one is
    already dead: handing the failure to the scheduler's next attempt would lose it for good.
    """
    secret = build_secret(source, data, annotations, ctx.settings.version)
    for delay in (*WRITE_RETRY_DELAYS, None):
        try:
            await ctx.kube.apply(secret)
            break
        except KubeError as exc:
            transient = exc.status in TRANSIENT_KUBE_STATUSES or exc.status >= 500
            if delay is None or not transient:
                raise
            await asyncio.sleep(delay)
    return SecretState(data, annotations)


async def _finish_even_if_cancelled(work: Awaitable[T]) -> T:
    """Await ``work``; if the caller is cancelled meanwhile, let ``work`` finish (for a while).

    A token exchange and the write of its result are one step: the provider may already have
    retired the refresh token it was given, so a cancellation between the two (shutdown, pause,
    deletion) would lose the only valid refresh token.
    """
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=FINISH_SECONDS)
        task.cancel()  # never left writing behind a scheduler that is gone
        raise


async def _random(
    ctx: Context, source: ManagedSecret, state: SecretState | None, emit: EmitFn, now: datetime
) -> _Step:
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
        slot = scheduled_slot(spec.rotation, state, now)
        annotations = _annotations(state, version, now, handled, slot)
        state = await _write(ctx, source, data, annotations)
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
    return _Step(state, conditions, 0)


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


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _request_fingerprint(
    generation: object, credentials: tuple[str, str], refresh_token: str | None
) -> str:
    return _fingerprint(json.dumps([generation, *credentials, refresh_token]))


async def _record_failure(
    ctx: Context,
    source: ManagedSecret,
    state: SecretState | None,
    rotate_now: str | None,
    rejected: str | None,
) -> SecretState | None:
    """Write down, on the Secret, what a failed attempt settled: the rotate-now value it acted
    on (one attempt per value, success or not) and the fingerprint of a refused request.

    Without a Secret yet there is nowhere to write it, and an empty Secret would look usable to
    whatever mounts it: nothing is written. The daemon still waits for a change instead of
    retrying, so the cost is one more attempt after an operator restart.
    """
    if state is None:
        return None
    if rejected is None and rotate_now is None:
        return state
    annotations = dict(state.annotations)
    if rotate_now is not None:
        annotations[ANNOTATION_ROTATE_NOW_HANDLED] = rotate_now
    if rejected is not None:
        annotations[ANNOTATION_REJECTED_REQUEST] = rejected
    if annotations == state.annotations:
        return state
    return await _write(ctx, source, dict(state.data), annotations)


async def _oauth2(
    ctx: Context,
    source: ManagedSecret,
    body: Mapping[str, Any],
    state: SecretState | None,
    emit: EmitFn,
    now: datetime,
    session: aiohttp.ClientSession,
) -> _Step:
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

    def backoff(delay: float | None = None) -> datetime:
        return now + timedelta(seconds=delay or oauth.backoff_seconds(failures + 1))

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
    rejected_before = previous_reason in REJECTION_REASONS and rotate_now is None

    action = oauth_action(margin, state, rotate_now, now, source.spec.rotation)
    if action is Action.NONE and not bootstrap_changed and not rejected_before:
        message = (
            f"token valid until {rfc3339(state.token_expires_at)}"
            if (state and state.token_expires_at)
            else "token valid"
        )
        return _Step(
            state,
            [
                ConditionUpdate(c.READY, True, REASON_TOKEN_VALID, message),
                ConditionUpdate(ROTATION_FAILED, False, REASON_TOKEN_VALID, ""),
            ],
            0,
        )

    credentials = await _client_credentials(ctx, source)
    if credentials is None:
        # Creating or changing that Secret wakes the scheduler; the back-off is a safety net.
        message = f"Secret {settings.client_secret_ref.name} with client_id and client_secret"
        return _Step(
            state,
            held(c.REASON_SECRET_NOT_FOUND, f"{message} not found"),
            failures + 1,
            retry_at=backoff(),
        )
    refresh_token = (
        bootstrap
        if (bootstrap_changed or state is None or not state.data.get(REFRESH_TOKEN))
        else state.data[REFRESH_TOKEN]
    )
    request = _request_fingerprint(
        (body.get("metadata") or {}).get("generation"), credentials, refresh_token
    )
    # A refused request is not sent again until something it was made from changes (or a new
    # rotate-now asks for one more attempt): the provider would refuse it again. Except a
    # refused client or request, which is asked again hourly (REJECTED_CLIENT_RETRY).
    recorded, _, refused_at = (
        state.annotations.get(ANNOTATION_REJECTED_REQUEST, "") if state else ""
    ).partition("@")
    if (
        rejected_before
        and previous_reason is not None
        and state is not None
        and recorded == request
    ):
        wait = "waiting for a new refresh token, client credentials or spec"
        if previous_reason == oauth.REASON_REFRESH_TOKEN_REJECTED:
            return _Step(state, held(previous_reason, wait), failures, waiting=True)
        again = _parse_time(refused_at) + REJECTED_CLIENT_RETRY if refused_at else now
        if again > now:
            return _Step(state, held(previous_reason, wait), failures, retry_at=again)

    async def exchange_and_write() -> tuple[SecretState, str]:
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
        data = {ACCESS_TOKEN: token.access_token, TOKEN_TYPE: token.token_type}
        if token.expires_at is not None:
            data[EXPIRES_AT] = rfc3339(token.expires_at)
        # The rotated refresh token goes into the same write as the access token that came with
        # it: nothing can use the new access token before the new refresh token is stored.
        new_refresh = token.refresh_token or refresh_token
        if new_refresh:
            data[REFRESH_TOKEN] = new_refresh
        if token.scope:
            data[SCOPE] = token.scope
        version = (state.version if state else 0) + 1
        handled = rotate_now or (
            state.annotations.get(ANNOTATION_ROTATE_NOW_HANDLED) if state else None
        )
        slot = scheduled_slot(source.spec.rotation, state, now)
        annotations = _annotations(state, version, now, handled, slot)
        if bootstrap:
            annotations[ANNOTATION_BOOTSTRAP_HASH] = _fingerprint(bootstrap)
        written = await _write(ctx, source, data, annotations)
        until = f" valid until {data[EXPIRES_AT]}" if EXPIRES_AT in data else ""
        return written, until

    try:
        written, until = await _finish_even_if_cancelled(exchange_and_write())
    except oauth.TokenRejected as exc:
        ctx.metrics.rotations.labels("oauth2", "failure").inc()
        emit("Warning", exc.reason, f"the token endpoint refused the request ({exc.code})")
        state = await _record_failure(ctx, source, state, rotate_now, f"{request}@{rfc3339(now)}")
        message = f"token endpoint answered {exc.code}"
        if exc.reason == oauth.REASON_REFRESH_TOKEN_REJECTED:
            return _Step(state, held(exc.reason, message), failures + 1, waiting=True)
        return _Step(
            state, held(exc.reason, message), failures + 1, retry_at=now + REJECTED_CLIENT_RETRY
        )
    except oauth.TokenEndpointUnavailable as exc:
        ctx.metrics.rotations.labels("oauth2", "failure").inc()
        retry_at = backoff(exc.retry_after)
        emit(
            "Warning",
            ROTATION_FAILED,
            f"token endpoint unavailable ({exc.code}); "
            f"retrying in {int((retry_at - now).total_seconds())}s",
        )
        state = await _record_failure(ctx, source, state, rotate_now, None)
        return _Step(
            state,
            held("TokenEndpointUnavailable", f"token endpoint unavailable ({exc.code})"),
            failures + 1,
            retry_at=retry_at,
        )

    ctx.metrics.rotations.labels("oauth2", "success").inc()
    emit("Normal", "TokenRefreshed", f"access token version {written.version}{until}")
    return _Step(
        written,
        [
            ConditionUpdate(c.READY, True, REASON_TOKEN_VALID, f"token{until}"),
            ConditionUpdate(ROTATION_FAILED, False, REASON_TOKEN_VALID, ""),
        ],
        0,
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
        await _invalid(ctx, body, emit, validation_message(exc))
        raise InvalidSpec(validation_message(exc)) from exc

    now = ctx.clock()
    try:
        state, conflict = await _read_state(ctx, source)
        if conflict:
            message = f"Secret {source.secret_name} exists and is not owned by this ManagedSecret"
            conditions = [ConditionUpdate(c.READY, False, REASON_SECRET_CONFLICT, message)]
            await write_status(ctx, c.MANAGED_SECRET, body, conditions, {}, emit)
            return Outcome(False, None)
        refresh_before: timedelta | None = None
        if source.spec.type is SecretType.RANDOM:
            step = await _random(ctx, source, state, emit, now)
            state = step.state
            planned = next_rotation(
                source.spec.rotation,
                state.last_rotation if state else None,
                state.scheduled_slot if state else None,
            )
        else:
            step = await _oauth2(ctx, source, body, state, emit, now, session)
            state = step.state
            assert source.spec.oauth2 is not None
            refresh_before = timedelta(seconds=source.spec.oauth2.refresh_before_seconds)
            planned = next_wakeup(source.spec.rotation, state, refresh_before, now)
        next_at = retry_wakeup(
            next_wakeup(source.spec.rotation, state, refresh_before, now),
            step.retry_at,
            now,
            MIN_WAKEUP,
        )
        if step.waiting:
            # Nothing to try until a change; but Ready must turn False when the token runs out.
            expires = state.token_expires_at if state else None
            next_at = expires if expires is not None and expires > now else None
            planned = None
        shown = step.retry_at or planned
        fields = _status_fields(source, state, step.failures, shown)
        ready = await write_status(ctx, c.MANAGED_SECRET, body, step.conditions, fields, emit)
        _record_metrics(ctx, source, state, shown)
    except CroniterError as exc:
        # The model checks schedules with croniter too; this is the safety net for one that
        # only fails from some starting time: say so instead of crashing the scheduler.
        message = f"spec.rotation.schedule: {exc}"
        await _invalid(ctx, body, emit, message)
        raise InvalidSpec(message) from exc
    except Invalid as exc:
        # The API server refuses the Secret as built (an admission policy, say): retrying the
        # same object cannot help. Reported until the spec, the policy or the operator changes.
        await _invalid(ctx, body, emit, str(exc), c.REASON_APPLY_FAILED)
        raise InvalidSpec(str(exc)) from exc
    except KubeError as exc:
        raise Retry(str(exc)) from exc
    return Outcome(ready, next_at)


async def _invalid(
    ctx: Context,
    body: Mapping[str, Any],
    emit: EmitFn,
    message: str,
    reason: str = c.REASON_INVALID_SPEC,
) -> None:
    invalid = [ConditionUpdate(c.READY, False, reason, message)]
    try:
        await write_status(ctx, c.MANAGED_SECRET, body, invalid, {}, emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc
