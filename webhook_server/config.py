"""The receiver configuration: the contract between the operator and the data plane.

The operator renders a :class:`ReceiverConfig` into a ConfigMap (secret values never in it, only
paths of mounted Secret files); ``dfm local`` builds one in memory with literal secret values.
Field names are camelCase on the wire, like the custom resources they come from.
"""

from __future__ import annotations

import enum
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from webhook_server.keys import jwt_key, standard_webhooks_key


class Model(BaseModel):
    """Base for every config model: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Provider(enum.StrEnum):
    """The signature schemes. Each one's rules, verifier, signer, sample and documentation are in
    one entry of ``webhook_server.verify.registry.PROVIDERS`` (which must cover every member)."""

    GITHUB = "github"
    STRIPE = "stripe"
    STANDARD = "standard"
    SHOPIFY = "shopify"
    SLACK = "slack"
    HIGHLEVEL = "highlevel"
    HMAC = "hmac"
    JWT = "jwt"
    TWILIO = "twilio"
    TELNYX = "telnyx"
    VONAGE = "vonage"
    SENDGRID = "sendgrid"
    MAILGUN = "mailgun"
    MANDRILL = "mandrill"
    TOKEN = "token"


class TokenScheme(enum.StrEnum):
    """Where a ``token`` source finds its shared token."""

    BEARER = "bearer"  # Authorization: Bearer <token>
    HEADER = "header"  # <verification.header>: <token>
    BASIC = "basic"  # Authorization: Basic base64(<user>:<password>)


def default_route(namespace: str, name: str) -> str:
    """The endpoint's path when a source sets none."""
    return f"/hooks/{namespace}/{name}"


class HmacAlgorithm(enum.StrEnum):
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"


class SignatureEncoding(enum.StrEnum):
    HEX = "hex"
    BASE64 = "base64"


class SecretSource(Model):
    """Where one secret value comes from.

    Exactly one of ``value`` (a literal, local mode only), ``file`` (a mounted Secret key) or
    ``dir`` (a mounted ManagedSecret: files ``current``, and during a grace period ``previous``
    and ``previous-expires-at``).
    """

    value: str | None = None
    file: str | None = None
    dir: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [v for v in (self.value, self.file, self.dir) if v is not None]
        if len(given) != 1:
            raise ValueError("exactly one of value, file or dir must be set")
        return self


# An HTTP header name (RFC 9110 "token"): a name with a space, a colon or a non-ASCII character
# can never arrive in a request, so a source configured with one could never verify anything.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"
HeaderName = Annotated[str, Field(pattern=HEADER_NAME_PATTERN)]
# A provider's public key(s): PEM blocks, or the bare base64 some providers display (Telnyx,
# SendGrid). Checked against the provider that uses it (webhook_server.verify.registry).
PublicKeyText = Annotated[str, Field(min_length=1, max_length=65_536)]
# The public URL a provider calls, without query or fragment (the request's own query string is
# appended, as the provider signs it).
PUBLIC_URL_PATTERN = r"^https?://[^\s?#/]+(/[^\s?#]*)?$"
PublicUrl = Annotated[str, Field(pattern=PUBLIC_URL_PATTERN, max_length=2048)]


