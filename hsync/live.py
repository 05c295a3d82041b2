"""The long-running loop: notifications mark subtrees dirty, rounds sync them (SPEC 6, 7).

Threads and who does what:

- the backend's watcher (watchdog's threads, a syncrepl thread) only calls the
  ``Dirty`` sink: it never scans or applies;
- one loop per pair (``PairWatch.run``) waits for a quiet period (``debounce``, bounded
  by ``max_delay`` so a source that never goes quiet is still followed), takes the dirty
  region, rescans it on both sides, diffs, plans and applies it, and records the
  history.

A notification that touches the region being compared marks the comparison stale: the
scan stops at its next directory, the plan is dropped, and the region goes back to the
dirty set to be compared again after the next quiet period (at most ``max_restarts``
times in a row, so a subtree that never goes quiet is still synced; the applier then
checks each source file before publishing it). Full comparisons are not restarted
(on a busy tree they would never end): what changes during one is the next round's work.

Lost notifications (queue overflow, an observer that died) lead to a full comparison,
with a backoff so that an overflow storm does not become a loop of full rescans.

Resuming (a watcher whose change stream has positions: LDAP syncrepl cookies). Before
the loop takes the dirty set for a round it asks the watcher for a checkpoint: every
change up to it is then in the set or in earlier rounds. When the round has applied
and recorded everything (no problem, no warning, not interrupted, nothing put back or
waiting for a retry, no notification lost since), the checkpoint is stored in the
history as the pair's resume token; a loss drops it. A restart with a complete history
and a token stored for the same roots and options starts the watcher from the token
(its identity -> key map seeded from the history): the watcher reports what changed
since as dirty keys and the start-up full comparison is skipped. A watcher that cannot
resume (the server refused or forgot the token) falls back to the full comparison.
Directories that could not be watched are rescanned every ``poll_interval``. A source
root that vanished (unmounted, deleted, unreadable, suddenly empty) is never a reason
to delete: the loop reports it and waits for the root to come back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import attrs

from .apply import ONE_SHOT, Batching, apply_plan, record
from .backend import ApplyResult, Credentials, Watch
from .cancel import Cancel
from .compare import Comparison, compare_region, compare_trees
from .dirty import Dirty
from .errors import CANCELLED, Cancelled, HsyncError, LinkLost, SafetyError
from .filters import build as build_filter
from .itemize import describe
from .model import FILE, Key, Op, Problem
from .options import Options, withheld_line
from .populate import can_populate, populate, streamed
from .region import Region, quick_pass
from .resume import ResumeKeeper
from .session import PairSession
from .status import PairStatus, StatusFile

if TYPE_CHECKING:
    from concurrent.futures import Executor

log = logging.getLogger("hsync.watch")

FULL_BACKOFF_MIN = 1.0
FULL_BACKOFF_MAX = 60.0
RETRY_MAX = 60.0
ROOT_POLL = 1.0
POLL_MANY = 1000
"""More unwatched subtrees than this are polled by one full (quick) pass instead."""
BATCH_BYTES = 64 << 20
"""Bytes copied per batch at most (with ``batch_ops``): what a stop request waits for."""
INITIAL_OPS_LOGGED = 100
"""An initial copy logs its first ops one info line each, then progress and a summary
(every op with ``WatchOptions.verbose``; at debug level otherwise)."""
PROGRESS_EVERY = 10.0
"""Seconds between the progress lines of an initial copy."""
__all__ = ["Dirty", "PairStatus", "PairWatch", "RoundResult", "StatusFile", "WatchOptions"]


class PairLog(logging.LoggerAdapter):
    """A pair's logger: every record carries ``pair`` (the pair's name), which the
    text formatter puts first and the JSON formatter writes as a field. Messages are
    left unescaped: the formatter escapes the whole line once."""

    def __init__(self, logger: logging.Logger, pair: str) -> None:
        super().__init__(logger, {"pair": pair})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return msg, kwargs

    def applied(self, op: Op, level: int = logging.INFO) -> None:
        """One info line per applied op (the ``on_done`` of the apply step); the JSON
        log also gets ``op``, ``kind``, ``path`` and ``to`` as fields."""
        if self.isEnabledFor(level):
            self.log(level, "%s", describe(op, escaped=False), extra={"item": op.to_json()})


@attrs.frozen(kw_only=True)
class WatchOptions:
    debounce: float = 0.1
    """Seconds without a notification before a round starts."""
    max_delay: float = 1.0
    """A round starts at the latest this long after the first pending notification."""
    settle: float = 2.0
    """A file modified and not yet closed waits for its close, or this many quiet
    seconds (``max_delay`` does not apply to it)."""
    close_quiet: float = 0.0
    """After a file is closed after its write (complete), a round starts once this many
    seconds pass without a notification (0: at once) instead of ``debounce``, unless the
    first pending event came within ``dirty.BURST_GAP`` (0.1 s) of the last round
    started that way (a burst goes on: it waits for the whole debounce)."""
    rescan_interval: float | None = None
    """Seconds between full comparisons that repair drift made by others (None: off)."""
    poll_interval: float = 10.0
    """Seconds between rescans of subtrees that could not be watched."""
    batch_ops: int = 1000
    """Ops per applied batch: a stop request waits for at most one batch."""
    verify_interval: float | None = None
    """Seconds between content-level verifications (``hsync verify``) run beside the
    loop; what they find is repaired by the next round (None: off)."""
    max_restarts: int = 3
    verbose: bool = False
    """Log every op of an initial copy into an empty destination at info level (else
    its first ``INITIAL_OPS_LOGGED``, then progress every ``PROGRESS_EVERY`` seconds
    and a summary; the others at debug level)."""


@attrs.frozen
class RoundResult:
    """What one round did (for ``on_round`` callbacks: tests, the status file)."""

    region: Region
    full: bool
    """A full comparison: both trees, or the source against the history (quick)."""
    ops: tuple[Op, ...]
    done: tuple[Op, ...]
    problems: tuple[Problem, ...]
    seconds: float
    phases: tuple[tuple[str, float], ...] = ()
    """Seconds per phase of the round, in order: ``waited`` (from the oldest pending
    event to the round's start), ``compared``, ``applied`` (the ops, the journal, the
    history and the destination's flush)."""


class PairWatch:
    """Keeps one destination equal to one source until stopped."""

    def __init__(
        self,
        source_url: str,
        destination_url: str,
        options: Options | None = None,
        wopts: WatchOptions | None = None,
        *,
        name: str | None = None,
        status: StatusFile | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
        on_compared: Callable[[Region], None] | None = None,
        credentials: tuple[Credentials | None, Credentials | None] = (None, None),
        early: Executor | None = None,
    ) -> None:
        self.source_url = source_url
        self.destination_url = destination_url
        self.credentials = credentials
        self.options = options = options if options is not None else Options()
        self.wopts = wopts = wopts if wopts is not None else WatchOptions()
        self.exclude = build_filter(options.exclude, options.include, options.filters)
        self.batching = Batching(max_ops=wopts.batch_ops, max_bytes=BATCH_BYTES,
                                 min_ops=wopts.batch_ops)
        self.dirty = Dirty(self.exclude, settle=wopts.settle, close_quiet=wopts.close_quiet)
        self.status = PairStatus(name or source_url, source_url, destination_url)
        self.log = PairLog(log, self.status.name)
        """The pair's logger: every record names the pair (``pair``), each applied op
        is one info line (``applied``)."""
        self.status_file = status or StatusFile(None)
        self.status_file.pairs.append(self.status)
        self.on_round = on_round
        self.on_compared = on_compared  # a test's window between compare and apply
        self._stopped = Cancel()
        """Cancelled by ``stop``: the apply step stops between batches."""
        self._comparing = Cancel.when(self._interrupt)
        """Cancelled by a stop, or by a change under the comparison in flight."""
        self._in_a_row = 0  # restarts of the current region
        self._dst_root: Hashable | None = None
        self._full_not_before = 0.0
        self._full_backoff = FULL_BACKOFF_MIN
        self._last_loss = 0.0
        self._retry_at: float | None = None
        self._retry_keys: set[Key] = set()
        self._retry_delay = 1.0
        self._blocked: str | None = None
        self._checksum_next = False
        self.resume = ResumeKeeper(options)
        self.watcher: Watch | None = None
        """The source's watch while one runs (tests inject faults at its boundary)."""
        self._early = early
        """Copy workers forked before any thread ran (``copy.forked_early``), for the
        first pass into an empty destination; shut down after the first round."""

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, record the history and return."""
        self._stopped.cancel("stopping")
        self.dirty.stop()

    @property
    def stopping(self) -> bool:
        return self._stopped.cancelled()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until a stop is asked; True when it was."""
        return self._stopped.wait(seconds)

    def _interrupt(self) -> bool:
        return self._stopped.cancelled() or (
            self.dirty.stale and self._in_a_row < self.wopts.max_restarts
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Run until ``stop()``. Raises ``HsyncError`` when the pair cannot be opened."""
        try:
            with PairSession(
                self.source_url, self.destination_url, self.options,
                credentials=self.credentials,
            ) as session:
                for line in session.notices:
                    self.log.warning("%s", line)
                if session.wire() is not None:  # a remote endpoint: its link is up
                    self.status.link = "up"
                    self.status.link_since = time.time()
                # the destination root as opened (None: not created yet, the first run);
                # one that goes or is replaced later is waited for, never recreated
                self._dst_root = session.destination.backend.root_id()
                while not self.stopping:
                    self._watching(session)
                    if not self.stopping:
                        self._wait_for_root(session)
        finally:
            self._release_early()
            self.status.state = "stopped"
            self.status_file.write()

    def _release_early(self) -> None:
        """The early copy workers are for the first round only: they end after it."""
        if self._early is not None:
            self._early.shutdown(wait=True, cancel_futures=True)
            self._early = None

    def _start_watch(self, session: PairSession) -> Watch | None:
        """The source's watch, started (resumed from the history's token where it can
        be); None when the source cannot be watched (it is polled instead)."""
        source = session.source
        feats = source.features
        resume = self.resume.point(session)
        try:
            if resume is not None and feats.resumable is not None:
                watch = feats.resumable.watch_from(self.dirty, resume)
            elif feats.watchable is not None:
                watch = feats.watchable.watch(self.dirty)
            else:
                self.dirty.unwatched((), "the backend cannot watch")
                return None
            watch.__enter__()
            return watch
        except LinkLost:
            raise
        except (OSError, HsyncError) as e:
            reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
            self.dirty.unwatched((), reason)
            self.log.warning("%s: cannot watch the source (%s): polling every %g s",
                        source.url, reason, self.wopts.poll_interval)
            return None

    def _watching(self, session: PairSession) -> None:
        """One life of the watch: from its start until it dies or a stop."""
        source = session.source
        with self.dirty.cond:
            self.dirty.unwatched_keys.clear()  # a new watch: it says what it cannot watch
        watcher = self.watcher = self._start_watch(session)
        self.status.unwatched = {"/".join(k): v for k, v in self.dirty.unwatched_keys.items()}
        root_id = source.backend.root_id()
        if watcher is not None and watcher.resumed:
            # the watch reported what changed since the token: no full comparison
            self.log.info("%s: resumed from the history's token: %d dirty subtree(s)",
                     source.url, self.dirty.pending())
            self.resume.resumed(self.dirty)
        else:
            self.dirty.lost("start")  # a full comparison first: what changed meanwhile
        self._full_not_before = 0.0
        timers = _Timers(self.wopts)
        verifying: threading.Thread | None = None
        try:
            while not self.stopping:
                if watcher is not None and not watcher.alive:
                    self.log.warning("%s: the watcher stopped (source root moved or deleted)",
                                source.url)
                    return
                if timers.root_due() and source.backend.root_id() != root_id:
                    # an unmounted or replaced root sends no event
                    self.log.warning("%s: the source root was replaced or unmounted", source.url)
                    return
                if self._destination_moved(session):
                    return
                ready = self.dirty.wait(self.wopts.debounce, self.wopts.max_delay,
                                        timers.next_deadline(self))
                if self.stopping:
                    return
                verifying = self._due_work(session, timers, verifying)
                now = time.monotonic()
                if not ready and not (self.dirty.lost_reason is not None
                                      and now >= self._full_not_before):
                    # woken by a clock (the root check, a poll, a retry), not by settled
                    # work: a burst still going on is not cut into a round here
                    continue
                # the checkpoint before the take: every change up to it is in the region
                # taken now or in earlier rounds
                token = self.resume.checkpoint(session, self.dirty, self.watcher)
                region, first, quick = self.dirty.take(allow_full=now >= self._full_not_before)
                if region.folded and self._retry_keys:
                    region = _unfold_retried(region, self._retry_keys)
                self.status.unwatched = {
                    "/".join(k): v for k, v in self.dirty.unwatched_keys.items()
                }
                if region and self._destination_moved(session):
                    self.dirty.put_back(region, first)
                    return
                if region:
                    synced = self._round(session, region, first, quick)
                    self._release_early()
                    if self._dst_root is None:  # created by this first round
                        self._dst_root = session.destination.backend.root_id()
                    synced = synced and not self.stopping and not (
                        self._retry_keys or self._retry_at is not None)
                    self.resume.store(session, token, self.dirty, synced=synced)
                    self.status.pending = self.dirty.pending()
                    self.status.oldest_pending = self.dirty.first
        finally:
            self.watcher = None
            if verifying is not None:
                verifying.join()  # it checks stop between chunks
            if watcher is not None:
                watcher.__exit__(None, None, None)

    def _due_work(
        self, session: PairSession, timers: _Timers, verifying: threading.Thread | None
    ) -> threading.Thread | None:
        """What the clock asks for now: polls of unwatched subtrees, the periodic full
        comparison, a verify beside the loop, the retry of failed keys."""
        now = time.monotonic()
        if self.dirty.unwatched_keys and timers.poll_due(now):
            unwatched = list(self.dirty.unwatched_keys)
            if len(unwatched) > POLL_MANY and () not in unwatched:
                # thousands of subtrees (the watch limit hit early): one pass of the
                # source against the history costs less than as many rescans
                self.dirty.lost("polling directories that cannot be watched")
                self._full_not_before = 0.0
            else:
                for k in unwatched:
                    self.dirty.dirty(k, deep=True)
        if timers.rescan_due(now):
            self.dirty.lost("periodic full comparison (--rescan-interval)", quick=False)
            self._full_not_before = 0.0
        if (verifying is None or not verifying.is_alive()) and timers.verify_due(now):
            verifying = threading.Thread(
                target=self._verify, args=(session,), name=f"hsync-verify-{self.status.name}"
            )
            verifying.start()
        if self._retry_at is not None and now >= self._retry_at:
            for k in self._retry_keys:
                self.dirty.dirty(k, deep=True)
            self._retry_keys = set()
            self._retry_at = None
        return verifying

    def _destination_moved(self, session: PairSession) -> bool:
        """True (and a warning) when the destination root that was synced is gone or is
        another directory now (an unmounted disk): nothing is written until it is back."""
        if self._dst_root is None or session.destination.backend.root_id() == self._dst_root:
            return False
        self.log.warning("%s: the destination root was removed, replaced or unmounted: waiting "
                    "for it (never recreated)", session.destination.url)
        return True

    def _wait_for_root(self, session: PairSession) -> None:
        """Waiting until the source root is usable and the destination root is the one
        synced before (a remounted disk); a stop ends the wait."""
        self.status.state = "waiting"
        self.status_file.write()
        destination = session.destination.backend
        while not self.stopping:
            if session.source.backend.root_error() is None and (
                self._dst_root is None or destination.root_id() == self._dst_root
            ):
                self.log.info("%s: the source and destination roots are there: full "
                              "comparison", session.source.url)
                return
            self._stopped.wait(ROOT_POLL)

    # -- one round ------------------------------------------------------------------------
    def _round(
        self, session: PairSession, region: Region, first: float | None, quick: bool = False
    ) -> bool:
        """One round over ``region``; True when it applied and recorded everything it
        found (no problem, no warning): the history is synced up to the round's start."""
        t0 = time.monotonic()
        st = self.status
        st.state = "syncing"
        st.pending = len(region)
        self.status_file.write()
        self.dirty.begin(region)
        try:
            found = self._compare(session, region, quick)
            if found is None:
                self.dirty.end()
                return self._populate(session, t0, first)
            cmp, kind = found
            full = kind != "region"
            region = cmp.region if cmp.region is not None else Region.of([()])
            if self.on_compared is not None:
                self.on_compared(region)
            self._comparing.check()
        except Cancelled:
            self._restarted(region, first)
            return False
        except SafetyError as e:
            self._blocked_by(e)
            return False
        except LinkLost:
            raise  # the session is gone: the pair reconnects (``daemon._Running``)
        except (OSError, HsyncError) as e:
            self._failed(region, e)
            return False
        self.dirty.end()
        self._in_a_row = 0
        self._blocked = None
        if kind == "full":
            st.full_comparisons += 1
        elif kind == "quick":
            st.quick_passes += 1
        t1 = time.monotonic()
        done, problems = self._apply(session, cmp)
        phases = (("waited", t0 - first if first is not None else 0.0), ("compared", t1 - t0),
                  ("applied", time.monotonic() - t1))
        self._finished(region, full, cmp, done, problems, t0, first, phases)
        return not problems and not cmp.warnings

    def _compare(
        self, session: PairSession, region: Region, quick: bool
    ) -> tuple[Comparison, str] | None:
        """The comparison of ``region`` and how the round found it: ``"full"`` (both
        trees compared), ``"quick"`` (the source's metadata against the history, then
        what differs compared: no content read where nothing changed) or ``"region"``
        (the dirty subtrees alone); None when the destination is empty and the source
        streams (an initial copy is due)."""
        history = session.history
        passed = False
        if region.full and quick and history is not None and history.complete:
            # stat-only: the source against what the history says was synced
            found = quick_pass(session.source, history, self.exclude,
                               allow_empty_source=self.options.allow_empty_source,
                               cancel=self._comparing)
            passed = True
            region = found.union(Region.of(region.deep - {()}, region.shallow))
            self.dirty.begin(region)
        if region.full and can_populate(session):
            return None
        if not region.full:
            checksum, self._checksum_next = self._checksum_next, False
            cmp = compare_region(session, region, cancel=self._comparing, checksum=checksum)
            if cmp is not None:
                return cmp, "quick" if passed else "region"
            self._checksum_next = checksum  # not used: for the next region
            self.dirty.begin(Region.of([()]))
        cmp = compare_trees(session, cancel=self._comparing)
        if not self._blocked:
            # the next loss of notifications waits a while before another full comparison
            self._full_not_before = time.monotonic() + self._backoff_full()
        return cmp, "full"

    def _restarted(self, region: Region, first: float | None) -> None:
        """The source changed under the comparison (or a stop came): the region goes
        back to the dirty set, to be compared after the next quiet period."""
        self.dirty.put_back(region, first)
        if not self.stopping:
            self._in_a_row += 1
            self.status.restarts += 1
            self.log.info("comparison of %d dirty subtree(s) restarted: the source changed "
                     "under it", len(region))
        self.status.state = "idle"

    def _blocked_by(self, e: SafetyError) -> None:
        """The source vanished, or looks wiped: nothing is deleted; wait and retry."""
        self.dirty.end()
        st = self.status
        st.state = "error"
        st.last_error = str(e)
        if self._blocked != str(e):
            self.log.error("%s", e)
        self._blocked = str(e)
        self.dirty.lost("the source root is back", quick=False)
        self._full_not_before = time.monotonic() + self._backoff_full()
        self.status_file.write()

    def _failed(self, region: Region, e: BaseException) -> None:
        """A round that failed as a whole is retried after a delay that grows, not at
        once: an error that persists must not become a busy loop."""
        self.dirty.end()
        self.status.state = "error"
        self.status.last_error = str(e)
        self.log.error("%s", e)
        self._retry_later(region.deep | region.shallow)
        self.status_file.write()

    def _retry_later(self, keys: Iterable[Key]) -> None:
        self._retry_keys |= set(keys)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)

    def _finished(
        self, region: Region, full: bool, cmp: Comparison, done: list[Op],
        problems: list[Problem], t0: float, first: float | None,
        phases: tuple[tuple[str, float], ...] = (),
    ) -> None:
        """The status, the log and the retries after a round that applied."""
        seconds = time.monotonic() - t0
        self.status.round_done(seconds=seconds, first=first, done=done, problems=problems,
                               warnings=cmp.warnings)
        if problems:
            for p in problems:
                if p.kind != CANCELLED:
                    self.log.warning("%s: %s", "/".join(p.key) or ".", p.message)
            self._retry_later(p.key for p in problems)
        else:
            self._retry_delay = 1.0
        if cmp.withheld:
            self.log.warning("%s", withheld_line(self.status.destination, self.status.source,
                                            cmp.withheld))
        if cmp.plan.ops:
            self.log.info("round: %d op(s) in %.3f s%s", len(done), seconds,
                     " (full comparison)" if region.full else "")
        self.log.debug("round phases: %s", ", ".join(
            f"{name} {value * 1000:.1f} ms" for name, value in phases))
        self.status_file.write()
        if self.on_round is not None:
            self.on_round(RoundResult(region, full, cmp.plan.ops, tuple(done),
                                      tuple(problems), seconds, phases))

    def _populate(self, session: PairSession, t0: float, first: float | None) -> bool:
        """An empty destination: stream the source's walk (parents first) into creates,
        a batch at a time, recording the history as it goes (``populate``). Nothing on
        the destination can be moved or deleted, so no diff is needed, and memory stays
        at a few batches (plus one small node per directory) instead of two snapshots."""
        st = self.status
        shown = 0
        copied = [0, 0]  # nodes, bytes
        said = time.monotonic()

        def applied(op: Op) -> None:  # the first ops one line each, the rest summed up
            nonlocal shown, said
            copied[0] += 1
            copied[1] += op.node.size if op.kind == FILE and op.node is not None else 0
            now = time.monotonic()
            if now - said >= PROGRESS_EVERY:  # progress while a (streamed) batch runs
                said = now
                self.log.info("initial copy: %d node(s), %s copied in %.0f s so far",
                              copied[0], _mib(copied[1]), now - t0)
            if self.wopts.verbose or shown < INITIAL_OPS_LOGGED:
                shown += 1
                self.log.applied(op)
                return
            if shown == INITIAL_OPS_LOGGED:
                shown += 1
                self.log.info("initial copy: more than %d op(s): progress every %g s and a "
                              "summary (every op with -v, or at debug level)",
                              INITIAL_OPS_LOGGED, PROGRESS_EVERY)
            self.log.applied(op, logging.DEBUG)

        def counted(result: ApplyResult) -> None:  # the status, batch by batch
            st.bytes_copied += result.bytes_copied
            for op in result.done:
                st.counts[op.op] += 1

        # a local tree's walk streamed into batches as large as ``sync``'s (one flush
        # each, the copies started before the walk ends), not a batch and a flush per
        # ``batch_ops``; a stop ends the walk, and waits for the ``batch_ops`` walked
        # before the stream started and the few copies queued (``bounded``), no more
        whole = streamed(session)
        done = populate(session, batching=ONE_SHOT if whole else self.batching,
                        cancel=self._stopped, on_batch=counted, on_done=applied,
                        early=self._early, bounded=whole,
                        prefill=self.wopts.batch_ops)
        seconds = time.monotonic() - t0
        total = sum(done.planned.values())
        st.full_comparisons += 1
        st.round_done(seconds=seconds, first=first, done=(), problems=done.problems)
        if done.problems:
            self._retry_later(p.key for p in done.problems)
        self.log.info("initial copy into an empty destination: %d node(s), %s copied in "
                      "%.3f s%s", total, _mib(done.bytes_copied), seconds,
                      "" if done.complete else " (stopped before the end)")
        self.status_file.write()
        if self.on_round is not None:
            kept = tuple(done.done)
            self.on_round(RoundResult(Region.of([()]), True, kept if total <= 10_000
                                      else (), kept, tuple(done.problems), seconds))
        return not done.problems and done.complete

    def _verify(self, session: PairSession) -> None:
        """One content-level verification beside the loop (``hsync verify``), a chunk at
        a time. A key with a change pending in the loop is left to it; a difference that
        persists is marked dirty, and the round that repairs it compares content."""
        from .verifier import Verifier

        def pending(key: Key) -> bool:
            with self.dirty.cond:
                return any(
                    key[:i] in self.dirty.deep for i in range(len(key) + 1)
                ) or key in self.dirty.shallow

        v = Verifier(session.source, session.destination, exclude=self.exclude,
                     pending=pending)
        t0 = time.monotonic()
        try:
            for _ in v.chunks():
                if self.stopping:
                    return
        except (OSError, HsyncError) as e:
            self.log.warning("verify: %s", e)
            return
        found = v.report.differences
        self.status.verified_at = time.time()
        self.status.verify_differences = len(found)
        self.status.verify_found += len(found)
        self.log.info("verify: %d difference(s), %d file(s) hashed in %.1f s", len(found),
                 v.report.files, time.monotonic() - t0)
        if found:
            for d in found:
                self.log.warning("verify: %s: %s (%s)", "/".join(d.key) or ".", d.what, d.detail)
            self._checksum_next = True
            for d in found:
                self.dirty.dirty(d.key, deep=True)

    def _backoff_full(self) -> float:
        now = time.monotonic()
        if now - self._last_loss > FULL_BACKOFF_MAX:
            self._full_backoff = FULL_BACKOFF_MIN
        else:
            self._full_backoff = min(FULL_BACKOFF_MAX, self._full_backoff * 2)
        self._last_loss = now
        return self._full_backoff

    def _apply(self, session: PairSession, cmp: Comparison) -> tuple[list[Op], list[Problem]]:
        """Apply a round's plan in small batches (a stop waits for one), recording the
        history while the last one flushes (a partial comparison only into a complete
        history)."""
        problems: list[Problem] = [
            Problem(k, f"not synced: {why}", kind="retry")
            for k, why in cmp.src.incomplete.items()
        ]
        if self.options.dry_run:
            return [], problems
        history = session.history
        recording = history is not None and (history.complete or not cmp.src.partial)
        applied = apply_plan(
            session, cmp.plan.ops, cmp.src, batching=self.batching, cancel=self._stopped,
            on_batch=lambda r: self._count_bytes(r), on_done=self.log.applied,
            record=(lambda failed: record(session, cmp.src, cmp.plan.changes, failed))
            if recording else None,
        )
        return applied.done, problems + applied.problems

    def _count_bytes(self, result: ApplyResult) -> None:
        self.status.bytes_copied += result.bytes_copied


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class _Timers:
    """The loop's clocks: root checks, polls of unwatched subtrees, periodic full
    comparisons and verifies."""

    def __init__(self, wopts: WatchOptions) -> None:
        now = time.monotonic()
        self.wopts = wopts
        self.next_root = now + ROOT_POLL
        self.next_poll = now + wopts.poll_interval
        self.next_rescan = now + wopts.rescan_interval if wopts.rescan_interval else None
        self.next_verify = now + wopts.verify_interval if wopts.verify_interval else None

    def root_due(self) -> bool:
        now = time.monotonic()
        if now < self.next_root:
            return False
        self.next_root = now + ROOT_POLL
        return True

    def poll_due(self, now: float) -> bool:
        if now < self.next_poll:
            return False
        self.next_poll = now + self.wopts.poll_interval
        return True

    def rescan_due(self, now: float) -> bool:
        if self.next_rescan is None or now < self.next_rescan:
            return False
        assert self.wopts.rescan_interval is not None
        self.next_rescan = now + self.wopts.rescan_interval
        return True

    def verify_due(self, now: float) -> bool:
        if self.next_verify is None or now < self.next_verify:
            return False
        assert self.wopts.verify_interval is not None
        self.next_verify = now + self.wopts.verify_interval
        return True

    def next_deadline(self, pw: PairWatch) -> float | None:
        """The earliest time the loop must wake up, whatever the notifications."""
        times = [t for t in (
            self.next_poll if pw.dirty.unwatched_keys else None,
            self.next_rescan, pw._retry_at, self.next_root, self.next_verify,
        ) if t is not None]
        if pw.dirty.lost_reason is not None:
            times.append(pw._full_not_before)
        return min(times) if times else None


def _unfold_retried(region: Region, retry: set[Key]) -> Region:
    """``region`` without the folded moves that hold a key whose op failed and waits
    for its retry: that directory differs below from what the history says."""
    kept = [
        (new, old) for new, old in region.folded
        if not any(k[: len(new)] == new or k[: len(old)] == old for k in retry)
    ]
    return Region.of(region.deep, region.shallow, kept)
