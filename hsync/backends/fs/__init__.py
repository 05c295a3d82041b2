"""The filesystem backend: a directory tree on a POSIX filesystem (``PATH`` or
``file:///PATH``).

Reading never follows a symlink below the root (the root itself may be one); names are
``str`` with surrogate escapes, so a name that is not UTF-8 survives. Writing publishes
content written whole into an unnamed file (``O_TMPFILE``), then linked in under its
name (or, where the filesystem makes no unnamed file, under a temporary name,
``TMP_PREFIX``, renamed over the final one), and never writes through a symlink.
``FsBackend`` is thin; the work is in the modules, one per job: ``posix`` (the
syscalls), ``scan`` (listing, rows, scans, the sorted walk), ``apply`` and ``copy`` (a
batch of ops), ``child`` (the digest scan, perhaps in a forked child), ``hashing`` (bulk
hashing for verify), ``watcher`` (inotify).
"""

from __future__ import annotations

import os
import stat as _stat
from _thread import get_ident  # threading's, without importing threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from io import FileIO

from ..._values import evolve
from ...backend import (
    ApplyOptions,
    ApplyResult,
    Capabilities,
    ContentSource,
    Credentials,
    DigestScan,
    Hashed,
    IdNames,
    Keep,
    Relation,
    Role,
    ScanOptions,
    WatchSink,
    local_path,
)
from ...cancel import NEVER, Cancel
from ...errors import BackendError, NodeError, SourceChanged, UsageError
from ...model import Key, Node, Op, Row, Snapshot
from . import meta as _meta
from .child import LocalScan, ScanChild
from .posix import (
    CHUNK,
    TMP_PREFIX,
    check_key,
    is_tmp_name,
    open_file_beneath,
    open_root,
    root_device,
)
from .scan import ALL_KINDS, Flags, stat_row
from .scan import scan as scan_tree
from .scan import walk_sorted as walk_tree

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from concurrent.futures import Executor
    from contextlib import AbstractContextManager
    from typing import Any, BinaryIO

    from ...filters import Exclude  # annotations only: an agent serves without it
    from .copy import Workers

__all__ = ["TMP_PREFIX", "FsBackend"]

_DEFAULTS = ApplyOptions()


