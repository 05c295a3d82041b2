"""The one-shot runs: ``hsync sync`` and ``hsync diff`` as short callers of the
pipeline (a ``PairSession``, then ``compare`` and ``apply``, or ``populate``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from .backend import Credentials
from .cancel import NEVER, Cancel
from .compare import Comparison, compare_trees
from .model import FILE, Op, Plan, Problem, Rows, Snapshot
from .options import DEFAULT, Options, Report
from .session import PairSession

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from .apply import Applied


def sync_once(
    source_url: str,
    destination_url: str,
    options: Options = DEFAULT,
    *,
    on_planned: Callable[[Plan], None] | None = None,
    on_done: Callable[[Op], None] | None = None,
    cancel: Cancel = NEVER,
    credentials: tuple[Credentials | None, Credentials | None] = (None, None),
) -> Report:
    """Make ``destination_url`` equal to ``source_url`` once; the report says how it went.

    ``on_planned`` gets the plan before anything is applied; an initial copy into an
    empty destination is streamed (it has no plan of the whole tree) only without it."""
    t0 = time.perf_counter()
    with PairSession(source_url, destination_url, options, credentials=credentials) as session:
        if _streams(session, on_planned):
            started = time.time_ns()
            report = _streamed(session, on_done, cancel)
            if not report.problems:
                session.mark_equal(started)
        else:
            started = time.time_ns()
            cmp = compare_trees(session, cancel=cancel)
            report = _report(session, cmp)
            if on_planned is not None:
                on_planned(cmp.plan)
            if not options.dry_run:
                applied = _apply(session, cmp, on_done, cancel)
                if applied is not None:
                    report.counts = applied.counts
                    report.bytes_copied = applied.bytes_copied
                    report.problems.extend(applied.problems)
                    report.warnings.extend(applied.warnings)
                if not report.problems and not cmp.warnings:
                    # the mark is kept only by a run that found the trees equal at
                    # once (equal digests): one that had to compare nodes (new ctimes
                    # since the mark, attributes read back) moves it past them
                    quiet = (not cmp.plan.ops and cmp.src.scanned is not None
                             and len(cmp.src.nodes) <= 1)
                    session.mark_equal(started, changed=not quiet)
        report.notices = list(session.notices)
        report.wire = session.wire()
        report.round_trips = session.round_trips()
    report.source, report.destination = source_url, destination_url
    report.elapsed = time.perf_counter() - t0
    return report


def compare(
    source_url: str,
    destination_url: str,
    options: Options = DEFAULT,
    *,
    credentials: tuple[Credentials | None, Credentials | None] = (None, None),
) -> Comparison:
    """The comparison ``hsync diff`` prints: both trees scanned, the plan between them;
    nothing is written. The endpoints are closed when it returns."""
    with PairSession(source_url, destination_url, options, credentials=credentials) as session:
        return compare_trees(session)


def _apply(
    session: PairSession, cmp: Comparison, on_done: Callable[[Op], None] | None,
    cancel: Cancel,
) -> Applied | None:
    """Apply the comparison's plan and record it in the history; None for a no-op (no
    op, no change, a complete history: nothing to record), which does not even import
    the applier."""
    history = session.history
    if not cmp.plan.ops and not cmp.plan.changes and (history is None or history.complete):
        return None
    from .apply import ONE_SHOT, apply_plan, record

    return apply_plan(
        session, cmp.plan.ops, cmp.src, batching=ONE_SHOT, cancel=cancel, on_done=on_done,
        record=None if history is None else (
            lambda failed: record(session, cmp.src, cmp.plan.changes, failed)
        ),
    )


def _report(session: PairSession, cmp: Comparison) -> Report:
    """The report of a planned run before anything is applied."""
    report = Report(source=session.source.url, destination=session.destination.url,
                    dry_run=session.options.dry_run)
    report.plan = cmp.plan
    for side, snap in (("source", cmp.src), ("destination", cmp.dst)):
        report.compared[side] = len(snap.nodes)
        report.scanned[side] = snap.scanned if snap.scanned is not None else len(snap.nodes)
        report.bytes_examined[side] = _file_bytes(snap)
    report.skipped = list(cmp.src.skipped)
    report.warnings = list(cmp.warnings)
    report.withheld = cmp.withheld
    report.warnings += [
        f"{'/'.join(k)}: kept: not in the source, and the destination was never synced "
        "from it" for k in cmp.kept
    ]
    report.problems.extend(
        Problem(k, f"not synced: {why}", kind="retry") for k, why in cmp.src.incomplete.items()
    )
    report.problems.extend(
        Problem(k, f"not synced: the destination {why}", kind="retry")
        for k, why in cmp.dst.incomplete.items()
    )
    if cmp.warnings:  # --max-delete held the deletions back: about the destination
        report.problems.append(Problem((), cmp.warnings[0], op="delete"))
    return report


def _file_bytes(snap: Snapshot) -> int:
    """The bytes of the files ``snap`` holds, from its compact rows where it has them (a
    ``Node`` per key would cost more than the rest of a no-op re-sync)."""
    nodes = snap.nodes
    if isinstance(nodes, Rows):
        return sum(r[2] for r in nodes.rows.values() if r[0] == FILE)
    return sum(n.size for n in nodes.values() if n.kind == FILE)


def _streams(session: PairSession, on_planned: Callable[[Plan], None] | None) -> bool:
    """Whether this sync is an initial copy that can be streamed: into an empty
    destination, with a history that holds nothing for the pair (a history of other
    content would be recorded differently), not a dry run, no caller waiting for the
    plan, no hard links (linking needs the whole tree) and no ``check`` (it checks a
    plan)."""
    options = session.options
    if options.dry_run or options.hard_links or options.check or on_planned is not None:
        return False
    if session.history is not None and not session.history.is_empty():
        return False
    from .populate import can_populate

    return can_populate(session)


def _streamed(
    session: PairSession, on_done: Callable[[Op], None] | None, cancel: Cancel
) -> Report:
    """The initial copy, streamed (``populate``); the report a planned sync would give."""
    # a source read ahead in a thread (a server) gets small batches that keep the
    # writer going; a filesystem walk stays inline, in batches as large as a planned
    # sync's (the applier may then fork copy workers, and flushes once)
    from .apply import ONE_SHOT, STREAMED
    from .populate import populate

    batching = STREAMED if session.source.capabilities.waits else ONE_SHOT
    done = populate(session, batching=batching, cancel=cancel, on_done=on_done, keep=0)
    report = Report(source=session.source.url, destination=session.destination.url)
    report.counts = done.counts
    report.streamed = done.planned
    report.bytes_copied = done.bytes_copied
    report.problems = done.problems
    report.skipped = done.skipped
    report.warnings = list(done.warnings)
    report.scanned = dict(done.seen)
    report.compared = dict(done.seen)
    report.bytes_examined = {"source": done.bytes_copied, "destination": 0}
    return report
