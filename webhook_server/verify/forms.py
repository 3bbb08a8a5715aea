"""Form bodies and signed URLs: what Twilio and Mandrill sign.

Both sign the URL they called (the public one, with its query string) followed by every POST
parameter's name and value, sorted by name, with no delimiter. The body is stored byte for byte;
the parameters are decoded only to rebuild that string.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qsl, urlsplit, urlunsplit

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# More fields than any provider sends; parsing stops there (the body is size-limited anyway).
MAX_FIELDS = 10_000


def form_params(body: bytes) -> list[tuple[str, str]] | None:
    """An ``application/x-www-form-urlencoded`` body as (name, value) pairs, in order; None when it
    is not one (bytes or percent-escapes that are not UTF-8, too many fields)."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except ValueError:  # UnicodeDecodeError included
        return None


def first_values(params: list[tuple[str, str]]) -> dict[str, str]:
    """Each parameter's first value."""
    values: dict[str, str] = {}
    for name, value in params:
        values.setdefault(name, value)
    return values


def query_value(query: str, name: str) -> str | None:
    """The first value of ``name`` in a raw query string, or None."""
    for key, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        if key == name:
            return value
    return None


def signed_url(public_url: str, query: str) -> str:
    """The URL the provider called: the configured public URL plus the request's query string,
    exactly as sent."""
    return f"{public_url}?{query}" if query else public_url


def url_with_params(url: str, params: list[tuple[str, str]], *, distinct: bool) -> bytes:
    """``url`` followed by each parameter's name and value, sorted by name (code point order,
    which is the "Unix-style case-sensitive" order Twilio names). ``distinct``: Twilio's SDKs
    sign each distinct value of a repeated name once, sorted; Mandrill sends no repeated names.
    """
    if distinct:
        by_name: dict[str, set[str]] = {}
        for name, value in params:
            by_name.setdefault(name, set()).add(value)
        pairs = [(name, value) for name in sorted(by_name) for value in sorted(by_name[name])]
    else:
        pairs = sorted(params, key=lambda pair: pair[0])
    text = url + "".join(name + value for name, value in pairs)
    return text.encode("utf-8", "surrogateescape")


def port_variants(url: str) -> list[str]:
    """``url`` as written and with its default port added or removed: Twilio has signed both
    forms, and its SDKs accept either."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port
    except ValueError:
        return [url]
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if port is None:
        other = f"{prefix}{host}:{default}"
    elif port == default:
        other = f"{prefix}{host}"
    else:
        return [url]
    return [url, urlunsplit(parts._replace(netloc=other))]


def params_digest(params: list[tuple[str, str]]) -> str:
    """``sha256:`` and a hash of the parameters, sorted: what the signature covers, so a replay
    that re-encodes the form (``%20`` for ``+``, another order) still gets the same id, where a
    hash of the bytes would not."""
    canonical = json.dumps(sorted(params), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()