class VerificationConfig(Model):
    """How a provider's signature is checked. Only the fields of the chosen provider matter."""

    secrets: list[SecretSource] = Field(default_factory=list)
    tolerance_seconds: Annotated[int, Field(ge=1, le=86_400)] = 300
    # hmac (generic) settings
    header: HeaderName | None = None
    algorithm: HmacAlgorithm = HmacAlgorithm.SHA256
    encoding: SignatureEncoding = SignatureEncoding.HEX
    prefix: str = ""
    timestamp_header: HeaderName | None = None
    # Must contain {body}: a template without it would leave the body unauthenticated. Must also
    # contain {timestamp} when timestamp_header is set (see _timestamp_signed).
    signed_content: Annotated[str, Field(pattern=r"\{body\}")] = "{body}"
    # Need not be signed: GitHub, Shopify and Forgejo sign only the body and send their delivery
    # id beside it. An unsigned id deduplicates redeliveries but does not stop a replay, which
    # can come with any id (docs/receiver.md).
    id_header: HeaderName | None = None
    type_header: HeaderName | None = None
    # token (tokenScheme: header): the header with the token.
    # highlevel: PEM public key(s) overriding HighLevel's published keys; every block must be an
    # Ed25519 or RSA public key (one that is skipped would leave its signatures unverifiable).
    # telnyx, sendgrid: the account's public key (required).
    public_key: PublicKeyText | None = None
    # twilio, mandrill: the URL the provider calls, which it signs (behind an Ingress or a load
    # balancer, not the URL the receiver sees). X-Forwarded-* headers are never consulted.
    public_url: PublicUrl | None = None
    # token: where the shared token is (default bearer).
    token_scheme: TokenScheme | None = None

    @model_validator(mode="after")
    def _timestamp_signed(self) -> Self:
        # A timestamp checked for tolerance but not signed protects nothing: whoever replays a
        # captured request just writes a fresh one.
        if self.timestamp_header and "{timestamp}" not in self.signed_content:
            raise ValueError(
                "signedContent must contain {timestamp} when timestampHeader is set: "
                "an unsigned timestamp can be rewritten by anyone"
            )
        return self


ASYMMETRIC_JWT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class AuthConfig(Model):
    """Bearer-JWT authentication (for example Clerk session tokens)."""

    jwks_url: str | None = None
    public_key: str | None = None
    issuer: str | None = None
    audiences: list[str] = Field(default_factory=list)
    authorized_parties: list[str] = Field(default_factory=list)
    algorithms: list[str] = Field(default_factory=lambda: list(ASYMMETRIC_JWT_ALGORITHMS))
    leeway_seconds: Annotated[int, Field(ge=0, le=300)] = 5
    jwks_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    jwks_cache_seconds: Annotated[int, Field(ge=0)] = 300

    @model_validator(mode="after")
    def _key_source(self) -> Self:
        if (self.jwks_url is None) == (self.public_key is None):
            raise ValueError("exactly one of jwksUrl or publicKey must be set")
        bad = [a for a in self.algorithms if a not in ASYMMETRIC_JWT_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(
                f"algorithms must be asymmetric ones from {list(ASYMMETRIC_JWT_ALGORITHMS)}"
            )
        if self.public_key is not None:
            # Not PEM, or a key none of the algorithms can use: refused now, not by a receiver
            # that would crash-loop on it.
            jwt_key(self.public_key, tuple(self.algorithms))
        return self


# A scope name as OAuth writes them: no spaces (a space separates scopes in a "scope" claim).
ScopeName = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,128}$")]
EVENTS_API_PREFIX = "/events"


class EventsApiConfig(Model):
    """The Events API of a source (webhook_server.events_api): its stored events listed, read
    and replayed over HTTP. Absent: the API does not exist for the source (closed unless
    configured).

    Tokens are checked like ``auth`` (the same verifier): ``auth`` says whose tokens, and the
    scopes in ``scopeClaim`` (an OAuth ``scope`` string separated by spaces, or a list of
    strings) say what a token may do: ``readScope`` lists and reads events (payloads only when
    asked for), ``replayScope`` re-queues deliveries.
    """

    auth: AuthConfig = Field(
        description="Whose tokens: a JWKS URL or PEM public key, issuer, audiences, authorized "
        "parties and algorithms, as spec.auth."
    )
    scope_claim: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default="scope",
        description="The claim that holds the token's scopes: a string of scopes separated by "
        "spaces (OAuth's scope) or a list of strings.",
    )
    read_scope: ScopeName = Field(
        default="events:read",
        description="The scope that allows listing and reading events (payloads included, "
        "when asked for).",
    )
    replay_scope: ScopeName = Field(
        default="events:replay", description="The scope that allows replaying deliveries."
    )
    # Counted before the token is checked (a flood of bad tokens must not cost a JWKS fetch each).
    requests_per_second: Annotated[float, Field(gt=0, le=10_000)] = Field(
        default=10.0,
        description="Requests to this source's Events API per second, per receiver process "
        "(each worker of a pod has its own budget).",
    )
    burst: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=20, description="Requests allowed at once above the rate, per receiver process."
    )
    max_bulk_replay: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=10_000,
        description="Events one bulk replay may re-queue; a larger selection is refused.",
    )

    @model_validator(mode="after")
    def _distinct_scopes(self) -> Self:
        if self.read_scope == self.replay_scope:
            raise ValueError("readScope and replayScope must differ")
        return self


