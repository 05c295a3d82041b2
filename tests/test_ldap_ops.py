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


# -- credentials ------------------------------------------------------------------------------


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hsync_bin(), *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


def _pw_file(path: Path, password: str = PASSWORD, mode: int = 0o600) -> Path:
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def test_destination_bind_that_may_not_write_is_one_early_error(
    slapd: Slapd, tmp_path: Path
) -> None:
    """No destination credentials: the anonymous bind may read but not write. One line
    naming the destination URL and why, exit 2, nothing written (not one
    STRONG_AUTH_REQUIRED per entry)."""
    add_ldif(slapd, SRC_BASE, PEOPLE)
    env = _env(HSYNC_SRC_BIND_DN=SRC_ADMIN, HSYNC_SRC_BIND_PASSWORD=PASSWORD,
               XDG_STATE_HOME=str(tmp_path / "state"))
    r = _run("sync", slapd.endpoint(SRC_BASE), slapd.endpoint(DST_BASE), env=env)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert slapd.endpoint(DST_BASE) in line and "anonymous" in line, line
    assert "authentication" in line.lower() and "Traceback" not in r.stderr
    assert entries(slapd, DST_BASE) == {}
    # with the destination's credentials from a password file it goes through
    pw = _pw_file(tmp_path / "dst.pw")
    r = _run("sync", "--dst-bind-dn", DST_ADMIN, "--dst-password-file", str(pw),
             slapd.endpoint(SRC_BASE), slapd.endpoint(DST_BASE), env=env)
    assert r.returncode == 0, r.stderr
    assert "uid=ada,ou=people" in entries(slapd, DST_BASE)


