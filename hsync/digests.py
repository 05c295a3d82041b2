"""A re-sync compared by directory digests (both endpoints ``DigestScanning``).

Each side scans its whole tree with one digest per directory (``DigestSummary``): two
directories with equal digests hold the same names with the same payloads. Only the
directories whose digests differ are listed from both sides and compared; what differs
in them becomes a ``Region`` (a node on one side only, or of another kind, or a leaf
whose payload differs: deep; a container whose payload differs: shallow), and the two
region snapshots are what diff sees. The rest is equal on both sides by construction.

This needs a complete history: the history is then kept up to date from the changes
alone, and moves are found by identity. Where the region's source nodes came from (by
the history's identities) is compared too, whole (``_with_origins``), so that a rename,
a swap or a rotation is matched by identity as in a full comparison. Everything here
goes through the ``DigestScan`` handles: the scans may run in a child process or on the
far side of a link, and only what differs is shipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .backend import DigestScan
from .history import History
from .model import CONTAINERS, Key, Row, Rows, Snapshot, same_row
from .region import Region, context_keys
from .session import PairSession

DIRTY_SHARE = 0.5
"""Past this share of directories with differing listings, the whole scans are
compared instead."""


def compare_by_digests(
    session: PairSession, here: DigestScan, there: DigestScan, history: History
) -> tuple[Snapshot, Snapshot] | None:
    """The source's and the destination's region snapshots over what differs, or None
    when a full comparison is due (something unreadable, or most of it differs)."""
    mine, theirs = here.summary(), there.summary()
    if mine.incomplete or theirs.incomplete:
        return None  # what a full comparison does with those is not repeated here
    src_root = mine.root
    if src_root is None:  # cannot happen after a summary without incomplete parts
        return None
    session.check_source({}, mine.count, theirs.count)
    dirty = dirty_directories(mine.digests, theirs.digests)
    if len(dirty) > DIRTY_SHARE * max(1, len(mine.digests)):
        return None
    ours = here.listings(dirty) if dirty else {}
    region, listed = listing_region(
        src_root, theirs.root, ours, there.listings(dirty) if dirty else {}
    )
    region = _with_origins(region, here, dirty, history)
    context = context_keys(region)
    src_part = region_snapshot(here.rows(keys=context, subtrees=region.deep), region)
    src_part.skipped = list(mine.skipped)
    src_part.holds_excluded = set(mine.held)
    src_part.scanned = mine.count
    src_part.whole = here  # its rows live as long as the part (freeing them costs)
    need = [k for k in context if k not in listed]
    listed.update(there.rows(keys=need, subtrees=region.deep))
    dst_part = region_snapshot(listed, region)
    dst_part.skipped = list(theirs.skipped)
    dst_part.holds_excluded = set(theirs.held)
    dst_part.scanned = theirs.count
    return src_part, dst_part


def dirty_directories(src_digests: dict[Key, int], dst_digests: dict[Key, int]) -> list[Key]:
    """Directories on both sides whose listings differ. A directory on one side only is
    a child of one of these."""
    return [k for k, d in src_digests.items() if dst_digests.get(k, d) != d]


def listing_region(
    src_root: Row | None,
    dst_root: Row | None,
    src_listings: dict[Key, list[tuple[str, Row]]],
    dst_listings: dict[Key, list[tuple[str, Row]]],
) -> tuple[Region, dict[Key, Row]]:
    """What differs between two trees whose directories ``*_listings`` list (the
    ``(name, row)`` children of each directory whose digests differ), all others being
    equal: per child, a node on one side only, of another kind, or a leaf whose payload
    differs, is deep (free to be matched elsewhere); a container whose payload differs
    is shallow (updated in place: its children are compared only where its own listing
    differs). Returns the region and the destination's rows of the children in it."""
    deep: list[Key] = []
    shallow: list[Key] = []
    theirs_in: dict[Key, Row] = {}
    if src_root is not None and dst_root is not None and not same_row(src_root, dst_root):
        shallow.append(())
    for d, listing in dst_listings.items():
        theirs = dict(listing)
        pop = theirs.pop
        for name, a in src_listings.get(d, ()):
            c = (*d, name)
            b = pop(name, None)
            if b is None:
                deep.append(c)
                continue
            if a[:5] == b[:5] and a[6:] == b[6:]:  # same_row, inline
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


def _with_origins(
    region: Region, here: DigestScan, dirty: list[Key], history: History
) -> Region:
    """``region`` grown by where its source nodes came from: identity beats a name (SPEC
    section 3). A node of the region (or a directory whose listing differs) whose
    identity the history places at another key came from there (a rename, a swap, a
    rotation): that key is compared too, whole, so diff matches the two by identity as
    a full comparison would, even where the node at the old key kept its name and
    payload. Repeated until no new place turns up."""
    checked: set[Key] = set()
    listed: set[Key] = set()
    moved_dirs = set(dirty)
    while True:
        wanted = {*region.shallow, *(d for d in dirty if d)} - checked
        rows = here.rows(keys=wanted, subtrees=[t for t in region.deep if t not in checked])
        # A directory whose own payload differs (its mtime: a rename in or out of it)
        # may hold children that swapped names and ended equal: their identities too
        touched = [k for k in region.shallow if k not in listed]
        if touched:
            listed.update(touched)
            for d, listing in here.listings(touched).items():
                for name, row in listing:
                    if len(row) > 5:  # (a special file's row names only its kind)
                        rows.setdefault((*d, name), row)
        keys = set(rows) - checked
        keys.discard(())
        if not keys:
            return region
        checked |= keys
        checked.update(region.deep)
        now = {rows[k][5]: k for k in keys}
        came: list[tuple[Key, Key]] = []
        for ident, (was, _) in history.lookup_many(now).items():
            k = now[ident]
            if was != k and (
                not _covered(was, region) or (k in moved_dirs and not _covered(k, region))
            ):
                came.append((k, was))
        if not came:
            return region
        # both places, whole: where the node is now and where it was
        region = region.union(Region.of([k for pair in came for k in pair]))


def _covered(key: Key, region: Region) -> bool:
    """True when ``key`` is in a deep subtree of ``region``."""
    return any(key[:i] in region.deep for i in range(len(key) + 1))


def region_snapshot(
    rows: dict[Key, Row],
    region: Region,
    children: Callable[[Key], Iterable[Key]] | None = None,
) -> Snapshot:
    """The snapshot a ``scan_region`` of ``region`` would give, cut from rows of a full
    scan (``rows`` holds at least the context and the deep subtrees; ``children`` lists
    a key's children in it, an index of ``rows`` is built when not given). The context
    is ``partial``."""
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
