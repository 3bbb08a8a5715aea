"""Reading an HTTP body with a size limit, never holding more than the limit in memory.

One reader for every body this project reads from the network: a delivery to the receiver, a
JWKS document, an OAuth token response. A declared Content-Length over the limit is refused
before anything is read; otherwise the body is read in chunks until it ends or passes the limit.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

CHUNK_BYTES = 64 * 1024


async def read_limited(
    stream: aiohttp.StreamReader,
    content_length: int | None,
    limit: int,
    on_chunk: Callable[[int], None] | None = None,
) -> bytes | None:
    """The whole body, or None when it is (or says it is) larger than ``limit`` bytes.

    ``on_chunk`` is told the size of each chunk before it is kept, and may refuse it by raising
    (the receiver counts what bodies being read hold; see ``webhook_server.admission``).
    """
    if content_length is not None and content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            return None
        if on_chunk is not None:
            on_chunk(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)
