"""A throwaway slapd on loopback with two suffixes (source and destination).

Started as a child process (``slapd -d 0`` stays in the foreground, so the pid is ours)
on a free 127.0.0.1 port, with its configuration and databases in a temp directory;
stopped by that pid. Facts: ``shared/notes/ldap.md``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SRC_BASE = "dc=src,dc=test"
DST_BASE = "dc=dst,dc=test"
SRC_ADMIN = f"cn=admin,{SRC_BASE}"
DST_ADMIN = f"cn=admin,{DST_BASE}"
PASSWORD = "secret-for-tests"
SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"

_DATABASE = """
database mdb
maxsize 1073741824
dbnosync
suffix "{base}"
rootdn "cn=admin,{base}"
rootpw {password}
directory {dir}
index objectClass eq
index entryCSN,entryUUID eq
{overlay}"""
_SYNCPROV = """overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 1000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slapd_missing() -> str | None:
    """Why no slapd can run here, or None."""
    if not os.path.exists(SLAPD) or not os.path.exists(SLAPADD):
        return "slapd is not installed (tests/run.sh installs it with apt-get: slapd ldap-utils)"
    return None


class Slapd:
    """One slapd serving SRC_BASE and DST_BASE (both empty but for the suffix entry)."""

    def __init__(
        self,
        root: Path,
        *,
        bases: tuple[str, ...] = (SRC_BASE, DST_BASE),
        syncprov: bool = True,
        tls: tuple[Path, Path] | None = None,
        require_tls: bool = False,
        schemas: tuple[str, ...] = (),
        modules: tuple[str, ...] = (),
    ) -> None:
        """``tls``: (certificate, key) files: StartTLS on the ldap:// port and an
        ldaps:// port (``ldaps_url``) besides. ``require_tls``: every operation but
        StartTLS on a connection without TLS is refused (``security tls=1``).
        ``schemas``: more of /etc/ldap/schema/NAME.schema (misc, duaconf, ...);
        ``modules``: more modules (ppolicy brings its attribute types with it)."""
        self.root = root
        self.bases = bases
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{free_port()}" if tls else None
        self.conf = root / "slapd.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        parts = [
            *(f"include /etc/ldap/schema/{s}.schema" for s in
              ("core", "cosine", "inetorgperson", "nis", *schemas)),
            f"pidfile {root}/slapd.pid",
            f"argsfile {root}/slapd.args",
            "modulepath /usr/lib/ldap",
            "moduleload back_mdb",
            "moduleload syncprov",
            *(f"moduleload {m}" for m in modules),
            "sizelimit unlimited",
            *([f"TLSCertificateFile {tls[0]}", f"TLSCertificateKeyFile {tls[1]}"]
              if tls else []),
            *(["security tls=1"] if require_tls else []),
        ]
        for i, base in enumerate(bases):
            d = root / f"db{i}"
            d.mkdir(parents=True)
            parts.append(_DATABASE.format(base=base, password=PASSWORD, dir=d,
                                          overlay=_SYNCPROV if syncprov else ""))
        self.conf.write_text("\n".join(parts) + "\n")
        for base in bases:
            rdn = base.split(",")[0].split("=")[1]
            ldif = root / f"base-{rdn}.ldif"
            ldif.write_text(
                f"dn: {base}\nobjectClass: dcObject\nobjectClass: organization\n"
                f"dc: {rdn}\no: {rdn}\n"
            )
            subprocess.run(
                [SLAPADD, "-q", "-f", str(self.conf), "-b", base, "-l", str(ldif)],
                check=True, capture_output=True,
            )

    def start(self) -> None:
        """Start slapd and wait until it accepts connections."""
        log = open(self.root / "slapd.log", "ab")  # noqa: SIM115 (lives as long as slapd)
        self.proc = subprocess.Popen(
            [SLAPD, "-f", str(self.conf), "-h",
             " ".join(u + "/" for u in (self.url, self.ldaps_url) if u), "-d", "0"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.root / 'slapd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("slapd did not start listening within 10 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop slapd by its pid (SIGKILL for a crash) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def endpoint(self, base: str) -> str:
        return f"{self.url}/{base}"

    def env(self) -> dict[str, str]:
        """Credentials for hsync: the source and destination admins."""
        return {
            "HSYNC_SRC_BIND_DN": SRC_ADMIN,
            "HSYNC_SRC_BIND_PASSWORD": PASSWORD,
            "HSYNC_DST_BIND_DN": DST_ADMIN,
            "HSYNC_DST_BIND_PASSWORD": PASSWORD,
        }


def make_certificates(d: Path) -> dict[str, Path]:
    """With the openssl command, in ``d``: a CA (``ca``), a server certificate it signed
    for 127.0.0.1 only (``cert``, ``key``: its subjectAltName is that IP address, so
    ``localhost`` is a wrong host name), and an unrelated CA (``other_ca``). EC keys:
    made in milliseconds."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    for name in ("ca", "other_ca"):
        openssl("req", "-x509", *ec, "-days", "2", "-subj", f"/CN=hsync test {name}",
                "-keyout", f"{name}.key", "-out", f"{name}.pem")
    openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    (d / "server.key").chmod(0o644)  # slapd may drop to its own user
    return {"ca": d / "ca.pem", "other_ca": d / "other_ca.pem", "cert": d / "server.pem",
            "key": d / "server.key"}


@pytest.fixture
def tls_slapd(tmp_path: Path) -> Iterator[tuple[Slapd, dict[str, Path]]]:
    """A slapd of its own that serves TLS only: ldaps:// (``ldaps_url``) and StartTLS on
    ldap:// (anything else on a plain connection is refused: confidentialityRequired),
    with a certificate for 127.0.0.1 signed by a CA made for the test; and the files
    (``make_certificates``). The source suffix holds a few entries (slapadd)."""
    why = slapd_missing() or (None if shutil.which("openssl") else "openssl is not installed")
    if why is not None:
        pytest.skip(why)
    files = make_certificates(tmp_path / "pki")
    server = Slapd(tmp_path / "slapd", tls=(files["cert"], files["key"]), require_tls=True)
    ldif = tmp_path / "people.ldif"
    ldif.write_text("".join(
        f"dn: cn=host{i},{SRC_BASE}\nobjectClass: device\ncn: host{i}\n\n" for i in range(5)))
    subprocess.run([SLAPADD, "-q", "-f", str(server.conf), "-b", SRC_BASE, "-l", str(ldif)],
                   check=True, capture_output=True)
    server.start()
    try:
        yield server, files
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    why = slapd_missing()
    if why is not None:
        pytest.skip(why)
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A fresh slapd for one test (starts in ~50 ms): source and destination suffixes."""
    why = slapd_missing()
    if why is not None:
        pytest.skip(why)
    server = Slapd(tmp_path / "slapd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ldap_env(slapd: Slapd, monkeypatch: pytest.MonkeyPatch) -> Slapd:
    """``slapd`` with its admin credentials in the environment hsync reads."""
    for k, v in slapd.env().items():
        monkeypatch.setenv(k, v)
    return slapd


# -- a second connection, as another client of the directory would be -----------------------


def admin(server: Slapd, base: str) -> Any:
    """A python-ldap connection bound as ``base``'s admin (not hsync's own)."""
    import ldap

    conn = ldap.initialize(server.url, bytes_mode=False)
    conn.simple_bind_s(f"cn=admin,{base}", PASSWORD)
    return conn


def add_ldif(server: Slapd, base: str, text: str) -> None:
    """``ldapadd`` of ``text`` as ``base``'s admin (the password on stdin's side: -y)."""
    pw = server.root / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    r = subprocess.run(
        ["ldapadd", "-x", "-H", server.url, "-D", f"cn=admin,{base}", "-y", str(pw)],
        input=text, text=True, capture_output=True,
    )
    assert r.returncode == 0, r.stderr


def entries(server: Slapd, base: str) -> dict[str, dict[str, set[bytes]]]:
    """Every entry below ``base`` (base excluded): DN relative to the base, lower-cased
    -> attribute (lower-case) -> values; user attributes only."""
    import ldap

    conn = ldap.initialize(server.url, bytes_mode=False)
    out = {}
    for dn, attrs in conn.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["*"]):
        rel = dn[: -len(base)].rstrip(",").lower()
        if rel:
            out[rel] = {k.lower(): set(v) for k, v in attrs.items()}
    conn.unbind_s()
    return out


def uuids(server: Slapd, base: str) -> dict[str, str]:
    """Relative DN (lower-case) -> entryUUID, below ``base``."""
    import ldap

    conn = ldap.initialize(server.url, bytes_mode=False)
    out = {}
    for dn, attrs in conn.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["entryUUID"]):
        rel = dn[: -len(base)].rstrip(",").lower()
        if rel:
            out[rel] = attrs["entryUUID"][0].decode()
    conn.unbind_s()
    return out


def clear(server: Slapd, base: str) -> None:
    """Delete everything below ``base``, leaves first."""
    import ldap

    conn = admin(server, base)
    found = conn.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["1.1"])
    for dn, _ in sorted(found, key=lambda r: -len(ldap.dn.str2dn(r[0]))):
        if dn.lower() != base.lower():
            conn.delete_s(dn)
    conn.unbind_s()
