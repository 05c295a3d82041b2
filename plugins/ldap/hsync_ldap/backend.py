"""A directory server as an hsync endpoint: ``ldap://host:port/BASE_DN`` (``ldaps://``).

Connecting (credentials, TLS, timeouts) and searching are ``connection``'s; live
changes are ``watch``'s (``SyncreplWatch``, which keeps its own syncrepl cookie).

Ops: create = add (the planner puts parents first), update = modify with the minimal
per-attribute changes (computed against the entry as it is when the op runs), move =
modrdn with newSuperior (a subtree moves in one operation and keeps its entryUUIDs;
the old RDN value is deleted unless the payload keeps it), delete = delete (leaves
first). A failure on one entry is a ``Problem`` naming the DN and the server's answer,
of kind ``retry`` when the server was busy or away, ``skip`` when the entry changed
since the scan (an assertion failed, the DN is taken), else ``error``.
"""

from __future__ import annotations

import errno
import gc
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, suppress
from typing import TYPE_CHECKING, Any

import ldap
import ldap.dn
from ldap.controls.libldap import AssertionControl

from hsync.backend import (
    ApplyOptions,
    ApplyResult,
    Backend,
    Capabilities,
    ContentSource,
    Credentials,
    Relation,
    Resume,
    WatchSink,
    scheme_of,
)
from hsync.cancel import NEVER, Cancel
from hsync.errors import CANCELLED, ERROR, RETRY, SKIP, BackendError, UsageError
from hsync.filters import Exclude
from hsync.model import CREATE, DELETE, MOVE, UPDATE, Key, Node, Op, Problem, Snapshot

from . import connection
from .connection import MANAGE_DSA_IT, Server, describe
from .entries import Data, Mapper
from .schema import Schema, raw_of
from .watch import SyncreplWatch

WINDOW = 256
"""Adds in flight on one connection."""
_UUID = re.compile(r"[0-9a-fA-F-]{36}")
_RETRY = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.BUSY, ldap.UNAVAILABLE, ldap.TIMEOUT,
          ldap.TIMELIMIT_EXCEEDED)
"""Answers that say "not now": the op is retried."""
_SKIP = (ldap.ASSERTION_FAILED, ldap.ALREADY_EXISTS)
"""Answers that say the entry changed since the scan: the op is left alone."""
_REFUSED = (ldap.STRONG_AUTH_REQUIRED, ldap.CONFIDENTIALITY_REQUIRED, ldap.INVALID_CREDENTIALS,
            ldap.INAPPROPRIATE_AUTH, ldap.AUTH_UNKNOWN)
"""Answers about the bind, not the entry (an anonymous bind may not write, TLS is
required, the credentials no longer hold): every other op would get the same, so the
first one ends the run (one ``BackendError``, exit 2) instead of one problem per entry."""


def problem_kind(e: ldap.LDAPError) -> str:
    """The kind of problem (``hsync.errors.ProblemKind``) a server's answer is."""
    if isinstance(e, _RETRY):
        return RETRY
    if isinstance(e, _SKIP):
        return SKIP
    return ERROR


