"""An LDIF file as an hsync endpoint: ``ldif:PATH`` (``ldif:///abs/path``), optionally
``ldif:PATH?base=DN``.

As a source: the entries of the file (content records), the tree based at ``base``
(default: the DN of the file's first entry). As a destination: the file is rewritten
once per batch (to a temporary name, then renamed over it; mode 0600: it may hold
password hashes); a new file takes the base DN the source's root entry was read under
(its node says it: ``entries.RootData``) unless ``base`` is given.
Values are written by python-ldap's LDIF writer (base64 where LDIF needs it: non-ASCII,
leading spaces, binary), so a round trip gives back the same entries and values.
Values compare by the schema of the directory server the file is synced with (the
same rules that server applies; its DN-valued attributes are rebased), else by the
built-in table of the standard schema (``schema.Schema.builtin``) and the schema files
given with ``--schema`` (``use_schema``). An ``entryUUID`` in the file (slapcat output)
is the entry's identity, never payload.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import ldap.dn
import ldif

from hsync.backend import (
    ApplyOptions,
    ApplyResult,
    Backend,
    Capabilities,
    ContentSource,
    Credentials,
    Relation,
    scheme_of,
)
from hsync.cancel import NEVER, Cancel
from hsync.errors import CANCELLED, SKIP, BackendError, DestinationFull, UsageError
from hsync.filters import Exclude
from hsync.model import CREATE, DELETE, MOVE, UPDATE, Key, Node, Op, Problem, Snapshot

from .entries import Data, Mapper, base_of
from .schema import Schema

Attrs = dict[str, list[bytes]]


class LdifBackend:
    """A directory tree held in one LDIF file."""

    def __init__(
        self,
        location: str,
        *,
        role: str = "source",
        credentials: Credentials | None = None,
        exclude_attrs: Sequence[str] = (),
    ) -> None:
        """``exclude_attrs`` (``--exclude-attr``): attributes never read, written or
        deleted. ``BackendError`` when the file cannot be read or holds change records."""
        if credentials is not None:
            raise UsageError(f"{location}: this kind of endpoint takes no credentials")
        self.path = _path_of(location)
        self.url = f"ldif:{self.path}"
        self.role = role
        base = parse_qs(location.partition("?")[2]).get("base", [""])[0]
        if base:
            try:
                ldap.dn.str2dn(base)
            except ldap.DECODING_ERROR:
                raise UsageError(f"{location}: base {base!r} is not a DN") from None
        self.capabilities = Capabilities(subtree_move=True, atomic_rename=False, content=False)
        self.schema = Schema.builtin()
        self.records: list[tuple[str, Attrs]] | None = None
        self.records = self._load()
        if not base and self.records:
            base = self.records[0][0]
        self.base_dn = base
        self._exclude_attrs = tuple(exclude_attrs)
        self.mapper = Mapper(self.schema, base, exclude_attrs)
        self._check_records()

    def use_schema(self, files: Sequence[str], peer: Backend) -> None:
        """See ``SchemaAware``: compare and rebase by the peer's schema when it is a
        directory server (its ``cn=Subschema``: the values written there compare here
        by the rules it applies, its DN-valued attributes are rebased), with ``files``
        (``--schema``) for the names it does not define; else by the built-in table
        and ``files``."""
        from .backend import LdapBackend

        schema = peer.schema if isinstance(peer, LdapBackend) else Schema.builtin()
        if files:
            schema = schema.merged(Schema.from_files(files))
        self.schema = schema
        self.mapper = Mapper(schema, self.base_dn, self._exclude_attrs)
        self._check_records()

    def _load(self) -> list[tuple[str, Attrs]]:
        try:
            with open(self.path, "rb") as f:
                parser = ldif.LDIFRecordList(f)
                parser.parse()
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise BackendError(f"{self.path}: cannot read the LDIF file: {e}") from None
        records = [(dn, dict(entry)) for dn, entry in parser.all_records]
        for dn, entry in records:
            if any(k.lower() == "changetype" for k in entry):
                raise BackendError(
                    f"{self.path}: {dn}: change records (changetype) are not supported; "
                    "an ldif: endpoint holds entries"
                )
        return records

    def _check_records(self) -> None:
        """A record that is not at or below the base is bad input (``BackendError``
        naming it): as a source it would be silently left out, as a destination lost
        when the file is rewritten. One file holds one tree."""
        for dn, _ in self.records or ():
            try:
                inside = self.mapper.key_of(dn) is not None
            except ldap.DECODING_ERROR:
                raise BackendError(f"{self.path}: record {dn!r}: not a DN") from None
            if not inside:
                raise BackendError(
                    f"{self.path}: record {dn} is outside the base {self.base_dn} (a file "
                    "holds one tree: its first record, or ldif:PATH?base=DN)"
                )

    def canonical_url(self) -> str:
        """``ldif:`` and the file's resolved path (symlinks followed)."""
        return f"ldif:{os.path.realpath(self.path)}"

    def relation(self, other_url: str) -> Relation | None:
        """"same" for another location of the same file, else None (one file holds one
        tree: two files never nest)."""
        if scheme_of(other_url) != "ldif":
            return None
        try:
            other = _path_of(other_url)
        except UsageError:
            return None
        return "same" if os.path.realpath(other) == os.path.realpath(self.path) else None

    def root_error(self) -> str | None:
        """None when the file holds the base entry (or, for a destination, does not:
        the first batch writes it); else "does not exist"."""
        if self.role == "destination" or () in self._entries():
            return None
        return "does not exist"

    def root_id(self) -> tuple[int, str] | None:
        """The file's device and the base entry's identity (its entryUUID when the file
        holds one, as slapcat writes; else its normalized DN), or None when it is not
        there. Not the inode: every batch written replaces the file by a new one."""
        hit = self._entries().get(())
        if hit is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        ident = self.mapper.node_of(hit[1], root=True).identity
        return st.st_dev, str(ident) if ident else ",".join(self.mapper.base_norm)

    def is_empty(self) -> bool:
        """True when the file holds no entry below the base (or no base entry)."""
        return not any(self._entries().keys() - {()})

    def exists(self) -> bool:
        return self.root_error() is None

    def close(self) -> None:
        pass

    # -- reading ---------------------------------------------------------------------------
    def _entries(self) -> dict[Key, tuple[str, Attrs]]:
        out: dict[Key, tuple[str, Attrs]] = {}
        for dn, attrs in self.records or ():
            key = self.mapper.key_of(dn)  # every record is inside (``_check_records``)
            if key is not None:
                out[key] = (dn, attrs)
        return out

    def scan(
        self, subtree: Key = (), *, exclude: Exclude | None = None, cancel: Cancel = NEVER
    ) -> Snapshot:
        """See ``Backend.scan`` (the entries are in memory: ``cancel`` is checked once)."""
        cancel.check()
        snap = Snapshot()
        entries = self._entries()
        if not subtree and () not in entries:
            snap.incomplete[()] = "does not exist"
            return snap
        nodes: dict[Key, Node] = {}
        n = len(subtree)
        excluded: set[Key] = set()
        for key in sorted((k for k in entries if k[:n] == subtree), key=len):
            if key != subtree and key[:-1] not in nodes:
                if key[:-1] in excluded:
                    excluded.add(key)
                else:
                    snap.skipped.append((key, "entry whose parent is not in the file"))
                continue
            if exclude is not None and key != subtree and exclude(key, True):
                snap.holds_excluded.add(key[:-1])
                excluded.add(key)
                continue
            nodes[key] = self.mapper.node_of(entries[key][1], root=not key)
        snap.nodes = nodes
        return snap

    def stat(self, key: Key) -> Node | None:
        hit = self._entries().get(key)
        return None if hit is None else self.mapper.node_of(hit[1], root=not key)

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
        """Apply ``ops`` to the entries in memory, then write the file once (fsync'd
        and renamed over the old one: durable whatever ``options`` say; a write that
        fails raises ``BackendError``, ``DestinationFull`` when the disk is full; ops
        are reported to ``on_done`` once the file is written). ``source`` is
        never read (entries carry no content). A file without a base DN yet takes the
        one the source's root node names (``entries.RootData``), from the ops or
        ``final``."""
        result = ApplyResult()
        if not self.base_dn:
            roots = [op.node for op in ops if not op.key] + [final.nodes.get(())]
            base = next((b for b in map(base_of, roots) if b), "")
            if not base:
                result.problems.extend(
                    Problem(op.key, f"{self.path}: no base DN (ldif:PATH?base=DN)", op=op.op)
                    for op in ops
                )
                return result
            self.base_dn = base
            self.mapper = Mapper(self.schema, base, self._exclude_attrs)
        m = self.mapper
        # key -> [rdn as written, attributes]; the root's "rdn" is the base DN
        tree: dict[Key, list[Any]] = {}
        for key, (dn, attrs) in self._entries().items():
            tree[key] = [ldap.dn.explode_dn(dn)[0] if key else self.base_dn, attrs]
        for i, op in enumerate(ops):
            if cancel.cancelled():
                result.problems.extend(
                    Problem(o.key, f"{o.op} {'/'.join(o.key)}: cancelled", op=o.op,
                            kind=CANCELLED)
                    for o in ops[i:]
                )
                break
            try:
                self._one(op, tree, m)
            except _Refused as e:
                result.problems.append(
                    Problem(op.key, f"{op.op} failed: {e}", op=op.op, kind=e.kind)
                )
                continue
            result.done.append(op)
        if result.done:
            try:
                self._write(tree)
            except OSError as e:  # a fault of the whole endpoint: the run stops
                why = f"{self.path}: cannot write: {e.strerror or e}"
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DestinationFull(why) from None
                raise BackendError(why) from None
            if on_done is not None:  # done once written
                for op in result.done:
                    on_done(op)
        return result

    def _dn(self, tree: dict[Key, list[Any]], key: Key) -> str:
        parts = [tree[key[:i]][0] for i in range(len(key), 0, -1)]
        return ",".join([*parts, self.base_dn])

    def _one(self, op: Op, tree: dict[Key, list[Any]], m: Mapper) -> None:
        data: Data = op.node.data if op.node is not None and op.node.data else ()
        if op.op == CREATE:
            if op.key in tree:
                raise _Refused(f"{self._dn(tree, op.key)}: Already exists", SKIP)
            if op.key and op.key[:-1] not in tree:
                raise _Refused(f"{'/'.join(op.key)}: No such object (no parent)")
            rdn = m.rdn_for(op.key[-1], data) if op.key else self.base_dn
            tree[op.key] = [rdn, m.entry_attrs(data, root=not op.key)]
            return
        if op.key not in tree:
            raise _Refused(f"{'/'.join(op.key)}: No such object")
        if op.op == UPDATE:
            tree[op.key][1] = m.entry_attrs(data, root=not op.key)
        elif op.op == DELETE:
            if not op.key:
                raise _Refused("the base entry is never deleted")
            n = len(op.key)
            if any(len(k) > n and k[:n] == op.key for k in tree):
                raise _Refused(f"{self._dn(tree, op.key)}: Operation not allowed on non-leaf")
            del tree[op.key]
        elif op.op == MOVE:
            assert op.to is not None
            if not op.key:
                raise _Refused("the base entry is never moved")
            if op.to in tree:
                raise _Refused(f"{self._dn(tree, op.to)}: Already exists", SKIP)
            if op.to[:-1] not in tree:
                raise _Refused(f"{'/'.join(op.to)}: No such object (no new parent)")
            old_rdn = tree[op.key][0]
            if m.is_temp(op.to[-1]):
                rdn = ldap.dn.dn2str([[(ldap.dn.str2dn(old_rdn)[0][0][0], op.to[-1], 1)]])
            else:
                rdn = m.rdn_for(op.to[-1], data)
            n = len(op.key)
            for k in sorted((k for k in tree if k[:n] == op.key), key=len):
                tree[op.to + k[n:]] = tree.pop(k)
            entry = tree[op.to]
            entry[0] = rdn
            _set_rdn_values(entry[1], old_rdn, rdn, data, m)

    def _write(self, tree: dict[Key, list[Any]]) -> None:
        tmp = f"{self.path}.hsync-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                writer = ldif.LDIFWriter(f, cols=76)
                for key in sorted(tree):
                    attrs = tree[key][1]
                    ordered = {
                        k: attrs[k]
                        for k in sorted(attrs, key=lambda a: (a.lower() != "objectclass", a))
                    }
                    writer.unparse(self._dn(tree, key), ordered)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.records = self._load()


