"""Connections to a directory server: the one module that opens them and searches.

Used by the backend (``backend.LdapBackend``) and by the watcher (``watch``) alike, so
that neither reaches into the other.

Where: ``Server.of(location)`` parses ``ldap://host:port/BASE_DN`` (``ldaps://``) into a
value; a URL that carries credentials (``ldap://user:pw@host``, the ``bindname`` and
``X-BINDPW`` extensions) is refused without repeating them. Who: ``credentials`` given
by the command line, a config file or the API (``hsync.backend.Credentials``); what
they leave out (None) comes from the environment by role: ``HSYNC_SRC_BIND_DN`` /
``HSYNC_SRC_BIND_PASSWORD`` for a source, ``HSYNC_DST_BIND_DN`` /
``HSYNC_DST_BIND_PASSWORD`` for a destination, else ``HSYNC_BIND_DN`` /
``HSYNC_BIND_PASSWORD`` for both (``resolve``); none: an anonymous bind. A password
never appears in a message or a repr.

TLS: ``ldaps://``, or StartTLS on ``ldap://`` (``Credentials.starttls``: ``--starttls``;
the URL extension ``????!StartTLS`` (RFC 4516); ``HSYNC_LDAP_STARTTLS=1``). The server's
certificate is checked against ``Credentials.ca_file`` (``--ca-file``), else
``HSYNC_LDAP_CACERT``, else the system's CAs (``/etc/ldap/ldap.conf``), host name
included; ``HSYNC_LDAP_TLS_REQCERT`` (never / allow / try / demand) changes the check.
A certificate refused is one ``BackendError`` naming the URL and why.

Searches: ``pages`` is a paged search (RFC 2696) as a generator of pages, so that a
caller can check a cancel token between two pages; closing the generator before its
end abandons the search on the server (a request of size 0 with the last cookie).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

import attrs
import ldap
import ldap.dn
import ldapurl
from ldap.controls import SimplePagedResultsControl
from ldap.controls.simple import ManageDSAITControl

from hsync.backend import Credentials, evolve
from hsync.credentials import refuse_secret_in_url
from hsync.errors import BackendError, UsageError

PAGE_SIZE = 2000
"""Entries per page of a paged search (read at each search: tests lower it)."""
TIMEOUT = 10.0
"""Seconds to connect, and to wait for a small answer."""
USER_ATTRS = ["*", "entryUUID"]
"""What a search asks for by default: the user attributes and the identity (a backend
adds the operational attributes its schema makes payload: ``Schema.writable_operational``)."""
MANAGE_DSA_IT = ManageDSAITControl(criticality=False)
"""Sent with every search and write (RFC 3296): an entry of class ``referral`` is read
and written as an entry, not followed or returned as a continuation reference (as
``ldapadd -M`` and syncrepl do). Not critical: a server without it ignores it."""
DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}

Entry = tuple[str, dict[str, list[bytes]]]
"""(DN, attributes) as python-ldap returns them."""


def describe(e: ldap.LDAPError) -> str:
    """The server's answer in one line: result name and its diagnostic text."""
    info = e.args[0] if e.args and isinstance(e.args[0], dict) else {}
    desc = info.get("desc") or type(e).__name__
    extra = info.get("info")
    if isinstance(extra, bytes):
        extra = extra.decode("utf-8", "replace")
    out = f"{desc} ({type(e).__name__})"
    if extra:
        out += f": {extra}"
    return out


def env_credentials(role: str) -> Credentials:
    """The bind DN and password for ``role`` from the environment (empty: anonymous)."""
    prefix = "HSYNC_SRC_" if role == "source" else "HSYNC_DST_"
    dn = os.environ.get(prefix + "BIND_DN")
    if dn is not None:
        return Credentials(dn, os.environ.get(prefix + "BIND_PASSWORD", ""))
    return Credentials(
        os.environ.get("HSYNC_BIND_DN", ""), os.environ.get("HSYNC_BIND_PASSWORD", "")
    )


def resolve(credentials: Credentials | None, role: str, url: str) -> Credentials:
    """``credentials`` completed from the environment (``env_credentials``): a bind DN
    or password left None is the environment's. A password without any bind DN is a
    ``UsageError``."""
    env = env_credentials(role)
    if credentials is None:
        return env
    side = "src" if role == "source" else "dst"
    if credentials.bind_dn is None:
        dn = env.bind_dn
        password = env.password if credentials.password is None else credentials.password
    else:
        dn = credentials.bind_dn
        password = credentials.password
        if password is None:  # the DN given, the password from the environment
            password = os.environ.get(f"HSYNC_{side.upper()}_BIND_PASSWORD",
                                      os.environ.get("HSYNC_BIND_PASSWORD", ""))
    if password and not dn:
        raise UsageError(f"{url}: a password but no bind DN (--{side}-bind-dn, or "
                         f"HSYNC_{side.upper()}_BIND_DN)")
    return evolve(credentials, bind_dn=dn, password=password)


