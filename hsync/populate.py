"""The initial copy into an empty destination: the source's walk streamed into batches
of creates, parents first, the history recorded batch by batch.

``sync`` and a watch both use it when the destination is empty and the source can
stream itself (``Streaming``): nothing there can be moved, updated or deleted, so no
diff and no plan of the whole tree are needed, memory stays at a few batches instead
of two snapshots of the tree, and the destination is written while the source is still
being read (a source that waits on a server is read in a thread, ``AHEAD`` chunks ahead
of the writer).

Every batch goes through ``hsync.apply.start_batch``/``finish_batch`` (journaled; a
remote destination keeps a window of them in flight), and its nodes are
recorded in the history while its flush runs (the rows a full record of the same sync
would write). The root is created first when the destination's is missing, and updated last
when its payload differs (the one op a diff would find besides the creates).
A node whose parent's create failed is one problem and is not sent (within a batch the
destination skips it itself; across batches this module does).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import ChainMap, deque
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from .apply import (
    Applied,
    Batching,
    Started,
    Stream,
    batching_for,
    finish_batch,
    start_batch,
    window,
)
from .backend import ApplyResult, KeepsWorkers, Streaming
from .cancel import NEVER, Cancel
from .errors import SafetyError
from .filters import Exclude
from .model import (
    CREATE,
    DELETE,
    DIR,
    ENTRY,
    MOVE,
    UPDATE,
    Key,
    Node,
    Op,
    Problem,
    Snapshot,
    fingerprint,
)
from .session import PairSession

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from .backend import Endpoint

CHUNK = 256
"""Nodes handed from the walking thread to the writer at a time."""
AHEAD = 64
"""Chunks the walk may run ahead of the writer."""
PREFILL = 2048
"""Ops walked before a batch into a local destination starts; a tree that has more is
streamed into the batch as it is walked (``Stream``)."""


@attrs.define
class Populated(Applied):
    """What a streamed initial copy did (``Applied``, and more)."""

    planned: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)
    )
    """The ops sent (done or not): what a plan would have held."""
    complete: bool = True
    """False when a cancel ended the copy before the walk did."""
    skipped: list[tuple[Key, str]] = attrs.field(factory=list)
    """Special files left out (``Snapshot.skipped``)."""
    seen: dict[str, int] = attrs.field(factory=lambda: {"source": 0, "destination": 0})
    """Nodes seen on each side (the roots included)."""


def can_populate(session: PairSession) -> bool:
    """True when the copy can be streamed: the source streams itself and the
    destination says it is empty."""
    return (
        session.source.features.streaming is not None
        and session.destination.backend.is_empty()
    )


def streamed(session: PairSession) -> bool:
    """True when a batch of ``populate`` takes the walk's ops as they are found
    (``Stream``): a walk on this thread (not a source that waits on a server) into a
    local destination that takes a stream (not a window of batches in flight)."""
    return (not session.source.capabilities.waits and window(session) == 1
            and session.destination.capabilities.streamed_ops)


def walk(
    source: Streaming, exclude: Exclude | None, skipped: list[tuple[Key, str]], cancel: Cancel
) -> Iterator[tuple[Key, Node | None]]:
    """The source's nodes below the root, parents before children, as ``(key, node)``;
    ``(key, None)`` for a container whose listing failed (nothing below it is known).
    Special files left out are appended to ``skipped``."""
    for key, item in source.stream(exclude, cancel=cancel):
        if isinstance(item, str):
            skipped.append((key, item))
        else:
            yield key, item


def populate(
    session: PairSession,
    *,
    batching: Batching,
    cancel: Cancel = NEVER,
    on_batch: Callable[[ApplyResult], None] | None = None,
    on_done: Callable[[Op], None] | None = None,
    keep: int = 10_000,
    early: Executor | None = None,
    bounded: bool = False,
    prefill: int = PREFILL,
) -> Populated:
    """Copy the source into the empty destination, a batch at a time.

    A batch is sent when it holds ``batching.max_ops`` ops (or ``max_bytes`` of
    content), or ``min_ops`` ops while the walk has nothing more ready (the writer does
    not wait for a full batch). A source that waits on a server is walked in a thread;
    a filesystem walk stays on this thread (the applier may then fork copy workers).
    ``cancel`` is checked after each batch (and by the walk). ``keep``: how many of the
    ops done are kept in ``Populated.done``. Raises ``SafetyError`` when the source root
    is gone or cannot be listed (nothing is written then). ``prefill``: the ops walked
    before a batch into a local destination is streamed (``Stream``; they are all
    applied, even after a stop).

    A destination that can keeps one pool of copy workers over all the batches
    (``KeepsWorkers``: processes, not threads, for a copy cut into many batches that
    each hold too few files to earn a pool of their own); ``early``: workers started
    before any other thread ran (``copy.forked_early``), for a caller whose threads run
    by now (a watch); ``bounded``: few copies queued and not yet done at a time (what a
    stop waits for). Its workers end when the copy does."""
    backend = session.destination.backend
    kept = (backend.keep_workers(early, bounded) if isinstance(backend, KeepsWorkers)
            else contextlib.nullcontext())
    with kept:
        return _populate(session, batching=batching, cancel=cancel, on_batch=on_batch,
                         on_done=on_done, keep=keep, prefill=prefill)


def _populate(
    session: PairSession,
    *,
    batching: Batching,
    cancel: Cancel,
    on_batch: Callable[[ApplyResult], None] | None,
    on_done: Callable[[Op], None] | None,
    keep: int,
    prefill: int,
) -> Populated:
    """``populate`` within the kept workers' block."""
    source, destination, history = session.source, session.destination, session.history
    batching = batching_for(session, batching)
    streaming = source.features.streaming
    assert streaming is not None, "can_populate() first"
    out = Populated()
    root = source.backend.stat(())
    if root is None:
        raise SafetyError(f"{source.url}: source root is gone; nothing done")
    dst_root = destination.backend.stat(())
    out.seen = {"source": 1, "destination": 0 if dst_root is None else 1}
    # none of the pair's nodes recorded: the batches' rows are all this run's own
    fresh = history is not None and not history.has_rows()
    dirs: dict[Key, Node] = {(): root}  # containers seen (a batch's final snapshot)
    batch: dict[Key, Node] = {}
    fps: dict[Key, str] = {}  # entries' fingerprints, computed by the walking thread
    ops: list[Op] = []
    if dst_root is None:
        batch[()] = root
        ops.append(Op(op=CREATE, kind=root.kind, key=(), node=root))
    size = 0
    kept: list[Op] = []
    failed: dict[Key, str] = {}  # creates that failed in a batch -> the problem's kind

    width = window(session)
    flying: deque[tuple[Started, Callable[[ApplyResult], None]]] = deque()

    def finish_oldest() -> None:
        started, record = flying.popleft()
        result = finish_batch(session, started, while_flushing=record)
        out.problems.extend(result.problems)
        failed.update((p.key, p.kind) for p in result.problems if p.op == CREATE)
        out.warnings.extend(result.warnings)
        out.bytes_copied += result.bytes_copied
        for op in result.done:
            out.counts[op.op] += 0 if op.temporary else 1
        if len(kept) < keep:  # not every op: a copy of millions keeps few
            kept.extend(result.done[: keep - len(kept)])
        if on_batch is not None:
            on_batch(result)

    def flush(stream: Stream | None = None, *, last: bool = False) -> None:
        """Start the batch gathered (``stream``: the batch whose ops are still being
        walked, ``ops`` the start of it); a remote destination keeps ``width`` of them in
        flight (their results are taken in order), a local one finishes it now."""
        nonlocal ops, batch, fps
        final = Snapshot(nodes=ChainMap(batch, dirs))
        its_batch, its_fps = batch, fps

        def record(result: ApplyResult) -> None:  # while the batch is flushed
            if history is not None:
                failed = {p.key for p in result.problems}
                # the batch's nodes and the root's, in a dict: a ChainMap's lookups
                # are Python's (0.2 s of recording a copy of 100,000 files)
                nodes = dict(its_batch)
                if (root := final.nodes.get(())) is not None:
                    nodes[()] = root
                history.record(Snapshot(nodes=nodes),
                               [k for k in nodes if k not in failed], fingerprints=its_fps,
                               fresh=fresh)

        started = start_batch(session, ops if stream is None else stream, final,
                              on_done=on_done, defer=True)
        for op in ops:  # a stream's ops are in ``ops`` once it was walked
            out.planned[op.op] += 1
        flying.append((started, record))
        ops, batch, fps = [], {}, {}
        while len(flying) >= width or (last and flying):
            finish_oldest()

    nodes_of = _Ahead if source.capabilities.waits else _Inline
    walked = walk(streaming, session.exclude, out.skipped, cancel)
    # a walk on this thread into a local destination: each batch takes its ops as the
    # walk finds them (``Stream``), so the copies start before the walk ends
    streams = streamed(session)
    with nodes_of(_fingerprinted(walked)) as nodes:
        pending = iter(nodes)

        def take() -> Op | None:
            """The next op of the walk (its node added to the batch), None at its end."""
            nonlocal size
            for key, node, fp in pending:
                if node is None:
                    if not key and not out.planned[CREATE] and not kept:
                        raise SafetyError(f"{source.url}: source cannot be listed; nothing done")
                    out.problems.append(Problem(key, f"not synced: {_why(source, key)}",
                                                kind="retry"))
                    continue
                out.seen["source"] += 1
                kind = failed.get(key[:-1])
                if kind is not None:
                    # its parent's create failed in an earlier batch (within a batch the
                    # destination skips them itself): one problem each, nothing sent
                    failed[key] = kind
                    out.planned[CREATE] += 1
                    out.problems.append(Problem(
                        key, f"create skipped: its parent {'/'.join(key[:-1])} was not created",
                        op=CREATE, kind=kind))
                    continue
                batch[key] = node
                if fp is not None:
                    fps[key] = fp
                if node.kind == DIR:  # its metadata is set from ``final`` in later batches
                    dirs[key] = node
                size += node.size
                return Op(op=CREATE, kind=node.kind, key=key, node=node)
            return None

        def full() -> bool:
            return len(ops) >= batching.max_ops or size >= batching.max_bytes

        def more() -> Op | None:
            """The next op of a streamed batch; None at the walk's end or the batch's
            limits."""
            if full():
                return None
            op = take()
            if op is None:
                walk_ended[0] = True
            return op

        walk_ended = [False]
        while not walk_ended[0]:
            op = take()
            if op is None:
                break
            ops.append(op)
            if streams and len(ops) >= prefill and not full():
                # as many ops as a small tree has: a larger one is streamed into this
                # batch (and its copies may go to worker processes)
                stream = Stream(ops, more)
                flush(stream)
                if stream.error is not None:
                    raise stream.error
                size = 0
            elif full() or (len(ops) >= batching.min_ops and not nodes.ready()):
                size = 0
                flush()
            else:
                continue
            if cancel.cancelled():
                while flying:
                    finish_oldest()
                out.complete = False
                break
    if out.complete and dst_root is not None and dst_root != root:
        # the root's own payload (an LDAP base entry's attributes, a directory's mode
        # and mtime), once its children are in: what a diff would update
        ops.append(Op(op=UPDATE, kind=root.kind, key=(), node=root, old=dst_root))
    if ops or not (out.planned[CREATE] or out.planned[UPDATE]):
        flush(last=True)  # one batch even when empty: it cleans up, and records the root
    while flying:
        finish_oldest()
    out.done = kept
    return out


