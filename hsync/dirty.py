"""The dirty set between a watch and the loop (SPEC 6): a de-duplicating ``WatchSink``.

A watch's threads call ``dirty``, ``lost`` and ``unwatched``; the loop waits for a quiet
period (``wait``), takes the pending region (``take``), and says which region is being
compared (``begin``/``end``): an event that touches it marks the comparison stale, and
the loop's cancel token then stops the scan at its next directory.

Files being written (SPEC 5): a key reported with ``writing=True`` (modified, not yet
closed) is held back by ``take`` until a ``dirty`` call without ``writing`` (closed
after the write, deleted, moved) or until it has been quiet for ``settle`` seconds (a
log never closed). ``max_delay`` does not apply to it; everything else goes as usual.

A write that ends (a file closed after its write, or deleted or moved while written)
needs no long debounce: the file is complete; so do a file moved within the tree (a
save written to a temporary name, then renamed) and a directory moved within the tree
with nothing reported below it (``moved``: one rename, compared as one node). The round
then starts once ``close_quiet`` (default 0: at once) passed without another
notification, until an event that is not about a file's content comes (a create, delete
or move: a burst may be going on). Events that come within ``BURST_GAP`` (or the
debounce, if shorter) of a take made early that way (a burst that goes on while its
first file's round runs) wait for the whole debounce again, and every event extends the
wait: a burst (a ``git checkout`` of 1,000 files) costs the round of its first file
(often restarted and merged into the next, since the burst's next creates touch it) and
then one round per quiet period, or per ``max_delay`` of events.
"""

from __future__ import annotations

import threading
import time

from .filters import Exclude
from .model import Key
from .region import Region

BURST_GAP = 0.1
"""Seconds: the first event that comes this soon after a round started early by a
close belongs to a burst going on; a write that ends then waits for the whole
debounce."""


