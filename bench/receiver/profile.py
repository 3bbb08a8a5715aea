"""``--profile``: sample the receiver with py-spy during its measured run and summarize.

py-spy is not a dependency; install it anywhere (``pip install --target /tmp/pyspy py-spy``) and
pass ``--py-spy /tmp/pyspy/bin/py-spy`` or put it on PATH. It samples the receiver from outside
(``py-spy record --format raw``, i.e. collapsed stacks), pausing it briefly for each sample, so
the figures of a profiled run are a little lower than those of a plain one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LOCATION = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def find(explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("py-spy")


def start(py_spy: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--full-filenames",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _area(path: str) -> str:
    """A frame's file grouped by what it belongs to: a package, a stdlib module, our code."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    for ours in ("webhook_server/", "bench/"):
        if path.startswith(ours) or f"/{ours}" in path:
            rest = path.split(ours, 1)[1]
            return ours + rest.split("/", 1)[0] if "/" in rest else ours + rest
    stdlib = re.search(r"/lib/python3\.\d+/(.*)$", path)
    return "stdlib " + (stdlib.group(1) if stdlib else path.rsplit("/", 1)[-1])


@dataclass
class Summary:
    samples: int
    by_area: list[tuple[str, float]]  # self time
    by_function: list[tuple[str, float]]  # self time
    inclusive: list[tuple[str, float]]  # our code and the libraries it calls into

    def render(self, top: int = 12) -> str:
        lines = [f"py-spy: {self.samples} samples of the server's busy time (idle excluded)"]
        sections = (
            ("self time by package/module", self.by_area),
            ("self time by function", self.by_function),
            ("inclusive time, selected frames", self.inclusive),
        )
        for title, rows in sections:
            lines.append(f"  {title}:")
            lines += [f"    {pct:5.1f}%  {name}" for name, pct in rows[:top]]
        return "\n".join(lines)


# Frames worth seeing inclusively: where a request's time goes, by step.
_INCLUSIVE = (
    "request_context",
    "receive",
    "_read_body",
    "verify",
    "stored_headers",
    "HeaderFilter.__call__",
    "AccessLog.request",
    "Store.submit",
    "Store._writer",
    "Store._insert",
    "BoundLoggerBase._proxy_to_logger",
    "MetricWrapperBase.labels",
    "uuid4",
    "timeout",
    "json_response",
    "RequestHandler.finish_response",
    "_SelectorSocketTransport._read_ready",
    "EpollSelector.select",
    # forwarding (bench/forward)
    "Forwarder._worker",
    "Forwarder._process",
    "Forwarder._send",
    "Pool.post",
    "build_headers",
    "Forwarder._record_loop",
    "Forwarder._poll_loop",
    "Forwarder.handoff",
    "AccessLog.write",
)


def summarize(raw: Path) -> Summary:
    self_area: Counter[str] = Counter()
    self_func: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for frame in stack.split(";"):
            match = _LOCATION.match(frame)
            func, path = (match["func"], match["file"]) if match else (frame, frame)
            frames.append((func, path))
        func, path = frames[-1]
        self_area[_area(path)] += n
        self_func[f"{func} ({_area(path)})"] += n
        for name in {f for f, _ in frames if f in _INCLUSIVE}:
            inclusive[name] += n

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in counter.most_common()] if total else []

    return Summary(total, pct(self_area), pct(self_func), pct(inclusive))
