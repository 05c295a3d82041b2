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

from collections.abc import Iterable, Iterator

from ._values import frozen
from .backend import stat_many
from .cancel import NEVER, Cancel
from .errors import SafetyError
from .filters import Exclude
from .model import CONTAINERS, DIR, Key, Node, Snapshot, data_digest

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any

    from .backend import Endpoint
    from .history import History


def _under_any(key: Key, roots: Iterable[Key] | set[Key] | frozenset[Key]) -> bool:
    """True when ``key`` or one of its ancestors is in ``roots`` (a set)."""
    return any(key[:i] in roots for i in range(len(key) + 1))


@frozen
class Region:
    """The dirty part of a tree: ``deep`` subtrees and ``shallow`` single nodes.

    Normalised: no deep key below another, no shallow key at or below a deep one.
    ``folded``: pairs of deep keys (source -> destination) known to be one directory
    moved with nothing below it changed (``quick_pass``): each is looked at as one node
    (``Snapshot.folded``), its subtree is not scanned. A pair is kept only while both
    keys stay tops of ``deep``."""

    deep: frozenset[Key] = frozenset()
    shallow: frozenset[Key] = frozenset()
    folded: tuple[tuple[Key, Key], ...] = ()

    @classmethod
    def of(
        cls, deep: Iterable[Key] = (), shallow: Iterable[Key] = (),
        folded: Iterable[tuple[Key, Key]] = (),
    ) -> Region:
        kept: set[Key] = set()
        for k in sorted(set(deep), key=len):  # ancestors first: they absorb descendants
            if not _under_any(k, kept):
                kept.add(k)
        flat = {k for k in shallow if not _under_any(k, kept)}
        pairs = tuple(sorted(
            (s, d) for s, d in set(folded)
            if s in kept and d in kept and s and d
            and not _under_any(s[:-1], kept) and not _under_any(d[:-1], kept)
        ))
        return cls(frozenset(kept), frozenset(flat), pairs)

    @property
    def full(self) -> bool:
        return () in self.deep

    def __bool__(self) -> bool:
        return bool(self.deep or self.shallow)

    def __len__(self) -> int:
        return len(self.deep) + len(self.shallow)

    def union(self, other: Region) -> Region:
        return Region.of(self.deep | other.deep, self.shallow | other.shallow,
                         (*self.folded, *other.folded))

    def promote(self, key: Key) -> Region:
        return Region.of({*self.deep, key}, self.shallow, self.folded)

    def unfolded(self) -> Region:
        """The same region with every subtree scanned whole."""
        return Region(self.deep, self.shallow)

    def touches(self, key: Key) -> bool:
        """True when a change at ``key`` may make a comparison of this region stale: it
        is at or below a deep key, or it is (an ancestor of) a region key."""
        if _under_any(key, self.deep) or key in self.shallow:
            return True
        n = len(key)
        return any(k[:n] == key for k in self.deep) or any(k[:n] == key for k in self.shallow)


