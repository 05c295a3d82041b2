"""Partial comparisons: rescan only the dirty subtrees of both trees (SPEC section 6).

A ``Region`` names what changed: *deep* keys (anything at or below may have changed:
rescan the whole subtree) and *shallow* keys (only the node itself: its content or
metadata). Both trees are rescanned over the same region, so diff sees the same part of
each; the ancestors of every region key are stat'ed too and marked ``partial`` (diff may
update their metadata, never move, replace or delete them).

When an ancestor or a shallow key differs in presence or kind between the two trees
(a directory created or replaced while its events were still on the way), the region
is *promoted*: that key becomes deep and the region is rescanned. A region promoted to
the root is a full comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .backend import Backend
from .errors import SafetyError
from .history import _enc, _ident  # the history's own key order and identity form
from .model import DIR, ENTRY, Key, Node, Snapshot, fingerprint

Exclude = Callable[[Key, bool], bool]
CONTAINERS = (DIR, ENTRY)
"""Kinds that can have children (an LDAP entry can)."""


def _under_any(key: Key, roots: Iterable[Key] | set[Key] | frozenset[Key]) -> bool:
    """True when ``key`` or one of its ancestors is in ``roots`` (a set)."""
    return any(key[:i] in roots for i in range(len(key) + 1))  # type: ignore[operator]


@attrs.frozen
class Region:
    """The dirty part of a tree: ``deep`` subtrees and ``shallow`` single nodes.

    Normalised: no deep key below another, no shallow key at or below a deep one."""

    deep: frozenset[Key] = frozenset()
    shallow: frozenset[Key] = frozenset()

    @classmethod
    def of(cls, deep: Iterable[Key] = (), shallow: Iterable[Key] = ()) -> Region:
        kept: set[Key] = set()
        for k in sorted(set(deep), key=len):  # ancestors first: they absorb descendants
            if not _under_any(k, kept):
                kept.add(k)
        flat = {k for k in shallow if not _under_any(k, kept)}
        return cls(frozenset(kept), frozenset(flat))

    @property
    def full(self) -> bool:
        return () in self.deep

    def __bool__(self) -> bool:
        return bool(self.deep or self.shallow)

    def __len__(self) -> int:
        return len(self.deep) + len(self.shallow)

    def union(self, other: Region) -> Region:
        return Region.of(self.deep | other.deep, self.shallow | other.shallow)

    def promote(self, key: Key) -> Region:
        return Region.of({*self.deep, key}, self.shallow)

    def touches(self, key: Key) -> bool:
        """True when a change at ``key`` may make a comparison of this region stale: it
        is at or below a deep key, or it is (an ancestor of) a region key."""
        if _under_any(key, self.deep) or key in self.shallow:
            return True
        n = len(key)
        return any(k[:n] == key for k in self.deep) or any(k[:n] == key for k in self.shallow)


def scan_region(backend: Backend, region: Region, exclude: Exclude | None) -> Snapshot:
    """What ``backend`` holds over ``region``: the deep subtrees, the shallow nodes, and
    the ancestors of both (``partial``). Excluded keys count as absent."""
    nodes: dict[Key, Node] = {}
    snap = Snapshot(nodes=nodes)
    context: set[Key] = {(), *region.shallow}  # the root, always: is the tree there?
    for k in (*region.deep, *region.shallow):
        context.update(k[:i] for i in range(len(k)))
    for k in sorted(context, key=len):
        if k and (k[:-1] not in nodes or nodes[k[:-1]].kind not in CONTAINERS):
            continue  # under an absent node or a leaf: absent too
        try:
            node = backend.stat(k)
        except OSError as e:
            snap.incomplete[k] = e.strerror or str(e)
            continue
        if node is None:
            continue
        if k and exclude is not None and exclude(k, node.kind == DIR):
            snap.holds_excluded.add(k[:-1])
            continue
        nodes[k] = node
        snap.partial.add(k)
    for k in sorted(region.deep, key=len):
        parent = nodes.get(k[:-1])
        if (
            parent is None
            or parent.kind not in CONTAINERS
            or _under_any(k, snap.incomplete.keys())
        ):
            continue
        sub = backend.scan(k, exclude=exclude)
        node = sub.nodes.get(k)
        if node is not None and exclude is not None and exclude(k, node.kind == DIR):
            snap.holds_excluded.add(k[:-1])
            continue
        nodes.update(sub.nodes.items())
        snap.incomplete.update(sub.incomplete)
        snap.skipped.extend(sub.skipped)
        snap.holds_excluded.update(sub.holds_excluded)
    snap.partial.difference_update(region.deep)
    return snap


def _unsettled(region: Region, src: Snapshot, dst: Snapshot) -> Key | None:
    """The shallowest context key whose presence or kind differs between the two
    snapshots (it must be rescanned deep), or None."""
    for k in sorted(src.partial | dst.partial, key=len):
        if k in region.deep or k in src.incomplete or k in dst.incomplete:
            continue
        a, b = src.nodes.get(k), dst.nodes.get(k)
        if (a is None) != (b is None) or (a is not None and b is not None and a.kind != b.kind):
            return k
    return None


def scan_region_pair(
    source: Backend, destination: Backend, region: Region, exclude: Exclude | None
) -> tuple[Region, Snapshot, Snapshot]:
    """Scan ``region`` on both sides, promoting it until its context agrees. Returns
    the region actually compared (a promotion to the root is left to the caller: a full
    comparison, with its safety checks). Raises ``SafetyError`` when the source root is
    gone."""
    while True:
        src = scan_region(source, region, exclude)
        if () not in src.nodes and () not in src.incomplete:
            raise SafetyError(f"{source.url}: source root is gone; nothing done")
        dst = scan_region(destination, region, exclude)
        k = _unsettled(region, src, dst)
        if k is None:
            return region, src, dst
        region = region.promote(k)
        if region.full:
            return region, src, dst


def quick_pass(
    source: Backend, history: Any, exclude: Exclude | None, *, allow_empty_source: bool = False
) -> Region:
    """What changed on the source since the history was recorded, found by walking the
    source and the history side by side, both in key order (a stat-only pass: no content
    is read, the destination is not scanned, and nothing bigger than one directory
    listing per level is held). New, gone and replaced nodes are deep, changed ones
    shallow. Changes made by others on the destination are not seen here (a full
    comparison, ``--rescan-interval``, repairs those).

    Raises ``SafetyError`` when the source root is gone, or empty while the history is
    not (unless ``allow_empty_source``)."""
    deep: list[Key] = []
    shallow: list[Key] = []
    root = source.stat(())
    if root is None:
        raise SafetyError(f"{source.url}: source root is gone; nothing done")
    walk_sorted = getattr(source, "walk_sorted", None)
    if walk_sorted is not None:
        src_iter: Iterator[tuple[Key, Any]] = walk_sorted(exclude)
    else:  # a backend without an ordered walk: a scan, sorted (its size, in memory)
        snap = source.scan((), exclude=exclude)
        rows = [(k, _row(n)) for k, n in snap.nodes.items() if k]
        rows.sort(key=lambda kr: _enc(kr[0]))
        src_iter = iter(rows)
    top = [0, 0]  # entries right below the root: on the source, in the history
    src_iter = _counted(src_iter, top, 0)
    hist_iter = _counted(iter(history.walk()), top, 1)
    end = (None, None)
    h = next(hist_iter, end)
    if h[0] == ():
        if h[1] is None or _differs(_row(root), h[1]):
            shallow.append(())
        h = next(hist_iter, end)
    s = next(src_iter, end)
    skip_src: Key | None = None  # descendants of a deep key: already covered
    skip_hist: Key | None = None
    while s[0] is not None or h[0] is not None:
        sk, srow = s
        hk, hrow = h
        if sk is not None and skip_src is not None and sk[: len(skip_src)] == skip_src and (
            len(sk) > len(skip_src) or srow is None
        ):
            s = next(src_iter, end)
            continue
        if hk is not None and skip_hist is not None and hk[: len(skip_hist)] == skip_hist and (
            len(hk) > len(skip_hist)
        ):
            h = next(hist_iter, end)
            continue
        if sk is not None and srow is None:  # a listing that failed: nothing below is known
            deep.append(sk)
            skip_hist = sk
            s = next(src_iter, end)
            continue
        if sk is None:
            order = 1
        elif hk is None:
            order = -1
        else:
            a, b = _enc(sk), _enc(hk)
            order = (a > b) - (a < b)
        if order < 0:  # only on the source: new
            deep.append(sk)  # type: ignore[arg-type]
            skip_src = sk
            s = next(src_iter, end)
        elif order > 0:  # only in the history: gone (deleted or moved away)
            deep.append(hk)  # type: ignore[arg-type]
            skip_hist = hk
            h = next(hist_iter, end)
        else:
            assert sk is not None and hk is not None
            if srow[0] != hrow[0] or _ident(srow[5]) != hrow[5]:
                deep.append(sk)  # replaced: another node under the same name
                skip_src = skip_hist = sk
            elif _differs(srow, hrow):
                shallow.append(sk)
            s = next(src_iter, end)
            h = next(hist_iter, end)
    if top[0] == 0 and top[1] > 0 and not allow_empty_source:
        raise SafetyError(
            f"{source.url}: source is empty but the history of what was synced is not; "
            "refusing to delete everything (--allow-empty-source to allow it)"
        )
    return Region.of(deep, shallow)


def _counted(
    it: Iterator[tuple[Key, Any]], top: list[int], i: int
) -> Iterator[tuple[Key, Any]]:
    for k, r in it:
        if len(k) == 1 and r is not None:
            top[i] += 1
        yield k, r


def _row(node: Node) -> tuple[Any, ...]:
    fp = fingerprint(node.data) if node.kind == ENTRY else None
    return (node.kind, node.mode, node.size, node.mtime_ns, node.target, node.identity, fp)


def _differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Payloads differ: the row's first five fields, and an entry's fingerprint."""
    if tuple(a[:5]) != tuple(b[:5]):
        return True
    fa = a[6] if len(a) > 6 else None
    fb = b[6] if len(b) > 6 else None
    return fa != fb


