"""One entry point for every caller: the CLI, the daemon and the Python API.

``compare`` opens both endpoints, checks the safety rules (SPEC section 8), scans both
trees (in parallel), and diffs and plans; ``sync_once`` then applies the plan in batches
and records the history. Into an empty destination ``sync_once`` streams instead: the
source's walk goes straight into batches of creates while it is still being read
(``populate``), with the same journal, history and report.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .backend import ApplyResult, Backend, Credentials, open_backend
from .diff import Side, diff
from .errors import SafetyError, UsageError
from .model import CREATE, DELETE, MOVE, UPDATE, Key, Op, Plan, Problem, Snapshot
from .plan import check_plan, plan
from .region import (
    Region,
    context_keys,
    dirty_directories,
    listing_region,
    region_snapshot,
)

BATCH_OPS = 100_000
BATCH_BYTES = 1 << 30
STREAM_BATCH_OPS = 2000
"""Creates per batch when an initial copy is streamed (``populate``)."""
STREAM_MIN_BATCH = 250
"""A smaller batch is sent when the walk has nothing more ready yet."""


@attrs.frozen(kw_only=True)
class Options:
    dry_run: bool = False
    delete: bool = True
    checksum: bool = False
    exclude: tuple[str, ...] = ()
    max_delete: int | None = None
    state: str | None = None
    """History file; None for the default location, "" for no history."""
    allow_empty_source: bool = False
    fsync: bool = False
    check: bool = False
    """Run check_plan on every plan before applying it (tests, --debug)."""
    exclude_attrs: tuple[str, ...] = ()
    """Attribute names left out of entries' payloads (backends with attributes: LDAP)."""
    hard_links: bool = False
    """Source files that are one inode stay one inode on the destination (rsync -H)."""


@attrs.define
class Report:
    """What a run did (``sync --json`` prints ``to_json()``)."""

    source: str
    destination: str
    counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)
    )
    bytes_copied: int = 0
    problems: list[Problem] = attrs.field(factory=list)
    skipped: list[tuple[Key, str]] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)
    elapsed: float = 0.0
    dry_run: bool = False
    plan: Plan | None = None
    streamed: dict[str, int] | None = None
    """Ops per kind sent by a streamed initial copy (which has no plan)."""
    scanned: dict[str, int] = attrs.field(factory=dict)
    """Nodes seen by the scans, per side (``source``, ``destination``)."""
    compared: dict[str, int] = attrs.field(factory=dict)
    """Nodes that were compared one by one, per side: everything, or, on a re-sync of
    two filesystem trees with a history, only what the directory digests showed
    differing (and its ancestors)."""

    @property
    def planned(self) -> dict[str, int]:
        """Ops per kind in the plan (what a dry run would do)."""
        if self.plan is None and self.streamed is not None:
            return dict(self.streamed)
        return self.plan.counts() if self.plan is not None else {}

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 3 if self.problems else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "counts": self.counts,
            "planned": self.planned,
            "bytes_copied": self.bytes_copied,
            "errors": [p.to_json() for p in self.problems],
            "skipped": [{"path": "/".join(k), "kind": why} for k, why in self.skipped],
            "warnings": self.warnings,
            "scanned": self.scanned,
            "compared": self.compared,
            "elapsed": round(self.elapsed, 6),
        }


@attrs.define
class Comparison:
    """Both endpoints, their snapshots and the plan between them."""

    source: Backend
    destination: Backend
    src: Snapshot
    dst: Snapshot
    plan: Plan
    history: Any = None
    warnings: list[str] = attrs.field(factory=list)

    def close(self) -> None:
        if self.history is not None:
            self.history.close()
        self.source.close()
        self.destination.close()


def _exclude_matcher(patterns: Sequence[str]) -> Callable[[Key, bool], bool] | None:
    if not patterns:
        return None
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    match = spec.match_file

    def excluded(key: Key, is_dir: bool) -> bool:
        rel = "/".join(key)
        return match(rel + "/" if is_dir else rel)

    return excluded