class LimitsConfig(Model):
    """Per-source request limits, per receiver process.

    ``requestsPerSecond``/``burst`` is the budget of authentic deliveries (spent after the
    signature or token verified). ``unverifiedRequestsPerSecond``/``unverifiedBurst`` is a budget
    of its own for requests that fail verification: every request needs a token of it before its
    body is read, and gets it back once it verifies, so a flood of unsigned requests is cut off
    cheaply without spending what signed deliveries need.
    """

    max_body_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 1_048_576
    requests_per_second: Annotated[float, Field(gt=0)] = 100.0
    burst: Annotated[int, Field(ge=1)] = 200
    unverified_requests_per_second: Annotated[float, Field(gt=0)] = 100.0
    unverified_burst: Annotated[int, Field(ge=1)] = 200


class CorsConfig(Model):
    allowed_origins: list[str] = Field(default_factory=list)


HTTP_URL_PATTERN = r"^https?://[^\s]+$"


class BackoffConfig(Model):
    """The wait before a failed delivery's next attempt: full jitter between ``minSeconds`` and
    an exponentially growing ceiling capped at ``maxSeconds`` (webhook_server.outbound)."""

    min_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_seconds > self.max_seconds:
            raise ValueError("backoff.minSeconds must not exceed backoff.maxSeconds")
        return self


class CircuitBreakerConfig(Model):
    """Per target and receiver process: ``failureThreshold`` failed attempts in a row open the
    circuit; no request goes for ``coolDownSeconds`` (doubling while probes fail, up to
    ``maxCoolDownSeconds``), then one probe decides."""

    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    cool_down_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_cool_down_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0


class ForwardConfig(Model):
    """Where a source's stored events are delivered: POSTed to ``url``, signed with Standard
    Webhooks using ``signingSecrets`` (current and, during a rotation, previous), retried with
    back-off until delivered, ``maxAttempts`` attempts are spent or ``maxAgeSeconds`` passed."""

    url: Annotated[str, Field(pattern=HTTP_URL_PATTERN, max_length=2048)]
    signing_secrets: Annotated[list[SecretSource], Field(min_length=1)]
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    max_age_seconds: Annotated[float, Field(gt=0, le=3650 * 86_400)] = 86_400.0
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    # Requests in flight to the target at once, per receiver process.
    max_concurrency: Annotated[int, Field(ge=1, le=1000)] = 8
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)

    @model_validator(mode="after")
    def _usable_literal_secrets(self) -> Self:
        for secret in self.signing_secrets:
            if secret.value is not None and standard_webhooks_key(secret.value.encode()) is None:
                # Never quoted: it is a secret.
                raise ValueError(
                    "forward signing secret is not a Standard Webhooks secret "
                    "(whsec_ followed by base64)"
                )
        return self


