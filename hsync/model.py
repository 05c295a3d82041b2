"""Value types shared by every layer: keys, nodes, snapshots, changes, ops, problems.

A key is a tuple of names from the tree's root (``()`` is the root). Names are ``str``;
a filesystem name that is not valid UTF-8 is carried with surrogate escapes
(``os.fsdecode``), so it survives end to end.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, KeysView, Mapping, Sequence
from itertools import repeat

from ._values import define, field, frozen

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any, Literal
else:
    Any = object  # in the run-time value of the type aliases below

Key = tuple[str, ...]
ROOT: Key = ()

DIR = "dir"
FILE = "file"
SYMLINK = "symlink"
ENTRY = "entry"
SPECIAL = "special"
"""A FIFO or a device node: ``mode`` is the whole ``st_mode`` (its type in the
``S_IFMT`` bits), ``size`` the device number (``st_rdev``; 0 for a FIFO)."""
if TYPE_CHECKING:
    NodeKind = Literal["dir", "file", "symlink", "entry", "special"]
else:
    NodeKind = str
NEEDS_ROOT = " (only root can create one)"
"""Ends the reason a scan gives for a device node it left out (``Snapshot.skipped``)
because this process could not create it: the report says it once per run."""
CONTAINERS = frozenset({DIR, ENTRY})
"""Kinds that can have children (an LDAP entry is a leaf or a container alike)."""

CREATE = "create"
UPDATE = "update"
MOVE = "move"
DELETE = "delete"
if TYPE_CHECKING:
    OpName = Literal["create", "update", "move", "delete"]
else:
    OpName = str


@frozen
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
    identity: int | str | None = field(default=None, eq=False)
    data: Any = None


@frozen
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
    return sha256(b"".join(parts)).hexdigest()


UNREAD = "unread"
"""In a node's data: a part not read because it did not change since the last sync
that left the pair equal (``backend.Keep.since_ns``); equal to itself on both sides,
read in full (``Backend.stat``) where it meets anything else (``compare``)."""


def sha256(data: bytes) -> Any:
    """``hashlib.sha256(data)``, without ``hashlib``'s import where Python has its own
    SHA-256 (``_sha256``, the same digest): loading OpenSSL's costs a few ms of every
    run's start-up, and hsync hashes a few short strings per run."""
    try:
        from _sha256 import sha256 as builtin  # type: ignore[import-not-found]
    except ImportError:  # a Python built without it
        from hashlib import sha256 as openssl

        return openssl(data)
    return builtin(data)


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
        found = sha256(repr(data).encode()).hexdigest()
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


KIND_CODES: dict[str, int] = {DIR: 0, FILE: 1, SYMLINK: 2, SPECIAL: 3, ENTRY: 4}
KIND_NAMES: tuple[str, ...] = (DIR, FILE, SYMLINK, SPECIAL, ENTRY)
_M64 = (1 << 64) - 1


