"""Value types shared by every layer: keys, nodes, snapshots, changes, ops, problems.

A key is a tuple of names from the tree's root (``()`` is the root). Names are ``str``;
a filesystem name that is not valid UTF-8 is carried with surrogate escapes
(``os.fsdecode``), so it survives end to end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, KeysView, Mapping
from typing import Any, Literal

import attrs

Key = tuple[str, ...]
ROOT: Key = ()

DIR = "dir"
FILE = "file"
SYMLINK = "symlink"
ENTRY = "entry"
SPECIAL = "special"
"""A FIFO or a device node: ``mode`` is the whole ``st_mode`` (its type in the
``S_IFMT`` bits), ``size`` the device number (``st_rdev``; 0 for a FIFO)."""
NodeKind = Literal["dir", "file", "symlink", "entry", "special"]
NEEDS_ROOT = " (only root can create one)"
"""Ends the reason a scan gives for a device node it left out (``Snapshot.skipped``)
because this process could not create it: the report says it once per run."""
CONTAINERS = frozenset({DIR, ENTRY})
"""Kinds that can have children (an LDAP entry is a leaf or a container alike)."""

CREATE = "create"
UPDATE = "update"
MOVE = "move"
DELETE = "delete"
OpName = Literal["create", "update", "move", "delete"]


@attrs.frozen
class Node:
    """What one scan saw at one key.

    Equality is payload equality (SPEC section 2): backends leave fields that are not
    payload at their defaults (a symlink's mode and mtime, a directory's size).
    ``identity`` survives renames on the side that was scanned (an inode, an entryUUID);
    it is never compared. ``data`` is a backend's extra payload (LDAP
    attributes as a sorted tuple of ``(name, frozenset(values))``; a file's owner,
    group and extended attributes, ``hsync.backends.fs.meta``).
    """

    kind: str
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    target: str | None = None
    identity: int | str | None = attrs.field(default=None, eq=False)
    data: Any = None


@attrs.frozen
class Fingerprint:
    """An entry's payload as the history keeps it: a digest of its ``data``."""

    digest: str


def fingerprint(data: Any) -> str:
    """A stable digest of an entry's ``data`` (a tuple of ``(name, values)``; values are
    ``bytes`` or ``str``, compared as they are, so a backend that normalizes values by
    matching rule gets the normalized form hashed)."""
    if isinstance(data, Fingerprint):
        return data.digest
    # one buffer hashed once (the same digest as hashing the parts one by one)
    parts: list[bytes] = []
    add = parts.append
    for name, values in sorted(data or ()):
        add(repr(name).encode())
        for v in sorted([v if type(v) is bytes else bytes(v) if isinstance(v, bytes)
                         else str(v).encode() for v in values]):
            add(len(v).to_bytes(8, "big"))
            add(v)
        add(b"\n")
    return hashlib.sha256(b"".join(parts)).hexdigest()


UNREAD = "unread"
"""In a node's data: a part not read because it did not change since the last sync
that left the pair equal (``backend.Keep.since_ns``); equal to itself on both sides,
read in full (``Backend.stat``) where it meets anything else (``compare``)."""


def has_unread(data: Any) -> bool:
    """True when ``data`` holds ``UNREAD`` (a filesystem row's attributes)."""
    return type(data) is tuple and UNREAD in data


_DIGESTS: dict[Any, str] = {}


def data_digest(kind: str, data: Any) -> str | None:
    """What the history keeps of a node's ``data``: an entry's ``fingerprint``; for
    other nodes a digest of its value (owner, group, attributes), None for None."""
    if kind == ENTRY:
        return fingerprint(data)
    if data is None:
        return None
    if isinstance(data, Fingerprint):
        return data.digest
    if has_unread(data):
        return "?"  # unknown here: the history keeps what it had (``History.record``)
    found = _DIGESTS.get(data)
    if found is None:
        found = hashlib.sha256(repr(data).encode()).hexdigest()
        if len(_DIGESTS) < 4096:  # most nodes share a few owners and no attribute
            _DIGESTS[data] = found
    return found


