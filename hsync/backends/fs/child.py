"""The digest scan (``DigestScan``): a full scan with one digest per directory, asked
afterwards for only what the comparison needs.

``ScanChild`` runs it in a forked child while the caller scans the other tree (the
walk is CPU-bound Python: two walks in threads contend for the GIL, two processes do
not), answering typed requests over a pipe (marshal: plain dicts, tuples and ints).
``LocalScan`` runs it in this process when first asked and answers by direct lookups:
the source side of a re-sync, and the fallback where forking is unsafe (other threads
running) or fails.
"""

from __future__ import annotations

import marshal
import os
import sys
from collections.abc import Callable, Iterable

from ...backend import DigestSummary
from ...model import Key, Row, Rows, Snapshot, Table
from .posix import die_with_parent

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any, BinaryIO
else:  # signal's C half, the same functions and constants: the Python module
    # builds its enums at import (enum with it, 2-4 ms of a small sync's start-up)
    import _signal

Scanner = Callable[[dict[Key, int], dict[Key, int]], tuple[Snapshot, list[Key]]]
"""Runs the full scan filling the listing digests and the subtree digests; returns it
with the temporaries it found."""
Remember = Callable[[list[Key]], None]
"""Hands the temporaries a scan found to the backend (the next apply removes them)."""


class Request:
    """What the caller asks the scanning child (an int on the pipe). Plain ints, not an
    ``IntEnum``: ``enum`` is not imported by a small sync (start-up)."""

    SUMMARY = 1
    LISTINGS = 2
    ROWS = 3
    ALL = 4
    BYE = 5


class _Scanned:
    """A finished scan and its digests, answering the requests."""

    def __init__(
        self, snap: Snapshot, digests: dict[Key, int], trees: dict[Key, int], temps: list[Key]
    ) -> None:
        self.snap = snap
        self.digests = digests
        self.trees = trees
        self.temps = temps
        rows = snap.nodes.rows  # type: ignore[attr-defined]
        assert isinstance(rows, Table)  # a whole tree's scan
        self.rows: Table = rows

    def summary(self) -> dict[str, Any]:
        snap = self.snap
        return {
            "digests": self.digests,
            "trees": self.trees,
            "incomplete": snap.incomplete,
            "skipped": snap.skipped,
            "temps": self.temps,
            "held": snap.holds_excluded,
            "count": len(self.rows),
            "root": self.rows.get(()),
        }

    def listings(self, dirs: Iterable[Key]) -> dict[Key, list[tuple[str, Row]]]:
        listing = self.rows.listing_rows
        return {d: listing(d) for d in dirs}

    def rows_of(self, keys: Iterable[Key], subtrees: Iterable[Key]) -> dict[Key, Row]:
        rows = self.rows
        out = {k: rows[k] for k in keys if k in rows}
        for top in subtrees:
            if top in rows:
                out[top] = rows[top]
                for k in self.snap.walk(top):
                    out[k] = rows[k]
        return out

    def everything(self) -> tuple[Any, ...]:
        snap = self.snap
        return (self.rows.to_wire(), snap.incomplete, snap.skipped, self.temps,
                snap.holds_excluded, snap.mounts)

    def answer(self, request: int, args: tuple[Any, ...]) -> Any:
        if request == Request.SUMMARY:
            return self.summary()
        if request == Request.LISTINGS:
            return self.listings(*args)
        if request == Request.ROWS:
            return self.rows_of(*args)
        return self.everything()


def _summary(raw: dict[str, Any]) -> DigestSummary:
    return DigestSummary(
        digests=raw["digests"], trees=raw["trees"], incomplete=raw["incomplete"],
        skipped=raw["skipped"], held=raw["held"], count=raw["count"], root=raw["root"],
    )


class LocalScan:
    """The digest scan run in this process, when first asked."""

    def __init__(self, scanner: Scanner, remember: Remember) -> None:
        self._scanner = scanner
        self._remember = remember
        self._done: _Scanned | None = None
        self._summary: DigestSummary | None = None

    def _scanned(self) -> _Scanned:
        if self._done is None:
            digests: dict[Key, int] = {}
            trees: dict[Key, int] = {}
            snap, temps = self._scanner(digests, trees)
            self._done = _Scanned(snap, digests, trees, temps)
            self._remember(temps)
        return self._done

    def summary(self) -> DigestSummary:
        if self._summary is None:
            self._summary = _summary(self._scanned().summary())
        return self._summary

    def listings(self, dirs: Iterable[Key]) -> dict[Key, list[tuple[str, Row]]]:
        return self._scanned().listings(dirs)

    def ask_listings(
        self, dirs: Iterable[Key]
    ) -> Callable[[], dict[Key, list[tuple[str, Row]]]]:
        """Listed when taken: in this process there is nothing to overlap."""
        dirs = list(dirs)
        return lambda: self._scanned().listings(dirs)

    def rows(self, keys: Iterable[Key] = (), subtrees: Iterable[Key] = ()) -> dict[Key, Row]:
        return self._scanned().rows_of(keys, subtrees)

    def snapshot(self) -> Snapshot:
        return self._scanned().snap

    def close(self) -> None:
        pass