class Table(Mapping[Key, Row]):
    """A whole scan's rows as a compact table (key -> ``Row``), not a dict of tuples.

    A million-node scan held as a dict of tuples costs about 450 bytes a node (the key
    tuple, the row tuple, its ints, the dict's slot). Here a node is a name (``str``)
    and one slot in each of a few typed columns (kind, mode, size, mtime, identity as
    two 64-bit halves, data where any node has some): about 110 bytes. Each listed
    directory's children are one contiguous run of the columns, sorted by name
    (``add``): a key is found by its parent's run (``dirs``) and a bisection, and a
    key or a row is built only when asked for. Iteration is parents first.

    Rows are added one directory at a time (``add``), by the scan that lists them; a
    row may be replaced later (``__setitem__``, for a key that is there: the attributes
    read in full by ``compare.read_unread``). Identities that do not fit two 64-bit
    halves (a node on another device) and symlink targets are kept aside by index; an
    identity 0 reads as None.
    """

    __slots__ = ("_data", "_idents", "_targets", "dirs", "hi", "kind", "lo", "mode", "mtime",
                 "names", "root", "runs", "size")

    def __init__(self, root: Row | None = None) -> None:
        self.root = root
        self.dirs: dict[Key, int] = {}
        """A listed directory's key -> its run's number."""
        self.runs = array("q")
        """Per run: start and end index of its children (two slots per run)."""
        self.names: list[str] = []
        self.kind = bytearray()
        self.mode = array("I")
        self.size = array("q")
        self.mtime = array("q")
        self.hi = array("Q")
        self.lo = array("Q")
        self._data: list[Any] | None = None  # None: no row has data
        self._idents: dict[int, int | str] = {}
        self._targets: dict[int, str] = {}

    # -- building -------------------------------------------------------------------------
    def add(self, key: Key, rows: Mapping[Key, Row]) -> None:
        """The listing of the directory at ``key``: its children's rows, sorted by name
        (a listing is added once)."""
        start = len(self.names)
        if rows:
            keys = list(rows)
            kinds, modes, sizes, mtimes, targets, idents, datas = zip(*rows.values(), strict=True)
            self.names.extend([k[-1] for k in keys])
            code = KIND_CODES.__getitem__
            self.kind.extend(map(code, kinds))
            self.mode.extend(modes)
            self.size.extend(sizes)
            self.mtime.extend(mtimes)
            try:
                his = array("Q", [0 if i is None else i >> 64 for i in idents])
            except (OverflowError, TypeError):  # another device's, or not an int
                self.hi.extend([0] * len(idents))
                self.lo.extend([0] * len(idents))
                for n, i in enumerate(idents):
                    if i is not None:
                        self._idents[start + n] = i
            else:
                self.hi.extend(his)
                self.lo.extend([0 if i is None else i & _M64 for i in idents])
            if targets.count(None) != len(targets):
                for n, t in enumerate(targets):
                    if t is not None:
                        self._targets[start + n] = t
            data = self._data
            if data is None and datas.count(None) != len(datas):
                data = self._data = [None] * start
            if data is not None:
                data.extend(datas)
        self.dirs[key] = len(self.runs) // 2
        self.runs.append(start)
        self.runs.append(len(self.names))

    def add_plain(
        self, key: Key, names: Sequence[str], kinds: bytes, modes: Iterable[int],
        sizes: Iterable[int], mtimes: Iterable[int], his: Iterable[int], los: Iterable[int],
        data: Any = None,
    ) -> None:
        """The listing of the directory at ``key`` given as columns (sorted by name), of
        nodes with no target, the same ``data``, and an identity of two halves (0, 0:
        none)."""
        start = len(self.names)
        self.names.extend(names)
        self.kind.extend(kinds)
        self.mode.extend(modes)
        self.size.extend(sizes)
        self.mtime.extend(mtimes)
        self.hi.extend(his)
        self.lo.extend(los)
        if data is not None and self._data is None:
            self._data = [None] * start
        if self._data is not None:
            self._data.extend([data] * len(names))
        self.dirs[key] = len(self.runs) // 2
        self.runs.append(start)
        self.runs.append(len(self.names))

    # -- reading ----------------------------------------------------------------------------
    def row(self, i: int) -> Row:
        """The row at index ``i``."""
        hi = self.hi[i]
        ident: int | str | None
        if hi:
            ident = (hi << 64) | self.lo[i]
        else:  # a small one, or one kept aside, or none (0)
            ident = self.lo[i] or (self._idents.get(i) if self._idents else None)
        return (
            KIND_NAMES[self.kind[i]], self.mode[i], self.size[i], self.mtime[i],
            self._targets.get(i) if self._targets else None, ident,
            None if self._data is None else self._data[i],
        )

    def index(self, key: Key) -> int:
        """The index of ``key`` (not the root), or -1."""
        d = self.dirs.get(key[:-1])
        if d is None or not key:
            return -1
        lo, hi = self.runs[2 * d], self.runs[2 * d + 1]
        names = self.names
        name = key[-1]
        i = bisect_left(names, name, lo, hi)
        return i if i < hi and names[i] == name else -1

    def get(self, key: Key, default: Any = None) -> Any:
        if not key:
            return self.root if self.root is not None else default
        i = self.index(key)
        return default if i < 0 else self.row(i)

    def __getitem__(self, key: Key) -> Row:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        if key == ():
            return self.root is not None
        return type(key) is tuple and self.index(key) >= 0

    def __len__(self) -> int:
        return len(self.names) + (self.root is not None)

    def listing(self, key: Key) -> Iterator[tuple[int, str]]:
        """``(index, name)`` of the children of the directory at ``key`` (none when it
        was not listed)."""
        d = self.dirs.get(key)
        if d is None:
            return iter(())
        lo, hi = self.runs[2 * d], self.runs[2 * d + 1]
        return zip(range(lo, hi), self.names[lo:hi], strict=True)

    def children(self, key: Key) -> list[Key]:
        return [(*key, name) for _, name in self.listing(key)]

    def listing_rows(self, key: Key) -> list[tuple[str, Row]]:
        """``(name, row)`` of the children of the directory at ``key`` (none when it was
        not listed): the rows ``row`` gives, built column by column (slices zipped in
        C, not a method call per row: the listings a digest comparison asks for hold
        tens of thousands of rows at 100,000 files)."""
        d = self.dirs.get(key)
        if d is None:
            return []
        lo, hi = self.runs[2 * d], self.runs[2 * d + 1]
        if lo == hi:
            return []
        n = hi - lo
        aside = self._idents
        idents: list[int | str | None] = [
            (h << 64) | w if h else (w or None)
            for h, w in zip(self.hi[lo:hi], self.lo[lo:hi], strict=True)
        ]
        if aside:
            for i in range(lo, hi):
                if not idents[i - lo] and i in aside:
                    idents[i - lo] = aside[i]
        targets: Iterable[str | None] = (
            [self._targets.get(i) for i in range(lo, hi)] if self._targets else repeat(None, n)
        )
        datas: Iterable[Any] = (
            repeat(None, n) if self._data is None else self._data[lo:hi]
        )
        rows = zip(
            map(KIND_NAMES.__getitem__, self.kind[lo:hi]), self.mode[lo:hi],
            self.size[lo:hi], self.mtime[lo:hi], targets, idents, datas,
            strict=True,
        )
        return list(zip(self.names[lo:hi], rows, strict=True))

    def __iter__(self) -> Iterator[Key]:
        if self.root is not None:
            yield ()
        names, runs = self.names, self.runs
        for key, d in self.dirs.items():
            for name in names[runs[2 * d]:runs[2 * d + 1]]:
                yield (*key, name)

    def items(self) -> Iterator[tuple[Key, Row]]:  # type: ignore[override]
        if self.root is not None:
            yield (), self.root
        names, runs, row = self.names, self.runs, self.row
        for key, d in self.dirs.items():
            lo = runs[2 * d]
            for i, name in enumerate(names[lo:runs[2 * d + 1]], lo):
                yield (*key, name), row(i)

    def values(self) -> Iterator[Row]:  # type: ignore[override]
        if self.root is not None:
            yield self.root
        row = self.row
        for i in range(len(self.names)):
            yield row(i)

    def __setitem__(self, key: Key, row: Row) -> None:
        """Replace the row of a key that is there (``KeyError`` otherwise)."""
        if not key:
            if self.root is None:
                raise KeyError(key)
            self.root = row
            return
        i = self.index(key)
        if i < 0:
            raise KeyError(key)
        kind, mode, size, mtime, target, ident, data = row
        self.kind[i] = KIND_CODES[kind]
        self.mode[i], self.size[i], self.mtime[i] = mode, size, mtime
        self._targets.pop(i, None)
        if target is not None:
            self._targets[i] = target
        self._idents.pop(i, None)
        if type(ident) is int and ident > 0 and ident >> 64 <= _M64:
            self.hi[i], self.lo[i] = ident >> 64, ident & _M64
        else:
            self.hi[i] = self.lo[i] = 0
            if ident is not None:
                self._idents[i] = ident
        if data is not None and self._data is None:
            self._data = [None] * len(self.names)
        if self._data is not None:
            self._data[i] = data

    def differing(
        self, other: Table, checksum: bool = False
    ) -> tuple[list[Key], list[Key], list[Key], list[Key]]:
        """What differs from ``other`` (the destination's table): ``(new, changed,
        same_files, gone)``: keys here only, keys whose payload differs (``same_row``),
        files with equal rows (only with ``checksum``), keys there only. A run of
        children equal column by column is skipped whole (slices compared in C); the
        others are merged by name."""
        new: list[Key] = []
        changed: list[Key] = []
        same: list[Key] = []
        gone: list[Key] = []
        if self.root is not None:
            if other.root is None:
                new.append(())
            elif not same_row(self.root, other.root):
                changed.append(())
            elif checksum and self.root[0] == FILE:
                same.append(())
        names, runs, o_names, o_runs = self.names, self.runs, other.names, other.runs
        o_dirs = other.dirs
        for key, d in self.dirs.items():
            lo, hi = runs[2 * d], runs[2 * d + 1]
            od = o_dirs.get(key)
            if od is None:  # listed here only: its children are new (or below new)
                new.extend([(*key, n) for n in names[lo:hi]])
                continue
            olo, ohi = o_runs[2 * od], o_runs[2 * od + 1]
            if not checksum and self._run_equal(other, lo, hi, olo, ohi):
                continue
            j = olo
            for i in range(lo, hi):
                name = names[i]
                while j < ohi and o_names[j] < name:
                    gone.append((*key, o_names[j]))
                    j += 1
                if j < ohi and o_names[j] == name:
                    a, b = self.row(i), other.row(j)
                    if a[:5] != b[:5] or a[6:] != b[6:]:
                        changed.append((*key, name))
                    elif checksum and a[0] == FILE:
                        same.append((*key, name))
                    j += 1
                else:
                    new.append((*key, name))
            gone.extend([(*key, n) for n in o_names[j:ohi]])
        for key, od in o_dirs.items():
            if key not in self.dirs:
                gone.extend([(*key, n) for n in o_names[o_runs[2 * od]:o_runs[2 * od + 1]]])
        if other.root is not None and self.root is None:
            gone.append(())
        return new, changed, same, gone

    def _run_equal(self, other: Table, lo: int, hi: int, olo: int, ohi: int) -> bool:
        """True when the runs ``[lo, hi)`` here and ``[olo, ohi)`` there hold the same
        names with the same payloads (identities aside)."""
        if hi - lo != ohi - olo:
            return False
        if (
            self.names[lo:hi] != other.names[olo:ohi]
            or self.mtime[lo:hi] != other.mtime[olo:ohi]
            or self.size[lo:hi] != other.size[olo:ohi]
            or self.mode[lo:hi] != other.mode[olo:ohi]
            or self.kind[lo:hi] != other.kind[olo:ohi]
        ):
            return False
        mine = None if self._data is None else self._data[lo:hi]
        theirs = None if other._data is None else other._data[olo:ohi]
        if mine != theirs and (mine or [None] * (hi - lo)) != (theirs or [None] * (hi - lo)):
            return False
        if self._targets or other._targets:
            return all(self._targets.get(i) == other._targets.get(j)
                       for i, j in zip(range(lo, hi), range(olo, ohi), strict=True))
        return True

    # -- shipping ---------------------------------------------------------------------------
    def to_wire(self) -> tuple[Any, ...]:
        """Plain values (``marshal`` can send them), for ``from_wire``."""
        return (
            self.root, list(self.dirs), self.runs.tobytes(), self.names, bytes(self.kind),
            self.mode.tobytes(), self.size.tobytes(), self.mtime.tobytes(), self.hi.tobytes(),
            self.lo.tobytes(), self._data, self._idents, self._targets,
        )

    @classmethod
    def from_wire(cls, wire: Iterable[Any]) -> Table:
        (root, dirs, runs, names, kind, mode, size, mtime, hi, lo, data, idents,
         targets) = wire
        t = cls(root)
        t.dirs = {d: n for n, d in enumerate(dirs)}
        t.runs.frombytes(runs)
        t.names = names
        t.kind = bytearray(kind)
        for col, raw in ((t.mode, mode), (t.size, size), (t.mtime, mtime), (t.hi, hi),
                         (t.lo, lo)):
            col.frombytes(raw)
        t._data, t._idents, t._targets = data, idents, targets
        return t


