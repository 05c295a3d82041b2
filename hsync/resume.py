"""A watch's resume token, kept in the history (SPEC 6, 7: a restart with an unknown gap
compares in full; one with a known position does not).

Before the loop takes the dirty set for a round it asks the watch for a checkpoint:
every change up to it is then in the set or in earlier rounds. When the round applied
and recorded everything (no problem, no warning, not interrupted, nothing put back or
waiting for a retry, no notification lost since), the checkpoint is stored as the pair's
token; a loss of notifications drops it. A restart with a complete history and a token
stored for the same roots and options starts the watch from it.
"""

from __future__ import annotations

import json

from .backend import Resume, Watch
from .dirty import Dirty
from .options import Options
from .session import PairSession

Token = tuple[bytes | None, int]
"""A checkpoint and the count of losses it was taken with."""


class ResumeKeeper:
    """Finds, checks and stores one pair's resume token."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.context = ""
        """What a token is stored with: both roots' identities and the options that
        shape the history's rows (a token of another tree is never used)."""
        self.losses_seen = 0

    def point(self, session: PairSession) -> Resume | None:
        """The history's token for this watch, when it may be trusted: a complete
        history, written by a run over the same two roots (a source or a destination
        recreated under the same URL is not the tree the rows describe) and with the
        same excludes."""
        self.context = json.dumps([
            repr(session.source.backend.root_id()),
            repr(session.destination.backend.root_id()),
            sorted(self.options.exclude), sorted(self.options.exclude_attrs),
        ] + ([list(self.options.include), list(self.options.filters),
               self.options.delete_excluded]
             if self.options.include or self.options.filters
             or self.options.delete_excluded else []))
        history = session.history
        if history is None or history.readonly or self.options.dry_run:
            return None
        token = history.resume_token(self.context)
        if token is None:
            return None
        known = list(history.identities())  # read here: the history is this thread's
        return Resume(token, lambda: known)

    def resumed(self, dirty: Dirty) -> None:
        """The watch started from the token: the losses so far are accounted for."""
        self.losses_seen = dirty.losses

    def checkpoint(self, session: PairSession, dirty: Dirty, watch: Watch | None) -> Token:
        """The watch's checkpoint now (None without one) with the loss count it goes
        with. A loss seen since the last look drops the stored token: the history may
        lag behind what the watch had reported before it."""
        history = session.history
        losses = dirty.losses
        if losses != self.losses_seen:
            self.losses_seen = losses
            if history is not None and not history.readonly:
                history.clear_resume()
        return (watch.checkpoint() if watch is not None else None), losses

    def store(self, session: PairSession, token: Token, dirty: Dirty, *, synced: bool) -> None:
        """Keep ``token`` when the round taken with it synced everything up to it
        (``synced``: it applied and recorded all it found, nothing waits for a retry, no
        stop came) and no notification was lost since."""
        value, losses = token
        history = session.history
        if (
            value is None or not synced or history is None or history.readonly
            or self.options.dry_run or losses != dirty.losses
            or dirty.lost_reason is not None or not history.complete
        ):
            return
        history.save_resume(value, self.context)
