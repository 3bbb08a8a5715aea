"""The forward target of bench/forward, run in its own process.

``python -m bench.forward.consumer --port P --count FILE``

A consumer that costs as little CPU as possible (it shares two cores with everything else): a
bare asyncio HTTP/1.1 keep-alive server that reads each request's head and body just far enough
to frame it and answers ``204`` to a POST, ``200`` to a GET (the bench's readiness probe). It
does not verify signatures: what is measured is the receiver's side. The number of POSTs it
answered is written to ``--count`` when it is stopped (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

_NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Consumer(asyncio.Protocol):
    answered = 0

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            assert self.transport is not None
            if head.startswith(b"post"):
                Consumer.answered += 1
                self.transport.write(_NO_CONTENT)
            else:
                self.transport.write(_OK)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Consumer, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.forward.consumer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))
    args.count.write_text(str(Consumer.answered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
