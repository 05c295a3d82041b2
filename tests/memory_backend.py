"""An in-memory backend written only from the contract in ``hsync/backend.py``.

It is the proof that a third-party backend needs nothing beyond the documented
protocol: it imports only the contract's modules (``hsync.backend``, ``hsync.model``,
``hsync.errors``, ``hsync.cancel``, ``hsync.filters``) and has no public name that the
protocols do not declare.

Locations are ``mem://NAME``. The trees live in a module-level registry, so two opens of
one name (a source and a destination in one process, or a test's helper) see the same
tree. ``MemoryBackend`` is watchable (``Watchable``); ``MinimalBackend`` implements the
required ``Backend`` protocol and nothing else. Importing this module registers them
under the schemes ``mem`` and ``memmin``.

Tests change a tree "from outside" with ``mem_write``, ``mem_mkdir``, ``mem_symlink``,
``mem_remove`` and ``mem_rename`` (each notifies the watches of that tree), and read it
back with ``mem_tree``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from types import TracebackType
from typing import BinaryIO

import attrs

from hsync.backend import (
    ApplyOptions,
    ApplyResult,
    Capabilities,
    ContentSource,
    Credentials,
    Role,
    WatchSink,
    register_backend,
)
from hsync.cancel import NEVER, Cancel
from hsync.errors import CANCELLED, ERROR, RETRY, SKIP, BackendError
from hsync.filters import Exclude
from hsync.model import (
    CREATE,
    DELETE,
    DIR,
    FILE,
    MOVE,
    SYMLINK,
    UPDATE,
    Key,
    Node,
    Op,
    Problem,
    Snapshot,
)

# -- the trees -------------------------------------------------------------------------------
_ids = itertools.count(1)
_clock_lock = threading.Lock()
_last_ns = [0]


def _now_ns() -> int:
    """A wall clock that never repeats a value (two writes never share an mtime)."""
    with _clock_lock:
        _last_ns[0] = max(time.time_ns(), _last_ns[0] + 1)
        return _last_ns[0]


@attrs.define
class _Item:
    """One node of a memory tree (mutable: the tree is the store, a ``Node`` its view)."""

    kind: str
    mode: int = 0
    mtime_ns: int = 0
    content: bytes = b""
    target: str | None = None
    identity: int = attrs.field(factory=lambda: next(_ids))

    def node(self) -> Node:
        if self.kind == FILE:
            return Node(FILE, self.mode, len(self.content), self.mtime_ns, None, self.identity)
        if self.kind == DIR:
            return Node(DIR, self.mode, 0, self.mtime_ns, None, self.identity)
        return Node(SYMLINK, 0, 0, 0, self.target, self.identity)


class _Tree:
    """One named tree: key -> item (the root is ``()``, absent until made), and the
    queues of the watches running on it."""

    def __init__(self) -> None:
        self.items: dict[Key, _Item] = {}
        self.lock = threading.RLock()
        self.watches: list[_MemWatch] = []

    # every change goes through these, which notify the watches
    def notify(self, key: Key, *, deep: bool = True) -> None:
        for w in list(self.watches):
            w.events.put((key, deep))

    def children(self, key: Key) -> list[Key]:
        n = len(key)
        return sorted(k for k in self.items if len(k) == n + 1 and k[:n] == key)

    def below(self, key: Key) -> list[Key]:
        """``key`` and its descendants, parents first."""
        n = len(key)
        return sorted((k for k in self.items if k[:n] == key), key=len)

    def touch_parent(self, key: Key) -> None:
        """A name came or went in ``key``'s parent: its mtime changes (a filesystem's)."""
        if key:
            up = self.items.get(key[:-1])
            if up is not None:
                up.mtime_ns = _now_ns()
                self.notify(key[:-1], deep=False)

    def put(self, key: Key, item: _Item) -> None:
        self.items[key] = item
        self.touch_parent(key)
        self.notify(key)

    def remove(self, key: Key) -> None:
        for k in self.below(key):
            del self.items[k]
        self.touch_parent(key)
        self.notify(key)

    def move(self, old: Key, new: Key) -> None:
        n = len(old)
        for k in self.below(old):
            self.items[(*new, *k[n:])] = self.items.pop(k)
        self.touch_parent(old)
        self.touch_parent(new)
        self.notify(old)
        self.notify(new)

    def parent_is_dir(self, key: Key) -> bool:
        up = self.items.get(key[:-1])
        return up is not None and up.kind == DIR


_TREES: dict[str, _Tree] = {}
_OPTIONS = ApplyOptions()
_TREES_LOCK = threading.Lock()


def _tree(name: str) -> _Tree:
    with _TREES_LOCK:
        tree = _TREES.get(name)
        if tree is None:
            tree = _TREES[name] = _Tree()
        return tree


def _key(path: str | Key) -> Key:
    if isinstance(path, tuple):
        return path
    return tuple(p for p in path.split("/") if p)


def _ensure_dirs(tree: _Tree, key: Key) -> None:
    for i in range(len(key) + 1):
        k = key[:i]
        item = tree.items.get(k)
        if item is None:
            tree.put(k, _Item(DIR, 0o755, _now_ns()))
        elif item.kind != DIR:
            raise NotADirectoryError("/".join(k))


# -- what tests use to change and read a tree from outside -----------------------------------
def mem_reset() -> None:
    """Forget every tree (watches still running keep their own tree object)."""
    with _TREES_LOCK:
        _TREES.clear()


def mem_mkdir(name: str, path: str | Key = ()) -> None:
    """Make the directory ``path`` of tree ``name`` and its missing parents (``()``: the
    root)."""
    tree = _tree(name)
    with tree.lock:
        _ensure_dirs(tree, _key(path))


def mem_write(name: str, path: str | Key, content: bytes | str, *, mode: int = 0o644) -> None:
    """Write a file (its parents made as needed); an existing file keeps its identity."""
    tree, key = _tree(name), _key(path)
    data = content.encode() if isinstance(content, str) else content
    with tree.lock:
        _ensure_dirs(tree, key[:-1])
        item = tree.items.get(key)
        if item is not None and item.kind == FILE:
            item.content, item.mtime_ns, item.mode = data, _now_ns(), mode
            tree.notify(key, deep=False)
        else:
            if item is not None:
                tree.remove(key)
            tree.put(key, _Item(FILE, mode, _now_ns(), data))


def mem_symlink(name: str, path: str | Key, target: str) -> None:
    tree, key = _tree(name), _key(path)
    with tree.lock:
        _ensure_dirs(tree, key[:-1])
        if key in tree.items:
            tree.remove(key)
        tree.put(key, _Item(SYMLINK, target=target))


def mem_remove(name: str, path: str | Key) -> None:
    """Remove ``path`` and everything below it (``()``: the whole tree)."""
    tree, key = _tree(name), _key(path)
    with tree.lock:
        if key in tree.items:
            tree.remove(key)


def mem_rename(name: str, old: str | Key, new: str | Key) -> None:
    """Move ``old`` with its subtree to ``new`` (replacing what is there), keeping every
    identity; ``new``'s parents are made as needed."""
    tree, o, n = _tree(name), _key(old), _key(new)
    with tree.lock:
        if o not in tree.items:
            raise FileNotFoundError("/".join(o))
        _ensure_dirs(tree, n[:-1])
        if n in tree.items:
            tree.remove(n)
        tree.move(o, n)


