"""A disk latency probe for ``bench.receiver.tail``: ``python -m bench.receiver.fsprobe DIR S``.

Appends 8 KiB to a file in DIR and ``fdatasync``s it every 5 ms, in a process of its own (no
GIL shared with the receiver), and prints one JSON line: each sync that took over 30 ms, as
(wall-clock time, milliseconds). When the receiver's commits stall at the same moments as this
probe, the stall is the disk's (every writer on it waits), not the receiver's or PostgreSQL's.

It also reads the kernel's count of dirty page-cache bytes (``Dirty`` in /proc/meminfo) every
100 ms, and reports its peak and each drop of over 32 MiB between two reads: a burst of
writeback, which the disk serves ahead of the syncs queued behind it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

SLOW_MS = 30.0
BURST_BYTES = 32 << 20
MEMINFO = Path("/proc/meminfo")


def dirty_bytes() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def probe(directory: str, seconds: float) -> dict[str, object]:
    slow: list[tuple[float, float]] = []
    bursts: list[tuple[float, int]] = []
    syncs = 0
    peak = last = dirty_bytes()
    next_read = time.monotonic() + 0.1
    with tempfile.NamedTemporaryFile(dir=directory, prefix="fsprobe-") as handle:
        fd = handle.fileno()
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            if last is not None and now >= next_read:
                next_read = now + 0.1
                dirty = dirty_bytes()
                if dirty is not None:
                    if last - dirty > BURST_BYTES:
                        bursts.append((time.time(), last - dirty))
                    peak, last = max(peak or 0, dirty), dirty
            os.write(fd, b"\0" * 8192)
            started = time.perf_counter()
            os.fdatasync(fd)
            took = (time.perf_counter() - started) * 1e3
            syncs += 1
            if took > SLOW_MS:
                slow.append((time.time(), round(took, 1)))
            time.sleep(0.005)
    return {"syncs": syncs, "slow": slow, "dirty_peak": peak, "writeback_bursts": bursts}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], float(sys.argv[2]))))
