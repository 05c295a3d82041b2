"""Live LDAP sync end to end: ``PairWatch`` (what ``hsync watch`` runs) between two
suffixes of a real slapd, fed by syncrepl; changes made with another connection reach
the destination, a subtree move stays one modrdn."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from ldap_fixtures import DST_BASE, SRC_BASE, Slapd, add_ldif, admin

import hsync
from hsync.live import PairWatch, RoundResult, WatchOptions
from hsync.options import Options

pytest.importorskip("ldap")


def _left(server: Slapd) -> list[dict[str, str]]:
    return hsync.diff(server.endpoint(SRC_BASE), server.endpoint(DST_BASE), state="").to_json()


def _converge(server: Slapd, timeout: float = 15) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not _left(server):
            return
        time.sleep(0.1)
    raise AssertionError(f"the LDAP destination did not converge: {_left(server)[:5]}")


TREE = "".join(
    [f"dn: ou=Staff,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Staff\n\n",
     f"dn: ou=Old,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Old\n\n"]
    + [f"dn: uid=u{i},ou=Staff,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
       f"cn: User {i}\nsn: S{i}\n\n" for i in range(50)]
)


def test_ldap_changes_reach_the_destination_live(ldap_env: Slapd, tmp_path: Path) -> None:
    add_ldif(ldap_env, SRC_BASE, TREE)
    rounds: list[RoundResult] = []
    pw = PairWatch(
        ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
        Options(state=str(tmp_path / "h.sqlite"), check=True),
        WatchOptions(debounce=0.05), on_round=rounds.append,
    )
    t = threading.Thread(target=pw.run)
    t.start()
    try:
        _converge(ldap_env)
        conn = admin(ldap_env, SRC_BASE)
        conn.modify_s(f"uid=u1,ou=Staff,{SRC_BASE}", [(2, "sn", [b"Changed"])])  # replace
        conn.add_s(f"uid=new,ou=Old,{SRC_BASE}", [
            ("objectClass", [b"inetOrgPerson"]), ("uid", [b"new"]), ("cn", [b"New"]),
            ("sn", [b"N"]),
        ])
        conn.delete_s(f"uid=u2,ou=Staff,{SRC_BASE}")
        _converge(ldap_env)
        moves_before = pw.status.counts["move"]
        # a subtree of 50 entries moves under another OU: one modrdn on the destination
        conn.rename_s(f"ou=Staff,{SRC_BASE}", "ou=Staff", f"ou=Old,{SRC_BASE}", 1)
        _converge(ldap_env)
    finally:
        pw.stop()
        t.join(10)
    assert not t.is_alive()
    assert pw.status.counts["move"] == moves_before + 1
    moved = [op for r in rounds for op in r.done if op.op == "move"]
    assert [("/".join(op.key), "/".join(op.to or ())) for op in moved][-1][0].startswith("ou=staff")
    assert not any(r.full for r in rounds[1:]), "changes after the start are incremental"


def test_daemon_takes_ldap_credentials_from_its_config_file(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    """SPEC 9: credentials from the environment "or the config file". The daemon runs with
    no HSYNC_* variable; the password is in a 0600 file, and never in the status file."""
    import json
    import os
    import signal
    import subprocess

    from ldap_fixtures import DST_ADMIN, PASSWORD, SRC_ADMIN
    from treeutil import hsync_bin

    add_ldif(ldap_env, SRC_BASE, TREE)
    pw = tmp_path / "ldap.pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    status = tmp_path / "status.json"
    config = tmp_path / "hsync.toml"
    config.write_text(
        f'status_file = "{status}"\n[defaults]\nstate = "{tmp_path / "h.sqlite"}"\n'
        f'[[pair]]\nname = "dir"\nsource = "{ldap_env.endpoint(SRC_BASE)}"\n'
        f'destination = "{ldap_env.endpoint(DST_BASE)}"\n'
        f'source_bind_dn = "{SRC_ADMIN}"\nsource_bind_password_file = "ldap.pw"\n'
        f'destination_bind_dn = "{DST_ADMIN}"\ndestination_bind_password_file = "{pw}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSYNC_")}
    p = subprocess.Popen([hsync_bin(), "daemon", "--config", str(config)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _converge(ldap_env)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read().decode() if p.stderr else ""
    assert PASSWORD not in err and PASSWORD not in status.read_text()
    assert json.loads(status.read_text())["pairs"][0]["state"] == "stopped"
    # an inline password in a config file that others can read is refused
    config.write_text(config.read_text().replace(
        'source_bind_password_file = "ldap.pw"', f'source_bind_password = "{PASSWORD}"'))
    config.chmod(0o644)
    out = subprocess.run([hsync_bin(), "daemon", "--config", str(config), "--check"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "others can read" in out.stderr
    assert PASSWORD not in out.stderr
    config.chmod(0o600)
    out = subprocess.run([hsync_bin(), "daemon", "--config", str(config), "--check"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
