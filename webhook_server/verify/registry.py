"""Every provider in one place: its verifier, signer and sample, what a source of it needs and may
set, how ``dfm send`` signs for it, and its documentation.

Adding a provider is a member of ``webhook_server.config.Provider`` (its name), a module under
``webhook_server/verify/`` and an entry here; everything else is derived from this table: the
receiver's and the operator's validation rules (and the CRD's CEL rules), the CRD enum (from the
``Provider`` enum), the README's provider table and the provider sections of docs/receiver.md
(``make generate`` writes both; a test fails when they drift), and ``dfm send``/``dfm local``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from webhook_server.config import Provider, TokenScheme, VerificationConfig
from webhook_server.keys import check_highlevel_keys, standard_webhooks_key
from webhook_server.verify import (
    bearer,
    generic_hmac,
    github,
    highlevel,
    mailgun,
    mandrill,
    sendgrid,
    shared_token,
    shopify,
    slack,
    standard,
    stripe,
    telnyx,
    twilio,
    vonage,
)
from webhook_server.verify.base import Sampler, Signer, Verifier


class Need(enum.StrEnum):
    """What a provider can require and a source lack; the value names it in an error."""

    AUTH = "auth"
    HEADER = "verification.header"
    SECRET = "a verification secret"
    PUBLIC_KEY = "verification.publicKey"
    PUBLIC_URL = "verification.publicUrl"
    TOKEN_HEADER = "verification.header (with tokenScheme: header)"


class Signing(enum.Enum):
    """What ``dfm send`` signs a sample with."""

    SECRET = "the source's secret"
    PRIVATE_KEY = "a private key (--private-key): the provider signs with its own"
    BEARER_TOKEN = "nothing: the request carries a bearer JWT (--token)"


@dataclass(frozen=True)
class SourceFacts:
    """What a source has, as the rules see it (the receiver config and the custom resource both
    describe themselves this way). ``fields`` are the optional verification fields that are set,
    by their manifest names (``VERIFICATION_OPTIONAL_FIELDS``)."""

    auth: bool
    secret: bool
    fields: frozenset[str]
    token_scheme: TokenScheme = TokenScheme.BEARER
    public_key: str | None = None


def _highlevel_key_problem(text: str) -> str | None:
    try:
        check_highlevel_keys(text)
    except ValueError as exc:
        return str(exc)
    return None


def _standard_secret_problem(value: bytes) -> str | None:
    if standard_webhooks_key(value) is None:
        return "is not a Standard Webhooks secret (whsec_ followed by base64)"
    return None


class Scheme(Protocol):
    """A provider's module (``webhook_server.verify.<name>``): its verifier, signer and sample, as
    ``webhook_server.verify.base`` describes them."""

    verify: Verifier
    sign: Signer
    sample: Sampler


@dataclass(frozen=True)
class ProviderSpec:
    scheme: Scheme
    # The README's provider table: what is checked, where the event id and type come from.
    checks: str
    event_id: str
    event_type: str
    needs: tuple[Need, ...] = (Need.SECRET,)
    # Optional verification fields this provider reads; any other one set is refused.
    fields: frozenset[str] = frozenset()
    # The scheme itself reads Authorization, so spec.auth (a JWT there too) cannot be combined.
    reads_authorization: bool = False
    signing: Signing = Signing.SECRET
    # Why a secret value can never verify this provider's deliveries (after "is empty").
    secret_problem: Callable[[bytes], str | None] | None = None
    public_key_problem: Callable[[str], str | None] | None = None
    # Providers that sign inside the body (Mailgun): ``dfm send`` gets the signed body from here.
    sign_body: Callable[[bytes, bytes, VerificationConfig, float], bytes] | None = None
    # Providers that add to the URL's query string (Twilio's bodySHA256): what ``dfm send`` adds.
    query: Callable[[bytes, VerificationConfig], str] | None = None
    # Answers HEAD on its path with 200 (Mandrill checks a new webhook URL that way).
    answers_head: bool = False
    # This provider's section of docs/receiver.md (Markdown), if it has one.
    docs: str = field(default="", repr=False)

    @property
    def verify(self) -> Verifier:
        return self.scheme.verify

    @property
    def sign(self) -> Signer:
        return self.scheme.sign

    @property
    def sample(self) -> Sampler:
        return self.scheme.sample


HMAC_FIELDS = frozenset({"header", "timestampHeader", "idHeader", "typeHeader"})

PROVIDERS: dict[Provider, ProviderSpec] = {
    Provider.GITHUB: ProviderSpec(
        scheme=github,
        checks="`X-Hub-Signature-256` (HMAC-SHA256, hex, `sha256=`)",
        event_id="`X-GitHub-Delivery`",
        event_type="`X-GitHub-Event`",
    ),
    Provider.STRIPE: ProviderSpec(
        scheme=stripe,
        checks="`Stripe-Signature` `t=…,v1=…` over `{t}.{body}`, any `v1`, timestamp tolerance",
        event_id="body `id`",
        event_type="body `type`",
    ),
    Provider.STANDARD: ProviderSpec(
        scheme=standard,
        checks="Standard Webhooks `webhook-id/-timestamp/-signature` (`v1,<base64>`, any), "
        "`whsec_` secrets; also Svix/Clerk `svix-*` headers",
        event_id="`webhook-id`",
        event_type="body `type`",
        secret_problem=_standard_secret_problem,
    ),
    Provider.SHOPIFY: ProviderSpec(
        scheme=shopify,
        checks="`X-Shopify-Hmac-Sha256` (base64)",
        event_id="`X-Shopify-Webhook-Id`",
        event_type="`X-Shopify-Topic`",
    ),
    Provider.SLACK: ProviderSpec(
        scheme=slack,
        checks="`X-Slack-Signature` `v0=` over `v0:{ts}:{body}`, tolerance; answers "
        "`url_verification`",
        event_id="body `event_id`",
        event_type="`event.type` / `type`",
    ),
    Provider.HIGHLEVEL: ProviderSpec(
        scheme=highlevel,
        checks="`X-GHL-Signature` (Ed25519) or legacy `X-WH-Signature` (RSA-SHA256) against "
        "HighLevel's published keys (`verification.publicKey` overrides)",
        event_id="body `webhookId`",
        event_type="body `type`",
        needs=(),
        fields=frozenset({"publicKey"}),
        signing=Signing.PRIVATE_KEY,
        public_key_problem=_highlevel_key_problem,
    ),
    Provider.HMAC: ProviderSpec(
        scheme=generic_hmac,
        checks="any header, `sha1`/`sha256`/`sha512`, `hex`/`base64`, optional prefix, timestamp "
        "header and signed-content template",
        event_id="`idHeader` or body `id`",
        event_type="`typeHeader` or body `type`",
        needs=(Need.HEADER, Need.SECRET),
        fields=HMAC_FIELDS,
    ),
    Provider.JWT: ProviderSpec(
        scheme=bearer,
        checks="no body signature; a bearer JWT is required (`spec.auth`)",
        event_id="`Idempotency-Key` or body `id`",
        event_type="body `type`",
        needs=(Need.AUTH,),
        signing=Signing.BEARER_TOKEN,
    ),
    Provider.TWILIO: ProviderSpec(
        scheme=twilio,
        checks="`X-Twilio-Signature`: HMAC-SHA1 (auth token) over the public URL with its query "
        "string plus the sorted form parameters; JSON bodies through the URL's `bodySHA256`",
        event_id="`MessageSid:MessageStatus` (or `CallSid:CallStatus`, …), else a hash of the "
        "signed parameters",
        event_type="`message.<status>`, `call.<status>`, …",
        needs=(Need.SECRET, Need.PUBLIC_URL),
        fields=frozenset({"publicUrl"}),
        query=twilio.query,
        docs="""\
