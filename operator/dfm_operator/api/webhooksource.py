"""WebhookSource: one inbound webhook endpoint."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from dfm_operator.api.common import (
    DNS_SUBDOMAIN,
    ApiModel,
    CelRule,
    CustomResource,
    Duration,
    HttpUrlString,
    KindNames,
    LocalObjectRef,
    SecretKeyRef,
    Status,
    StatusModel,
    Timestamp,
    cel_rules,
    parse_duration,
)
from dfm_operator.api.names import WEBHOOK_SOURCE_NAME, NameRule
from dfm_operator.constants import WEBHOOK_SOURCE
from webhook_server.config import (
    EVENTS_API_PREFIX,
    MAX_WORKERS,
    VERIFICATION_OPTIONAL_FIELDS,
    AuthConfig,
    CorsConfig,
    EventsApiConfig,
    HeaderName,
    HmacAlgorithm,
    LimitsConfig,
    Provider,
    PublicKeyText,
    PublicUrl,
    SignatureEncoding,
    TokenScheme,
    default_route,
)
from webhook_server.verify.registry import (
    PROVIDERS,
    SECRETLESS_PROVIDERS,
    Need,
    SourceFacts,
    provider_lacks,
    provider_refuses,
    providers_reading,
)

# The receiver's config refuses the same (webhook_server.config.VerificationConfig).
TIMESTAMP_UNSIGNED = (
    "signedContent must contain {timestamp} when timestampHeader is set: "
    "an unsigned timestamp can be rewritten by anyone"
)


class Verification(ApiModel):
    """How deliveries are authenticated: the signing secret and scheme details."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                "!(has(self.secretRef) && has(self.managedSecretRef))",
                "set only one of secretRef and managedSecretRef",
            ),
            CelRule(
                "!has(self.timestampHeader)"
                " || (has(self.signedContent) && self.signedContent.contains('{timestamp}'))",
                TIMESTAMP_UNSIGNED,
            ),
        )
    )

    secret_ref: SecretKeyRef | None = Field(
        default=None, description="The signing secret, as a key of a Secret."
    )
    managed_secret_ref: LocalObjectRef | None = Field(
        default=None,
        description="The signing secret, as a ManagedSecret: its current and, during a rotation's "
        "grace period, previous value are accepted.",
    )
    tolerance_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=86_400,
            description="How far a signed timestamp may be from now before the delivery is "
            "refused as a replay.",
        ),
    ] = 300
    header: HeaderName | None = Field(
        default=None,
        description="hmac: the signature header; token (tokenScheme: header): the token header.",
    )
    algorithm: HmacAlgorithm = Field(
        default=HmacAlgorithm.SHA256, description="hmac: the HMAC hash function."
    )
    encoding: SignatureEncoding = Field(
        default=SignatureEncoding.HEX, description="hmac: how the signature is encoded."
    )
    prefix: str = Field(default="", description="hmac: text before the signature, e.g. sha256=")
    timestamp_header: HeaderName | None = Field(
        default=None, description="hmac: the header with the signed timestamp, if any."
    )
    signed_content: str = Field(
        default="{body}",
        # Without {body} the body would not be authenticated at all.
        pattern=r"\{body\}",
        description="hmac: what is signed; placeholders {timestamp}, {id} and {body} (required).",
    )
    id_header: HeaderName | None = Field(
        default=None,
        description="hmac, token: the header with the delivery id, used to deduplicate.",
    )
    type_header: HeaderName | None = Field(
        default=None, description="hmac, token: the header with the event type."
    )
    public_key: PublicKeyText | None = Field(
        default=None,
        description="highlevel: PEM key(s) overriding HighLevel's published keys (each an "
        "Ed25519 or RSA public key). telnyx: the account's Ed25519 public key (base64, as the "
        "portal shows it, or PEM). sendgrid: the Event Webhook verification key (base64 or PEM).",
    )
    public_url: PublicUrl | None = Field(
        default=None,
        description="twilio, mandrill: the URL the provider calls and signs (scheme, host, path; "
        "no query). Default: derived from exposure.ingress (https when tlsSecretName is set).",
    )
    token_scheme: TokenScheme | None = Field(
        default=None,
        description="token: where the shared token is: bearer (Authorization: Bearer, the "
        "default), header (the header named by header) or basic (HTTP Basic).",
    )

    @model_validator(mode="after")
    def _one_secret_source(self) -> Self:
        if self.secret_ref is not None and self.managed_secret_ref is not None:
            raise ValueError("set only one of secretRef and managedSecretRef")
        if self.timestamp_header and "{timestamp}" not in self.signed_content:
            raise ValueError(TIMESTAMP_UNSIGNED)
        return self


