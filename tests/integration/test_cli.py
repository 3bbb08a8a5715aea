"""The `dfm` command as a user runs it: real processes, real ports, a real PostgreSQL."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from dfm.embedded_pg import EmbeddedPostgres
from tests.tools import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DFM = [sys.executable, "-m", "dfm.cli"]


def wait_ready(url: str, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dfm local exited early: {LOGS[proc.pid].text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("dfm local did not become ready")


class LogTail:
    """Everything a process writes to stderr, read as it comes: a test waits for the line that
    says something happened instead of sleeping and hoping it did."""

    def __init__(self, proc: subprocess.Popen[str], stream: IO[str] | None = None) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        stream = stream or proc.stderr
        assert stream is not None
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # end of output
            self.changed.notify_all()

    def wait_for(self, text: str, *, after: int = 0, seconds: float = 30) -> int:
        """Until a line (from line ``after`` on) contains ``text``; returns the count so far."""
        with self.changed:
            found = self.changed.wait_for(
                lambda: (
                    any(text in line for line in self.lines[after:]) or (self.lines[-1:] == [""])
                ),
                timeout=seconds,
            )
            said = found and any(text in line for line in self.lines[after:])
            assert said, f"dfm local never said {text!r}: {''.join(self.lines)[-2000:]}"
            return len(self.lines)

    def text_so_far(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def mark(self) -> int:
        with self.changed:
            return len(self.lines)

    def text(self) -> str:
        self.reader.join(30)
        return "".join(self.lines)


LOGS: dict[int, LogTail] = {}


def start_local(*args: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[str]]:
    """`dfm local ARGS --port P` in its own process, once it answers /readyz: (base URL, proc)."""
    port = free_port()
    proc = subprocess.Popen(
        [*DFM, "local", *args, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    LOGS[proc.pid] = LogTail(proc)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/readyz", proc)
    return base, proc


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`dfm local -f examples/` with its own embedded PostgreSQL, as the README runs it."""
    env = dict(os.environ, DFM_DATA_DIR=str(tmp_path / "dfm-data"))
    env.pop("DFM_DATABASE_URL", None)
    base, proc = start_local("-f", str(EXAMPLES), env=env)
    try:
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        LOGS.pop(proc.pid, None)
        # dfm local stopped its embedded server; remove its cluster (as root it lives under
        # /var/lib/dfm, not in tmp_path), stopping whatever would have been left running.
        EmbeddedPostgres(tmp_path / "dfm-data" / "postgres").destroy()


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("github.yaml", "github"),
        ("stripe.yaml", "stripe"),
        ("clerk.yaml", "clerk"),
        ("shopify.yaml", "shopify"),
        ("slack.yaml", "slack"),
        ("forgejo-hmac.yaml", "forgejo"),
    ],
)
def test_dfm_send_reaches_dfm_local_and_is_stored(
    local_server: tuple[str, subprocess.Popen[str]], file: str, name: str
) -> None:
    base, _ = local_server
    path = "/hooks/payments/stripe" if name == "stripe" else f"/hooks/default/{name}"
    # The README's "send the same delivery twice": a fixed --id is a redelivery.
    delivery = f"readme-{name}-{os.getpid()}"
    answers = []
    for _ in range(2):
        sent = subprocess.run(
            [*DFM, "send", str(EXAMPLES / file), "--url", base + path, "--id", delivery],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "HTTP 200" in sent.stdout
        answers.append(sent.stdout)
    assert '"status": "stored"' in answers[0]
    assert '"status": "duplicate"' in answers[1]


# The texting and broadcast providers (issue 16): every `try:` line the banner prints for them is
# run as printed (with the module instead of the script path), twice with one --id.
BANNER_SOURCES = [
    "twilio",
    "telnyx",
    "vonage",
    "sendgrid",
    "mailgun",
    "mandrill",
    "highlevel-workflow",
]


def _banner_lines(text: str) -> dict[str, list[str]]:
    """Each source's `try:` command from dfm local's banner, as arguments."""
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        _, sep, command = line.partition("try: ")
        if sep and "(add" not in command:
            args = shlex.split(command)
            lines[args[args.index("--name") + 1]] = args
    return lines


def test_the_banner_send_lines_of_the_new_providers_store_events(
    local_server: tuple[str, subprocess.Popen[str]],
) -> None:
    base, proc = local_server
    LOGS[proc.pid].wait_for("health:")
    banner = _banner_lines(LOGS[proc.pid].text_so_far())
    for name in BANNER_SOURCES:  # one dfm local for all: starting one per source costs minutes
        args = banner[name]
        assert args[1] == "send"
        assert args[args.index("--url") + 1] == f"{base}/hooks/default/{name}"
        delivery = f"banner-{name}-{os.getpid()}"
        answers = []
        for _ in range(2):
            sent = subprocess.run(
                [*DFM, *args[1:], "--id", delivery],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, f"{name}: {sent.stdout}{sent.stderr}"
            assert "HTTP 200" in sent.stdout, f"{name}: {sent.stdout}"
            answers.append(sent.stdout)
        assert '"status": "stored"' in answers[0], name
        assert '"status": "duplicate"' in answers[1], name
        if name in ("sendgrid", "mandrill"):
            assert '"eventCount": ' in answers[0], name


def test_dfm_local_prints_endpoints_and_send_lines_then_stops_cleanly(
    local_server: tuple[str, subprocess.Popen[str]],
) -> None:
    base, proc = local_server
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    err = LOGS.pop(proc.pid).text()
    assert "embedded PostgreSQL" in err
    assert f"POST {base}/hooks/default/github" in err
    assert "send examples/github.yaml --name github" in err or "send " in err


def run_dfm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DFM, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_manifest_error_names_file_object_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\n"
        "metadata: {name: broken, namespace: ops}\n"
        "spec:\n  provider: hmac\n  verification:\n    secretRef: {name: s}\n"
    )
    result = run_dfm("local", "-f", str(bad), "--database-url", "postgresql://unused")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0]
    assert "WebhookSource ops/broken" in lines[0]
    assert "spec" in lines[0]
    assert "hmac requires verification.header" in lines[0]


