"""The compare step: what differs between the two trees of a session, as a plan.

Strategies, chosen by what the endpoints offer (``Features``) and what is known:

- **directory digests** (``hsync.digests``): both endpoints scan with one digest per
  directory and the history is complete; only the directories whose digests differ
  are compared one by one. Never with ``--checksum`` or ``-H`` (they look beyond stat).
- **full**: both trees scanned whole and diffed (the destination's scan beside the
  source's: a forked child for a digest-scanning endpoint, a thread for one that waits
  on a server).
- **region** (``compare_region``): only the dirty subtrees of a watch, on both sides.

A stat-only quick pass (``hsync.region.quick_pass``) and the streamed initial copy
(``hsync.populate``) avoid this step altogether; see ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ._values import define, field
from .backend import Endpoint, stat_many
from .cancel import NEVER, Cancel
from .differ import Side, diff, relinks
from .model import (
    DELETE,
    MOVE,
    UNREAD,
    Key,
    Plan,
    Row,
    Rows,
    Snapshot,
    Table,
    data_digest,
    has_unread,
    same_row,
)
from .region import Region, scan_region_pair
from .session import PairSession

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any


@define
class Comparison:
    """Two snapshots (whole trees, or the same region of both) and the plan between."""

    src: Snapshot
    dst: Snapshot
    plan: Plan
    warnings: list[str] = field(factory=list)
    region: Region | None = None
    """The region compared (None: the whole trees)."""
    kept: list[Key] = field(factory=list)
    """Destination-only subtrees left in place because the destination was never synced
    from this source (their tops; ``withheld`` counts every node)."""
    withheld: int = 0


class Unfolded(Exception):
    """The plan does not move a folded directory as one node (``Snapshot.folded``):
    what is below it must be compared after all."""


def compare_trees(session: PairSession, *, cancel: Cancel = NEVER) -> Comparison:
    """Scan both whole trees (by directory digests where that applies) and plan."""
    src, dst = scan_both(session, cancel=cancel)
    try:
        return plan_between(session, src, dst, whole=True)
    except Unfolded:  # rare (a --max-delete that turned moves off): scanned again, whole
        src, dst = scan_both(session, cancel=cancel, fold=False)
        return plan_between(session, src, dst, whole=True)


def compare_region(
    session: PairSession, region: Region, *, cancel: Cancel = NEVER, checksum: bool = False
) -> Comparison | None:
    """Scan ``region`` on both sides and plan; None when the region grew to the whole
    tree (the caller compares in full, with its safety checks). The comparison's
    ``region`` is the one compared (it may have grown)."""
    if region.folded and not (
        session.deletes_allowed and session.destination.capabilities.subtree_move
    ):
        region = region.unfolded()  # no move by identity this run: nothing to fold
    while True:
        compared, src, dst = scan_region_pair(
            session.source, session.destination, region, session.exclude, cancel=cancel,
            dst_exclude=session.destination_exclude,
        )
        if compared.full:
            return None
        try:
            cmp = plan_between(session, src, dst, checksum=checksum)
        except Unfolded:  # a folded pair is not one move after all: scanned whole
            region = compared.unfolded()
            continue
        cmp.region = compared
        return cmp


def scan_both(
    session: PairSession, *, cancel: Cancel = NEVER, fold: bool = True
) -> tuple[Snapshot, Snapshot]:
    """Scans of both trees, side by side, with the source checks of SPEC section 8
    (missing, unreadable, suddenly empty). With a complete history and endpoints that
    scan with digests, only the part that differs is returned (``hsync.digests``), and
    (``fold``, where this run moves subtrees) a directory moved with its content
    unchanged is one node on each side."""
    source, destination = session.source, session.destination
    exclude, options = session.exclude, session.options
    dexclude = session.destination_exclude  # None with --delete-excluded
    dscan = destination.features.digest_scanning
    if dscan is not None and destination.backend.root_id() is not None:
        child = dscan.digest_scan(
            dexclude, background=_worth_a_child(session), cancel=cancel
        )
        # after the fork (none beside a thread): the WAL earlier runs left, written
        # into the history while the trees are scanned
        checkpointed = session.history.start_checkpoint() if session.history else None
        try:
            session.check_source_root()  # again: a watch's root may have gone since
            sscan = source.features.digest_scanning
            history = session.history_trusted
            if (
                sscan is not None and history is not None
                and not options.checksum and not options.hard_links
                and dexclude is exclude
            ):
                from .digests import compare_by_digests

                here = sscan.digest_scan(exclude, cancel=cancel)
                fold = (
                    fold and session.deletes_allowed and destination.capabilities.subtree_move
                )
                found = compare_by_digests(session, here, child, history, fold=fold)
                if found is not None:
                    return found
                src = here.snapshot()
            else:
                src = source.backend.scan((), exclude=exclude, cancel=cancel)
            dst = child.snapshot()
        finally:
            child.close()
            if checkpointed is not None:
                checkpointed()
        session.check_source(src.incomplete, len(src.nodes), len(dst.nodes))
        return src, dst
    collect: Callable[[], Snapshot] = Snapshot
    if destination.backend.root_id() is not None:
        def collect() -> Snapshot:
            return destination.backend.scan((), exclude=dexclude, cancel=cancel)

        if destination.capabilities.waits or source.capabilities.waits:
            collect = _in_thread(collect)  # a server's answers, read side by side
    try:
        session.check_source_root()
        src = source.backend.scan((), exclude=exclude, cancel=cancel)
    finally:
        dst = collect()
    session.check_source(src.incomplete, len(src.nodes), len(dst.nodes))
    return src, dst


SMALL_TREE = 1000
"""A pair whose history holds at most this many nodes scans its destination in this
process, after the source: forking a child, shipping its answers over a pipe and
reaping it cost more than the walk of a tree this small (on the 2 shared cores the
two ways crossed between 500 and 1,000 nodes; bench/HISTORY.md, "The fixed cost of a
small sync")."""


def _worth_a_child(session: PairSession) -> bool:
    """Whether the destination's digest scan runs in a forked child beside the source's
    (``digest_scan(background=True)``): not for a pair whose history says the tree is
    small (``SMALL_TREE``). Without a history (a first sync, ``--state ''``) nothing
    says how big it is: forked, as before."""
    history = session.history
    return history is None or history.holds_more_than(SMALL_TREE)


def _in_thread(scan: Callable[[], Snapshot]) -> Callable[[], Snapshot]:
    """Start ``scan`` in a thread; the returned function waits for its snapshot (or
    raises what it raised)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(scan())
        except BaseException as e:  # handed to the caller
            out.append(e)

    import threading  # only here: a small no-op starts no thread

    t = threading.Thread(target=run, name="hsync-scan", daemon=True)
    t.start()

    def collect() -> Snapshot:
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        snap: Snapshot = out[0]
        return snap

    return collect


def read_unread(session: PairSession, src: Snapshot, dst: Snapshot) -> None:
    """Where a row whose attributes were not read (``model.UNREAD``: unchanged since
    the last sync that left the pair equal) meets anything but the same row on the
    other side (another payload, nothing), read that node in full (``Backend.stat``):
    a change on either side moved that side's ctime, so what was not read is what the
    last sync left, and the other side's attributes are compared with it as read."""
    keep = session.keep
    if keep is None or not keep.since_ns:
        return
    if not isinstance(src.nodes, Rows) or not isinstance(dst.nodes, Rows):
        return
    for snap, other, endpoint in (
        (src, dst.nodes.rows, session.source),
        (dst, src.nodes.rows, session.destination),
    ):
        assert isinstance(snap.nodes, Rows)
        rows = snap.nodes.rows
        todo = [k for k, r in rows.items() if has_unread(r[6])
                and ((o := other.get(k)) is None or not same_row(r, o))]
        if snap is dst and todo:
            only = {k for k in todo if k not in other}
            origins = _origins(session, other, only) if only else {}
            sources = _move_sources(session, other, rows, origins) if only else None
            if sources is not None:
                todo = [k for k in todo if k not in only or k in sources]
            todo = _as_synced(session, rows, other, todo, origins)
            snap.nodes.forget()
        # together: over a link one round trip for all of them (``Linked.stat_many``)
        for k, node in stat_many(endpoint, todo).items():
            if isinstance(node, OSError):
                continue
            r = rows[k]
            if node is not None and node.kind == r[0]:
                rows[k] = (*r[:6], node.data)
                snap.nodes.forget(k)


def _as_synced(
    session: PairSession, rows: dict[Key, Row] | Table, src: Mapping[Key, Row],
    todo: list[Key], origins: Mapping[Key, Key] | None = None,
) -> list[Key]:
    """Of ``todo`` (destination nodes whose attributes were not read, ``rows``), those
    still to be read in full: the others take their attributes from the source's node
    at their key (``src``, read), which the history says is what the last sync wrote
    there (its ``fp`` equals the digest of the source's data). A destination node
    whose attributes were not read is unchanged since the last sync (a write of them
    moves its ctime), so it holds what that sync left: the source's data then, the same
    as now. A directory that lost files then costs no ``lstat`` either (its row differs
    by its mtime only). ``origins``: destination-only keys whose node a source node
    moved away from (``_origins``: destination key -> where the source node is now),
    compared with that node: a renamed directory's old place then costs no ``stat``
    either (over a link, a round trip)."""
    history = session.history_trusted
    if history is None:
        return todo
    at = origins or {}
    asked = [k for k in todo
             if (o := src.get(at.get(k, k))) is not None and o[0] == rows[k][0]
             and len(o) > 6 and type(o[6]) is tuple and len(o[6]) == 3
             and not has_unread(o[6])]
    if not asked:
        return todo
    fps = history.fingerprints(asked)
    left = set(todo)
    for k in asked:
        o, r = src[at.get(k, k)], rows[k]
        fp = fps.get(k)
        if fp is None or fp == "?" or fp != data_digest(o[0], o[6]):
            continue
        mine = r[6]
        if type(mine) is not tuple or len(mine) != 3 or mine[2] != UNREAD:
            continue
        rows[k] = (*r[:6], (mine[0], mine[1], o[6][2]))
        left.discard(k)
    return [k for k in todo if k in left]


def _origins(session: PairSession, src: Mapping[Key, Row], only: set[Key]) -> dict[Key, Key]:
    """Of the destination-only keys ``only``, those the history says a source node whose
    attributes were read was synced at (it moved since: a rename sets its ctime), each
    with the key that node is at now."""
    history = session.history_trusted
    if history is None:
        return {}
    here: dict[int | str | None, Key] = {r[5]: k for k, r in src.items()
            if len(r) > 6 and r[5] is not None and not has_unread(r[6])}
    if not here:
        return {}
    return {was: here[ident] for ident, was in history.moved_from(here).items()
            if was in only}


def _move_sources(
    session: PairSession, src: Mapping[Key, Row], dst: Mapping[Key, Row],
    origins: Mapping[Key, Key],
) -> set[Key] | None:
    """The destination-only keys diff may move elsewhere (None: any of them). A node
    only on the destination is deleted unless it is a move's origin, and a delete needs
    none of its attributes (the applier checks kind, size and mtime), so
    ``read_unread`` reads only these of the destination-only nodes: without any node
    only on the source nothing is matched by similarity, and by identity only the
    places the history gives the source's nodes whose attributes were read (a node
    moved or linked since the mark has a new ctime: an ``UNREAD`` one is where the
    history has it). A spread delete then costs no ``lstat`` per node deleted."""
    if any(k not in dst for k in src):
        return None  # a new node may be matched to a gone one by size and mtime
    return set(origins)  # by identity (``_origins``: of the destination-only keys)


class _Digests:
    """``differ``'s digest oracle over the two endpoints, each answer kept.
    ``prefetch`` asks a side reached over a link (``Linked.digest_many``) for many at
    once: ``--checksum`` over a link waited on a round trip per file (150 files: 153
    round trips)."""

    def __init__(self, source: Endpoint, destination: Endpoint) -> None:
        self.backends = {"source": source.backend, "destination": destination.backend}
        self.linked = {"source": source.features.linked,
                       "destination": destination.features.linked}
        self.known: dict[tuple[Side, Key], bytes | None] = {}

    def __call__(self, side: Side, key: Key) -> bytes | None:
        k = (side, key)
        if k not in self.known:
            self.known[k] = self.backends[side].digest(key)
        return self.known[k]

    def prefetch(self, keys: list[Key]) -> None:
        side: Side
        for side in ("source", "destination"):
            linked = self.linked[side]
            todo = [k for k in keys if (side, k) not in self.known]
            if linked is not None and len(todo) > 1:
                for k, d in linked.digest_many(todo).items():
                    self.known[(side, k)] = d


def plan_between(
    session: PairSession, src: Snapshot, dst: Snapshot, *, checksum: bool = False,
    whole: bool = False,
) -> Comparison:
    """Diff and plan two snapshots (whole trees, or the same partial region of both);
    ``checksum`` compares content by hash for this comparison (as ``--checksum``);
    ``whole``: the snapshots hold everything that differs between the trees.

    Where deletions are withheld (a destination never synced from this source, SPEC 8)
    nothing is deleted and no destination node is replaced by one of another kind; the
    comparison lists what was kept."""
    options = session.options
    checksum = checksum or options.checksum
    read_unread(session, src, dst)
    caps = session.destination.capabilities
    digest = _Digests(session.source, session.destination)
    history = session.history_trusted
    delete = session.deletes_allowed
    changes = diff(
        src, dst, history, checksum=checksum, digest=digest, prefetch=digest.prefetch,
        delete=delete,
        moves=caps.subtree_move and delete,
        parents_witness=session.source.capabilities.renames_touch_parents,
    )
    kept: list[Key] = []
    withheld: set[Key] = set()
    if options.delete is None and not delete:
        withheld = {  # every node a sync allowed to delete would remove or replace
            c.key for c in diff(src, dst, None, checksum=checksum, digest=digest,
                                delete=True, moves=False)
            if c.op == DELETE
        }
        if withheld:
            changes = diff(src, dst, None, checksum=checksum, digest=digest,
                           delete=False, moves=False, replace=False)
            kept = sorted(k for k in withheld if k[:-1] not in withheld)
        elif whole:
            session.withhold_deletes(nothing_withheld=True)
    warnings: list[str] = []
    n_delete = sum(1 for c in changes if c.op == DELETE)
    if options.max_delete is not None and n_delete > options.max_delete:
        warnings.append(
            f"{n_delete} deletions planned, more than --max-delete {options.max_delete}: "
            "no deletion done"
        )
        changes = diff(
            src, dst, None, checksum=checksum, digest=digest,
            delete=False, moves=False, replace=False,
        )
    if options.hard_links:  # copies of one source inode made one inode again
        changes += relinks(src, dst, changes)
    if src.folded:
        moved = {(c.key, c.to) for c in changes if c.op == MOVE}
        if any((d, s) not in moved for s, d in src.folded.items()):
            raise Unfolded
    if changes:
        from .planner import plan  # not imported by a run with nothing to change

        the_plan = plan(changes, dst, case_insensitive=caps.case_insensitive)
    else:
        the_plan = Plan(ops=(), changes=())  # what plan() makes of no change
    if options.check:
        from .planner import check_plan

        check_plan(
            the_plan.ops, dst, src, case_insensitive=caps.case_insensitive,
            allow_extra=not delete or bool(warnings),
        )
    return Comparison(src, dst, the_plan, warnings, kept=kept, withheld=len(withheld))