def _check_pair(source: Backend, destination: Backend) -> None:
    """SPEC section 8: the same tree, or one inside the other, is refused; so is a pair
    of a tree of files and a tree of entries (one has content, the other attributes)."""
    if source.capabilities.content != destination.capabilities.content:
        raise UsageError(
            f"{destination.url}: cannot sync {source.url} into it (files and directory "
            "entries are different kinds of trees)"
        )
    relation = getattr(source, "relation", None)
    if relation is not None:
        # a backend without a filesystem root says how two of its endpoints overlap
        rel = relation(destination)
        if rel == "same":
            raise UsageError(f"{destination.url}: source and destination are the same tree")
        if rel == "inside":
            raise UsageError(f"{destination.url}: destination is inside the source {source.url}")
        if rel == "contains":
            raise UsageError(f"{source.url}: source is inside the destination {destination.url}")
        return
    sroot = getattr(source, "root", None)
    droot = getattr(destination, "root", None)
    if sroot is None or droot is None:
        if source.url.rstrip("/") == destination.url.rstrip("/"):
            raise UsageError(f"{source.url}: source and destination are the same")
        return
    s = os.path.realpath(sroot)
    d = os.path.realpath(droot)
    if s == d:
        raise UsageError(f"{destination.url}: source and destination are the same tree")
    if d.startswith(s.rstrip("/") + "/"):
        raise UsageError(f"{destination.url}: destination is inside the source {source.url}")
    if s.startswith(d.rstrip("/") + "/"):
        raise UsageError(f"{source.url}: source is inside the destination {destination.url}")
    if os.path.exists(d) and os.path.exists(s) and os.path.samefile(s, d):
        raise UsageError(f"{destination.url}: source and destination are the same tree")


def _root_checks(source: Backend, destination: Backend) -> None:
    _source_root_check(source)
    _destination_checks(destination)


def _source_root_check(source: Backend) -> None:
    """A source root that is missing or unusable stops the run before anything is done."""
    why = getattr(source, "root_error", lambda: None)()
    if why is None and not source.exists():
        why = "does not exist"
    if why is not None:
        raise SafetyError(f"{source.url}: source {why}; nothing done")


def _destination_checks(destination: Backend) -> None:
    if destination.exists():
        why = getattr(destination, "root_error", lambda: None)()
        if why is not None:
            raise UsageError(f"{destination.url}: destination {why}")
    else:
        droot = getattr(destination, "root", None)
        if droot is not None:
            if os.path.lexists(droot):
                raise UsageError(f"{destination.url}: destination is not a directory")
            parent = os.path.dirname(droot.rstrip("/")) or "/"
            if not os.path.isdir(parent):
                raise UsageError(
                    f"{destination.url}: the destination's parent directory does not exist"
                )


def compare(
    source_url: str,
    destination_url: str,
    options: Options = Options(),
) -> Comparison:
    """Open both endpoints, refuse what SPEC section 8 refuses, scan both trees, and
    return the plan between them (nothing is written). The caller closes the result."""
    source, destination = open_pair(source_url, destination_url, options.exclude_attrs)
    try:
        history = open_history(source, destination, options)
        try:
            src, dst = scan_both(source, destination, options, history)
            return plan_between(source, destination, src, dst, history, options)
        except BaseException:
            if history is not None:
                history.close()
            raise
    except BaseException:
        source.close()
        destination.close()
        raise


def open_pair(
    source_url: str,
    destination_url: str,
    exclude_attrs: Sequence[str] = (),
    credentials: tuple[Credentials | None, Credentials | None] = (None, None),
) -> tuple[Backend, Backend]:
    """Both endpoints, opened, with the pair and root checks of SPEC section 8 done.
    ``exclude_attrs``: attributes left out of payloads (backends that have them);
    ``credentials``: the source's and the destination's, from a config file."""
    source = open_backend(source_url, role="source", credentials=credentials[0])
    try:
        destination = open_backend(
            destination_url, role="destination", credentials=credentials[1]
        )
    except BaseException:
        source.close()
        raise
    try:
        if exclude_attrs:
            for backend in (source, destination):
                setter = getattr(backend, "exclude_attributes", None)
                if setter is not None:
                    setter(exclude_attrs)
        _check_pair(source, destination)
        _root_checks(source, destination)
    except BaseException:
        source.close()
        destination.close()
        raise
    return source, destination


