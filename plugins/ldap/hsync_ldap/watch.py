"""Live changes from a directory: syncrepl refreshAndPersist (RFC 4533) in a thread.

The server sends one event per changed entry: add, modify and modrdn as
``syncrepl_entry(dn, attrs, uuid)`` with the entry's new DN, a delete as
``syncrepl_delete(uuids)`` with no DN. A rename or move of a non-leaf entry is ONE
event for that entry: its descendants get none. So the watcher keeps a uuid -> key map
(filled by the refresh phase) and rewrites the keys below a moved entry itself.

What reaches the sink: an entry whose key is unchanged -> ``dirty(key, deep=False)``;
a new entry -> ``dirty(key)``; a moved or renamed entry -> ``dirty(old)`` and
``dirty(new)``; a deleted one -> ``dirty(key)``. Nothing is reported for the refresh
phase of a connection without a cookie (the loop compares everything when it starts).

Each watch keeps its own cookie (the position in the change stream its events have
reached); nothing of it is kept on the backend, so two watches of one backend never
share one.

Resuming (``watch_from(sink, Resume(token, identities))``): the token is a cookie a
watch gave out (``checkpoint()``: the cookie of the last message whose events have
all been reported; None during a refresh). The map is seeded from the history's
identity -> key rows instead of a listing, and the search starts with the cookie: the
server's refresh phase then holds only what changed since (syncprov's session log:
changed entries, and deleted uuids with refreshDeletes). Those changes are reported
like live ones, ``resumed`` is set, and the loop skips its start-up comparison. When
the server cannot answer from its log (a present phase, as after a restart of slapd
or a cookie older than the log), refuses the cookie (e-syncRefreshRequired, "consumer
state is newer than provider", another error) or hands back a cookie without a CSN,
the watcher drops the cookie and starts over with a full refresh: ``resumed`` stays
False and the loop compares everything, as without a token.

A server without the syncprov overlay refuses syncrepl; the watcher then lists every
entry's entryUUID and entryCSN every ``POLL_INTERVAL`` seconds and reports what differs
(the same events, a few seconds late). Polling has no cookie: no checkpoint, no resume.

When the server goes away the watcher reconnects with backoff (0.1 s doubling up to
5 s), runs a fresh refresh (no cookie) to rebuild the map, then calls ``sink.lost(...)``:
what changed while it was away is unknown, so a full comparison is due (and the loop
drops the token it kept).
"""

from __future__ import annotations

import contextlib
import re
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

import ldap
from ldap.ldapobject import SimpleLDAPObject
from ldap.syncrepl import SyncreplConsumer

from hsync.backend import Credentials, Resume, WatchSink
from hsync.errors import BackendError
from hsync.model import Key

from . import connection
from .connection import TIMEOUT, Server, describe
from .entries import Mapper

POLL = 0.2
POLL_INTERVAL = 2.0
"""Seconds between two listings when the server has no syncrepl."""
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
_COOKIE = re.compile(r"(^|,)rid=\d+(,|$)|(^|,)csn=")


class _Stale(Exception):
    """The server cannot resume from the cookie: start over without one."""


def _usable(cookie: str | None) -> bool:
    """A cookie that names a point of the change stream (a CSN); an empty or foreign
    one makes slapd send its whole content as if there were none."""
    return bool(cookie) and "csn=" in (cookie or "") and bool(_COOKIE.search(cookie or ""))


class _Consumer(SimpleLDAPObject, SyncreplConsumer):
    """One syncrepl session; the callbacks forward to the watch."""

    watch: SyncreplWatch

    def syncrepl_get_cookie(self) -> str | None:
        return self.watch._cookie

    def syncrepl_set_cookie(self, cookie: str) -> None:
        self.watch._cookie = cookie

    def syncrepl_entry(self, dn: str, attributes: Any, uuid: str) -> None:
        self.watch.entry(dn, uuid)

    def syncrepl_delete(self, uuids: list[str]) -> None:
        self.watch.delete(uuids)

    def syncrepl_present(self, uuids: list[str] | None, refreshDeletes: bool = False) -> None:
        if refreshDeletes and uuids:
            self.watch.delete(uuids)
        elif uuids is None and not refreshDeletes:
            self.watch.present_phase()

    def syncrepl_refreshdone(self) -> None:
        self.watch.refreshed()


