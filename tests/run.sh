#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up what it needs, then runs it.
#   bash tests/run.sh [pytest args...]
# Creates .venv at the repo root (reused on later runs), installs hsync with its
# test extras, checks the code with ruff, and runs pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# install (or refresh) hsync and the test tools; quiet unless it fails
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" \
    || { echo "tests/run.sh: pip install failed" >&2; exit 1; }

echo "== ruff"
"$venv/bin/ruff" check .
echo "== pytest"
exec "$venv/bin/python" -m pytest "$@"