class Store(ApiModel):
    """The PostgreSQL event store and how long events are kept."""

    database_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="The database URL, as a key of a Secret (default: the operator's store).",
    )
    retention_days: Annotated[
        int,
        Field(ge=1, le=3650, description="Days after which stored events are dropped."),
    ] = 30


class ForwardBackoff(ApiModel):
    """The wait before retrying a failed delivery."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                "!has(self.minSeconds) || !has(self.maxSeconds) || "
                "self.minSeconds <= self.maxSeconds",
                "minSeconds must not exceed maxSeconds",
            )
        )
    )

    min_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="The first retry's wait; later ones wait a random time between this and "
            "a ceiling that doubles with each failure.",
        ),
    ] = 1
    max_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=86_400,
            description="The ceiling's cap; a longer Retry-After from the target is cut to it.",
        ),
    ] = 600

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_seconds > self.max_seconds:
            raise ValueError("minSeconds must not exceed maxSeconds")
        return self


class ForwardCircuitBreaker(ApiModel):
    """Stops sending to a target that keeps failing, per receiver process (each of a pod's
    workers)."""

    failure_threshold: Annotated[
        int,
        Field(ge=1, le=1000, description="Failed attempts in a row that open the circuit."),
    ] = 5
    cool_down_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="How long an open circuit sends nothing before one probe; doubled after "
            "each failed probe, up to 10 minutes (or this, if longer).",
        ),
    ] = 30


class Forward(ApiModel):
    """Where stored events are delivered: at least once, signed with Standard Webhooks."""

    url: HttpUrlString = Field(description="The target URL; events are POSTed to it as received.")
    signing_secret_ref: LocalObjectRef = Field(
        description="A ManagedSecret (a whsec_ secret: type random, base64, prefix whsec_) whose "
        "value signs every delivery; during a rotation's grace period the previous value signs "
        "too. Deliveries are never sent unsigned."
    )
    timeout_seconds: Annotated[
        float, Field(gt=0, le=300, description="Timeout of one delivery attempt.")
    ] = 5
    max_attempts: Annotated[
        int,
        Field(ge=1, le=100, description="Attempts before a delivery is dead-lettered."),
    ] = 8
    max_age: Duration = Field(
        default="24h",
        description="A delivery not made this long after its event was received is dead-lettered "
        "(at most spec.store.retentionDays).",
    )
    backoff: ForwardBackoff = Field(default_factory=ForwardBackoff)
    max_concurrency: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Requests in flight to the target, per receiver process (each of a "
            "pod's workers).",
        ),
    ] = 8
    circuit_breaker: ForwardCircuitBreaker = Field(default_factory=ForwardCircuitBreaker)

    @model_validator(mode="after")
    def _positive_age(self) -> Self:
        if parse_duration(self.max_age) <= timedelta(0):
            raise ValueError("maxAge must be longer than 0s")
        return self

    @property
    def max_age_seconds(self) -> float:
        return parse_duration(self.max_age).total_seconds()


class ServiceExposure(ApiModel):
    """The receiver's Service."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="The Service type."
    )
    port: Annotated[int, Field(ge=1, le=65535, description="The Service port.")] = 80