def same_content(a: Node, b: Node) -> bool:
    """Content presumed equal: same size and mtime (ns) for files; SPEC section 2."""
    if a.kind == FILE:
        return a.size == b.size and a.mtime_ns == b.mtime_ns
    if a.kind == SYMLINK:
        return a.target == b.target
    if a.kind == SPECIAL:  # the type and the device number; the rest is metadata
        return a.mode & 0o170000 == b.mode & 0o170000 and a.size == b.size
    if a.kind == ENTRY:
        if isinstance(a.data, Fingerprint) or isinstance(b.data, Fingerprint):
            return fingerprint(a.data) == fingerprint(b.data)  # one side is from the history
        return a.data == b.data
    return True


def same_payload(a: Node, b: Node) -> bool:
    """True when the two nodes are in sync (SPEC section 2), identity ignored."""
    return a == b


def parent(key: Key) -> Key:
    return key[:-1]


def is_under(key: Key, ancestor: Key) -> bool:
    """True when ``key`` is ``ancestor`` or below it."""
    return key[: len(ancestor)] == ancestor


def key_str(key: Key) -> str:
    return "/".join(key)


def key_dn(key: Key) -> str:
    """An LDAP key as a DN relative to the base (``("ou=a", "cn=b")`` -> ``cn=b,ou=a``)."""
    return ",".join(reversed(key))


Row = tuple[str, int, int, int, "str | None", "int | str | None", Any]
"""A node as a scanner stores it: (kind, mode, size, mtime_ns, target, identity, data).
Payload: every field but the identity (``same_row``). A filesystem row's ``data`` is
its owner, group and extended attributes as the pair keeps them, or None."""


