"""`dfm local`: serve WebhookSource manifests on this machine, no cluster needed."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

from pydantic import ValidationError
from watchfiles import awatch

from dfm.manifests import (
    YAML_SUFFIXES,
    Document,
    ManifestError,
    describe_validation_error,
    load_documents,
    secrets,
    webhook_sources,
)
from dfm_operator.api import WebhookSource
from dfm_operator.builders.receiver_config import build_source_config
from webhook_server import server
from webhook_server.app import create_app, reload_secrets
from webhook_server.config import (
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    queued_bytes_for,
    secret_problem,
)
from webhook_server.tracing import Tracing
from webhook_server.verify.registry import PROVIDERS, Signing

DATABASE_URL_ENV = "DFM_DATABASE_URL"
DATA_DIR_ENV = "DFM_DATA_DIR"


def default_data_dir() -> Path:
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dfm"


SECRETS_DIR = "secrets"
_LOCK = ".lock"


@contextlib.contextmanager
def secrets_dir(data_dir: Path) -> Iterator[Path]:
    """A directory (0700) for this run's secret files: ``<data dir>/secrets/<pid>``.

    Removed when the run ends; a run killed with SIGKILL cannot remove its own, so each start
    removes those of runs that are gone first. A run holds an exclusive lock on its directory's
    ``.lock`` for as long as it lives: a directory whose lock can be taken belongs to nobody (a
    reused pid does not fool it), while a second ``dfm local`` running at the same time keeps its
    own. Starts take turns, so that no start looks at a directory whose run has not locked it
    yet.
    """
    parent = data_dir / SECRETS_DIR
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent.chmod(0o700)
    root = parent / str(os.getpid())
    # Starts take turns (``secrets/.lock``): between a run's mkdir and the lock on its directory,
    # another start would take the new directory for a killed run's and remove it.
    starting = os.open(parent / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(starting, fcntl.LOCK_EX)
        for stale in parent.iterdir():
            if stale.is_dir() and _unowned(stale):
                shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700)
        lock = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(starting)  # and with it the lock
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.close(lock)


def _unowned(folder: Path) -> bool:
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR)
    except FileNotFoundError:
        return True  # killed before it took its lock, or not ours at all
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _check_secret(
    doc: Document,
    provider: Provider,
    field: str,
    ns: str,
    name: str,
    key: str,
    found: dict[tuple[str, str], dict[str, str]],
) -> str:
    values = found.get((ns, name))
    if values is None:
        raise ManifestError(
            f"{doc.label}: {field}: Secret {ns}/{name} not found in the given files"
        )
    if key not in values:
        raise ManifestError(f"{doc.label}: {field}: Secret {ns}/{name} has no key {key!r}")
    problem = secret_problem(provider, values[key].encode())
    if problem:
        # As the receiver would find it: it could never verify a delivery.
        raise ManifestError(f"{doc.label}: {field}: Secret {ns}/{name} key {key!r} {problem}")
    return values[key]


def local_secrets(
    doc: Document,
    source: WebhookSource,
    found: dict[tuple[str, str], dict[str, str]],
    root: Path | None = None,
) -> list[SecretSource]:
    """Where the source's secrets come from, out of ``kind: Secret`` manifests in the same files.

    With ``root`` they are files under it, laid out as kubelet mounts Secrets (so changes are
    picked up exactly as in a pod); without, literal values (for signing in ``dfm send``).
    A ``managedSecretRef`` reads the Secret of that name as the ManagedSecret would write it:
    ``current``, and optionally ``previous`` with ``previous-expires-at``.
    """
    ns = source.metadata.namespace
    ref = source.spec.verification.secret_ref
    if ref is not None:
        field = "spec.verification.secretRef"
        value = _check_secret(doc, source.spec.provider, field, ns, ref.name, ref.key, found)
        if root is None:
            return [SecretSource(value=value)]
        return [SecretSource(file=str(root / ns / ref.name / ref.key))]
    managed = source.spec.verification.managed_secret_ref
    if managed is not None:
        field = "spec.verification.managedSecretRef"
        value = _check_secret(doc, source.spec.provider, field, ns, managed.name, "current", found)
        if root is None:
            return [SecretSource(value=value)]
        return [SecretSource(dir=str(root / ns / managed.name))]
    return []


def forward_signing_secrets(
    doc: Document,
    source: WebhookSource,
    found: dict[tuple[str, str], dict[str, str]],
    root: Path | None = None,
) -> list[SecretSource]:
    """Where ``spec.forward.signingSecretRef`` comes from: the Secret its ManagedSecret would
    write (``current``, and during a rotation ``previous`` with ``previous-expires-at``), read
    from a ``kind: Secret`` manifest of that name in the same files."""
    forward = source.spec.forward
    if forward is None:
        return []
    ns = source.metadata.namespace
    name = forward.signing_secret_ref.name
    field = "spec.forward.signingSecretRef"
    # Signing secrets are Standard Webhooks secrets, whatever the source's own provider.
    value = _check_secret(doc, Provider.STANDARD, field, ns, name, "current", found)
    if root is None:
        return [SecretSource(value=value)]
    return [SecretSource(dir=str(root / ns / name))]


def materialize(found: dict[tuple[str, str], dict[str, str]], root: Path) -> None:
    """Write every Secret's keys as files under ``root/<namespace>/<name>/<key>`` (mode 0600).

    Each file is replaced atomically, and keys no longer in a Secret are removed, as kubelet does.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for (ns, name), values in found.items():
        folder = root / ns / name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for key, value in values.items():
            tmp = folder / f".{key}.tmp"
            tmp.write_text(value)
            tmp.chmod(0o600)
            tmp.replace(folder / key)
        for stale in folder.iterdir():
            if stale.name not in values and not stale.name.startswith("."):
                stale.unlink()


