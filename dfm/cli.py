"""The `dfm` command: thin argument parsing that calls into the two packages."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from dfm import backup_cmd, crds_cmd, events_cmd
from dfm.manifests import ManifestError, describe_validation_error

if TYPE_CHECKING:
    from webhook_server.sync.config import SyncConfig
    from webhook_server.sync.summary import RunSummary
    from webhook_server.tracing import Tracing


class CliError(Exception):
    """A failure reported as one line and a non-zero exit."""


def _add_local(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "local",
        help="serve WebhookSource manifests on this machine (embedded PostgreSQL by default)",
        description=(
            "Serves every WebhookSource found in the files on one port. Secrets are read from "
            "`kind: Secret` manifests in the same files. Without --database-url (or "
            "$DFM_DATABASE_URL) an embedded PostgreSQL is started; its data lives in "
            "$DFM_DATA_DIR (default ~/.local/share/dfm). The files are watched: a Secret edit is "
            "applied in place (to rehearse a rotation: current, previous, previous-expires-at), "
            "a source edit restarts the app."
        ),
    )
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE_OR_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--database-url", default=os.environ.get("DFM_DATABASE_URL"))
    p.add_argument("--log-format", choices=["json", "console"], default="json")


def _add_send(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="sign a sample (or given) event as the provider would and POST it",
    )
    p.add_argument("source_file", metavar="SOURCE_FILE", help="manifest(s) with the WebhookSource")
    p.add_argument("--name", help="which WebhookSource, when the file holds several")
    p.add_argument("--event", metavar="FILE", help="the body to send (default: a sample event)")
    p.add_argument(
        "--id",
        dest="delivery_id",
        metavar="ID",
        help="the delivery id (default: a new one each time; repeat one to send a redelivery)",
    )
    p.add_argument("--url", help="target URL (default: http://127.0.0.1:8080<path>)")
    p.add_argument("--private-key", metavar="PEM_FILE", help="highlevel: the signing key")
    p.add_argument("--token", help="a bearer JWT, for sources with auth")


def _add_consume(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "consume",
        help="stand in for a source's forward target: verify and print what dfm local forwards",
        description=(
            "Listens where the source's spec.forward.url points (its host and port unless "
            "--host/--port say otherwise), verifies every forwarded request's Standard Webhooks "
            "signature with the signing Secret from the same files (current, and previous "
            "until previous-expires-at) and prints one line per request. Answers --status for "
            "a valid signature, 401 otherwise. Stops on Ctrl-C."
        ),
    )
    p.add_argument("source_file", metavar="SOURCE_FILE", help="manifest(s) with the WebhookSource")
    p.add_argument("--name", help="which WebhookSource, when the file holds several that forward")
    p.add_argument("--host", help="address to listen on (default: the forward URL's host)")
    p.add_argument("--port", type=int, help="port to listen on (default: the forward URL's port)")
    p.add_argument(
        "--status",
        type=int,
        default=200,
        help="answer this status to valid deliveries (e.g. 503, to watch retries and the circuit)",
    )
    p.add_argument("--body", action="store_true", help="print each payload too (first 2 KiB)")


def _add_receiver(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("receiver", help="run one receiver from a rendered config (in a pod)")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--log-level", default=os.environ.get("DFM_LOG_LEVEL", "INFO"))


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "operator",
        help="run the controller (in-cluster config, else $KUBECONFIG or ~/.kube/config)",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only these namespaces (repeatable)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint URL"
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: do not coordinate with other operator replicas",
    )
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logs (never the API responses, which carry Secret data)",
    )


def _add_render(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "render",
        help="print the objects the operator would create for the resources in the files",
        description=(
            "Prints, as a YAML stream, exactly the children the operator applies for every "
            "custom resource in the files, offline. A resource read from a file has no uid yet: "
            "its children's ownerReferences then carry the placeholder uid "
            "00000000-0000-0000-0000-000000000000, which the operator replaces with the real one."
        ),
    )
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE_OR_DIR")
    p.add_argument(
        "--service-monitor",
        action="store_true",
        help="also render ServiceMonitors (as with the chart's serviceMonitor.enabled)",
    )


def _add_sync(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sync", help="scheduled syncs from external APIs")
    runs = p.add_subparsers(dest="sync_command", required=True)
    run = runs.add_parser(
        "run",
        help="run one sync: in a pod from its rendered config, or locally from manifests",
        description=(
            "Runs one sync to its end (or its run timeout) and exits 0 when it succeeded, 1 when "
            "it failed (the summary says why), 2 on bad input. In a pod: --config FILE (what "
            "the operator renders). Locally: -f FILE_OR_DIR with the SyncSchedule, its sink "
            "WebhookSource and, for auth, --token-file or the Secret its ManagedSecret writes; "
            "the events go to --database-url ($DFM_DATABASE_URL), else to the embedded "
            "PostgreSQL `dfm local` uses ($DFM_DATA_DIR, default ~/.local/share/dfm)."
        ),
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="the rendered sync config (in a pod)")
    source.add_argument("-f", "--filename", action="append", metavar="FILE_OR_DIR")
    run.add_argument("--name", help="which SyncSchedule, when the files hold several")
    run.add_argument("--database-url", default=os.environ.get("DFM_DATABASE_URL"))
    run.add_argument("--token-file", metavar="PATH", help="the bearer token (re-read after a 401)")
    run.add_argument(
        "--summary-file",
        metavar="PATH",
        help="also write the run's JSON summary here (the job's /dev/termination-log)",
    )
    run.add_argument("--log-format", choices=["json", "console"], default="json")
    run.add_argument("--log-level", default=os.environ.get("DFM_LOG_LEVEL", "INFO"))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dfm", description="df-middleware")
    sub = top.add_subparsers(dest="command", required=True)
    _add_local(sub)
    _add_send(sub)
    _add_consume(sub)
    _add_receiver(sub)
    _add_operator(sub)
    _add_render(sub)
    _add_sync(sub)
    crds_cmd.add_parser(sub)
    backup_cmd.add_parser(sub)
    events_cmd.add_parser(sub)
    return top


@contextlib.contextmanager
def _database(url: str | None, command: str) -> Iterator[str]:
    """``url``, or the embedded PostgreSQL `dfm local` uses (started if it is not running, and
    stopped afterwards only if this process started it)."""
    from dfm import local
    from dfm.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

    if url:
        yield url
        return
    datadir = local.default_data_dir() / "postgres"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    embedded = EmbeddedPostgres(datadir)
    print(f"dfm {command}: embedded PostgreSQL, data in {embedded.pgdata}", file=sys.stderr)
    try:
        embedded.start()
    except EmbeddedPostgresError as exc:
        raise CliError(str(exc)) from exc
    try:
        yield embedded.url
    finally:
        embedded.release()


def cmd_local(args: argparse.Namespace) -> int:
    from dfm import local
    from webhook_server import logs

    logs.configure(json=args.log_format == "json")
    # Validate the manifests before starting anything.
    local.build_config(args.filename, host=args.host, port=args.port, database_url="postgresql://")
    tracing = _tracing("dfm-receiver")
    try:
        with _database(args.database_url, "local") as url:
            serving = local.serve(
                args.filename, host=args.host, port=args.port, database_url=url, tracing=tracing
            )
            asyncio.run(serving)
    finally:
        if tracing is not None:
            tracing.shutdown()
    return 0


def _tracing(service: str) -> Tracing | None:
    """Tracing as ``OTEL_*`` configures it (None when it does not); log lines carry the active
    span's ids from now on."""
    from webhook_server import logs, tracing

    try:
        configured = tracing.from_env(service)
    except tracing.TracingConfigError as exc:
        raise CliError(str(exc)) from None
    if configured is not None:
        logs.with_trace_ids(tracing.current_ids)
    return configured