def scan_both(
    source: Backend, destination: Backend, options: Options, history: Any = None
) -> tuple[Snapshot, Snapshot]:
    """Scans of both trees (overlapping where the backend can fork a walk), with the
    source checks of SPEC section 8 (missing, unreadable, suddenly empty).

    Two filesystem trees are compared by their directory digests first; then only
    what differs is shipped from the child and compared (the snapshots returned are
    then those of a partial comparison over that region, its context ``partial``).
    That needs a complete history (it is then kept up to date from the changes alone,
    and moves are found by identity), and no option that looks beyond stat
    (``--checksum``, ``-H``)."""
    exclude = _exclude_matcher(options.exclude)
    start = getattr(destination, "start_scan", None)
    if start is None or not destination.exists():
        collect: Callable[[], Snapshot] = Snapshot
        if destination.exists():
            collect = lambda: destination.scan((), exclude=exclude)  # noqa: E731
            if destination.capabilities.waits or source.capabilities.waits:
                collect = _in_thread(collect)  # a server's answers, read side by side
        try:
            _source_root_check(source)  # again: a watch's root may have gone since
            src = source.scan((), exclude=exclude)
        finally:
            dst = collect()
        check_source(source, src, dst, options)
        return src, dst
    child = start(exclude)
    try:
        _source_root_check(source)
        by_digest = (
            getattr(source, "start_scan", None) is not None
            and not options.checksum
            and not options.hard_links
            and history is not None
            and history.complete
        )
        digests: dict[Key, int] = {}
        src = source.scan((), exclude=exclude, **({"digests": digests} if by_digest else {}))
        if by_digest:
            found = _compare_digests(source, src, digests, child, options, history)
            if found is not None:
                return found
        dst = child.snapshot()
    finally:
        child.close()
    check_source(source, src, dst, options)
    return src, dst


def _in_thread(scan: Callable[[], Snapshot]) -> Callable[[], Snapshot]:
    """Start ``scan`` in a thread; the returned function waits for its snapshot (or
    raises what it raised)."""
    import threading

    out: list[Any] = []

    def run() -> None:
        try:
            out.append(scan())
        except BaseException as e:  # handed to the caller
            out.append(e)

    t = threading.Thread(target=run, name="hsync-scan", daemon=True)
    t.start()

    def collect() -> Snapshot:
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]  # type: ignore[no-any-return]

    return collect


DIRTY_SHARE = 0.5
"""Past this share of directories with differing listings, the whole destination scan
is shipped and compared instead."""


def _compare_digests(
    source: Backend,
    src: Snapshot,
    digests: dict[Key, int],
    child: Any,
    options: Options,
    history: Any,
) -> tuple[Snapshot, Snapshot] | None:
    """The partial snapshots over what differs between ``src`` and the child's scan,
    or None when a full comparison is due (something unreadable, or most differs).
    Where the region's nodes came from is compared too (``_with_origins``)."""
    summary = child.summary()
    if src.incomplete or summary["incomplete"]:
        return None  # what a full comparison does with those is not repeated here
    _check_counts(source, src, len(src.nodes), summary["count"], options)
    dirty = dirty_directories(digests, summary["digests"])
    if len(dirty) > DIRTY_SHARE * max(1, len(digests)):
        return None
    rows = src.nodes.rows  # type: ignore[attr-defined]
    region, listed = listing_region(
        src, rows.get(()), summary["root"], child.listings(dirty) if dirty else {}
    )
    if history is not None:
        region = _with_origins(region, src, dirty, history)
    src_part = region_snapshot(rows, region, src.children)
    src_part.skipped = list(src.skipped)
    src_part.holds_excluded = set(src.holds_excluded)
    src_part.scanned = len(src.nodes)
    src_part.whole = src
    need = [k for k in context_keys(region) if k not in listed]
    listed.update(child.rows(keys=need, subtrees=region.deep))
    dst_part = region_snapshot(listed, region)
    dst_part.skipped = list(summary["skipped"])
    dst_part.holds_excluded = set(summary["held"])
    dst_part.scanned = summary["count"]
    return src_part, dst_part


