"""Connections to a directory server: the one module that opens them and searches.

Used by the backend (``backend.LdapBackend``) and by the watcher (``watch``) alike, so
that neither reaches into the other.

Where: ``Server.of(location)`` parses ``ldap://host:port/BASE_DN`` (``ldaps://``) into a
value. Who: credentials come from a config file (``hsync.backend.Credentials``), else
from the environment by role: ``HSYNC_SRC_BIND_DN`` / ``HSYNC_SRC_BIND_PASSWORD`` for a
source, ``HSYNC_DST_BIND_DN`` / ``HSYNC_DST_BIND_PASSWORD`` for a destination, else
``HSYNC_BIND_DN`` / ``HSYNC_BIND_PASSWORD`` for both; none: an anonymous bind. A
password is never taken from the URL and never appears in a message or a repr.

TLS: ``ldaps://``, or StartTLS with the URL extension ``????!StartTLS`` (RFC 4516) or
``HSYNC_LDAP_STARTTLS=1``; ``HSYNC_LDAP_CACERT`` names a CA file,
``HSYNC_LDAP_TLS_REQCERT`` (never / allow / try / demand) the certificate check.

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

from hsync.backend import Credentials
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


def prepare(conn: Any) -> Any:
    """Protocol, timeout and TLS options on a new connection."""
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, TIMEOUT)
    cacert = os.environ.get("HSYNC_LDAP_CACERT")
    if cacert:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, cacert)
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


def bind(
    server: Server, credentials: Credentials, factory: Callable[..., Any] | None = None
) -> Any:
    """A connection to ``server``, StartTLS'd and bound; raises ``ldap.LDAPError`` (a
    caller that reconnects on its own wants the error as it is: see ``connect``).
    ``factory``: the connection class (the watcher's syncrepl consumer)."""
    if factory is None:
        conn = ldap.initialize(server.uri, bytes_mode=False)
    else:
        conn = factory(server.uri, bytes_mode=False)
    prepare(conn)
    if server.starttls:
        conn.start_tls_s()
    conn.simple_bind_s(credentials.bind_dn, credentials.password)
    return conn


def connect(server: Server, credentials: Credentials) -> Any:
    """A bound connection; ``BackendError`` (exit 2) naming why it cannot be had."""
    try:
        return bind(server, credentials)
    except ldap.SERVER_DOWN as e:
        tls = " (or its TLS certificate is not trusted: HSYNC_LDAP_CACERT)" if (
            server.starttls or server.scheme == "ldaps") else ""
        raise BackendError(
            f"{server.url}: cannot reach the server{tls}: {describe(e)}"
        ) from None
    except ldap.CONNECT_ERROR as e:  # StartTLS refused the certificate
        raise BackendError(f"{server.url}: TLS failed: {describe(e)}") from None
    except ldap.INVALID_CREDENTIALS as e:
        who = credentials.bind_dn or "anonymous"
        raise BackendError(f"{server.url}: bind as {who} refused: {describe(e)}") from None
    except ldap.LDAPError as e:
        raise BackendError(f"{server.url}: cannot connect: {describe(e)}") from None


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