def mem_tree(name: str) -> dict[str, bytes | str | None]:
    """The tree ``name`` below its root: path -> content (a file's bytes), target (a
    symlink's str) or None (a directory)."""
    tree = _tree(name)
    with tree.lock:
        out: dict[str, bytes | str | None] = {}
        for k, item in sorted(tree.items.items()):
            if k:
                out["/".join(k)] = (
                    item.content if item.kind == FILE else item.target if item.kind == SYMLINK
                    else None
                )
        return out


def mem_node(name: str, path: str | Key) -> Node | None:
    """The node at ``path`` (with its identity), or None."""
    tree = _tree(name)
    with tree.lock:
        item = tree.items.get(_key(path))
        return item.node() if item is not None else None


# -- the backend -------------------------------------------------------------------------------
class _Mismatch(Exception):
    """The destination does not hold what the op expected (a ``skip``)."""


class _Retry(Exception):
    """The source changed while it was read (a ``retry``)."""


class MinimalBackend:
    """The required ``Backend`` protocol on a memory tree, and nothing else."""

    def __init__(
        self,
        location: str,
        *,
        role: Role,
        credentials: Credentials | None = None,
        exclude_attrs: tuple[str, ...] = (),
    ) -> None:
        scheme, sep, rest = location.partition("://")
        name = rest.strip("/")
        if not sep or not name or "/" in name:
            raise BackendError(f"{location}: expected {scheme or 'mem'}://NAME")
        self.url = location
        self.capabilities = Capabilities()
        self._scheme = scheme.lower()
        self._name = name
        self._role = role
        self._tree = _tree(name)
        self._closed = False

    def canonical_url(self) -> str:
        return f"{self._scheme}://{self._name}"

    def root_error(self) -> str | None:
        with self._tree.lock:
            if () in self._tree.items or self._role == "destination":
                return None  # an absent destination root is created by the first batch
            return "does not exist"

    def root_id(self) -> Hashable | None:
        with self._tree.lock:
            root = self._tree.items.get(())
            return None if root is None else root.identity

    def is_empty(self) -> bool:
        with self._tree.lock:
            return not any(self._tree.items.keys() - {()})

    def scan(
        self, subtree: Key = (), *, exclude: Exclude | None = None, cancel: Cancel = NEVER
    ) -> Snapshot:
        tree = self._tree
        nodes: dict[Key, Node] = {}
        snap = Snapshot(nodes=nodes)
        with tree.lock:
            top = tree.items.get(subtree)
            if top is None or (subtree and not self._reachable(subtree)):
                return snap
            nodes[subtree] = top.node()
            if top.kind != DIR:
                return snap
            stack = [subtree]
            while stack:
                cancel.check()  # once per directory
                key = stack.pop()
                for k in tree.children(key):
                    item = tree.items[k]
                    if exclude is not None and exclude(k, item.kind == DIR):
                        snap.holds_excluded.add(key)
                        continue
                    nodes[k] = item.node()
                    if item.kind == DIR:
                        stack.append(k)
        return snap

    def _reachable(self, key: Key) -> bool:
        """Every ancestor of ``key`` is a directory."""
        return all(
            (a := self._tree.items.get(key[:i])) is not None and a.kind == DIR
            for i in range(len(key))
        )

    def stat(self, key: Key) -> Node | None:
        with self._tree.lock:
            item = self._tree.items.get(key)
            if item is None or not self._reachable(key):
                return None
            return item.node()

    def read(self, key: Key) -> BinaryIO:
        with self._tree.lock:
            item = self._tree.items.get(key)
            if item is None:
                raise FileNotFoundError(f"{self.url}: {'/'.join(key)}: no such file")
            if item.kind != FILE:
                raise IsADirectoryError(f"{self.url}: {'/'.join(key)}: not a file")
            return io.BytesIO(item.content)

    def digest(self, key: Key) -> bytes | None:
        with self._tree.lock:
            item = self._tree.items.get(key)
            if item is None or item.kind != FILE:
                return None
            return hashlib.sha256(item.content).digest()

    def apply_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = _OPTIONS,
        cancel: Cancel = NEVER,
        on_done: Callable[[Op], None] | None = None,
    ) -> ApplyResult:
        if self._role != "destination":
            raise BackendError(f"{self.url}: opened as a {self._role}: nothing is written to it")
        result = ApplyResult()
        touched: set[Key] = set()
        for i, op in enumerate(ops):
            if cancel.cancelled():
                for rest in ops[i:]:
                    result.problems.append(
                        Problem(rest.key, "not run: cancelled", op=rest.op, kind=CANCELLED)
                    )
                break
            try:
                with self._tree.lock:
                    result.bytes_copied += self._one(op, source, touched)
            except _Mismatch as e:
                result.problems.append(Problem(op.key, str(e), op=op.op, kind=SKIP))
                continue
            except _Retry as e:
                result.problems.append(Problem(op.key, str(e), op=op.op, kind=RETRY))
                continue
            except (OSError, ValueError) as e:
                result.problems.append(Problem(op.key, str(e), op=op.op, kind=ERROR))
                continue
            result.done.append(op)
            if on_done is not None:
                on_done(op)
        self._settle(touched, final)
        return result

    # -- one op (under the tree's lock); returns the content bytes written
    def _one(self, op: Op, source: ContentSource, touched: set[Key]) -> int:
        tree, key = self._tree, op.key
        if op.kind not in (DIR, FILE, SYMLINK):
            raise ValueError(f"a memory tree holds no {op.kind}")
        if op.op == CREATE:
            assert op.node is not None
            have = tree.items.get(key)
            if have is not None:
                if op.kind == DIR and have.kind == DIR:  # made already (a resumed batch)
                    touched.add(key)
                    return 0
                raise _Mismatch(f"{'/'.join(key)} appeared on the destination")
            if key and not tree.parent_is_dir(key):
                raise FileNotFoundError(f"{'/'.join(key)}: no parent directory")
            item, n = self._make(op, source)
            tree.put(key, item)
            touched.add(key[:-1])
            if op.kind == DIR:
                touched.add(key)
            return n
        if op.op == UPDATE:
            assert op.node is not None
            have = self._expect(key, op.old, op.kind)
            if op.kind == DIR:
                have.mode, have.mtime_ns = op.node.mode, op.node.mtime_ns
                touched.add(key)
                tree.notify(key, deep=False)
                return 0
            n = 0
            if op.kind == FILE:
                if op.content:
                    fresh, n = self._make(op, source)
                    have.content = fresh.content
                have.mode, have.mtime_ns = op.node.mode, op.node.mtime_ns
            else:
                have.target = op.node.target
            tree.notify(key, deep=False)
            return n
        if op.op == MOVE:
            assert op.to is not None
            to = op.to
            self._expect(key, op.old, op.kind)
            if to[: len(key)] == key:
                raise ValueError(f"cannot move {'/'.join(key)} into itself")
            if to in tree.items:
                raise _Mismatch(f"{'/'.join(to)} appeared on the destination")
            if not tree.parent_is_dir(to):
                raise FileNotFoundError(f"{'/'.join(to)}: no parent directory")
            tree.move(key, to)
            n = len(key)
            for k in [t for t in touched if t[:n] == key]:
                touched.discard(k)
                touched.add((*to, *k[n:]))
            touched.update((key[:-1], to[:-1]))
            return 0
        if op.op == DELETE:
            self._expect(key, op.old, op.kind)
            if tree.children(key):
                raise OSError(f"{'/'.join(key)}: directory not empty")
            tree.remove(key)
            touched.add(key[:-1])
            return 0
        raise ValueError(f"unknown op {op.op!r}")

    def _make(self, op: Op, source: ContentSource) -> tuple[_Item, int]:
        node = op.node
        assert node is not None
        if op.kind == DIR:
            return _Item(DIR, 0o700, _now_ns()), 0  # its metadata is set once settled
        if op.kind == SYMLINK:
            return _Item(SYMLINK, target=node.target), 0
        with source.read(op.key) as f:
            data = f.read()
        if len(data) != node.size:
            raise _Retry(f"{'/'.join(op.key)} changed on the source while it was read")
        return _Item(FILE, node.mode, node.mtime_ns, data), len(data)

    def _expect(self, key: Key, old: Node | None, kind: str) -> _Item:
        """Before a destructive op: the destination holds what the plan expected."""
        have = self._tree.items.get(key)
        if have is None:
            raise _Mismatch(f"{'/'.join(key)} vanished from the destination")
        want = old.kind if old is not None else kind
        if have.kind != want:
            raise _Mismatch(f"{'/'.join(key)} is no longer a {want}")
        if old is not None and have.kind != DIR:
            now = have.node()
            if (now.size, now.mtime_ns, now.target) != (old.size, old.mtime_ns, old.target):
                raise _Mismatch(f"{'/'.join(key)} changed since it was scanned")
        return have

    def _settle(self, touched: set[Key], final: Snapshot) -> None:
        """Directories whose children changed get their metadata from ``final``."""
        with self._tree.lock:
            for key in sorted(touched, key=len, reverse=True):
                node = final.nodes.get(key)
                item = self._tree.items.get(key)
                if node is None or node.kind != DIR or item is None or item.kind != DIR:
                    continue
                item.mode, item.mtime_ns = node.mode, node.mtime_ns

    def close(self) -> None:
        self._closed = True


