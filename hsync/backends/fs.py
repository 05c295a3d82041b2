"""The filesystem backend: a directory tree on a POSIX filesystem.

Scan: ``os.scandir`` + lstat, never following a symlink below the root. Names are
``str`` with surrogate escapes, so a name that is not UTF-8 survives.

Apply: file content is written to a temporary name in the target directory (recognisable
by ``TMP_PREFIX``) and renamed over the final name; a source file that changes while it
is copied is not published. Copies run on a thread pool (``copy_file_range`` where the
kernel has it); every op that changes the structure waits for the copies in flight.
Directory mode and mtime are set after their children settle, deepest first. One
``syncfs`` per batch, or one ``fsync`` per file with ``fsync=True``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import marshal
import os
import stat
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from ..backend import ApplyResult, Backend, Capabilities, WatchSink
from ..errors import BackendError, DestinationFull, Interrupted
from ..model import (
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
    Rows,
    Snapshot,
)

TMP_PREFIX = ".hsync-tmp-"
"""Temporary files of an unfinished publish: never synced, removed by the next run."""

COPY_THREADS = 3
COPY_PROCESSES = 2
PROCESS_MIN_FILES = 2000
CHUNK_FILES = 64
CHUNK_BYTES = 4 << 20
_CHUNK = 1 << 20
_counter = itertools.count()


def _listing_digest(hashes: list[int]) -> int:
    """One number for a directory's listing, from its entries' payload hashes (in any
    order, signed 64-bit): a 64-bit xxh3 of them, sorted. Not their sum: Python's tuple
    hash is nearly additive in its fields, so two entries that swap a field (two
    symlinks swapping targets) left the sum as it was. Equal digests mean equal
    listings but with odds of 2^-64."""
    from xxhash import xxh3_64_intdigest

    hashes.sort()
    return xxh3_64_intdigest(array("q", hashes).tobytes())  # type: ignore[no-any-return]

Entry = tuple[str, Any, int, int, int, int, int]
"""One listed name: ``(name, st_mode, st_size, st_mtime_ns, st_ino, st_dev, hash)``, or
``(name, None, errno, 0, 0, 0, 0)`` when its lstat failed. ``hash``: of the name and the
payload a sync compares (kind; mode bits, size, mtime for a file; mode bits, mtime for
a directory; a symlink's target is not in it), for the directory digests."""


def _lstat_dir_py(fd: int) -> list[Entry]:
    """Every name of the directory open as ``fd`` with its lstat (names gone since the
    listing are left out). ``hsync._walk.list`` is the same in C, where it was built;
    the two hash entries differently (a run uses one of them on both trees)."""
    out: list[Entry] = []
    lstat = os.lstat
    for name in os.listdir(fd):
        try:
            st = lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        except OSError as e:
            out.append((name, None, e.errno or 0, 0, 0, 0, 0))
            continue
        mode = st.st_mode
        if stat.S_ISREG(mode):
            h = hash((name, stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_size, st.st_mtime_ns))
        elif stat.S_ISDIR(mode):
            h = hash((name, stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_mtime_ns))
        else:
            h = hash((name, stat.S_IFMT(mode)))
        out.append((name, mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, h))
    return out


try:
    from .._walk import list as _lstat_dir
except ImportError:  # not built (no compiler where hsync was installed): slower, same
    _lstat_dir = _lstat_dir_py


class SourceChanged(Exception):
    """The source file changed while it was read; the copy is not published."""


class TargetChanged(Exception):
    """The destination does not hold what the plan expected."""


class FsBackend:
    """A local directory tree (``PATH`` or ``file:///PATH``)."""

    def __init__(self, location: str, *, role: str = "source") -> None:
        path = location[len("file://") :] if location.startswith("file://") else location
        if not path:
            raise BackendError(f"{location}: empty path")
        self.url = location
        self.role = role
        self.root = os.path.abspath(path)
        self.capabilities = Capabilities(deferred_flush=True)
        self.stale_temps: list[Key] = []
        self._lock = threading.Lock()
        self.interrupt: Callable[[], bool] | None = None
        """Checked between directories of a scan: true stops it (``Interrupted``)."""

    # -- reading ------------------------------------------------------------------------
    def path(self, key: Key) -> str:
        """The absolute path of ``key``; refuses names that could leave the tree."""
        if not key:
            return self.root
        rel = "/".join(key)
        probe = f"/{rel}/"
        if (
            rel.count("/") != len(key) - 1
            or "//" in probe
            or "/./" in probe
            or "/../" in probe
            or "\0" in rel
        ):
            raise TargetChanged(f"refusing unsafe name in {rel!r}")
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def root_error(self) -> str | None:
        """Why the root cannot be used as a tree, or None."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return "does not exist"
        except OSError as e:
            return e.strerror or str(e)
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        if not os.access(self.root, os.R_OK | os.X_OK):
            return "is not readable"
        return None

    def scan(
        self,
        subtree: Key = (),
        *,
        exclude: Callable[[Key, bool], bool] | None = None,
        digests: dict[Key, int] | None = None,
    ) -> Snapshot:
        """See ``Backend.scan``. The root itself may be a symlink to a directory.

        ``digests``: filled with one number per directory listed, a digest of its
        children's payloads (``listing_digest``): two directories whose digests are
        equal hold the same names with the same payloads."""
        rows: dict[Key, Any] = {}
        snap = Snapshot(nodes=Rows(rows))
        snap._children = {}
        nodes = rows
        top = self.path(subtree)
        try:
            if subtree:
                # a partial rescan: absent is an answer, a leaf is one node, and no
                # ancestor is followed through a symlink
                row = self._row_at(subtree)
                if row is None:
                    return snap
                if row[0] != DIR:
                    if row[0] in (FILE, SYMLINK):
                        nodes[subtree] = row
                    else:
                        snap.skipped.append((subtree, row[0]))
                    return snap
                st = os.lstat(top)
            else:
                st = os.stat(top)
        except OSError as e:
            snap.incomplete[subtree] = e.strerror or str(e)
            return snap
        if not stat.S_ISDIR(st.st_mode):
            snap.incomplete[subtree] = "is not a directory"
            return snap
        root_dev = st.st_dev
        nodes[subtree] = (DIR, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, None, st.st_ino)
        incomplete = snap.incomplete
        fstat, osopen, close, listdir = os.fstat, os.open, os.close, _lstat_dir
        # Each directory is listed through a descriptor opened without following a
        # symlink and checked to be the directory that was seen: one swapped for a
        # symlink mid-scan is never followed out of the tree.
        stack: list[tuple[str, Key, int, int]] = [(top, subtree, st.st_ino, st.st_dev)]
        while stack:
            path, key, want_ino, want_dev = stack.pop()
            if self.interrupt is not None and self.interrupt():
                raise Interrupted(f"{self.url}: scan interrupted")
            try:
                try:
                    fd = osopen(path, _O_LIST if key != subtree else _O_LIST & ~os.O_NOFOLLOW)
                except OSError as e:
                    if e.errno != errno.ENAMETOOLONG:
                        raise
                    fd = _open_long(self.root, key, _O_LIST)  # past PATH_MAX: name by name
            except FileNotFoundError:
                incomplete[key] = "vanished during the scan"
                continue
            except OSError as e:
                incomplete[key] = (
                    "replaced during the scan" if e.errno in (errno.ELOOP, errno.ENOTDIR)
                    else e.strerror or str(e)
                )
                continue
            try:
                seen = fstat(fd)
                if seen.st_ino != want_ino or seen.st_dev != want_dev:
                    incomplete[key] = "replaced during the scan"
                    continue
                try:
                    entries = listdir(fd)
                except OSError as e:
                    incomplete[key] = e.strerror or str(e)
                    continue
                self._list(entries, fd, path, key, root_dev, exclude, snap, stack, digests)
            finally:
                close(fd)
        return snap

    def _list(
        self,
        entries: list[Entry],
        fd: int,
        path: str,
        key: Key,
        root_dev: int,
        exclude: Callable[[Key, bool], bool] | None,
        snap: Snapshot,
        stack: list[tuple[str, Key, int, int]],
        digests: dict[Key, int] | None,
    ) -> None:
        """One directory's ``entries`` (``_lstat_dir``: one lstat per name, relative to
        the directory's descriptor) into ``snap``: the scan's inner loop."""
        nodes = snap.nodes.rows  # type: ignore[attr-defined]
        kids: list[Key] = []  # the children index, built as we go: cheaper than after
        snap._children[key] = kids  # type: ignore[index]
        incomplete, skipped, temps = snap.incomplete, snap.skipped, self.stale_temps
        held = snap.holds_excluded
        S_ISREG, S_ISDIR, S_ISLNK, S_IMODE = stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK, stat.S_IMODE
        readlink = os.readlink
        hashes: list[int] = []
        for name, mode, size, mtime, st_ino, st_dev, h in entries:
            k = (*key, name)
            if mode is None:  # its lstat failed (one gone since the listing is left out)
                incomplete[k] = os.strerror(size)
                continue
            ino = st_ino if st_dev == root_dev else (st_dev << 64) | st_ino
            if S_ISREG(mode):
                if name.startswith(TMP_PREFIX):
                    temps.append(k)
                    continue
                if exclude is not None and exclude(k, False):
                    held.add(key)
                    continue
                nodes[k] = (FILE, S_IMODE(mode), size, mtime, None, ino)
                kids.append(k)
            elif S_ISDIR(mode):
                if exclude is not None and exclude(k, True):
                    held.add(key)
                    continue
                nodes[k] = (DIR, S_IMODE(mode), 0, mtime, None, ino)
                kids.append(k)
                stack.append((f"{path}/{name}", k, st_ino, st_dev))
            elif S_ISLNK(mode):
                if exclude is not None and exclude(k, False):
                    held.add(key)
                    continue
                try:
                    target = readlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    incomplete[k] = e.strerror or str(e)
                    continue
                nodes[k] = (SYMLINK, 0, 0, 0, target, ino)  # payload: target only
                kids.append(k)
                h = hash((h, target))
            else:
                skipped.append((k, _special_kind(mode)))
                continue
            if digests is not None:
                hashes.append(h)
        if digests is not None:
            digests[key] = _listing_digest(hashes)

    def is_empty(self) -> bool:
        """True when the root is missing or holds nothing but hsync's temporary files."""
        try:
            with os.scandir(self.root) as it:
                return all(e.name.startswith(TMP_PREFIX) for e in it)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def walk_sorted(
        self,
        exclude: Callable[[Key, bool], bool] | None = None,
        skipped: list[tuple[Key, str]] | None = None,
    ) -> Iterator[tuple[Key, Any]]:
        """Every node below the root as ``(key, row)``, in the history's key order:
        depth first, a directory right before its descendants, siblings by the bytes
        of their names. A directory whose listing failed is followed by ``(key, None)``
        (nothing below it is known). Holds one listing per level, never the tree.
        Special files are left out (listed in ``skipped`` when given, as ``scan``
        lists them)."""
        root_st = os.stat(self.root)
        stack: list[tuple[Key, list[tuple[bytes, str, Any]], int]] = []

        def listing(key: Key, ino: int, dev: int) -> list[tuple[bytes, str, Any]] | None:
            if self.interrupt is not None and self.interrupt():
                raise Interrupted(f"{self.url}: scan interrupted")
            path = self.path(key)
            try:
                try:
                    fd = os.open(path, _O_LIST if key else _O_LIST & ~os.O_NOFOLLOW)
                except OSError as e:
                    if e.errno != errno.ENAMETOOLONG or not key:
                        raise
                    fd = _open_long(self.root, key, _O_LIST)  # beyond PATH_MAX
            except OSError:
                return None
            try:
                seen = os.fstat(fd)
                if seen.st_ino != ino or seen.st_dev != dev:
                    return None
                out = []
                for name, mode, size, mtime, st_ino, st_dev, _ in _lstat_dir(fd):
                    if mode is None:
                        continue
                    row: Any
                    ident = st_ino if st_dev == root_st.st_dev else (st_dev << 64) | st_ino
                    k = (*key, name)
                    if stat.S_ISREG(mode):
                        if name.startswith(TMP_PREFIX) or (exclude and exclude(k, False)):
                            continue
                        row = (FILE, stat.S_IMODE(mode), size, mtime, None, ident)
                    elif stat.S_ISDIR(mode):
                        if exclude and exclude(k, True):
                            continue
                        row = (DIR, stat.S_IMODE(mode), 0, mtime, None, ident, st_ino, st_dev)
                    elif stat.S_ISLNK(mode):
                        if exclude and exclude(k, False):
                            continue
                        try:
                            target = os.readlink(name, dir_fd=fd)
                        except OSError:
                            continue
                        row = (SYMLINK, 0, 0, 0, target, ident)
                    else:
                        if skipped is not None:
                            skipped.append((k, _special_kind(mode)))
                        continue
                    out.append((os.fsencode(name), name, row))
                out.sort(reverse=True)  # popped from the end: smallest name first
                return out
            except OSError:
                return None
            finally:
                os.close(fd)

        top = listing((), root_st.st_ino, root_st.st_dev)
        if top is None:
            yield (), None
            return
        stack.append(((), top, 0))
        while stack:
            key, kids, _ = stack[-1]
            if not kids:
                stack.pop()
                continue
            _, name, row = kids.pop()
            k = (*key, name)
            if row[0] == DIR:
                yield k, row[:6]
                sub = listing(k, row[6], row[7])
                if sub is None:
                    yield k, None
                else:
                    stack.append((k, sub, 0))
            else:
                yield k, row

    def _parent_fd(self, key: Key) -> int | None:
        """A descriptor of ``key``'s parent directory, reached from the root one name at
        a time without following a symlink; None when a name on the way is absent or is
        not a directory. The caller closes it."""
        fd = os.open(self.root, _O_LIST & ~os.O_NOFOLLOW)
        try:
            for name in key[:-1]:
                try:
                    nfd = os.open(name, _O_LIST, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    os.close(fd)
                    return None
                except OSError as e:
                    if e.errno == errno.ELOOP:  # a symlink on the way: not a directory
                        os.close(fd)
                        return None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _row_at(self, key: Key) -> Any:
        """The row at ``key`` (a special file's row has its kind's name), or None."""
        self.path(key)  # refuses unsafe names
        fd = self._parent_fd(key)
        if fd is None:
            return None
        try:
            try:
                st = os.stat(key[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            mode = st.st_mode
            if stat.S_ISREG(mode):
                if key[-1].startswith(TMP_PREFIX):
                    return None
                return (FILE, stat.S_IMODE(mode), st.st_size, st.st_mtime_ns, None, st.st_ino)
            if stat.S_ISDIR(mode):
                return (DIR, stat.S_IMODE(mode), 0, st.st_mtime_ns, None, st.st_ino)
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink(key[-1], dir_fd=fd)
                except FileNotFoundError:
                    return None
                return (SYMLINK, 0, 0, 0, target, st.st_ino)
            return (_special_kind(mode),)
        finally:
            os.close(fd)

    def stat(self, key: Key) -> Node | None:
        """See ``Backend.stat``. Special files count as absent (they are never synced)."""
        if not key:
            try:
                st = os.stat(self.root)
            except FileNotFoundError:
                return None
            if not stat.S_ISDIR(st.st_mode):
                return None
            return Node(DIR, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, None, st.st_ino)
        row = self._row_at(key)
        if row is None or len(row) == 1:
            return None
        return Node(*row)

    def watch(self, sink: WatchSink) -> AbstractContextManager[None]:
        """Report changes below the root (inotify through watchdog); see ``fswatch``."""
        from .fswatch import FsWatcher

        return FsWatcher(self, sink)

    def scan_in_child(
        self, subtree: Key = (), *, exclude: Callable[[Key, bool], bool] | None = None
    ) -> Callable[[], Snapshot]:
        """Start ``scan`` in a forked child and return the function that collects it
        (see ``ScanChild``)."""
        child = ScanChild(self, subtree, exclude)
        return child.snapshot

    def start_scan(
        self, exclude: Callable[[Key, bool], bool] | None = None
    ) -> ScanChild:
        """A full scan with per-directory digests, started in a forked child (see
        ``ScanChild``). The caller closes it."""
        return ScanChild(self, (), exclude)

    def read(self, key: Key) -> BinaryIO:
        fd = _open_file(self.root, key, self.path(key))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SourceChanged(f"{'/'.join(key)} is no longer a regular file")
        return os.fdopen(fd, "rb")

    def digest(self, key: Key) -> bytes | None:
        import xxhash

        h = xxhash.xxh3_128()
        try:
            with self.read(key) as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except (OSError, SourceChanged):
            return None
        return h.digest()

    def close(self) -> None:
        pass

    # -- writing ------------------------------------------------------------------------
    def apply_batch(
        self,
        ops: Sequence[Op],
        source: Backend,
        final: Snapshot,
        *,
        fsync: bool = False,
        on_done: Callable[[Op], None] | None = None,
        hard_links: bool = False,
        defer_durable: bool = False,
    ) -> ApplyResult:
        """See ``Backend.apply_batch``. ``hard_links``: source files that are one inode
        (the same identity) become one inode here too (rsync -H). ``defer_durable``:
        return while the batch's ``syncfs`` still runs (``ApplyResult.durable``)."""
        batch = _Batch(self, source, final, fsync, on_done)
        batch.hard_links = hard_links
        batch.defer_durable = defer_durable
        return batch.run(ops)


class _Batch:
    """One batch of ops on a filesystem destination."""

    def __init__(
        self,
        dst: FsBackend,
        src: Backend,
        final: Snapshot,
        fsync: bool,
        on_done: Callable[[Op], None] | None,
    ) -> None:
        self.dst = dst
        self.src = src
        self.final = final
        self.fsync = fsync
        self.on_done = on_done
        self.result = ApplyResult()
        self.touched: set[Key] = set()
        self.under: dict[Key, set[Key]] = {}
        self.unlocked: dict[Key, int] = {}  # made owner-writable: the mode it had
        self.inflight: list[tuple[list[Op], Future[list[int | BaseException]]]] = []
        self.chunk: list[Op] = []
        self.chunk_bytes = 0
        self.lock = threading.Lock()
        self.full: tuple[Key, OSError] | None = None
        self._root_fd: int | None = None
        self.hard_links = False
        self.defer_durable = False
        self.groups: dict[object, list[Key]] = {}
        self.linked: list[Op] = []  # file ops done by a link, after the copies

    def clean_temps(self) -> None:
        """Remove temporary files left by an interrupted publish (found by the scan)."""
        for key in self.dst.stale_temps:
            try:
                with self.parent(key) as (dfd, name):
                    os.unlink(name, dir_fd=dfd)
                self.touch(key)
            except FileNotFoundError:
                pass
            except (OSError, TargetChanged) as e:
                if isinstance(e, TargetChanged):
                    continue  # its directory is not what was scanned: not ours to clean
                self.result.problems.append(
                    Problem(key, f"cannot remove a stale temporary file: {e.strerror}")
                )
                self.stop_if_full(key, e)
        self.dst.stale_temps = []

    def run(self, ops: Sequence[Op]) -> ApplyResult:
        try:
            self.clean_temps()
            if self.hard_links:
                self.groups = _link_groups(self.final)
            with self.executor(ops) as pool:
                self.pool = pool
                for op in ops:
                    if self.full is not None:
                        break  # the disk is full: stop, keep what is done
                    try:
                        self.one(op)
                    except PermissionError as e:
                        self.retry_writable(op, e, lambda op=op: self.one(op))
                    except (OSError, SourceChanged, TargetChanged) as e:
                        self.fail(op, e)
                self.barrier()
                for op in self.linked:
                    if self.full is not None:
                        break
                    try:
                        self.link_or_copy(op)
                    except (OSError, SourceChanged, TargetChanged) as e:
                        self.fail(op, e)
            self.settle_directories()
            if not self.fsync and (self.result.done or self.touched):
                if self.defer_durable:
                    # the flush waits on the disk, not on Python: the caller's own work
                    # (recording the history) runs meanwhile
                    flush = threading.Thread(
                        target=_syncfs, args=(self.dst.root,), name="hsync-syncfs"
                    )
                    flush.start()
                    self.result.durable = flush.join
                else:
                    _syncfs(self.dst.root)
        finally:
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None
        if self.full is not None:
            key, e = self.full
            raise DestinationFull(
                f"{_join(self.dst.root, key)}: {e.strerror or e} on the destination; the run "
                "stopped and its temporary file was removed: free some space and run again"
            )
        return self.result

    def stop_if_full(self, key: Key, e: BaseException) -> None:
        """ENOSPC or EDQUOT: no later op can succeed either; the run stops (SPEC 5)."""
        if isinstance(e, OSError) and e.errno in _FULL and self.full is None:
            self.full = (key, e)

    def root_fd(self) -> int:
        """The destination root, opened once per batch (it may be a symlink the user gave;
        nothing below it is followed)."""
        if self._root_fd is None:
            self._root_fd = os.open(self.dst.root, _O_DIR & ~os.O_NOFOLLOW)
        return self._root_fd

    @contextlib.contextmanager
    def parent(self, key: Key) -> Iterator[tuple[int, str]]:
        """``(descriptor of key's parent directory, key's name)``: every write names its
        target relative to a directory reached from the root without following a
        symlink, so a directory swapped for a symlink mid-run is never written through
        and no path is longer than one name (PATH_MAX does not apply)."""
        assert key, "the root has no parent"
        self.dst.path(key)  # refuses names that could leave the tree
        fd = _open_beneath(self.root_fd(), key[:-1])
        try:
            yield fd, key[-1]
        finally:
            os.close(fd)

    def executor(self, ops: Sequence[Op]) -> Executor:
        """Where copies run. Many small files from a local tree: worker processes, so the
        per-file Python work runs on every core instead of queueing for the GIL; else (a
        few files, a source that is not a local tree, threads already running, where a
        fork is unsafe) a thread pool."""
        self.by_path = isinstance(self.src, FsBackend)
        files = sum(1 for op in ops if op.kind == FILE and op.op in (CREATE, UPDATE))
        if (
            self.by_path
            and files >= PROCESS_MIN_FILES
            and threading.active_count() == 1
            and hasattr(os, "fork")
        ):
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            return ProcessPoolExecutor(
                COPY_PROCESSES,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        return ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="hsync-copy")

    def retry_writable(self, op: Op, error: OSError, again: Callable[[], object]) -> None:
        """A directory without owner write (a read-only tree, a module cache) refuses
        creates, renames and deletes in it: make it owner-writable, retry once, and let
        settle_directories put its mode back (rsync does the same)."""
        unlocked = False
        keys = {op.key[:-1]}
        if op.to is not None:
            keys.add(op.to[:-1])
            if op.kind == DIR:
                keys.add(op.key)  # a directory moving to a new parent rewrites its ".."
        for key in keys:
            try:
                fd = _open_beneath(self.root_fd(), key)
                try:
                    mode = os.fstat(fd).st_mode
                    if not mode & stat.S_IWUSR:
                        os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IWUSR | stat.S_IXUSR)
                        self.mark(key)
                        self.unlocked.setdefault(key, stat.S_IMODE(mode))
                        unlocked = True
                finally:
                    os.close(fd)
            except (OSError, TargetChanged):
                continue
        if not unlocked:
            self.fail(op, error)
            return
        try:
            again()
        except (OSError, SourceChanged, TargetChanged) as e:
            self.fail(op, e)

    def fail(self, op: Op, e: BaseException) -> None:
        key = op.key
        if isinstance(e, OSError):
            msg = f"{op.op} failed: {e.strerror or e}"
            if e.filename and isinstance(e.filename, str):
                rel = os.path.relpath(e.filename, self.dst.root)
                if not rel.startswith(".."):
                    msg += f" ({rel})"
        else:
            msg = f"{op.op} skipped: {e}"
        self.result.problems.append(Problem(key, msg, retry=isinstance(e, SourceChanged)))
        self.stop_if_full(op.key, e)

    def ok(self, op: Op, nbytes: int = 0) -> None:
        with self.lock:
            self.result.done.append(op)
            self.result.bytes_copied += nbytes
        if self.on_done is not None:
            self.on_done(op)

    def barrier(self) -> None:
        """Wait for every copy in flight (before an op that changes the structure)."""
        self.flush()
        for ops, fut in self.inflight:
            for op, outcome in zip(ops, fut.result(), strict=True):
                if isinstance(outcome, PermissionError):
                    self.retry_writable(op, outcome, lambda op=op: self.ok(op, self.copy(op)))
                elif isinstance(outcome, BaseException):
                    self.fail(op, outcome)
                else:
                    self.ok(op, outcome)
        self.inflight = []

    def flush(self) -> None:
        if self.chunk:
            if self.by_path:  # picklable work: a process pool may take it
                fut = self.pool.submit(
                    _copy_chunk, [self.item(op) for op in self.chunk], self.fsync
                )
            else:
                fut = self.pool.submit(self.copy_many, self.chunk)
            self.inflight.append((self.chunk, fut))
            self.chunk = []
            self.chunk_bytes = 0

    def copy_many(self, ops: list[Op]) -> list[int | BaseException]:
        """Copies for a source that is not a local tree (streams from ``read``)."""
        out: list[int | BaseException] = []
        for op in ops:
            try:
                out.append(self.copy(op))
            except (OSError, SourceChanged, TargetChanged) as e:
                out.append(e)
        return out

    def touch(self, key: Key | None) -> None:
        """Remember that ``key``'s parent directory changed (its mtime is set again)."""
        if key:
            self.mark(key[:-1])

    def mark(self, key: Key) -> None:
        """Remember that directory ``key`` changed (indexed by every prefix, so a move
        finds the marks below it without looking at the others)."""
        if key not in self.touched:
            self.touched.add(key)
            under = self.under
            for i in range(len(key) + 1):
                under.setdefault(key[:i], set()).add(key)

    def follow(self, old: Key, new: Key) -> None:
        """Touched directories at or below a moved one are now under its new key."""
        below = self.under.get(old)
        if not below:
            return
        n = len(old)
        for k in list(below):
            self.touched.discard(k)
            for i in range(len(k) + 1):
                self.under[k[:i]].discard(k)
            moved = (*new, *k[n:])
            self.mark(moved)
            if k in self.unlocked:
                self.unlocked[moved] = self.unlocked.pop(k)

    def one(self, op: Op) -> None:
        kind = op.kind
        if op.op == CREATE:
            self.touch(op.key)
            if kind == DIR:
                self.mkdir(op.key)
                self.mark(op.key)
                self.ok(op)
            elif kind == FILE:
                self.publish(op)
            elif kind == SYMLINK:
                assert op.node is not None and op.node.target is not None
                with self.parent(op.key) as (dfd, name):
                    os.symlink(op.node.target, name, dir_fd=dfd)
                self.ok(op)
            else:
                raise TargetChanged(f"cannot create a {kind} on a filesystem")
        elif op.op == UPDATE:
            self.update(op)
        elif op.op == MOVE:
            self.barrier()
            assert op.to is not None
            self.expect(op.key, op.old)
            with self.parent(op.key) as (ofd, old), self.parent(op.to) as (nfd, new):
                _rename_noreplace(old, new, ofd, nfd)
            self.touch(op.key)
            self.follow(op.key, op.to)
            self.touch(op.to)
            self.ok(op)
        elif op.op == DELETE:
            self.barrier()
            self.expect(op.key, op.old)
            with self.parent(op.key) as (dfd, name):
                if kind == DIR:
                    _rmdir(name, dfd)
                else:
                    os.unlink(name, dir_fd=dfd)
            self.touch(op.key)
            self.ok(op)

    def link_or_copy(self, op: Op) -> None:
        """A file with other names for its source inode (``--hard-links``): link it to one
        of them that the destination already holds as the source has it, else copy it
        (then the next names link to it). Runs after the batch's copies have landed."""
        node = op.node
        assert node is not None
        for other in self.groups.get(node.identity, ()):
            if other == op.key:
                continue
            try:
                with self.parent(other) as (ofd, oname):
                    st = os.stat(oname, dir_fd=ofd, follow_symlinks=False)
                    if not (
                        stat.S_ISREG(st.st_mode)
                        and st.st_size == node.size
                        and st.st_mtime_ns == node.mtime_ns
                        and stat.S_IMODE(st.st_mode) == node.mode
                    ):
                        continue
                    if op.old is not None:
                        self.expect(op.key, op.old)
                    with self.parent(op.key) as (dfd, name):
                        tmp = _tmp_name()
                        os.link(oname, tmp, src_dir_fd=ofd, dst_dir_fd=dfd,
                                follow_symlinks=False)
                        try:
                            _rename_into(tmp, name, dfd, replace=op.op == UPDATE)
                        except BaseException:
                            _unlink_quiet(tmp, dfd)
                            raise
            except (FileNotFoundError, TargetChanged):
                continue
            self.touch(op.key)
            self.ok(op)
            return
        self.ok(op, self.copy(op))

    def publish(self, op: Op) -> None:
        """Queue a content copy: files travel in chunks (one hand-off to a pool worker
        per chunk of up to CHUNK_FILES files or CHUNK_BYTES bytes, not one per file)."""
        assert op.node is not None
        if self.groups and op.node.identity in self.groups:
            self.linked.append(op)  # after the copies: its other names may land first
            return
        self.chunk.append(op)
        self.chunk_bytes += op.node.size
        if len(self.chunk) >= CHUNK_FILES or self.chunk_bytes >= CHUNK_BYTES:
            self.flush()

    def mkdir(self, key: Key) -> None:
        if not key:
            try:
                os.mkdir(self.dst.root, 0o700)
            except FileExistsError:
                if not os.path.isdir(self.dst.root):
                    raise
            self.mark(key)
            return
        with self.parent(key) as (dfd, name):
            try:
                # owner-writable until its children are in; final mode set in settle
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise

    def update(self, op: Op) -> None:
        node = op.node
        assert node is not None
        if op.kind == DIR:
            self.mark(op.key)
            self.ok(op)
        elif op.kind == FILE and op.content:
            self.expect(op.key, op.old)
            self.touch(op.key)  # the publish renames over it: the directory changes
            self.publish(op)
        elif op.kind == FILE:
            self.expect(op.key, op.old)
            with self.parent(op.key) as (dfd, name):
                fd = os.open(name, _O_META, dir_fd=dfd)  # never a symlink's target
                try:
                    os.fchmod(fd, node.mode)
                    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
                finally:
                    os.close(fd)
            self.ok(op)
        elif op.kind == SYMLINK:
            assert node.target is not None
            self.expect(op.key, op.old)
            with self.parent(op.key) as (dfd, name):
                tmp = _tmp_name()
                os.symlink(node.target, tmp, dir_fd=dfd)
                try:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError:
                    _unlink_quiet(tmp, dfd)
                    raise
            self.touch(op.key)
            self.ok(op)
        else:
            raise TargetChanged(f"cannot update a {op.kind} on a filesystem")

    def expect(self, key: Key, old: Node | None) -> None:
        """Before a destructive op: the destination still holds what was planned."""
        if old is None:
            return
        try:
            if key:
                with self.parent(key) as (dfd, name):
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            else:
                st = os.stat(self.dst.root)
        except FileNotFoundError:
            raise TargetChanged(f"{'/'.join(key)} vanished from the destination") from None
        mode = st.st_mode
        if old.kind == DIR:
            ok = stat.S_ISDIR(mode)
        elif old.kind == FILE:
            ok = (
                stat.S_ISREG(mode)
                and st.st_size == old.size
                and st.st_mtime_ns == old.mtime_ns
            )
        else:
            ok = stat.S_ISLNK(mode)
        if not ok:
            raise TargetChanged("the destination changed since it was scanned")

    def item(self, op: Op) -> tuple[Any, ...]:
        node = op.node
        assert node is not None and isinstance(self.src, FsBackend)
        self.dst.path(op.key)  # refuses names that could leave the tree
        return (
            (self.src.root, op.key, self.src.path(op.key)), self.dst.root, op.key[:-1],
            op.key[-1],
            node.size, node.mtime_ns, node.mode, node.identity, op.op == UPDATE,
        )

    def copy(self, op: Op) -> int:
        """Publish the source file at ``op.key`` atomically; return the bytes copied."""
        node = op.node
        assert node is not None
        if isinstance(self.src, FsBackend):
            outcome = _copy_chunk([self.item(op)], self.fsync)[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        stream = self.src.read(op.key)
        fd_in = os.dup(stream.fileno())
        stream.close()
        try:
            with self.parent(op.key) as (dfd, name):
                return _publish(
                    fd_in, dfd, name, node.size, node.mtime_ns, node.mode,
                    node.identity, self.fsync, op.op == UPDATE,
                )
        finally:
            os.close(fd_in)

    def settle_directories(self) -> None:
        """Set directory mode and mtime from the source, deepest first."""
        final = self.final.nodes
        for key in sorted(self.touched, key=len, reverse=True):
            node = final.get(key)
            if node is None or node.kind != DIR:
                # not a source directory (kept for its excluded content): only undo
                # what retry_writable did to it
                if key in self.unlocked:
                    with contextlib.suppress(OSError, TargetChanged):
                        fd = _open_beneath(self.root_fd(), key)
                        try:
                            os.fchmod(fd, self.unlocked[key])
                        finally:
                            os.close(fd)
                continue
            try:
                # through a descriptor that is this directory, not what a symlink names
                # (only the root may be a symlink the user gave us)
                fd = _open_beneath(self.root_fd(), key)
                try:
                    os.fchmod(fd, node.mode)
                    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
                finally:
                    os.close(fd)
            except (FileNotFoundError, NotADirectoryError):
                continue  # it moved on since; the op that moved it touched its new place
            except TargetChanged as e:
                self.result.problems.append(Problem(key, f"directory metadata not set: {e}"))
            except OSError as e:
                self.result.problems.append(
                    Problem(key, f"cannot set directory metadata: {e.strerror}")
                )


# O_NONBLOCK: a FIFO put where a file was must not hang the run (no effect on files)
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# a file's metadata is set through a descriptor: O_NOFOLLOW refuses a symlink put there,
# O_NONBLOCK a FIFO
_O_META = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UMASK_SAFE = 0o777
_umask_value: list[int] = []


def _umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    if not _umask_value:
        old = os.umask(0o022)
        os.umask(old)
        _umask_value.append(old)
    return _umask_value[0]


def _ident(st: os.stat_result, identity: int | str) -> int:
    """``st``'s identity as the scan records it (device-qualified off the root's device)."""
    ino = st.st_ino
    return ino if not isinstance(identity, int) or identity == ino else (st.st_dev << 64) | ino


def _worker_init(parent: int) -> None:
    """A copy worker (or a scanning child) dies with its parent: a killed run must not
    go on writing, nor walking."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _copy_chunk(
    items: list[tuple[Any, ...]], fsync: bool
) -> list[int | BaseException]:
    """Copy (source path, final path, size, mtime_ns, mode, identity, replace) items;
    one outcome
    per item: the bytes copied or the exception. Module level: it runs in a worker
    process too."""
    out: list[int | BaseException] = []
    root_fd: int | None = None
    parents: dict[Key, int] = {}  # within one chunk: no move or delete runs meanwhile
    try:
        for src_path, root, parent, name, size, mtime_ns, mode, identity, replace in items:
            try:
                dfd = parents.get(parent)
                if dfd is None:
                    if root_fd is None:
                        root_fd = os.open(root, _O_DIR & ~os.O_NOFOLLOW)
                    dfd = parents[parent] = _open_beneath(root_fd, parent)
                fd_in = _open_file(*src_path)
                try:
                    out.append(
                        _publish(
                            fd_in, dfd, name, size, mtime_ns, mode, identity, fsync, replace
                        )
                    )
                finally:
                    os.close(fd_in)
            except (OSError, SourceChanged, TargetChanged) as e:
                out.append(e)
    finally:
        for fd in parents.values():
            os.close(fd)
        if root_fd is not None:
            os.close(root_fd)
    return out


def _link_groups(final: Snapshot) -> dict[object, list[Key]]:
    """Source files that share an identity (an inode: hard links), by identity."""
    rows = getattr(final.nodes, "rows", None)
    items = (
        ((k, r[0], r[5]) for k, r in rows.items()) if rows is not None
        else ((k, n.kind, n.identity) for k, n in final.nodes.items())
    )
    seen: dict[object, list[Key]] = {}
    for key, kind, ident in items:
        if kind == FILE and ident is not None:
            seen.setdefault(ident, []).append(key)
    return {i: sorted(keys) for i, keys in seen.items() if len(keys) > 1}


def _open_file(root: str, key: Key, path: str) -> int:
    """Open the file at ``path`` (``key`` below ``root``) to read it, without following
    a symlink in its last name; past PATH_MAX, name by name from the root."""
    try:
        return os.open(path, _O_READ)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        return _open_long(root, key, _O_READ)


def _open_long(root: str, key: Key, flags: int) -> int:
    """``key`` below ``root`` opened with ``flags``, through one directory descriptor per
    name (for paths longer than PATH_MAX); no symlink below the root is followed."""
    fd = os.open(root, _O_DIR & ~os.O_NOFOLLOW)
    try:
        for name in key[:-1]:
            nfd = os.open(name, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(key[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def _publish(
    fd_in: int, dfd: int, final: str, size: int, mtime_ns: int, mode: int,
    identity: int | str | None, fsync: bool, replace: bool,
) -> int:
    """Write what ``fd_in`` holds to a temporary name in directory ``dfd``, rename it to
    ``final`` there (over it only when ``replace``: a create never clobbers a node that
    appeared since the scan); not if the source is not what was scanned or changes
    meanwhile.

    The hot path of an initial sync: fstat, create, copy, utime, close, fstat, rename
    per file, and as little Python as that allows."""
    before = os.fstat(fd_in)
    if (
        before.st_size != size
        or before.st_mtime_ns != mtime_ns
        or (identity is not None and _ident(before, identity) != identity)
        or not stat.S_ISREG(before.st_mode)
    ):
        raise SourceChanged("the source file changed since it was scanned")
    tmp = _tmp_name()
    fd_out = os.open(tmp, _O_CREATE, mode & 0o777, dir_fd=dfd)
    try:
        try:
            copied = _copy_fd(fd_in, fd_out, size)
            if mode & ~_UMASK_SAFE or _umask() & mode:
                os.fchmod(fd_out, mode)
            os.utime(fd_out, ns=(mtime_ns, mtime_ns))
            if fsync:
                os.fsync(fd_out)
        finally:
            os.close(fd_out)
        after = os.fstat(fd_in)
        if (
            copied != before.st_size
            or after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns
        ):
            raise SourceChanged("the source file changed while it was copied")
        _rename_into(tmp, final, dfd, replace=replace)
    except BaseException:
        _unlink_quiet(tmp, dfd)
        raise
    return copied


def _rename_into(tmp: str, final: str, dfd: int, *, replace: bool) -> None:
    """Publish the temporary ``tmp`` as ``final`` in the directory ``dfd``: over what is
    there (``replace``, an update) or only onto a free name (a create)."""
    if replace:
        os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
    else:
        _rename_noreplace(tmp, final, dfd, dfd)


_renameat2: list[Any] = []


def _rename_noreplace(old: str, new: str, old_fd: int = -100, new_fd: int = -100) -> None:
    """rename(2) that fails instead of replacing what is at ``new`` (renameat2 with
    RENAME_NOREPLACE; where the kernel or filesystem lacks it, a check then a rename).
    Names are relative to the directory descriptors (default: the working directory)."""
    if not _renameat2:
        import ctypes

        try:
            _renameat2.append(ctypes.CDLL(None, use_errno=True).renameat2)
        except (OSError, AttributeError):
            _renameat2.append(None)
    call = _renameat2[0]
    if call is not None:
        import ctypes

        if call(old_fd, os.fsencode(old), new_fd, os.fsencode(new), 1) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise TargetChanged("a node appeared on the destination since the scan")
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), new)
    try:
        os.stat(new, dir_fd=new_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        return
    raise TargetChanged("a node appeared on the destination since the scan")


def _rmdir(path: str, dfd: int) -> None:
    """Remove a directory the plan emptied. Special files (FIFOs, sockets, devices) are
    never synced, so the plan does not know them: they go with their directory, as
    rsync --delete removes them; anything else that appeared since the scan stays."""
    try:
        os.rmdir(path, dir_fd=dfd)
        return
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
        fd = os.open(path, _O_LIST, dir_fd=dfd)
        try:
            with os.scandir(fd) as it:
                left = [(x.name, x.stat(follow_symlinks=False).st_mode) for x in it]
            if any(stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISLNK(m) for _, m in left):
                raise
            for name, _ in left:
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)
    os.rmdir(path, dir_fd=dfd)


def _tmp_name() -> str:
    return f"{TMP_PREFIX}{os.getpid():x}-{next(_counter):x}"


def _unlink_quiet(name: str, dfd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dfd)


def _join(root: str, key: Key) -> str:
    return "/".join((root.rstrip("/") or "", *key)) if key else root


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)
    )


_RESOLVE = 0x04 | 0x08  # RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
_SYS_OPENAT2 = 437  # the same number on every architecture (added in Linux 5.6)
_openat2_ok: list[Any] = []


def _open_beneath(root_fd: int, rel: Key) -> int:
    """A new descriptor of directory ``rel`` below the directory ``root_fd``, reached
    without following any symlink and without leaving it: openat2(RESOLVE_NO_SYMLINKS |
    RESOLVE_BENEATH) in one call, else (an old kernel, a path over PATH_MAX) one
    ``openat(O_NOFOLLOW)`` per name. A symlink on the way raises ``OSError(ELOOP)`` or
    ``ENOTDIR``; nothing is ever written through one."""
    if not rel:
        return os.dup(root_fd)
    if not _openat2_ok:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syscall
            fn.restype = ctypes.c_long
            _openat2_ok.append(fn)
        except (OSError, AttributeError):
            _openat2_ok.append(None)
    call = _openat2_ok[0]
    path = "/".join(rel)
    raw = os.fsencode(path)
    if call is not None and len(raw) < 4000:
        how = _OpenHow(_O_DIR, 0, _RESOLVE)
        for _ in range(3):  # EAGAIN: a rename raced the lookup; try again
            fd = call(
                ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(root_fd), ctypes.c_char_p(raw),
                ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err == errno.EAGAIN:
                continue
            if err in (errno.ENOSYS, errno.EPERM):  # no openat2 (or a seccomp filter)
                _openat2_ok[0] = None
                break
            if err == errno.ENAMETOOLONG:
                break  # name by name below
            if err in _SWAPPED:
                raise TargetChanged(_SWAPPED_MSG.format(path))
            raise OSError(err, os.strerror(err), path)
    fd = os.dup(root_fd)
    try:
        for name in rel:
            nfd = os.open(name, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        if e.errno in _SWAPPED:
            raise TargetChanged(_SWAPPED_MSG.format(path)) from None
        raise
    return fd


_SWAPPED = (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
_SWAPPED_MSG = (
    "{}: no longer a directory on the destination (a symlink or a file was put there): "
    "nothing written through it"
)


_copy_file_range_ok = hasattr(os, "copy_file_range")


def _copy_fd(fd_in: int, fd_out: int, size_hint: int) -> int:
    """Copy until EOF; kernel-side where possible. Returns the bytes copied."""
    global _copy_file_range_ok
    total = 0
    if size_hint == 0:
        return 0  # the caller's fstat after the copy catches a file that grew
    if _copy_file_range_ok:
        try:
            while True:
                n = os.copy_file_range(fd_in, fd_out, max(size_hint - total, _CHUNK))
                total += n
                if n == 0 or total == size_hint:
                    return total  # a file that grew meanwhile is caught by the caller
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            if total:
                raise
            _copy_file_range_ok = False
    try:
        while True:
            n = os.sendfile(fd_out, fd_in, total, max(size_hint - total, _CHUNK))
            if n == 0:
                return total
            total += n
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or total:
            raise
    while chunk := os.read(fd_in, _CHUNK):
        os.write(fd_out, chunk)
        total += len(chunk)
    return total


def _syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` (one call per batch; SPEC section 5)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.sync()
        return
    try:
        if libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


class ScanChild:
    """A full scan of a tree, run in a forked child while the caller scans the other
    tree, and asked afterwards for only what it needs.

    The walk is CPU-bound Python: two walks in threads contend for the GIL and are
    slower than one after the other, two processes are not. Where forking is unsafe
    (other threads running) or fails, the scan runs in this process when it is first
    asked for, behind the same interface.

    ``summary()`` is cheap to ship: one digest per directory (``scan(digests=...)``),
    what could not be read, the special files, hsync's leftover temporary files.
    ``listings(dirs)`` ships the children of ``dirs``, ``rows(keys, subtrees)`` those
    keys and everything below ``subtrees``; ``snapshot()`` ships the whole scan and
    ends the child's service (``close()`` ends it too)."""

    def __init__(
        self,
        backend: FsBackend,
        subtree: Key = (),
        exclude: Callable[[Key, bool], bool] | None = None,
    ) -> None:
        self.backend = backend
        self.subtree = subtree
        self.exclude = exclude
        self._local: tuple[Snapshot, dict[Key, int]] | None = None
        self._summary: dict[str, Any] | None = None
        self.pid = 0
        if threading.active_count() > 1 or not hasattr(os, "fork"):
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
                _worker_init(parent)  # a killed run takes its scan along
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
    def _scan_here(self) -> tuple[Snapshot, dict[Key, int]]:
        if self._local is None:
            digests: dict[Key, int] = {}
            snap = self.backend.scan(self.subtree, exclude=self.exclude, digests=digests)
            self._local = (snap, digests)
        return self._local

    def _answer(self, request: tuple[Any, ...]) -> Any:
        snap, digests = self._scan_here()
        rows = snap.nodes.rows  # type: ignore[attr-defined]  # scan() builds Rows
        what = request[0]
        if what == "summary":
            return {
                "digests": digests,
                "incomplete": snap.incomplete,
                "skipped": snap.skipped,
                "temps": self.backend.stale_temps,
                "held": snap.holds_excluded,
                "count": len(rows),
                "root": rows.get(self.subtree),
            }
        if what == "listings":
            return {d: [(k[-1], rows[k]) for k in snap.children(d)] for d in request[1]}
        if what == "rows":
            _, keys, subtrees = request
            out: dict[Key, Any] = {k: rows[k] for k in keys if k in rows}
            for top in subtrees:
                if top in rows:
                    out[top] = rows[top]
                    for k in snap.walk(top):
                        out[k] = rows[k]
            return out
        return (rows, snap.incomplete, snap.skipped, self.backend.stale_temps,
                snap.holds_excluded)

    def _serve(self, req_fd: int, res_fd: int) -> None:
        self._scan_here()  # at once: the caller scans the other tree meanwhile
        with os.fdopen(req_fd, "rb") as req, os.fdopen(res_fd, "wb") as res:
            while True:
                request = _receive(req)
                if request is None or request[0] == "bye":
                    return
                _send(res, self._answer(request))
                if request[0] == "all":
                    return

    # -- the caller ---------------------------------------------------------------------
    def _ask(self, request: tuple[Any, ...]) -> Any:
        if self.pid:
            try:
                _send(self._req, request)
                answer = _receive(self._res)
            except OSError:
                answer = None
            if answer is not None:
                return answer
            self._end()  # the child failed: scan here instead
        return self._answer(request)

    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            self._summary = self._ask(("summary",))
            self.backend.stale_temps = list(self._summary["temps"])
        return self._summary

    def listings(self, dirs: Iterable[Key]) -> dict[Key, list[tuple[str, Any]]]:
        """The ``(name, row)`` children of each of ``dirs``."""
        return self._ask(("listings", list(dirs)))  # type: ignore[no-any-return]

    def rows(self, keys: Iterable[Key] = (), subtrees: Iterable[Key] = ()) -> dict[Key, Any]:
        """The rows of ``keys``, and of ``subtrees`` with everything below them (keys
        that are not there are left out)."""
        return self._ask(("rows", list(keys), list(subtrees)))  # type: ignore[no-any-return]

    def snapshot(self) -> Snapshot:
        """The whole scan; the child's service ends."""
        if not self.pid:
            return self._scan_here()[0]
        rows, incomplete, skipped, temps, held = self._ask(("all",))
        self._end()
        self.backend.stale_temps = list(temps)
        # the children index is not sent: it costs more to ship than a no-op run
        # needs; the planner builds it if it looks
        return Snapshot(
            nodes=Rows(rows), incomplete=incomplete, skipped=skipped, holds_excluded=held
        )

    def close(self) -> None:
        """Ends the child (idempotent)."""
        if self.pid:
            with contextlib.suppress(OSError):
                _send(self._req, ("bye",))
            self._end()

    def _end(self) -> None:
        if not self.pid:
            return
        for f in (self._req, self._res):
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
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