class IngressExposure(ApiModel):
    """An Ingress routing the source's path on a public host to the receiver."""

    host: Annotated[
        str, Field(max_length=253, pattern=DNS_SUBDOMAIN, description="The public host name.")
    ]
    class_name: str | None = Field(default=None, description="The IngressClass to use.")
    tls_secret_name: str | None = Field(
        default=None, description="A Secret with the host's TLS certificate (default: no TLS)."
    )


class Exposure(ApiModel):
    """How the endpoint is reachable: always a Service, optionally an Ingress."""

    service: ServiceExposure = Field(default_factory=ServiceExposure)
    ingress: IngressExposure | None = None


# How the custom resource says it has what a provider needs (CEL over the spec), and in words.
_PRESENT: dict[Need, str] = {
    Need.AUTH: "has(self.auth)",
    Need.HEADER: "has(self.verification) && has(self.verification.header)",
    Need.PUBLIC_KEY: "has(self.verification) && has(self.verification.publicKey)",
    # The Ingress gives the public URL when none is set.
    Need.PUBLIC_URL: "(has(self.verification) && has(self.verification.publicUrl))"
    " || (has(self.exposure) && has(self.exposure.ingress))",
    Need.TOKEN_HEADER: "!has(self.verification) || !has(self.verification.tokenScheme)"
    " || self.verification.tokenScheme != 'header' || has(self.verification.header)",
}
NEED_WORDS: dict[Need, str] = {
    Need.SECRET: "verification.secretRef or verification.managedSecretRef",
    Need.PUBLIC_URL: "verification.publicUrl or exposure.ingress",
}
_AUTH_CONFLICT = (
    "auth cannot be combined with a provider that reads the Authorization header itself "
    "(vonage; token unless tokenScheme is header)"
)


def _provider_cel_rules() -> list[CelRule]:
    """The provider rules of webhook_server.verify.registry, as CEL the API server checks."""
    rules = []
    for provider, spec in PROVIDERS.items():
        for need in spec.needs:
            if need in _PRESENT:
                present = _PRESENT[need]
                if "&&" in present or "||" in present:
                    present = f"({present})"
                rules.append(
                    CelRule(
                        f"self.provider != '{provider.value}' || {present}",
                        f"provider {provider.value} requires {NEED_WORDS.get(need, need.value)}",
                    )
                )
        if provider is Provider.TOKEN:
            rules.append(
                CelRule(
                    f"self.provider != 'token' || ({_PRESENT[Need.TOKEN_HEADER]})",
                    f"provider token requires {Need.TOKEN_HEADER.value}",
                )
            )
    rules.append(
        CelRule(
            f"self.provider in {[p.value for p in SECRETLESS_PROVIDERS]} || "
            "(has(self.verification) && (has(self.verification.secretRef) || "
            "has(self.verification.managedSecretRef)))",
            f"this provider requires {NEED_WORDS[Need.SECRET]}",
        )
    )
    secretless = [p.value for p in SECRETLESS_PROVIDERS]
    rules.append(
        CelRule(
            f"!(self.provider in {secretless}) || !has(self.verification) || "
            "!(has(self.verification.secretRef) || has(self.verification.managedSecretRef))",
            f"providers {', '.join(secretless)} take no verification secret: it would be ignored",
        )
    )
    for name in VERIFICATION_OPTIONAL_FIELDS:
        users = [p.value for p in providers_reading(name)]
        rules.append(
            CelRule(
                f"!has(self.verification) || !has(self.verification.{name})"
                f" || self.provider in {users}",
                f"verification.{name} is used only by provider(s) {', '.join(users)}",
            )
        )
    rules.append(
        CelRule(
            "!has(self.auth) || !(self.provider == 'vonage' || (self.provider == 'token' && "
            "(!has(self.verification) || !has(self.verification.tokenScheme) || "
            "self.verification.tokenScheme != 'header')))",
            _AUTH_CONFLICT,
        )
    )
    return rules