class SourceConfig(Model):
    """One webhook source: one endpoint, one verification scheme."""

    namespace: str = "default"
    name: str
    provider: Provider
    path: str | None = None
    verification: VerificationConfig = Field(default_factory=VerificationConfig)
    auth: AuthConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    forward: ForwardConfig | None = None
    events_api: EventsApiConfig | None = None

    @property
    def key(self) -> str:
        """The source's identity in the event store: ``<namespace>/<name>``."""
        return f"{self.namespace}/{self.name}"

    @property
    def route(self) -> str:
        return self.path or default_route(self.namespace, self.name)

    @model_validator(mode="after")
    def _provider_rules(self) -> Self:
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if self.path is not None and (
            self.path == EVENTS_API_PREFIX or self.path.startswith(EVENTS_API_PREFIX + "/")
        ):
            raise ValueError(f"path must not be under {EVENTS_API_PREFIX}: the Events API's")
        # Imported here: the registry imports the verifiers, which import this module.
        from webhook_server.verify.registry import SourceFacts, provider_problem

        v = self.verification
        facts = SourceFacts(
            auth=self.auth is not None,
            secret=bool(v.secrets),
            fields=frozenset(
                name for name, field in VERIFICATION_OPTIONAL_FIELDS.items() if getattr(v, field)
            ),
            token_scheme=v.token_scheme or TokenScheme.BEARER,
            public_key=v.public_key,
        )
        problem = provider_problem(self.provider, facts)
        if problem is not None:
            raise ValueError(problem)
        if self.forward is not None and self.forward.max_age_seconds > self.retention_days * 86_400:
            # A delivery cannot outlive its event: the row goes with the event's partition.
            raise ValueError("forward.maxAgeSeconds must not exceed retentionDays")
        return self

    @model_validator(mode="after")
    def _usable_literal_secrets(self) -> Self:
        # Values in files are checked when read (see webhook_server.secrets); a literal can be
        # checked now.
        for secret in self.verification.secrets:
            if secret.value is not None:
                problem = secret_problem(self.provider, secret.value.encode())
                if problem:
                    raise ValueError(f"verification secret {problem}")
        return self


# The verification fields that have no default, by their name in a manifest: a provider that does
# not read one refuses it (a field nothing acts on is never silently ignored).
VERIFICATION_OPTIONAL_FIELDS = {
    "header": "header",
    "timestampHeader": "timestamp_header",
    "idHeader": "id_header",
    "typeHeader": "type_header",
    "publicKey": "public_key",
    "publicUrl": "public_url",
    "tokenScheme": "token_scheme",
}


def secret_problem(provider: Provider, value: bytes) -> str | None:
    """Why ``value`` can never verify a delivery of ``provider``, or None when it can.

    Said of the value without quoting it: it is a secret.
    """
    if not value.strip():
        return "is empty"
    from webhook_server.verify.registry import PROVIDERS

    check = PROVIDERS[provider].secret_problem
    return None if check is None else check(value)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_MAX_QUEUED_BYTES = 32 * 1024 * 1024


class DatabaseConfig(Model):
    """The event store. ``url`` for local use, ``urlFile`` (a mounted Secret key) in a pod."""

    url: str | None = None
    url_file: str | None = None
    pool_min_size: Annotated[int, Field(ge=0)] = 1
    pool_max_size: Annotated[int, Field(ge=1)] = 10
    # PgBouncer in transaction mode cannot keep prepared statements across transactions.
    pgbouncer: bool = False
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    partitions_ahead_days: Annotated[int, Field(ge=1, le=60)] = 3
    maintenance_interval_seconds: Annotated[float, Field(gt=0)] = 3600.0
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 500
    # Batches committing at once: a second one fills while the first waits for its commit.
    writer_concurrency: Annotated[int, Field(ge=1, le=16)] = 2
    # How long a request waits for its event to commit before it is answered 503 (nothing is
    # acknowledged; the event may still commit later, and the provider's retry is a duplicate).
    commit_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Events waiting for or in a commit, and their bytes: past either, 503 at once.
    max_queued_events: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # (Sized with the server's limits against a 256 MiB container: docs/receiver.md, "Memory".)
    max_queued_bytes: Annotated[int, Field(ge=1024, le=4 * 1024**3)] = DEFAULT_MAX_QUEUED_BYTES

    @model_validator(mode="after")
    def _one_url(self) -> Self:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("exactly one of url or urlFile must be set")
        if self.url is not None and not self.url.startswith(POSTGRES_SCHEMES):
            # Never repeated: it may hold a password.
            raise ValueError("url must be a postgresql:// URL")
        return self

    def resolve_url(self) -> str:
        if self.url is not None:
            return self.url
        assert self.url_file is not None
        return Path(self.url_file).read_text().strip()


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None
    return value