class MemoryBackend(MinimalBackend):
    """A memory tree that is also ``Watchable``."""

    def watch(self, sink: WatchSink) -> _MemWatch:
        return _MemWatch(self._tree, sink)


class _MemWatch:
    """A running watch: every change of the tree is queued, and the watch's own thread
    hands it to the sink (``WatchSink``: called from the watch's threads)."""

    def __init__(self, tree: _Tree, sink: WatchSink) -> None:
        self._tree = tree
        self._sink = sink
        self.events: queue.Queue[tuple[Key, bool] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __enter__(self) -> _MemWatch:
        with self._tree.lock:
            self._tree.watches.append(self)
        self._thread = threading.Thread(target=self._run, name="mem-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._tree.lock:
            if self in self._tree.watches:
                self._tree.watches.remove(self)
        self._stopped = True
        self.events.put(None)
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while (event := self.events.get()) is not None:
            key, deep = event
            self._sink.dirty(key, deep=deep)

    @property
    def alive(self) -> bool:
        if self._stopped or self._thread is None or not self._thread.is_alive():
            return False
        with self._tree.lock:
            return () in self._tree.items  # the root gone: the watch is dead

    @property
    def resumed(self) -> bool:
        return False

    def checkpoint(self) -> bytes | None:
        return None


register_backend("mem", MemoryBackend)
register_backend("memmin", MinimalBackend)