def test_password_files_on_the_command_line(slapd: Slapd, tmp_path: Path) -> None:
    """--src-bind-dn/--src-password-file and --dst-*: no secret in the environment, the
    arguments, the output, the log file or the history; a password file others can
    read is refused by one line naming it."""
    add_ldif(slapd, SRC_BASE, PEOPLE)
    src_pw, dst_pw = _pw_file(tmp_path / "src.pw"), _pw_file(tmp_path / "dst.pw")
    state, log = tmp_path / "state", tmp_path / "sync.log"
    env = _env(XDG_STATE_HOME=str(state))
    args = ["--src-bind-dn", SRC_ADMIN, "--src-password-file", str(src_pw),
            "--dst-bind-dn", DST_ADMIN, "--dst-password-file", str(dst_pw)]
    r = _run("sync", "--json", "--log-file", str(log), *args, slapd.endpoint(SRC_BASE),
             slapd.endpoint(DST_BASE), env=env)
    assert r.returncode == 0, r.stderr
    assert "uid=bob,ou=people" in entries(slapd, DST_BASE)
    r2 = _run("diff", *args, slapd.endpoint(SRC_BASE), slapd.endpoint(DST_BASE), env=env)
    assert r2.returncode == 0 and "in sync" in r2.stdout, r2.stderr
    seen = r.stdout + r.stderr + r2.stdout + r2.stderr + log.read_text()
    seen += "".join(p.read_bytes().decode("latin-1") for p in state.rglob("*") if p.is_file())
    assert PASSWORD not in seen
    # a wrong password: one line naming the destination and the bind DN, exit 2
    wrong = _pw_file(tmp_path / "wrong.pw", "not-the-password")
    r = _run("sync", *args[:6], "--dst-password-file", str(wrong),
             slapd.endpoint(SRC_BASE), slapd.endpoint(DST_BASE), env=env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert slapd.endpoint(DST_BASE) in r.stderr and DST_ADMIN in r.stderr
    # a password file the group or the world can read is refused, naming the file
    for mode in (0o644, 0o640):
        src_pw.chmod(mode)
        r = _run("sync", *args, slapd.endpoint(SRC_BASE), slapd.endpoint(DST_BASE), env=env)
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.splitlines()
        assert str(src_pw) in line and "readable by others" in line and PASSWORD not in line


def test_daemon_refuses_a_password_file_others_can_read(slapd: Slapd, tmp_path: Path) -> None:
    """The daemon's ``*_bind_password_file`` obeys the rule of an inline password."""
    pw = _pw_file(tmp_path / "ldap.pw", mode=0o644)
    config = tmp_path / "hsync.toml"
    config.write_text(
        f'[[pair]]\nsource = "{slapd.endpoint(SRC_BASE)}"\n'
        f'destination = "{slapd.endpoint(DST_BASE)}"\n'
        f'destination_bind_dn = "{DST_ADMIN}"\ndestination_bind_password_file = "{pw}"\n'
    )
    r = _run("daemon", "--config", str(config), "--check", env=_env())
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert str(pw) in line and "readable by others" in line and PASSWORD not in line
    pw.chmod(0o600)
    r = _run("daemon", "--config", str(config), "--check", env=_env())
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("form", ["userinfo", "user-only", "bindname"])
def test_credentials_in_an_ldap_url_are_refused_without_echo(
    slapd: Slapd, tmp_path: Path, form: str
) -> None:
    """A password in the URL would be in the process list, the shell's history, the log
    and the report: one line naming the URL without it, exit 2, for sync, watch and a
    daemon config; nothing reaches a --log-file."""
    host = f"127.0.0.1:{slapd.port}"
    url = {
        "userinfo": f"ldap://admin:{PASSWORD}@{host}/{DST_BASE}",
        "user-only": f"ldap://cn=admin@{host}/{DST_BASE}",
        "bindname": f"ldap://{host}/{DST_BASE}????bindname=cn=admin%2C"
                    f"{DST_BASE.replace(',', '%2C')},X-BINDPW={PASSWORD}",
    }[form]
    env = _env(**slapd.env(), XDG_STATE_HOME=str(tmp_path / "state"))
    log = tmp_path / "sync.log"
    for cmd in (["sync", "--log-file", str(log)], ["watch"], ["diff"]):
        r = _run(*cmd, slapd.endpoint(SRC_BASE), url, env=env)
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.splitlines()
        assert "credentials in the URL" in line and PASSWORD not in line, line
        assert f"ldap://{host}/{DST_BASE}" in line
    assert not log.exists() or PASSWORD not in log.read_text()
    if form == "user-only":
        return  # no secret: refused when the endpoint opens (above), not by the config
    config = tmp_path / "hsync.toml"
    config.write_text(f'[[pair]]\nsource = "{slapd.endpoint(SRC_BASE)}"\n'
                      f'destination = "{url}"\n')
    r = _run("daemon", "--config", str(config), "--check", env=env)
    assert r.returncode == 2 and "credentials in the URL" in r.stderr, r.stderr
    assert PASSWORD not in r.stderr


# -- TLS ----------------------------------------------------------------------------------------


def _tls_names(server: Slapd, ca: Path) -> set[str]:
    """The RDN paths below the destination base, read over StartTLS (the server refuses
    anything else)."""
    import ldap

    conn = ldap.initialize(server.url, bytes_mode=False)
    conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(ca))
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    conn.start_tls_s()
    conn.simple_bind_s(DST_ADMIN, PASSWORD)
    found = conn.search_s(DST_BASE, ldap.SCOPE_ONELEVEL, "(objectClass=*)", ["1.1"])
    conn.unbind_s()
    return {dn.split(",")[0].lower() for dn, _ in found}


def test_sync_over_ldaps_and_starttls_with_a_ca_file(
    tls_slapd: tuple[Slapd, dict[str, Path]], tmp_path: Path
) -> None:
    """The source over ldaps://, the destination over StartTLS (--starttls, or the URL
    extension), both checked against --ca-file; a plain connection is refused by this
    server, so the sync shows StartTLS was used."""
    server, files = tls_slapd
    assert server.ldaps_url is not None
    src = f"{server.ldaps_url}/{SRC_BASE}"
    dst = server.endpoint(DST_BASE)
    env = _env(**server.env(), XDG_STATE_HOME=str(tmp_path / "state"))
    r = _run("sync", "--ca-file", str(files["ca"]), "--starttls", src, dst, env=env)
    assert r.returncode == 0, r.stderr
    assert _tls_names(server, files["ca"]) == {f"cn=host{i}" for i in range(5)}
    r = _run("diff", "--ca-file", str(files["ca"]), src, f"{dst}????!StartTLS", env=env)
    assert r.returncode == 0 and "in sync" in r.stdout, r.stderr
    # the same destination without StartTLS: the server wants TLS, one line, exit 2
    r = _run("diff", "--ca-file", str(files["ca"]), src, dst, env=env)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert dst in line and "confidentiality required" in line.lower(), line