def scan_region(
    endpoint: Endpoint, region: Region, exclude: Exclude | None, *, cancel: Cancel = NEVER,
    folded: dict[Key, Key] | None = None,
) -> Snapshot:
    """What ``endpoint`` holds over ``region``: the deep subtrees, the shallow nodes, and
    the ancestors of both (``partial``). Excluded keys count as absent. ``folded``: deep
    keys of this side looked at alone (a directory, without its subtree: the snapshot's
    ``folded``), with their keys on the other side."""
    backend = endpoint.backend
    nodes: dict[Key, Node] = {}
    snap = Snapshot(nodes=nodes)
    context: set[Key] = {(), *region.shallow}  # the root, always: is the tree there?
    for k in (*region.deep, *region.shallow):
        context.update(k[:i] for i in range(len(k)))
    by_depth: dict[int, list[Key]] = {}
    for k in context:
        by_depth.setdefault(len(k), []).append(k)
    for depth in sorted(by_depth):
        # a level at a time, together (over a link: one round trip per level)
        level = [k for k in sorted(by_depth[depth])
                 if not k or (k[:-1] in nodes and nodes[k[:-1]].kind in CONTAINERS)]
        for k, node in stat_many(endpoint, level).items():
            if isinstance(node, OSError):
                snap.incomplete[k] = node.strerror or str(node)
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
        cancel.check()
        if folded and k in folded:
            try:
                node = backend.stat(k)
            except OSError as e:
                snap.incomplete[k] = e.strerror or str(e)
                continue
            if node is not None and node.kind == DIR:
                nodes[k] = node
                snap.folded[k] = folded[k]
                continue
        sub = backend.scan(k, exclude=exclude, cancel=cancel)
        node = sub.nodes.get(k)
        if node is not None and exclude is not None and exclude(k, node.kind == DIR):
            snap.holds_excluded.add(k[:-1])
            continue
        nodes.update(sub.nodes.items())
        snap.incomplete.update(sub.incomplete)
        snap.skipped.extend(sub.skipped)
        snap.holds_excluded.update(sub.holds_excluded)
        snap.mounts.update(sub.mounts)
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
    source: Endpoint,
    destination: Endpoint,
    region: Region,
    exclude: Exclude | None,
    *,
    cancel: Cancel = NEVER,
    dst_exclude: Exclude | bool | None = True,
) -> tuple[Region, Snapshot, Snapshot]:
    """Scan ``region`` on both sides, promoting it until its context agrees. Returns
    the region actually compared (a promotion to the root is left to the caller: a full
    comparison, with its safety checks). Raises ``SafetyError`` when the source root is
    gone. ``dst_exclude`` is what the destination's scans leave out (True: ``exclude``;
    None with ``--delete-excluded``)."""
    dexclude = exclude if isinstance(dst_exclude, bool) else dst_exclude
    while True:
        mine = dict(region.folded)
        src = scan_region(source, region, exclude, cancel=cancel, folded=mine)
        if () not in src.nodes and () not in src.incomplete:
            raise SafetyError(f"{source.url}: source root is gone; nothing done")
        theirs = {d: s for s, d in region.folded}
        dst = scan_region(destination, region, dexclude, cancel=cancel, folded=theirs)
        if len(src.folded) != len(mine) or len(dst.folded) != len(theirs):
            region = region.unfolded()  # not two directories after all: scan them whole
            continue
        k = _unsettled(region, src, dst)
        if k is None:
            return region, src, dst
        region = region.promote(k)
        if region.full:
            return region, src, dst


