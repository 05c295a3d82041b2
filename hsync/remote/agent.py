"""``hsync agent``: the far side of a remote endpoint (started by ``ssh``).

It answers the requests of one ``RemoteBackend`` on its stdin/stdout: opens the tree it
is told to (any registered scheme; ``--restrict ROOT`` confines it to one tree), and
serves the backend contract where the data is: scans, digest scans, hashes, reads of
content (streamed in chunks), batches of ops (with the content that travels with them),
watches. One request at a time on the main thread, in order; a batch runs in a thread
of its own while its content pages arrive, and a watch reports from its own threads.

A batch carries the sender's session and a sequence number in it. Batches are applied
one after the other, in the order they arrive, by one applier thread (the sender keeps
a window of them in flight: the next ones' content arrives while one is applied). The
agent records each in its journal (beside its state, ``hsync.journal``), applies it,
waits for it to be durable, marks it done with its answer, and only then answers it:
an answer is the acknowledgement that the batch is on disk. A batch that fails as a
whole stops the session's later ones (answered, not applied). A sender whose link
broke starts a new agent and asks it (``acknowledged``) which of its batches the
journal holds as done (their answers are taken from there) and which were begun and
not finished (resent marked resumed: the ops already done there are skipped, the
temporary files the old agent left are removed). A session's lock keeps the new
agent from touching the tree until the old one has ended.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from .._values import astuple, evolve
from ..backend import (
    ApplyOptions,
    CtimeClock,
    DigestScan,
    Endpoint,
    Keep,
    ScanConfigurable,
    ScanOptions,
    Watch,
    look_many,
    open_endpoint,
)
from ..cancel import Cancel
from ..errors import HsyncError, NodeError, SourceChanged, TargetChanged, UsageError
from ..model import CREATE, DELETE, DIR, FILE, MOVE, SYMLINK, UPDATE, Key, Node, Op, Rows, Snapshot
from .protocol import (
    CHUNK,
    MAGIC,
    NOT_APPENDED,
    PROTOCOL,
    Framer,
    LinkClosed,
    Spool,
    decode_ops,
    hsync_version,
    pack,
)

TYPE_CHECKING = False  # not typing's: the agent's start-up is every remote run's
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from .. import delta as deltas
else:  # imported by the requests that use it: a no-op run never loads librsync
    deltas = None


def _load_deltas() -> Any:
    global deltas
    if deltas is None:
        from .. import delta

        deltas = delta
    return deltas


PAGE = 2000
"""Items per frame of a streamed walk."""
PAGE_BYTES = 1 << 20
"""Bytes of content per page of a read of many files."""


# -- values on the wire ----------------------------------------------------------------------
def encode_snapshot(snap: Snapshot) -> dict[str, Any]:
    nodes = snap.nodes
    if isinstance(nodes, Rows):
        items: Any = ("rows", list(nodes.rows.items()))
    else:
        items = ("nodes", list(nodes.items()))
    return {
        "nodes": items, "incomplete": snap.incomplete, "skipped": snap.skipped,
        "holds_excluded": snap.holds_excluded, "mounts": snap.mounts, "partial": snap.partial,
        "scanned": snap.scanned,
    }


def decode_snapshot(value: dict[str, Any]) -> Snapshot:
    kind, items = value["nodes"]
    nodes: Any = Rows(dict(items)) if kind == "rows" else dict(items)
    return Snapshot(
        nodes=nodes, incomplete=dict(value["incomplete"]), skipped=list(value["skipped"]),
        holds_excluded=set(value["holds_excluded"]), mounts=set(value.get("mounts", ())),
        partial=set(value["partial"]),
        scanned=value["scanned"],
    )


def problem_of(e: BaseException) -> list[str]:
    if isinstance(e, SourceChanged):  # a retry there, as here: not a failed request
        return ["source_changed", str(e)]
    if isinstance(e, TargetChanged):
        return ["target_changed", str(e)]
    if isinstance(e, UsageError):
        return ["usage", str(e)]
    if isinstance(e, OSError):
        return ["oserror", e.strerror or str(e)]
    return ["error", str(e) or type(e).__name__]


def read_whole(f: BinaryIO) -> tuple[list[bytes], int, int]:
    """The content of ``f`` as chunks, with the size and mtime it had before the read;
    ``SourceChanged`` when it changed while it was read."""
    before = os.fstat(f.fileno())
    chunks: list[bytes] = []
    while chunk := f.read(CHUNK):
        chunks.append(chunk)
    after = os.fstat(f.fileno())
    got = sum(len(c) for c in chunks)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or \
            got != before.st_size:
        raise SourceChanged("the source file changed while it was read")
    return chunks, before.st_size, before.st_mtime_ns


def data_pieces(fd: int, size: int) -> Iterator[tuple[bytes, int]]:
    """The first ``size`` bytes of a file with holes as ``(data, offset)``: its data
    extents (``SEEK_DATA``/``SEEK_HOLE``) in chunks, then ``(b"", size)`` for its length
    (a trailing hole). Where the filesystem cannot seek to data, the whole file in
    chunks, each with its offset."""
    from ..backends.fs.posix import data_extents

    began = False
    try:
        for start, stop in data_extents(fd, size):
            while start < stop:
                chunk = os.pread(fd, min(CHUNK, stop - start), start)
                if not chunk:
                    return  # shorter now: the caller's fstat tells
                began = True
                yield chunk, start
                start += len(chunk)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP) or began:
            raise
        pos = 0
        while chunk := os.pread(fd, CHUNK, pos):  # no seeking to data here
            yield chunk, pos
            pos += len(chunk)
    yield b"", size


# -- a batch's content, as it arrives ------------------------------------------------------
class Incoming:
    """The content a batch's ops read (``ContentSource``): each file arrives in pages;
    ``read`` waits for the whole file."""

    def __init__(self, url: str, reads: dict[Key, int], basis: Any = None,
                 spool_dir: str | None = None) -> None:
        self.url = url
        self._near = spool_dir
        """Where a big file waits for its apply (``Spooling``): linked in from there."""
        self._basis = basis
        """The backend holding the old files a delta patches (the destination)."""
        self._deltas: set[Key] = set()
        self._trailers: dict[Key, deltas.Trailer] = {}
        self._reads = reads
        """How many ops of the batch read each key: its content is kept until the last."""
        self._cond = threading.Condition()
        self._parts: dict[Key, Spool] = {}
        self._done: dict[Key, tuple[int, str | None]] = {}
        self._ended = False
        self.cut = False
        """The link broke before all of the content arrived."""

    def add(self, page: Sequence[Any]) -> None:
        parts, done = self._parts, self._done
        with self._cond:
            for item in page:
                if len(item) == 3 and item[2] is not None and item[0] not in parts:
                    # a small file whole in one item, with its end (the most of them)
                    key, data, end = item
                    if data:
                        parts[key] = Spool.whole(data)
                    done[key] = (end[0], end[1])
                    continue
                key, data, end, *rest = item
                is_delta = rest[0] if rest else 0  # then, for a file with holes, the offset
                at = rest[1] if len(rest) > 1 else None
                if is_delta:
                    _load_deltas()
                    self._deltas.add(key)
                    if end is not None and end[1] is None:
                        self._trailers[key] = deltas.Trailer(end[2], end[3])
                        end = end[:2]
                if data or at is not None:
                    spool = self._parts.get(key)
                    if spool is None:
                        spool = self._parts[key] = Spool(self._near)
                    spool.add(data, at)
                if end is not None:
                    mtime, error = end
                    self._done[key] = (mtime, error)
            self._cond.notify_all()

    def end(self, *, cut: bool = False) -> None:
        with self._cond:
            if cut and not self._ended:
                self.cut = True
            self._ended = True
            self._cond.notify_all()

    def read(self, key: Key) -> BinaryIO:
        with self._cond:
            while key not in self._done and not self._ended:
                self._cond.wait()
            if key not in self._done:
                raise SourceChanged("its content did not arrive (the link broke)")
            left = self._reads.get(key, 1) - 1
            self._reads[key] = left
            if left > 0:
                mtime, error = self._done[key]
                spool = self._parts.get(key) or Spool()
            else:
                mtime, error = self._done.pop(key)
                spool = self._parts.pop(key) if key in self._parts else Spool()
        if error is not None:
            spool.close()
            raise SourceChanged(error)
        if key in self._deltas:
            return self._patched(key, spool, mtime, last=left <= 0)
        return spool.file(mtime, last=left <= 0)

    def _patched(self, key: Key, spool: Spool, mtime: int, *, last: bool) -> BinaryIO:
        """The new content of ``key``: its delta applied to the old file at ``key`` (the
        destination's, as the batch left it so far), checked against the sender's
        trailer (``delta.Patched``: written once, straight into the file the apply publishes).
        A delta that does not verify (the old file changed since it was signed, a
        block-sum collision, a corrupt delta) is a ``SourceChanged``: the client
        retries the file, whole."""
        with self._cond:
            trailer = self._trailers.get(key)
            if last:
                self._deltas.discard(key)
                self._trailers.pop(key, None)
        if trailer is None:
            spool.close()
            raise SourceChanged("its delta did not apply (no trailer); sent whole next")
        made = _load_deltas().Patched(spool.file(0, last=last),
                                      lambda: self._basis.read(key), trailer, mtime,
                                      delta_size=spool.size)
        return made


class _Sink:
    """A watch's sink on the far side: each report becomes an event frame."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        self.send = send

    def dirty(self, key: Key, *, deep: bool = True, writing: bool = False) -> None:
        self.send(["dirty", key, deep, writing])

    def lost(self, reason: str) -> None:
        self.send(["lost", reason])

    def moved(self, old: Key, new: Key, *, directory: bool = True) -> None:
        self.send(["moved", old, new, directory])  # an older client ignores it

    def unwatched(self, key: Key, reason: str) -> None:
        self.send(["unwatched", key, reason])


class Agent:
    def __init__(self, framer: Framer, restrict: str | None) -> None:
        self.framer = framer
        self.restrict = os.path.realpath(restrict) if restrict else None
        self.endpoint: Endpoint | None = None
        self.scans: dict[int, DigestScan] = {}
        self.watches: dict[int, tuple[threading.Event, threading.Thread]] = {}
        self.applies: dict[int, tuple[Incoming, int, Cancel]] = {}
        """The batches received and not yet answered (by request id): their content
        coming in, their sequence number, the token that cancels them."""
        self.queued: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.applier: threading.Thread | None = None
        self.outstanding = 0
        self.most_outstanding = 0
        """Batches received and not yet answered, now and at most (the window seen)."""
        self.stopped: dict[str, int] = {}
        """A session's batch that failed as a whole: later ones are not applied."""
        self.closing = False
        self.owned: set[str] = set()
        self.lockfd: int | None = None
        self.journal: Any = None
        self.journal_pair = ""
        self.journal_lock = threading.Lock()
        self.timeline: _Timeline | None = None
        """``HSYNC_AGENT_TIMELINE``: when each request came and went (debugging)."""

    # -- the loop --------------------------------------------------------------------------
    def serve(self) -> None:
        trace = os.environ.get("HSYNC_AGENT_TRACE")
        log = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115
        timeline = self.timeline = _Timeline.start()
        try:
            while True:
                rid, method, args = self.framer.recv()
                if method == "more":
                    self._more(rid, args)
                    continue
                if log is not None:  # one line per request, for tests and debugging
                    log.write(f"{method}\n")
                if timeline is not None:
                    timeline.mark(f"{method} received")
                handler = getattr(self, "do_" + method, None)
                if handler is None:
                    self.framer.send([rid, "err", ["error", f"unknown request {method!r}"]])
                    continue
                try:
                    result = handler(rid, *args)
                except (Exception, HsyncError) as e:  # one request failed, not the agent
                    if os.environ.get("HSYNC_AGENT_DEBUG"):
                        import traceback

                        traceback.print_exc()
                    self.framer.send([rid, "err", problem_of(e)])
                else:
                    if result is not _LATER:
                        self.framer.send([rid, "ok", result])
                if timeline is not None:
                    timeline.mark(f"{method} answered")
        except LinkClosed:
            pass
        finally:
            self._shutdown()
            if log is not None:
                log.close()
            if timeline is not None:
                timeline.end()

    def _shutdown(self) -> None:
        self._mark("end of input")
        self.closing = True  # the batches queued are not applied
        for inc, _, token in list(self.applies.values()):
            inc.end(cut=True)  # first: a batch its token stops is seen as cut off
            token.cancel("the link to the client was lost")  # stop at the next op
        if self.applier is not None:
            self.queued.put(None)
            self.applier.join()
        for stop, t in self.watches.values():
            stop.set()
            t.join()
        for scan in self.scans.values():
            scan.close()
        if self.endpoint is not None:
            self.endpoint.close()
        self._mark("scans, watches, endpoint closed")
        # the journal is not closed: closing SQLite's last connection checkpoints the
        # WAL (the database written and fsynced) while the client waits for this
        # process to end. Each done mark is already flushed in the WAL; the next agent
        # reads it there (``run_agent`` ends the process without closing it).
        if self.lockfd is not None:
            os.close(self.lockfd)

    @property
    def backend(self) -> Any:
        if self.endpoint is None:
            raise UsageError("no tree is open")
        return self.endpoint.backend

    # -- hello, open -----------------------------------------------------------------------
    def do_hello(self, rid: int, magic: str, protocol: int, version: str,
                 compress: bool = True) -> Any:
        self.framer.compress = bool(compress)
        return {"magic": MAGIC, "protocol": PROTOCOL, "version": hsync_version(),
                "pid": os.getpid()}

    def _location(self, path: str) -> str:
        if "://" in path and not path.startswith("file://"):
            if self.restrict is not None:
                raise UsageError(f"{path}: refused: this agent serves only {self.restrict}")
            return path
        if path.startswith("file://"):
            path = path[len("file://"):]
        base = self.restrict or os.getcwd()
        full = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
        if self.restrict is not None:
            real = os.path.realpath(full)
            root = self.restrict.rstrip("/") + "/"
            if real != self.restrict and not real.startswith(root):
                raise UsageError(
                    f"{path}: refused: outside the tree this agent is restricted to "
                    f"({self.restrict})"
                )
        return full

    def do_open(self, rid: int, path: str, role: str, exclude_attrs: Sequence[str]) -> Any:
        location = self._location(path)
        self.endpoint = open_endpoint(location, role=role,  # type: ignore[arg-type]
                                      exclude_attrs=exclude_attrs)
        b = self.endpoint.backend
        features = list(self.endpoint.features.names())
        if isinstance(b, ScanConfigurable):  # not a Features field: the session asks
            features.append("scan_configurable")
        if isinstance(b, CtimeClock):  # nor is this one
            features.append("ctime_clock")
        if self.endpoint.features.bulk_hashing is not None:  # a request, not a feature
            features.append("look_many")
        return {
            "url": b.url, "canonical": b.canonical_url(),
            "capabilities": self.endpoint.capabilities,
            "features": features,
            "keeps": self._keeps(location, role, exclude_attrs),
        }

    def _keeps(self, location: str, role: str, exclude_attrs: Sequence[str]) -> Keep | None:
        """What of all the metadata there is the tree can keep (``Metadata``), asked of
        an endpoint opened for that alone (the tree's own is told nothing before the
        session asks): the client answers the negotiation's requests from it (each
        what it asks and this keep) and does not wait for them. None: no metadata."""
        if self.endpoint is None or self.endpoint.features.metadata is None:
            return None
        probe = open_endpoint(location, role=role,  # type: ignore[arg-type]
                              exclude_attrs=exclude_attrs)
        try:
            metadata = probe.features.metadata
            return metadata.metadata(EVERYTHING) if metadata is not None else None
        finally:
            probe.close()

    def do_ctime_clock(self, rid: int) -> Any:
        """``CtimeClock`` of the far tree, with this host's clock read as it answers
        (the sender adds how far the two clocks may be apart)."""
        backend = self.backend
        assert isinstance(backend, CtimeClock)
        return [backend.ctime_lag_ns(), time.time_ns()]

    def do_configure_scan(self, rid: int, specials: bool, one_file_system: bool) -> Any:
        """The pair's ``ScanOptions`` (``-x``, ``--no-specials``), for every later scan
        of the far tree."""
        backend = self.backend
        if isinstance(backend, ScanConfigurable):
            backend.configure_scan(ScanOptions(specials=bool(specials),
                                               one_file_system=bool(one_file_system)))
        return None

    # -- Backend ----------------------------------------------------------------------------
    def do_root_error(self, rid: int) -> Any:
        return self.backend.root_error()

    def do_root_id(self, rid: int) -> Any:
        return self.backend.root_id()

    def do_is_empty(self, rid: int) -> Any:
        return self.backend.is_empty()

    def do_scan(self, rid: int, subtree: Key, exclude: Any) -> Any:
        return encode_snapshot(self.backend.scan(tuple(subtree), exclude=exclude))

    def do_stat(self, rid: int, key: Key) -> Any:
        return self.backend.stat(key)

    def do_digest(self, rid: int, key: Key) -> Any:
        return self.backend.digest(key)

    def do_read(self, rid: int, key: Key, sparse: bool = False) -> Any:
        """One file, streamed in chunks (``item`` frames), then its mtime. ``sparse``:
        a file with holes sends its data extents only, each item ``[chunk, offset]``,
        the last ``[b"", size]`` (``data_pieces``)."""
        with self.backend.read(key) as f:
            before = os.fstat(f.fileno())
            total = 0
            if sparse and before.st_blocks * 512 < before.st_size:
                for chunk, at in data_pieces(f.fileno(), before.st_size):
                    total = at + len(chunk)
                    self.framer.send([rid, "item", [chunk, at]])
            else:
                while chunk := f.read(CHUNK):
                    total += len(chunk)
                    self.framer.send([rid, "item", chunk])
            after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or \
                total != before.st_size:
            raise SourceChanged("the source file changed while it was read")
        return before.st_mtime_ns

    # -- Metadata ------------------------------------------------------------------------
    @property
    def _metadata(self) -> Any:
        metadata = self.endpoint.features.metadata if self.endpoint else None
        if metadata is None:
            raise UsageError("this tree keeps no owner, group, xattrs or ACLs")
        return metadata

    def do_id_names(self, rid: int) -> Any:
        users, groups = self._metadata.id_names()
        return [users, groups]

    def do_metadata(self, rid: int, wanted: Any) -> Any:
        return self._metadata.metadata(wanted)

    def do_read_deltas(self, rid: int, wanted: Sequence[Sequence[Any]]) -> Any:
        """Many files as deltas against the signatures of the client's old files
        (``[key, chunks]`` each), in pages of ``[key, data, end]``: ``end`` None while
        the file's delta goes on, then ``[mtime_ns, size, digest]``, or ``[None, why]``
        when no verified delta can be made (the client reads that file whole). An item
        ``[key, [], size, digest]`` gives the old file's size and digest instead of a
        signature: where this file begins with it, its delta is an append
        (``deltas.AppendStream``); else its end is ``[None, NOT_APPENDED]``."""
        _load_deltas()
        page: list[Any] = []
        size = 0
        for key, sig, *prefix in wanted:
            key = tuple(key)
            end: list[Any]
            try:
                with self.backend.read(key) as f:
                    before = os.fstat(f.fileno())
                    stream: deltas.DeltaStream | deltas.AppendStream
                    if not prefix:
                        stream = deltas.delta(list(sig), f.fileno())
                    elif deltas.prefix_digest(f.fileno(), prefix[0]) == prefix[1]:
                        stream = deltas.AppendStream(prefix[0], f.fileno())
                    else:
                        page.append([key, b"", [None, NOT_APPENDED]])
                        continue
                    for chunk in stream:
                        page.append([key, chunk, None])
                        size += len(chunk)
                        if size >= PAGE_BYTES:
                            self.framer.send([rid, "item", page])
                            page, size = [], 0
                    trailer = stream.trailer()
                    after = os.fstat(f.fileno())
                if (after.st_size, after.st_mtime_ns) != (before.st_size,
                                                          before.st_mtime_ns) \
                        or trailer.size != before.st_size:
                    end = [None, "the source file changed while it was read"]
                else:
                    end = [before.st_mtime_ns, trailer.size, trailer.digest]
            except (OSError, NodeError, deltas.DeltaError) as e:
                end = [None, str(e)]
            page.append([key, b"", end])
            if len(page) >= PAGE:
                self.framer.send([rid, "item", page])
                page, size = [], 0
        if page:
            self.framer.send([rid, "item", page])
        return None

    def do_read_many(self, rid: int, keys: Sequence[Key], limit: int,
                     sparse: bool = False) -> Any:
        """Many files in pages of ``[key, data, end]`` (``end``: None while more of the
        file follows, else ``[mtime_ns, error or None]``). A file larger than ``limit``
        is not sent: its end says ``"big"``, the client reads it on its own; so is,
        with ``sparse``, a file with holes (``do_read`` keeps them)."""
        page: list[Any] = []
        size = 0
        for key in keys:
            try:
                with self.backend.read(key) as f:
                    st = os.fstat(f.fileno())
                    if st.st_size > limit or (sparse and st.st_blocks * 512 < st.st_size):
                        page.append([key, b"", [st.st_mtime_ns, "big"]])
                        continue
                    chunks, _, mtime = read_whole(f)
            except (OSError, NodeError) as e:
                page.append([key, b"", [0, str(e) if isinstance(e, NodeError)
                                        else (e.strerror or str(e))]])
                continue
            for i, c in enumerate(chunks):
                page.append([key, c, [mtime, None] if i == len(chunks) - 1 else None])
                size += len(c)
                if size >= PAGE_BYTES:
                    self.framer.send([rid, "item", page])
                    page, size = [], 0
            if not chunks:
                page.append([key, b"", [mtime, None]])
            if len(page) >= PAGE:
                self.framer.send([rid, "item", page])
                page, size = [], 0
        if page:
            self.framer.send([rid, "item", page])
        return None

    def do_signatures(self, rid: int, wanted: Sequence[Sequence[Any]]) -> Any:
        """The signatures of the old files a batch's deltas patch, in pages of
        ``[key, chunks]`` (chunks empty: no delta for that key: it is sent whole).
        An item ``[key, basis, size, digest]`` says the new file's first ``size`` bytes
        have that digest: where the old file is just those bytes, the answer is ``[key,
        [], size]`` (the new file only grew: its delta needs no signature)."""
        _load_deltas()
        page: list[Any] = []
        size = 0
        for key, basis, *prefix in wanted:
            chunks: list[bytes] = []
            try:
                with self.backend.read(tuple(basis)) as f:
                    if prefix and deltas.whole_digest(f.fileno()) == tuple(prefix):
                        page.append([key, [], prefix[0]])
                    else:
                        chunks = list(deltas.signature(f.fileno()))
            except (OSError, NodeError, deltas.DeltaError):
                chunks = []
            if chunks:
                page.append([key, chunks])
                size += sum(len(c) for c in chunks)
            if size >= PAGE_BYTES or len(page) >= PAGE:
                self.framer.send([rid, "item", page])
                page, size = [], 0
        if page:
            self.framer.send([rid, "item", page])
        return None

    # -- batches: applied one after the other, in the order sent ------------------------------
    def do_apply(self, rid: int, seq: int, rows: Sequence[Any], final: dict[str, Any],
                 options: ApplyOptions, pair: str, session: str = "",
                 resumed: bool = False) -> Any:
        """A batch: queued for the applier thread (batches are applied in the order
        they arrive, each while its content pages arrive; the sender keeps a window
        of them in flight). Answered once applied, flushed and journaled."""
        ops = decode_ops(rows)
        reads: dict[Key, int] = {}
        for op in ops:
            if op.node is not None and op.node.kind == FILE:
                reads[op.key] = reads.get(op.key, 0) + 1
        spooling = self.endpoint.features.spooling if self.endpoint else None
        incoming = Incoming(self.backend.url, reads, self.backend,
                            spooling.spool_dir() if spooling is not None else None)
        snap = decode_snapshot(final)
        token = Cancel()
        self.applies[rid] = (incoming, seq, token)
        if self.applier is None:
            self.applier = threading.Thread(target=self._applier, name="hsync-apply",
                                            daemon=True)
            self.applier.start()
        self.queued.put((rid, seq, list(ops), snap, options, incoming, pair, session,
                         bool(resumed), token))
        return _LATER

    def do_cancel(self, rid: int, batch: int) -> Any:
        """The client cancelled batch ``batch`` (Ctrl-C, SIGTERM, a watch stopping): its
        apply stops at the next op, and its content ends here (a file not all arrived is
        not published). The batch is answered as ever, with what it did."""
        entry = self.applies.get(batch)
        if entry is not None:
            entry[2].cancel("cancelled by the client")
            entry[0].end()
        return None

    def _more(self, rid: int, value: Any) -> None:
        entry = self.applies.get(rid)
        if entry is None:
            return
        if value is None:
            entry[0].end()
        else:
            entry[0].add(value)

    def _applier(self) -> None:
        while True:
            item = self.queued.get()
            if item is None:
                return
            # received and not yet answered: this one and those queued behind it
            self.outstanding = len(self.applies)
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
            self._apply(*item)

    def _journal(self, pair: str) -> Any:
        with self.journal_lock:
            return self._open_journal(pair)

    def _open_journal(self, pair: str) -> Any:
        import sqlite3

        from .. import journal as journal_mod

        if not journal_mod.enabled():
            return None
        if self.journal is None or self.journal_pair != pair:
            path = _journal_path()
            try:
                self.journal = journal_mod.Journal(path, pair)
                # batches left begun by agents that are gone: pruned like any other
                self.journal.roll_stale()
            except (OSError, sqlite3.Error) as e:  # a home that cannot be written
                sys.stderr.write(f"hsync agent: {path}: no journal ({e})\n")
                self.journal = None
                return None
            self.journal_pair = pair
        return self.journal

    def _own(self, session: str) -> None:
        """Hold ``session``'s lock while this agent serves it: an agent started after
        the link broke waits until the one before it (still finishing the batch it
        was applying) has ended, before it reads the journal or applies anything."""
        if not session or session in self.owned:
            return
        path = _journal_path() + ".lock"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            if self.lockfd is None:
                self.lockfd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # no state directory: no journal either
        offset = int(session[:8], 16) % (1 << 30) if _is_hex(session[:8]) else 0
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.lockf(self.lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UsageError(
                        f"another agent still applies a batch of this run (waited "
                        f"{LOCK_WAIT} s)") from None
                time.sleep(0.05)
        self.owned.add(session)

    def do_acknowledged(self, rid: int, session: str, first: int) -> Any:
        """What this host's journal holds of ``session``'s batches from ``first`` on
        (a sender that reconnected asks): ``[answers, begun]``, the answers of those
        applied and flushed by sequence number, and the batches begun and never
        finished (partly applied: the sender resends them marked resumed)."""
        self._own(session)
        journal = self._journal(self.journal_pair or self.backend.canonical_url())
        if journal is None:
            return [{}, []]
        with self.journal_lock:
            done, begun = journal.acknowledged(session, first)
        return [done, begun]

    def do_outstanding(self, rid: int) -> Any:
        """[batches queued or being applied now, the most at any time] (tests)."""
        return [len(self.applies), self.most_outstanding]

    def _mark(self, what: str) -> None:
        if self.timeline is not None:
            self.timeline.mark(what)

    def _apply(self, rid: int, seq: int, ops: list[Op], final: Snapshot,
               options: ApplyOptions, incoming: Incoming, pair: str, session: str,
               resumed: bool, token: Cancel) -> None:
        self._mark(f"batch {seq}: {len(ops)} ops, applying")
        try:
            stopped = self.stopped.get(session)
            if self.closing or (stopped is not None and seq > stopped):
                # the link broke, or a batch sent before it failed: not applied (the
                # sender resends it, or re-plans it in its next run)
                why = "the link broke" if self.closing else f"batch {stopped} failed"
                raise UsageError(f"batch {seq} not applied: {why}")
            self._own(session)
            journal = self._journal(pair or self.backend.canonical_url()) if ops else None
            index = {id(op): i for i, op in enumerate(ops)}
            todo, already = ops, list[Op]()
            if resumed:  # begun by an agent that was cut off: some ops may be done
                todo, already = self._not_done(ops)
            logged = None
            if journal is not None:
                with self.journal_lock:
                    # not flushed by itself: the done mark's flushed commit flushes
                    # it before the acknowledgement (one fsync per batch, not two)
                    logged = journal.begin(todo, durable=False, session=session or None,
                                           sender_seq=seq)
                self._mark(f"batch {seq}: journaled")
            result = self.backend.apply_batch(
                todo, incoming, final, options=evolve(options, defer_durable=False),
                cancel=token,
            ) if todo or not ops else None
            self._mark(f"batch {seq}: applied and flushed")
            if incoming.cut:
                return  # its content did not all arrive: left begun; resent, resumed
            answer = {
                "seq": seq,
                "done": [index.get(id(op), op) for op in
                         (*already, *(result.done if result is not None else ()))],
                "problems": result.problems if result is not None else [],
                "bytes": result.bytes_copied if result is not None else 0,
                "warnings": result.warnings if result is not None else [],
            }
            if journal is not None and logged is not None:
                # after the batch's flush, with its answer: now it may be acknowledged
                with self.journal_lock:
                    journal.done(logged, session=session or None, sender_seq=seq,
                                 answer=pack(answer))
            self.applies.pop(rid, None)  # answered: no longer outstanding
            self._mark(f"batch {seq}: done in the journal")
            self.framer.send([rid, "ok", answer])
        except LinkClosed:
            pass
        except (Exception, HsyncError) as e:
            self.stopped.setdefault(session, seq)
            self.applies.pop(rid, None)
            with contextlib.suppress(LinkClosed):
                self.framer.send([rid, "err", problem_of(e)])
        finally:
            self.outstanding = 0
            self.applies.pop(rid, None)

    def _not_done(self, ops: list[Op]) -> tuple[list[Op], list[Op]]:
        """A batch resumed: (the ops still to do, those the tree shows done already),
        and the temporary files the agent that was cut off left, removed by the
        batch's apply (a filesystem remembers them from a scan of their directories)."""
        stat = self.backend.stat
        todo: list[Op] = []
        already: list[Op] = []
        for op in ops:
            now = stat(op.key)
            if op.op == DELETE:
                done = now is None
            elif op.op == MOVE:
                done = now is None and op.to is not None and stat(op.to) is not None
            elif op.op == CREATE and op.node is not None:
                done = now is not None and _same(now, op.node)
            elif op.op == UPDATE and op.node is not None and op.node.kind != DIR:
                # done when it shows: an update that changes only what a stat does
                # not tell (an owner, an xattr) runs again (it is idempotent)
                done = now is not None and _same(now, op.node) and (
                    op.old is None or not _same(op.old, op.node))
            else:
                done = False
            (already if done else todo).append(op)
        parents = sorted({op.key[:-1] for op in todo
                          if op.node is not None and op.node.kind == FILE})
        tops: list[Key] = []
        for p in parents:
            if not any(p[:len(t)] == t for t in tops):
                tops.append(p)
        for top in tops:
            with contextlib.suppress(Exception):
                self.backend.scan(top)  # lists the stale temporary files there
        return todo, already

    # -- walks --------------------------------------------------------------------------------
    def _pages(self, rid: int, items: Iterable[Any]) -> None:
        page: list[Any] = []
        for item in items:
            page.append(item)
            if len(page) >= PAGE:
                self.framer.send([rid, "item", page])
                page = []
        if page:
            self.framer.send([rid, "item", page])

    def do_walk_sorted(self, rid: int, exclude: Any) -> Any:
        self._pages(rid, self.endpoint.features.sorted_walk.walk_sorted(exclude))  # type: ignore[union-attr]
        return None

    def do_stream(self, rid: int, exclude: Any) -> Any:
        nodes = self.endpoint.features.streaming.stream(exclude)  # type: ignore[union-attr]
        self._pages(rid, ((k, astuple(n)
                           if isinstance(n, Node) else n) for k, n in nodes))
        return None

    # -- digest scans -------------------------------------------------------------------------
    def do_digest_scan(self, rid: int, exclude: Any, background: bool) -> Any:
        scanning = self.endpoint.features.digest_scanning  # type: ignore[union-attr]
        assert scanning is not None
        self.scans[rid] = scanning.digest_scan(exclude, background=background)
        return rid

    def _scan(self, handle: int) -> DigestScan:
        scan = self.scans.get(handle)
        if scan is None:
            raise UsageError(f"no digest scan {handle}")
        return scan

    def do_ds_summary(self, rid: int, handle: int) -> Any:
        return self._scan(handle).summary()

    def do_ds_listings(self, rid: int, handle: int, dirs: Sequence[Key]) -> Any:
        return list(self._scan(handle).listings(dirs).items())

    def do_ds_rows(self, rid: int, handle: int, keys: Sequence[Key],
                   subtrees: Sequence[Key]) -> Any:
        return list(self._scan(handle).rows(keys, subtrees).items())

    def do_ds_snapshot(self, rid: int, handle: int) -> Any:
        return encode_snapshot(self._scan(handle).snapshot())

    def do_ds_close(self, rid: int, handle: int) -> Any:
        scan = self.scans.pop(handle, None)
        if scan is not None:
            scan.close()
        return None

    # -- hashes -------------------------------------------------------------------------------
    def do_hash_many(self, rid: int, keys: Sequence[Key]) -> Any:
        return self.endpoint.features.bulk_hashing.hash_many(keys)  # type: ignore[union-attr]

    def do_look(self, rid: int, key: Key) -> Any:
        return self.endpoint.features.bulk_hashing.look(key)  # type: ignore[union-attr]

    def do_look_many(self, rid: int, keys: Sequence[Key]) -> Any:
        """``Linked.look_many`` of the client: the looks of all ``keys`` in one answer."""
        looks = look_many(self.endpoint, keys)  # type: ignore[arg-type]
        return [looks[k] for k in keys]

    # -- watches ------------------------------------------------------------------------------
    def do_watch(self, rid: int) -> Any:
        watchable = self.endpoint.features.watchable  # type: ignore[union-attr]
        assert watchable is not None
        stop = threading.Event()
        started = threading.Event()
        failed: list[BaseException] = []

        def send(event: Any) -> None:
            try:
                self.framer.send([rid, "event", event])
            except LinkClosed:
                stop.set()

        def run() -> None:
            try:
                watch: Watch = watchable.watch(_Sink(send))
                with watch:
                    started.set()
                    while not stop.wait(0.5):
                        if not watch.alive:
                            send(["died", "the watch ended"])
                            break
            except Exception as e:
                failed.append(e)
                started.set()
                return
            with contextlib.suppress(LinkClosed):
                self.framer.send([rid, "ok", None])

        t = threading.Thread(target=run, name="hsync-agent-watch", daemon=True)
        self.watches[rid] = (stop, t)
        t.start()
        started.wait()
        if failed:
            self.watches.pop(rid, None)
            raise failed[0]
        self.framer.send([rid, "item", "started"])
        return _LATER

    def do_unwatch(self, rid: int, handle: int) -> Any:
        entry = self.watches.pop(handle, None)
        if entry is not None:
            entry[0].set()
            entry[1].join()
        return None


class _Timeline:
    """``HSYNC_AGENT_TIMELINE=FILE`` (a debugging aid, see docs/ARCHITECTURE.md): the
    agent appends when it started (the wall clock, to line up with the client's
    times), when each request arrived and was answered, and its CPU time at the end;
    ``HSYNC_AGENT_PROFILE=FILE`` writes a cProfile of the agent's main thread."""

    def __init__(self, path: str | None, profile: str | None) -> None:
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115
        self.profile_path = profile
        self.profile: Any = None
        if profile:
            import cProfile

            self.profile = cProfile.Profile()
            self.profile.enable()
        self.mark(f"serving (pid {os.getpid()}, up {_uptime():.3f} s)")

    @classmethod
    def start(cls) -> _Timeline | None:
        path = os.environ.get("HSYNC_AGENT_TIMELINE")
        profile = os.environ.get("HSYNC_AGENT_PROFILE")
        return cls(path, profile) if path or profile else None

    def mark(self, what: str) -> None:
        if self.file is not None:
            self.file.write(f"{time.time():.4f} {what}\n")

    def end(self) -> None:
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(self.profile_path)
        t = os.times()
        self.mark(f"end (cpu {t.user:.3f} u {t.system:.3f} s; children "
                  f"{t.children_user:.3f} u {t.children_system:.3f} s)")
        if self.file is not None:
            self.file.close()


def _uptime() -> float:
    """Seconds since this process started (its interpreter's start-up included)."""
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return up - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _journal_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "hsync", "agent.journal.sqlite")


def _is_hex(s: str) -> bool:
    return bool(s) and all(c in "0123456789abcdef" for c in s)


def _same(now: Node, node: Node) -> bool:
    """``now`` (on the destination) is what an op was to make of ``node``."""
    if now.kind != node.kind:
        return False
    if node.kind == FILE:
        return (now.size, now.mtime_ns, now.mode) == (node.size, node.mtime_ns, node.mode)
    if node.kind == SYMLINK:
        return now.target == node.target
    return True


EVERYTHING = Keep(owner=True, group=True, acls=True,
                  xattrs=frozenset(("user", "trusted", "security")))
"""All the metadata a pair can ask to keep (``_keeps``)."""

LOCK_WAIT = 60.0
"""Seconds a new agent waits for the one before it to end (its batch's last files)."""

_LATER = object()
"""A handler's result when its answer is sent later (by a thread of its own)."""


def main(argv: Sequence[str]) -> int | None:
    """``hsync agent [--restrict ROOT]`` without the command line's parser (the start-up
    of every remote run waits for this one); None for anything else (``--help``, a
    mistake), which ``hsync.cli`` then answers."""
    restrict: str | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--restrict" and args:
            restrict = args.pop(0)
        elif arg.startswith("--restrict=") and len(arg) > len("--restrict="):
            restrict = arg[len("--restrict="):]
        else:
            return None
    return run_agent(restrict)


def _collect_rarely() -> None:
    """The cyclic collector run once per million objects kept (the command line's
    ``commands.start_process``: per 100,000), and the objects of the start-up (modules,
    functions, classes) set aside from it (``gc.freeze``). A batch's ops, nodes and
    content live until it is applied, a window of batches at a time: with the default
    thresholds each was examined again and again as more arrived, and a push of
    100,000 files cost the agent 0.66-1.02 s in about 1,000 collections, 7 of them
    full; 0.25-0.35 s in 6 at the command line's; none at these
    (``bench/agent_replay.py`` prints it). What the agent frees is freed as it goes
    (reference counts): the collector only finds cycles, which it hardly makes."""
    import gc

    gc.set_threshold(1_000_000, 50, 100)
    gc.freeze()


def run_agent(restrict: str | None = None) -> int:
    """Serve on stdin/stdout until the end of input, then end the process (exit status
    0); 2 (returned) for a ``--restrict`` that is not a directory."""
    if restrict is not None and not os.path.isdir(restrict):
        sys.stderr.write(f"hsync agent: {restrict}: --restrict needs a directory\n")
        return 2
    rfile = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    wfile = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    # nothing else may write to the protocol's stdout
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    framer = Framer(rfile, wfile, compress=True)
    _collect_rarely()
    Agent(framer, restrict).serve()
    # at once: the client's run waits for this process to end (the ssh session closes
    # with it); no teardown of the heap, no checkpoint of the journal's WAL at close
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":  # python3 -m hsync.remote.agent [--restrict ROOT]
    from hsync.remote.agent import main as _main

    sys.exit(_main(sys.argv[1:]) or 0)