### Twilio

`provider: twilio` checks `X-Twilio-Signature`: base64 HMAC-SHA1, keyed with the account's Auth
Token (the Secret's value), over the URL Twilio called followed by every form parameter's name
and value, sorted by name. A request whose `X-Twilio-Webhooks-Signature-Settings` names
`algorithm=HMAC_SHA256` (a SharedKey) is checked with HMAC-SHA256. Form bodies
(`application/x-www-form-urlencoded`, what status callbacks and incoming messages use) are
stored byte for byte; the parameters are decoded only to rebuild the signed string. A body that
is not a form (JSON) is signed through the URL: Twilio adds `bodySHA256=<hex SHA-256 of the
body>` to the query string, and the body must hash to it.

**The signed URL is the public one.** Behind an Ingress or a load balancer the receiver sees its
own Host and scheme, not the URL Twilio called, so a source says what that is:
`verification.publicUrl: https://hooks.example.com/hooks/default/twilio` (scheme, host, optional
port, path; no query). Without it, the operator derives it from `spec.exposure.ingress`:
`https://<host><path>` when `tlsSecretName` is set, `http://` otherwise; a twilio source with
neither is `InvalidSpec`. The request's query string is appended exactly as it arrived (the
Ingress passes it through), and the URL is also tried with the default port added or removed, as
Twilio's SDKs do. `Host` and `X-Forwarded-*` headers are never consulted: anyone can send them.
A URL that does not match what Twilio was given (another host, `http` for `https`, a rewritten
path) fails every request as `bad_signature`.