# -- comparing two full scans by their directory digests ----------------------------------
Row = tuple[Any, ...]


def dirty_directories(src_digests: dict[Key, int], dst_digests: dict[Key, int]) -> list[Key]:
    """Directories on both sides whose listings differ (see ``FsBackend.scan``'s
    ``digests``). A directory on one side only is a child of one of these."""
    return [k for k, d in src_digests.items() if dst_digests.get(k, d) != d]


def listing_region(
    src: Snapshot,
    src_root: Row | None,
    dst_root: Row | None,
    dst_listings: dict[Key, list[tuple[str, Row]]],
) -> tuple[Region, dict[Key, Row]]:
    """What differs between two trees whose directories ``dst_listings`` lists (the
    destination's ``(name, row)`` children of each) differ, all others being equal: per
    child of such a directory, a node on one side only, of another kind, or a leaf
    whose payload differs, is deep (free to be matched elsewhere); a container whose
    payload differs is shallow (updated in place: its children are compared only where
    its own listing differs). Returns the region and the destination's rows of the
    children in it."""
    rows = src.nodes.rows  # type: ignore[attr-defined]  # a filesystem scan's Rows
    deep: list[Key] = []
    shallow: list[Key] = []
    theirs_in: dict[Key, Row] = {}
    if src_root is not None and dst_root is not None and src_root[:5] != dst_root[:5]:
        shallow.append(())
    for d, listing in dst_listings.items():
        theirs = dict(listing)
        pop = theirs.pop
        for c in src.children(d):
            b = pop(c[-1], None)
            if b is None:
                deep.append(c)
                continue
            a = rows[c]
            if a[:5] == b[:5]:
                continue
            theirs_in[c] = b
            if a[0] != b[0] or a[0] not in CONTAINERS:
                deep.append(c)
            else:
                shallow.append(c)
        for name, b in theirs.items():
            k = (*d, name)
            theirs_in[k] = b
            deep.append(k)
    return Region.of(deep, shallow), theirs_in


