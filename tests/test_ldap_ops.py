"""LDAP in daily operation: a live mirror without some attributes, credentials (bind
failures, password files, URLs that carry a password), TLS. Against the real slapd the
suite starts (``ldap_fixtures``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ldap_fixtures import (
    DST_ADMIN,
    DST_BASE,
    PASSWORD,
    SRC_ADMIN,
    SRC_BASE,
    Slapd,
    add_ldif,
    admin,
    entries,
)
from treeutil import hsync_bin


pytest.importorskip("ldap")

PEOPLE = (
    f"dn: ou=People,{SRC_BASE}\nobjectClass: organizationalUnit\nou: People\n\n"
    f"dn: uid=ada,ou=People,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: ada\ncn: Ada\n"
    "sn: Lovelace\nuserPassword: source-secret-1\ndescription: first\n\n"
    f"dn: uid=bob,ou=People,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\n"
    "sn: Builder\nuserPassword: bob-secret\n"
)
ADA_SRC = f"uid=ada,ou=People,{SRC_BASE}"
ADA_DST = f"uid=ada,ou=People,{DST_BASE}"


def _env(**more: str) -> dict[str, str]:
    """The process environment without any HSYNC_* variable, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSYNC_")}
    env.update(more)
    return env


def _wait(what: str, ready: Callable[[], bool], timeout: float = 20) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _dst_ada(server: Slapd) -> dict[str, set[bytes]]:
    return entries(server, DST_BASE).get("uid=ada,ou=people", {})


def _mirror_without_passwords(server: Slapd, start: Callable[[], None],
                              stop: Callable[[], None]) -> None:
    """The scenario every way of running a live mirror shares: the mirror starts, the
    destination's entries come without userPassword; the destination sets its own
    password; on the source a password change and a description change follow: the
    description arrives, the password never does, the destination's own stays."""
    add_ldif(server, SRC_BASE, PEOPLE)
    start()
    try:
        _wait("the initial copy", lambda: b"first" in _dst_ada(server).get("description", ()))
        assert "userpassword" not in _dst_ada(server)
        assert "userpassword" not in entries(server, DST_BASE)["uid=bob,ou=people"]
        dst = admin(server, DST_BASE)
        dst.modify_s(ADA_DST, [(2, "userPassword", [b"destination-own"])])
        dst.unbind_s()
        src = admin(server, SRC_BASE)
        src.modify_s(ADA_SRC, [(2, "userPassword", [b"source-secret-2"])])
        src.modify_s(ADA_SRC, [(2, "description", [b"second"])])
        src.unbind_s()
        _wait("the description change", lambda: _dst_ada(server)["description"] == {b"second"})
        time.sleep(0.5)  # a round that would carry the password has had its time
        assert _dst_ada(server)["userpassword"] == {b"destination-own"}
    finally:
        stop()


def test_watch_command_mirrors_without_excluded_attribute(
    slapd: Slapd, tmp_path: Path
) -> None:
    """``hsync watch --exclude-attr userPassword``: a live mirror without passwords."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> None:
        procs.append(subprocess.Popen(
            [hsync_bin(), "watch", "--debounce", "0", "--exclude-attr", "userPassword",
             "--state", str(tmp_path / "h.sqlite"),
             slapd.endpoint(SRC_BASE), slapd.endpoint(DST_BASE)],
            env=_env(**slapd.env()), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        ))
        time.sleep(0.3)
        assert procs[0].poll() is None, procs[0].stderr.read() if procs[0].stderr else ""

    def stop() -> None:
        p = procs[0]
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, p.stderr.read() if p.stderr else ""

    _mirror_without_passwords(slapd, start, stop)


def test_daemon_pair_mirrors_without_excluded_attribute(slapd: Slapd, tmp_path: Path) -> None:
    """A daemon pair's ``exclude_attr`` key (here from ``[defaults]``) does the same."""
    config = tmp_path / "hsync.toml"
    config.write_text(
        f'[defaults]\nstate = "{tmp_path / "h.sqlite"}"\ndebounce_ms = 0\n'
        'exclude_attr = ["userPassword"]\n'
        f'[[pair]]\nname = "dir"\nsource = "{slapd.endpoint(SRC_BASE)}"\n'
        f'destination = "{slapd.endpoint(DST_BASE)}"\n'
    )
    procs: list[subprocess.Popen[str]] = []

    def start() -> None:
        procs.append(subprocess.Popen(
            [hsync_bin(), "daemon", "--config", str(config)], env=_env(**slapd.env()),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))

    def stop() -> None:
        p = procs[0]
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, p.stderr.read() if p.stderr else ""

    _mirror_without_passwords(slapd, start, stop)
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('["userPassword"]', '"userPassword"'))
    r = subprocess.run([hsync_bin(), "daemon", "--config", str(bad), "--check"],
                       env=_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "exclude_attr must be a list" in r.stderr, r.stderr