def source_configs(
    paths: Sequence[str], root: Path | None = None
) -> tuple[list[SourceConfig], dict[str, Path]]:
    """Every WebhookSource in ``paths`` as a receiver source, and the file each came from.

    With ``root``, the Secrets found are also written there (see :func:`materialize`).
    """
    docs = load_documents(paths)
    found = secrets(docs)
    configs: list[SourceConfig] = []
    files: dict[str, Path] = {}
    for doc, source in webhook_sources(docs):
        configs.append(
            build_source_config(
                source,
                local_secrets(doc, source, found, root),
                forward_signing_secrets(doc, source, found, root),
            )
        )
        files[source.key] = doc.file
    if not configs:
        raise ManifestError(
            f"no WebhookSource (apiVersion dfm.dev/v1alpha1) found in {', '.join(paths)}"
        )
    if root is not None:
        materialize(found, root)
    return configs, files


def build_config(
    paths: Sequence[str],
    *,
    host: str,
    port: int,
    database_url: str,
    secrets_root: Path | None = None,
) -> tuple[ReceiverConfig, dict[str, Path]]:
    sources, files = source_configs(paths, secrets_root)
    try:
        database = DatabaseConfig(url=database_url, max_queued_bytes=queued_bytes_for(sources))
        config = ReceiverConfig(host=host, port=port, sources=sources, database=database)
    except ValidationError as exc:
        raise ManifestError(describe_validation_error(exc)) from exc
    return config, files


def _program() -> str:
    prog = Path(sys.argv[0])
    try:
        return str(prog.resolve().relative_to(Path.cwd()))
    except ValueError:
        return prog.name


DEMO_KEYS_DIR = "keys"


def demo_private_key(manifest: Path, source: SourceConfig) -> Path | None:
    """A demo private key for a provider that signs with its own key: ``keys/<source name>.pem``
    beside the manifest (the examples ship one per such provider), if there is one."""
    key = manifest.parent / DEMO_KEYS_DIR / f"{source.name}.pem"
    return key if key.is_file() else None


def several_workers(paths: Sequence[str]) -> dict[str, int]:
    """The sources whose manifest asks for several worker processes (``spec.workers``): in a
    cluster the operator runs them so; ``dfm local`` serves every source in one process."""
    return {
        f"{source.metadata.namespace}/{source.metadata.name}": source.spec.workers
        for _, source in webhook_sources(load_documents(paths))
        if source.spec.workers > 1
    }


