"""Live changes from a directory: syncrepl refreshAndPersist (RFC 4533) in a thread.

The server sends one event per changed entry: add, modify and modrdn as
``syncrepl_entry(dn, attrs, uuid)`` with the entry's new DN, a delete as
``syncrepl_delete(uuids)`` with no DN. A rename or move of a non-leaf entry is ONE
event for that entry: its descendants get none. So the watcher keeps a uuid -> key map
(filled by the refresh phase) and rewrites the keys below a moved entry itself.

What reaches the sink: an entry whose key is unchanged -> ``dirty(key, deep=False)``;
a new entry -> ``dirty(key)``; a moved or renamed entry -> ``dirty(old)`` and
``dirty(new)``; a deleted one -> ``dirty(key)``. Nothing is reported for the refresh
phase of the first connection (the loop compares everything when it starts).

A server without the syncprov overlay refuses syncrepl; the watcher then lists every
entry's entryUUID and entryCSN every ``POLL_INTERVAL`` seconds and reports what differs
(the same events, a few seconds late).

When the server goes away the watcher reconnects with backoff (0.1 s doubling up to
5 s), runs a fresh refresh to rebuild the map, then calls ``sink.lost(...)``: what
changed while it was away is unknown, so a full comparison is due. The cookie is kept
in memory on the backend (``LdapBackend.cookie``) but not reused across reconnects nor
persisted across restarts (a restart compares everything anyway).
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

import ldap
from ldap.ldapobject import SimpleLDAPObject
from ldap.syncrepl import SyncreplConsumer

from hsync.backend import WatchSink
from hsync.errors import BackendError
from hsync.model import Key

from .backend import TIMEOUT, describe

if TYPE_CHECKING:
    from .backend import LdapBackend

POLL = 0.2
POLL_INTERVAL = 2.0
"""Seconds between two listings when the server has no syncrepl."""
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0


class _Consumer(SimpleLDAPObject, SyncreplConsumer):  # type: ignore[misc]
    """One syncrepl session; the callbacks forward to the watch."""

    watch: SyncreplWatch

    def syncrepl_get_cookie(self) -> bytes | None:
        return self.watch.backend.cookie

    def syncrepl_set_cookie(self, cookie: bytes) -> None:
        self.watch.backend.cookie = cookie

    def syncrepl_entry(self, dn: str, attributes: Any, uuid: str) -> None:
        self.watch.entry(dn, uuid)

    def syncrepl_delete(self, uuids: list[str]) -> None:
        self.watch.delete(uuids)

    def syncrepl_present(self, uuids: list[str] | None, refreshDeletes: bool = False) -> None:
        if refreshDeletes and uuids:
            self.watch.delete(uuids)

    def syncrepl_refreshdone(self) -> None:
        self.watch.refreshed()


class SyncreplWatch:
    """A context manager: on entering, connects and waits for the refresh phase (so a
    change made after ``__enter__`` returns is reported); on exiting, stops and joins
    its thread."""

    def __init__(self, backend: LdapBackend, sink: WatchSink) -> None:
        self.backend = backend
        self.sink = sink
        self.keys: dict[str, Key] = {}  # entryUUID -> key
        self.live = False  # past the refresh phase: events are reported
        self.reconnects = 0
        self.polling = False
        """The server refused syncrepl (no syncprov overlay): entries are polled."""
        self.poll_interval = POLL_INTERVAL
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._first_error: str | None = None
        self._thread: threading.Thread | None = None

    # -- the context manager -------------------------------------------------------------
    def __enter__(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"hsync-syncrepl {self.backend.url}", daemon=True
        )
        self._thread.start()
        self._ready.wait(TIMEOUT + 5)
        if self._first_error is not None:
            self.__exit__(None, None, None)
            raise BackendError(f"{self.backend.url}: cannot watch: {self._first_error}")

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

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_MIN
        first = True
        while not self._stop.is_set():
            try:
                self._session(first)
                return  # stopped
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
            else:
                delay = BACKOFF_MIN

    def _session(self, first: bool) -> None:
        b = self.backend
        conn = b.prepare(_Consumer(b.server, bytes_mode=False))
        conn.watch = self
        try:
            if b.starttls:
                conn.start_tls_s()
            dn, password = b.credentials()
            conn.simple_bind_s(dn, password)
            self.keys = {}
            self.live = False
            b.cookie = None  # a fresh refresh: the map is rebuilt from it
            if self.polling:
                self._poll(conn)
                return
            msgid = conn.syncrepl_search(
                b.base_dn, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                filterstr="(objectClass=*)", attrlist=["1.1"],
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
                    self._poll(conn)
                    return
        finally:
            with contextlib.suppress(ldap.LDAPError):
                conn.unbind_s()

    def _poll(self, conn: Any) -> None:
        """The fallback without syncrepl: every ``poll_interval`` seconds, list every
        entry's entryUUID and entryCSN (a cheap search) and report what differs from the
        last listing, as the syncrepl events would (an entry whose DN changed is a move;
        one gone is a delete)."""
        b = self.backend

        def listing() -> dict[str, tuple[Key, str]]:
            out: dict[str, tuple[Key, str]] = {}
            found = b._search(b.base_dn, ldap.SCOPE_SUBTREE,
                              ["entryUUID", "entryCSN", "modifyTimestamp"], conn=conn)
            for dn, attrs in found:
                uuid = (attrs.get("entryUUID") or [b""])[0].decode("ascii", "replace")
                csn = attrs.get("entryCSN") or attrs.get("modifyTimestamp") or [b""]
                key = b.mapper.key_of(dn)
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
    def refreshed(self) -> None:
        self.live = True
        if not self._ready.is_set():
            self._ready.set()
            return
        self.reconnects += 1
        self.sink.lost(f"{self.backend.url}: reconnected; changes meanwhile are unknown")

    def entry(self, dn: str, uuid: str) -> None:
        key = self.backend.mapper.key_of(dn)
        old = self.keys.get(uuid)
        if key is None:  # out of scope (cannot happen for a subtree search)
            if old is not None:
                self.delete([uuid])
            return
        self.keys[uuid] = key
        if not self.live:
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
            if self.live:
                self.sink.dirty(key, deep=True)
