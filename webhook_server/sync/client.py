"""GET one page, with the manners of a guest: a request rate, retries with full-jitter back-off on
5xx and timeouts, 429/503 ``Retry-After`` honoured, a token re-read once after a 401.

The pieces are the shared ones of ``webhook_server.outbound`` (also forwarding's and the token
requests'). Nothing here logs or raises a token, a response body or a URL's query.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yarl

from webhook_server.bodies import read_limited
from webhook_server.logs import get_logger
from webhook_server.outbound import Pacer, full_jitter_backoff, parse_retry_after
from webhook_server.sync.config import HttpConfig, RetryConfig, TokenConfig
from webhook_server.sync.documents import BadResponse
from webhook_server.sync.pagination import PageRequest, describe, full_url
from webhook_server.sync.summary import (
    TOKEN_UNAVAILABLE,
    UPSTREAM_FAILING,
    UPSTREAM_REFUSED,
    SyncFailure,
)

log = get_logger("dfm.sync")

# Answers worth another attempt: the server is struggling or asks us to wait.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "df-middleware-sync/0.1"

SleepFn = Callable[[float], Awaitable[None]]


class TokenSource(Protocol):
    """Where the bearer token comes from; read again when the API refuses the one it has."""

    def read(self) -> str | None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class FileToken:
    """A token file (a mounted Secret key: kubelet replaces it when the ManagedSecret refreshes
    the token; mounted without subPath, so the new value is visible to a running job)."""

    path: str

    def read(self) -> str | None:
        try:
            return Path(self.path).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def describe(self) -> str:
        return self.path


@dataclass(frozen=True)
class StaticToken:
    """A literal token (`dfm sync run -f` with a Secret in the files)."""

    value: str

    def read(self) -> str | None:
        return self.value.strip() or None

    def describe(self) -> str:
        return "the given token"


def token_source(config: TokenConfig | None) -> TokenSource | None:
    if config is None:
        return None
    if config.file is not None:
        return FileToken(config.file)
    assert config.value is not None
    return StaticToken(config.value)


@dataclass(frozen=True)
class Page:
    """One answered request: its headers (lower-case names) and parsed body (None when empty)."""

    headers: dict[str, str]
    body: Any


class Fetcher:
    """GETs pages for one run. Not shared between runs: it holds the run's token and pacing."""

    def __init__(
        self,
        http: HttpConfig,
        retry: RetryConfig,
        session: aiohttp.ClientSession,
        token: TokenSource | None,
        *,
        sleep: SleepFn = asyncio.sleep,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.http = http
        self.retry = retry
        self.session = session
        self.token_source = token
        self.sleep = sleep
        self.wall_clock = wall_clock
        self.rng = rng
        self.pacer = Pacer(http.requests_per_second, http.burst, clock=monotonic)
        self.requests = 0
        self.retries = 0
        self._token: str | None = None
        if token is not None:
            self._token = token.read()
            if self._token is None:
                raise SyncFailure(TOKEN_UNAVAILABLE, f"no token in {token.describe()}")

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **self.http.headers}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def get(self, request: PageRequest) -> Page:
        """The page's answer; raises SyncFailure (after the retries) or BadResponse."""
        where = describe(request.url)
        url = yarl.URL(full_url(request), encoded=True)
        failures = 0
        token_reread = False
        while True:
            delay = self.pacer.delay()
            if delay > 0:
                await self.sleep(delay)
            self.requests += 1
            retry_after: float | None = None
            try:
                async with self.session.get(
                    url,
                    headers=self._headers(),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.http.timeout_seconds),
                ) as response:
                    status = response.status
                    if 200 <= status < 300:
                        return await self._page(response, where)
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), self.wall_clock()
                    )
                    # Read a little of the body so the connection can be reused; never kept.
                    await response.content.read(4096)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures += 1
                what = f"GET {where}: no answer ({type(exc).__name__})"
                await self._again(failures, what, None)
                continue
            if status == 401 and self.token_source is not None and not token_reread:
                # The token may have been refreshed (and the file updated) since it was read.
                token_reread = True
                fresh = self.token_source.read()
                if fresh is not None and fresh != self._token:
                    self._token = fresh
                    log.info("token refused (401); retrying once with the refreshed token")
                    continue
            if status == 401:
                raise SyncFailure(
                    TOKEN_UNAVAILABLE,
                    f"GET {where}: the API refused the token (401)"
                    + (
                        "; no newer token is mounted"
                        if self.token_source is not None
                        else "; the connector has no auth"
                    ),
                )
            if status in RETRYABLE_STATUSES or status >= 500:
                failures += 1
                await self._again(failures, f"GET {where}: answered {status}", retry_after)
                continue
            if 300 <= status < 400:
                raise SyncFailure(
                    UPSTREAM_REFUSED,
                    f"GET {where}: answered {status} (a redirect; redirects are not followed, "
                    "set url to the final location)",
                )
            raise SyncFailure(UPSTREAM_REFUSED, f"GET {where}: answered {status}")

    async def _again(self, failures: int, what: str, retry_after: float | None) -> None:
        """Wait before the next attempt, or give up after the last one."""
        if failures >= self.retry.max_attempts:
            raise SyncFailure(
                UPSTREAM_FAILING, f"{what}, {failures} attempt(s), giving up for this run"
            )
        wait = retry_after
        if wait is None:
            wait = full_jitter_backoff(
                failures,
                base=self.retry.backoff_seconds,
                cap=self.retry.max_backoff_seconds,
                rng=self.rng,
            )
        self.retries += 1
        log.warning(
            "request failed, retrying", reason=what, attempt=failures, wait_s=round(wait, 3)
        )
        await self.sleep(wait)

    async def _page(self, response: aiohttp.ClientResponse, where: str) -> Page:
        raw = await read_limited(
            response.content, response.content_length, self.http.max_response_bytes
        )
        if raw is None:
            raise BadResponse(
                f"GET {where}: the response is larger than {self.http.max_response_bytes} bytes"
            )
        headers: dict[str, str] = {}
        for name, value in response.headers.items():
            key = name.lower()
            # A repeated header (Link, often) is one comma-separated list (RFC 9110 §5.3).
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if not raw.strip():
            return Page(headers, None)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadResponse(f"GET {where}: the response is not JSON") from None
        return Page(headers, body)
