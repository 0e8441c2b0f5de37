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

stamp=.venv/.butter-installed
if [ ! -x .venv/bin/python ]; then
    # An assignment, so `set -e` stops here when find_python fails (inside
    # "$(...)" as an argument the failure was ignored and "" ran as a command).
    python="$(find_python)"
    "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    touch "$stamp"
fi
# Node SDKs for the Node end-to-end tests, when Node and npm are here.
if [ -f tests/node/package.json ] && command -v npm >/dev/null 2>&1; then
    if [ ! -d tests/node/node_modules ] || [ tests/node/package.json -nt tests/node/node_modules ]; then
        (cd tests/node && npm install --silent --no-audit --no-fund >/dev/null && touch node_modules)
    fi
fi