@attrs.frozen
class Server:
    """Where a tree is: a server, how to reach it, and the base DN (as written)."""

    scheme: str
    """"ldap" or "ldaps"."""
    host: str
    """As written in the URL (lower-cased)."""
    port: int | None
    """None: the scheme's default (``DEFAULT_PORTS``)."""
    base_dn: str
    starttls: bool = False

    @classmethod
    def of(cls, location: str) -> Server:
        """Parse ``location``; ``UsageError`` naming what is wrong."""
        refuse_secret_in_url(location, user=True)
        try:
            url = ldapurl.LDAPUrl(location)
        except ValueError as e:
            raise UsageError(f"{location}: not an LDAP URL: {e}") from None
        if not url.hostport:
            raise UsageError(f"{location}: no host:port (ldap://host:port/BASE_DN)")
        if not url.dn:
            raise UsageError(f"{location}: no base DN (ldap://host:port/BASE_DN)")
        try:
            ldap.dn.str2dn(url.dn)
        except ldap.DECODING_ERROR:
            raise UsageError(f"{location}: {url.dn!r} is not a DN") from None
        host, sep, port = url.hostport.lower().rpartition(":")
        if not sep or "]" in port:  # no port, or an IPv6 literal without one
            host, port = url.hostport.lower(), ""
        if port and not port.isdigit():
            raise UsageError(f"{location}: {port!r} is not a port")
        exts = {k.lower() for k in (url.extensions or {})}
        starttls = bool(
            {"starttls", "1.3.6.1.4.1.1466.20037"} & exts
            or os.environ.get("HSYNC_LDAP_STARTTLS", "") in ("1", "yes", "true")
        )
        return cls(url.urlscheme.lower(), host, int(port) if port else None, url.dn, starttls)

    @property
    def uri(self) -> str:
        """What python-ldap connects to (the URL as written, without the base)."""
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")

    @property
    def hostport(self) -> str:
        """``host:port`` with the default port filled in: equal for the same server."""
        return f"{self.host}:{self.port or DEFAULT_PORTS.get(self.scheme, 389)}"

    @property
    def url(self) -> str:
        return f"{self.uri}/{self.base_dn}"


def prepare(conn: Any, credentials: Credentials | None = None) -> Any:
    """Protocol, timeout and TLS options on a new connection."""
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, TIMEOUT)
    cacert = (credentials.ca_file if credentials is not None else None) or os.environ.get(
        "HSYNC_LDAP_CACERT")
    if cacert:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, cacert)
        # a CA given is a CA to check against (whatever ldap.conf's TLS_REQCERT says)
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    reqcert = os.environ.get("HSYNC_LDAP_TLS_REQCERT")
    if reqcert:
        level = {
            "never": ldap.OPT_X_TLS_NEVER, "allow": ldap.OPT_X_TLS_ALLOW,
            "try": ldap.OPT_X_TLS_TRY, "demand": ldap.OPT_X_TLS_DEMAND,
        }.get(reqcert.lower())
        if level is None:
            raise UsageError(f"HSYNC_LDAP_TLS_REQCERT={reqcert!r}: never/allow/try/demand")
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, level)
    if cacert or reqcert:
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    return conn


def starttls(server: Server, credentials: Credentials) -> bool:
    """Whether a connection to ``server`` starts TLS (never on ``ldaps://``)."""
    return server.scheme == "ldap" and (server.starttls or credentials.starttls)


def bind(
    server: Server, credentials: Credentials, factory: Callable[..., Any] | None = None
) -> Any:
    """A connection to ``server``, StartTLS'd and bound; raises ``ldap.LDAPError`` (a
    caller that reconnects on its own wants the error as it is: see ``connect``).
    ``credentials``: resolved (``resolve``). ``factory``: the connection class (the
    watcher's syncrepl consumer)."""
    if factory is None:
        conn = ldap.initialize(server.uri, bytes_mode=False)
    else:
        conn = factory(server.uri, bytes_mode=False)
    prepare(conn, credentials)
    if starttls(server, credentials):
        conn.start_tls_s()
    conn.simple_bind_s(credentials.bind_dn or "", credentials.password or "")
    return conn


def connect(server: Server, credentials: Credentials) -> Any:
    """A bound connection; ``BackendError`` (exit 2) naming why it cannot be had."""
    tls = starttls(server, credentials) or server.scheme == "ldaps"
    try:
        return bind(server, credentials)
    except (ldap.SERVER_DOWN, ldap.CONNECT_ERROR) as e:
        why = tls_failure(server, credentials) if tls else None
        if why is not None:
            raise BackendError(f"{server.url}: TLS: {why}") from None
        if isinstance(e, ldap.CONNECT_ERROR):
            raise BackendError(f"{server.url}: TLS failed: {describe(e)}") from None
        raise BackendError(f"{server.url}: cannot reach the server: {describe(e)}") from None
    except ldap.INVALID_CREDENTIALS as e:
        who = credentials.bind_dn or "anonymous"
        raise BackendError(f"{server.url}: bind as {who} refused: {describe(e)}") from None
    except ldap.LDAPError as e:
        raise BackendError(f"{server.url}: cannot connect: {describe(e)}") from None