def same_row(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Two rows have the same payload (the identity, ``[5]``, is not compared)."""
    return a[:5] == b[:5] and a[6:] == b[6:]


class Rows(Mapping[Key, Node]):
    """A read-only key -> Node mapping over compact rows.

    A scan of a million nodes keeps one small tuple per node; a ``Node`` is built only
    for a key that is looked at (diff compares rows directly, and on a re-sync it looks
    at few keys). Rows compare as payloads without their identity (``same_row``).
    """

    __slots__ = ("_cache", "rows")

    def __init__(self, rows: dict[Key, Row]) -> None:
        self.rows = rows
        self._cache: dict[Key, Node] = {}

    def __getitem__(self, key: Key) -> Node:
        node = self._cache.get(key)
        if node is None:
            node = Node(*self.rows[key])
            self._cache[key] = node
        return node

    def get(self, key: Key, default: Any = None) -> Any:
        return self[key] if key in self.rows else default

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __iter__(self) -> Iterator[Key]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> KeysView[Key]:
        return self.rows.keys()


@attrs.define
class Snapshot:
    """What one scan of a tree saw: key -> node, parents before children.

    ``incomplete`` lists keys whose listing failed (unreadable, vanished mid-scan):
    nothing under them may be deleted or matched on the strength of this snapshot.
    ``skipped`` lists special files (FIFO, socket, device) left out with a warning.
    """

    nodes: Mapping[Key, Node] = attrs.field(factory=dict)
    incomplete: dict[Key, str] = attrs.field(factory=dict)
    skipped: list[tuple[Key, str]] = attrs.field(factory=list)
    holds_excluded: set[Key] = attrs.field(factory=set)
    """Directories with excluded children: excluded nodes are never deleted, so neither
    are these directories nor their ancestors."""
    mounts: set[Key] = attrs.field(factory=set)
    """Directories on another file system that were not listed (``-x``, rsync's
    ``--one-file-system``): each is a node, but nothing below it is compared, created or
    deleted on either side."""
    partial: set[Key] = attrs.field(factory=set)
    """Nodes listed without (all of) their children: the context of a partial rescan
    (the ancestors of the rescanned subtrees). Diff may update them, never move,
    replace or delete them."""
    scanned: int | None = None
    """When this is the part of a full scan that differs (the rest being equal on both
    sides), how many nodes the full scan saw; None when it is all of what was seen."""
    whole: Any = attrs.field(default=None, repr=False, eq=False)
    """What this part was cut from (a full scan, a digest scan), kept as long as the
    part: freeing the rows of a big scan in the middle of a re-sync costs more than the
    rest of it."""
    folded: dict[Key, Key] = attrs.field(factory=dict)
    """Directories held without their descendants because their subtrees are equal on
    both sides (subtree digests), each the root of a move matched by identity: key on
    this side -> key on the other. Nothing below them differs; diff must pair each as
    one move (``compare.plan_between`` checks, else the trees are compared whole)."""
    equal_children: list[tuple[Key, Any]] = attrs.field(factory=list)
    """``(key, identity)`` of nodes left out of this part as equal on both sides whose
    parent's own payload differs (its listing does not): the nodes a replacement in
    place (a new identity, an equal payload) leaves, whose identity the history must
    learn."""
    _children: dict[Key, list[Key]] | None = attrs.field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, key: object) -> bool:
        return key in self.nodes

    def children(self, key: Key) -> list[Key]:
        """Direct children of ``key`` (an index built once, on first use)."""
        if self._children is None:
            index: dict[Key, list[Key]] = {}
            for k in self.nodes:
                if k:
                    index.setdefault(k[:-1], []).append(k)
            self._children = index
        return self._children.get(key, [])

    def walk(self, key: Key) -> Iterator[Key]:
        """``key``'s descendants, parents before children (``key`` itself excluded)."""
        stack = [key]
        while stack:
            for child in self.children(stack.pop()):
                yield child
                stack.append(child)

    def is_incomplete(self, key: Key) -> bool:
        return any(key[: len(k)] == k for k in self.incomplete)


@attrs.frozen(kw_only=True)
class Change:
    """One difference found by diff.

    ``key`` is the destination key for delete and move (where the node is now), the
    source key for create and update (where it ends). ``to`` is a move's source key.
    ``node`` is the source node (what must end up there), ``old`` the destination node.
    ``content`` says whether an update must copy content (else metadata only).
    """

    op: str
    key: Key
    kind: str
    to: Key | None = None
    node: Node | None = None
    old: Node | None = None
    content: bool = False


@attrs.frozen(kw_only=True)
class Op:
    """One step of a plan, with the destination keys valid at the moment it runs."""

    op: str
    kind: str
    key: Key
    to: Key | None = None
    node: Node | None = None
    old: Node | None = None
    content: bool = False
    temporary: bool = False

    def to_json(self) -> dict[str, str]:
        # SPEC section 9: an LDAP entry's path is its DN relative to the base
        show = key_dn if self.kind == ENTRY else key_str
        out = {"op": self.op, "kind": self.kind, "path": show(self.key)}
        if self.to is not None:
            out["to"] = show(self.to)
        return out


@attrs.frozen
class Plan:
    """The ordered ops that turn the destination into the source."""

    ops: tuple[Op, ...] = ()
    changes: tuple[Change, ...] = ()

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def counts(self) -> dict[str, int]:
        out = {CREATE: 0, UPDATE: 0, MOVE: 0, DELETE: 0}
        for op in self.ops:
            out[op.op] += 1
        return out

    def to_json(self) -> list[dict[str, str]]:
        return [op.to_json() for op in self.ops]


@attrs.frozen
class Problem:
    """A failure on one node: data for the report, not an exception.

    ``op`` is the op that failed (``create``, ``update``, ``move``, ``delete``), or ""
    when none was running (a listing that failed, a scan); ``kind`` is one of
    ``hsync.errors.ProblemKind``: ``error``, ``retry`` (transient: retried within the run
    or by the next one), ``skip`` (left alone on purpose), ``cancelled`` (not run)."""

    key: Key
    message: str
    op: str = attrs.field(default="", kw_only=True)
    kind: str = attrs.field(default="error", kw_only=True)

    @property
    def retry(self) -> bool:
        """True for a transient failure (the next round or run may succeed)."""
        return self.kind in ("retry", "cancelled")

    def to_json(self) -> dict[str, object]:
        return {
            "path": key_str(self.key),
            "op": self.op,
            "kind": self.kind,
            "message": self.message,
            "retry": self.retry,
        }