def _with_origins(region: Region, src: Snapshot, dirty: list[Key], history: Any) -> Region:
    """``region`` grown by where its source nodes came from: identity beats a name (SPEC
    section 3). A node of the region (or a directory whose listing differs) whose
    identity the history places at another key came from there (a rename, a swap, a
    rotation): that key is compared too, whole, so diff matches the two by identity as
    a full comparison would, even where the node at the old key kept its name and
    payload. Repeated until no new place turns up."""
    rows = src.nodes.rows  # type: ignore[attr-defined]
    checked: set[Key] = set()
    moved_dirs = set(dirty)
    while True:
        keys: set[Key] = {*region.shallow, *(d for d in dirty if d)}
        for top in region.deep:
            if top in rows:
                keys.add(top)
                keys.update(src.walk(top))
        keys -= checked
        keys.discard(())
        if not keys:
            return region
        checked |= keys
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


def check_source(source: Backend, src: Snapshot, dst: Snapshot, options: Options) -> None:
    """SPEC section 8: a source root that could not be read, or that is empty while the
    destination is not, is never a reason to delete."""
    _check_counts(source, src, len(src.nodes), len(dst.nodes), options)


def _check_counts(
    source: Backend, src: Snapshot, n_src: int, n_dst: int, options: Options
) -> None:
    if () in src.incomplete:
        raise SafetyError(f"{source.url}: source {src.incomplete[()]}; nothing done")
    if n_src <= 1 and n_dst > 1 and not options.allow_empty_source:
        raise SafetyError(
            f"{source.url}: source is empty but the destination is not; refusing to delete "
            "everything (--allow-empty-source to allow it)"
        )


def open_history(source: Backend, destination: Backend, options: Options) -> Any:
    """The pair's history, or None (no history asked for, or a dry run without one).

    A batch that a killed run left unfinished is rolled forward first (the history is
    then incomplete: this run compares in full; see ``journal``)."""
    if options.state == "" or not options.delete:
        return None
    from .history import History, default_state_path

    path = options.state or default_state_path()
    history = None
    try:
        if not options.dry_run:
            history = History(path, _url_id(source), _url_id(destination))
        elif os.path.exists(path):  # a dry run reads the history, never creates it
            history = History(path, _url_id(source), _url_id(destination), readonly=True)
    except (OSError, sqlite3.Error) as e:
        raise UsageError(f"{path}: cannot open the history: {e}") from None
    if history is not None and not _journal_recover(history) and history.readonly:
        history.close()  # a dry run after a killed one: plan without the history
        return None
    return history


def plan_between(
    source: Backend,
    destination: Backend,
    src: Snapshot,
    dst: Snapshot,
    history: Any,
    options: Options,
) -> Comparison:
    """Diff and plan two snapshots (whole trees, or the same partial region of both)."""
    digests: dict[tuple[Side, Key], bytes | None] = {}

    def digest(side: Side, key: Key) -> bytes | None:
        k = (side, key)
        if k not in digests:
            digests[k] = (source if side == "source" else destination).digest(key)
        return digests[k]

    changes = diff(
        src,
        dst,
        history if history is not None and history.complete else None,
        checksum=options.checksum,
        digest=digest,
        delete=options.delete,
        moves=destination.capabilities.subtree_move and options.delete,
    )
    warnings: list[str] = []
    n_delete = sum(1 for c in changes if c.op == DELETE)
    if options.max_delete is not None and n_delete > options.max_delete:
        warnings.append(
            f"{n_delete} deletions planned, more than --max-delete {options.max_delete}: "
            "no deletion done"
        )
        changes = diff(
            src, dst, None, checksum=options.checksum, digest=digest,
            delete=False, moves=False, replace=False,
        )
    the_plan = plan(changes, dst, case_insensitive=destination.capabilities.case_insensitive)
    if options.check:
        check_plan(
            the_plan.ops, dst, src,
            case_insensitive=destination.capabilities.case_insensitive,
            allow_extra=not options.delete or bool(warnings),
        )
    return Comparison(source, destination, src, dst, the_plan, history, warnings)