The event id is the signed `MessageSid:MessageStatus` (`SmsSid:SmsStatus`, `CallSid:CallStatus`,
`RecordingSid:RecordingStatus`; without those, `sha256:` and a hash of all the signed
parameters, sorted), so each status change of a message is its own event and Twilio's retries
are duplicates; the type is `message.delivered`, `call.completed`, … . Twilio signs no
timestamp, so nothing can refuse a replay; but a replay carries the same signed parameters (how
ever it re-encodes the form), hence the same id, and is never stored twice.
`I-Twilio-Idempotency-Token` is not signed and not used.
""",
    ),
    Provider.TELNYX: ProviderSpec(
        scheme=telnyx,
        checks="`telnyx-signature-ed25519` (Ed25519) over `{telnyx-timestamp}|{body}` with the "
        "account's `verification.publicKey`, tolerance",
        event_id="body `data.id`",
        event_type="body `data.event_type`",
        needs=(Need.PUBLIC_KEY,),
        fields=frozenset({"publicKey"}),
        signing=Signing.PRIVATE_KEY,
        public_key_problem=telnyx.public_key_problem,
        docs="""\
### Telnyx

`provider: telnyx` checks `telnyx-signature-ed25519`, a base64 Ed25519 signature over
`{telnyx-timestamp}|{body}`, with the account's public key: `verification.publicKey`, as the
Mission Control portal shows it (base64 of the 32-byte key) or PEM. Several keys, separated by
white space (or several PEM blocks), are all accepted, for a key change. No Secret is needed. The
timestamp is signed and must be within `toleranceSeconds`, which refuses replays; the event id is
the body's `data.id`, the type `data.event_type` (`message.finalized`, `call.hangup`, …).
""",
    ),
    Provider.VONAGE: ProviderSpec(
        scheme=vonage,
        checks="`Authorization: Bearer` JWT, HS256 only, with the signature secret; its "
        "`payload_hash` is the body's SHA-256; `iat` tolerance",
        event_id="`message_uuid:status` (or call `uuid:status`)",
        event_type="`message.<status>` / `call.<status>`",
        reads_authorization=True,
        docs="""\
### Vonage

`provider: vonage` checks Vonage's signed webhooks (Messages and Voice API): an
`Authorization: Bearer` JWT signed with HS256 and the account's signature secret (the Secret's
value; Dashboard → Settings → Signature secret). The algorithm is pinned: a token with any other
`alg` is refused. Its `payload_hash` claim must be the hex SHA-256 of the body (a token without
one does not cover the body and is refused), its `iat` must be within `toleranceSeconds` and its
`exp`, if any, not past. The event id is `message_uuid:status` (`message_uuid:inbound` for an
inbound message; `uuid:status` for a call), so each status change is its own event and Vonage's
retries are duplicates; the type is `message.delivered`, `call.answered`, … . The scheme uses
`Authorization`, so a vonage source cannot also set `spec.auth`.
""",
    ),
    Provider.SENDGRID: ProviderSpec(
        scheme=sendgrid,
        checks="`X-Twilio-Email-Event-Webhook-Signature` (ECDSA P-256) over "
        "`{…-Timestamp}{body}` with `verification.publicKey`, tolerance; one batch per request",
        event_id="`sha256:` + the body's hash (the batch)",
        event_type="the batch's kinds, e.g. `delivered,open`",
        needs=(Need.PUBLIC_KEY,),
        fields=frozenset({"publicKey"}),
        signing=Signing.PRIVATE_KEY,
        public_key_problem=sendgrid.public_key_problem,
        docs="""\
### SendGrid Event Webhook

`provider: sendgrid` checks `X-Twilio-Email-Event-Webhook-Signature`, a base64 DER ECDSA
P-256/SHA-256 signature over `X-Twilio-Email-Event-Webhook-Timestamp` followed by the body, with
the verification key SendGrid shows once the Signed Event Webhook is on (`verification.publicKey`:
that base64 key, or PEM). No Secret is needed. The timestamp is signed and must be within
`toleranceSeconds`.