class Dirty:
    """The de-duplicating sink between a watcher and the loop (a ``WatchSink``).

    Keys are collected as they come (cheap under a burst) and normalised when the loop
    takes them: a deep key absorbs everything below it."""

    def __init__(
        self, exclude: Exclude | None = None, *, settle: float = 2.0, close_quiet: float = 0.0
    ) -> None:
        self.cond = threading.Condition()
        self.exclude = exclude
        self.settle = settle
        self.close_quiet = close_quiet
        self.write_ended = False
        """A write ended since the last create, delete or move: the quiet period is
        ``close_quiet``, not the debounce."""
        self.writing: dict[Key, float] = {}
        """Keys open for writing: the monotonic time of their last modification."""
        self.deep: set[Key] = set()
        self.shallow: set[Key] = set()
        self.first: float | None = None  # monotonic time of the oldest pending event
        self.quick_at = float("-inf")
        """Monotonic time of the last take that ``close_quiet`` made early (or of a
        ``put_back``): events that come soon after it are a burst going on."""
        self.quick = False
        """The pending work is due after ``close_quiet`` (a lone write that ended)."""
        self.quick_keys: frozenset[Key] = frozenset()
        """The keys of that early take: a file among them renamed soon after is a save
        (written to a temporary name, closed, renamed) finishing, not a burst."""
        self._save_ended = False
        """Such a rename came while the early round ran: its ``put_back`` is no burst."""
        self.last: float | None = None
        self.lost_reason: str | None = None
        self.lost_quick = True  # a stat-only pass against the history may stand for it
        self.unwatched_keys: dict[Key, str] = {}
        self.moves: dict[Key, Key] = {}
        """Directories moved within the tree (new key -> old key) with nothing below
        either key reported since: each is offered to the loop as a folded pair (one
        node on each side, ``Region.folded``), which the comparison checks by identity."""
        self._move_keys: dict[Key, Key] = {}
        """Both keys of each of ``moves`` -> its new key."""
        self.inflight: Region | None = None
        self.inflight_above: set[Key] = set()
        self.stale = False
        self.stopping = False
        self.events = 0
        self.losses = 0
        """How many times notifications were lost (a checkpoint taken before a loss is
        not stored)."""

    # -- the WatchSink side (watcher threads) -------------------------------------------
    def dirty(self, key: Key, *, deep: bool = True, writing: bool = False) -> None:
        if key and self.exclude is not None and self.exclude.covers(key):
            return
        with self.cond:
            (self.deep if deep else self.shallow).add(key)
            if self._move_keys:
                self._unfold_above(key)
            if writing:
                # not a reason for a round by itself: the close, or ``settle``, is
                self.writing[key] = time.monotonic()
                self.events += 1
            else:
                if self.writing.pop(key, None) is not None:
                    self.write_ended = True  # closed after its write (or gone): complete
                elif deep:
                    self.write_ended = False  # a create, delete or move: maybe a burst
                self._touch()
            if self.inflight is not None and not self.stale and self._touches(key):
                self.stale = True
            self.cond.notify_all()

    def moved(self, old: Key, new: Key, *, directory: bool = True) -> None:
        """A node moved from ``old`` to ``new``, both in the tree, reported (both keys
        ``dirty``) just before. A file moved is complete, as a write that ended (a save
        written to a temporary name and renamed over the file). A directory is offered
        as a folded pair while nothing is reported below either key; one moved again
        keeps its first key (a chain folds whole)."""
        if not old or not new or old == new:
            return
        if not directory:
            with self.cond:
                if new not in self.writing:  # else its close says when
                    self.write_ended = True
                    if old in self.quick_keys:
                        # the early round took the temporary file: its rename ends
                        # that save (the round restarts or follows), not a burst
                        self.quick_at = float("-inf")
                        self._save_ended = True
                    self.cond.notify_all()
            return
        ex = self.exclude
        if ex is not None and (not ex.by_name() or ex.covers(old) or ex.covers(new)):
            return  # what is excluded below it may depend on where it is: compared whole
        with self.cond:
            origin = self.moves.pop(old, None)
            if origin is None:
                origin = old
            self._move_keys.pop(old, None)
            if origin == new or self._pending_below(origin) or self._pending_below(new):
                self._move_keys.pop(origin, None)
                return  # changed below before it moved: compared whole
            self._add_move(new, origin)
            # one rename, complete by itself: no long debounce, as for a write that
            # ended (a burst of them still waits: ``ready_at``)
            self.write_ended = True
            self.cond.notify_all()

    def _pending_below(self, top: Key) -> bool:
        """Something pending, being written or in the round in flight strictly below
        ``top`` (that round may not apply it: it is put back if the move makes it
        stale)."""
        n = len(top)
        r = self.inflight
        flying = () if r is None else (r.deep, r.shallow)
        return any(
            len(k) > n and k[:n] == top
            for keys in (self.deep, self.shallow, self.writing, *flying) for k in keys
        )

    def _add_move(self, new: Key, old: Key) -> None:
        self.moves[new] = old
        self._move_keys[new] = self._move_keys[old] = new

    def _drop_move(self, new: Key) -> None:
        self._move_keys.pop(new, None)
        self._move_keys.pop(self.moves.pop(new), None)

    def _unfold_above(self, key: Key) -> None:
        """A report strictly below a moved directory's old or new key: that move is
        compared whole."""
        for i in range(1, len(key)):
            new = self._move_keys.get(key[:i])
            if new is not None:
                self._drop_move(new)

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
            self.moves.clear()  # what is below an unwatched directory is not reported
            self._move_keys.clear()
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

    def _settled_at(self) -> float | None:
        """When the first key being written will have been quiet for ``settle``."""
        return min(self.writing.values()) + self.settle if self.writing else None

    def ready_at(self, debounce: float, max_delay: float) -> float | None:
        """When the pending work is ready (monotonic time); None when nothing is pending
        (or only files being written, not settled yet). Holds ``cond``."""
        ready: list[float] = []
        if self.first is not None and self.last is not None:
            # a write that ended, not in a burst: the file is complete
            self.quick = self.write_ended and (
                self.first - self.quick_at >= min(debounce, BURST_GAP))
            quiet = min(debounce, self.close_quiet) if self.quick else debounce
            ready.append(min(self.last + quiet, self.first + max_delay))
        settled = self._settled_at()
        if settled is not None:
            ready.append(settled)
        return min(ready) if ready else None

    def wait(self, debounce: float, max_delay: float, until: float | None) -> bool:
        """Return when pending work is ready (quiet for ``debounce``, or ``max_delay``
        after the first pending event; a file being written once quiet for ``settle``;
        a write that ended after an idle period once quiet for ``close_quiet``), at
        monotonic time ``until``, or on stop. True when the work is ready (a take now
        gets a settled region), False at ``until`` or on stop."""
        with self.cond:
            while not self.stopping:
                now = time.monotonic()
                ready_at = self.ready_at(debounce, max_delay)
                if ready_at is not None and now >= ready_at:
                    return True
                if until is not None and now >= until:
                    return False
                wake = ready_at if ready_at is not None else (
                    until if until is not None else now + 3600)
                if until is not None:
                    wake = min(wake, until)
                self.cond.wait(max(0.0, wake - now))
            return False

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
            folded = list(self.moves.items())
            self.moves, self._move_keys = {}, {}
            self.deep, self.shallow = set(), set()
            self.first = self.last = None  # a full comparison not allowed yet: a deadline
            if self.quick and self.write_ended:
                self.quick_at = time.monotonic()
                self.quick_keys = frozenset((*deep, *shallow))
            else:
                self.quick_keys = frozenset()
            self.write_ended = self.quick = self._save_ended = False
            self._hold_writing(deep, shallow)
            return Region.of(deep, shallow, folded), first, quick

    def _hold_writing(self, deep: set[Key], shallow: set[Key]) -> None:
        """Move back to the pending sets what covers a file still being written: the
        key itself, and a deep key above it (its subtree would list the file). A full
        comparison is not held back (a log written forever would starve it); the copy
        still refuses a source that changes under it, and the key stays held."""
        now = time.monotonic()
        for k in [k for k, t in self.writing.items() if now >= t + self.settle]:
            del self.writing[k]  # quiet for ``settle``: published as it is
        if not self.writing or () in deep:
            self.deep |= {k for k in deep if k in self.writing}
            self.shallow |= {k for k in shallow if k in self.writing}
            return
        above = {k[:i] for k in self.writing for i in range(len(k) + 1)}
        held_deep = {k for k in deep if k in above}
        held_shallow = {k for k in shallow if k in self.writing}
        deep -= held_deep
        shallow -= held_shallow
        self.deep |= held_deep
        self.shallow |= held_shallow

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
            for new, old in region.folded:  # offered again
                if new not in self.moves:
                    self._add_move(new, old)
            for new, old in list(self.moves.items()):  # unless reported below since
                if self._pending_below(old) or self._pending_below(new):
                    self._drop_move(new)
            now = time.monotonic()
            self.first = min(x for x in (self.first, first, now) if x is not None)
            self.last = now
            # events soon after are a burst, unless a save's rename restarted the round
            self.quick_at = float("-inf") if self._save_ended else now
            self._save_ended = False
            self.inflight = None
            self.stale = False
            self.cond.notify_all()
