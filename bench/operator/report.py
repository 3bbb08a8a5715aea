"""The benchmark's printed report: a comparison table, the targets, where the requests went."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.operator.scenario import MILESTONES, Result

TARGET_SECONDS = 60.0
TARGET_RSS_MB = 250.0
VERBS = ("get", "list", "watch", "create", "apply", "patch", "update", "delete", "discovery")


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f} {unit}".strip()


def ratio(ours: float | None, base: float | None) -> str:
    if ours is None or base is None or base == 0:
        return "—"
    return f"{ours / base:.2f}x"


def mib_to_mb(mib: float | None) -> float | None:
    """MiB (/proc reports KiB) to MB (10^6 bytes): the target's unit, read strictly."""
    return None if mib is None else mib * 1024 * 1024 / 1_000_000


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Plain text, first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def verdict(value: float | None, limit: float) -> str:
    return "MISS" if value is None or value > limit else "PASS"


def comparison(ours: Result, base: Result | None) -> list[list[str]]:
    n = ours.sources

    def row(
        name: str, get: Callable[[Result], float | None], unit: str = "", digits: int = 1
    ) -> list[str]:
        a = get(ours)
        b = get(base) if base is not None else None
        return [name, fmt(a, unit, digits), fmt(b, unit, digits), ratio(a, b)]

    def count(name: str, get: Callable[[Result], int]) -> list[str]:
        return row(name, lambda r: float(get(r)), "", 0)

    verbs = [v for v in VERBS if ours.requests.get(v) or (base and base.requests.get(v))]

    def milestone(m: float) -> Callable[[Result], float | None]:
        return lambda r: r.milestones.get(m)

    def verb_count(verb: str) -> Callable[[Result], int]:
        return lambda r: r.requests.get(verb, 0)

    return [
        row("time to all Ready (from 1st create)", lambda r: r.ready_s, "s"),
        *(row(f"  time to {round(m * 100)}% Ready", milestone(m), "s") for m in MILESTONES),
        row("  creating the sources took", lambda r: r.create_s, "s"),
        ["  Ready at the end", f"{ours.ready}/{n}", f"{base.ready}/{n}" if base else "—", ""],
        row("operator quiet again (from 1st create)", lambda r: r.quiet_s, "s"),
        row("operator start-up (launch -> watching)", lambda r: r.startup_s, "s"),
        count("API requests until all Ready", lambda r: r.requests_at_ready),
        count("API requests until quiet", lambda r: r.total_requests),
        *(count(f"  {verb}", verb_count(verb)) for verb in verbs),
        row("  per source", lambda r: r.total_requests / n),
        row("operator RSS idle (watching, 0 sources)", lambda r: r.idle_rss_mb, "MiB"),
        row("operator RSS when all Ready", lambda r: r.rss_mb, "MiB"),
        row("operator RSS when quiet", lambda r: r.quiet_rss_mb, "MiB"),
        row("operator peak RSS (VmHWM)", lambda r: r.peak_rss_mb, "MiB"),
        row("operator CPU until all Ready", lambda r: r.cpu_s, "s"),
        row("  per source", lambda r: None if r.cpu_s is None else r.cpu_s / n * 1000, "ms"),
        row("bench+emulator CPU, same span", lambda r: r.bench_cpu_s, "s"),
        row("other processes' CPU, same span (noise)", lambda r: r.other_cpu_s, "s"),
    ]


def targets(ours: Result) -> list[list[str]]:
    n = ours.sources
    if ours.ready_s is not None:
        elapsed = fmt(ours.ready_s, "s")
    else:
        elapsed = f"not reached ({ours.ready}/{n} Ready)"
    peak_mb = mib_to_mb(ours.peak_rss_mb)
    return [
        [
            f"all {n} Ready within {TARGET_SECONDS:g} s",
            elapsed,
            f"{TARGET_SECONDS:g} s",
            verdict(ours.ready_s, TARGET_SECONDS),
        ],
        [
            f"operator peak RSS ≤ {TARGET_RSS_MB:g} MB",
            f"{fmt(peak_mb, 'MB')} ({fmt(ours.peak_rss_mb, 'MiB')})",
            f"{TARGET_RSS_MB:g} MB",
            verdict(peak_mb, TARGET_RSS_MB),
        ],
    ]


def report(ours: Result, base: Result | None, *, setup: str, top: int = 15) -> str:
    out = [setup, ""]
    header = ["metric", ours.label, f"{base.label} (kopf floor)" if base else "baseline", "ratio"]
    out += [table(comparison(ours, base), header), ""]
    out += [table(targets(ours), ["target", "measured", "limit", "result"]), ""]
    for r in (ours, base):
        if r is not None and r.other_cpu_s and r.ready_s and r.other_cpu_s > 0.1 * r.ready_s:
            out.append(
                f"WARNING [{r.label}]: other processes used {r.other_cpu_s:.1f} s of CPU "
                f"during its {r.ready_s:.1f} s: the machine was not idle, numbers are skewed."
            )
    out.append(f"Requests by the operator until quiet, top {top}:")
    rows = [
        [what, str(n), str(base.by_request.get(what, 0)) if base else "—"]
        for what, n in ours.by_request.most_common(top)
    ]
    out.append(table(rows, ["verb resource (client)", ours.label, "baseline"]))
    clients = ", ".join(f"{k}: {v}" for k, v in ours.by_client.most_common())
    events = ", ".join(f"{k}: {v}" for k, v in ours.events.most_common())
    out.append(f"By client ({ours.label}): {clients or 'none'}")
    out.append(f"Events posted ({ours.label}): {events or 'none'}")
    for r in (ours, base):
        if r is not None:
            if r.crashed:
                out.append(f"[{r.label}] CRASHED: {r.crashed}")
            out.append(f"[{r.label}] log: {r.log_path} (exit code {r.exit_code})")
    return "\n".join(out)


def summary(runs: Sequence[tuple[bool, Result, Result | None]]) -> str:
    """Both creation orders side by side: time to all Ready and peak RSS, against the targets."""
    rows = []
    for before, ours, base in runs:
        peak_mb = mib_to_mb(ours.peak_rss_mb)
        rows.append(
            [
                "all existing at start-up" if before else "created one by one",
                fmt(ours.ready_s, "s")
                if ours.ready_s is not None
                else f"{ours.ready}/{ours.sources}",
                verdict(ours.ready_s, TARGET_SECONDS),
                f"{fmt(ours.peak_rss_mb, 'MiB')} = {fmt(peak_mb, 'MB')}",
                verdict(peak_mb, TARGET_RSS_MB),
                fmt(base.peak_rss_mb, "MiB") if base is not None else "—",
                fmt(ours.other_cpu_s, "s"),
            ]
        )
    header = [
        "creation order",
        "all Ready",
        f"≤ {TARGET_SECONDS:g} s",
        "peak RSS",
        f"≤ {TARGET_RSS_MB:g} MB",
        "kopf floor peak",
        "noise CPU",
    ]
    n = runs[0][1].sources
    return f"Both creation orders, {n} WebhookSources:\n" + table(rows, header)
