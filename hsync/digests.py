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

A directory moved or renamed with its content unchanged costs one node (``fold_moves``):
where a source directory of the region is, by the history, the destination's directory
at another key of the region, and the two subtree digests (``DigestSummary.trees``) are
equal, the pair is *folded*: each side's snapshot holds the directory without its
descendants (``Snapshot.folded``), nothing below it is asked for or compared, diff
matches the two as one move, and the history renames the descendants' keys in place
(``History.record``'s ``renames``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .backend import DigestScan
from .history import History
from .model import CONTAINERS, DIR, Key, Row, Rows, Snapshot, has_unread, same_row
from .region import Region, context_keys
from .session import PairSession

DIRTY_SHARE = 0.5
"""Past this share of directories with differing listings, the whole scans are
compared instead."""


def compare_by_digests(
    session: PairSession, here: DigestScan, there: DigestScan, history: History,
    *, fold: bool = True,
) -> tuple[Snapshot, Snapshot] | None:
    """The source's and the destination's region snapshots over what differs, or None
    when a full comparison is due (something unreadable, or most of it differs).
    ``fold``: moved directories with equal subtrees are held as one node each
    (``fold_moves``)."""
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
    ours: dict[Key, list[tuple[str, Row]]] = {}
    theirs_listed: dict[Key, list[tuple[str, Row]]] = {}
    if dirty:
        # asked first: the destination's scan (a child, the far side) lists and ships
        # them while the source's are listed here
        asked = there.ask_listings(dirty)
        ours = here.listings(dirty)
        theirs_listed = asked()
    region, listed = listing_region(src_root, theirs.root, ours, theirs_listed)
    folded = fold_moves(region, here, listed, mine.trees, theirs.trees, history) if fold else {}
    region = _with_origins(region, here, dirty, history, set(folded), ours)
    folded = {s: d for s, d in folded.items() if _folded_top(s, d, region)}
    context = context_keys(region)
    whole = [t for t in region.deep if t not in folded]
    src_part = region_snapshot(here.rows(keys={*context, *folded}, subtrees=whole), region)
    src_part.folded = folded
    src_part.skipped = list(mine.skipped)
    src_part.holds_excluded = set(mine.held)
    src_part.mounts = {k for k in mine.held if k not in mine.digests}
    src_part.scanned = mine.count
    src_part.whole = here  # its rows live as long as the part (freeing them costs)
    # a container updated in place whose listing is equal: its children are equal too,
    # but one may have been replaced by an equal one (a new identity to record)
    quiet = [k for k in region.shallow if k not in ours]
    if quiet:
        src_part.equal_children = [
            ((*d, name), row[5])
            for d, listing in here.listings(quiet).items() for name, row in listing
            if row[5] is not None
        ]
    back = {d: s for s, d in folded.items()}
    need = [k for k in (*context, *back) if k not in listed]
    listed.update(there.rows(keys=need, subtrees=[t for t in region.deep if t not in back]))
    dst_part = region_snapshot(listed, region)
    dst_part.folded = back
    dst_part.skipped = list(theirs.skipped)
    dst_part.holds_excluded = set(theirs.held)
    dst_part.mounts = {k for k in theirs.held if k not in theirs.digests}
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


def fold_moves(
    region: Region,
    here: DigestScan,
    theirs_in: dict[Key, Row],
    src_trees: dict[Key, int],
    dst_trees: dict[Key, int],
    history: History,
) -> dict[Key, Key]:
    """Source directory -> destination directory, for the moves diff will find by
    identity whose subtrees are equal: both are deep keys of ``region`` (a source
    directory absent from the destination, a destination directory absent from the
    source: ``theirs_in`` holds the destination's rows of the region's children), the
    history places the source directory's identity at the destination's key (and, as
    diff requires, a directory was synced there), and their subtree digests are equal.
    Asks the source for one row per candidate, and the history for one identity."""
    deep = region.deep
    mine = [k for k in deep if k in src_trees and k not in dst_trees]
    if not mine:
        return {}
    gone = {k for k in deep if k in dst_trees and k not in src_trees}
    if not gone:
        return {}
    rows = here.rows(keys=mine)
    idents: dict[int | str | None, Key] = {
        row[5]: k for k, row in rows.items() if row[0] == DIR and row[5] is not None
    }
    out: dict[Key, Key] = {}
    taken: set[Key] = set()
    for ident, (was, synced) in history.lookup_many(idents).items():
        k = idents[ident]
        there = theirs_in.get(was)
        if (
            was in gone and was not in taken and there is not None and there[0] == DIR
            and synced.kind == DIR and src_trees[k] == dst_trees[was]
        ):
            out[k] = was
            taken.add(was)
    return out


def _folded_top(src: Key, dst: Key, region: Region) -> bool:
    """True when a folded pair is still two tops of ``region`` (not grown into a
    subtree compared whole)."""
    return (
        src in region.deep and dst in region.deep
        and not _covered(src[:-1], region) and not _covered(dst[:-1], region)
    )


def _with_origins(
    region: Region, here: DigestScan, dirty: list[Key], history: History,
    folded: set[Key] = frozenset(),  # type: ignore[assignment]
    listings: dict[Key, list[tuple[str, Row]]] | None = None,
) -> Region:
    """``region`` grown by where its source nodes came from: identity beats a name (SPEC
    section 3). A node of the region (or a directory whose listing differs) whose
    identity the history places at another key came from there (a rename, a swap, a
    rotation): that key is compared too, whole, so diff matches the two by identity as
    a full comparison would, even where the node at the old key kept its name and
    payload. Repeated until no new place turns up. ``folded``: source directories whose
    descendants are equal to where they came from (``fold_moves``): not asked for.
    ``listings``: the source's listings read already (the directories whose listings
    differ): not asked for again.

    The children of a directory whose own payload differs are asked for by identity
    only where they may have come from elsewhere: a child whose attributes were not
    read (``UNREAD``: its ctime is older than the source's mark of the last sync that
    left the pair equal) was not renamed or linked since (either sets the node's
    ctime), so it is where the history has it. A directory whose mtime moved because
    children were removed then costs its listing, not a lookup per child."""
    checked: set[Key] = set(folded)
    listed: set[Key] = set()
    moved_dirs = set(dirty)
    known = listings or {}
    while True:
        wanted = {*region.shallow, *(d for d in dirty if d)} - checked
        rows = here.rows(keys=wanted, subtrees=[t for t in region.deep if t not in checked])
        # A directory whose own payload differs (its mtime: a rename in or out of it)
        # may hold children that swapped names and ended equal: their identities too
        touched = [k for k in region.shallow if k not in listed]
        if touched:
            listed.update(touched)
            ask = [k for k in touched if k not in known]
            got = here.listings(ask) if ask else {}
            for d in touched:
                listing = known.get(d)
                for name, row in got.get(d, ()) if listing is None else listing:
                    # (a special file's row names only its kind)
                    if len(row) > 5 and not has_unread(row[6]):
                        rows.setdefault((*d, name), row)
        keys = set(rows) - checked
        keys.discard(())
        if not keys:
            return region
        checked |= keys
        checked.update(region.deep)
        now = {rows[k][5]: k for k in keys}
        came: list[tuple[Key, Key]] = []
        for ident, was in history.moved_from(now).items():
            k = now[ident]
            if not _covered(was, region) or (k in moved_dirs and not _covered(k, region)):
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
