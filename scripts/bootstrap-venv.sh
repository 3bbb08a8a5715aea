#!/usr/bin/env bash
# Create the project's virtualenv with nothing but python3 (3.11+) on a Debian/Ubuntu machine.
# Debian ships python3 without ensurepip (that is the python3-venv package): as root we install
# it; otherwise we make a venv without pip and bring pip in from PyPI.
set -euo pipefail
venv=${1:-.venv}
py=${PYTHON:-python3}

"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "df-middleware needs Python 3.11 or newer")'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  exit 0
fi
rm -rf "$venv"
if "$py" -m venv "$venv" 2>/dev/null; then
  exit 0
fi
rm -rf "$venv"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "bootstrap: installing python${ver}-venv with apt-get" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  "$py" -m venv "$venv"
  exit 0
fi
echo "bootstrap: no ensurepip; creating the venv without pip and fetching pip from PyPI" >&2
"$py" -m venv --without-pip "$venv"
"$venv/bin/python" - <<'PY'
import json, os, subprocess, sys, tempfile, urllib.request
meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/pip/json", timeout=60))
wheel = next(f for f in meta["urls"] if f["filename"].endswith("py3-none-any.whl"))
path = os.path.join(tempfile.mkdtemp(), wheel["filename"])
urllib.request.urlretrieve(wheel["url"], path)
subprocess.check_call([sys.executable, f"{path}/pip", "install", "-q", path])
PY