@pytest.mark.parametrize("case", ["system CAs", "unknown CA", "wrong host", "StartTLS unknown CA",
                                  "missing CA file"])
def test_certificate_errors_are_one_clear_line(
    tls_slapd: tuple[Slapd, dict[str, Path]], tmp_path: Path, case: str
) -> None:
    """A certificate the CA file does not vouch for, or one for another host name: one
    line naming the URL and which check failed, exit 2, no traceback."""
    server, files = tls_slapd
    assert server.ldaps_url is not None
    ldaps_port = server.ldaps_url.rsplit(":", 1)[1]
    src, args, expect = {
        "system CAs": (f"{server.ldaps_url}/{SRC_BASE}", [], "not trusted by the system's CAs"),
        "unknown CA": (f"{server.ldaps_url}/{SRC_BASE}", ["--ca-file", str(files["other_ca"])],
                       f"not trusted by {files['other_ca']}"),
        "wrong host": (f"ldaps://localhost:{ldaps_port}/{SRC_BASE}",
                       ["--ca-file", str(files["ca"])], "not valid for localhost"),
        "StartTLS unknown CA": (server.endpoint(SRC_BASE),
                                ["--starttls", "--ca-file", str(files["other_ca"])],
                                f"not trusted by {files['other_ca']}"),
        "missing CA file": (f"{server.ldaps_url}/{SRC_BASE}",
                            ["--ca-file", str(tmp_path / "nope.pem")], "cannot read the CA file"),
    }[case]
    env = _env(**server.env(), XDG_STATE_HOME=str(tmp_path / "state"))
    r = _run("sync", *args, src, f"ldif:{tmp_path / 'out.ldif'}", env=env)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert expect in line, line
    assert case == "missing CA file" or src in line
    assert not (tmp_path / "out.ldif").exists()


def test_daemon_pair_over_tls(tls_slapd: tuple[Slapd, dict[str, Path]], tmp_path: Path) -> None:
    """A daemon pair's ``ca_file`` (relative to the config) and ``starttls`` keys reach
    its sync and its syncrepl watch: an entry added on the source arrives."""
    server, files = tls_slapd
    (tmp_path / "ca.pem").write_bytes(files["ca"].read_bytes())
    config = tmp_path / "hsync.toml"
    config.write_text(
        f'[defaults]\nstate = "{tmp_path / "h.sqlite"}"\ndebounce_ms = 0\n'
        'ca_file = "ca.pem"\nstarttls = true\n'
        f'[[pair]]\nname = "dir"\nsource = "{server.endpoint(SRC_BASE)}"\n'
        f'destination = "{server.endpoint(DST_BASE)}"\n'
    )
    p = subprocess.Popen([hsync_bin(), "daemon", "--config", str(config)],
                         env=_env(**server.env()), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait("the initial copy", lambda: len(_tls_names(server, files["ca"])) == 5)
        import ldap

        conn = ldap.initialize(server.url, bytes_mode=False)
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(files["ca"]))
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        conn.start_tls_s()
        conn.simple_bind_s(SRC_ADMIN, PASSWORD)
        conn.add_s(f"cn=live,{SRC_BASE}", [("objectClass", [b"device"]), ("cn", [b"live"])])
        conn.unbind_s()
        _wait("the live change", lambda: "cn=live" in _tls_names(server, files["ca"]))
    finally:
        p.send_signal(signal.SIGTERM)
        code = p.wait(15)
    assert code == 0, p.stderr.read() if p.stderr else ""
