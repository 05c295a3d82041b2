#!/usr/bin/env bash
# The LDAP example: a throwaway slapd on 127.0.0.1 with two suffixes, the small directory
# of directory.ldif loaded into the source, then synced to the destination with hsync.
#   bash examples/ldap/demo.sh
# Needs slapd and ldap-utils (apt-get install slapd ldap-utils) and the LDAP plugin in
# .venv (bash tests/run.sh installs all of it). Nothing outside a temp dir is changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="$root/.venv/bin/python"
if ! "$py" -c "import hsync_ldap" 2>/dev/null; then
    echo "the LDAP plugin is not installed: bash tests/run.sh (or pip install -e ./plugins/ldap)" >&2
    exit 2
fi
exec "$py" "$here/demo.py"