# An ExtendedRequest for StartTLS (RFC 4511 4.14.1), message ID 1, in BER.
_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
_STARTTLS = (bytes([0x30, 5 + len(_STARTTLS_OID) + 2, 0x02, 0x01, 0x01,
                    0x77, len(_STARTTLS_OID) + 2, 0x80, len(_STARTTLS_OID)]) + _STARTTLS_OID)


def tls_failure(server: Server, credentials: Credentials) -> str | None:
    """Why a TLS handshake with ``server`` fails, in words, or None when it does not
    (or the server cannot be reached at all). libldap (GnuTLS on Debian) says only
    "Can't contact LDAP server" or "Connect error"; Python's ``ssl`` is asked the same
    question with the same CA file and host name, and says which check failed."""
    import socket
    import ssl

    cafile = credentials.ca_file or os.environ.get("HSYNC_LDAP_CACERT") or None
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        return f"cannot load the CA file {cafile}: {e}"
    port = server.port or DEFAULT_PORTS.get(server.scheme, 389)
    host = server.host.strip("[]")
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            if server.scheme == "ldap":
                sock.sendall(_STARTTLS)
                if not sock.recv(4096):
                    return None
            with ctx.wrap_socket(sock, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as e:
        reason = (e.verify_message or str(e)).rstrip(".")
        if e.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
            return (f"the server's certificate is not valid for {host} ({reason}): connect "
                    "by a name the certificate holds")
        where = f"by {cafile}" if cafile else "by the system's CAs (--ca-file FILE)"
        return f"the server's certificate is not trusted {where}: {reason}"
    except ssl.SSLError as e:
        return f"the TLS handshake failed: {e.reason or e}"
    except OSError:
        return None


def pages(
    conn: Any,
    dn: str,
    *,
    scope: int = ldap.SCOPE_SUBTREE,
    attrs: list[str] | None = None,
    filterstr: str = "(objectClass=*)",
) -> Generator[list[Entry], None, None]:
    """The entries of a paged search (RFC 2696), one list per page (references left
    out). Between two pages nothing is outstanding on the connection; closing the
    generator early abandons the search (the server frees its state). Raises
    ``ldap.LDAPError`` as the server answers (``NO_SUCH_OBJECT``: no base entry)."""
    page = SimplePagedResultsControl(True, size=PAGE_SIZE, cookie="")
    attrlist = attrs or USER_ATTRS
    pending = False  # a cookie the server keeps state for
    try:
        while True:
            msgid = conn.search_ext(dn, scope, filterstr, attrlist,
                                    serverctrls=[MANAGE_DSA_IT, page])
            _, data, _, ctrls = conn.result3(msgid, timeout=-1)
            cookie = next(
                (c.cookie for c in ctrls or () if c.controlType == page.controlType), None
            )
            pending = bool(cookie)
            page.cookie = cookie
            yield [(d[0], d[1]) for d in data if d[0] is not None]
            if not cookie:
                return
    finally:
        if pending:
            _abandon(conn, dn, scope, filterstr, page.cookie)


def _abandon(conn: Any, dn: str, scope: int, filterstr: str, cookie: bytes) -> None:
    """End a paged search before its last page: a request of size 0 with its cookie
    (RFC 2696 section 3)."""
    stop = SimplePagedResultsControl(True, size=0, cookie=cookie)
    try:
        msgid = conn.search_ext(dn, scope, filterstr, ["1.1"],
                                serverctrls=[MANAGE_DSA_IT, stop])
        conn.result3(msgid, timeout=TIMEOUT)
    except ldap.LDAPError:
        pass  # the server forgets it at unbind anyway


def search_all(conn: Any, dn: str, **kw: Any) -> list[Entry]:
    """Every entry of a paged search (see ``pages``) at once."""
    out: list[Entry] = []
    for found in pages(conn, dn, **kw):
        out.extend(found)
    return out


def read_entry(conn: Any, dn: str, attrs: list[str] | None = None) -> dict[str, list[bytes]] | None:
    """The attributes of the entry ``dn`` (a base search), or None when it is absent.
    Raises ``ldap.LDAPError`` for any other answer."""
    try:
        msgid = conn.search_ext(dn, ldap.SCOPE_BASE, "(objectClass=*)", attrs or USER_ATTRS,
                                serverctrls=[MANAGE_DSA_IT])
        _, data, _, _ = conn.result3(msgid, timeout=-1)
    except ldap.NO_SUCH_OBJECT:
        return None
    for edn, found in data:
        if edn is not None:
            return dict(found)
    return None
