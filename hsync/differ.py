"""diff: what differs between two snapshots, moves included. Pure: no disk, no network.

The heart of it is a *matching*: a partial one-to-one map from destination keys to source
keys saying which destination node becomes which source node. Everything follows from it:

- a matched pair whose name or matched parent differs is a **move** (the root of a moved
  subtree; its descendants travel with it and need no op of their own);
- a matched pair whose payload differs is an **update**;
- an unmatched source node is a **create**, an unmatched destination node a **delete**
  (a type change is both, on the same key).

Evidence for the matching, strongest first (SPEC section 3):

1. identity from the history of the last sync (an inode, an entryUUID), trusted only
   while the destination still holds what was synced there;
2. same key, same kind, under a parent that is itself matched to the same place;
3. descendants of a moved directory keep their relative place below it;
4. without history: directories whose children mostly match (Dice >= 0.5), files with
   the same size and mtime, or the same content hash (bounded by a hashing budget).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .model import (
    CONTAINERS,
    CREATE,
    DELETE,
    FILE,
    MOVE,
    ROOT,
    UPDATE,
    Change,
    Key,
    Node,
    Rows,
    Snapshot,
    Table,
    same_content,
)

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Literal, Protocol

    Side = Literal["source", "destination"]
else:
    Side = str
Digest = Callable[[Side, Key], bytes | None]
"""Content hash oracle: ``digest(side, key)`` (memoised by the caller)."""

DICE_THRESHOLD = 0.5
HASH_CANDIDATES = 8
COMMON_SIGNATURE = 64
HASH_BUDGET = 256 * 1024 * 1024
LOOKUP_LIMIT = 5000
"""Up to this many source nodes, the history is asked for their identities one by one
(an index lookup each); beyond, its identities are read once, whole."""


if TYPE_CHECKING:  # what diff needs of a history (a protocol for the type checker)

    class HistoryView(Protocol):
        """What diff needs from the history of the last sync."""

        def lookup_many(
            self, identities: Iterable[int | str | None]
        ) -> Mapping[int | str | None, tuple[Key, Node]]:
            """identity -> (key, node) as synced last time, for the identities it knows."""
            ...

        def moved_from(
            self, places: Mapping[int | str | None, Key]
        ) -> Mapping[int | str | None, Key]:
            """identity -> the key it was synced at, for the identities of ``places``
            (identity -> key now) synced elsewhere than where they are now."""
            ...

        def identities(self) -> Iterable[tuple[object, Key]]:
            """``(identity, key)`` of every node synced last time."""
            ...


class MemoryHistory:
    """An in-memory history (tests, and a daemon's known state)."""

    def __init__(self, entries: Mapping[object, tuple[Key, Node]] | None = None) -> None:
        self.entries: dict[object, tuple[Key, Node]] = dict(entries or {})

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> MemoryHistory:
        return cls(
            {n.identity: (k, n) for k, n in snapshot.nodes.items() if n.identity is not None}
        )

    def lookup_many(
        self, identities: Iterable[int | str | None]
    ) -> dict[int | str | None, tuple[Key, Node]]:
        out = {}
        for ident in identities:
            hit = self.entries.get(ident)
            if hit is not None:
                out[ident] = hit
        return out

    def moved_from(
        self, places: Mapping[int | str | None, Key]
    ) -> dict[int | str | None, Key]:
        out = {}
        for ident, key in places.items():
            hit = self.entries.get(ident)
            if hit is not None and hit[0] != key:
                out[ident] = hit[0]
        return out

    def identities(self) -> list[tuple[object, Key]]:
        return [(i, k) for i, (k, _) in self.entries.items()]


class _Matcher:
    """Builds the destination -> source matching; see the module docstring.

    Nodes whose key and payload are the same on both sides (the vast majority on a
    re-sync) are matched *implicitly*: they cost one comparison and are never stored.
    ``open_src``/``open_dst`` hold every other key: new, gone, changed, and the equal
    ones that lost their implicit match because an ancestor moved or was replaced.
    """

    def __init__(
        self,
        src: Mapping[Key, Node],
        dst: Mapping[Key, Node],
        source: Snapshot,
        destination: Snapshot,
        digest: Digest | None,
        changed: list[Key],
        new: list[Key],
        gone: list[Key],
        pinned: set[Key],
    ) -> None:
        self.src = src
        self.dst = dst
        self.source = source
        self.destination = destination
        self.digest = digest
        self.match: dict[Key, Key] = {}  # destination key -> source key (explicit)
        self.claimed: dict[Key, Key] = {}  # source key -> destination key (explicit)
        self.changed = changed
        self.open_src: set[Key] = {*new, *changed}
        self.open_dst: set[Key] = {*gone, *changed}
        self.hash_budget = HASH_BUDGET
        self.pinned = pinned  # unreadable keys and their ancestors: they keep their place
        self.by_evidence: set[Key] = set()  # destination keys matched by identity or content
        self.history: HistoryView | None = None

    # -- bookkeeping -------------------------------------------------------------------
    def pair(self, d: Key, s: Key) -> None:
        self.match[d] = s
        self.claimed[s] = d

    def unpair(self, d: Key) -> None:
        s = self.match.pop(d)
        del self.claimed[s]

    def target(self, d: Key) -> Key | None:
        """The source key destination node ``d`` becomes, or None (it is deleted)."""
        t = self.match.get(d)
        if t is not None or d in self.open_dst:
            return t
        return d if d in self.dst else None

    def is_free(self, s: Key) -> bool:
        """True when no destination node becomes source node ``s`` (yet)."""
        return s in self.open_src and s not in self.claimed

    def _same_digest(self, s: Key, d: Key, size: int) -> bool:
        if self.digest is None or self.hash_budget < 2 * size:
            return False
        self.hash_budget -= 2 * size
        a = self.digest("source", s)
        return a is not None and a == self.digest("destination", d)

    # -- 1. identity ---------------------------------------------------------------------
    def by_identity(
        self, history: HistoryView, keys: Iterable[Key] | None = None, *, in_place: bool = False
    ) -> None:
        """Pair source nodes with the destination key the history says they were synced
        to. ``in_place``: also when that is the same key (its parent moved away, so the
        node must come back: a move as well)."""
        self.history = history
        src, dst = self.src, self.dst
        # the roots are matched already
        candidates = sorted(k for k in (self.open_src if keys is None else keys) if k)
        while candidates:
            idents = [src[s].identity for s in candidates if src[s].identity is not None]
            known = history.lookup_many(idents) if idents else {}
            reopened: list[Key] = []
            for s in candidates:
                node = src[s]
                hit = known.get(node.identity)
                if hit is None:
                    continue
                k1, synced = hit
                if k1 == ROOT or k1 in self.match or k1 not in dst:
                    continue
                if k1 == s and not (in_place and s not in self.claimed):
                    continue
                if k1 in self.pinned or s in self.pinned:
                    continue  # what holds an unreadable part neither moves nor is replaced
                there = dst[k1]
                if there.kind != node.kind or there.kind != synced.kind:
                    continue
                # Trust the history only while the destination still holds what was synced
                if not same_content(synced, there):
                    continue
                still = src.get(k1)
                if k1 != s and still is not None and still.identity == node.identity:
                    continue  # a second name for the same node (hard link): not a move
                if k1 not in self.open_dst:
                    # k1 looked unchanged, but another node now lives there: reopen it
                    # (and look up where that node came from, in the next round)
                    self.open_dst.add(k1)
                    if still is not None and k1 not in self.open_src:
                        self.open_src.add(k1)
                        reopened.append(k1)
                self.pair(k1, s)
                self.by_evidence.add(k1)
                # A node that changed parents: its new parent may itself have moved
                # while looking unchanged in place (two LDAP OUs swapped carry equal
                # payloads); look it up too, so the move is the parent's, not each
                # child's.
                up = s[:-1]
                if up and k1[:-1] != up and up not in self.open_src and up in dst:
                    self.open_src.add(up)
                    self.open_dst.add(up)
                    reopened.append(up)
            candidates = reopened

    # -- 2, 3. same place, and relocation below moved directories -------------------------
    def by_place(self) -> None:
        src, dst, match, claimed = self.src, self.dst, self.match, self.claimed
        moved = [d for d, s in match.items() if d != s]
        # Destination directories whose children cannot keep their keys: moved away, or
        # their key taken over by another node. Their subtrees are reopened.
        disturbed = [d for d in moved if dst[d].kind in CONTAINERS]
        disturbed += [
            s for s, d in claimed.items() if s != d and s in dst and dst[s].kind in CONTAINERS
        ]
        fresh: list[Key] = []
        for root in disturbed:
            for k in self.destination.walk(root):
                if k in dst:
                    self.open_dst.add(k)
                    if k in src:
                        self.open_src.add(k)
                        if k not in claimed:
                            fresh.append(k)
        if fresh and self.history is not None:
            # a node that looked unchanged below a directory that moves away may be the
            # very node the source still has there: it comes back (a move, not a copy)
            self.by_identity(self.history, fresh, in_place=True)
        # Changed nodes keep their key when the kind allows and no evidence says otherwise
        for d in sorted(self.open_dst, key=len):
            if d in match or d in claimed or d not in src:
                continue
            if src[d].kind == dst[d].kind and (not d or self.target(d[:-1]) == d[:-1]):
                self.pair(d, d)
        for d in sorted(moved, key=len):
            self.relocate(d)

    def relocate(self, root: Key) -> None:
        """Descendants of a matched directory keep their place relative to it."""
        if self.dst[root].kind not in CONTAINERS:
            return
        src, dst, match = self.src, self.dst, self.match
        stack = [root]
        while stack:
            p = stack.pop()
            target_parent = match.get(p)
            for c in self.destination.children(p):
                if c in match or c not in dst:
                    continue  # explicit evidence elsewhere, or frozen (incomplete scan)
                if target_parent is not None:
                    t = (*target_parent, c[-1])
                    sn = src.get(t)
                    if sn is not None and sn.kind == dst[c].kind and self.is_free(t):
                        self.pair(c, t)
                if dst[c].kind in CONTAINERS:
                    stack.append(c)

    # -- 4. heuristics, for a first run -------------------------------------------------
    def by_similarity(self) -> None:
        self._directories()
        self._files()

    def _directories(self) -> None:
        src, dst, source, destination = self.src, self.dst, self.source, self.destination
        gone = [d for d in self.open_dst if d not in self.match and dst[d].kind in CONTAINERS and d]
        if not gone:
            return
        new = sorted(
            (s for s in self.open_src if src[s].kind in CONTAINERS and s and s not in self.claimed),
            key=lambda k: (len(k), k),
        )
        if not new:
            return

        def signature(snap: Mapping[Key, Node], k: Key) -> tuple[str, str, int]:
            n = snap[k]
            return (k[-1], n.kind, n.size if n.kind == FILE else 0)

        index: dict[tuple[str, str, int], list[Key]] = {}
        sizes: dict[Key, int] = {}
        for d in gone:
            kids = [c for c in destination.children(d) if c in dst]
            sizes[d] = len(kids)
            for c in kids:
                index.setdefault(signature(dst, c), []).append(d)
        for s in new:
            if s in self.claimed:
                continue  # matched meanwhile by relocation below a moved ancestor
            kids = [c for c in source.children(s) if c in src]
            if not kids:
                continue
            votes: dict[Key, int] = {}
            for c in kids:
                holders = index.get(signature(src, c), ())
                if len(holders) > COMMON_SIGNATURE:
                    continue  # "__init__.py" in every package says nothing about which
                for d in holders:
                    if d not in self.match:
                        votes[d] = votes.get(d, 0) + 1
            best: tuple[float, bool, Key] | None = None
            for d, shared in votes.items():
                dice = 2 * shared / (len(kids) + sizes[d])
                if dice >= DICE_THRESHOLD:
                    cand = (dice, d[-1] == s[-1], d)
                    if best is None or cand[:2] > best[:2]:
                        best = cand
            if best is not None:
                self.pair(best[2], s)
                self.relocate(best[2])

    def _files(self) -> None:
        src, dst, match, claimed = self.src, self.dst, self.match, self.claimed
        # Destination files that may have moved: unmatched, or matched in place to a
        # source file whose content differs (the two halves of a swap).
        pool: dict[tuple[int, int], list[Key]] = {}
        by_size: dict[int, list[Key]] = {}
        changed_here: set[Key] = set()
        for d in sorted(self.open_dst):
            n = dst[d]
            if n.kind != FILE or d in self.pinned:
                continue  # (what keeps its place: the context of a partial rescan, ...)
            s = match.get(d)
            if s is None:
                pool.setdefault((n.size, n.mtime_ns), []).append(d)
                by_size.setdefault(n.size, []).append(d)
            elif d not in self.by_evidence and not same_content(src[s], n):
                # matched only by place (same key, or relocated with its directory)
                pool.setdefault((n.size, n.mtime_ns), []).append(d)
                changed_here.add(d)
        if not pool:
            return
        changed_src = {match[d] for d in changed_here}
        wanted = sorted(
            s
            for s in self.open_src
            if src[s].kind == FILE
            and (s not in claimed or s in changed_src)
            and s not in self.pinned
        )
        for s in wanted:
            if s in claimed and s not in changed_src:
                continue
            n = src[s]

            def free(d: Key, s: Key = s) -> bool:
                m = match.get(d)
                return m != s and (m is None or d in changed_here)

            exact = _first(pool.get((n.size, n.mtime_ns), ()), free, HASH_CANDIDATES)
            choice: Key | None = None
            if exact and self.digest is not None:
                # Same size and mtime under another name is a move only if the content
                # agrees too (a different file can share both); same name first.
                for d in sorted(exact, key=lambda d: (d[-1] != s[-1], d)):
                    if self._same_digest(s, d, n.size):
                        choice = d
                        break
            elif exact:  # no way to read content (a pure diff without an oracle)
                named = [d for d in exact if d[-1] == s[-1]]
                choice = min(named or exact)
            elif s not in claimed and n.size > 0 and self.digest is not None:
                # Same content under another mtime: only for a plain create, never to
                # second-guess an ordinary in-place modification.
                cands = _first(
                    by_size.get(n.size, ()), lambda d: free(d) and d not in match,
                    HASH_CANDIDATES,
                )
                for d in sorted(cands, key=lambda d: (d[-1] != s[-1], d)):
                    if self._same_digest(s, d, n.size):
                        choice = d
                        break
            if choice is None:
                continue
            if s in claimed:  # s was matched by place; its old partner is free again
                changed_here.discard(claimed[s])
                self.unpair(claimed[s])
            if choice in match:  # the chosen one was matched by place; its target frees up
                changed_src.discard(match[choice])
                self.unpair(choice)
            changed_here.discard(choice)
            self.pair(choice, s)
            self.by_evidence.add(choice)
            dn = dst[choice]
            pool[(dn.size, dn.mtime_ns)].remove(choice)  # taken: later lookups skip it


def diff(
    source: Snapshot,
    destination: Snapshot,
    history: HistoryView | None = None,
    *,
    checksum: bool = False,
    digest: Digest | None = None,
    prefetch: Callable[[list[Key]], None] | None = None,
    delete: bool = True,
    moves: bool = True,
    replace: bool = True,
    parents_witness: bool = False,
) -> list[Change]:
    """The changes that make ``destination`` equal to ``source``.

    Nodes equal on both sides are still matched by identity when the history places
    them elsewhere (two names swapped, the payloads ending equal: two empty OUs, two
    identical files). ``parents_witness``: a rename changes the payload of the source's
    containers it leaves and enters (a directory's mtime), so only the children of
    containers whose payload differs can have moved, and a no-op costs nothing more;
    else every node is checked against the history (one read of it).

    Pure given its inputs (``digest`` is a read-only oracle over the two trees;
    ``prefetch(keys)``, where given, warms it for many keys together). With
    ``delete=False`` no move is inferred and destination nodes are removed only where
    a source node of another kind needs their key (a type change); with
    ``replace=False`` not even then: such a source node is left out.
    Keys under an ``incomplete`` key or a ``mounts`` key of either snapshot are left
    alone; ``partial``
    keys (the context of a partial rescan) are at most updated.
    """
    src, dst = source.nodes, destination.nodes
    mounts = dict.fromkeys(source.mounts | destination.mounts, "")
    if mounts:  # -x: what is below a mount point not crossed is not this run's
        src = _only(src, lambda k: not _strictly_under_any(k, mounts))
        dst = _only(dst, lambda k: not _strictly_under_any(k, mounts))
    frozen = {**source.incomplete, **destination.incomplete}
    if frozen:
        # Nothing at or below a key that could not be read is touched: kept as it is
        # where both sides have it, ignored where one side has no node for it.
        full_src = src
        src = _only(src, lambda k: not _strictly_under_any(k, frozen))
        dst = _only(
            dst,
            lambda k: not _strictly_under_any(k, frozen) and (k not in frozen or k in full_src),
        )
    if checksum and digest is None:
        raise ValueError("checksum=True needs a digest oracle")

    # One pass sorts every key: equal (the common case, never stored), changed, new.
    new: list[Key] = []
    changed: list[Key] = []
    same_size: list[Key] = []
    gone: list[Key] | None = None
    if (
        isinstance(src, Rows) and isinstance(dst, Rows)
        and isinstance(src.rows, Table) and isinstance(dst.rows, Table)
    ):  # two whole scans' tables: compared listing by listing (``Table.differing``)
        new, changed, same_size, gone = src.rows.differing(dst.rows, checksum)
    elif isinstance(src, Rows) and isinstance(dst, Rows):
        # the hot loop of a re-sync: rows compare as payloads without building a Node
        rget = dst.rows.get
        for k, r in src.rows.items():
            dr = rget(k)
            if dr is None:
                new.append(k)
            elif dr[:5] != r[:5] or dr[6:] != r[6:]:  # not same_row, inline
                changed.append(k)
            elif checksum and r[0] == FILE:
                same_size.append(k)
    else:
        dget = dst.get
        for k, n in src.items():
            dn = dget(k)
            if dn is None:
                new.append(k)
            elif dn != n:
                changed.append(k)
            elif checksum and n.kind == FILE:
                same_size.append(k)
    if gone is None:
        gone = [k for k in dst.keys() - src.keys()] if len(dst) + len(new) != len(src) else []
    if checksum:
        assert digest is not None
        if prefetch is not None and same_size:
            prefetch(same_size)  # together: one round trip over a link, not one per file
        # presumed-equal files are equal only if their content is
        changed += [k for k in same_size if digest("source", k) != digest("destination", k)]
    for k in frozen:
        if k in changed:
            changed.remove(k)
    if history is not None and moves and delete:
        changed += [
            k for k in _moved_in_place(
                source, src, dst, history, changed, new, parents_witness=parents_witness)
            if k not in frozen
        ]
    if not (new or changed or gone):
        return []

    pinned = {k[:i] for k in frozen for i in range(len(k) + 1)}
    context = source.partial | destination.partial
    pinned |= context
    m = _Matcher(src, dst, source, destination, digest, changed, new, gone, pinned)
    if moves and delete:
        if history is not None:
            m.by_identity(history)
        m.by_place()
        m.by_similarity()
    else:
        m.by_place()
    match = m.match

    changes: list[Change] = []
    for d, s in match.items():
        old, node = dst[d], src[s]
        if d and (d[-1] != s[-1] or m.target(d[:-1]) != s[:-1]):
            changes.append(Change(op=MOVE, key=d, to=s, kind=node.kind, node=node, old=old))
        if s in frozen:
            continue
        content = _content_differs(node, old, s, d, checksum, digest)
        if content or node != old:
            changes.append(
                Change(op=UPDATE, key=s, kind=node.kind, node=node, old=old, content=content)
            )
    keep: set[Key] = set()  # directories holding excluded nodes, and their ancestors
    for k in destination.holds_excluded:
        keep.update(k[:i] for i in range(len(k) + 1))
    for s in sorted(m.open_src):
        if s in m.claimed or (s in keep and src[s].kind != dst[s].kind) or s in context:
            continue
        if not replace and _needed(s, src, dst):
            continue  # it would take the place of a destination node of another kind
        changes.append(Change(op=CREATE, key=s, kind=src[s].kind, node=src[s]))
    for d in sorted(m.open_dst):
        if d in match or d in keep or d in context:
            continue
        if not delete and (not replace or not _needed(d, src, dst)):
            continue
        changes.append(Change(op=DELETE, key=d, kind=dst[d].kind, old=dst[d]))
    return changes


def _moved_in_place(
    source: Snapshot,
    src: Mapping[Key, Node],
    dst: Mapping[Key, Node],
    history: HistoryView,
    changed: list[Key],
    new: list[Key],
    *,
    parents_witness: bool,
) -> list[Key]:
    """Keys whose node is equal on both sides but that the history says came from
    another key (its identity was synced there): they are compared as changed, so that
    the matching by identity sees them."""
    if parents_witness:
        open_keys = {*changed, *new}
        kids = [
            c for k in changed if src[k].kind in CONTAINERS
            for c in source.children(k) if c not in open_keys and c in src and c in dst
        ]
        if not kids:
            return []
        idents = {src[c].identity: c for c in kids if src[c].identity is not None}
        return sorted(idents[i] for i in history.moved_from(idents))
    skip = {*changed, *new}
    if len(src) <= LOOKUP_LIMIT:  # a region (a watch round): its identities only
        idents = {
            n.identity: k for k, n in src.items()
            if n.identity is not None and k not in skip and k in dst
        }
        return sorted(idents[i] for i in history.moved_from(idents)) if idents else []
    # a whole tree: one pass over the history; identities compare as text (the history
    # keeps an identity beyond 64 bits as text)
    if isinstance(src, Rows):  # (no Node built per key)
        here = {str(r[5]): k for k, r in src.rows.items() if r[5] is not None}
    else:
        here = {str(n.identity): k for k, n in src.items() if n.identity is not None}
    out = []
    for ident, k1 in history.identities():
        s = here.get(str(ident))
        if s is not None and s != k1 and s not in skip and s in dst:
            out.append(s)
    return sorted(out)


def _content_differs(
    new: Node, old: Node, s: Key, d: Key, checksum: bool, digest: Digest | None
) -> bool:
    if new.kind != FILE:
        return not same_content(new, old)
    if new.size != old.size:
        return True
    if checksum and digest is not None:
        return digest("source", s) != digest("destination", d)
    return new.mtime_ns != old.mtime_ns


def _needed(key: Key, src: Mapping[Key, Node], dst: Mapping[Key, Node]) -> bool:
    """True when ``key`` or one of its ancestors is a source node and a destination
    node of another kind (a type change: with deletes off, the destination node still
    goes, and what lives below it)."""
    for i in range(1, len(key) + 1):
        k = key[:i]
        sn, dn = src.get(k), dst.get(k)
        if sn is not None and dn is not None and sn.kind != dn.kind:
            return True
    return False


def _first(bucket: Iterable[Key], ok: Callable[[Key], bool], limit: int) -> list[Key]:
    """Up to ``limit`` entries of ``bucket`` that pass ``ok`` (bounded work per lookup:
    thousands of files sharing one size must not make matching quadratic)."""
    out: list[Key] = []
    for d in bucket:
        if ok(d):
            out.append(d)
            if len(out) >= limit:
                break
    return out


def _only(nodes: Mapping[Key, Node], keep: Callable[[Key], bool]) -> Mapping[Key, Node]:
    if isinstance(nodes, Rows):
        return Rows({k: r for k, r in nodes.rows.items() if keep(k)})
    return {k: n for k, n in nodes.items() if keep(k)}


def _strictly_under_any(key: Key, roots: Mapping[Key, str]) -> bool:
    return any(key[:i] in roots for i in range(len(key)))


def relinks(source: Snapshot, destination: Snapshot, changes: Iterable[Change]) -> list[Change]:
    """With ``--hard-links``: source files that are one inode, held on the destination
    as separate copies (an earlier run without -H, a link made on the source since),
    become one again: an update with content of each copy that is not the first name's
    inode, which the apply makes a link (nothing copied). Names already changed are
    left to the apply (it links them too); a name whose copy differs from the source,
    or whose destination identity is unknown, is not touched here. Pure."""
    src, dst = source.nodes, destination.nodes
    touched = {c.key for c in changes} | {c.to for c in changes if c.to is not None}
    items = (
        ((k, r[0], r[5]) for k, r in src.rows.items()) if isinstance(src, Rows)
        else ((k, n.kind, n.identity) for k, n in src.items())
    )
    groups: dict[object, list[Key]] = {}
    for key, kind, ident in items:
        if kind == FILE and ident is not None:
            groups.setdefault(ident, []).append(key)
    out: list[Change] = []
    for keys in groups.values():
        if len(keys) < 2:
            continue
        first: object = None
        for k in sorted(keys):
            there = dst.get(k)
            if k in touched or there is None or there.identity is None or there != src[k]:
                continue
            if first is None:
                first = there.identity
            elif there.identity != first:
                out.append(Change(op=UPDATE, key=k, kind=FILE, node=src[k], old=there,
                                  content=True))
    return out
