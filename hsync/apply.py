"""The apply step: a plan's ops in journaled batches, the history recorded as they land.

One batching policy (``Batching``), one journaled batch (``run_batch``: recorded in the
journal before it runs, marked done after its flush, SPEC 5; in two halves,
``start_batch`` and ``finish_batch``, so that a remote destination keeps a window of
batches in flight, their results taken in order as the acknowledgements arrive), one
way to apply a plan (``apply_plan``) and to record what it did in the history
(``record``). ``sync``, a
watch round, ``verify --repair`` (through ``sync``) and the streamed initial copy
(``hsync.populate``) all apply through here.

The history of the last batch is recorded while that batch's flush still runs where
the destination can defer its flush (a filesystem's ``syncfs``): the batch is marked
done in the journal only after both, so a history written before the flush ended is
never trusted alone (a run that finds the batch unfinished compares everything).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import ChainMap, deque
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from functools import partial

from ._values import define, evolve, field, frozen
from .backend import ApplyOptions, ApplyResult, PendingBatch
from .cancel import NEVER, Cancel
from .errors import CANCELLED, RETRY
from .model import (
    CONTAINERS,
    CREATE,
    DELETE,
    FILE,
    MOVE,
    UPDATE,
    Change,
    Key,
    Node,
    Op,
    Problem,
    Snapshot,
)
from .session import PairSession

TYPE_CHECKING = False  # not typing's: a sync that applies ops does not import typing
if TYPE_CHECKING:
    from typing import Any


@frozen(kw_only=True)
class Batching:
    """How many ops, and how many bytes of content, one batch holds at most; a batch is
    what a stop request waits for, and what one flush of the destination covers."""

    max_ops: int = 100_000
    max_bytes: int = 1 << 30
    min_ops: int = 1
    """A streamed copy sends a batch this large when the walk has nothing more ready."""


ONE_SHOT = Batching()
"""``hsync sync``: few, large batches (one flush per batch)."""
LIVE = Batching(max_ops=1000, max_bytes=64 << 20, min_ops=1000)
"""A watch round: a stop request waits for at most one small batch."""
STREAMED = Batching(max_ops=10_000, max_bytes=64 << 20, min_ops=250)
"""An initial copy from a source read ahead in a thread (a server's pages). Each batch
costs three synchronous SQLite commits (journal begin and done, the history): at 2,000
ops a batch they were 12% of a 100,000-entry LDAP load on a busy disk (bench/README.md)."""


STREAM_CHUNK = 512
"""Ops of a streamed batch (``Stream``) journaled at a time, before they run."""

RETRY_DELAYS = (0.05, 0.1, 0.2)
"""The pauses before each new try of a copy whose source changed while it was read
(a file being written): one more try after each, within the batch."""


@define
class Applied:
    """What applying a plan (or a streamed copy) did."""

    done: list[Op] = field(factory=list)
    problems: list[Problem] = field(factory=list)
    bytes_copied: int = 0
    counts: dict[str, int] = field(
        factory=lambda: dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)
    )
    warnings: list[str] = field(factory=list)

    def add(self, result: ApplyResult) -> None:
        self.done.extend(result.done)
        self.problems.extend(result.problems)
        self.warnings.extend(result.warnings)
        self.bytes_copied += result.bytes_copied
        for op in result.done:
            self.counts[op.op] += 0 if op.temporary else 1


def batches(ops: Sequence[Op], batching: Batching) -> Iterator[tuple[int, Sequence[Op]]]:
    """``(start, ops[start:end])`` slices of at most ``max_ops`` ops and about
    ``max_bytes`` of content; one empty batch when there is no op (it cleans up)."""
    start = size = 0
    for i, op in enumerate(ops):
        if op.node is not None and (op.op == CREATE or (op.op == UPDATE and op.content)):
            size += op.node.size
        if i + 1 - start >= batching.max_ops or size >= batching.max_bytes:
            yield start, ops[start : i + 1]
            start, size = i + 1, 0
    if start < len(ops) or not ops:
        yield start, ops[start:]


@define
class Started:
    """A batch under way (``start_batch``): journaled, sent or applied; its result is
    taken by ``finish_batch``."""

    ops: Sequence[Op]
    final: Snapshot
    options: ApplyOptions
    logged: int | None
    """Its sequence number in the journal (None: not journaled)."""
    result: ApplyResult | None = None
    """The result, when the destination applied it at once (a local one)."""
    pending: PendingBatch | None = None
    """Where the result comes from, when the batch is in flight (a remote one)."""
    cancel: Cancel = NEVER
    on_done: Callable[[Op], None] | None = None
    journal_synced: Callable[[], None] | None = None
    """Waits for the journal's flush of this batch's record, started on a thread beside
    the ops (``start_batch``), and raises what it raised; None: not started."""


class Stream(Sequence[Op]):
    """The ops of a batch that is applied while the walk still finds them: iterating it
    (once, in order: the destination's ``apply_batch``) walks on, ``STREAM_CHUNK`` ops
    at a time; each chunk is handed to ``journal`` (the batch's record in the journal,
    extended) before any op of it is handed out, so every op is journaled before it
    runs (SPEC 5). ``known`` (also ``len`` and indexing): the ops handed out so far,
    ``ops`` as given first (the destination counts its files to choose its copy
    workers). An exception of the walk (a cancel) ends the stream; it is kept in
    ``error`` for the caller to raise once the batch is finished."""

    def __init__(self, ops: list[Op], more: Callable[[], Op | None]) -> None:
        self.known = ops
        self.more = more
        self.journal: Callable[[Sequence[Op]], None] | None = None
        self.error: BaseException | None = None
        self.ended = False

    def __iter__(self) -> Iterator[Op]:
        known, i, handed = self.known, 0, len(self.known)
        while True:
            while i < handed:
                yield known[i]
                i += 1
            if self.ended:
                return
            start = len(known)
            try:
                while len(known) - start < STREAM_CHUNK and (op := self.more()) is not None:
                    known.append(op)
            except BaseException as e:  # raised by the caller, after the batch
                self.error = e
                self.ended = True
            if len(known) - start < STREAM_CHUNK:
                self.ended = True
            if len(known) > start and self.journal is not None:
                self.journal(known[start:])
            handed = len(known)

    def close(self) -> None:
        """End the stream where it is: iterated again (the retries of the batch), it
        hands out only the ops it handed out already, and walks no further."""
        self.ended = True

    def __len__(self) -> int:
        return len(self.known)

    def __getitem__(self, i: Any) -> Any:  # an index, an Op; a slice, a list of them
        return self.known[i]


def window(session: PairSession) -> int:
    """How many batches the destination keeps in flight (1: a local one)."""
    windowed = session.destination.features.windowed
    return max(1, windowed.window()) if windowed is not None else 1


def batching_for(session: PairSession, batching: Batching) -> Batching:
    """``batching``, its batches made no larger than a remote destination wants them
    (``Windowed.batch_limits``: small enough that a window of them keeps the link and
    the far side busy at once; a local destination keeps ``batching``)."""
    windowed = session.destination.features.windowed
    if windowed is None:
        return batching
    max_ops, max_bytes = windowed.batch_limits()
    return evolve(batching, max_ops=min(batching.max_ops, max_ops),
                        max_bytes=min(batching.max_bytes, max_bytes),
                        min_ops=min(batching.min_ops, max_ops))


def start_batch(
    session: PairSession,
    ops: Sequence[Op],
    final: Snapshot,
    *,
    cancel: Cancel = NEVER,
    on_done: Callable[[Op], None] | None = None,
    defer: bool = False,
) -> Started:
    """Journal ``ops`` (when there is a journal) and start them on the destination: a
    local destination applies them now; a remote one (``Windowed``, with a window of
    more than one) has them sent and returns at once, their result comes with the
    acknowledgement. ``defer``: the destination may defer its flush (``finish_batch``
    runs ``while_flushing`` meanwhile)."""
    journal = session.journal
    stream = ops if isinstance(ops, Stream) else None
    # flushed before the history is recorded (``finish_batch``) or by ``done``, not
    # before the ops run: they do not wait for an fsync of the journal (``hsync.journal``)
    logged = journal.begin(ops if stream is None else stream.known, durable=False) if (
        journal is not None and ops) else None
    if stream is not None and logged is not None:
        assert journal is not None
        stream.journal = partial(journal.extend, logged)  # the rest, as it is walked
    destination = session.destination
    options = ApplyOptions(
        fsync=session.options.fsync,
        hard_links=session.options.hard_links,
        sparse=session.options.sparse,
        defer_durable=defer and destination.capabilities.deferred_flush,
    )
    prefetching = session.source.features.prefetching
    if prefetching is not None:  # a far source streams what the batch reads, at once
        prefetching.delta_bases(destination.backend, ops)  # deltas against the old files
        prefetching.prefetch([op.key for op in ops if op.node is not None
                              and op.node.kind == FILE and (op.op == CREATE
                                  or (op.op == UPDATE and op.content))],
                             sparse=options.sparse)
    started = Started(ops, final, options, logged, cancel=cancel, on_done=on_done)
    windowed = destination.features.windowed
    if windowed is not None and windowed.window() > 1:
        started.pending = windowed.submit_batch(
            ops, session.source.backend, final, options=options, cancel=cancel)
    else:
        if logged is not None and stream is None and options.defer_durable:
            assert journal is not None
            # the record's flush, due before the history is recorded (``finish_batch``),
            # waits on the disk beside the ops instead of after them (a spread delete's
            # unlinks wait on the disk too); nothing else uses the journal meanwhile:
            # this batch runs alone, its ops all journaled already
            started.journal_synced = _on_thread(partial(journal.sync, logged))
        try:
            started.result = destination.backend.apply_batch(
                ops, session.source.backend, final, options=options, cancel=cancel,
                on_done=on_done,
            )
        except BaseException:
            if started.journal_synced is not None:  # done with the journal before it
                with contextlib.suppress(Exception):  # goes on to close it
                    started.journal_synced()
            raise
        if stream is not None:
            stream.close()  # what a cancel or a full disk left unwalked stays so
    return started


def finish_batch(
    session: PairSession,
    started: Started,
    *,
    while_flushing: Callable[[ApplyResult], None] | None = None,
) -> ApplyResult:
    """The result of a batch ``start_batch`` started (waiting for its acknowledgement
    when it is in flight), its changed files retried, the journal marked done after
    its flush. ``while_flushing(result)`` runs once the ops are applied, while the
    destination's flush still runs where it can defer it: the caller records the
    history there."""
    if started.journal_synced is not None:
        started.journal_synced()  # before anything else uses the journal
    result = started.result
    if result is None:
        assert started.pending is not None
        result = started.pending.result()
        if started.on_done is not None:
            for op in result.done:
                started.on_done(op)
    ops, final, options = started.ops, started.final, started.options
    if any(p.kind == RETRY for p in result.problems):
        retry_changed(session, ops, final, result, options, cancel=started.cancel,
                      on_done=started.on_done)
    # every write of the batch ended (a far one: acknowledged): ``mark_equal``
    session.written_ns = time.time_ns()
    try:
        if while_flushing is not None:
            if started.logged is not None and result.durable is not None:
                assert session.journal is not None
                # the record on disk before the history that trusts the flush still
                # running (a batch durable already, a remote one acknowledged: no fsync)
                session.journal.sync(started.logged)
            while_flushing(result)
    finally:
        if result.durable is not None:
            result.durable()
            result.durable = None
    if started.logged is not None:
        assert session.journal is not None
        # after the flush; not flushed itself (a lost "done" is a roll-forward, one full
        # comparison): a watch round does not wait for one more fsync
        session.journal.done(started.logged, durable=False)
    return result


def _on_thread(call: Callable[[], None]) -> Callable[[], None]:
    """``call`` started on a thread; what is returned waits for it and raises what it
    raised."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # raised by the caller's wait
            error.append(e)

    thread = threading.Thread(target=run, name="hsync-journal")
    thread.start()

    def wait() -> None:
        thread.join()
        if error:
            raise error[0]

    return wait


def run_batch(
    session: PairSession,
    ops: Sequence[Op],
    final: Snapshot,
    *,
    cancel: Cancel = NEVER,
    on_done: Callable[[Op], None] | None = None,
    while_flushing: Callable[[ApplyResult], None] | None = None,
) -> ApplyResult:
    """One batch of ops on the session's destination, journaled when there is a
    journal: recorded before it runs, marked done after its flush (``start_batch``,
    then ``finish_batch``: see them)."""
    started = start_batch(session, ops, final, cancel=cancel, on_done=on_done,
                          defer=while_flushing is not None)
    return finish_batch(session, started, while_flushing=while_flushing)


def retry_changed(
    session: PairSession,
    ops: Sequence[Op],
    final: Snapshot,
    result: ApplyResult,
    options: ApplyOptions,
    *,
    cancel: Cancel = NEVER,
    on_done: Callable[[Op], None] | None = None,
) -> None:
    """Try again, a few times (``RETRY_DELAYS``), the file copies of ``ops`` that failed
    with a problem of kind ``retry`` (the source changed while it was read: a file being
    written), each with the source's node as it is now (in the op and in ``final``, so
    the history records what was copied). Still changing after the last try: the
    problem stays (exit 3), unless ``--copy-unstable``, where the last try publishes
    what it read, with a warning. ``result`` is updated in place."""
    files = {op.key: op for op in ops
             if op.op in (CREATE, UPDATE) and op.node is not None and op.node.kind == FILE}
    unstable = session.options.copy_unstable
    source = session.source.backend
    for n, delay in enumerate(RETRY_DELAYS):
        failed = [p for p in result.problems if p.kind == RETRY and p.key in files]
        if not failed or cancel.cancelled():
            break
        time.sleep(delay)
        again: list[Op] = []
        now: dict[Key, Node] = {}
        for p in failed:
            node = source.stat(p.key)
            if node is not None and node.kind == FILE:
                now[p.key] = node
                again.append(evolve(files[p.key], node=node))
        if not again:
            break
        _set_nodes(final, now)
        last = n == len(RETRY_DELAYS) - 1
        tried = session.destination.backend.apply_batch(
            again, source, final, cancel=cancel, on_done=on_done,
            options=evolve(options, defer_durable=False, copy_unstable=last and unstable),
        )
        result.problems = [p for p in result.problems if p.key not in now] + tried.problems
        result.done.extend(tried.done)
        result.bytes_copied += tried.bytes_copied
        files.update((op.key, op) for op in again)
        if last and unstable:
            result.warnings.extend(
                f"{'/'.join(op.key)}: changed while it was copied; published as read "
                f"({op.node.size if op.node else 0} bytes, --copy-unstable)"
                for op in tried.done
            )
    tries = len(RETRY_DELAYS) + 1
    result.problems = [
        evolve(p, message=f"{p.message} ({tries} tries; --copy-unstable copies it "
                     "anyway)")
        if p.kind == RETRY and p.key in files and not unstable else p
        for p in result.problems
    ]


def _set_nodes(final: Snapshot, now: dict[Key, Node]) -> None:
    """``final`` with the nodes in ``now`` (in place: the caller records from it)."""
    nodes: Any = final.nodes
    if isinstance(nodes, MutableMapping):
        nodes.update(now)
    else:
        final.nodes = ChainMap(now, nodes)


def apply_plan(
    session: PairSession,
    ops: Sequence[Op],
    final: Snapshot,
    *,
    record: Callable[[set[Key]], None] | None = None,
    batching: Batching = ONE_SHOT,
    cancel: Cancel = NEVER,
    on_done: Callable[[Op], None] | None = None,
    on_batch: Callable[[ApplyResult], None] | None = None,
) -> Applied:
    """Apply ``ops`` (leading to ``final``, the source snapshot) in batches.

    ``record(failed_keys)`` records the history; it runs once, while the last batch's
    flush still runs, with the keys of every op that failed or did not run. A cancel
    between batches leaves the rest unrun: those ops come back as problems of kind
    ``cancelled`` (and their keys are not recorded as synced)."""
    out = Applied()
    failed: set[Key] = set()
    recorded = False

    def record_now(result: ApplyResult) -> None:
        nonlocal recorded
        failed.update(p.key for p in result.problems)
        if record is not None:
            record(failed)
        recorded = True

    # a remote destination keeps a window of batches in flight: each is started
    # before the oldest one's result is taken, and the results are taken in order (a
    # local destination: a window of one, each batch done before the next starts)
    width = window(session)
    slices = list(batches(ops, batching_for(session, batching)))
    flying: deque[tuple[bool, Started]] = deque()

    def finish_oldest() -> None:
        last, started = flying.popleft()
        result = finish_batch(session, started, while_flushing=record_now if last else None)
        out.add(result)
        failed.update(p.key for p in result.problems)
        if on_batch is not None:
            on_batch(result)

    for i, (start, batch) in enumerate(slices):
        if cancel.cancelled():
            while flying:
                finish_oldest()
            for op in ops[start:]:
                out.problems.append(Problem(op.key, f"{op.op} not run: {cancel.reason}",
                                            op=op.op, kind=CANCELLED))
                failed.add(op.key)
                if op.to is not None:
                    failed.add(op.to)
            break
        last = i == len(slices) - 1 and record is not None
        flying.append((last, start_batch(session, batch, final, cancel=cancel,
                                         on_done=on_done, defer=last)))
        while len(flying) >= width or (flying and i == len(slices) - 1):
            finish_oldest()
    while flying:
        finish_oldest()
    if record is not None and not recorded:
        record(failed)
    return out


def record(
    session: PairSession, src: Snapshot, changes: Sequence[Change], failed: set[Key]
) -> None:
    """Record in the history what a plan made true (``src``: the source snapshot it was
    made from): with a complete history only the changed keys (a move carries its
    subtree), else the whole snapshot. ``failed``: keys whose op failed or did not run."""
    history = session.history
    if history is None:
        return
    if not history.complete:
        keys = [k for k in src.nodes if k not in failed]
        history.record(src, keys, full=True)
        return
    set_keys: list[Key] = []
    drop_prefixes: list[Key] = []
    # a move that failed or did not run left the destination's node where it was (a
    # rename is all or nothing): its rows stay, so the next run renames it instead of
    # copying it again (where it did happen, the next run's check of the destination
    # distrusts the rows)
    stayed = {c.key for c in changes if c.op == MOVE and (c.key in failed or c.to in failed)}
    drop_keys: list[Key] = [k for k in failed if k not in stayed]
    renames: list[tuple[Key, Key]] = []
    for c in changes:
        if c.op == MOVE:
            assert c.to is not None
            if c.key in stayed:
                if c.key[:len(c.to)] != c.to:
                    drop_prefixes.append(c.to)
                continue
            drop_prefixes.append(c.key)
            set_keys.append(c.to)
            if c.to in src.folded:  # its descendants are not in src: their rows move
                renames.append((c.key, c.to))
            else:
                set_keys.extend(src.walk(c.to))
        elif c.op == DELETE:
            drop_keys.append(c.key)
        elif c.key not in failed:
            set_keys.append(c.key)
    # A node replaced in place by an equal-looking one (``cp -p`` over it, an installer
    # unpacking the same file) has a new identity and no op. Its parent's payload
    # changed (a rename or create in a directory touches it): the children of the
    # containers updated here, listed or left out as equal (``equal_children``), take
    # the identity the source has now, in the rows that exist (none is invented).
    # Only where a rename or create touches its parent (a directory's mtime): an LDAP
    # entry's update says nothing of its children, and would rewrite every child's row.
    setting = set(set_keys)
    updated = {c.key for c in changes
               if c.op == UPDATE and c.kind in CONTAINERS and c.key not in failed
               } if session.source.capabilities.renames_touch_parents else set()
    idents = [
        (k, n.identity)
        for u in updated for k in src.children(u)
        if k not in setting and k not in failed
        and (n := src.nodes.get(k)) is not None and n.identity is not None
    ]
    idents += [(k, i) for k, i in src.equal_children
               if k[:-1] in updated and k not in setting and k not in failed]
    if set_keys or drop_prefixes or drop_keys or idents:
        history.record(src, set_keys, drop_prefixes, drop_keys, renames=renames,
                       identities=idents)