One POST is a batch: a JSON array of events. It is stored **once, as it came**: its event id is
`sha256:` and the body's SHA-256 (a redelivery of the same batch is a duplicate), its
`event_count` column holds how many events it carries (also in the 200 answer, `"eventCount"`),
and its type lists the kinds it holds, sorted and comma-separated (`delivered,open`; `batch`
when that would be long or odd). Why a column rather than one row per event: the signature covers
the batch, and the stored payload stays the bytes that were signed; a consumer that needs single
events splits the array and keys on each event's `sg_event_id`.
""",
    ),
    Provider.MAILGUN: ProviderSpec(
        scheme=mailgun,
        checks="HMAC-SHA256 of `timestamp` + `token`, carried in the body (JSON `signature` "
        "object or form fields), tolerance; a token reused with another event is refused",
        event_id="body `event-data.id` (form: `Message-Id`)",
        event_type="body `event-data.event` (form: `event`)",
        sign_body=mailgun.sign_body,
        docs="""\
### Mailgun

`provider: mailgun` checks the signature Mailgun puts in the body: hex HMAC-SHA256, keyed with
the HTTP webhook signing key (the Secret's value), of `timestamp` followed by `token`. JSON
webhooks carry them in a `signature` object beside `event-data`; form posts (legacy webhooks,
routes' `forward()`, as `application/x-www-form-urlencoded`) carry them as fields. Multipart
posts are not read: such a request is refused as malformed.

Only the timestamp and the token are signed, not the event, so a captured signature could be
re-used with any body. Hence the timestamp must be within `toleranceSeconds`, and **a token is
used once**: the store records it (table `webhook_replay_keys`, shared by every replica) in the
same transaction as the event, and refuses the token with another event until the tolerance has
passed (`401`, `dfm_receiver_signature_failures_total{reason="replayed"}`). The same event again
with the same token is a redelivery and is answered `duplicate`. The event id is
`event-data.id` (form: `Message-Id`, with `:event` when present), the type `event-data.event`.
""",
    ),
    Provider.MANDRILL: ProviderSpec(
        scheme=mandrill,
        checks="`X-Mandrill-Signature`: HMAC-SHA1 (webhook key) over the webhook URL plus the "
        "sorted form parameters; one batch (`mandrill_events`) per request",
        event_id="`sha256:` + a hash of the signed parameters (the batch)",
        event_type="the batch's kinds, e.g. `open,send`",
        needs=(Need.SECRET, Need.PUBLIC_URL),
        fields=frozenset({"publicUrl"}),
        answers_head=True,
        docs="""\
### Mailchimp Transactional (Mandrill)

`provider: mandrill` checks `X-Mandrill-Signature`: base64 HMAC-SHA1, keyed with the webhook's
key (the Secret's value), over the webhook URL exactly as entered in Mandrill followed by each
POST parameter's name and value, sorted by name. As for Twilio, the URL is
`verification.publicUrl` or the one derived from `spec.exposure.ingress`, plus the query string
as it arrived; Mandrill signs the URL exactly as entered, so no variant is tried (even a trailing
slash must match). A mandrill source answers `HEAD` on its path with 200: Mandrill checks a new
webhook URL that way.

The body is a form whose `mandrill_events` field is a JSON array of events: like SendGrid's, the
batch is stored once, as it came, with the id `sha256:` and a hash of the signed parameters
(sorted; not of the bytes, which a replay could re-encode), `event_count` and its kinds as the
type (`open,send`). Mandrill signs no timestamp, so a replay cannot be refused; it carries the
same parameters, hence the same id: a duplicate, never a second event.
""",
    ),
    Provider.TOKEN: ProviderSpec(
        scheme=shared_token,
        checks="a shared token (`Authorization: Bearer`, a named header, or HTTP Basic), "
        "constant time; **no signature**",
        event_id="`idHeader` or body `id`",
        event_type="`typeHeader` or body `type`",
        fields=frozenset({"header", "idHeader", "typeHeader", "tokenScheme"}),
        secret_problem=shared_token.secret_problem,
        docs="""\
### A shared token (senders that cannot sign)

`provider: token` is for senders that cannot sign: HighLevel *workflow* "Custom Webhook" actions
(which HighLevel does not sign, unlike its marketplace webhooks), Postmark, internal tools. The
request must carry the Secret's value, compared (as SHA-256 digests) in constant time:

- `tokenScheme: bearer` (the default): `Authorization: Bearer <token>`;
- `tokenScheme: header` with `header: X-Webhook-Token`: that header holds the token (it is never
  stored with the event);
- `tokenScheme: basic`: `Authorization: Basic`, where a secret `user:password` must match both
  and a secret without `:` is the password (any user name).

A token must be at least 16 characters; there is no unauthenticated mode. With
`managedSecretRef`, the token rotates like any ManagedSecret, and `previous` stays valid for the
grace period, long enough to update the sender.

**This is weaker than a signature.** The token travels with every request, so whoever sees one
request (a proxy's log, a dashboard) can send anything, and nothing ties it to the body. Nor is
there a timestamp, so replays are not refused: a redelivery is a duplicate only when it carries
the same `idHeader` value (or body `id`, else the body's hash). Pair it with `spec.auth` (a
signed, expiring JWT; use `tokenScheme: header`, since `bearer` and `basic` already use
`Authorization`) where the sender can, and prefer a signing provider whenever one exists.
""",
    ),
}

_missing = set(Provider) - set(PROVIDERS)
if _missing:  # pragma: no cover - a developer's mistake, caught at import by every test
    raise RuntimeError(f"providers without a registry entry: {sorted(_missing)}")

VERIFIERS: dict[Provider, Verifier] = {p: spec.verify for p, spec in PROVIDERS.items()}
SIGNERS: dict[Provider, Signer] = {p: spec.sign for p, spec in PROVIDERS.items()}
# Providers that verify without a shared secret (a bearer JWT, or the provider's public key).
SECRETLESS_PROVIDERS = tuple(p for p, spec in PROVIDERS.items() if Need.SECRET not in spec.needs)


def reads_authorization(provider: Provider, token_scheme: TokenScheme) -> bool:
    """Whether the scheme itself reads ``Authorization`` (so ``spec.auth`` cannot be added)."""
    if provider is Provider.TOKEN:
        return token_scheme is not TokenScheme.HEADER
    return PROVIDERS[provider].reads_authorization


def providers_reading(field_name: str) -> list[Provider]:
    """The providers that read an optional verification field (by its manifest name)."""
    return [p for p, spec in PROVIDERS.items() if field_name in spec.fields]


def provider_lacks(provider: Provider, facts: SourceFacts) -> Need | None:
    """The first thing ``provider`` requires that the source does not have, else None."""
    present = {
        Need.AUTH: facts.auth,
        Need.HEADER: "header" in facts.fields,
        Need.SECRET: facts.secret,
        Need.PUBLIC_KEY: "publicKey" in facts.fields,
        Need.PUBLIC_URL: "publicUrl" in facts.fields,
    }
    for need in PROVIDERS[provider].needs:
        if not present[need]:
            return need
    if (
        provider is Provider.TOKEN
        and facts.token_scheme is TokenScheme.HEADER
        and "header" not in facts.fields
    ):
        return Need.TOKEN_HEADER
    return None


def provider_refuses(provider: Provider, facts: SourceFacts) -> str | None:
    """Why a source of ``provider`` is refused for what it has (rather than lacks), else None:
    a verification field the provider does not read, ``auth`` where the scheme reads
    ``Authorization`` itself, a public key the provider cannot use."""
    spec = PROVIDERS[provider]
    for name in sorted(facts.fields - spec.fields):
        users = ", ".join(p.value for p in providers_reading(name))
        return f"verification.{name} is not used by provider {provider.value} (only by {users})"
    if facts.secret and Need.SECRET not in spec.needs:
        return (
            f"provider {provider.value} takes no verification secret (secretRef, "
            "managedSecretRef): it would be ignored"
        )
    if facts.auth and reads_authorization(provider, facts.token_scheme):
        return (
            f"auth cannot be combined with provider {provider.value}"
            + (f" and tokenScheme {facts.token_scheme.value}" if provider is Provider.TOKEN else "")
            + ": both read the Authorization header"
        )
    if facts.public_key is not None and spec.public_key_problem is not None:
        problem = spec.public_key_problem(facts.public_key)
        if problem is not None:
            return f"verification.{problem}"
    return None


def provider_problem(provider: Provider, facts: SourceFacts) -> str | None:
    """The data plane's verdict on a source: what it lacks, or why it is refused, else None."""
    lacks = provider_lacks(provider, facts)
    if lacks is not None:
        return f"provider {provider.value} requires {lacks.value}"
    return provider_refuses(provider, facts)
