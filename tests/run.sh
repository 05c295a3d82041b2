#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up what it needs, then runs it.
#   bash tests/run.sh [pytest args...]
# Creates .venv at the repo root (reused on later runs), installs hsync with its
# test extras, checks the code with ruff and mypy, and runs pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# What the tests need, installed where missing when we may (root): slapd and
# ldap-utils (the LDAP plugin's tests), openssl (TLS certificates), acl (setfacl, the
# ACL tests); python-ldap builds from source against libldap2-dev and libsasl2-dev;
# delta transfer needs librsync2; the remote tests need sshd and the ssh client (a
# private sshd on 127.0.0.1).
need=()
for cmd_pkg in slapd:slapd ldapadd:ldap-utils openssl:openssl setfacl:acl \
        sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client; do
    command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${cmd_pkg%%:*}" ]] \
        || need+=("${cmd_pkg##*:}")
done
for hdr_pkg in /usr/include/ldap.h:libldap2-dev /usr/include/sasl/sasl.h:libsasl2-dev; do
    [[ -e "${hdr_pkg%%:*}" ]] || need+=("${hdr_pkg##*:}")
done
# delta transfer (hsync/delta.py) loads librsync through ctypes
ldconfig -p 2>/dev/null | grep -q 'librsync\.so\.2 ' || need+=(librsync2)
if ((${#need[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "== apt-get install ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >/dev/null \
            || echo "tests/run.sh: apt-get install ${need[*]} failed" >&2
    else
        echo "tests/run.sh: missing ${need[*]} (not root: cannot install them)" >&2
    fi
fi
# install (or refresh) hsync and the test tools; quiet unless it fails
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" \
    || { echo "tests/run.sh: pip install failed" >&2; exit 1; }
# the LDAP plugin (python-ldap compiles here when there is no wheel)
if [[ -e /usr/include/ldap.h ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ./plugins/ldap \
        || { echo "tests/run.sh: pip install ./plugins/ldap failed" >&2; exit 1; }
fi

echo "== ruff"
"$venv/bin/ruff" check .
echo "== mypy"
"$venv/bin/mypy" hsync plugins/ldap/hsync_ldap
echo "== pytest"
exec "$venv/bin/python" -m pytest "$@"