def cmd_send(args: argparse.Namespace) -> int:
    from dfm.send import send

    status, text = asyncio.run(
        send(
            [args.source_file],
            name=args.name,
            event_file=args.event,
            delivery_id=args.delivery_id,
            url=args.url,
            private_key=args.private_key,
            token=args.token,
        )
    )
    print(f"HTTP {status}")
    print(text)
    return 0 if 200 <= status < 300 else 1


def cmd_consume(args: argparse.Namespace) -> int:
    from dfm.consume import serve

    if not 100 <= args.status <= 599:
        raise CliError(f"--status {args.status}: not an HTTP status")
    asyncio.run(
        serve(
            [args.source_file],
            name=args.name,
            host=args.host,
            port=args.port,
            status=args.status,
            show_body=args.body,
        )
    )
    return 0


def cmd_receiver(args: argparse.Namespace) -> int:
    from webhook_server import logs, server
    from webhook_server.config import ReceiverConfig

    try:
        logs.configure(args.log_level)
    except (KeyError, ValueError, TypeError) as exc:
        raise CliError(f"--log-level {args.log_level}: not a log level") from exc
    try:
        config = ReceiverConfig.load(args.config)
    except (OSError, ValidationError, yaml.YAMLError) as exc:
        raise CliError(f"{args.config}: invalid receiver config: {_first_error(exc)}") from exc
    tracing = _tracing("dfm-receiver")
    if config.workers > 1:
        # Checked here, for a one-line error; each worker makes its own (its exporter's thread).
        if tracing is not None:
            tracing.shutdown()
        return server.run_workers(config, tracing=lambda: _tracing("dfm-receiver"))
    try:
        server.run(config, tracing=tracing)
    finally:
        if tracing is not None:
            tracing.shutdown()
    return 0


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        return f"not valid YAML{f' (line {mark.line + 1})' if mark is not None else ''}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _check_operator_start(args: argparse.Namespace) -> None:
    """What would otherwise make kopf retry forever, said once, before it starts: no usable
    kubeconfig (outside a cluster), a port already taken, a liveness URL that is not one."""
    from urllib.parse import urlsplit

    from dfm_operator.kube import KubeconfigError, check_kubeconfig

    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        if not any(os.path.isfile(p) for p in path.split(os.pathsep)):
            raise CliError(f"no kubeconfig at {path}; set KUBECONFIG, or run in a cluster")
        try:
            if os.pathsep not in path:  # a merged list is left to the client
                check_kubeconfig(path)
        except KubeconfigError as exc:
            detail = str(exc)
            raise CliError(
                f"no usable kubeconfig at {path} ({detail}); set KUBECONFIG, or run in a cluster"
            ) from exc
    liveness = urlsplit(args.liveness) if args.liveness else None
    if liveness is not None and (liveness.scheme != "http" or liveness.port is None):
        raise CliError(f"--liveness {args.liveness}: expected http://HOST:PORT/PATH")
    for what, port in (
        ("--metrics-port", args.metrics_port),
        ("--liveness", liveness and liveness.port),
    ):
        if port:
            with socket.socket() as probe:
                try:
                    probe.bind(("0.0.0.0", int(port)))  # noqa: S104 - where the servers listen
                except OSError as exc:
                    raise CliError(f"{what}: port {port} is not free ({exc.strerror})") from exc