class _Refused(Exception):
    """An op the tree refuses (as a directory server would); ``kind``: the problem's."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def _path_of(location: str) -> str:
    """The absolute path of an ``ldif:PATH`` (``ldif:///abs``) location, without its
    query."""
    rest = location.split(":", 1)[1]
    if rest.startswith("//"):
        rest = rest[2:]
    path = unquote(rest.partition("?")[0])
    if not path:
        raise UsageError(f"{location}: no file (ldif:PATH)")
    return os.path.abspath(path)


def _set_rdn_values(attrs: Attrs, old_rdn: str, new_rdn: str, desired: Data, m: Mapper) -> None:
    """What modrdn does to the attributes: the new RDN values are added; the old ones go
    unless the desired payload keeps them."""
    keep = dict(desired)
    for name, value, _ in ldap.dn.str2dn(old_rdn)[0]:
        lname = m.schema.canonical(name)
        norm = m.schema.norm_value(lname, value.encode("utf-8"), None)
        if norm in keep.get(lname, ()) and not m.is_temp(value):
            continue
        for spelled in list(attrs):
            if m.schema.canonical(spelled) == lname:
                attrs[spelled] = [
                    v for v in attrs[spelled] if m.schema.norm_value(lname, v, None) != norm
                ]
                if not attrs[spelled]:
                    del attrs[spelled]
    for name, value, _ in ldap.dn.str2dn(new_rdn)[0]:
        lname = m.schema.canonical(name)
        norm = m.schema.norm_value(lname, value.encode("utf-8"), None)
        have = next((s for s in attrs if m.schema.canonical(s) == lname), None)
        if have is None:
            attrs[m.schema.spelling(lname)] = [value.encode("utf-8")]
        elif all(m.schema.norm_value(lname, v, None) != norm for v in attrs[have]):
            attrs[have].append(value.encode("utf-8"))


if TYPE_CHECKING:  # what the class claims, checked by mypy (rclone's ``var _ fs.Mover``)
    from hsync.backend import BackendFactory, Related, SchemaAware

    _factory: BackendFactory = LdifBackend
    _backend: type[Backend] = LdifBackend
    _related: type[Related] = LdifBackend
    _schema_aware: type[SchemaAware] = LdifBackend