def _fingerprinted(
    it: Iterator[tuple[Key, Node | None]],
) -> Iterator[tuple[Key, Node | None, str | None]]:
    """The walk with each entry's fingerprint (the history's), computed on the walking
    thread while the writer waits for the destination."""
    for key, node in it:
        fp = fingerprint(node.data) if node is not None and node.kind == ENTRY else None
        yield key, node, fp


def _why(source: Endpoint, key: Key) -> str:
    """Why ``key`` could not be listed, as a scan says it (one listing, of that key)."""
    if key:
        try:
            why = source.backend.scan(key).incomplete.get(key)
        except OSError as e:
            why = e.strerror
        if why:
            return why
    return "cannot be listed"


class _Inline:
    """``_Ahead``'s interface without a thread: the walk runs as the writer asks."""

    def __init__(self, it: Iterator[Any]) -> None:
        self.it = it

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.it, Generator):
            self.it.close()

    def ready(self) -> bool:
        return True  # the next node is one step away: batches fill up

    def __iter__(self) -> Iterator[Any]:
        return iter(self.it)


class _Ahead:
    """Runs an iterator in a thread, up to ``AHEAD`` chunks ahead of its consumer (a
    context manager: leaving it stops and joins the thread). An exception raised by the
    iterator is raised in the consumer, in order."""

    _END = object()

    def __init__(self, it: Iterator[Any]) -> None:
        self.it = it
        self.q: queue.Queue[Any] = queue.Queue(AHEAD)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hsync-walk", daemon=True)
        self._left = 0  # nodes of the chunk being consumed not yet handed out

    def __enter__(self) -> _Ahead:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        while self.thread.is_alive():  # unblock a put, then wait for the thread
            with contextlib.suppress(queue.Empty):
                self.q.get(timeout=0.05)
        self.thread.join()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        chunk: list[Any] = []
        try:
            for item in self.it:
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    if not self._put(chunk):
                        return
                    chunk = []
            if chunk and not self._put(chunk):
                return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, raised there
            if chunk:
                self._put(chunk)
            self._put(e)
        finally:
            if isinstance(self.it, Generator):
                self.it.close()

    def ready(self) -> bool:
        """True when the walk has more nodes waiting (the writer need not wait)."""
        return self._left > 0 or not self.q.empty()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            self._left = len(item)
            for x in item:
                self._left -= 1
                yield x

