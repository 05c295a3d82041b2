"""A directory server as an hsync endpoint: ``ldap://host:port/BASE_DN`` (``ldaps://``).

Credentials come from the environment, by role: ``HSYNC_SRC_BIND_DN`` /
``HSYNC_SRC_BIND_PASSWORD`` for a source, ``HSYNC_DST_BIND_DN`` /
``HSYNC_DST_BIND_PASSWORD`` for a destination, else ``HSYNC_BIND_DN`` /
``HSYNC_BIND_PASSWORD`` for both; none: an anonymous bind. A password is never taken
from the URL, and never appears in a message.

TLS: ``ldaps://``, or StartTLS with the URL extension ``????!StartTLS`` (RFC 4516) or
``HSYNC_LDAP_STARTTLS=1``; ``HSYNC_LDAP_CACERT`` names a CA file,
``HSYNC_LDAP_TLS_REQCERT`` (never / allow / try / demand) the certificate check.

Ops: create = add (the planner puts parents first), update = modify with the minimal
per-attribute changes (computed against the entry as it is when the op runs), move =
modrdn with newSuperior (a subtree moves in one operation and keeps its entryUUIDs;
the old RDN value is deleted unless the payload keeps it), delete = delete (leaves
first). A failure on one entry is a ``Problem`` naming the DN and the server's answer.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

import ldap
import ldap.dn
import ldapurl
from ldap.controls import SimplePagedResultsControl
from ldap.controls.libldap import AssertionControl

from hsync.backend import (
    ApplyResult,
    Backend,
    Capabilities,
    Credentials,
    Resume,
    WatchSink,
)
from hsync.errors import BackendError, UsageError
from hsync.model import CREATE, DELETE, MOVE, UPDATE, Key, Node, Op, Problem, Snapshot

from .entries import Data, Mapper
from .schema import Schema

PAGE_SIZE = 2000
WINDOW = 256
TIMEOUT = 10.0
USER_ATTRS = ["*", "entryUUID"]
_UUID = re.compile(r"[0-9a-fA-F-]{36}")


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


def credentials(role: str) -> tuple[str, str]:
    """(bind DN, password) for ``role`` from the environment; ("", "") for anonymous."""
    prefix = "HSYNC_SRC_" if role == "source" else "HSYNC_DST_"
    dn = os.environ.get(prefix + "BIND_DN")
    if dn is not None:
        return dn, os.environ.get(prefix + "BIND_PASSWORD", "")
    return os.environ.get("HSYNC_BIND_DN", ""), os.environ.get("HSYNC_BIND_PASSWORD", "")


class LdapBackend:
    """One subtree of a directory server, from its base DN down."""

    def __init__(
        self, location: str, *, role: str = "source", credentials: Credentials | None = None
    ) -> None:
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
        self.scheme = url.urlscheme.lower()
        self.hostport = url.hostport.lower()
        self.server = f"{self.scheme}://{url.hostport}"
        self.base_dn = url.dn
        self.url = f"{self.server}/{url.dn}"
        self.role = role
        exts = {k.lower() for k in (url.extensions or {})}
        self.starttls = bool(
            {"starttls", "1.3.6.1.4.1.1466.20037"} & exts
            or os.environ.get("HSYNC_LDAP_STARTTLS", "") in ("1", "yes", "true")
        )
        self.capabilities = Capabilities(
            subtree_move=True, atomic_rename=False, content=False, waits=True
        )
        self._credentials = credentials  # from a config file; else the environment
        self.bind_dn, _ = self.credentials()
        self.conn = self._connect()
        self.schema = self._read_schema()
        self.mapper = Mapper(self.schema, self.base_dn)
        self._target = ""
        self._after_park: dict[str, Data] = {}
        self.cookie: str | None = None
        """The last syncrepl cookie a watch saw (``SyncreplWatch.checkpoint`` gives it
        out as a resume token once its events have reached the sink)."""

    # -- connection ------------------------------------------------------------------------
    def credentials(self) -> tuple[str, str]:
        """(bind DN, password): from the config file when it gave them, else from the
        environment (``credentials(role)``)."""
        if self._credentials is not None:
            return self._credentials.bind_dn, self._credentials.password
        return credentials(self.role)

    def _connect(self) -> Any:
        """A bound connection; ``BackendError`` (exit 2) when it cannot be had."""
        conn = self.prepare(ldap.initialize(self.server, bytes_mode=False))
        dn, password = self.credentials()
        try:
            if self.starttls:
                conn.start_tls_s()
            conn.simple_bind_s(dn, password)
        except ldap.SERVER_DOWN as e:
            tls = " (or its TLS certificate is not trusted: HSYNC_LDAP_CACERT)" if (
                self.starttls or self.scheme == "ldaps") else ""
            raise BackendError(
                f"{self.url}: cannot reach the server{tls}: {describe(e)}"
            ) from None
        except ldap.CONNECT_ERROR as e:  # StartTLS refused the certificate
            raise BackendError(f"{self.url}: TLS failed: {describe(e)}") from None
        except ldap.INVALID_CREDENTIALS as e:
            who = dn or "anonymous"
            raise BackendError(f"{self.url}: bind as {who} refused: {describe(e)}") from None
        except ldap.LDAPError as e:
            raise BackendError(f"{self.url}: cannot connect: {describe(e)}") from None
        return conn

    def prepare(self, conn: Any) -> Any:
        """Protocol, timeout and TLS options on a new connection (the watcher's too)."""
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

    def _read_schema(self) -> Schema:
        builtin = Schema.builtin()
        try:
            import ldap.schema

            sub_dn = self.conn.search_subschemasubentry_s(self.base_dn)
            if sub_dn is None:
                return builtin
            entry = self.conn.read_subschemasubentry_s(sub_dn, attrs=["attributeTypes"])
            # the built-in table first: an LDIF endpoint compares by the same rules
            return builtin.merged(Schema.from_subschema(ldap.schema.SubSchema(entry)))
        except ldap.LDAPError:
            return builtin

    def exclude_attributes(self, names: Sequence[str]) -> None:
        """``--exclude-attr``: these attributes are never read, written or deleted."""
        self.mapper.set_exclude(names)

    def relation(self, other: Backend) -> str | None:
        """How ``other`` overlaps this tree: "same", "inside" (other below this one),
        "contains" (this one below other), or None."""
        if not isinstance(other, LdapBackend) or other.hostport != self.hostport:
            return None
        a, b = self.mapper.base_norm, other.mapper.base_norm
        if a == b:
            return "same"
        if len(b) > len(a) and b[len(b) - len(a):] == a:
            return "inside"
        if len(a) > len(b) and a[len(a) - len(b):] == b:
            return "contains"
        return None

    def close(self) -> None:
        with suppress(ldap.LDAPError):
            self.conn.unbind_s()

    # -- reading ---------------------------------------------------------------------------
    def _search(
        self, dn: str, scope: int, attrlist: list[str] | None = None, conn: Any = None
    ) -> list[Any]:
        """Every entry of a search, page by page (RFC 2696)."""
        attrlist = attrlist or USER_ATTRS
        page = SimplePagedResultsControl(True, size=PAGE_SIZE, cookie="")
        out: list[Any] = []
        conn = conn or self.conn
        while True:
            msgid = conn.search_ext(
                dn, scope, "(objectClass=*)", attrlist,
                serverctrls=[page] if scope != ldap.SCOPE_BASE else None,
            )
            _, data, _, ctrls = conn.result3(msgid, timeout=-1)
            out.extend(d for d in data if d[0] is not None)
            cookie = next(
                (c.cookie for c in ctrls or () if c.controlType == page.controlType), None
            )
            if not cookie:
                return out
            page.cookie = cookie

    def exists(self) -> bool:
        try:
            self.conn.search_s(self.base_dn, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
        except ldap.NO_SUCH_OBJECT:
            return False
        except ldap.LDAPError as e:
            raise BackendError(f"{self.base_dn}: cannot read the base: {describe(e)}") from None
        return True

    def scan(
        self, subtree: Key = (), *, exclude: Callable[[Key, bool], bool] | None = None
    ) -> Snapshot:
        """See ``Backend.scan``: one paged subtree search from ``subtree``'s DN."""
        # Building ~20 small objects per entry makes the cyclic GC rescan everything over
        # and over (3x the scan's time at 10k entries); none of them form cycles.
        # Frozen afterwards: the snapshot's objects are then skipped by later collections
        # (they are still freed by reference counting when the snapshot goes).
        was = gc.isenabled()
        gc.disable()
        try:
            return self._scan(subtree, exclude)
        finally:
            gc.freeze()
            if was:
                gc.enable()

    def _scan(
        self, subtree: Key, exclude: Callable[[Key, bool], bool] | None, conn: Any = None
    ) -> Snapshot:
        snap = Snapshot()
        try:
            dn = self.mapper.dn_of(subtree)
            found = self._search(dn, ldap.SCOPE_SUBTREE, conn=conn)
        except ldap.NO_SUCH_OBJECT:
            if not subtree:
                snap.incomplete[()] = "does not exist"
            return snap
        except ldap.SERVER_DOWN as e:
            snap.incomplete[subtree] = f"{self.url}: {describe(e)}"
            return snap
        except (ldap.LDAPError, ValueError) as e:
            why = describe(e) if isinstance(e, ldap.LDAPError) else str(e)
            snap.incomplete[subtree] = f"cannot be read: {why}"
            return snap
        rows: list[tuple[Key, Node]] = []
        for edn, attrs in found:
            key = self.mapper.key_of(edn)
            if key is None:
                continue
            rows.append((key, self.mapper.node_of(attrs, root=not key)))
        rows.sort(key=lambda r: len(r[0]))  # parents before children
        nodes: dict[Key, Node] = {}
        dropped: set[Key] = set()
        for key, node in rows:
            if key[:-1] in dropped:
                dropped.add(key)
                continue
            if exclude is not None and key != subtree and exclude(key, True):
                dropped.add(key)
                snap.holds_excluded.add(key[:-1])
                continue
            nodes[key] = node
        snap.nodes = nodes
        return snap

    def is_empty(self) -> bool:
        """True when the base entry is missing or has no entry below it (an initial
        copy into it can be streamed: see ``hsync.populate``)."""
        try:
            msgid = self.conn.search_ext(self.base_dn, ldap.SCOPE_ONELEVEL, "(objectClass=*)",
                                         ["1.1"], sizelimit=1)
            _, data, _, _ = self.conn.result3(msgid, timeout=TIMEOUT)
        except ldap.NO_SUCH_OBJECT:
            return True
        except ldap.SIZELIMIT_EXCEEDED:
            return False
        except ldap.LDAPError:
            return False  # cannot tell: the comparison finds out
        return not any(dn is not None for dn, *_ in data)

    def stream(
        self, exclude: Callable[[Key, bool], bool] | None = None
    ) -> Iterator[tuple[Key, Node | None]]:
        """Every entry below the base as ``(key, node)`` while the pages of one subtree
        search arrive, a parent always before its children (back-mdb sends parents
        first, but an entry whose parent has not come yet is held until it does);
        ``((), None)`` when the search fails (nothing more is known). Excluded entries
        and their subtrees are left out, like ``scan``'s."""
        seen: set[Key] = {()}
        dropped: set[Key] = set()
        waiting: dict[Key, list[tuple[Key, Node]]] = {}  # parent -> children held

        def release(key: Key, node: Node) -> Iterator[tuple[Key, Node]]:
            todo = [(key, node)]
            while todo:
                k, n = todo.pop()
                if k[:-1] in dropped or (exclude is not None and exclude(k, True)):
                    dropped.add(k)
                    todo.extend(waiting.pop(k, ()))  # dropped with it
                    continue
                seen.add(k)
                yield k, n
                todo.extend(waiting.pop(k, ()))

        was = gc.isenabled()
        gc.disable()  # see ``scan``
        try:
            for edn, attrs in self._pages(self.base_dn):
                key = self.mapper.key_of(edn)
                if not key:
                    continue  # the base itself (``stat``), or out of scope
                node = self.mapper.node_of(attrs)
                if key[:-1] in seen or key[:-1] in dropped:
                    yield from release(key, node)
                else:
                    waiting.setdefault(key[:-1], []).append((key, node))
        except (ldap.LDAPError, ValueError):
            yield (), None
            return
        finally:
            gc.freeze()
            if was:
                gc.enable()
        # parents never seen (not readable by this bind): what scan would list, last
        for parent in sorted(waiting, key=len):
            for key, node in waiting.pop(parent, ()):
                if key[:-1] not in dropped:
                    yield key, node

    def _pages(self, dn: str) -> Iterator[tuple[str, Any]]:
        """The entries of a paged subtree search (RFC 2696), a page at a time."""
        page = SimplePagedResultsControl(True, size=PAGE_SIZE, cookie="")
        while True:
            msgid = self.conn.search_ext(dn, ldap.SCOPE_SUBTREE, "(objectClass=*)",
                                         USER_ATTRS, serverctrls=[page])
            _, data, _, ctrls = self.conn.result3(msgid, timeout=-1)
            for d in data:
                if d[0] is not None:
                    yield d[0], d[1]
            cookie = next(
                (c.cookie for c in ctrls or () if c.controlType == page.controlType), None
            )
            if not cookie:
                return
            page.cookie = cookie

    def stat(self, key: Key) -> Node | None:
        try:
            found = self._search(self.mapper.dn_of(key), ldap.SCOPE_BASE)
        except ldap.NO_SUCH_OBJECT:
            return None
        except ValueError:
            return None
        for _, attrs in found:
            return self.mapper.node_of(attrs, root=not key)
        return None

    def read(self, key: Key) -> Any:
        raise OSError(f"{'/'.join(key)}: an LDAP entry has no content stream")

    def digest(self, key: Key) -> bytes | None:
        return None

    # -- writing ---------------------------------------------------------------------------
    def apply_batch(
        self,
        ops: Sequence[Op],
        source: Backend,
        final: Snapshot,
        *,
        fsync: bool = False,
        on_done: Callable[[Op], None] | None = None,
    ) -> ApplyResult:
        """See ``Backend.apply_batch``; one LDAP operation per op (two for an update:
        the entry is read, then modified by what differs)."""
        result = ApplyResult()
        # what a node parked under a temporary name finally holds (its later move's
        # payload): the park keeps its old RDN value only if that payload does
        self._after_park = {
            op.key[-1]: op.node.data
            for op in ops
            if op.op == MOVE and op.key and self.mapper.is_temp(op.key[-1]) and op.node
        }
        # Adds are pipelined (up to WINDOW in flight): an add waits only for its
        # parent's add to be answered, since the server may run the operations of one
        # connection concurrently. Any other op first waits for every add in flight.
        inflight: dict[int, tuple[Op, str]] = {}  # msgid -> (op, dn), oldest first
        by_key: dict[Key, int] = {}

        failed: set[Key] = set()  # adds refused: nothing is sent for their subtrees

        def finish(msgid: int) -> None:
            op, dn = inflight.pop(msgid)
            by_key.pop(op.key, None)
            try:
                self.conn.result3(msgid)
            except ldap.LDAPError as e:
                failed.add(op.key)
                self._fail(result, op, dn, e)
                return
            self._ok(result, op, on_done)

        for op in ops:
            self._target = ""
            if op.op == CREATE and op.key:
                waiting = by_key.get(op.key[:-1])
                if waiting is not None:
                    finish(waiting)
                if op.key[:-1] in failed:
                    failed.add(op.key)
                    result.problems.append(Problem(
                        op.key, f"create skipped: its parent {self._dn_or_key(op.key[:-1])} "
                        "was not created"))
                    continue
                try:
                    dn, attrs = self._add_request(op)
                    msgid = self.conn.add_ext(dn, attrs)
                except ValueError as e:
                    result.problems.append(Problem(op.key, f"{op.op} skipped: {e}"))
                    continue
                except ldap.LDAPError as e:
                    failed.add(op.key)
                    self._fail(result, op, self._target, e)
                    continue
                inflight[msgid] = (op, dn)
                by_key[op.key] = msgid
                if len(inflight) >= WINDOW:
                    finish(next(iter(inflight)))
                continue
            for msgid in list(inflight):
                finish(msgid)
            try:
                if not self._one(op):
                    continue  # nothing left to change (a modrdn already did it)
            except ldap.LDAPError as e:
                if op.op == CREATE:
                    failed.add(op.key)
                self._fail(result, op, self._target, e)
                continue
            except ValueError as e:
                result.problems.append(Problem(op.key, f"{op.op} skipped: {e}"))
                continue
            self._ok(result, op, on_done)
        for msgid in list(inflight):
            finish(msgid)
        return result

    def _ok(self, result: ApplyResult, op: Op, on_done: Callable[[Op], None] | None) -> None:
        result.done.append(op)
        if on_done is not None:
            on_done(op)

    def _fail(self, result: ApplyResult, op: Op, dn: str, e: ldap.LDAPError) -> None:
        if isinstance(e, ldap.SERVER_DOWN):
            result.problems.append(
                Problem(op.key, f"{op.op} failed: {self.url}: {describe(e)}", retry=True)
            )
            return
        target = dn or self._dn_or_key(op.key)
        result.problems.append(Problem(op.key, f"{op.op} failed: {target}: {describe(e)}"))

    def _add_request(self, op: Op) -> tuple[str, list[tuple[str, list[bytes]]]]:
        m = self.mapper
        data = op.node.data if op.node is not None else ()
        dn = f"{m.rdn_for(op.key[-1], data)},{m.dn_of(op.key[:-1])}" if op.key else self.base_dn
        self._target = dn
        return dn, list(m.entry_attrs(data, root=not op.key).items())

    def _dn_or_key(self, key: Key) -> str:
        try:
            return self.mapper.dn_of(key)
        except ValueError:
            return "/".join(key)

    def _one(self, op: Op) -> bool:
        """Run one op; False when it had nothing to do (an update whose values a modrdn
        has already set: it is not counted). ``self._target`` names its DN once known
        (for the message)."""
        m = self.mapper
        conn = self.conn
        if op.op == CREATE:
            dn, attrs = self._add_request(op)
            conn.add_s(dn, attrs)
            return True
        dn = m.dn_of(op.key)
        self._target = dn
        if op.op == UPDATE:
            current = self._current(op.key, dn)
            assert op.node is not None
            mods = m.modlist(current, op.node.data or ())
            if not mods:
                return False
            conn.modify_ext_s(dn, mods, serverctrls=_still(op))
        elif op.op == MOVE:
            assert op.to is not None
            if not op.key:
                raise ValueError("the base entry is never moved")
            old_name, new_name = op.key[-1], op.to[-1]
            desired: Data = op.node.data if op.node is not None else ()
            if m.is_temp(new_name):
                newrdn = m.temp_rdn(new_name, old_name)
                desired = self._after_park.get(new_name, desired)
            else:
                newrdn = m.rdn_for(new_name, desired)
            keep_old = not m.is_temp(old_name) and _rdn_kept(m, old_name, desired)
            newsup = m.dn_of(op.to[:-1]) if op.to[:-1] != op.key[:-1] else None
            conn.rename_s(dn, newrdn, newsup, 0 if keep_old else 1, serverctrls=_still(op))
        elif op.op == DELETE:
            if not op.key:
                raise ValueError("the base entry is never deleted")
            conn.delete_ext_s(dn, serverctrls=_still(op))
        else:
            raise ValueError(f"unknown op {op.op!r}")
        return True

    def _current(self, key: Key, dn: str) -> Data:
        found = self.conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", USER_ATTRS)
        for _, attrs in found:
            return self.mapper.data_of(attrs, root=not key)
        raise ldap.NO_SUCH_OBJECT({"desc": "No such object", "info": dn})

    # -- live ------------------------------------------------------------------------------
    def watch(
        self, sink: WatchSink, resume: Resume | None = None
    ) -> AbstractContextManager[None]:
        """Report changes below the base to ``sink`` (syncrepl refreshAndPersist in a
        thread; reconnects with backoff); from ``resume``'s cookie when the server can.
        See ``hsync_ldap.watch``."""
        from .watch import SyncreplWatch

        return SyncreplWatch(self, sink, resume)


def _still(op: Op) -> list[Any] | None:
    """An assertion (RFC 4528) that the entry is still the one the plan saw: its
    entryUUID from the destination's scan. A modify, modrdn or delete of an entry
    replaced since then is refused by the server (assertionFailed), not applied."""
    ident = op.old.identity if op.old is not None else None
    if not isinstance(ident, str) or not _UUID.fullmatch(ident):
        return None
    return [AssertionControl(True, f"(entryUUID={ident})")]


def _rdn_kept(m: Mapper, name: str, desired: Data) -> bool:
    """True when every value of the RDN ``name`` is also in the desired payload (the
    move keeps the old RDN value: deleteoldrdn=0)."""
    (parts,) = ldap.dn.str2dn(name)
    values = dict(desired)
    for attr, value, _ in parts:
        lname = m.schema.canonical(attr)
        want = m.schema.norm_value(lname, value.encode("utf-8"), None)
        if want not in values.get(lname, ()):
            return False
    return True
