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

from collections.abc import Callable, Iterable

import attrs

from .backend import Backend
from .errors import SafetyError
from .model import DIR, Key, Node, Snapshot

Exclude = Callable[[Key, bool], bool]


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
    context: set[Key] = set(region.shallow)
    for k in (*region.deep, *region.shallow):
        context.update(k[:i] for i in range(len(k)))
    for k in sorted(context, key=len):
        if k and (k[:-1] not in nodes or nodes[k[:-1]].kind != DIR):
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
        if parent is None or parent.kind != DIR or _under_any(k, snap.incomplete.keys()):
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