def _check_peering(namespaces: list[str]) -> None:
    """kopf waits silently forever for a missing peering object: create it, or say what to do."""
    from dfm_operator.kube import KubeError, connect
    from dfm_operator.peering import PeeringNotReady, ensure_peering

    async def check() -> list[str]:
        async with connect() as kube:
            return await ensure_peering(kube, namespaces)

    try:
        created = asyncio.run(check())
    except PeeringNotReady as exc:
        raise CliError(str(exc)) from exc
    except KubeError as exc:
        raise CliError(f"checking kopf peering: {exc}") from exc
    for what in created:
        print(f"dfm operator: created {what} (kopf peering between replicas)", file=sys.stderr)


def cmd_operator(args: argparse.Namespace) -> int:
    from dfm_operator.main import run

    _check_operator_start(args)
    if not args.standalone:
        _check_peering(args.namespace)
    run(
        namespaces=args.namespace,
        metrics_port=args.metrics_port or None,
        liveness=args.liveness or None,
        standalone=args.standalone,
        log_format=args.log_format,
        verbose=args.verbose,
        tracing=_tracing("dfm-operator"),
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from webhook_server import logs
    from webhook_server.sync.config import SyncConfig
    from webhook_server.sync.summary import INVALID_CONFIG, RunSummary

    try:
        logs.configure(args.log_level, json=args.log_format == "json")
    except (KeyError, ValueError, TypeError) as exc:
        raise CliError(f"--log-level {args.log_level}: not a log level") from exc
    if args.config is not None:
        try:
            config = SyncConfig.load(args.config)
        except (OSError, ValidationError, yaml.YAMLError) as exc:
            message = f"{args.config}: invalid sync config: {_first_error(exc)}"
            if args.summary_file:
                failed = RunSummary("?/?", "-", datetime.now(UTC), datetime.now(UTC))
                failed.reason, failed.message = INVALID_CONFIG, message
                _write_summary(args.summary_file, failed)
            raise CliError(message) from exc
        return _sync(config, args.summary_file, local=False)
    from dfm.sync_files import local_config

    # Validate the manifests (and the token) before starting a database.
    local_config(
        args.filename, name=args.name, database_url="postgresql://", token_file=args.token_file
    )
    with _database(args.database_url, "sync run") as url:
        config = local_config(
            args.filename, name=args.name, database_url=url, token_file=args.token_file
        )
        return _sync(config, args.summary_file, local=True)


def _sync(config: SyncConfig, summary_file: str | None, *, local: bool) -> int:
    from webhook_server.sync.runner import run_sync

    tracing = _tracing("dfm-sync")

    async def main() -> RunSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await run_sync(config, stop=stop, tracing=tracing)

    try:
        summary = asyncio.run(main())
    finally:
        if tracing is not None:
            tracing.shutdown()
    if summary_file:
        _write_summary(summary_file, summary)
    if local:
        verdict = "ok" if summary.succeeded else f"failed ({summary.reason})"
        print(f"dfm sync run: {config.schedule}: {verdict}: {summary.message}", file=sys.stderr)
    return 0 if summary.succeeded else 1


def _write_summary(path: str, summary: RunSummary) -> None:
    try:
        Path(path).write_text(summary.dumps())
    except OSError as exc:
        print(f"dfm sync run: cannot write the summary to {path}: {exc.strerror}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    from dfm.render import render, to_yaml

    sys.stdout.write(to_yaml(render(args.filename, service_monitor=args.service_monitor)))
    return 0


COMMANDS = {
    "local": cmd_local,
    "send": cmd_send,
    "consume": cmd_consume,
    "receiver": cmd_receiver,
    "operator": cmd_operator,
    "render": cmd_render,
    "sync": cmd_sync,
    "crds": crds_cmd.run,
    "backup": backup_cmd.run,
    "events": events_cmd.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ManifestError, CliError) as exc:
        print(f"dfm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Name the file (or host) the error is about: "No such file or directory" alone is not
        # enough when a command reads several.
        where = exc.filename if exc.filename is not None else None
        message = exc.strerror or str(exc)
        print(
            f"dfm {args.command}: error: {f'{where}: ' if where else ''}{message}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
