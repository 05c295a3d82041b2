"""What a running pair says about itself: ``PairStatus``, written by ``StatusFile``
(``--status-file``, read by ``hsync status``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .model import CREATE, DELETE, MOVE, UPDATE, Op, Problem

log = logging.getLogger("hsync.watch")


@attrs.define
class PairStatus:
    """What ``--status-file`` says about one pair."""

    name: str
    source: str
    destination: str
    state: str = "starting"  # starting, syncing, idle, waiting, error, stopped
    rounds: int = 0
    full_comparisons: int = 0
    """Rounds that compared both trees whole (the start-up without a complete history,
    ``--rescan-interval``, a source root that came back)."""
    quick_passes: int = 0
    """Rounds that compared the source's metadata against the history instead (a
    restart, a reconnected link, lost notifications), then only what differed."""
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
    link: str | None = None
    """A pair with a remote endpoint: "up" or "down" (reconnecting); None otherwise."""
    link_since: float | None = None
    """When the link went ``link`` (wall clock)."""

    def round_done(
        self,
        *,
        seconds: float,
        first: float | None,
        done: Iterable[Op],
        problems: Sequence[Problem],
        warnings: Sequence[str] = (),
    ) -> None:
        """Count a round that ended (``first``: when its oldest event came, monotonic;
        ``done``: its ops, counted here unless they were counted as they landed)."""
        self.rounds += 1
        self.last_round_at = time.time()
        self.last_round_seconds = seconds
        self.last_lag_seconds = time.monotonic() - first if first is not None else None
        for op in done:
            if not op.temporary:
                self.counts[op.op] += 1
        self.problems += len(problems)
        self.warnings.extend(warnings)
        self.state = "error" if problems else "idle"
        self.last_error = (problems[0].message if problems
                           else warnings[0] if warnings else None)

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
            "quick_passes": self.quick_passes,
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
            **({"link": self.link, "link_since": _iso(self.link_since)}
               if self.link is not None else {}),
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