class LdapBackend:
    """One subtree of a directory server, from its base DN down."""

    def __init__(
        self,
        location: str,
        *,
        role: str = "source",
        credentials: Credentials | None = None,
        exclude_attrs: Sequence[str] = (),
    ) -> None:
        """Connect and bind (``BackendError`` when that fails); ``credentials`` from a
        config file, else from the environment (``connection.env_credentials``);
        ``exclude_attrs`` (``--exclude-attr``): attributes never read, written or
        deleted."""
        self.server = Server.of(location)
        self.base_dn = self.server.base_dn
        self.url = self.server.url
        self.role = role
        self.capabilities = Capabilities(
            subtree_move=True, atomic_rename=False, content=False, waits=True
        )
        self._credentials = connection.resolve(credentials, role, self.url)
        self.conn = connection.connect(self.server, self._credentials)
        self._closed = False
        self.schema = self._read_schema()
        self._exclude_attrs = tuple(exclude_attrs)
        self.mapper = Mapper(self.schema, self.base_dn, exclude_attrs)
        self.read_attrs = [*connection.USER_ATTRS, *self.schema.writable_operational()]
        """What a search asks for: user attributes, the identity, and the operational
        attributes a user writes (by name: ``+`` would also send what the server
        maintains)."""
        self._target = ""
        self._after_park: dict[str, Data] = {}

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

    def use_schema(self, files: Sequence[str], peer: Backend) -> None:
        """See ``SchemaAware``: the server's schema stays what values compare by;
        ``files`` (``--schema``) only add the names it does not define."""
        if not files:
            return
        self.schema = self.schema.merged(Schema.from_files(files))
        self.mapper = Mapper(self.schema, self.base_dn, self._exclude_attrs)
        self.read_attrs = [*connection.USER_ATTRS, *self.schema.writable_operational()]

    def canonical_url(self) -> str:
        """``scheme://host:port/BASE`` with the default port filled in and the base DN
        normalized (attribute names lower-case, values by matching rule)."""
        return f"{self.server.scheme}://{self.server.hostport}/{','.join(self.mapper.base_norm)}"

    def relation(self, other_url: str) -> Relation | None:
        """How the tree at ``other_url`` overlaps this one: "same", "inside" (it is
        below this one), "contains" (this one is below it), or None (another server,
        disjoint bases, another kind of endpoint). Base DNs compare normalized."""
        if scheme_of(other_url) not in ("ldap", "ldaps"):
            return None
        try:
            other = Server.of(other_url)
            b = [self.schema.norm_rdn_parts(r) for r in ldap.dn.str2dn(other.base_dn)]
        except (UsageError, ldap.DECODING_ERROR):
            return None
        if other.hostport != self.server.hostport:
            return None
        a = self.mapper.base_norm
        if a == b:
            return "same"
        if len(b) > len(a) and b[len(b) - len(a):] == a:
            return "inside"
        if len(a) > len(b) and a[len(a) - len(b):] == b:
            return "contains"
        return None

    def close(self) -> None:
        """Unbind (idempotent: a second close does nothing)."""
        if self._closed:
            return
        self._closed = True
        with suppress(ldap.LDAPError):
            self.conn.unbind_s()

    # -- the root ----------------------------------------------------------------------------
    def root_error(self) -> str | None:
        """None when the base entry is there (or, for a destination, absent but
        creatable: the first batch adds it); "does not exist"; else why it cannot be
        read, or (a destination) why it cannot be created: outside every suffix the
        server holds, or its parent missing (SPEC 8: before anything is written)."""
        try:
            found = connection.read_entry(self.conn, self.base_dn, ["1.1"])
        except ldap.LDAPError as e:
            return f"cannot be read: {describe(e)}"
        if found is not None:
            return None
        if self.role != "destination":
            return "does not exist"
        return self._uncreatable()

    def _uncreatable(self) -> str | None:
        """Why the absent base entry cannot be added, or None (it can, as far as can
        be told before trying)."""
        schema = self.schema
        base = self.mapper.base_norm
        try:
            dse = connection.read_entry(self.conn, "", ["namingContexts"]) or {}
            contexts = [c.decode("utf-8", "replace") for c in dse.get("namingContexts", ())]
            suffixes = [[schema.norm_rdn_parts(r) for r in ldap.dn.str2dn(c)] for c in contexts]
        except (ldap.LDAPError, ldap.DECODING_ERROR):
            contexts, suffixes = [], []  # cannot tell: the parent's check below
        if suffixes and not any(s and base[len(base) - len(s):] == s for s in suffixes):
            return (f"base {self.base_dn} is outside every suffix the server holds "
                    f"({'; '.join(contexts)})")
        if base in suffixes or len(base) < 2:
            return None  # a suffix entry: the server adds it without a parent
        parent = ldap.dn.dn2str(ldap.dn.str2dn(self.base_dn)[1:])
        try:
            if connection.read_entry(self.conn, parent, ["1.1"]) is None:
                return f"base {self.base_dn} cannot be created: its parent {parent} does not exist"
        except ldap.LDAPError as e:
            return f"base {self.base_dn} cannot be created: its parent {parent}: {describe(e)}"
        return None

    def root_id(self) -> str | None:
        """The base entry's entryUUID, or None when it is absent (``OSError`` when the
        server cannot tell)."""
        try:
            found = connection.read_entry(self.conn, self.base_dn, ["entryUUID"])
        except ldap.LDAPError as e:
            raise OSError(errno.EIO, f"{self.url}: {describe(e)}") from None
        if found is None:
            return None
        values = found.get("entryUUID") or found.get("entryuuid") or [b""]
        return values[0].decode("ascii", "replace") or None

    def exists(self) -> bool:
        """True when the base entry is there; ``BackendError`` when that cannot be told."""
        why = self.root_error()
        if why is not None and why != "does not exist":
            raise BackendError(f"{self.base_dn}: cannot read the base: {why}")
        return why is None

    def is_empty(self) -> bool:
        """True when the base entry is missing or has no entry below it (an initial
        copy into it can be streamed: see ``hsync.populate``)."""
        try:
            msgid = self.conn.search_ext(self.base_dn, ldap.SCOPE_ONELEVEL, "(objectClass=*)",
                                         ["1.1"], serverctrls=[MANAGE_DSA_IT], sizelimit=1)
            _, data, _, _ = self.conn.result3(msgid, timeout=connection.TIMEOUT)
        except ldap.NO_SUCH_OBJECT:
            return True
        except ldap.SIZELIMIT_EXCEEDED:
            return False
        except ldap.LDAPError:
            return False  # cannot tell: the comparison finds out
        return not any(dn is not None for dn, *_ in data)

    # -- reading ---------------------------------------------------------------------------
    def scan(
        self, subtree: Key = (), *, exclude: Exclude | None = None, cancel: Cancel = NEVER
    ) -> Snapshot:
        """See ``Backend.scan``: one paged subtree search from ``subtree``'s DN;
        ``cancel`` is checked between pages (the search is then abandoned)."""
        # Building ~20 small objects per entry makes the cyclic GC rescan everything over
        # and over (3x the scan's time at 10k entries); none of them form cycles.
        # Frozen afterwards: the snapshot's objects are then skipped by later collections
        # (they are still freed by reference counting when the snapshot goes).
        was = gc.isenabled()
        gc.disable()
        try:
            return self._scan(subtree, exclude, cancel)
        finally:
            gc.freeze()
            if was:
                gc.enable()

    def _scan(self, subtree: Key, exclude: Exclude | None, cancel: Cancel) -> Snapshot:
        snap = Snapshot()
        rows: list[tuple[Key, Node]] = []
        cancel.check()
        try:
            dn = self.mapper.dn_of(subtree)
            with closing(connection.pages(self.conn, dn, attrs=self.read_attrs)) as found:
                for page in found:
                    for edn, attrs in page:
                        key = self.mapper.key_of(edn)
                        if key is not None:
                            rows.append((key, self.mapper.node_of(attrs, root=not key)))
                    cancel.check()
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

    def stream(
        self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
    ) -> Iterator[tuple[Key, Node | str | None]]:
        """Every entry below the base as ``(key, node)`` while the pages of one subtree
        search arrive, a parent always before its children (back-mdb sends parents
        first, but an entry whose parent has not come yet is held until it does);
        ``((), None)`` when the search fails (nothing more is known). Excluded entries
        and their subtrees are left out, like ``scan``'s. ``cancel`` is checked between
        pages (``Cancelled``; the search is abandoned)."""
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

        cancel.check()
        was = gc.isenabled()
        gc.disable()  # see ``scan``
        try:
            with closing(connection.pages(self.conn, self.base_dn, attrs=self.read_attrs)) as found:
                for page in found:
                    for edn, attrs in page:
                        key = self.mapper.key_of(edn)
                        if not key:
                            continue  # the base itself (``stat``), or out of scope
                        node = self.mapper.node_of(attrs)
                        if key[:-1] in seen or key[:-1] in dropped:
                            yield from release(key, node)
                        else:
                            waiting.setdefault(key[:-1], []).append((key, node))
                    cancel.check()
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

    def stat(self, key: Key) -> Node | None:
        try:
            dn = self.mapper.dn_of(key)
        except ValueError:
            return None  # not a DN below the base: nothing is there
        try:
            attrs = connection.read_entry(self.conn, dn, self.read_attrs)
        except ldap.LDAPError as e:
            raise OSError(errno.EIO, f"{dn}: {describe(e)}") from None
        return None if attrs is None else self.mapper.node_of(attrs, root=not key)

    def read(self, key: Key) -> Any:
        raise OSError(f"{'/'.join(key)}: an LDAP entry has no content stream")

    def digest(self, key: Key) -> bytes | None:
        return None

    # -- writing ---------------------------------------------------------------------------
    def apply_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = ApplyOptions(),  # noqa: B008 (frozen: a value)
        cancel: Cancel = NEVER,
        on_done: Callable[[Op], None] | None = None,
    ) -> ApplyResult:
        """See ``Backend.apply_batch``; one LDAP operation per op (two for an update:
        the entry is read, then modified by what differs). Entries carry no content:
        ``source`` is never read; the server makes writes durable (``options`` change
        nothing)."""
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
        failed: dict[Key, str] = {}  # adds refused -> kind: nothing sent for their subtrees

        def finish(msgid: int) -> None:
            op, dn = inflight.pop(msgid)
            by_key.pop(op.key, None)
            try:
                self.conn.result3(msgid)
            except ldap.LDAPError as e:
                failed[op.key] = self._fail(result, op, dn, e)
                return
            self._ok(result, op, on_done)

        for i, op in enumerate(ops):
            if cancel.cancelled():
                for msgid in list(inflight):
                    finish(msgid)
                result.problems.extend(
                    Problem(o.key, f"{o.op} {self._dn_or_key(o.key)}: cancelled",
                            op=o.op, kind=CANCELLED)
                    for o in ops[i:]
                )
                return result
            self._target = ""
            if op.op == CREATE and op.key:
                waiting = by_key.get(op.key[:-1])
                if waiting is not None:
                    finish(waiting)
                kind = failed.get(op.key[:-1])
                if kind is not None:
                    failed[op.key] = kind
                    result.problems.append(Problem(
                        op.key, f"create skipped: its parent {self._dn_or_key(op.key[:-1])} "
                        "was not created", op=op.op, kind=kind))
                    continue
                try:
                    dn, attrs = self._add_request(op)
                    msgid = self.conn.add_ext(dn, attrs, serverctrls=[MANAGE_DSA_IT])
                except ValueError as e:
                    result.problems.append(Problem(op.key, f"{op.op} skipped: {e}", op=op.op))
                    continue
                except ldap.LDAPError as e:
                    failed[op.key] = self._fail(result, op, self._target, e)
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
                if op.op == CREATE and not op.key and problem_kind(e) == ERROR:
                    # nothing can be written below a base that cannot be: one error
                    # for the endpoint, not one problem per entry (SPEC 8)
                    raise BackendError(f"{self.url}: destination base {self.base_dn} "
                                       f"cannot be created: {describe(e)}") from None
                kind = self._fail(result, op, self._target, e)
                if op.op == CREATE:
                    failed[op.key] = kind
                continue
            except ValueError as e:
                result.problems.append(Problem(op.key, f"{op.op} skipped: {e}", op=op.op))
                continue
            self._ok(result, op, on_done)
        for msgid in list(inflight):
            finish(msgid)
        return result

    def _ok(self, result: ApplyResult, op: Op, on_done: Callable[[Op], None] | None) -> None:
        result.done.append(op)
        if on_done is not None:
            on_done(op)

    def _fail(self, result: ApplyResult, op: Op, dn: str, e: ldap.LDAPError) -> str:
        """Record ``op``'s failure; its kind (``problem_kind``). An answer about the
        bind itself (``_REFUSED``) raises ``BackendError`` instead."""
        if isinstance(e, _REFUSED):
            who = self._credentials.bind_dn
            hint = "" if who else (
                " (no bind DN: HSYNC_SRC_BIND_DN/HSYNC_DST_BIND_DN or --src-bind-dn/"
                "--dst-bind-dn with a password file)")
            raise BackendError(
                f"{self.url}: the server refuses writes by {who or 'an anonymous bind'}: "
                f"{describe(e)}{hint}"
            ) from None
        kind = problem_kind(e)
        if isinstance(e, ldap.SERVER_DOWN):
            message = f"{op.op} failed: {self.url}: {describe(e)}"
        else:
            message = f"{op.op} failed: {dn or self._dn_or_key(op.key)}: {describe(e)}"
        result.problems.append(Problem(op.key, message, op=op.op, kind=kind))
        return kind

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
            conn.add_ext_s(dn, attrs, serverctrls=[MANAGE_DSA_IT])
            return True
        dn = m.dn_of(op.key)
        self._target = dn
        if op.op == UPDATE:
            current = self._current(op.key, dn)
            assert op.node is not None
            mods = m.modlist(current, op.node.data or ())
            if not mods:
                return False
            conn.modify_ext_s(dn, mods, serverctrls=_controls(op))
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
            if not keep_old:
                self._fill_before_rename(op, dn, newrdn, desired)
            newsup = m.dn_of(op.to[:-1]) if op.to[:-1] != op.key[:-1] else None
            conn.rename_s(dn, newrdn, newsup, 0 if keep_old else 1, serverctrls=_controls(op))
        elif op.op == DELETE:
            if not op.key:
                raise ValueError("the base entry is never deleted")
            conn.delete_ext_s(dn, serverctrls=_controls(op))
        else:
            raise ValueError(f"unknown op {op.op!r}")
        return True

    def _fill_before_rename(self, op: Op, dn: str, newrdn: str, desired: Data) -> None:
        """Before a modrdn that deletes the old RDN values: where that would leave an
        attribute of the old RDN with no value (an entry re-keyed to another naming
        attribute whose old one has new values: ``cn=Ursula Hampster`` -> ``uid=uham``
        while ``cn`` becomes ``Ursula H``), the desired values are added first, so that
        every intermediate entry is valid (a required ``cn`` never goes missing). The
        update that follows the move removes what must go."""
        m = self.mapper
        schema = m.schema
        (old,) = ldap.dn.str2dn(dn)[:1]
        (new,) = ldap.dn.str2dn(newrdn)
        at_risk = {schema.canonical(a) for a, _, _ in old} - {
            schema.canonical(a) for a, _, _ in new}
        if not at_risk:
            return  # the new RDN names the same attributes: modrdn puts values back
        current = dict(self._current(op.key, dn))
        want = dict(desired)
        mods: list[tuple[int, str, Any]] = []
        for lname in sorted(at_risk):
            gone = {schema.norm_value(lname, v.encode("utf-8"), None)
                    for a, v, _ in old if schema.canonical(a) == lname}
            have = current.get(lname, frozenset())
            add = want.get(lname, frozenset()) - have
            if add and not (have - gone):
                mods.append((ldap.MOD_ADD, schema.spelling(lname),
                             [raw_of(v, self.base_dn) for v in add]))
        if mods:
            self.conn.modify_ext_s(dn, mods, serverctrls=_controls(op))

    def _current(self, key: Key, dn: str) -> Data:
        attrs = connection.read_entry(self.conn, dn, self.read_attrs)
        if attrs is None:
            raise ldap.NO_SUCH_OBJECT({"desc": "No such object", "info": dn})
        return self.mapper.data_of(attrs, root=not key)

    # -- live ------------------------------------------------------------------------------
    def watch(self, sink: WatchSink) -> SyncreplWatch:
        """Report changes below the base to ``sink`` (syncrepl refreshAndPersist in a
        thread, on a connection of its own; reconnects with backoff). See ``watch``."""
        return self._watcher(sink, None)

    def watch_from(self, sink: WatchSink, resume: Resume) -> SyncreplWatch:
        """Like ``watch``, from ``resume.token`` (a cookie a former watch gave out by
        its ``checkpoint``) when the server can answer from it."""
        return self._watcher(sink, resume)

    def _watcher(self, sink: WatchSink, resume: Resume | None) -> SyncreplWatch:
        # a mapper of its own: the watch reads keys on its thread while this one scans
        mapper = Mapper(self.schema, self.base_dn)
        return SyncreplWatch(self.server, self._credentials, mapper, sink, resume)


def _controls(op: Op) -> list[Any]:
    """ManageDsaIT (a referral object is an entry like any other), and an assertion
    (RFC 4528) that the entry is still the one the plan saw: its entryUUID from the
    destination's scan. A modify, modrdn or delete of an entry replaced since then is
    refused by the server (assertionFailed), not applied."""
    ident = op.old.identity if op.old is not None else None
    if not isinstance(ident, str) or not _UUID.fullmatch(ident):
        return [MANAGE_DSA_IT]
    return [MANAGE_DSA_IT, AssertionControl(True, f"(entryUUID={ident})")]


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


if TYPE_CHECKING:  # what the class claims, checked by mypy (rclone's ``var _ fs.Mover``)
    from hsync.backend import (
        BackendFactory,
        Related,
        ResumableWatchable,
        SchemaAware,
        Streaming,
        Watchable,
    )

    _factory: BackendFactory = LdapBackend
    _backend: type[Backend] = LdapBackend
    _related: type[Related] = LdapBackend
    _streaming: type[Streaming] = LdapBackend
    _watchable: type[Watchable] = LdapBackend
    _resumable: type[ResumableWatchable] = LdapBackend
    _schema_aware: type[SchemaAware] = LdapBackend