class ScanChild:
    """The digest scan run in a forked child (see the module docstring); where forking
    is unsafe or fails, or the child dies, it runs here instead (``LocalScan``)."""

    def __init__(self, scanner: Scanner, remember: Remember) -> None:
        self._remember = remember
        self._local = LocalScan(scanner, remember)
        self._summary: DigestSummary | None = None
        self._owed: list[Any] | None = None
        """The box of the request sent and not yet answered (``_post``), if any: the
        child answers in order, so its answer is read before another request's."""
        self.pid = 0
        # no fork beside another thread; without threading imported, there is none
        threading = sys.modules.get("threading")
        if (threading and threading.active_count() > 1) or not hasattr(os, "fork"):
            return
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            for fd in (req_r, req_w, res_r, res_w):
                os.close(fd)
            return
        if pid == 0:  # child: scan, serve the requests, never return into the caller
            code = 1
            try:
                die_with_parent(parent)  # a killed run takes its scan along
                os.close(req_w)
                os.close(res_r)
                self._serve(req_r, res_w)
                code = 0
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(res_w)
        self.pid = pid
        self._req = os.fdopen(req_w, "wb")
        self._res = os.fdopen(res_r, "rb")

    # -- the child ----------------------------------------------------------------------
    def _serve(self, req_fd: int, res_fd: int) -> None:
        scanned = self._local._scanned()  # at once: the caller scans the other tree
        with os.fdopen(req_fd, "rb") as req, os.fdopen(res_fd, "wb") as res:
            while True:
                message = _receive(req)
                if message is None:
                    return
                request = int(message[0])
                if not Request.SUMMARY <= request <= Request.BYE:
                    raise ValueError(f"{request} is not a scan child's request")
                if request == Request.BYE:
                    return
                _send(res, scanned.answer(request, tuple(message[1:])))
                if request == Request.ALL:
                    return

    # -- the caller ---------------------------------------------------------------------
    def _ask(self, request: int, *args: Any) -> Any:
        return self._post(request, *args)()

    def _post(self, request: int, *args: Any) -> Callable[[], Any]:
        """Send ``request`` now; what is returned takes its answer (once). Where the
        child failed, the scan runs here instead and answers."""
        self._drain()
        box: list[Any] = []
        if self.pid:
            try:
                _send(self._req, (int(request), *args))
            except OSError:
                box.append(None)
            else:
                self._owed = box

        def take() -> Any:
            if self._owed is box:
                self._drain()
            answer = box[0] if box else None
            if answer is not None:
                return answer
            self._end()  # the child failed (or was never there): scan here instead
            return self._local._scanned().answer(request, args)

        return take

    def _drain(self) -> None:
        """Read the answer owed to the request sent last, into its box (None: the
        child failed or is gone)."""
        box, self._owed = self._owed, None
        if box is None:
            return
        answer = None
        if self.pid:
            try:  # noqa: SIM105 (contextlib is not on a no-op's path)
                answer = _receive(self._res)
            except OSError:
                pass
        box.append(answer)

    def summary(self) -> DigestSummary:
        if self._summary is None:
            raw = self._ask(Request.SUMMARY)
            self._remember(list(raw["temps"]))
            self._summary = _summary(raw)
        return self._summary

    def listings(self, dirs: Iterable[Key]) -> dict[Key, list[tuple[str, Row]]]:
        return self._ask(Request.LISTINGS, list(dirs))

    def ask_listings(
        self, dirs: Iterable[Key]
    ) -> Callable[[], dict[Key, list[tuple[str, Row]]]]:
        """Sent now: the child lists them (and marshals them) while the caller lists
        its own tree's."""
        return self._post(Request.LISTINGS, list(dirs))

    def rows(self, keys: Iterable[Key] = (), subtrees: Iterable[Key] = ()) -> dict[Key, Row]:
        return self._ask(Request.ROWS, list(keys), list(subtrees))

    def snapshot(self) -> Snapshot:
        """The whole scan; the child's service ends."""
        if not self.pid:
            return self._local.snapshot()
        wire, incomplete, skipped, temps, held, mounts = self._ask(Request.ALL)
        self._end()
        self._remember(list(temps))
        # the table's columns cross as bytes: its directory runs are its children index
        return Snapshot(
            nodes=Rows(Table.from_wire(wire)), incomplete=incomplete, skipped=skipped,
            holds_excluded=held, mounts=mounts,
        )

    def close(self) -> None:
        """Ends the child (idempotent)."""
        if self.pid:
            # not waiting for a scan nobody will ask for (a cancelled comparison)
            try:  # noqa: SIM105 (contextlib is not on a no-op's path)
                os.kill(self.pid, _signal.SIGKILL)
            except OSError:
                pass
            self._end()

    def _end(self) -> None:
        if not self.pid:
            return
        for f in (self._req, self._res):
            try:  # noqa: SIM105
                f.close()
            except OSError:
                pass
        try:  # noqa: SIM105
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = 0


def _send(f: BinaryIO, obj: Any) -> None:
    data = marshal.dumps(obj)
    f.write(len(data).to_bytes(8, "little"))
    f.write(data)
    f.flush()


def _receive(f: BinaryIO) -> Any:
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    data = f.read(n)
    if len(data) < n:
        return None
    return marshal.loads(data)
