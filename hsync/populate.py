"""The initial copy into an empty destination: the source's walk streamed into batches
of creates, parents first, the history recorded batch by batch.

``sync_once`` and ``hsync watch`` (``PairWatch``) both use it when the destination is
empty: nothing there can be moved, updated or deleted, so no diff and no plan of the
whole tree are needed, memory stays at a few batches instead of two snapshots of the
tree, and the destination is written while the source is still being read (the walk
runs in a thread, ``AHEAD`` chunks ahead of the writer).

Every batch goes through the caller's ``run`` (the journaled ``run_batch``), then its
nodes are recorded in the history (the rows a full record of the same sync would
write). The root is created first when the destination's is missing, and updated last
when its payload differs (the one op a diff would find besides the creates).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import ChainMap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from .backend import ApplyResult, Backend
from .errors import SafetyError
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

Exclude = Callable[[Key, bool], bool]
BATCH_BYTES = 64 << 20
"""Bytes of content per batch at most (by default)."""
CHUNK = 256
"""Nodes handed from the walking thread to the writer at a time."""
AHEAD = 64
"""Chunks the walk may run ahead of the writer."""


@attrs.define
class Populated:
    """What a streamed initial copy did."""

    counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)
    )
    planned: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)
    )
    """The ops sent (done or not): what a plan would have held."""
    bytes_copied: int = 0
    problems: list[Problem] = attrs.field(factory=list)
    done: list[Op] = attrs.field(factory=list)
    """The first ``keep`` ops done (callers that show them)."""
    complete: bool = True
    """False when a stop request ended the copy before the walk did."""
    skipped: list[tuple[Key, str]] = attrs.field(factory=list)
    """Special files left out (``Snapshot.skipped``)."""
    seen: dict[str, int] = attrs.field(factory=lambda: {"source": 0, "destination": 0})
    """Nodes seen on each side (the roots included)."""


def can_populate(source: Backend, destination: Backend) -> bool:
    """True when the copy can be streamed: the destination says it is empty and the
    source can walk itself parents first without a snapshot of the tree."""
    if getattr(source, "stream", None) is None and getattr(source, "walk_sorted", None) is None:
        return False
    return bool(getattr(destination, "is_empty", lambda: False)())


def walk(
    source: Backend, exclude: Exclude | None, skipped: list[tuple[Key, str]]
) -> Iterator[tuple[Key, Node | None]]:
    """The source's nodes below the root, parents before children, as ``(key, node)``;
    ``(key, None)`` for a container whose listing failed (nothing below it is known).
    Special files left out are appended to ``skipped``."""
    stream = getattr(source, "stream", None)
    if stream is not None:
        yield from stream(exclude)
        return
    for key, row in source.walk_sorted(exclude, skipped):  # type: ignore[attr-defined]
        yield key, (None if row is None else Node(*row))


def populate(
    source: Backend,
    destination: Backend,
    *,
    exclude: Exclude | None,
    run: Callable[[Sequence[Op], Snapshot, Callable[[ApplyResult], None]], ApplyResult],
    history: Any = None,
    batch_ops: int = 1000,
    batch_bytes: int = BATCH_BYTES,
    min_batch: int = 1,
    stopping: Callable[[], bool] = lambda: False,
    on_batch: Callable[[ApplyResult], None] | None = None,
    keep: int = 10_000,
    ahead: bool | None = None,
) -> Populated:
    """Copy the source into the empty destination, a batch at a time.

    A batch is sent when it holds ``batch_ops`` ops (or ``batch_bytes`` of content), or
    ``min_batch`` ops while the walk has nothing more ready (the writer does not wait
    for a full batch). ``ahead``: walk in a thread (default: for a source that streams
    itself, whose reads wait on a server; a filesystem walk stays on this thread, so
    that the applier may still fork copy workers). Raises ``SafetyError`` when the
    source root is gone or cannot be listed (nothing is written then)."""
    out = Populated()
    root = source.stat(())
    if root is None:
        raise SafetyError(f"{source.url}: source root is gone; nothing done")
    dst_root = destination.stat(())
    out.seen = {"source": 1, "destination": 0 if dst_root is None else 1}
    dirs: dict[Key, Node] = {(): root}  # containers seen (a batch's final snapshot)
    batch: dict[Key, Node] = {}
    fps: dict[Key, str] = {}  # entries' fingerprints, computed by the walking thread
    ops: list[Op] = []
    if dst_root is None:
        batch[()] = root
        ops.append(Op(op=CREATE, kind=root.kind, key=(), node=root))
    size = 0

    def flush() -> None:
        nonlocal ops, batch, fps
        final = Snapshot(nodes=ChainMap(batch, dirs))
        for op in ops:
            out.planned[op.op] += 1
        def record(result: ApplyResult) -> None:  # while the batch is flushed
            if history is not None:
                failed = {p.key for p in result.problems}
                history.record(final, [k for k in (*batch, ()) if k not in failed],
                               fingerprints=fps)

        result = run(ops, final, record)
        out.problems.extend(result.problems)
        out.bytes_copied += result.bytes_copied
        for op in result.done:
            out.counts[op.op] += 0 if op.temporary else 1
        if len(out.done) < keep:
            out.done.extend(result.done[: keep - len(out.done)])
        if on_batch is not None:
            on_batch(result)
        ops, batch, fps = [], {}, {}

    if ahead is None:
        ahead = getattr(source, "stream", None) is not None
    nodes_of = _Ahead if ahead else _Inline
    with nodes_of(_fingerprinted(walk(source, exclude, out.skipped))) as nodes:
        for key, node, fp in nodes:
            if node is None:
                if not key and not out.planned[CREATE] and not out.done:
                    raise SafetyError(f"{source.url}: source cannot be listed; nothing done")
                out.problems.append(Problem(key, f"not synced: {_why(source, key)}", retry=True))
                continue
            batch[key] = node
            out.seen["source"] += 1
            if fp is not None:
                fps[key] = fp
            if node.kind == DIR:  # its metadata is set from ``final`` in later batches
                dirs[key] = node
            ops.append(Op(op=CREATE, kind=node.kind, key=key, node=node))
            size += node.size
            if len(ops) >= batch_ops or size >= batch_bytes or (
                len(ops) >= min_batch and not nodes.ready()
            ):
                size = 0
                flush()
                if stopping():
                    out.complete = False
                    break
    if out.complete and dst_root is not None and dst_root != root:
        # the root's own payload (an LDAP base entry's attributes, a directory's mode
        # and mtime), once its children are in: what a diff would update
        ops.append(Op(op=UPDATE, kind=root.kind, key=(), node=root, old=dst_root))
    if ops or not (out.planned[CREATE] or out.planned[UPDATE]):
        flush()  # one batch even when empty: it cleans up, and records the root
    return out


def _fingerprinted(
    it: Iterator[tuple[Key, Node | None]],
) -> Iterator[tuple[Key, Node | None, str | None]]:
    """The walk with each entry's fingerprint (the history's), computed on the walking
    thread while the writer waits for the destination."""
    for key, node in it:
        fp = fingerprint(node.data) if node is not None and node.kind == ENTRY else None
        yield key, node, fp


def _why(source: Backend, key: Key) -> str:
    """Why ``key`` could not be listed, as a scan says it (one listing, of that key)."""
    if key:
        try:
            why = source.scan(key).incomplete.get(key)
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
        close = getattr(self.it, "close", None)
        if close is not None:
            close()

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
            close = getattr(self.it, "close", None)
            if close is not None:
                close()

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
