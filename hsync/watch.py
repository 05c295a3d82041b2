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

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from .backend import ApplyResult, Backend, Credentials, Resume
from .errors import HsyncError, Interrupted, SafetyError
from .journal import Journal, open_for
from .model import CREATE, DELETE, MOVE, UPDATE, Key, Op, Problem, Snapshot
from .populate import can_populate, populate
from .region import Region, quick_pass, scan_region_pair
from .sync import (
    Comparison,
    Options,
    _exclude_matcher,
    _record,
    open_history,
    open_pair,
    plan_between,
    run_batch,
    scan_both,
)

log = logging.getLogger("hsync.watch")

FULL_BACKOFF_MIN = 1.0
FULL_BACKOFF_MAX = 60.0
RETRY_MAX = 60.0
ROOT_POLL = 1.0
POLL_MANY = 1000
"""More unwatched subtrees than this are polled by one full (quick) pass instead."""
BATCH_BYTES = 64 << 20
"""Bytes copied per batch at most (with ``batch_ops``): what a stop request waits for."""


@attrs.frozen(kw_only=True)
class WatchOptions:
    debounce: float = 0.1
    """Seconds without a notification before a round starts."""
    max_delay: float = 1.0
    """A round starts at the latest this long after the first pending notification."""
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


class Dirty:
    """The de-duplicating sink between a watcher and the loop (a ``WatchSink``).

    Keys are collected as they come (cheap under a burst) and normalised when the loop
    takes them: a deep key absorbs everything below it."""

    def __init__(self, exclude: Callable[[Key, bool], bool] | None = None) -> None:
        self.cond = threading.Condition()
        self.exclude = exclude
        self.deep: set[Key] = set()
        self.shallow: set[Key] = set()
        self.first: float | None = None  # monotonic time of the oldest pending event
        self.last: float | None = None
        self.lost_reason: str | None = None
        self.lost_quick = True  # a stat-only pass against the history may stand for it
        self.unwatched_keys: dict[Key, str] = {}
        self.inflight: Region | None = None
        self.inflight_above: set[Key] = set()
        self.stale = False
        self.stopping = False
        self.events = 0
        self.losses = 0
        """How many times notifications were lost (a checkpoint taken before a loss is
        not stored)."""

    # -- the WatchSink side (watcher threads) -------------------------------------------
    def dirty(self, key: Key, *, deep: bool = True) -> None:
        if key and self.exclude is not None and _excluded(self.exclude, key):
            return
        with self.cond:
            (self.deep if deep else self.shallow).add(key)
            self._touch()
            if self.inflight is not None and not self.stale and self._touches(key):
                self.stale = True
            self.cond.notify_all()

    def _touches(self, key: Key) -> bool:
        """``Region.touches`` for the region in flight, in O(depth) per event."""
        r = self.inflight
        assert r is not None
        return (
            any(key[:i] in r.deep for i in range(len(key) + 1))
            or key in r.shallow
            or key in self.inflight_above
        )

    def lost(self, reason: str, *, quick: bool = True) -> None:
        """``quick``: a stat-only pass of the source against the history is enough (lost
        notifications); otherwise both trees are scanned (drift on the destination, a
        source root that came back)."""
        with self.cond:
            self.lost_quick = quick and (self.lost_reason is None or self.lost_quick)
            self.lost_reason = reason
            self.losses += 1
            self._touch()
            self.cond.notify_all()

    def unwatched(self, key: Key, reason: str) -> None:
        with self.cond:
            self.unwatched_keys[key] = reason
            self.deep.add(key)
            self._touch()
            self.cond.notify_all()

    def _touch(self) -> None:
        now = time.monotonic()
        self.events += 1
        if self.first is None:
            self.first = now
        self.last = now

    # -- the loop side --------------------------------------------------------------------
    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def pending(self) -> int:
        with self.cond:
            return len(self.deep) + len(self.shallow) + (self.lost_reason is not None)

    def wait(self, debounce: float, max_delay: float, until: float | None) -> None:
        """Return when pending work is ready (quiet for ``debounce``, or ``max_delay``
        after the first pending event), at monotonic time ``until``, or on stop."""
        with self.cond:
            while not self.stopping:
                now = time.monotonic()
                if until is not None and now >= until:
                    return
                if self.first is not None and self.last is not None:
                    ready_at = min(self.last + debounce, self.first + max_delay)
                    if now >= ready_at:
                        return
                    wake = ready_at
                else:
                    wake = until if until is not None else now + 3600
                if until is not None:
                    wake = min(wake, until)
                self.cond.wait(max(0.0, wake - now))

    def take(self, allow_full: bool) -> tuple[Region, float | None, bool]:
        """The pending region, when its oldest event came, and whether a full comparison
        in it may be a quick pass; a lost-notification full comparison only when
        ``allow_full``."""
        with self.cond:
            deep, shallow = self.deep, self.shallow
            quick = True
            if self.lost_reason is not None and allow_full:
                deep.add(())
                quick = self.lost_quick
                self.lost_reason = None
                self.lost_quick = True
            first = self.first
            self.deep, self.shallow = set(), set()
            self.first = self.last = None  # a full comparison not allowed yet: a deadline
            return Region.of(deep, shallow), first, quick

    def begin(self, region: Region) -> None:
        with self.cond:
            self.inflight = None if region.full else region
            # every ancestor of a region key, once: each event is then O(depth)
            self.inflight_above = {
                k[:i] for k in (*region.deep, *region.shallow) for i in range(len(k))
            }
            self.stale = False

    def end(self) -> None:
        with self.cond:
            self.inflight = None
            self.stale = False

    def put_back(self, region: Region, first: float | None) -> None:
        with self.cond:
            self.deep |= region.deep
            self.shallow |= region.shallow
            now = time.monotonic()
            self.first = min(x for x in (self.first, first, now) if x is not None)
            self.last = now
            self.inflight = None
            self.stale = False
            self.cond.notify_all()


