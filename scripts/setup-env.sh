#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 (mitmproxy 12 needs it; on 3.11 pip
# silently installs the old mitmproxy 11) and install butter with its test
# dependencies. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

ok_python() {  # runs, and is >= 3.12 (pyenv shims exist but may not run)
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
    for candidate in "${BUTTER_PYTHON:-}" python3.13 python3.12 python3; do
        [ -n "$candidate" ] && ok_python "$candidate" && { command -v "$candidate"; return; }
    done
    if command -v pyenv >/dev/null 2>&1; then
        for v in 3.13 3.12; do
            prefix="$(pyenv prefix "$v" 2>/dev/null || true)"
            [ -n "$prefix" ] && ok_python "$prefix/bin/python" && { echo "$prefix/bin/python"; return; }
        done
    fi
    echo "butter needs Python >= 3.12 (set BUTTER_PYTHON=/path/to/python3.12)" >&2
    exit 1
}

# Debian's Chromium for the web view's browser tests (Playwright drives it;
# never `playwright install`). Only when missing, only as root with apt-get;
# elsewhere those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (apt-get) for the web view tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
        || echo "could not install chromium; the browser tests will be skipped" >&2
fi

stamp=.venv/.butter-installed
if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    touch "$stamp"
fi
# Services the tests run for real: redis-server for the shared store
# (Debian's package; installed only when missing and we may: root with apt).
if ! command -v redis-server >/dev/null 2>&1 && ! command -v valkey-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing redis-server (apt-get)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >/dev/null 2>&1 ||
            echo "setup: could not install redis-server; the shared-store tests will fail" >&2
    else
        echo "setup: redis-server is missing; install it (apt-get install redis-server) for the shared-store tests" >&2
    fi
fi
# Node SDKs for the Node end-to-end tests, when Node and npm are here.
if [ -f tests/node/package.json ] && command -v npm >/dev/null 2>&1; then
    if [ ! -d tests/node/node_modules ] || [ tests/node/package.json -nt tests/node/node_modules ]; then
        (cd tests/node && npm install --silent --no-audit --no-fund >/dev/null && touch node_modules)
    fi
fi