def quick_pass(
    source: Endpoint,
    history: History,
    exclude: Exclude | None,
    *,
    allow_empty_source: bool = False,
    cancel: Cancel = NEVER,
) -> Region:
    """What changed on the source since the history was recorded, found by walking the
    source and the history side by side, both in key order (a stat-only pass: no content
    is read, the destination is not scanned, and nothing bigger than one directory
    listing per level is held). New, gone and replaced nodes are deep, changed ones
    shallow. Changes made by others on the destination are not seen here (a full
    comparison, ``--rescan-interval``, repairs those).

    A new directory whose identity is that of a gone one, with the same nodes below it
    (relative keys, payloads and identities, as a running hash of each subtree), is one
    directory moved with nothing changed below it: the pair is ``folded`` in the region
    (compared as one node on each side).

    Raises ``SafetyError`` when the source root is gone, or empty while the history is
    not (unless ``allow_empty_source``)."""
    deep: list[Key] = []
    shallow: list[Key] = []
    from .history import encode_key, identity_form

    root = source.backend.stat(())
    if root is None:
        raise SafetyError(f"{source.url}: source root is gone; nothing done")
    walker = source.features.sorted_walk
    if walker is not None:
        src_iter: Iterator[tuple[Key, Any]] = (
            kr for kr in walker.walk_sorted(exclude, cancel=cancel)
            if kr[1] is None or len(kr[1]) > 1  # special files are not synced
        )
    else:  # a backend without an ordered walk: a scan, sorted (its size, in memory)
        snap = source.backend.scan((), exclude=exclude, cancel=cancel)
        rows = [(k, _row(n)) for k, n in snap.nodes.items() if k]
        rows.sort(key=lambda kr: encode_key(kr[0]))
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
    # a new source directory, a gone one of the history: [identity, hash of what is
    # below it, node count, all of it readable]; ``fold_*``: the one being skipped
    new_dirs: dict[Key, list[Any]] = {}
    gone_dirs: dict[Key, list[Any]] = {}
    fold_src: list[Any] | None = None
    fold_hist: list[Any] | None = None
    while s[0] is not None or h[0] is not None:
        sk, srow = s
        hk, hrow = h
        if sk is not None and skip_src is not None and sk[: len(skip_src)] == skip_src and (
            len(sk) > len(skip_src) or srow is None
        ):
            if fold_src is not None:
                if srow is None:
                    fold_src[3] = False
                else:
                    fold_src[1] = hash((fold_src[1], sk[len(skip_src):], _payload(srow),
                                        identity_form(srow[5])))
                    fold_src[2] += 1
            s = next(src_iter, end)
            continue
        if hk is not None and skip_hist is not None and hk[: len(skip_hist)] == skip_hist and (
            len(hk) > len(skip_hist)
        ):
            if fold_hist is not None and hrow is not None:
                fold_hist[1] = hash((fold_hist[1], hk[len(skip_hist):], _payload(hrow),
                                     hrow[5]))
                fold_hist[2] += 1
            h = next(hist_iter, end)
            continue
        if sk is not None and srow is None:  # a listing that failed: nothing below is known
            deep.append(sk)
            skip_hist, fold_hist = sk, None
            s = next(src_iter, end)
            continue
        if sk is None:
            order = 1
        elif hk is None:
            order = -1
        else:
            a, b = encode_key(sk), encode_key(hk)
            order = (a > b) - (a < b)
        if order < 0:  # only on the source: new
            assert sk is not None and srow is not None
            deep.append(sk)
            skip_src, fold_src = sk, None
            if srow[0] == DIR and srow[5] is not None:
                fold_src = new_dirs[sk] = [identity_form(srow[5]), 0, 0, True]
            s = next(src_iter, end)
        elif order > 0:  # only in the history: gone (deleted or moved away)
            assert hk is not None and hrow is not None
            deep.append(hk)
            skip_hist, fold_hist = hk, None
            if hrow[0] == DIR and hrow[5] is not None:
                fold_hist = gone_dirs[hk] = [hrow[5], 0, 0, True]
            h = next(hist_iter, end)
        else:
            assert sk is not None and hk is not None and srow is not None and hrow is not None
            if srow[0] != hrow[0] or identity_form(srow[5]) != hrow[5]:
                deep.append(sk)  # replaced: another node under the same name
                skip_src = skip_hist = sk
                fold_src = fold_hist = None
            elif _differs(srow, hrow):
                shallow.append(sk)
            s = next(src_iter, end)
            h = next(hist_iter, end)
    if top[0] == 0 and top[1] > 0 and not allow_empty_source:
        raise SafetyError(
            f"{source.url}: source is empty but the history of what was synced is not; "
            "refusing to delete everything (--allow-empty-source to allow it)"
        )
    was = {v[0]: k for k, v in gone_dirs.items() if v[3]}
    folded = [
        (k, d) for k, v in new_dirs.items()
        if v[3] and (d := was.get(v[0])) is not None and gone_dirs[d][1:3] == v[1:3]
    ]
    return Region.of(deep, shallow, folded)


def _counted(
    it: Iterator[tuple[Key, Any]], top: list[int], i: int
) -> Iterator[tuple[Key, Any]]:
    for k, r in it:
        if len(k) == 1 and r is not None:
            top[i] += 1
        yield k, r


def _row(node: Node) -> tuple[Any, ...]:
    fp = data_digest(node.kind, node.data)
    return (node.kind, node.mode, node.size, node.mtime_ns, node.target, node.identity, fp)


def _payload(r: tuple[Any, ...]) -> tuple[Any, ...]:
    """What ``_differs`` compares of a row (a scanned one or the history's), as one
    value: two rows with equal payloads do not differ (a scanned row's data is turned
    into the digest the history keeps, as ``_differs`` does)."""
    data = r[6] if len(r) > 6 else None
    if data is not None and type(data) is not str:
        data = data_digest(r[0], data)
    return (*r[:5], data)


def _differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Payloads differ: the row's first five fields, and the digest of its data (an
    entry's fingerprint; a file's owner, group, attributes) the history keeps."""
    if tuple(a[:5]) != tuple(b[:5]):
        return True
    fa = a[6] if len(a) > 6 else None
    fb = b[6] if len(b) > 6 else None
    if fa is not None and type(fa) is not str:  # a scanned row's data, not a digest
        fa = data_digest(a[0], fa)
    return fa != fb


def context_keys(region: Region) -> set[Key]:
    """The root, the shallow keys, and every ancestor of a region key."""
    context: set[Key] = {(), *region.shallow}
    for k in (*region.deep, *region.shallow):
        context.update(k[:i] for i in range(len(k)))
    return context