def test_unknown_field_and_missing_secret_are_reported(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "apiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: t}\n"
        "spec:\n  provider: github\n  verifcation: {}\n"
    )
    result = run_dfm("local", "-f", str(typo), "--database-url", "postgresql://unused")
    assert result.returncode == 2
    assert "spec.verifcation" in result.stderr

    orphan = tmp_path / "orphan.yaml"
    orphan.write_text(
        "apiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: o}\n"
        "spec:\n  provider: github\n  verification:\n    secretRef: {name: nowhere}\n"
    )
    result = run_dfm("local", "-f", str(orphan), "--database-url", "postgresql://unused")
    assert result.returncode == 2
    assert "Secret default/nowhere not found" in result.stderr


def test_two_sources_on_one_path_are_named_in_one_line(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    source = (
        "apiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\nmetadata: {{name: {name}}}\n"
        "spec:\n  provider: github\n  path: /hooks/shared\n"
        "  verification:\n    secretRef: {{name: s}}\n"
    )
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {secret: x}\n"
    both.write_text("---\n".join([source.format(name="a"), source.format(name="b"), secret]))
    result = run_dfm("local", "-f", str(both), "--database-url", "postgresql://unused")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "share path /hooks/shared" in lines[0]
    assert "errors.pydantic.dev" not in lines[0]


SOURCE_HEAD = "apiVersion: dfm.dev/v1alpha1\nkind: WebhookSource\n"
UNUSABLE = {
    "a jwt public key that is not PEM": (
        SOURCE_HEAD + "metadata: {name: j}\nspec:\n  provider: jwt\n"
        "  auth: {publicKey: not-a-key}\n",
        "auth.publicKey is not a PEM public key",
    ),
    "an unparseable HighLevel key": (
        SOURCE_HEAD + "metadata: {name: h}\nspec:\n  provider: highlevel\n"
        "  verification:\n    publicKey: '-----BEGIN PUBLIC KEY-----\\nAAAA\\n"
        "-----END PUBLIC KEY-----'\n",
        "PEM block 1 is not a public key",
    ),
    "a header name with a space": (
        SOURCE_HEAD + "metadata: {name: x}\nspec:\n  provider: hmac\n"
        "  verification: {header: X Signature, secretRef: {name: s}}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {secret: k}\n",
        "spec.verification.header: String should match pattern",
    ),
    "an empty secret": (
        SOURCE_HEAD + "metadata: {name: g}\nspec:\n  provider: github\n"
        "  verification: {secretRef: {name: s}}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {secret: ''}\n",
        "Secret default/s key 'secret' is empty",
    ),
    "a whsec_ secret that is not base64": (
        SOURCE_HEAD + "metadata: {name: c}\nspec:\n  provider: standard\n"
        "  verification: {secretRef: {name: s}}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {secret: 'whsec_n*t!'}\n",
        "is not a Standard Webhooks secret (whsec_ followed by base64)",
    ),
    "two sources with one namespace/name": (
        SOURCE_HEAD + "metadata: {name: twin}\nspec:\n  provider: github\n"
        "  verification: {secretRef: {name: s}}\n---\n"
        + SOURCE_HEAD
        + "metadata: {name: twin}\nspec:\n  provider: stripe\n  path: /hooks/other\n"
        "  verification: {secretRef: {name: s}}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {secret: k}\n",
        "two sources are named default/twin",
    ),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_a_source_that_could_never_verify_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    # Issue 9: each of these used to be served (a crash-looping receiver, a source refusing every
    # delivery with /readyz ready, or two sources sharing one dedup space).
    manifest, expected = UNUSABLE[case]
    path = tmp_path / "source.yaml"
    path.write_text(manifest)
    result = run_dfm("local", "-f", str(path), "--database-url", "postgresql://unused")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "n*t!" not in lines[0]  # a secret is described, never quoted
    if "secret" not in case and "two sources" not in case:
        # The operator's own validation: `dfm render` refuses it too (Ready=False InvalidSpec).
        rendered = run_dfm("render", "-f", str(path))
        assert rendered.returncode == 2
        assert expected in rendered.stderr


def test_send_to_a_closed_port_fails_with_one_line(tmp_path: Path) -> None:
    # A port bound but not listening refuses connections, and nothing else can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        result = run_dfm(
            "send",
            str(EXAMPLES / "github.yaml"),
            "--url",
            f"http://127.0.0.1:{held.getsockname()[1]}/hooks/default/github",
        )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


GITHUB = str(EXAMPLES / "github.yaml")
HIGHLEVEL = str(EXAMPLES / "highlevel.yaml")
SENDGRID_KEY = str(EXAMPLES / "keys" / "sendgrid.pem")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["send", GITHUB, "--url", "notaurl"], "not an http:// or https:// URL"),
        (["send", GITHUB, "--url", "http://127.0.0.1:99999/x"], "http://127.0.0.1:99999/x"),
        (["send", GITHUB, "--event", "/nonexistent/event.json"], "/nonexistent/event.json"),
        (["send", HIGHLEVEL, "--private-key", GITHUB], "not a PEM private key"),
        (
            ["send", str(EXAMPLES / "telnyx.yaml"), "--private-key", SENDGRID_KEY],
            "Telnyx signing needs an Ed25519 private key",
        ),
        (["send", str(EXAMPLES / "telnyx.yaml")], "pass --private-key"),
        (["receiver", "--config", GITHUB.replace("github", "nope")], "No such file"),
        (["receiver", "--config", "README.md"], "invalid receiver config"),
        (["receiver", "--config", GITHUB, "--log-level", "bogus"], "not a log level"),
        (
            ["local", "-f", GITHUB, "--database-url", "mysql://u:hunter2@db/x"],
            "url must be a postgresql:// URL",
        ),
        (["crds", "--docs", "/tmp"], "/tmp"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]),
)
def test_bad_input_is_one_line_naming_what_is_wrong(args: list[str], expected: str) -> None:
    result = run_dfm(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "hunter2" not in result.stderr


def test_a_file_named_twice_is_read_once() -> None:
    # `-f examples -f examples/github.yaml` must not look like two sources on one path.
    once = run_dfm("render", "-f", str(EXAMPLES))
    twice = run_dfm("render", "-f", str(EXAMPLES), "-f", str(EXAMPLES / "github.yaml"))
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == once.stdout


def test_render_prints_the_children_of_every_source_as_a_yaml_stream() -> None:
    import yaml

    result = run_dfm("render", "-f", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Deployment", "github-receiver") in kinds
    assert ("ConfigMap", "stripe-receiver-config") in kinds
    # Every child is owned, but a backup's claim: it outlives its BackupSchedule on purpose.
    owned = [o for o in objects if o["kind"] != "PersistentVolumeClaim"]
    uids = {o["metadata"]["ownerReferences"][0]["uid"] for o in owned}
    assert uids == {"00000000-0000-0000-0000-000000000000"}
    [claim] = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"]["app.kubernetes.io/component"] == "backup-storage"
    assert "demo-github-secret-change-me" not in result.stdout


def test_crds_command_prints_the_committed_crds() -> None:
    result = run_dfm("crds")
    assert result.returncode == 0
    committed = "".join(p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml")))
    for name in ("webhooksources.dfm.dev", "managedsecrets.dfm.dev"):
        assert name in result.stdout
        assert name in committed


def _post_signed(url: str, secret: str, msg_id: str) -> int:
    """POST a Standard Webhooks delivery signed by the official SDK; returns the status."""
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    body = '{"type":"user.created"}'
    now = datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        "Content-Type": "application/json",
    }
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=body.encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def stop_local(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C a `dfm local`; what it wrote to stderr."""
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    return LOGS.pop(proc.pid).text()


MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {{name: clerk-signing}}
stringData:
{secret}
---
apiVersion: dfm.dev/v1alpha1
kind: WebhookSource
metadata: {{name: clerk}}
spec:
  provider: standard
  path: {path}
  verification:
    managedSecretRef: {{name: clerk-signing}}
"""
SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def test_dfm_local_applies_secret_and_source_edits_live(tmp_path: Path, database_url: str) -> None:
    """The README's rotation rehearsal: A, then A and B until previous-expires-at, then B."""
    from datetime import UTC, datetime, timedelta

    manifest = tmp_path / "clerk.yaml"
    manifest.write_text(MANIFEST.format(secret=f"  current: {SECRET_A}", path="/hooks/clerk"))
    base, proc = start_local("-f", str(tmp_path), "--database-url", database_url)
    try:
        url = base + "/hooks/clerk"
        status = _post_signed(url, SECRET_A, "m1")
        assert status == 200, "".join(LOGS[proc.pid].lines)[-3000:]
        assert _post_signed(url, SECRET_B, "m2") == 401

        log = LOGS[proc.pid]
        expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        rotated = (
            f'  current: {SECRET_B}\n  previous: {SECRET_A}\n  previous-expires-at: "{expires}"'
        )
        seen = log.mark()
        manifest.write_text(MANIFEST.format(secret=rotated, path="/hooks/clerk"))
        seen = log.wait_for("secrets reloaded for default/clerk", after=seen)
        assert _post_signed(url, SECRET_B, "m3") == 200
        assert _post_signed(url, SECRET_A, "m4") == 200  # previous, within its grace
        # Once previous-expires-at has passed, only current is accepted. (That the moment
        # passing, without an edit, is enough: test_receiver_rotation.py, on a fake clock.)
        expired = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        manifest.write_text(
            MANIFEST.format(secret=rotated.replace(expires, expired), path="/hooks/clerk")
        )
        log.wait_for("secrets reloaded for default/clerk", after=seen)
        assert _post_signed(url, SECRET_A, "m5") == 401
        assert _post_signed(url, SECRET_B, "m6") == 200

        # A source edit (a new path) restarts the app on the same port.
        seen = log.mark()
        manifest.write_text(MANIFEST.format(secret=f"  current: {SECRET_B}", path="/hooks/new"))
        log.wait_for("sources changed, restarting", after=seen)
        # The new app's banner (the first since the edit), printed once it listens: until the
        # old one has stopped, its /readyz still answers (and it knows no /hooks/new).
        log.wait_for("health:", after=seen)
        wait_ready(base + "/readyz", proc)
        assert _post_signed(base + "/hooks/new", SECRET_B, "m7") == 200
    finally:
        err = stop_local(proc)
    assert "secrets reloaded for default/clerk" in err
    assert "sources changed, restarting" in err
    assert SECRET_A not in err
    assert SECRET_B not in err


def test_dfm_local_survives_broken_edits_and_a_file_deleted_and_written_again(
    tmp_path: Path, database_url: str
) -> None:
    # Served as a single file (-f FILE), the way `git checkout` or an editor's save replaces it.
    manifest = tmp_path / "clerk.yaml"
    manifest.write_text(MANIFEST.format(secret=f"  current: {SECRET_A}", path="/hooks/clerk"))
    base, proc = start_local("-f", str(manifest), "--database-url", database_url)
    try:
        log = LOGS[proc.pid]
        for broken, said in (
            (b"# caf\xe9\n", "not UTF-8 text"),
            (b"apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: [a]\n", "not a mapping"),
        ):
            seen = log.mark()
            manifest.write_bytes(broken)
            log.wait_for(said, after=seen)
            assert proc.poll() is None, "a broken edit stopped dfm local"
            assert _post_signed(base + "/hooks/clerk", SECRET_A, f"b-{time.monotonic()}") == 200

        seen = log.mark()
        manifest.unlink()
        log.wait_for("dfm local: error", after=seen)  # nothing to serve: the last good kept
        seen = log.mark()
        manifest.write_text(MANIFEST.format(secret=f"  current: {SECRET_A}", path="/hooks/again"))
        log.wait_for("sources changed, restarting", after=seen)
        log.wait_for("health:", after=seen)  # the new app's banner: it listens, the old stopped
        wait_ready(base + "/readyz", proc)
        assert _post_signed(base + "/hooks/again", SECRET_A, "again") == 200
    finally:
        err = stop_local(proc)
    assert "not UTF-8 text" in err
    assert "data is not a mapping" in err
    assert "Traceback" not in err


def test_dfm_operator_refuses_to_start_what_would_only_retry(tmp_path: Path) -> None:
    # No kubeconfig, a garbage one, a taken port, a liveness URL that is not one: one line, exit 2.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    garbage = tmp_path / "garbage"
    garbage.write_text("garbage: [")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - as the operator's metrics server would
        taken.listen()
        busy = taken.getsockname()[1]
        cases = [
            (str(tmp_path / "none"), [], "no kubeconfig at"),
            (str(garbage), [], "no usable kubeconfig at"),
            (str(kubeconfig), ["--metrics-port", str(busy)], f"port {busy} is not free"),
            (str(kubeconfig), ["--liveness", "notaurl"], "expected http://HOST:PORT/PATH"),
        ]
        for config, args, expected in cases:
            result = subprocess.run(
                [*DFM, "operator", *args],
                cwd=ROOT,
                env={**env, "KUBECONFIG": config},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 2, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert expected in lines[0]


def test_dfm_local_forwards_and_dfm_consume_verifies_what_arrives(
    database_url: str, tmp_path: Path
) -> None:
    """The README's forwarding walk-through: make local, dfm consume, dfm send."""
    consumer_port = free_port()
    manifest = tmp_path / "forwarding.yaml"
    example = (EXAMPLES / "local" / "forwarding.yaml").read_text()
    assert "http://127.0.0.1:9000/events" in example
    manifest.write_text(example.replace(":9000/", f":{consumer_port}/"))
    base, local = start_local("-f", str(manifest), "--database-url", database_url)
    consume = subprocess.Popen(
        [*DFM, "consume", str(manifest), "--name", "orders"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = LogTail(consume)
    printed = LogTail(consume, consume.stdout)
    try:
        said.wait_for(f"POST http://127.0.0.1:{consumer_port}/events")
        # dfm local's banner says where it forwards and how to consume it.
        LOGS[local.pid].wait_for(f"forwards to http://127.0.0.1:{consumer_port}/events")
        LOGS[local.pid].wait_for(f"consume {manifest} --name orders")
        sent = run_dfm(
            "send", str(manifest), "--name", "orders", "--url", f"{base}/hooks/default/orders",
            "--id", "msg_forward_walkthrough",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        printed.wait_for("webhook-id=msg_forward_walkthrough")
        line = next(x for x in printed.lines if "msg_forward_walkthrough" in x)
        assert "signature=valid" in line
        assert "-> 200" in line
        assert "attempt=1" in line
        assert re.search(r" trace=[0-9a-f]{32} ", line), line
    finally:
        consume.send_signal(signal.SIGINT)
        assert consume.wait(30) == 0
        local.send_signal(signal.SIGINT)
        local.wait(30)
        LOGS.pop(local.pid, None)