class SyncreplWatch:
    """A watch (``hsync.backend.Watch``) of the tree at ``server``: a context manager
    that, on entering, connects and waits for the refresh phase (so a change made after
    ``__enter__`` returns is reported); on exiting, stops and joins its thread.
    ``mapper`` turns DNs into keys (one of its own: it is used on the watch's thread)."""

    def __init__(
        self,
        server: Server,
        credentials: Credentials,
        mapper: Mapper,
        sink: WatchSink,
        resume: Resume | None = None,
    ) -> None:
        self.server = server
        self.url = server.url
        self._credentials = credentials
        self.mapper = mapper
        self.sink = sink
        self._cookie: str | None = None
        """The last syncrepl cookie this watch's session saw (set by the consumer after
        the callbacks of its message ran); ``checkpoint`` gives it out."""
        self.keys: dict[str, Key] = {}  # entryUUID -> key
        self.live = False  # past the refresh phase: events are reported
        self.resume = resume if resume is not None and _usable(
            resume.token.decode("utf-8", "replace")) else None
        self.resuming = False
        """In the refresh phase of a search that started from ``resume.token``: its
        changes are reported."""
        self._resumed = False
        self.reconnects = 0
        self.polling = False
        """The server refused syncrepl (no syncprov overlay): entries are polled."""
        self.poll_interval = POLL_INTERVAL
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._first_error: str | None = None
        self._fallback: str | None = None
        """Why the last resume was given up (tests, logs)."""
        self._thread: threading.Thread | None = None

    # -- the Watch protocol ----------------------------------------------------------------
    def __enter__(self) -> SyncreplWatch:
        self._thread = threading.Thread(
            target=self._run, name=f"hsync-syncrepl {self.url}", daemon=True
        )
        self._thread.start()
        self._ready.wait(TIMEOUT + 5)
        if self._first_error is not None:
            self.__exit__(None, None, None)
            raise BackendError(f"{self.url}: cannot watch: {self._first_error}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        """True while the watch's thread runs (it ends on a stop, or on an error it
        cannot reconnect from)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def resumed(self) -> bool:
        """The watch resumed from the token (set before ``__enter__`` returns)."""
        return self._resumed

    def checkpoint(self) -> bytes | None:
        """The cookie of the last message whose events have all reached the sink (the
        consumer sets it after its callbacks ran); None during a refresh and when polling."""
        cookie = self._cookie
        if not self.live or self.polling or not _usable(cookie):
            return None
        assert cookie is not None
        return cookie.encode("utf-8")

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_MIN
        first = True
        while not self._stop.is_set():
            try:
                self._session(first)
                return  # stopped
            except _Stale as e:
                # the server cannot answer from the cookie: a full refresh, and the
                # loop's start-up comparison (nothing reported so far is lost: dirty
                # keys under a full comparison are harmless)
                self.resume = None
                self.resuming = False
                self._cookie = None
                self._fallback = str(e)
            except ldap.LDAPError as e:
                if first and not self._ready.is_set():
                    self._first_error = describe(e)
                    self._ready.set()
                    return
                if self._stop.is_set():
                    return
                first = False
                self.live = False
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            except Exception as e:
                if not self._ready.is_set():  # __enter__ says so instead of waiting
                    self._first_error = f"{type(e).__name__}: {e}"
                    self._ready.set()
                raise
            else:
                delay = BACKOFF_MIN

    def _session(self, first: bool) -> None:
        conn = connection.bind(self.server, self._credentials, _Consumer)
        conn.watch = self
        try:
            self.keys = {}
            self.live = False
            self._cookie = None  # a fresh refresh: the map is rebuilt from it
            if self.polling:
                self._poll(conn)
                return
            self.resuming = self.resume is not None
            if self.resuming:
                assert self.resume is not None
                # the map as of the token, from the history: the refresh phase only
                # names what changed since
                self.keys = {str(u): k for u, k in self.resume.identities()}
                self._cookie = self.resume.token.decode("utf-8", "replace")
                self.resume = None  # used once: a reconnect starts afresh
            msgid = conn.syncrepl_search(
                self.server.base_dn, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                filterstr="(objectClass=*)", attrlist=["1.1"],
                serverctrls=[connection.MANAGE_DSA_IT],  # referral objects are entries
            )
            while not self._stop.is_set():
                try:
                    if not conn.syncrepl_poll(msgid=msgid, timeout=POLL, all=1):
                        raise ldap.SERVER_DOWN({"desc": "the syncrepl search ended"})
                except ldap.TIMEOUT:
                    continue
                except (ldap.UNAVAILABLE_CRITICAL_EXTENSION, ldap.PROTOCOL_ERROR):
                    # no syncprov overlay on this database: poll instead
                    self.polling = True
                    self.resuming = False
                    self._poll(conn)
                    return
                except (ldap.SERVER_DOWN, ldap.CONNECT_ERROR):
                    raise
                except ldap.LDAPError as e:
                    if self.resuming:  # refused: e-syncRefreshRequired (4096), ...
                        raise _Stale(f"the server refused the cookie: {describe(e)}") from None
                    raise
        finally:
            with contextlib.suppress(ldap.LDAPError):
                conn.unbind_s()

    def _poll(self, conn: Any) -> None:
        """The fallback without syncrepl: every ``poll_interval`` seconds, list every
        entry's entryUUID and entryCSN (a cheap search) and report what differs from the
        last listing, as the syncrepl events would (an entry whose DN changed is a move;
        one gone is a delete)."""
        def listing() -> dict[str, tuple[Key, str]]:
            out: dict[str, tuple[Key, str]] = {}
            found = connection.search_all(
                conn, self.server.base_dn, attrs=["entryUUID", "entryCSN", "modifyTimestamp"]
            )
            for dn, attrs in found:
                uuid = (attrs.get("entryUUID") or [b""])[0].decode("ascii", "replace")
                csn = attrs.get("entryCSN") or attrs.get("modifyTimestamp") or [b""]
                key = self.mapper.key_of(dn)
                if uuid and key is not None:
                    out[uuid] = (key, csn[0].decode("ascii", "replace"))
            return out

        seen = listing()
        self.keys = {u: k for u, (k, _) in seen.items()}
        self.refreshed()
        while not self._stop.wait(self.poll_interval):
            now = listing()
            for uuid, (key, csn) in now.items():
                old = seen.get(uuid)
                if old is None:
                    self.sink.dirty(key, deep=True)
                elif old[0] != key:
                    self.sink.dirty(old[0], deep=True)
                    self.sink.dirty(key, deep=True)
                elif old[1] != csn:
                    self.sink.dirty(key, deep=False)
            for uuid, (key, _) in seen.items():
                if uuid not in now:
                    self.sink.dirty(key, deep=True)
            seen = now
            self.keys = {u: k for u, (k, _) in seen.items()}

    # -- events (on the thread) ------------------------------------------------------------
    def present_phase(self) -> None:
        """The end of a present phase: the server could not list what was deleted since
        the cookie (its session log does not reach back that far)."""
        if self.resuming:
            raise _Stale("the server answered the cookie with a present phase")

    def refreshed(self) -> None:
        if self.resuming:
            if not _usable(self._cookie):
                raise _Stale("the server's cookie after the refresh names no CSN")
            self.resuming = False
            self._resumed = True
        self.live = True
        if not self._ready.is_set():
            self._ready.set()
            return
        self.reconnects += 1
        self.sink.lost(f"{self.url}: reconnected; changes meanwhile are unknown")

    def entry(self, dn: str, uuid: str) -> None:
        key = self.mapper.key_of(dn)
        old = self.keys.get(uuid)
        if key is None:  # out of scope (cannot happen for a subtree search)
            if old is not None:
                self.delete([uuid])
            return
        self.keys[uuid] = key
        if not self.live and not self.resuming:
            return
        if old is None:
            self.sink.dirty(key, deep=True)
        elif old == key:
            self.sink.dirty(key, deep=False)
        else:
            n = len(old)
            for u, k in list(self.keys.items()):
                if k[:n] == old and u != uuid:
                    self.keys[u] = key + k[n:]
            self.sink.dirty(old, deep=True)
            self.sink.dirty(key, deep=True)

    def delete(self, uuids: list[str]) -> None:
        for uuid in uuids:
            key = self.keys.pop(uuid, None)
            if key is None:
                continue
            n = len(key)
            for u, k in list(self.keys.items()):
                if k[:n] == key:  # a subtree moved out of scope: one delete for its root
                    del self.keys[u]
            if self.live or self.resuming:
                self.sink.dirty(key, deep=True)


if TYPE_CHECKING:  # the protocol it claims, checked by mypy
    from hsync.backend import Watch

    _watch: type[Watch] = SyncreplWatch