class FsBackend:
    """A local directory tree. Picklable: a copy reopens the same location (verify hands
    ``hash_many`` to a worker process)."""

    def __init__(
        self,
        location: str,
        *,
        role: Role = "source",
        credentials: Credentials | None = None,
        exclude_attrs: tuple[str, ...] = (),
    ) -> None:
        if credentials is not None:
            raise UsageError(f"{location}: this kind of endpoint takes no credentials")
        path = location[len("file://"):] if location.startswith("file://") else location
        if not path:
            raise BackendError(f"{location}: empty path")
        self.url = location
        self.role: Role = role
        self.root = os.path.abspath(path)
        """The absolute path of the root (as given: it may be a symlink)."""
        self.capabilities = Capabilities(deferred_flush=True, renames_touch_parents=True,
                                         streamed_ops=True)
        self._dev = root_device(self.root)
        """The root's device, fixed at open: identities are inode numbers on it."""
        self._stale: list[Key] = []
        """hsync's temporaries the last scan found: the next apply removes them."""
        self._flags: Flags = ALL_KINDS
        """What the scans keep besides files, directories and symlinks (``configure_scan``)."""
        self._meta: _meta.Reader | None = None
        """What rows carry beyond the basic payload (``metadata``); None: nothing."""
        self._workers: dict[int, Workers] = {}
        """Copy workers kept (``keep_workers``), by the thread that keeps them."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (type(self), self.url, self.role))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, role={self.role!r})"

    # -- Spooling: content arriving over a link waits on this filesystem ----------------
    def spool_dir(self) -> str | None:
        """The root; before the first batch has made it, its parent (a directory made
        there is on the same filesystem)."""
        if self.role == "source":
            return None
        for path in (self.root, os.path.dirname(self.root.rstrip("/"))):
            if path and os.path.isdir(path):
                return path
        return None

    # -- Backend --------------------------------------------------------------------------
    def canonical_url(self) -> str:
        return f"file://{os.path.realpath(self.root)}"

    def root_error(self) -> str | None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            if self.role != "destination":
                return "does not exist"
            # created by the first batch: it needs its parent (never created here)
            if os.path.lexists(self.root):
                return "is not a directory"
            if not os.path.isdir(os.path.dirname(self.root.rstrip("/")) or "/"):
                return "has no parent directory (it is created, its parent is not)"
            return None
        except OSError as e:
            return e.strerror or str(e)
        if not _stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        if not os.access(self.root, os.R_OK | os.X_OK):
            return "is not readable"
        return None

    def root_id(self) -> Hashable | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def is_empty(self) -> bool:
        try:
            with os.scandir(self.root) as it:
                return all(is_tmp_name(e.name) for e in it)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def scan(
        self, subtree: Key = (), *, exclude: Exclude | None = None, cancel: Cancel = NEVER
    ) -> Snapshot:
        temps: list[Key] = []
        snap = scan_tree(self.root, self._dev, subtree, exclude, cancel, temps,
                         flags=self._flags, meta=self._meta)
        n = len(subtree)
        self._stale = [k for k in self._stale if k[:n] != subtree] + temps
        return snap

    def stat(self, key: Key) -> Node | None:
        """A special file the scans leave out (a socket, ...) counts as absent."""
        row = stat_row(self.root, self._dev, key, self._flags, self._meta)
        if row is None or len(row) == 1:
            return None
        return Node(*row)

    def read(self, key: Key) -> BinaryIO:
        if not key:
            raise IsADirectoryError(f"{self.root}: the root has no content")
        check_key(key)
        root_fd = open_root(self.root)
        try:
            fd = open_file_beneath(root_fd, key)
        except NodeError as e:
            raise SourceChanged(str(e)) from None
        finally:
            os.close(root_fd)
        if not _stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SourceChanged(f"{'/'.join(key)} is no longer a regular file")
        # unbuffered: its readers read chunks of a megabyte, or all of it (a buffered
        # reader cost a push of 100,000 small files 0.3 s to make)
        return FileIO(fd, "rb")

    def digest(self, key: Key) -> bytes | None:
        import xxhash

        h = xxhash.xxh3_128()
        try:
            with self.read(key) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except (OSError, NodeError):
            return None
        return h.digest()

    def apply_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = _DEFAULTS,
        cancel: Cancel = NEVER,
        on_done: Callable[[Op], None] | None = None,
    ) -> ApplyResult:
        local = (source.root, source._dev) if isinstance(source, FsBackend) else None
        from .apply import Batch  # not imported by a run that applies nothing

        batch = Batch(self.root, self._stale, source, local, final, options, cancel, on_done,
                      self._meta, self._workers.get(get_ident()))
        return batch.run(ops)

    # -- KeepsWorkers -----------------------------------------------------------------------
    def keep_workers(
        self, early: Executor | None = None, bounded: bool = False
    ) -> AbstractContextManager[None]:
        """Copy workers kept over the batches this thread applies while the block runs
        (``copy.Workers``): ``early``'s (``copy.forked_early``: shut down when the block
        ends), or forked by the first batch that needs them where no other thread runs.
        ``bounded``: at most AHEAD_CHUNKS chunks queued and not yet copied (a stop
        waits for them).
        Per thread: a daemon's pairs each have their own."""
        return _KeptWorkers(self._workers, early, bounded)

    def close(self) -> None:
        pass

    # -- ScanConfigurable -------------------------------------------------------------------
    def configure_scan(self, options: ScanOptions) -> None:
        """FIFOs and devices kept or left out; devices only where this process may
        create them (root): else a scan leaves them out, on both sides, so a sync
        neither fails on them nor deletes them."""
        self._flags = (
            options.specials, options.specials and ALL_KINDS[1], options.one_file_system
        )

    # -- Related --------------------------------------------------------------------------
    def relation(self, other_url: str) -> Relation | None:
        """By resolved paths (and, for "same", by inode: a bind mount, a hard-linked
        directory name)."""
        other = local_path(other_url)
        if other is None:
            return None
        mine, theirs = os.path.realpath(self.root), os.path.realpath(other)
        if mine == theirs:
            return "same"
        if theirs.startswith(mine.rstrip("/") + "/"):
            return "inside"
        if mine.startswith(theirs.rstrip("/") + "/"):
            return "contains"
        try:
            if os.path.samefile(mine, theirs):
                return "same"
        except OSError:
            pass
        return None

    # -- SortedWalk, Streaming --------------------------------------------------------------
    def walk_sorted(
        self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
    ) -> Iterator[tuple[Key, Row | tuple[str] | None]]:
        return walk_tree(self.root, self._dev, exclude, cancel, self._flags, self._meta)

    def stream(
        self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
    ) -> Iterator[tuple[Key, Node | str | None]]:
        for key, row in walk_tree(self.root, self._dev, exclude, cancel, self._flags, self._meta):
            if row is None:
                yield key, None
            elif len(row) == 1:
                yield key, row[0]
            else:
                yield key, Node(*row)

    # -- DigestScanning -----------------------------------------------------------------
    def digest_scan(
        self, exclude: Exclude | None = None, *, background: bool = False,
        cancel: Cancel = NEVER,
    ) -> DigestScan:
        """``background``: in a forked child (where only one thread runs), else here,
        when first asked. The temporaries it finds are removed by the next apply."""
        root, dev, flags, meta = self.root, self._dev, self._flags, self._meta

        def scanner(
            digests: dict[Key, int], trees: dict[Key, int]
        ) -> tuple[Snapshot, list[Key]]:
            temps: list[Key] = []
            return (scan_tree(root, dev, (), exclude, cancel, temps, digests, flags, meta,
                              trees),
                    temps)

        if background:
            return ScanChild(scanner, self._remember)
        return LocalScan(scanner, self._remember)

    def _remember(self, temps: list[Key]) -> None:
        self._stale = list(temps)

    # -- Metadata -------------------------------------------------------------------------
    def id_names(self) -> IdNames:
        return _meta.id_names()

    def metadata(self, wanted: Keep) -> Keep:
        """A destination holds what its filesystem supports and this process may set
        (``meta.supported``); a source reads what this process may read."""
        if self.role == "destination":
            got = _meta.supported(self.root, wanted)
        else:
            admin = _meta.is_admin()
            got = evolve(wanted, xattrs=frozenset(
                ns for ns in wanted.xattrs if ns == "user" or admin
            ))
        self._meta = _meta.Reader(got, source=self.role == "source")
        return got

    # -- CtimeClock ----------------------------------------------------------------------
    def ctime_lag_ns(self) -> int:
        return _meta.ctime_lag_ns(self.root)

    # -- BulkHashing ----------------------------------------------------------------------
    def hash_many(self, keys: Sequence[Key]) -> list[Hashed]:
        from . import hashing

        return hashing.hash_files(self.root, keys)

    def look(self, key: Key) -> Any:
        from . import hashing

        return hashing.look(self.root, key)

    # -- Watchable ------------------------------------------------------------------------
    def watch(self, sink: WatchSink) -> FsWatcher:
        from .watcher import FsWatcher  # watchdog is imported by a watch only

        return FsWatcher(self.root, sink)