class VerificationLaneConfig(Model):
    """Where a request goes when its source's unverified budget is empty (docs/receiver.md)."""

    # Bodies still arriving that are read at once, process-wide; and per client address.
    slots: Annotated[int, Field(ge=1, le=4096)] = 32
    slots_per_client: Annotated[int, Field(ge=1, le=4096)] = 2
    # Larger bodies (by Content-Length, or as read) are refused with 429 instead.
    max_body_bytes: Annotated[int, Field(ge=1, le=1024 * 1024)] = 65_536


def queued_bytes_for(sources: list[SourceConfig]) -> int:
    """``database.maxQueuedBytes`` for ``sources``: the default, raised to hold the largest body
    (a queue smaller than a body is refused; docs/receiver.md says what that costs in memory)."""
    return max([DEFAULT_MAX_QUEUED_BYTES, *(s.limits.max_body_bytes for s in sources)])


class ServerConfig(Model):
    """Connection-level limits of the HTTP server (per process). See docs/receiver.md."""

    # Open connections; past it the connection idle the longest is closed to make room, and when
    # none is idle the new one is answered 503 and closed. Lowered at start-up to fit the file
    # limit.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    # From the connection's start (or the first byte of a later request) to the end of headers.
    header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # From the end of the headers to the end of the body.
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # A keep-alive connection with no request in progress is closed after this long.
    idle_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 75.0
    # Bytes of the request line; of a header's name, and of its value (each); number of headers.
    max_request_line_bytes: Annotated[int, Field(ge=256, le=65_536)] = 8190
    max_header_bytes: Annotated[int, Field(ge=256, le=65_536)] = 20_480
    max_headers: Annotated[int, Field(ge=8, le=1024)] = 128
    # Bytes of one request's head (request line and headers together): past it, 431.
    max_head_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32_768
    # Bytes of every head still arriving at once (process-wide); see admission.ByteBudget.
    head_budget_bytes: Annotated[int, Field(ge=64 * 1024, le=1024**3)] = 4 * 1024 * 1024
    # Bytes of every body being read before its request is verified (process-wide).
    body_budget_bytes: Annotated[int, Field(ge=64 * 1024, le=4 * 1024**3)] = 8 * 1024 * 1024
    verification_lane: VerificationLaneConfig = Field(default_factory=VerificationLaneConfig)
    # Addresses (CIDRs) of proxies whose X-Forwarded-For names the client, for the lane's
    # per-client slots only. Empty: the TCP peer is the client.
    trusted_proxies: list[Annotated[str, AfterValidator(_cidr)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _budgets_hold_a_request(self) -> Self:
        if self.head_budget_bytes < self.max_head_bytes:
            raise ValueError("server.headBudgetBytes must be at least server.maxHeadBytes")
        return self


class ForwardingConfig(Model):
    """How one receiver process runs its share of the forward outbox (see docs/receiver.md).

    ``leaseSeconds`` is how long a claimed delivery belongs to this process: another replica
    may take it once the lease has run out (this one died, or never got to it). It is raised to
    four attempt timeouts of the slowest target, so a delivery in flight keeps its lease.
    """

    # Replica id recorded in leases and circuit rows; default: host name and a random suffix.
    replica_id: Annotated[str | None, Field(max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")] = None
    poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    claim_batch: Annotated[int, Field(ge=1, le=10_000)] = 200
    # Deliveries held in memory (handed over by the writer or claimed), and their payload bytes.
    # Past either, fresh events are left to the table and polled back as room frees up.
    max_queued_events: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    max_queued_bytes: Annotated[int, Field(ge=1024, le=4 * 1024**3)] = 32 * 1024 * 1024
    # How often backlog gauges and circuit rows are refreshed, and expired deliveries swept.
    stats_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 15.0
    # At shutdown, how long attempts in flight may finish before their leases are given back.
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0


MAX_WORKERS = 16
MAX_SHUTDOWN_DELAY_SECONDS = 120
# Beyond a receiver's stop (ReceiverConfig.stop_seconds), before the workers' supervisor kills
# what still runs; the operator's terminationGracePeriodSeconds allows the same.
STOP_MARGIN_SECONDS = 5


class ReceiverConfig(Model):
    """Everything one receiver process needs."""

    host: str = "0.0.0.0"  # noqa: S104 - a receiver in a pod listens on all interfaces
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Processes serving the port together (SO_REUSEPORT), each with its own event loop, pool,
    # writers and limits; above 1 a supervisor process starts and watches them (docs/receiver.md,
    # Worker processes).
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    sources: list[SourceConfig]
    database: DatabaseConfig
    # After SIGTERM, how long the receiver keeps accepting and serving before it stops accepting
    # (docs/receiver.md, Stopping): the time Kubernetes takes to take a terminating pod out of
    # the Service's endpoints, during which new connections still reach it. 0 stops at once.
    shutdown_delay_seconds: Annotated[float, Field(ge=0, le=MAX_SHUTDOWN_DELAY_SECONDS)] = 0.0
    shutdown_timeout_seconds: Annotated[float, Field(gt=0)] = 20.0
    secret_reload_seconds: Annotated[float, Field(gt=0)] = 5.0
    server: ServerConfig = Field(default_factory=ServerConfig)
    forwarding: ForwardingConfig = Field(default_factory=ForwardingConfig)

    def stop_seconds(self) -> float:
        """The longest a stop takes when all goes well: the shutdown delay, the drain of the
        requests in flight, and forwarding's grace for the attempts in flight."""
        return (
            self.shutdown_delay_seconds
            + self.shutdown_timeout_seconds
            + self.forwarding.shutdown_grace_seconds
        )

    @model_validator(mode="after")
    def _unique_routes(self) -> Self:
        seen: dict[str, str] = {}
        keys: dict[str, str] = {}
        for source in self.sources:
            if source.route in seen:
                raise ValueError(
                    f"sources {seen[source.route]} and {source.key} share path {source.route}"
                )
            if source.key in keys:
                # The key is the dedup space: two sources under one would answer each other's
                # events "duplicate" and never store them.
                raise ValueError(
                    f"two sources are named {source.key} (paths {keys[source.key]} and "
                    f"{source.route}); each needs its own namespace/name"
                )
            seen[source.route] = source.key
            keys[source.key] = source.route
        return self

    @model_validator(mode="after")
    def _workers_share_a_port(self) -> Self:
        if self.workers > 1 and self.port == 0:
            # Each process would bind a port of its own: clients would reach only one of them.
            raise ValueError("workers above 1 need a fixed port (port 0 picks one per process)")
        return self

    @model_validator(mode="after")
    def _queue_holds_a_body(self) -> Self:
        # An event larger than the queue could never be queued: every delivery of it would be
        # answered 503, and the provider would retry it forever.
        for source in self.sources:
            if source.limits.max_body_bytes > self.database.max_queued_bytes:
                raise ValueError(
                    f"source {source.key}: limits.maxBodyBytes ({source.limits.max_body_bytes}) "
                    f"is larger than database.maxQueuedBytes ({self.database.max_queued_bytes})"
                )
        return self

    @classmethod
    def load(cls, path: str | Path) -> ReceiverConfig:
        data: Any = yaml.safe_load(Path(path).read_text())
        return cls.model_validate(data)

    def dump_yaml(self) -> str:
        # libyaml's emitter when present: the operator renders this on every reconciliation.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(
            self.model_dump(mode="json", by_alias=True, exclude_none=True),
            Dumper=dumper,
            sort_keys=False,
        )