class Rows(Mapping[Key, Node]):
    """A read-only key -> Node mapping over compact rows.

    A scan of a million nodes keeps one small tuple per node; a ``Node`` is built only
    for a key that is looked at (diff compares rows directly, and on a re-sync it looks
    at few keys). Rows compare as payloads without their identity (``same_row``).
    """

    __slots__ = ("_cache", "rows")

    def __init__(self, rows: dict[Key, Row] | Table) -> None:
        self.rows: dict[Key, Row] | Table = rows
        self._cache: dict[Key, Node] = {}

    def __getitem__(self, key: Key) -> Node:
        node = self._cache.get(key)
        if node is None:
            node = Node(*self.rows[key])
            self._cache[key] = node
        return node

    def get(self, key: Key, default: Any = None) -> Any:
        return self[key] if key in self.rows else default

    def forget(self, key: Key | None = None) -> None:
        """Drop the node built from ``key``'s row (None: every one): its row in
        ``rows`` was replaced (attributes read after the scan)."""
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __iter__(self) -> Iterator[Key]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> KeysView[Key]:
        return self.rows.keys()


@define
class Snapshot:
    """What one scan of a tree saw: key -> node, parents before children.

    ``incomplete`` lists keys whose listing failed (unreadable, vanished mid-scan):
    nothing under them may be deleted or matched on the strength of this snapshot.
    ``skipped`` lists special files (FIFO, socket, device) left out with a warning.
    """

    nodes: Mapping[Key, Node] = field(factory=dict)
    incomplete: dict[Key, str] = field(factory=dict)
    skipped: list[tuple[Key, str]] = field(factory=list)
    holds_excluded: set[Key] = field(factory=set)
    """Directories with excluded children: excluded nodes are never deleted, so neither
    are these directories nor their ancestors."""
    mounts: set[Key] = field(factory=set)
    """Directories on another file system that were not listed (``-x``, rsync's
    ``--one-file-system``): each is a node, but nothing below it is compared, created or
    deleted on either side."""
    partial: set[Key] = field(factory=set)
    """Nodes listed without (all of) their children: the context of a partial rescan
    (the ancestors of the rescanned subtrees). Diff may update them, never move,
    replace or delete them."""
    scanned: int | None = None
    """When this is the part of a full scan that differs (the rest being equal on both
    sides), how many nodes the full scan saw; None when it is all of what was seen."""
    whole: Any = field(default=None, repr=False, eq=False)
    """What this part was cut from (a full scan, a digest scan), kept as long as the
    part: freeing the rows of a big scan in the middle of a re-sync costs more than the
    rest of it."""
    folded: dict[Key, Key] = field(factory=dict)
    """Directories held without their descendants because their subtrees are equal on
    both sides (subtree digests), each the root of a move matched by identity: key on
    this side -> key on the other. Nothing below them differs; diff must pair each as
    one move (``compare.plan_between`` checks, else the trees are compared whole)."""
    equal_children: list[tuple[Key, Any]] = field(factory=list)
    """``(key, identity)`` of nodes left out of this part as equal on both sides whose
    parent's own payload differs (its listing does not): the nodes a replacement in
    place (a new identity, an equal payload) leaves, whose identity the history must
    learn."""
    _children: dict[Key, list[Key]] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, key: object) -> bool:
        return key in self.nodes

    def children(self, key: Key) -> list[Key]:
        """Direct children of ``key`` (an index built once, on first use)."""
        if self._children is None:
            nodes = self.nodes
            if isinstance(nodes, Rows) and isinstance(nodes.rows, Table):
                return nodes.rows.children(key)
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


@frozen(kw_only=True)
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


@frozen(kw_only=True)
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


@frozen
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


@frozen
class Problem:
    """A failure on one node: data for the report, not an exception.

    ``op`` is the op that failed (``create``, ``update``, ``move``, ``delete``), or ""
    when none was running (a listing that failed, a scan); ``kind`` is one of
    ``hsync.errors.ProblemKind``: ``error``, ``retry`` (transient: retried within the run
    or by the next one), ``skip`` (left alone on purpose), ``cancelled`` (not run)."""

    key: Key
    message: str
    op: str = field(default="", kw_only=True)
    kind: str = field(default="error", kw_only=True)

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
