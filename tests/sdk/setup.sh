#!/usr/bin/env bash
# Installs the official Authing SDKs the conformance suite (tests/sdk_conformance.rs)
# drives, into this directory only:
#   .venv-v2      python venv, requirements-v2.txt (PyPI authing==4.5.18, the v2 client)
#   .venv-v3      python venv, requirements-v3.txt (PyPI authing==5.1.0 + websockets, v3)
#   node_modules  npm ci from package-lock.json (npm authing-js-sdk@4.23.55)
# Two venvs because both Python SDKs are the PyPI package `authing`.
#
# Idempotent: a part already installed from the same pinned file (a copy of it
# is kept inside the venv / node_modules as a stamp) is left alone, so a
# second run takes about a second. Downloads go through pip's and npm's
# default caches. Exits non-zero, saying what is missing, when it cannot
# install something.
#
# Needs: python3 (3.8+) with the venv module (Debian: apt-get install
# python3-venv), node and npm. Env PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "tests/sdk/setup.sh: $*" >&2; exit 1; }

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || die "$PY not found: the SDK suite needs python3 (3.8+)"
command -v node >/dev/null || die "node not found: the SDK suite needs node (18+) and npm"
command -v npm >/dev/null || die "npm not found: the SDK suite needs npm"

# venv DIR REQUIREMENTS MODULE: (re)creates DIR unless it was installed from
# exactly REQUIREMENTS and MODULE imports.
venv() {
  local dir=$1 req=$2 module=$3
  if [ -x "$dir/bin/python" ] && cmp -s "$req" "$dir/.installed-from" \
     && "$dir/bin/python" -c "import $module" >/dev/null 2>&1; then
    echo "$dir: up to date ($(grep -m1 '^authing==' "$req"))"
    return
  fi
  echo "$dir: installing $(grep -m1 '^authing==' "$req")"
  rm -rf "$dir"
  "$PY" -m venv "$dir" \
    || die "'$PY -m venv' failed: install the venv module (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" \
    || die "pip could not install $req into $dir (is PyPI reachable?)"
  "$dir/bin/python" -c "import $module" \
    || die "$dir: $module does not import after installing $req"
  cp "$req" "$dir/.installed-from"
}

venv .venv-v2 requirements-v2.txt authing.v2.authentication.authing
venv .venv-v3 requirements-v3.txt "authing, websockets"

if [ -f node_modules/authing-js-sdk/package.json ] && cmp -s package-lock.json node_modules/.installed-from; then
  echo "node_modules: up to date (authing-js-sdk $(node -p "require('./node_modules/authing-js-sdk/package.json').version"))"
else
  echo "node_modules: npm ci"
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed (is the npm registry reachable?)"
  cp package-lock.json node_modules/.installed-from
fi
node -e "require('authing-js-sdk')" || die "node cannot load authing-js-sdk from tests/sdk/node_modules"
echo "SDK suite ready: $("$PY" --version 2>&1), node $(node --version)"