def _reopen(cls: type[FsBackend], url: str, role: Role) -> FsBackend:
    return cls(url, role=role)


if TYPE_CHECKING:  # what FsBackend claims, checked by mypy (rclone's var _ fs.Mover = &Fs{})
    from ...backend import (
        Backend,
        BackendFactory,
        BulkHashing,
        DigestScanning,
        KeepsWorkers,
        Metadata,
        Related,
        ScanConfigurable,
        SortedWalk,
        Streaming,
        Watch,
        Watchable,
    )
    from .watcher import FsWatcher

    _factory: BackendFactory = FsBackend
    _backend: Backend = FsBackend("/")
    _related: Related = FsBackend("/")
    _scan_configurable: ScanConfigurable = FsBackend("/")
    _keeps_workers: KeepsWorkers = FsBackend("/")
    _sorted_walk: SortedWalk = FsBackend("/")
    _streaming: Streaming = FsBackend("/")
    _digest_scanning: DigestScanning = FsBackend("/")
    _local_scan: DigestScan = LocalScan(lambda d, t: (Snapshot(), []), lambda t: None)
    _child_scan: DigestScan = ScanChild(lambda d, t: (Snapshot(), []), lambda t: None)
    _bulk_hashing: BulkHashing = FsBackend("/")
    _watchable: Watchable = FsBackend("/")
    _metadata: Metadata = FsBackend("/")

    def _watch(w: FsWatcher) -> Watch:
        return w


class _KeptWorkers:
    """``FsBackend.keep_workers``'s block (a class: ``contextlib`` is not on a no-op's
    path). A nested block on the same thread uses the outer block's workers."""

    def __init__(self, kept: dict[int, Workers], early: Executor | None, bounded: bool) -> None:
        self._kept = kept
        self._early = early
        self._bounded = bounded
        self._mine: Workers | None = None

    def __enter__(self) -> None:
        from .copy import AHEAD_CHUNKS, Workers

        me = get_ident()
        if me not in self._kept:
            self._mine = self._kept[me] = Workers(
                self._early, AHEAD_CHUNKS if self._bounded else None)

    def __exit__(self, *exc: object) -> None:
        if self._mine is not None:
            del self._kept[get_ident()]
            self._mine.close()
