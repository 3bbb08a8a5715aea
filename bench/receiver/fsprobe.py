"""A disk latency probe for ``bench.receiver.tail``: ``python -m bench.receiver.fsprobe DIR S``.

Appends 8 KiB to a file in DIR and ``fdatasync``s it every 5 ms, in a process of its own (no
GIL shared with the receiver), and prints one JSON line: each sync that took over 30 ms, as
(wall-clock time, milliseconds). When the receiver's commits stall at the same moments as this
probe, the stall is the disk's (every writer on it waits), not the receiver's or PostgreSQL's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

SLOW_MS = 30.0


def probe(directory: str, seconds: float) -> dict[str, object]:
    slow: list[tuple[float, float]] = []
    syncs = 0
    with tempfile.NamedTemporaryFile(dir=directory, prefix="fsprobe-") as handle:
        fd = handle.fileno()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(fd, b"\0" * 8192)
            started = time.perf_counter()
            os.fdatasync(fd)
            took = (time.perf_counter() - started) * 1e3
            syncs += 1
            if took > SLOW_MS:
                slow.append((time.time(), round(took, 1)))
            time.sleep(0.005)
    return {"syncs": syncs, "slow": slow}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], float(sys.argv[2]))))
