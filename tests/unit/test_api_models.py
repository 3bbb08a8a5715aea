"""The custom resource models: the field names of DESIGN §2, defaults, cross-field rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from dfm_operator.api import (
    KINDS,
    BackupSchedule,
    Condition,
    ConditionStatus,
    ManagedSecret,
    SyncSchedule,
    WebhookSource,
    WebhookSourceStatus,
    parse_duration,
)
from dfm_operator.api.managedsecret import ClientAuth, RandomEncoding, Rotation, SecretType
from dfm_operator.api.syncschedule import ConcurrencyPolicy, Cursor
from dfm_operator.constants import API_VERSION
from webhook_server.config import HmacAlgorithm, Provider, SignatureEncoding

# The contract of DESIGN §2, as users write it (the ManagedSecret example split by type).
CONTRACT = """
apiVersion: dfm.dev/v1alpha1
kind: WebhookSource
metadata: {name: stripe-main, namespace: payments}
spec:
  provider: stripe
  path: /hooks/payments/stripe-main
  verification:
    secretRef: {name: stripe-webhook, key: secret}
    toleranceSeconds: 300
  auth:
    jwksUrl: https://clerk.example.com/.well-known/jwks.json
    issuer: https://clerk.example.com
    audiences: [orders-api]
    authorizedParties: [https://app.example.com]
  limits: {maxBodyBytes: 1048576, requestsPerSecond: 100, burst: 200}
  cors: {allowedOrigins: [https://app.example.com]}
  store:
    databaseSecretRef: {name: events-db, key: url}
    retentionDays: 30
  forward:
    url: http://orders.payments.svc:8080/events
    timeoutSeconds: 5
    maxAttempts: 8
    signingSecretRef: {name: forward-signing}
  replicas: 2
  resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}
  exposure:
    service: {type: ClusterIP, port: 80}
    ingress: {host: hooks.example.com, className: nginx, tlsSecretName: hooks-tls}
status:
  observedGeneration: 3
  endpoint: http://stripe-main-receiver.payments.svc/hooks/payments/stripe-main
  externalEndpoint: https://hooks.example.com/hooks/payments/stripe-main
  readyReplicas: 2
  lastEventTime: "2026-11-27T12:00:00Z"
  conditions:
  - type: Ready
    status: "True"
    reason: Available
    message: ""
    lastTransitionTime: "2026-11-27T11:00:00Z"
    observedGeneration: 3
---
apiVersion: dfm.dev/v1alpha1
kind: ManagedSecret
metadata: {name: stripe-signing, namespace: payments}
spec:
  type: random
  random: {length: 32, encoding: base64, prefix: whsec_}
  rotation: {every: 720h, gracePeriod: 24h}
  secretName: stripe-signing
---
apiVersion: dfm.dev/v1alpha1
kind: ManagedSecret
metadata: {name: ghl-oauth, namespace: crm}
spec:
  type: oauth2
  oauth2:
    tokenUrl: https://services.leadconnectorhq.com/oauth/token
    clientSecretRef: {name: ghl-client}
    clientAuth: client_secret_post
    refreshTokenSecretRef: {name: ghl-bootstrap, key: refresh_token}
    scopes: [contacts.readonly]
    refreshBeforeSeconds: 300
  rotation: {schedule: "0 3 * * 0", timeZone: Europe/Berlin, gracePeriod: 24h}
---
apiVersion: dfm.dev/v1alpha1
kind: SyncSchedule
metadata: {name: ghl-contacts, namespace: crm}
spec:
  schedule: "*/15 * * * *"
  timeZone: UTC
  suspend: false
  concurrencyPolicy: Forbid
  connector:
    http:
      url: https://services.leadconnectorhq.com/contacts/
      itemsPath: contacts
      idField: id
      cursor: {param: startAfterId, from: meta.startAfterId}
      auth: {managedSecretRef: {name: ghl-oauth}}
  sink: {webhookSourceRef: {name: ghl}}
  retry: {maxAttempts: 5, backoffSeconds: 30}
---
apiVersion: dfm.dev/v1alpha1
kind: BackupSchedule
metadata: {name: events-nightly, namespace: payments}
spec:
  schedule: "30 2 * * *"
  databaseSecretRef: {name: events-db, key: url}
  destination: {pvc: {claimName: events-backups, size: 20Gi, storageClassName: standard}}
  retention: {keepLast: 7}
"""

MODELS = {kind.names.kind: kind for kind in KINDS}


def contract() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(CONTRACT) if doc]


@pytest.mark.parametrize(
    "manifest", [pytest.param(d, id=f"{d['kind']}:{d['metadata']['name']}") for d in contract()]
)
def test_design_contract_round_trips_in_camel_case(manifest: dict[str, Any]) -> None:
    model = MODELS[manifest["kind"]].model_validate(manifest)
    dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert dumped == manifest


def test_kinds_share_the_api_version() -> None:
    for kind in KINDS:
        assert kind.model_fields["api_version"].default == API_VERSION
        assert kind.model_fields["kind"].default == kind.names.kind


def test_short_names_are_unique() -> None:
    names = [n for kind in KINDS for n in (kind.names.plural, *kind.names.short_names)]
    assert len(names) == len(set(names))
    assert {k.names.kind: k.names.short_names for k in KINDS} == {
        "WebhookSource": ("whs",),
        "ManagedSecret": ("msec",),
        "SyncSchedule": ("sync",),
        "BackupSchedule": ("bks",),
    }


def _manifest(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "x"}, "spec": spec}


# --- WebhookSource ----------------------------------------------------------------------------


def test_webhook_source_defaults() -> None:
    source = WebhookSource.model_validate(
        _manifest(
            "WebhookSource", {"provider": "github", "verification": {"secretRef": {"name": "s"}}}
        )
    )
    spec = source.spec
    assert source.route == "/hooks/default/x"
    assert source.key == "default/x"
    assert spec.verification.secret_ref is not None
    assert spec.verification.secret_ref.key == "secret"
    assert spec.verification.tolerance_seconds == 300
    assert spec.verification.algorithm is HmacAlgorithm.SHA256
    assert spec.verification.encoding is SignatureEncoding.HEX
    assert spec.verification.signed_content == "{body}"
    assert spec.limits.max_body_bytes == 1_048_576
    assert spec.cors.allowed_origins == []
    assert spec.store.retention_days == 30
    assert spec.replicas == 1
    assert spec.workers == 1
    assert (spec.exposure.service.type, spec.exposure.service.port) == ("ClusterIP", 80)
    assert spec.exposure.ingress is None
    assert source.status is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"provider": "hmac", "verification": {"secretRef": {"name": "s"}}},
            "requires verification.header",
        ),
        ({"provider": "jwt"}, "provider jwt requires auth"),
        ({"provider": "stripe"}, "requires verification.secretRef"),
        (
            {
                "provider": "github",
                "verification": {"secretRef": {"name": "s"}, "managedSecretRef": {"name": "m"}},
            },
            "set only one of secretRef and managedSecretRef",
        ),
        ({"provider": "gitlab"}, "Input should be"),
        ({"provider": "highlevel", "replicas": -1}, "greater than or equal to 0"),
        (
            {"provider": "highlevel", "workers": 0},
            "workers\n  Input should be greater than or equal to 1",
        ),
        (
            {"provider": "highlevel", "workers": 17},
            "workers\n  Input should be less than or equal to 16",
        ),
        ({"provider": "highlevel", "forward": {"url": "ftp://x"}}, "should match pattern"),
        ({"provider": "highlevel", "unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_webhook_source_rules(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebhookSource.model_validate(_manifest("WebhookSource", spec))


def _ec_public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_secretless_providers_need_no_secret() -> None:
    WebhookSource.model_validate(_manifest("WebhookSource", {"provider": "highlevel"}))
    jwt = {"provider": "jwt", "auth": {"publicKey": _ec_public_pem()}}
    assert (
        WebhookSource.model_validate(_manifest("WebhookSource", jwt)).spec.provider is Provider.JWT
    )


def test_webhook_source_status_parses_times_and_conditions() -> None:
    [source_doc, *_] = contract()
    status = WebhookSource.model_validate(source_doc).status
    assert isinstance(status, WebhookSourceStatus)
    assert status.last_event_time == datetime(2026, 11, 27, 12, tzinfo=UTC)
    ready = status.condition("Ready")
    assert ready is not None
    assert ready.status is ConditionStatus.TRUE
    assert status.condition("Degraded") is None


def test_condition_dumps_like_kubernetes() -> None:
    condition = Condition(
        type="Ready",
        status=ConditionStatus.FALSE,
        reason="InvalidSpec",
        last_transition_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        observed_generation=4,
    )
    assert condition.model_dump(mode="json", by_alias=True) == {
        "type": "Ready",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "",
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 4,
    }


@pytest.mark.parametrize("reason", ["", "has space", "1Starts"])
def test_condition_reason_is_camel_case(reason: str) -> None:
    with pytest.raises(ValidationError):
        Condition(
            type="Ready",
            status=ConditionStatus.TRUE,
            reason=reason,
            last_transition_time=datetime.now(UTC),
        )


# --- ManagedSecret ----------------------------------------------------------------------------


def test_managed_secret_defaults() -> None:
    secret = ManagedSecret.model_validate(
        _manifest("ManagedSecret", {"type": "random", "random": {}})
    )
    assert secret.spec.type is SecretType.RANDOM
    assert secret.spec.random is not None
    assert (secret.spec.random.length, secret.spec.random.encoding) == (32, RandomEncoding.BASE64)
    assert secret.spec.random.prefix == ""
    assert secret.spec.rotation is None
    assert secret.secret_name == "x"


def test_oauth2_defaults() -> None:
    oauth2 = {"tokenUrl": "https://a.example/token", "clientSecretRef": {"name": "c"}}
    spec = ManagedSecret.model_validate(
        _manifest("ManagedSecret", {"type": "oauth2", "oauth2": oauth2, "secretName": "tok"})
    )
    assert spec.secret_name == "tok"
    assert spec.spec.oauth2 is not None
    assert spec.spec.oauth2.client_auth is ClientAuth.CLIENT_SECRET_POST
    assert spec.spec.oauth2.refresh_before_seconds == 300
    assert spec.spec.oauth2.refresh_token_secret_ref is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "random"}, "type random requires random"),
        ({"type": "oauth2"}, "type oauth2 requires oauth2"),
        ({"type": "oauth2", "random": {}}, "random is allowed only with type random"),
        (
            {
                "type": "random",
                "random": {},
                "oauth2": {"tokenUrl": "https://a.example/t", "clientSecretRef": {"name": "c"}},
            },
            "oauth2 is allowed only with type oauth2",
        ),
        ({"type": "random", "random": {"length": 8}}, "greater than or equal to 16"),
        ({"type": "random", "random": {"encoding": "base32"}}, "Input should be"),
        ({"type": "random", "random": {}, "secretName": "Not_DNS"}, "should match pattern"),
    ],
)
def test_managed_secret_rules(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ManagedSecret.model_validate(_manifest("ManagedSecret", spec))


@pytest.mark.parametrize(
    ("rotation", "message"),
    [
        ({}, "exactly one of every or schedule"),
        ({"every": "1h", "schedule": "@daily"}, "exactly one of every or schedule"),
        ({"every": "1h", "timeZone": "UTC"}, "timeZone applies only to schedule"),
        ({"every": "0s"}, "longer than 0s"),
        ({"every": "30d"}, "should match pattern"),
        ({"schedule": "0 3 * *"}, "should match pattern"),
        ({"schedule": "@every 1h"}, "should match pattern"),
        ({"schedule": "@daily", "timeZone": "Mars/Olympus"}, "unknown time zone"),
        ({"every": "1h", "gracePeriod": "a day"}, "should match pattern"),
    ],
)
def test_rotation_rules(rotation: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rotation.model_validate(rotation)


def test_rotation_durations() -> None:
    every = Rotation.model_validate({"every": "720h"})
    assert every.interval == timedelta(days=30)
    assert every.grace == timedelta(hours=24)
    cron = Rotation.model_validate({"schedule": "0 3 * * 0", "gracePeriod": "90m"})
    assert cron.interval is None
    assert cron.grace == timedelta(minutes=90)


# --- SyncSchedule and BackupSchedule ----------------------------------------------------------


def test_sync_schedule_defaults() -> None:
    sync = SyncSchedule.model_validate(
        _manifest(
            "SyncSchedule",
            {
                "schedule": "@hourly",
                "connector": {"http": {"url": "https://api.example.com/items"}},
                "sink": {"webhookSourceRef": {"name": "ghl"}},
            },
        )
    )
    spec = sync.spec
    assert (spec.time_zone, spec.suspend) == ("UTC", False)
    assert spec.concurrency_policy is ConcurrencyPolicy.FORBID
    assert (spec.retry.max_attempts, spec.retry.backoff_seconds) == (5, 30)
    assert (spec.run_timeout_seconds, spec.starting_deadline_seconds) == (900, None)
    assert (spec.successful_jobs_history_limit, spec.failed_jobs_history_limit) == (3, 3)
    http = spec.connector.http
    assert (http.cursor, http.link, http.offset, http.page, http.auth) == (None,) * 5
    assert (http.rate_limit.requests_per_second, http.rate_limit.burst) == (5, 5)
    # Events are typed (and their ids prefixed) by the schedule's name unless eventType says.
    assert sync.event_type == "x"


def test_http_connector_defaults_and_from_alias() -> None:
    [*_, sync_doc, _] = contract()
    http = SyncSchedule.model_validate(sync_doc).spec.connector.http
    assert http.cursor == Cursor(param="startAfterId", from_="meta.startAfterId")
    assert http.cursor.model_dump(by_alias=True) == {
        "param": "startAfterId",
        "from": "meta.startAfterId",
        "also": [],
    }
    assert (http.max_pages, http.timeout_seconds, http.query, http.headers) == (1000, 30, {}, {})


@pytest.mark.parametrize(
    ("connector", "message"),
    [
        ({}, "Field required"),
        ({"container": {"image": "example/sync:1"}}, "Extra inputs are not permitted"),
        ({"http": {"url": "a.example"}}, "should match pattern"),
        (
            {"http": {"url": "https://a.example", "link": {}, "page": {}}},
            "set at most one of cursor, link, offset or page",
        ),
        (
            {"http": {"url": "https://a.example", "headers": {"authorization": "Bearer x"}}},
            "credentials come from auth",
        ),
        (
            {"http": {"url": "https://a.example", "page": {"size": 10}}},
            "set both sizeParam and size, or neither",
        ),
        ({"http": {"url": "https://a.example", "idField": "a..b"}}, "should match pattern"),
    ],
)
def test_sync_connector_rules(connector: dict[str, Any], message: str) -> None:
    spec = {
        "schedule": "@daily",
        "connector": connector,
        "sink": {"webhookSourceRef": {"name": "s"}},
    }
    with pytest.raises(ValidationError, match=message):
        SyncSchedule.model_validate(_manifest("SyncSchedule", spec))


def test_a_sync_schedule_name_fits_its_cronjob() -> None:
    spec = {
        "schedule": "@daily",
        "connector": {"http": {"url": "https://a.example"}},
        "sink": {"webhookSourceRef": {"name": "s"}},
    }
    doc = _manifest("SyncSchedule", spec)
    SyncSchedule.model_validate({**doc, "metadata": {"name": "s" * 47}})
    with pytest.raises(ValidationError, match=r"it names the CronJob, <name>-sync \(at most 52\)"):
        SyncSchedule.model_validate({**doc, "metadata": {"name": "s" * 48}})


def test_backup_schedule_defaults() -> None:
    spec = {
        "schedule": "30 2 * * *",
        "databaseSecretRef": {"name": "events-db"},
        "destination": {"pvc": {"claimName": "backups"}},
    }
    backup = BackupSchedule.model_validate(_manifest("BackupSchedule", spec)).spec
    assert backup.retention.keep_last == 7
    assert backup.destination.pvc is not None
    assert backup.destination.pvc.size is None  # the claim must exist: nothing is created
    assert backup.destination.pvc.delete_with_schedule is False
    assert backup.destination.pvc.storage_class_name is None
    assert backup.verify.value == "list"
    assert (backup.retention.max_age, backup.timeout) == (None, "6h")
    assert backup.database_secret_ref.key == "secret"
    assert (backup.time_zone, backup.suspend) == ("UTC", False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"destination": {"pvc": {"claimName": "b", "size": "lots"}}}, "should match pattern"),
        ({"retention": {"keepLast": 0}}, "greater than or equal to 1"),
        ({"schedule": "nightly"}, "should match pattern"),
        ({"databaseSecretRef": None}, "valid dictionary"),
        ({"destination": {}}, "exactly one of pvc or s3"),
        (
            {
                "destination": {
                    "pvc": {"claimName": "b"},
                    "s3": {"bucket": "bkt", "credentialsSecretRef": {"name": "s3"}},
                }
            },
            "exactly one of pvc or s3",
        ),
        (
            {"destination": {"s3": {"bucket": "B!", "credentialsSecretRef": {"name": "s"}}}},
            "pattern",
        ),
        ({"verify": "hope"}, "'list' or 'restore'"),
        ({"retention": {"maxAge": "30d"}}, "should match pattern"),
    ],
)
def test_backup_schedule_rules(change: dict[str, Any], message: str) -> None:
    spec = {
        "schedule": "30 2 * * *",
        "databaseSecretRef": {"name": "events-db"},
        "destination": {"pvc": {"claimName": "backups"}},
        **change,
    }
    with pytest.raises(ValidationError, match=message):
        BackupSchedule.model_validate(_manifest("BackupSchedule", spec))


def test_status_counters_default_to_zero() -> None:
    status = {
        "lastSuccessfulBackup": {
            "name": "events-nightly-20261127T023000Z",
            "location": "pvc://events-backups/events-nightly",
            "sizeBytes": 1024,
            "sha256": "ab" * 32,
            "verification": "restore",
        }
    }
    doc = next(d for d in contract() if d["kind"] == "BackupSchedule") | {"status": status}
    backup = BackupSchedule.model_validate(doc)
    assert backup.status is not None
    assert backup.status.last_successful_backup is not None
    assert backup.status.last_successful_backup.size_bytes == 1024
    assert backup.status.consecutive_failures == 0
    assert backup.status.conditions == []
    sync_doc = next(d for d in contract() if d["kind"] == "SyncSchedule")
    sync = SyncSchedule.model_validate(sync_doc | {"status": {"itemsSynced": 12}})
    assert sync.status is not None
    assert (sync.status.items_synced, sync.status.consecutive_failures) == (12, 0)


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("720h", timedelta(hours=720)),
        ("24h", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("1.5h", timedelta(minutes=90)),
        ("0s", timedelta(0)),
        ("1m1m", timedelta(minutes=2)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "1d", "h", "-1h", "1h 30m", "1.h", "1H"])
def test_parse_duration_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_status_refuses_fields_it_does_not_declare() -> None:
    """Status is a contract: a key the CRD does not declare (kopf's bookkeeping, a misspelt
    field) would be pruned by the API server, so building such a status fails loudly."""
    [source_doc, *_] = contract()
    source_doc["status"]["kopf"] = {"progress": {}}
    with pytest.raises(ValidationError, match="kopf"):
        WebhookSource.model_validate(source_doc)
    [source_doc, *_] = contract()
    source_doc["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-27T12:00:00Z"
    with pytest.raises(ValidationError, match="lastHeartbeatTime"):
        WebhookSource.model_validate(source_doc)
    with pytest.raises(ValidationError, match="readyReplica"):
        WebhookSourceStatus.model_validate({"readyReplica": 1})