def _excluded(exclude: Callable[[Key, bool], bool], key: Key) -> bool:
    # the kind of a key named by an event is not known: a pattern for either counts,
    # for the key or an ancestor (a directory pattern excludes what is below it)
    for i in range(1, len(key) + 1):
        k = key[:i]
        if exclude(k, True) or (i == len(key) and exclude(k, False)):
            return True
    return False


@attrs.define
class PairStatus:
    """What ``--status-file`` says about one pair."""

    name: str
    source: str
    destination: str
    state: str = "starting"  # starting, syncing, idle, waiting, error, stopped
    rounds: int = 0
    full_comparisons: int = 0
    restarts: int = 0
    counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)
    )
    bytes_copied: int = 0
    problems: int = 0
    last_round_at: float | None = None
    last_round_seconds: float | None = None
    last_lag_seconds: float | None = None
    oldest_pending: float | None = None  # monotonic
    pending: int = 0
    last_error: str | None = None
    warnings: list[str] = attrs.field(factory=list)
    unwatched: dict[str, str] = attrs.field(factory=dict)
    verified_at: float | None = None
    verify_differences: int | None = None
    """Differences the last verify found; ``verify_found`` counts them all."""
    verify_found: int = 0

    def to_json(self) -> dict[str, Any]:
        lag = 0.0
        if self.oldest_pending is not None:
            lag = max(0.0, time.monotonic() - self.oldest_pending)
        return {
            "name": self.name,
            "source": self.source,
            "destination": self.destination,
            "state": self.state,
            "rounds": self.rounds,
            "full_comparisons": self.full_comparisons,
            "restarts": self.restarts,
            "counts": dict(self.counts),
            "bytes_copied": self.bytes_copied,
            "problems": self.problems,
            "last_round_at": _iso(self.last_round_at),
            "last_round_seconds": _round6(self.last_round_seconds),
            "last_lag_seconds": _round6(self.last_lag_seconds),
            "lag_seconds": round(lag, 6),
            "pending": self.pending,
            "last_error": self.last_error,
            "warnings": self.warnings[-10:],
            "unwatched": self.unwatched,
            "verified_at": _iso(self.verified_at),
            "verify_differences": self.verify_differences,
            "verify_found": self.verify_found,
        }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _round6(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class StatusFile:
    """Writes every pair's status to one JSON file, atomically (temporary + rename)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.pairs: list[PairStatus] = []
        self.started = time.time()
        self.lock = threading.Lock()

    def write(self) -> None:
        if self.path is None:
            return
        with self.lock:
            doc = {
                "pid": os.getpid(),
                "started_at": _iso(self.started),
                "written_at": _iso(time.time()),
                "pairs": [p.to_json() for p in self.pairs],
            }
            tmp = f"{self.path}.tmp-{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(doc, f, indent=1)
                    f.write("\n")
                os.replace(tmp, self.path)
            except OSError as e:
                log.warning("%s: cannot write the status file: %s", self.path, e.strerror)


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
    ) -> None:
        self.source_url = source_url
        self.credentials = credentials
        self.destination_url = destination_url
        self.options = options = options if options is not None else Options()
        self.wopts = wopts if wopts is not None else WatchOptions()
        self.exclude = _exclude_matcher(options.exclude)
        self.dirty = Dirty(self.exclude)
        self.status = PairStatus(name or source_url, source_url, destination_url)
        self.status_file = status or StatusFile(None)
        self.status_file.pairs.append(self.status)
        self.on_round = on_round
        self.on_compared = on_compared  # a test's window between compare and apply
        self._stop = threading.Event()
        self._in_a_row = 0  # restarts of the current region
        self._full_not_before = 0.0
        self._full_backoff = FULL_BACKOFF_MIN
        self._last_loss = 0.0
        self._retry_at: float | None = None
        self._retry_keys: set[Key] = set()
        self._retry_delay = 1.0
        self._blocked: str | None = None
        self._checksum_next = False
        self._context = ""  # what a resume token is stored with (roots, options)
        self._losses_seen = 0

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, record the history and return."""
        self._stop.set()
        self.dirty.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until a stop is asked; True when it was."""
        return self._stop.wait(seconds)

    def _interrupt(self) -> bool:
        return self._stop.is_set() or (
            self.dirty.stale and self._in_a_row < self.wopts.max_restarts
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Run until ``stop()``. Raises ``HsyncError`` when the pair cannot be opened."""
        source, destination = open_pair(
            self.source_url, self.destination_url, self.options.exclude_attrs,
            self.credentials,
        )
        history = None
        try:
            history = open_history(source, destination, self.options)
            self._journal = open_for(history)
            for b in (source, destination):
                if hasattr(b, "interrupt"):
                    b.interrupt = self._interrupt  # type: ignore[attr-defined]
            while not self.stopping:
                self._watching(source, destination, history)
                if not self.stopping:
                    self._wait_for_root(source)
        finally:
            self.status.state = "stopped"
            self.status_file.write()
            if self._journal is not None:
                self._journal.close()
            if history is not None:
                history.close()
            source.close()
            destination.close()

    def _watching(self, source: Backend, destination: Backend, history: Any) -> None:
        """One life of the watcher: from its start until it dies or a stop."""
        watcher = None
        with self.dirty.cond:
            self.dirty.unwatched_keys.clear()  # a new watcher: it says what it cannot watch
        start = getattr(source, "watch", None)
        resume = self._resume_point(source, destination, history)
        if start is not None:
            try:
                watcher = start(self.dirty, resume=resume) if resume else start(self.dirty)
                watcher.__enter__()
            except (OSError, HsyncError) as e:
                watcher = None
                reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
                self.dirty.unwatched((), reason)
                log.warning("%s: cannot watch the source (%s): polling every %g s",
                            source.url, reason, self.wopts.poll_interval)
        else:
            self.dirty.unwatched((), "the backend cannot watch")
        self.watcher = watcher
        self.status.unwatched = {"/".join(k): v for k, v in self.dirty.unwatched_keys.items()}
        root_id = _root_identity(source)
        next_root_check = time.monotonic() + ROOT_POLL
        if getattr(watcher, "resumed", False):
            # the watcher reported what changed since the token: no full comparison
            log.info("%s: resumed from the history's token: %d dirty subtree(s)",
                     source.url, self.dirty.pending())
            self._losses_seen = self.dirty.losses
        else:
            self.dirty.lost("start")  # a full comparison first: what changed meanwhile
        self._full_not_before = 0.0
        next_poll = time.monotonic() + self.wopts.poll_interval
        next_rescan = (
            time.monotonic() + self.wopts.rescan_interval if self.wopts.rescan_interval else None
        )
        next_verify = (
            time.monotonic() + self.wopts.verify_interval if self.wopts.verify_interval else None
        )
        verifying: threading.Thread | None = None
        try:
            while not self.stopping:
                if watcher is not None and not getattr(watcher, "alive", True):
                    log.warning("%s: the watcher stopped (source root moved or deleted)",
                                source.url)
                    return
                if time.monotonic() >= next_root_check:
                    # an unmounted or replaced root sends no event: look at it now and then
                    if _root_identity(source) != root_id:
                        log.warning("%s: the source root was replaced or unmounted",
                                    source.url)
                        return
                    next_root_check = time.monotonic() + ROOT_POLL
                deadlines = [t for t in (next_poll if self.dirty.unwatched_keys else None,
                                         next_rescan, self._retry_at, next_root_check,
                                         next_verify)
                             if t is not None]
                if self.dirty.lost_reason is not None:
                    deadlines.append(self._full_not_before)
                self.dirty.wait(self.wopts.debounce, self.wopts.max_delay,
                                min(deadlines) if deadlines else None)
                if self.stopping:
                    return
                now = time.monotonic()
                if self.dirty.unwatched_keys and now >= next_poll:
                    unwatched = list(self.dirty.unwatched_keys)
                    if len(unwatched) > POLL_MANY and () not in unwatched:
                        # thousands of subtrees (the watch limit hit early): one pass of
                        # the source against the history costs less than as many rescans
                        self.dirty.lost("polling directories that cannot be watched")
                        self._full_not_before = 0.0
                    else:
                        for k in unwatched:
                            self.dirty.dirty(k, deep=True)
                    next_poll = now + self.wopts.poll_interval
                if next_rescan is not None and now >= next_rescan:
                    self.dirty.lost("periodic full comparison (--rescan-interval)", quick=False)
                    self._full_not_before = 0.0
                    assert self.wopts.rescan_interval is not None
                    next_rescan = now + self.wopts.rescan_interval
                if next_verify is not None and now >= next_verify and (
                    verifying is None or not verifying.is_alive()
                ):
                    verifying = threading.Thread(
                        target=self._verify, args=(source, destination),
                        name=f"hsync-verify-{self.status.name}",
                    )
                    verifying.start()
                    assert self.wopts.verify_interval is not None
                    next_verify = now + self.wopts.verify_interval
                if self._retry_at is not None and now >= self._retry_at:
                    for k in self._retry_keys:
                        self.dirty.dirty(k, deep=True)
                    self._retry_keys = set()
                    self._retry_at = None
                # the checkpoint before the take: every change up to it is in the region
                # taken now or in earlier rounds
                token = self._checkpoint(history)
                region, first, quick = self.dirty.take(allow_full=now >= self._full_not_before)
                self.status.unwatched = {
                    "/".join(k): v for k, v in self.dirty.unwatched_keys.items()
                }
                if region:
                    synced = self._round(source, destination, history, region, first, quick)
                    self._store_checkpoint(history, token, synced)
                    self.status.pending = self.dirty.pending()
                    self.status.oldest_pending = self.dirty.first
        finally:
            self.watcher = None
            if verifying is not None:
                verifying.join()  # it checks stop between chunks
            if watcher is not None:
                watcher.__exit__(None, None, None)

    watcher: Any = None
    _journal: Journal | None = None
    """The backend's watcher while one runs (tests inject faults at its boundary)."""

    # -- the resume token ---------------------------------------------------------------
    def _resume_point(
        self, source: Backend, destination: Backend, history: Any
    ) -> Resume | None:
        """The history's token for this watcher, when it may be trusted: a complete
        history, written by a run over the same two roots (identities: a source or a
        destination recreated under the same URL is not the tree the rows describe)
        and with the same options that shape the rows (excludes)."""
        self._context = json.dumps([
            repr(_root_identity(source)), repr(_root_identity(destination)),
            sorted(self.options.exclude), sorted(self.options.exclude_attrs),
        ])
        if history is None or history.readonly or self.options.dry_run:
            return None
        token = history.resume_token(self._context)
        if token is None:
            return None
        known = list(history.identities())  # read here: the history is this thread's
        return Resume(token, lambda: known)

    def _checkpoint(self, history: Any) -> tuple[bytes | None, int]:
        """The watcher's checkpoint now (None without one) and the loss count it goes
        with. A loss seen since the last look drops the stored token: the history may
        lag behind what the watcher had reported before it."""
        losses = self.dirty.losses
        if losses != self._losses_seen:
            self._losses_seen = losses
            if history is not None and not history.readonly:
                history.clear_resume()
        checkpoint = getattr(self.watcher, "checkpoint", None)
        return (checkpoint() if checkpoint is not None else None), losses

    def _store_checkpoint(
        self, history: Any, token: tuple[bytes | None, int], synced: bool
    ) -> None:
        """Keep ``token`` as the pair's resume token when the round taken with it has
        synced everything up to it: it applied and recorded all it found (``synced``),
        and nothing from before it is left (no loss since or pending, no key waiting
        for a retry)."""
        value, losses = token
        if (
            value is None or not synced or history is None or history.readonly
            or self.options.dry_run or self.stopping
            or losses != self.dirty.losses or self.dirty.lost_reason is not None
            or self._retry_keys or self._retry_at is not None
            or not history.complete
        ):
            return
        history.save_resume(value, self._context)

    def _wait_for_root(self, source: Backend) -> None:
        self.status.state = "waiting"
        self.status_file.write()
        while not self.stopping:
            why = getattr(source, "root_error", lambda: None)()
            if why is None and source.exists():
                log.info("%s: the source root is back: full comparison", source.url)
                return
            self._stop.wait(ROOT_POLL)

    # -- one round ------------------------------------------------------------------------
    def _round(
        self,
        source: Backend,
        destination: Backend,
        history: Any,
        region: Region,
        first: float | None,
        quick: bool = False,
    ) -> bool:
        """One round over ``region``; True when it applied and recorded everything it
        found (no problem, no warning): the history is synced up to the round's start."""
        t0 = time.monotonic()
        st = self.status
        st.state = "syncing"
        st.pending = len(region)
        self.status_file.write()
        self.dirty.begin(region)
        passed = False
        try:
            if region.full and quick and history is not None and history.complete:
                # stat-only: the source against what the history says was synced
                found = quick_pass(source, history, self.exclude,
                                   allow_empty_source=self.options.allow_empty_source)
                passed = True
                region = found.union(Region.of(region.deep - {()}, region.shallow))
                self.dirty.begin(region)
            if region.full and can_populate(source, destination):
                self.dirty.end()
                return self._populate(source, destination, history, t0, first)
            if region.full:
                cmp = self._compare_full(source, destination, history)
            else:
                compared, src, dst = scan_region_pair(source, destination, region, self.exclude)
                if compared.full:
                    self.dirty.begin(compared)
                    cmp = self._compare_full(source, destination, history)
                else:
                    options = self.options
                    if self._checksum_next:  # verify found content that stat cannot see
                        options = attrs.evolve(options, checksum=True)
                        self._checksum_next = False
                    cmp = plan_between(source, destination, src, dst, history, options)
                region = compared
            if self.on_compared is not None:
                self.on_compared(region)
            if self._interrupt():
                raise Interrupted("stale")
        except Interrupted:
            self.dirty.put_back(region, first)
            if not self.stopping:
                self._in_a_row += 1
                st.restarts += 1
                log.info("comparison of %d dirty subtree(s) restarted: the source changed "
                         "under it", len(region))
            st.state = "idle"
            return False
        except SafetyError as e:
            # the source vanished, or looks wiped: nothing is deleted; wait and retry
            self.dirty.end()
            st.state = "error"
            st.last_error = str(e)
            if self._blocked != str(e):
                log.error("%s", e)
            self._blocked = str(e)
            self.dirty.lost("the source root is back", quick=False)
            self._full_not_before = time.monotonic() + self._backoff_full()
            self.status_file.write()
            return False
        except (OSError, HsyncError) as e:
            self.dirty.end()
            st.state = "error"
            st.last_error = str(e)
            log.error("%s", e)
            # retried after a delay that grows, not at once: an error that persists
            # must not become a busy loop
            self._retry_keys |= region.deep | region.shallow
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)
            self.status_file.write()
            return False
        self.dirty.end()
        self._in_a_row = 0
        self._blocked = None
        if region.full or passed:
            st.full_comparisons += 1
        done, problems = self._apply(cmp)
        seconds = time.monotonic() - t0
        st.rounds += 1
        st.last_round_at = time.time()
        st.last_round_seconds = seconds
        st.last_lag_seconds = time.monotonic() - first if first is not None else None
        for op in done:
            if not op.temporary:
                st.counts[op.op] += 1
        st.problems += len(problems)
        st.warnings.extend(cmp.warnings)
        st.state = "error" if problems else "idle"
        st.last_error = problems[0].message if problems else (None if not cmp.warnings else
                                                               cmp.warnings[0])
        if problems:
            for p in problems:
                log.warning("%s: %s", "/".join(p.key) or ".", p.message)
            self._retry_keys |= {p.key for p in problems}
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)
        else:
            self._retry_delay = 1.0
        if cmp.plan.ops:
            log.info("round: %d op(s) in %.3f s%s", len(done), seconds,
                     " (full comparison)" if region.full else "")
        self.status_file.write()
        if self.on_round is not None:
            self.on_round(RoundResult(region, region.full or passed, cmp.plan.ops, tuple(done),
                                      tuple(problems), seconds))
        return not problems and not cmp.warnings

    def _populate(
        self, source: Backend, destination: Backend, history: Any, t0: float,
        first: float | None,
    ) -> bool:
        """An empty destination: stream the source's walk (parents first) into creates,
        a batch at a time, recording the history as it goes (``populate``). Nothing on
        the destination can be moved or deleted, so no diff is needed, and memory stays
        at a few batches (plus one small node per directory) instead of two snapshots."""
        st = self.status

        def counted(result: ApplyResult) -> None:
            st.bytes_copied += result.bytes_copied
            for op in result.done:
                st.counts[op.op] += 1

        done = populate(
            source, destination, exclude=self.exclude,
            run=lambda ops, final, then: self._run_batch(destination, ops, source, final,
                                                         then),
            history=history, batch_ops=self.wopts.batch_ops,
            min_batch=self.wopts.batch_ops,
            stopping=lambda: self.stopping, on_batch=counted,
        )
        problems = done.problems
        total = sum(done.planned.values())
        st.full_comparisons += 1
        st.rounds += 1
        st.problems += len(problems)
        st.last_round_at = time.time()
        st.last_round_seconds = time.monotonic() - t0
        st.last_lag_seconds = time.monotonic() - first if first is not None else None
        st.state = "error" if problems else "idle"
        st.last_error = problems[0].message if problems else None
        self._retry_keys |= {p.key for p in problems}
        if problems:
            self._retry_at = time.monotonic() + self._retry_delay
        log.info("initial copy into an empty destination: %d node(s) in %.3f s",
                 total, st.last_round_seconds)
        self.status_file.write()
        if self.on_round is not None:
            kept = tuple(done.done)
            self.on_round(RoundResult(Region.of([()]), True, kept if total <= 10_000
                                      else (), kept, tuple(problems),
                                      st.last_round_seconds))
        return not problems and done.complete

    def _verify(self, source: Backend, destination: Backend) -> None:
        """One content-level verification beside the loop (``hsync verify``), a chunk at
        a time. A key with a change pending in the loop is left to it; a difference that
        persists is marked dirty, and the round that repairs it compares content."""
        from .verify import Verifier

        def pending(key: Key) -> bool:
            with self.dirty.cond:
                return any(
                    key[:i] in self.dirty.deep for i in range(len(key) + 1)
                ) or key in self.dirty.shallow

        v = Verifier(source, destination, exclude=self.exclude, pending=pending)
        t0 = time.monotonic()
        try:
            for _ in v.chunks():
                if self.stopping:
                    return
        except (OSError, HsyncError) as e:
            log.warning("verify: %s", e)
            return
        found = v.report.differences
        self.status.verified_at = time.time()
        self.status.verify_differences = len(found)
        self.status.verify_found += len(found)
        log.info("verify: %d difference(s), %d file(s) hashed in %.1f s", len(found),
                 v.report.files, time.monotonic() - t0)
        if found:
            for d in found:
                log.warning("verify: %s: %s (%s)", "/".join(d.key) or ".", d.what, d.detail)
            self._checksum_next = True
            for d in found:
                self.dirty.dirty(d.key, deep=True)

    def _run_batch(
        self,
        destination: Backend,
        ops: Sequence[Op],
        source: Backend,
        final: Snapshot,
        while_flushing: Callable[[ApplyResult], None] | None = None,
    ) -> ApplyResult:
        """One batch, journaled like ``sync``'s."""
        return run_batch(self._journal, destination, ops, source, final, self.options,
                         while_flushing=while_flushing)

    def _backoff_full(self) -> float:
        now = time.monotonic()
        if now - self._last_loss > FULL_BACKOFF_MAX:
            self._full_backoff = FULL_BACKOFF_MIN
        else:
            self._full_backoff = min(FULL_BACKOFF_MAX, self._full_backoff * 2)
        self._last_loss = now
        return self._full_backoff

    def _compare_full(self, source: Backend, destination: Backend, history: Any) -> Comparison:
        src, dst = scan_both(source, destination, self.options, history)
        if not self._blocked:
            # the next loss of notifications waits a while before another full comparison
            self._full_not_before = time.monotonic() + self._backoff_full()
        return plan_between(source, destination, src, dst, history, self.options)

    def _apply(self, cmp: Comparison) -> tuple[list[Op], list[Problem]]:
        done: list[Op] = []
        problems: list[Problem] = [
            Problem(k, f"not synced: {why}", retry=True) for k, why in cmp.src.incomplete.items()
        ]
        failed: set[Key] = set()
        ops = cmp.plan.ops
        if self.options.dry_run:
            return done, problems
        for start, batch in _batches(ops, self.wopts.batch_ops):
            if self.stopping:
                for op in ops[start:]:  # not applied: not recorded as synced either
                    failed.add(op.key)
                    if op.to is not None:
                        failed.add(op.to)
                break
            result = self._run_batch(cmp.destination, batch, cmp.source, cmp.src)
            done.extend(result.done)
            problems.extend(result.problems)
            self.status.bytes_copied += result.bytes_copied
            failed.update(p.key for p in result.problems)
        if cmp.history is not None and (cmp.history.complete or not cmp.src.partial):
            _record(cmp, failed)
        return done, problems


def _root_identity(backend: Backend) -> object:
    """What identifies the source root (its inode and device for a filesystem)."""
    try:
        node = backend.stat(())
    except OSError:
        return None
    if node is None:
        return None
    root = getattr(backend, "root", None)
    if root is not None:
        try:
            st = os.stat(root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)
    return node.identity


def _batches(ops: tuple[Op, ...], max_ops: int) -> Iterator[tuple[int, tuple[Op, ...]]]:
    """``(start, ops[start:end])`` slices of at most ``max_ops`` ops and about
    ``BATCH_BYTES`` of content; one empty batch when there is no op (it cleans up)."""
    start = size = 0
    for i, op in enumerate(ops):
        if op.node is not None and (op.op == CREATE or (op.op == UPDATE and op.content)):
            size += op.node.size
        if i + 1 - start >= max_ops or size >= BATCH_BYTES:
            yield start, ops[start : i + 1]
            start, size = i + 1, 0
    if start < len(ops) or not ops:
        yield start, ops[start:]