def context_keys(region: Region) -> set[Key]:
    """The root, the shallow keys, and every ancestor of a region key."""
    context: set[Key] = {(), *region.shallow}
    for k in (*region.deep, *region.shallow):
        context.update(k[:i] for i in range(len(k)))
    return context


def region_snapshot(
    rows: dict[Key, Row],
    region: Region,
    children: Callable[[Key], Iterable[Key]] | None = None,
) -> Snapshot:
    """The snapshot a ``scan_region`` of ``region`` would give, cut from the rows of a
    full scan (``rows`` holds at least the context and the deep subtrees; ``children``
    lists a key's children in it, an index of ``rows`` is built when not given). The
    context is ``partial``."""
    from .model import Rows

    if children is None:
        kids: dict[Key, list[Key]] = {}
        for k in rows:
            if k:
                kids.setdefault(k[:-1], []).append(k)
        children = lambda key: kids.get(key, ())  # noqa: E731
    nodes: dict[Key, Row] = {}
    partial: set[Key] = set()
    for k in sorted(context_keys(region), key=len):
        if k and (k[:-1] not in nodes or nodes[k[:-1]][0] not in CONTAINERS):
            continue
        row = rows.get(k)
        if row is not None:
            nodes[k] = row
            partial.add(k)
    for top in sorted(region.deep, key=len):
        parent = nodes.get(top[:-1])
        row = rows.get(top)
        if row is None or parent is None or parent[0] not in CONTAINERS:
            continue
        nodes[top] = row
        stack = [top]
        while stack:
            for c in children(stack.pop()):
                nodes[c] = rows[c]
                stack.append(c)
    partial.difference_update(region.deep)
    return Snapshot(nodes=Rows(nodes), partial=partial)
