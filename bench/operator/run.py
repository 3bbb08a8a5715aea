"""``python -m bench.operator``: N WebhookSources against the emulated Kubernetes API.

Runs the scenario (see :mod:`bench.operator.scenario`) with ``dfm operator``, then with the
baseline (``kopf run bench/operator/baseline_operator.py``: kopf's floor, it only marks each
source Ready), and prints a table with the ratios and PASS/MISS per target. It does so for both
creation orders (``--order``): the sources created one by one once the operator watches, and all
of them existing when it starts; then one summary of both. Exits 0 unless something crashed: a
benchmark reports, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.operator.report import report, summary
from bench.operator.scenario import Result, Scenario, run_scenario, say

BASELINE_MODULE = Path(__file__).resolve().with_name("baseline_operator.py")
VENV_BIN = Path(sys.executable).parent

OPERATOR_ARGS = ("operator", "--standalone", "-A", "--metrics-port", "0", "--liveness", "")
# What dfm operator watches before it can react to a source, its Secret and its Deployment.
DFM_WATCHES = ("webhooksources", "deployments", "secrets")
ORDERS = ("after", "before", "both")


def dfm_command(tweaks: Sequence[str] = ()) -> tuple[str, ...]:
    if tweaks:
        return (
            sys.executable,
            "-m",
            "bench.operator.tweaks",
            ",".join(tweaks),
            "--",
            *OPERATOR_ARGS,
        )
    return (sys.executable, "-m", "dfm.cli", *OPERATOR_ARGS)


def baseline_command(*, quiet: bool = False) -> tuple[str, ...]:
    """``kopf run`` of the baseline. It logs at INFO like ``dfm operator`` (which calls
    ``kopf.configure()``: INFO, JSON lines); ``quiet``: warnings only."""
    kopf = str(VENV_BIN / "kopf")
    flags = ["--quiet"] if quiet else []
    return (kopf, "run", "--standalone", "-A", *flags, str(BASELINE_MODULE))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.operator",
        description=(
            "N WebhookSources against the emulated Kubernetes API: time until all are Ready, "
            "API requests, operator RSS; then the same with a trivial kopf operator (baseline)."
        ),
    )
    p.add_argument("--sources", type=int, default=1000, help="how many WebhookSources (1000)")
    p.add_argument(
        "--timeout", type=float, default=180.0, help="give up on a run after this many s (180)"
    )
    p.add_argument(
        "--rollout-delay",
        type=float,
        default=0.0,
        help="seconds from a Deployment change to its availability (0: at once)",
    )
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="both",
        help=(
            "after: the sources are created once the operator watches (one by one); before: "
            "they all exist when it starts; both (default): one after the other"
        ),
    )
    p.add_argument(
        "--create-before-start",
        dest="order",
        action="store_const",
        const="before",
        help="the same as --order before",
    )
    p.add_argument("--concurrency", type=int, default=16, help="creates in flight (16)")
    p.add_argument("--no-baseline", action="store_true", help="skip the kopf-floor baseline")
    p.add_argument(
        "--baseline-quiet",
        action="store_true",
        help="run the baseline with kopf run --quiet (warnings only) instead of INFO logs",
    )
    p.add_argument(
        "--pure-emulator",
        action="store_true",
        help="keep the emulator's pure-Python YAML parsing of apply bodies (see README)",
    )
    p.add_argument(
        "--tweak",
        action="append",
        default=[],
        metavar="TWEAK",
        help="run dfm operator with an experimental tweak (bench/operator/tweaks.py); repeatable",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for dfm operator (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    p.add_argument(
        "--dump-requests",
        action="store_true",
        help="write every recorded request, in order, to <workdir>/<run>.requests.jsonl",
    )
    p.add_argument("--workdir", type=Path, help="logs and kubeconfigs (default: a temp dir)")
    return p.parse_args(argv)


def setup_line(args: argparse.Namespace, before: bool) -> str:
    order = "before the operator started" if before else "once it watched"
    emulator = "as is" if args.pure_emulator else "apply bodies parsed as JSON"
    tweaks = f"; tweaks: {', '.join(args.tweak)}" if args.tweak else ""
    tweaks += f"; env: {' '.join(args.env)}" if args.env else ""
    return (
        f"{args.sources} WebhookSources + {args.sources} Secrets, created {order} "
        f"({args.concurrency} in flight); Deployments available {args.rollout_delay:g} s after "
        f"each rollout; emulator: {emulator}{tweaks}"
    )


async def amain(args: argparse.Namespace, workdir: Path) -> int:

    def scenario(
        label: str,
        command: Sequence[str],
        watches: Sequence[str],
        env: dict[str, str],
        before: bool,
    ) -> Scenario:
        return Scenario(
            label=label,
            command=command,
            sources=args.sources,
            timeout=args.timeout,
            workdir=workdir,
            watches=watches,
            rollout_delay=args.rollout_delay,
            create_before_start=before,
            concurrency=args.concurrency,
            fast_apply=not args.pure_emulator,
            dump_requests=args.dump_requests,
            env=env,
        )

    label = "dfm operator" + (" +tweaks" if args.tweak else "")
    env = dict(item.split("=", 1) for item in args.env)
    orders = [False, True] if args.order == "both" else [args.order == "before"]
    runs: list[tuple[bool, Result, Result | None]] = []
    crashed = False
    for before in orders:
        when = "all existing at start-up" if before else "created one by one"
        say(f"{label}: {args.sources} WebhookSources, {when} (timeout {args.timeout:g} s) ...")
        command = dfm_command(args.tweak)
        ours = await run_scenario(scenario(label, command, DFM_WATCHES, env, before))
        base: Result | None = None
        if not args.no_baseline:
            say(f"baseline (kopf floor), {when} ...")
            command = baseline_command(quiet=args.baseline_quiet)
            base = await run_scenario(
                scenario("baseline", command, ("webhooksources",), {}, before)
            )
        print(report(ours, base, setup=setup_line(args, before)), "", sep="\n", flush=True)
        runs.append((before, ours, base))
        crashed = crashed or bool(ours.crashed or (base.crashed if base else None))
    if len(runs) > 1:
        print(summary(runs), flush=True)
    return 1 if crashed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="dfm-bench-operator-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(amain(args, workdir))
    except KeyboardInterrupt:
        return 130