def _url_id(backend: Backend) -> str:
    root = getattr(backend, "root", None)
    return f"file://{os.path.realpath(root)}" if root is not None else backend.url


def sync_once(
    source_url: str,
    destination_url: str,
    options: Options = Options(),
    *,
    on_planned: Callable[[Plan], None] | None = None,
    on_done: Callable[[Op], None] | None = None,
) -> Report:
    """Make ``destination_url`` equal to ``source_url`` once; the report says how it went.

    ``on_planned`` gets the plan before anything is applied; an initial copy into an
    empty destination is streamed (it has no plan of the whole tree) only without it."""
    t0 = time.perf_counter()
    source, destination = open_pair(source_url, destination_url, options.exclude_attrs)
    history = None
    try:
        history = open_history(source, destination, options)
        if _streams(source, destination, history, options, on_planned):
            report = _sync_streamed(source, destination, history, options, on_done)
            report.source, report.destination = source_url, destination_url
            report.elapsed = time.perf_counter() - t0
            return report
        src, dst = scan_both(source, destination, options, history)
        cmp = plan_between(source, destination, src, dst, history, options)
    except BaseException:
        if history is not None:
            history.close()
        source.close()
        destination.close()
        raise
    try:
        report = Report(source=source_url, destination=destination_url, dry_run=options.dry_run)
        report.plan = cmp.plan
        for side, snap in (("source", cmp.src), ("destination", cmp.dst)):
            report.compared[side] = len(snap.nodes)
            report.scanned[side] = snap.scanned if snap.scanned is not None else len(snap.nodes)
        report.skipped = list(cmp.src.skipped)
        report.warnings = list(cmp.warnings)
        report.problems.extend(
            Problem(k, f"not synced: {why}", retry=True)
            for k, why in cmp.src.incomplete.items()
        )
        report.problems.extend(
            Problem(k, f"not synced: the destination {why}", retry=True)
            for k, why in cmp.dst.incomplete.items()
        )
        if cmp.warnings:
            report.problems.append(Problem((), cmp.warnings[0]))
        if on_planned is not None:
            on_planned(cmp.plan)
        if not options.dry_run:
            _apply(cmp, options, report, on_done)
        report.elapsed = time.perf_counter() - t0
        return report
    finally:
        cmp.close()


def _streams(
    source: Backend,
    destination: Backend,
    history: Any,
    options: Options,
    on_planned: Callable[[Plan], None] | None,
) -> bool:
    """Whether this sync is an initial copy that can be streamed: into an empty
    destination, with a history that holds nothing for the pair (a history of other
    content would be recorded differently), not a dry run, no caller waiting for the
    plan, no hard links (linking needs the whole tree) and no ``check`` (it checks a
    plan)."""
    if options.dry_run or options.hard_links or options.check or on_planned is not None:
        return False
    if history is not None and not history.is_empty():
        return False
    from .populate import can_populate

    return can_populate(source, destination)


def _sync_streamed(
    source: Backend,
    destination: Backend,
    history: Any,
    options: Options,
    on_done: Callable[[Op], None] | None,
) -> Report:
    """The initial copy, streamed (``populate``); the report a planned sync would give."""
    from .populate import populate

    report = Report(source=source.url, destination=destination.url)
    journal = _journal_open(history)
    # a source that streams itself (a server) is read in a thread, and small batches
    # keep the writer going; a filesystem walk stays inline, in batches as large as a
    # planned sync's (the applier may then fork copy workers, and syncs once)
    ahead = getattr(source, "stream", None) is not None
    try:
        done = populate(
            source, destination, exclude=_exclude_matcher(options.exclude),
            run=lambda ops, final, then: run_batch(journal, destination, ops, source, final,
                                                   options, on_done, while_flushing=then),
            history=history, batch_ops=STREAM_BATCH_OPS if ahead else BATCH_OPS,
            batch_bytes=BATCH_BYTES, min_batch=STREAM_MIN_BATCH, keep=0, ahead=ahead,
        )
    finally:
        if journal is not None:
            journal.close()
    report.counts = done.counts
    report.streamed = done.planned
    report.bytes_copied = done.bytes_copied
    report.problems = done.problems
    report.skipped = done.skipped
    report.scanned = dict(done.seen)
    report.compared = dict(done.seen)
    return report


