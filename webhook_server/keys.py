"""Keys from configuration text: the JWT key of ``auth.publicKey``, HighLevel's signing keys,
Telnyx's Ed25519 and SendGrid's ECDSA P-256 keys, and the HMAC key inside a Standard Webhooks
``whsec_`` secret.

One parser each, for the config models (which refuse a key that can never verify anything, so a
bad manifest is a one-line error at validation time rather than a receiver that crash-loops or
refuses every delivery) and for the receiver that uses the keys.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)


def load_public_key(pem: str) -> PublicKey:
    """Parse a PEM public key; literal ``\\n`` sequences (a one-line env var) are accepted."""
    text = pem.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError("auth.publicKey is not a PEM public key") from exc
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise ValueError("auth.publicKey must be an RSA, EC, Ed25519 or Ed448 key")
    return key


def algorithms_for_key(key: PublicKey) -> frozenset[str]:
    """The JWS algorithms a key of this type (and curve) can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    return frozenset({"EdDSA"})


def jwt_key(pem: str, algorithms: tuple[str, ...]) -> tuple[PublicKey, tuple[str, ...]]:
    """The key of ``auth.publicKey`` and those of ``algorithms`` it can verify; raises ValueError
    when it is no key, or when it cannot verify any of them."""
    key = load_public_key(pem)
    usable = algorithms_for_key(key)
    allowed = tuple(a for a in algorithms if a in usable)
    if not allowed:
        raise ValueError(
            f"auth.publicKey cannot verify any of auth.algorithms {list(algorithms)} "
            f"(it can verify {sorted(usable) or 'none of them'})"
        )
    return key, allowed


@functools.lru_cache(maxsize=16)
def highlevel_keys(
    pem: str,
) -> tuple[tuple[ed25519.Ed25519PublicKey, ...], tuple[rsa.RSAPublicKey, ...]]:
    """The Ed25519 and RSA keys among the PEM blocks; blocks that do not parse are skipped."""
    ed25519_keys: list[ed25519.Ed25519PublicKey] = []
    rsa_keys: list[rsa.RSAPublicKey] = []
    for block in _PEM_BLOCK.findall(pem):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ed25519.Ed25519PublicKey):
            ed25519_keys.append(key)
        elif isinstance(key, rsa.RSAPublicKey):
            rsa_keys.append(key)
    return tuple(ed25519_keys), tuple(rsa_keys)


def check_highlevel_keys(pem: str) -> str:
    """``pem`` when every PEM block in it is an Ed25519 or RSA public key (and there is one);
    raises ValueError otherwise. A block that is skipped would leave a signature unverifiable."""
    blocks = _PEM_BLOCK.findall(pem)
    if not blocks:
        raise ValueError("publicKey holds no PEM block (-----BEGIN PUBLIC KEY----- ...)")
    for number, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"publicKey: PEM block {number} is not a public key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            raise ValueError(f"publicKey: PEM block {number} is neither an Ed25519 nor an RSA key")
    return pem


STANDARD_SECRET_PREFIX = b"whsec_"


def standard_webhooks_key(secret: bytes) -> bytes | None:
    """The HMAC key inside a ``whsec_`` secret (base64; like the reference libs, padding is
    optional), or None when it is not one."""
    core = secret.strip().removeprefix(STANDARD_SECRET_PREFIX).rstrip(b"=")
    try:
        key = base64.b64decode(core + b"=" * (-len(core) % 4), validate=True)
    except binascii.Error:
        return None
    return key or None


def _blocks_or_base64(text: str) -> list[bytes]:
    """The keys in ``text`` as DER or raw bytes: each PEM block, else each whitespace-separated
    base64 word (how Telnyx and SendGrid show a key: base64 without PEM armour)."""
    blocks = _PEM_BLOCK.findall(text)
    if blocks:
        return [block.encode() for block in blocks]
    words = text.split()
    if not words:
        raise ValueError("publicKey is empty")
    decoded = []
    for number, word in enumerate(words, 1):
        try:
            decoded.append(base64.b64decode(word, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"publicKey: key {number} is neither a PEM block nor base64") from exc
    return decoded


def _load(raw: bytes) -> object:
    if raw.startswith(b"-----BEGIN"):
        return serialization.load_pem_public_key(raw)
    return serialization.load_der_public_key(raw)


@functools.lru_cache(maxsize=16)
def ed25519_public_keys(text: str) -> tuple[ed25519.Ed25519PublicKey, ...]:
    """Ed25519 public keys: PEM blocks, base64 SubjectPublicKeyInfo, or base64 of the 32 raw bytes
    (what the Telnyx portal shows). Raises ValueError when any of them is not one."""
    keys = []
    for number, raw in enumerate(_blocks_or_base64(text), 1):
        try:
            if len(raw) == 32:
                key: object = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            else:
                key = _load(raw)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"publicKey: key {number} is not an Ed25519 public key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"publicKey: key {number} is not an Ed25519 public key")
        keys.append(key)
    return tuple(keys)


@functools.lru_cache(maxsize=16)
def p256_public_keys(text: str) -> tuple[ec.EllipticCurvePublicKey, ...]:
    """ECDSA P-256 public keys: PEM blocks or base64 SubjectPublicKeyInfo (what SendGrid shows as
    the verification key). Raises ValueError when any of them is not one."""
    keys = []
    for number, raw in enumerate(_blocks_or_base64(text), 1):
        try:
            key = _load(raw)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"publicKey: key {number} is not an ECDSA P-256 public key") from exc
        if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
            raise ValueError(f"publicKey: key {number} is not an ECDSA P-256 public key")
        keys.append(key)
    return tuple(keys)