def banner(
    config: ReceiverConfig, files: dict[str, Path], workers: dict[str, int] | None = None
) -> str:
    base = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '') else config.host}:{config.port}"  # noqa: S104
    lines = [f"dfm local: serving {len(config.sources)} source(s) on {base}"]
    for source in config.sources:
        url = base + source.route
        lines.append(f"  {source.key:<28} {source.provider.value:<10} POST {url}")
        manifest = files[source.key]
        send = [_program(), "send", str(manifest), "--name", source.name, "--url", url]
        needs = ""
        signing = PROVIDERS[source.provider].signing
        if signing is Signing.PRIVATE_KEY:
            key = demo_private_key(manifest, source)
            if key is not None:
                send += ["--private-key", str(key)]
            else:
                needs = "  (add --private-key KEY.pem: the provider signs with its own key)"
        if source.auth is not None or signing is Signing.BEARER_TOKEN:
            needs = "  (add --token JWT)"
        lines.append(f"      try: {shlex.join(send)}{needs}")
        if source.forward is not None:
            consume = [_program(), "consume", str(files[source.key]), "--name", source.name]
            lines.append(f"      forwards to {source.forward.url} (signed, Standard Webhooks)")
            lines.append(f"      consume: {shlex.join(consume)}")
        if source.events_api is not None:
            lines.append(
                f"      events API: GET {base}/events?source={source.key} (bearer JWT with "
                f"{source.events_api.read_scope}); or: dfm events list --source {source.key}"
            )
        if workers and source.key in workers:
            lines.append(
                f"      spec.workers: {workers[source.key]} applies in a cluster; here one process "
                "serves every source"
            )
    lines.append(f"  health: {base}/readyz   metrics: {base}/metrics")
    return "\n".join(lines)


async def serve(
    paths: Sequence[str],
    *,
    host: str,
    port: int,
    database_url: str,
    tracing: Tracing | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, applying manifest edits live.

    A Secret edit is written to the secret files and reloaded in place (no restart, exactly like
    kubelet updating a mounted Secret); an edit to a source restarts the app on the same port.
    A broken edit is reported on one line and the last good configuration keeps serving.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with secrets_dir(default_data_dir()) as root:
        config, files = build_config(
            paths, host=host, port=port, database_url=database_url, secrets_root=root
        )
        while True:
            app = create_app(config, tracing=tracing)
            listener = await server.start(app, host, port, shutdown_timeout=5)
            print(banner(config, files, several_workers(paths)), file=sys.stderr, flush=True)
            restart = False
            async for _ in _changes(paths, stop):
                try:
                    new, files = build_config(
                        paths, host=host, port=port, database_url=database_url, secrets_root=root
                    )
                except ManifestError as exc:
                    print(
                        f"dfm local: error: {exc} (still serving the last good manifests)",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                if new != config:
                    config, restart = new, True
                    print("dfm local: sources changed, restarting", file=sys.stderr, flush=True)
                    break
                changed = reload_secrets(app)
                if changed:
                    print(
                        f"dfm local: secrets reloaded for {', '.join(changed)}",
                        file=sys.stderr,
                        flush=True,
                    )
            await listener.stop()
            if not restart:
                return


def watch_plan(paths: Sequence[str]) -> tuple[list[str], Callable[[str], bool]]:
    """What to watch for ``paths``, and which changed paths count.

    A file is watched through its directory: a watch on the file itself dies with it, so a file
    deleted and written again (an editor's save, `git checkout`) would go unnoticed from then on.
    """
    directories = [os.path.abspath(p) for p in paths if os.path.isdir(p)]
    files = {os.path.abspath(p) for p in paths if not os.path.isdir(p)}
    roots = sorted({*directories, *(os.path.dirname(f) for f in files)})

    def counts(changed: str) -> bool:
        changed = os.path.abspath(changed)
        if changed in files:
            return True
        return changed.endswith(YAML_SUFFIXES) and any(
            changed.startswith(d + os.sep) for d in directories
        )

    return roots, counts


async def _changes(paths: Sequence[str], stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield once per batch of edits to the manifest files; end when ``stop`` is set."""
    roots, counts = watch_plan(paths)
    async for _ in awatch(
        *roots,
        stop_event=stop,
        debounce=200,
        step=50,
        watch_filter=lambda _, changed: counts(changed),
    ):
        yield