def _apply(
    cmp: Comparison, options: Options, report: Report, on_done: Callable[[Op], None] | None
) -> None:
    dst = cmp.destination
    ops = cmp.plan.ops
    failed: set[Key] = set()
    journal = _journal_open(cmp.history)
    recorded = False

    def record(result: ApplyResult) -> None:  # after the last batch, while it flushes
        nonlocal recorded
        failed.update(p.key for p in result.problems)
        _record(cmp, failed)
        recorded = True

    try:
        batches = _batches(ops) or [()]  # one batch even when empty: it cleans up
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1 and cmp.history is not None
            result = run_batch(journal, dst, batch, cmp.source, cmp.src, options, on_done,
                               while_flushing=record if last else None)
            for op in result.done:
                report.counts[op.op] += 0 if op.temporary else 1
            report.bytes_copied += result.bytes_copied
            report.problems.extend(result.problems)
            failed.update(p.key for p in result.problems)
    finally:
        if journal is not None:
            journal.close()
    if cmp.history is not None and not recorded:
        _record(cmp, failed)


def run_batch(
    journal: Any,
    destination: Backend,
    ops: Sequence[Op],
    source: Backend,
    final: Snapshot,
    options: Options,
    on_done: Callable[[Op], None] | None = None,
    while_flushing: Callable[[ApplyResult], None] | None = None,
) -> ApplyResult:
    """One batch of ops on ``destination``, journaled when there is a journal: recorded
    before it runs, marked done after its syncfs (SPEC section 5).

    ``while_flushing(result)`` runs once the ops are applied, while the destination's
    flush still runs where the backend can let it (a filesystem's ``syncfs``): the
    caller records the history there. The batch is marked done only once both are
    over: a history written before the flush ends is never trusted alone, since a run
    that finds the batch unfinished compares everything (``journal``)."""
    logged = journal is not None and bool(ops)
    if logged:
        journal.begin(ops)
    extra: dict[str, bool] = {}
    if options.hard_links:
        extra["hard_links"] = True
    if while_flushing is not None and destination.capabilities.deferred_flush:
        extra["defer_durable"] = True
    result = destination.apply_batch(
        ops, source, final, fsync=options.fsync, on_done=on_done, **extra
    )
    try:
        if while_flushing is not None:
            while_flushing(result)
    finally:
        if result.durable is not None:
            result.durable()
            result.durable = None
    if logged:
        journal.done()
    return result


def _journal_recover(history: Any) -> bool:
    from .journal import recover

    return recover(history)


def _journal_open(history: Any) -> Any:
    from .journal import open_for

    return open_for(history)


def _batches(ops: Sequence[Op]) -> list[Sequence[Op]]:
    out: list[Sequence[Op]] = []
    start = 0
    size = 0
    for i, op in enumerate(ops):
        if op.node is not None and (op.op == CREATE or (op.op == UPDATE and op.content)):
            size += op.node.size
        if i + 1 - start >= BATCH_OPS or size >= BATCH_BYTES:
            out.append(ops[start : i + 1])
            start, size = i + 1, 0
    if start < len(ops):
        out.append(ops[start:])
    return out


def _record(cmp: Comparison, failed: set[Key]) -> None:
    history = cmp.history
    if not history.complete:
        keys = [k for k in cmp.src.nodes if k not in failed]
        history.record(cmp.src, keys, full=True)
        return
    set_keys: list[Key] = []
    drop_prefixes: list[Key] = []
    drop_keys: list[Key] = list(failed)
    for c in cmp.plan.changes:
        if c.op == MOVE:
            assert c.to is not None
            drop_prefixes.append(c.key)
            if c.key in failed or c.to in failed:
                drop_prefixes.append(c.to)
                continue
            set_keys.append(c.to)
            set_keys.extend(cmp.src.walk(c.to))
        elif c.op == DELETE:
            drop_keys.append(c.key)
        elif c.key not in failed:
            set_keys.append(c.key)
    if set_keys or drop_prefixes or drop_keys:
        history.record(cmp.src, set_keys, drop_prefixes, drop_keys)
