"""The directories a batch changed, and their metadata settled once it is done.

Creating, renaming or deleting a name changes its directory's mtime, and a directory
is created owner-writable until its children are in: each changed directory gets its
source mode and mtime back after the batch's ops, deepest first (a child's settling
would change its parent's mtime again). A move carries the marks below it to its new
place. A directory whose own metadata hsync did not change (only names in it changed,
or only its mtime differs from the source's) gets its mtime back and nothing else: no
owner, mode or attribute call that would change nothing. A directory made
owner-writable to let an op in (``unlocked_from``) gets its mode back even when it is
not a source directory (kept for its excluded content).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import partial

from ...errors import NodeError, TargetChanged, problem_kind
from ...model import DIR, Key, Node, Problem, Snapshot
from .meta import chown, set_xattrs
from .posix import open_beneath
from .workers import run_all

THREADS = 8
"""Directory mtimes set at once (each ``utime`` may wait on the disk's journal)."""
POOL_MIN = 32
"""Fewer directories than this are set on the calling thread (a pool costs more)."""


class Touched:
    """The directories changed so far, indexed by every prefix (so a move finds the
    marks below it without looking at the others)."""

    def __init__(self, prefixes: tuple[str, ...] = ()) -> None:
        self.prefixes = prefixes
        """The attribute namespaces the destination keeps."""
        self.keys: set[Key] = set()
        self.full: set[Key] = set()
        """The directories whose owner, mode and attributes are set too, not only their
        mtime: created here, updated from the source, or unlocked."""
        self.under: dict[Key, set[Key]] = {}
        self.unlocked: dict[Key, int] = {}  # made owner-writable: the mode it had

    def touch(self, key: Key | None) -> None:
        """``key``'s parent directory changed (its mtime is set again)."""
        if key:
            self.mark(key[:-1], full=False)

    def mark(self, key: Key, *, full: bool = True) -> None:
        """Directory ``key`` changed: its metadata is set from the source's (``full``:
        all of it, else only its mtime)."""
        if full:
            self.full.add(key)
        if key not in self.keys:
            self.keys.add(key)
            under = self.under
            for i in range(len(key) + 1):
                under.setdefault(key[:i], set()).add(key)

    def unlocked_from(self, key: Key, mode: int) -> None:
        """Directory ``key`` was made owner-writable; its mode was ``mode``."""
        self.mark(key)
        self.unlocked.setdefault(key, mode)

    def follow(self, old: Key, new: Key) -> None:
        """Changed directories at or below a moved one are now under its new key."""
        below = self.under.get(old)
        if not below:
            return
        n = len(old)
        for k in list(below):
            self.keys.discard(k)
            full = k in self.full
            self.full.discard(k)
            for i in range(len(k) + 1):
                self.under[k[:i]].discard(k)
            moved = (*new, *k[n:])
            self.mark(moved, full=full)
            if k in self.unlocked:
                self.unlocked[moved] = self.unlocked.pop(k)

    def settle(self, final: Snapshot, root_fd: Callable[[], int]) -> list[Problem]:
        """Set each changed directory's mode and mtime from ``final`` (the source),
        through a descriptor reached beneath the root (``root_fd``, opened when first
        needed); the problems met. The directories whose mtime alone is set go first,
        on a pool of threads when there are many (a ``utime`` waits on the disk's
        journal, not on Python; none changes another directory's mtime), then the
        others one by one, deepest first (a parent made read-only last)."""
        problems: list[Problem] = []
        nodes = final.nodes
        full: list[tuple[Key, Node | None]] = []
        mtimes: list[tuple[Key, int]] = []
        for key in self.keys:
            node = nodes.get(key)
            if node is None or node.kind != DIR:
                # not a source directory: only undo what an unlock did to it
                if key in self.unlocked:
                    full.append((key, None))
            elif key in self.full:
                full.append((key, node))
            else:
                mtimes.append((key, node.mtime_ns))
        if mtimes:
            rfd = root_fd()
            jobs = run_all([partial(_set_mtime, rfd, *item) for item in mtimes], THREADS,
                           "hsync-mtime", at_least=POOL_MIN)
            for (key, _), job in zip(mtimes, jobs, strict=True):
                try:
                    job.result()
                except (OSError, NodeError) as e:
                    problems += _problem(key, e)
        for key, node in sorted(full, key=lambda kn: len(kn[0]), reverse=True):
            if node is None:
                with contextlib.suppress(OSError, NodeError):
                    _set(root_fd(), key, self.unlocked[key], None)
                continue
            try:
                _set(root_fd(), key, node.mode, node.mtime_ns, node, self.prefixes)
            except (OSError, NodeError) as e:
                problems += _problem(key, e)
        return problems


def _problem(key: Key, e: BaseException) -> list[Problem]:
    """What a directory's metadata not set is (nothing when it moved on since: the op
    that moved it touched its new place)."""
    if isinstance(e, FileNotFoundError | NotADirectoryError):
        return []
    if isinstance(e, TargetChanged):
        return [Problem(key, f"directory metadata not set: {e}", kind=problem_kind(e))]
    if isinstance(e, OSError):
        return [Problem(key, f"cannot set directory metadata: {e.strerror}",
                        kind=problem_kind(e))]
    raise e


def _set(
    root_fd: int, key: Key, mode: int, mtime_ns: int | None, node: Node | None = None,
    prefixes: tuple[str, ...] = (),
) -> None:
    # through a descriptor that is this directory, not what a symlink names (only the
    # root may be a symlink the user gave us)
    fd = open_beneath(root_fd, key)
    try:
        if node is not None:  # the owner before the mode (chown clears set-id bits); a
            chown(fd, node.data)  # directory's set-gid bit only says what it hands down
        os.fchmod(fd, mode)
        if node is not None:
            set_xattrs(fd, node.data, prefixes)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _set_mtime(root_fd: int, key: Key, mtime_ns: int) -> None:
    """Only the mtime of directory ``key`` (reached beneath the root, as ``_set``)."""
    fd = open_beneath(root_fd, key)
    try:
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)