class WebhookSourceSpec(ApiModel):
    """The desired endpoint: provider, verification, limits, storage and exposure."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_provider_cel_rules()))

    provider: Provider = Field(
        description="The sender's signature scheme: standard covers Standard Webhooks, Svix and "
        "Clerk; hmac is a configurable HMAC; jwt accepts a bearer token only; token a shared "
        "token (weaker than a signature, for senders that cannot sign). See docs/receiver.md."
    )
    path: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        description="The endpoint's URL path (default: /hooks/<namespace>/<name>); not under "
        "/events (the Events API's).",
        json_schema_extra=cel_rules(
            CelRule(
                f"self != '{EVENTS_API_PREFIX}' && !self.startsWith('{EVENTS_API_PREFIX}/')",
                f"path must not be under {EVENTS_API_PREFIX}: the Events API's",
            )
        ),
    )
    verification: Verification = Field(default_factory=Verification)
    auth: AuthConfig | None = Field(
        default=None,
        description="Bearer-JWT authentication: a JWKS URL or PEM public key, issuer, audiences "
        "and authorized parties. Optional for every provider, required for jwt.",
        json_schema_extra=cel_rules(
            CelRule(
                "has(self.jwksUrl) != has(self.publicKey)",
                "set exactly one of jwksUrl or publicKey",
            )
        ),
    )
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="Request limits: maxBodyBytes, requestsPerSecond and burst, per receiver "
        "process (each of a pod's workers has its own).",
    )
    cors: CorsConfig = Field(
        default_factory=CorsConfig,
        description="Browser origins allowed to call the endpoint (default: none).",
    )
    store: Store = Field(default_factory=Store)
    forward: Forward | None = None
    replicas: Annotated[int, Field(ge=0, le=100, description="Receiver pods.")] = 1
    workers: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_WORKERS,
            description="Receiver processes per pod, serving its port together (SO_REUSEPORT), "
            "each with its own event loop, database pool, writers and limits: the connection, "
            "memory and queue caps and limits.requestsPerSecond and burst apply per process, so "
            "a pod admits up to workers times them (docs/receiver.md, Worker processes). "
            "replicas spreads receivers over nodes and survives the loss of one; workers lets "
            "one pod use more than one core. Without spec.resources the default requests and "
            "memory limit grow with workers (docs/operator.md).",
        ),
    ] = 1
    resources: dict[str, Any] | None = Field(
        default=None,
        description="The receiver container's resources (requests and limits), as in a Pod. "
        "Default: cpu 50m and memory 64Mi requested, memory limited to 256Mi, per worker (and "
        "with workers above 1, 64Mi more requested and 128Mi more allowed for the supervisor).",
    )
    exposure: Exposure = Field(default_factory=Exposure)
    events_api: EventsApiConfig | None = Field(
        default=None,
        description="The Events API on the receiver (GET /events, GET /events/{id}, POST "
        "/events/{id}/replay, POST /events/replay; docs/events-api.md): who may call it (auth: "
        "a JWKS URL or PEM public key, issuer, audiences, authorized parties, as spec.auth), "
        "the scopes that allow reading and replaying (scopeClaim, readScope, replayScope), and "
        "its request budget per receiver process (each of a pod's workers). Absent: the API "
        "does not exist (its paths answer 404). Reached through the receiver's Service; the "
        "Ingress routes only spec.path.",
        json_schema_extra=cel_rules(
            CelRule(
                "has(self.auth.jwksUrl) != has(self.auth.publicKey)",
                "set exactly one of auth.jwksUrl or auth.publicKey",
            ),
            CelRule(
                "!has(self.readScope) || !has(self.replayScope) || "
                "self.readScope != self.replayScope",
                "readScope and replayScope must differ",
            ),
        ),
    )

    @model_validator(mode="after")
    def _provider_rules(self) -> Self:
        v = self.verification
        fields = {name for name, attr in VERIFICATION_OPTIONAL_FIELDS.items() if getattr(v, attr)}
        facts = SourceFacts(
            auth=self.auth is not None,
            secret=(v.secret_ref or v.managed_secret_ref) is not None,
            fields=frozenset(fields),
            token_scheme=v.token_scheme or TokenScheme.BEARER,
            public_key=v.public_key,
        )
        if self.path is not None and (
            self.path == EVENTS_API_PREFIX or self.path.startswith(EVENTS_API_PREFIX + "/")
        ):
            raise ValueError(f"path must not be under {EVENTS_API_PREFIX}: the Events API's")
        refused = provider_refuses(self.provider, facts)
        if refused is not None:
            raise ValueError(refused)
        if self.exposure.ingress is not None:
            # The receiver is given the URL derived from the Ingress (builders.receiver_config).
            facts = SourceFacts(
                auth=facts.auth,
                secret=facts.secret,
                fields=frozenset(fields | {"publicUrl"}),
                token_scheme=facts.token_scheme,
            )
        lacks = provider_lacks(self.provider, facts)
        if lacks is not None:
            raise ValueError(
                f"provider {self.provider.value} requires {NEED_WORDS.get(lacks, lacks.value)}"
            )
        if (
            self.forward is not None
            and self.forward.max_age_seconds > self.store.retention_days * 86_400
        ):
            # A delivery goes with its event at retention: it cannot be retried longer.
            raise ValueError("forward.maxAge must not exceed store.retentionDays")
        return self


class ForwardStatus(StatusModel):
    """The forward outbox as the event store has it (every receiver's work), refreshed
    periodically by the operator. Figures are exact when written; counts are rewritten when they
    move by a tenth (any change below 10), times when they move into another minute."""

    backlog: Annotated[int, Field(ge=0, description="Deliveries pending (due or waiting).")]
    dead_letters: Annotated[
        int, Field(ge=0, description="Dead-lettered deliveries kept (until retention).")
    ]
    oldest_pending_time: Timestamp | None = Field(
        default=None,
        description="When the event of the oldest pending delivery was received (or, for a "
        "replay, re-queued).",
    )
    last_delivery_time: Timestamp | None = Field(
        default=None, description="When a delivery last succeeded."
    )
    circuit: Literal["Closed", "Open", "HalfOpen"] = Field(
        description="Open when any receiver's circuit to the target is open (HalfOpen: probing)."
    )


class WebhookSourceStatus(Status):
    """Where the endpoint is and whether it receives."""

    endpoint: str | None = Field(default=None, description="The in-cluster URL of the endpoint.")
    external_endpoint: str | None = Field(
        default=None, description="The public URL, when exposed through an Ingress."
    )
    ready_replicas: Annotated[int | None, Field(ge=0, description="Receiver pods ready.")] = None
    last_event_time: Timestamp | None = Field(
        default=None,
        description="When the last event was received (stored); rewritten at most once a minute.",
    )
    forward: ForwardStatus | None = Field(
        default=None,
        description="Delivery to spec.forward.url, when set: read from the event store every "
        "30 s; figures are exact when written, counts are rewritten when they move by a tenth "
        "(any change below 10), times when they move into another minute.",
    )


class WebhookSource(CustomResource):
    """One inbound webhook endpoint: a receiver that verifies every delivery and stores it
    durably before acknowledging it."""

    names: ClassVar[KindNames] = KindNames(WEBHOOK_SOURCE, "webhooksources", ("whs",))
    name_rule: ClassVar[NameRule] = WEBHOOK_SOURCE_NAME

    api_version: Literal["dfm.dev/v1alpha1"] = "dfm.dev/v1alpha1"
    kind: Literal["WebhookSource"] = "WebhookSource"
    spec: WebhookSourceSpec
    status: WebhookSourceStatus | None = None

    @property
    def route(self) -> str:
        return self.spec.path or default_route(self.metadata.namespace, self.metadata.name)
