"""ManagedSecret: generate, rotate, expire, or refresh; write the Secret and status.

Everything this needs to decide lives in the written Secret and the status, so a restarted
operator neither rotates twice nor forgets a previous value. A reconciliation returns when to look
again, and :func:`run_scheduler` sleeps until exactly then (or until woken) instead of polling.

The oauth2 path is cert-manager's shape: gather the inputs (:func:`_gather_oauth2`), decide with
a pure plan (:func:`plan_oauth2`, then :func:`after_rejection` / :func:`after_unavailable` once
the token endpoint has answered), execute (:func:`_exchange`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import aiohttp
from croniter import CroniterError
from pydantic import ValidationError

from dfm_operator import constants as c
from dfm_operator import oauth
from dfm_operator.api.common import parse_rfc3339, rfc3339
from dfm_operator.api.managedsecret import (
    ManagedSecret,
    ManagedSecretStatus,
    Rotation,
    SecretType,
)
from dfm_operator.builders.managedsecret import build_secret, decode_data, owned_by
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.kernel import (
    Context,
    EmitFn,
    InvalidSpec,
    Retry,
    measured,
    object_key,
    plain_body,
    remove_series,
    validation_message,
    write_status,
)
from dfm_operator.kube import Invalid, KubeError
from dfm_operator.rotation import (
    ANNOTATION_LAST_ROTATION,
    ANNOTATION_ROTATE_NOW_HANDLED,
    ANNOTATION_SCHEDULED_SLOT,
    ANNOTATION_VERSION,
    EXPIRES_AT,
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
    rotated_data,
    scheduled_slot,
    without_previous,
)
from webhook_server.secrets import ACCESS_TOKEN, CURRENT, PREVIOUS, PREVIOUS_EXPIRES_AT

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
) -> ManagedSecretStatus:
    previous_expires = state.previous_expires_at if state and state.data.get(PREVIOUS) else None
    oauth2 = source.spec.type is SecretType.OAUTH2
    return ManagedSecretStatus(
        current_version=state.version if state else None,
        last_rotation_time=state.last_rotation if state else None,
        next_rotation_time=next_at,
        previous_expires_at=previous_expires,
        token_expires_at=state.token_expires_at if state and oauth2 else None,
        consecutive_failures=failures,
    )


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
    m = ctx.metrics
    remove_series((m.next_rotation, m.token_expiry, m.refresh_before), namespace, name)


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


@dataclass(frozen=True)
class OAuthInputs:
    """Everything an oauth2 decision is made from, read before deciding."""

    state: SecretState | None
    failures: int  # status.consecutiveFailures
    rotate_now: str | None  # a dfm.dev/rotate-now value still to act on
    bootstrap: str | None  # the refresh token of refreshTokenSecretRef, if any
    previous_reason: str | None  # the reason of RotationFailed=True, if it is
    generation: object
    refresh_before: timedelta
    rotation: Rotation | None
    client_secret_name: str
    # The client credentials Secret is read only when a token is needed (see NEEDS_CREDENTIALS).
    credentials: tuple[str, str] | None = None
    credentials_read: bool = False

    @property
    def token_valid_at(self) -> datetime | None:
        return self.state.token_expires_at if self.state else None

    @property
    def bootstrap_changed(self) -> bool:
        return bool(
            self.bootstrap
            and self.state
            and self.state.annotations.get(ANNOTATION_BOOTSTRAP_HASH)
            != _fingerprint(self.bootstrap)
        )

    @property
    def rejected_before(self) -> bool:
        """The last request was refused, and no new rotate-now asks for another attempt."""
        return self.previous_reason in REJECTION_REASONS and self.rotate_now is None

    def refresh_token(self) -> str | None:
        """The bootstrap token when it is new or nothing else is there, else the stored one."""
        state = self.state
        if self.bootstrap_changed or state is None or not state.data.get(REFRESH_TOKEN):
            return self.bootstrap
        return state.data[REFRESH_TOKEN]

    def request(self) -> str:
        """The fingerprint of the token request these inputs make (ANNOTATION_REJECTED_REQUEST)."""
        assert self.credentials is not None
        return _request_fingerprint(self.generation, self.credentials, self.refresh_token())


@dataclass(frozen=True)
class Exchange:
    """Ask the token endpoint, with this refresh token (None: client credentials grant)."""

    refresh_token: str | None
    request: str


class _NeedsCredentials:
    """The plan needs the client credentials Secret before it can decide."""


NEEDS_CREDENTIALS = _NeedsCredentials()
OAuthPlan = _Step | Exchange | _NeedsCredentials


def _held(inputs: OAuthInputs, now: datetime, reason: str, message: str) -> list[ConditionUpdate]:
    """RotationFailed=True; Ready stays True while the current token is still valid."""
    expires = inputs.token_valid_at
    valid = bool(expires and expires > now)
    return [
        ConditionUpdate(c.READY, valid, REASON_TOKEN_VALID if valid else reason, message),
        ConditionUpdate(ROTATION_FAILED, True, reason, message),
    ]


def _backoff(inputs: OAuthInputs, now: datetime, delay: float | None = None) -> datetime:
    return now + timedelta(seconds=delay or oauth.backoff_seconds(inputs.failures + 1))


def plan_oauth2(inputs: OAuthInputs, now: datetime) -> OAuthPlan:
    """What an oauth2 ManagedSecret does now: nothing (the token is valid), wait (a refused
    request, a missing client Secret), or exchange. Pure: (inputs, now) -> decision."""
    state = inputs.state
    action = oauth_action(inputs.refresh_before, state, inputs.rotate_now, now, inputs.rotation)
    if action is Action.NONE and not inputs.bootstrap_changed and not inputs.rejected_before:
        expires = inputs.token_valid_at
        message = f"token valid until {rfc3339(expires)}" if expires else "token valid"
        return _Step(
            state,
            [
                ConditionUpdate(c.READY, True, REASON_TOKEN_VALID, message),
                ConditionUpdate(ROTATION_FAILED, False, REASON_TOKEN_VALID, ""),
            ],
            0,
        )
    if not inputs.credentials_read:
        return NEEDS_CREDENTIALS
    if inputs.credentials is None:
        # Creating or changing that Secret wakes the scheduler; the back-off is a safety net.
        message = f"Secret {inputs.client_secret_name} with client_id and client_secret"
        return _Step(
            state,
            _held(inputs, now, c.REASON_SECRET_NOT_FOUND, f"{message} not found"),
            inputs.failures + 1,
            retry_at=_backoff(inputs, now),
        )
    request = inputs.request()
    # A refused request is not sent again until something it was made from changes (or a new
    # rotate-now asks for one more attempt): the provider would refuse it again. Except a
    # refused client or request, which is asked again hourly (REJECTED_CLIENT_RETRY).
    recorded, _, refused_at = (
        state.annotations.get(ANNOTATION_REJECTED_REQUEST, "") if state else ""
    ).partition("@")
    previous = inputs.previous_reason
    if (
        inputs.rejected_before
        and previous is not None
        and state is not None
        and recorded == request
    ):
        wait = "waiting for a new refresh token, client credentials or spec"
        if previous == oauth.REASON_REFRESH_TOKEN_REJECTED:
            return _Step(state, _held(inputs, now, previous, wait), inputs.failures, waiting=True)
        refused = (
            (parse_rfc3339(refused_at) or datetime.min.replace(tzinfo=UTC)) if refused_at else None
        )
        again = refused + REJECTED_CLIENT_RETRY if refused is not None else now
        if again > now:
            return _Step(state, _held(inputs, now, previous, wait), inputs.failures, retry_at=again)
    return Exchange(inputs.refresh_token(), request)


@dataclass(frozen=True)
class Failure:
    """A refused or failed exchange: the status step, the Event, and what to record on the
    Secret (the rotate-now value acted on, the fingerprint of a refused request)."""

    step: _Step
    event: tuple[str, str, str]
    rejected_request: str | None


def after_rejection(
    inputs: OAuthInputs, exchange: Exchange, reason: str, code: str, now: datetime
) -> Failure:
    """The token endpoint refused the request: a dead refresh token waits for a new one, a
    refused client or request is asked again in an hour."""
    message = f"token endpoint answered {code}"
    event = ("Warning", reason, f"the token endpoint refused the request ({code})")
    recorded = f"{exchange.request}@{rfc3339(now)}"
    conditions = _held(inputs, now, reason, message)
    if reason == oauth.REASON_REFRESH_TOKEN_REJECTED:
        step = _Step(inputs.state, conditions, inputs.failures + 1, waiting=True)
    else:
        step = _Step(
            inputs.state, conditions, inputs.failures + 1, retry_at=now + REJECTED_CLIENT_RETRY
        )
    return Failure(step, event, recorded)


def after_unavailable(
    inputs: OAuthInputs, code: str, retry_after: float | None, now: datetime
) -> Failure:
    """The token endpoint could not answer: back off (its Retry-After wins)."""
    retry_at = _backoff(inputs, now, retry_after)
    event = (
        "Warning",
        ROTATION_FAILED,
        f"token endpoint unavailable ({code}); "
        f"retrying in {int((retry_at - now).total_seconds())}s",
    )
    message = f"token endpoint unavailable ({code})"
    conditions = _held(inputs, now, "TokenEndpointUnavailable", message)
    return Failure(_Step(inputs.state, conditions, inputs.failures + 1, retry_at), event, None)


async def _gather_oauth2(
    ctx: Context, source: ManagedSecret, body: Mapping[str, Any], state: SecretState | None
) -> OAuthInputs:
    settings = source.spec.oauth2
    assert settings is not None
    status = body.get("status") or {}
    previous_reason = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == ROTATION_FAILED and condition.get("status") == "True":
            previous_reason = condition.get("reason")
    return OAuthInputs(
        state=state,
        failures=int(status.get("consecutiveFailures") or 0),
        rotate_now=forced(source.metadata.annotations, state),
        bootstrap=await _bootstrap_refresh_token(ctx, source),
        previous_reason=previous_reason,
        generation=(body.get("metadata") or {}).get("generation"),
        refresh_before=timedelta(seconds=settings.refresh_before_seconds),
        rotation=source.spec.rotation,
        client_secret_name=settings.client_secret_ref.name,
    )


async def _oauth2(
    ctx: Context,
    source: ManagedSecret,
    body: Mapping[str, Any],
    state: SecretState | None,
    emit: EmitFn,
    now: datetime,
    session: aiohttp.ClientSession,
) -> _Step:
    inputs = await _gather_oauth2(ctx, source, body, state)
    plan = plan_oauth2(inputs, now)
    if plan is NEEDS_CREDENTIALS:
        credentials = await _client_credentials(ctx, source)
        inputs = replace(inputs, credentials=credentials, credentials_read=True)
        plan = plan_oauth2(inputs, now)
    if isinstance(plan, _Step):
        return plan
    assert isinstance(plan, Exchange)
    return await _exchange(ctx, source, inputs, plan, emit, now, session)


async def _exchange(
    ctx: Context,
    source: ManagedSecret,
    inputs: OAuthInputs,
    exchange: Exchange,
    emit: EmitFn,
    now: datetime,
    session: aiohttp.ClientSession,
) -> _Step:
    """Ask the token endpoint and write what it gave, as one step; record a failure."""
    try:
        written, until = await _finish_even_if_cancelled(
            _exchange_and_write(ctx, source, inputs, exchange, now, session)
        )
    except oauth.TokenRejected as exc:
        failure = after_rejection(inputs, exchange, exc.reason, exc.code, now)
    except oauth.TokenEndpointUnavailable as exc:
        failure = after_unavailable(inputs, exc.code, exc.retry_after, now)
    else:
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
    ctx.metrics.rotations.labels("oauth2", "failure").inc()
    emit(*failure.event)
    recorded = await _record_failure(
        ctx, source, inputs.state, inputs.rotate_now, failure.rejected_request
    )
    return replace(failure.step, state=recorded)


async def _exchange_and_write(
    ctx: Context,
    source: ManagedSecret,
    inputs: OAuthInputs,
    exchange: Exchange,
    now: datetime,
    session: aiohttp.ClientSession,
) -> tuple[SecretState, str]:
    settings = source.spec.oauth2
    assert settings is not None
    assert inputs.credentials is not None
    state, refresh_token = inputs.state, exchange.refresh_token
    token = await oauth.request_token(
        session,
        token_url=settings.token_url,
        client_id=inputs.credentials[0],
        client_secret=inputs.credentials[1],
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
    handled = inputs.rotate_now or (
        state.annotations.get(ANNOTATION_ROTATE_NOW_HANDLED) if state else None
    )
    slot = scheduled_slot(source.spec.rotation, state, now)
    annotations = _annotations(state, version, now, handled, slot)
    if inputs.bootstrap:
        annotations[ANNOTATION_BOOTSTRAP_HASH] = _fingerprint(inputs.bootstrap)
    written = await _write(ctx, source, data, annotations)
    until = f" valid until {data[EXPIRES_AT]}" if EXPIRES_AT in data else ""
    return written, until


async def reconcile_managed_secret(
    ctx: Context, body: Mapping[str, Any], emit: EmitFn, session: aiohttp.ClientSession
) -> Outcome:
    """Converge one ManagedSecret; raises InvalidSpec (permanent) or Retry (transient)."""
    async with measured(ctx, c.MANAGED_SECRET, body) as result:
        async with ctx.lock(f"managedsecret:{object_key(body)}"):
            outcome = await _reconcile(ctx, body, emit, session)
        result[0] = "ready" if outcome.ready else "not_ready"
        return outcome


def schedule(
    source: ManagedSecret, step: _Step, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """When the scheduler looks again, and the next rotation or refresh shown in status."""
    state = step.state
    refresh_before: timedelta | None = None
    if source.spec.type is SecretType.RANDOM:
        planned = next_rotation(
            source.spec.rotation,
            state.last_rotation if state else None,
            state.scheduled_slot if state else None,
        )
    else:
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
    return next_at, step.retry_at or planned


async def _reconcile(
    ctx: Context, body: Mapping[str, Any], emit: EmitFn, session: aiohttp.ClientSession
) -> Outcome:
    try:
        source = ManagedSecret.model_validate(plain_body(body))
    except ValidationError as exc:
        await _invalid(ctx, body, emit, validation_message(exc))
        raise InvalidSpec(validation_message(exc)) from exc

    now = ctx.clock()
    try:
        state, conflict = await _read_state(ctx, source)
        if conflict:
            message = f"Secret {source.secret_name} exists and is not owned by this ManagedSecret"
            conditions = [ConditionUpdate(c.READY, False, REASON_SECRET_CONFLICT, message)]
            await write_status(ctx, c.MANAGED_SECRET, body, conditions, ManagedSecretStatus(), emit)
            return Outcome(False, None)
        if source.spec.type is SecretType.RANDOM:
            step = await _random(ctx, source, state, emit, now)
        else:
            step = await _oauth2(ctx, source, body, state, emit, now, session)
        next_at, shown = schedule(source, step, now)
        fields = _status_fields(source, step.state, step.failures, shown)
        ready = await write_status(ctx, c.MANAGED_SECRET, body, step.conditions, fields, emit)
        _record_metrics(ctx, source, step.state, shown)
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
        await write_status(ctx, c.MANAGED_SECRET, body, invalid, ManagedSecretStatus(), emit)
    except KubeError as exc:
        raise Retry(str(exc)) from exc


# Re-read state at least this often even when nothing is due (a safety net, not the schedule).
MAX_SLEEP_SECONDS = 3600.0
# Never sleep less than this between reconciles, whatever was decided: no busy loop.
MIN_SLEEP_SECONDS = 1.0


class Stopped(Protocol):
    """Whether the scheduler is asked to stop, and a way to wait for it (kopf.DaemonStopped)."""

    def __bool__(self) -> bool: ...

    def wait(self) -> Awaitable[Any]: ...


SleepFn = Callable[[asyncio.Event, Stopped, float], Awaitable[None]]


def wake(ctx: Context, namespace: str | None, name: str) -> None:
    """Wake the scheduler of ``namespace/name`` now (its object or a Secret it uses changed)."""
    if namespace:
        ctx.wakeup(f"{namespace}/{name}").set()


def forget(ctx: Context, namespace: str, name: str) -> None:
    """A deleted ManagedSecret: drop its metrics and its wake-up event."""
    forget_metrics(ctx, namespace, name)
    ctx.wakeups.pop(f"{namespace}/{name}", None)


def sleep_seconds(outcome: Outcome | None, retry_delay: float | None, now: datetime) -> float:
    """How long the scheduler sleeps after a reconciliation (its outcome, or the Retry delay of
    a transient failure; neither after an invalid spec)."""
    delay = MAX_SLEEP_SECONDS if retry_delay is None else retry_delay
    if outcome is not None and outcome.next_at is not None:
        delay = (outcome.next_at - now).total_seconds()
    return min(max(delay, MIN_SLEEP_SECONDS), MAX_SLEEP_SECONDS)


async def run_scheduler(
    ctx: Context,
    namespace: str,
    name: str,
    stopped: Stopped,
    emit_for: Callable[[dict[str, Any]], EmitFn],
    session: aiohttp.ClientSession,
    sleep: SleepFn | None = None,
) -> None:
    """Reconcile, then sleep until exactly the next due moment or until woken by a change;
    returns when the ManagedSecret is gone or being deleted, or when ``stopped``.

    ``sleep(woken, stopped, seconds)`` waits on the event loop's clock; tests pass one that
    moves their fake clock (``ctx.clock``) instead.
    """
    sleep = sleep or _sleep
    event = ctx.wakeup(f"{namespace}/{name}")
    while not stopped:
        event.clear()
        body = await ctx.kube.get(c.API_VERSION, c.MANAGED_SECRET, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            forget(ctx, namespace, name)
            return
        outcome: Outcome | None = None
        retry_delay: float | None = None
        try:
            outcome = await reconcile_managed_secret(ctx, body, emit_for(body), session)
        except InvalidSpec:
            pass
        except Retry as exc:
            retry_delay = exc.delay
        await sleep(event, stopped, sleep_seconds(outcome, retry_delay, ctx.clock()))


async def _sleep(event: asyncio.Event, stopped: Stopped, seconds: float) -> None:
    """Until ``seconds`` pass, the scheduler is woken, or it is asked to stop."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def managed_secret_refs(name: str, spec: Mapping[str, Any]) -> list[str]:
    """The Secrets a ManagedSecret reads or writes (its own, client credentials, refresh token)."""
    oauth2 = spec.get("oauth2") or {}
    refs = [
        spec.get("secretName") or name,
        (oauth2.get("clientSecretRef") or {}).get("name"),
        (oauth2.get("refreshTokenSecretRef") or {}).get("name"),
    ]
    return [ref for ref in refs if ref]
