"""Publishing file content on a filesystem destination: a temporary name in the target
directory, the content copied in (kernel-side where possible), then renamed to its
final name; never when the source is not what was scanned or changes meanwhile.

``Copies`` queues a batch's copies in chunks and runs them on a pool: threads, or
forked worker processes for many small files from a local tree (``copy_chunk`` is
module level and picklable for them).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ...backend import ContentSource, Protocol
from ...errors import NodeError, SourceChanged
from ...model import CREATE, FILE, UPDATE, Key, Op
from .meta import (
    SETID,
    Meta,
    chown,
    chown_needed,
    inherits_none,
    safe_mode,
    set_xattrs,
    xattrs_needed,
)
from .posix import (
    O_READ,
    check_key,
    copy_fd,
    copy_sparse,
    copy_worker,
    create_whole,
    link_unnamed,
    new_file,
    open_beneath,
    open_root,
    rename_into,
    start_writeback,
    umask,
    unlink_quiet,
)

TYPE_CHECKING = False  # not typing's: a sync that deletes files does not import typing
if TYPE_CHECKING:  # the pools start only when there is something to copy
    from concurrent.futures import Executor, Future
    from typing import cast
else:

    def cast(_type: object, value: object) -> object:
        return value

UMASK_SAFE = 0o777
COPY_THREADS = 3
COPY_PROCESSES = 4
"""Forked copy workers for many small files from a local tree. More than the cores:
a worker waits on the disk (a create, a page read or written back) most of the time,
and four in flight overlap those waits (bench/HISTORY.md, "The append over ssh written
once, and the initial copy under load": 20k files, two interleaved A/Bs, 7 rounds)."""
PROCESS_MIN_FILES = 2000
CHUNK_FILES = 64
CHUNK_BYTES = 4 << 20
AHEAD_CHUNKS = 16
"""Chunks handed to the pool and not yet copied, at most, in a watch's first pass
(``Workers.ahead``): its walk is streamed into one batch, and a stop (the walk ends at
a cancel) waits for these only, about what one of its ``batch_ops`` batches held
(1,024 files); four workers stay fed. ``sync`` holds none back."""

WRITEBACK_MIN = 256 << 10
"""A published file of at least this many bytes has its writeback started before it
is closed (``posix.start_writeback``), so the batch's flush finds it written or under
way. Not a smaller one: the call moves the file's block allocation and its write's
submission into the copy, one small write per file where the flush would submit them
together, and on this project's machine 5,000 files of 6 kB took longer to copy with
it than the flush it saved (0.2-0.4 s), where 200 files of 1 MiB took 0.74 / 0.51 s
instead of 1.26 / 0.65 s (bench/HISTORY.md, "Writeback started while copying")."""

LocalTree = tuple[str, int]
"""A source that is a local tree: its root and its root's device (copied by path)."""
OpenDir = Callable[[Key], int]
"""``key`` -> a descriptor of the directory at ``key`` on the destination (the caller
closes it)."""
Opened = dict[Key, tuple[int, "tuple[int, int] | None", bool]]
"""The destination directories a chunk's copies have open: each one's descriptor, and
what is known of a file created there (``made_there``)."""
Outcome = int | BaseException
"""The bytes copied, or why not."""

CopyItem = tuple[
    str, int, Key, str, Key, str, int, int, int, "int | str | None", bool, "Meta | None",
    tuple[str, ...],
]
"""One file to copy from a local tree: (source root, source root's device, source key,
destination root, destination parent key, final name, size, mtime_ns, mode, identity,
replace, the node's data (owner, group, attributes), the attribute prefixes kept)."""


def copy_chunk(
    items: list[CopyItem], fsync: bool, unstable: bool = False, sparse: bool = True
) -> list[int | BaseException]:
    """Copy ``items`` (neighbours, mostly: each directory, on either side, is opened once
    per chunk beneath its root); one outcome per item, the bytes copied or the
    exception. No move or delete runs on the destination while a chunk is copied.
    ``unstable``: publish files that change meanwhile, ``sparse``: keep holes
    (``publish``)."""
    out: list[int | BaseException] = []
    roots: dict[str, int] = {}
    # (on each side: within one chunk, no move or delete runs meanwhile)
    sources: dict[Key, int] = {}
    parents: dict[Key, int] = {}

    def directory(opened: dict[Key, int], root: str, key: Key) -> int:
        rfd = roots.get(root)
        if rfd is None:
            rfd = roots[root] = open_root(root)
        fd = opened[key] = open_beneath(rfd, key)
        return fd

    made: dict[Key, tuple[tuple[int, int] | None, bool]] = {}  # ``made_there``
    euid, egid = os.geteuid(), os.getegid()
    osopen = os.open
    try:
        for (src_root, src_dev, src_key, root, parent, name, size, mtime_ns, mode,
             identity, replace, meta, prefixes) in items:
            try:
                dfd = parents.get(parent)
                if dfd is None:
                    dfd = directory(parents, root, parent)
                    made[parent] = made_there(dfd, prefixes, euid, egid)
                src_dir = src_key[:-1]
                sfd = sources.get(src_dir)
                if sfd is None:
                    sfd = directory(sources, src_root, src_dir)
                fd_in = osopen(src_key[-1], O_READ, dir_fd=sfd)
                try:
                    out.append(publish(fd_in, dfd, name, size, mtime_ns, mode, identity,
                                       src_dev, fsync, replace, unstable, meta, prefixes,
                                       sparse, *made[parent]))
                finally:
                    os.close(fd_in)
            except (OSError, NodeError) as e:
                out.append(e)
    finally:
        for fd in (*sources.values(), *parents.values()):
            os.close(fd)
        for fd in roots.values():
            os.close(fd)
    return out


def new_owner(dfd: int, euid: int, egid: int) -> tuple[int, int] | None:
    """The owner and group of a file this process creates in directory ``dfd`` where
    they are sure: its own, when the directory's group is its own too (a set-gid
    directory, or a filesystem mounted ``grpid``, hands down the directory's group);
    None where they are not."""
    return (euid, egid) if os.fstat(dfd).st_gid == egid else None


def made_there(
    dfd: int, prefixes: tuple[str, ...], euid: int, egid: int
) -> tuple[tuple[int, int] | None, bool]:
    """What ``publish`` may take as known of a file created in directory ``dfd``: its
    owner (``new_owner``), and whether it gets no attribute (``meta.inherits_none``,
    asked only where attributes are kept: ``prefixes``)."""
    return new_owner(dfd, euid, egid), bool(prefixes) and inherits_none(dfd)


_INO = (1 << 64) - 1
"""The inode number in an identity's low 64 bits."""


class HeldWhole(Protocol):
    """Content held in memory whole (a small file that crossed a link): ``held()``
    gives its bytes, and ``_publish_made`` may make the file in one call."""

    def held(self) -> bytes: ...


class WritesItself(Protocol):
    """Content a source makes rather than holds (a delta applied to the destination's
    old file): ``publish`` has it written once, straight into the temporary file it
    renames, instead of copying it from a file it was first written to. A
    ``ContentSource.read`` may return one (it is a file object too, for any other
    reader)."""

    size: int
    """The size of the content (as the source had it when it was read)."""
    mtime_ns: int
    """The source file's mtime when it was read."""

    def write_into(self, fd: int) -> int:
        """Write the content to ``fd`` (empty, at offset 0); the bytes written.
        ``SourceChanged`` when it cannot be made as the source had it (the caller
        removes what was written)."""
        ...


class LinksItself(Protocol):
    """Content that arrived in an unnamed file on the destination's filesystem (a big
    file pushed: ``remote.protocol.SpoolFile``): ``publish_linked`` gives that file a
    name instead of copying it. A file object too, for any other reader."""

    linkable: bool
    """Its last reader may link it in (no other reader copies it afterwards)."""

    def fileno(self) -> int: ...


def publish(
    fd_in: int | WritesItself, dfd: int, final: str, size: int, mtime_ns: int, mode: int,
    identity: int | str | None, src_dev: int, fsync: bool, replace: bool,
    unstable: bool = False, meta: Meta | None = None, prefixes: tuple[str, ...] = (),
    sparse: bool = True, owner: tuple[int, int] | None = None, bare: bool = False,
) -> int:
    """Write what ``fd_in`` holds to a temporary name in directory ``dfd``, rename it to
    ``final`` there (over it only when ``replace``: a create never clobbers a node that
    appeared since the scan); not if the source is not what was scanned (its size,
    mtime, and its identity when ``identity`` is an inode number on a source tree whose
    root is on ``src_dev``) or changes meanwhile. Returns the bytes copied.

    ``unstable`` (``ApplyOptions.copy_unstable``): a file that grew or changed since it
    was scanned, or changes while it is read, is published anyway: its first ``size``
    bytes as read, with ``mtime_ns`` (a log being appended to: the content it had at
    the scan). Only a file now shorter than ``size``, or another node, is refused.

    ``meta`` (the node's data): the owner and group set before the mode (chown clears
    set-id bits; a set-id bit is kept only with the owner or group it belongs to), the
    attributes in ``prefixes``' namespaces after it.

    ``owner``: the owner and group a file created in ``dfd`` gets (``new_owner``),
    when known: no ``chown`` where they are the ones asked for. ``bare``: a file
    created in ``dfd`` gets no attribute (``meta.inherits_none``): none is listed.

    ``sparse`` (``ApplyOptions.sparse``): a source with holes (fewer blocks allocated
    than its size) is copied extent by extent and its holes stay holes; a dense file
    costs nothing more (no seek).

    ``fd_in`` may be content that writes itself (``WritesItself``, a patched file): it
    is written straight into the temporary file, once; its own check (a delta's
    digest) stands for the comparison of the source before and after the copy.

    The hot path of an initial sync: fstat, create, copy, utime, close, fstat, rename
    per file, and as little Python as that allows."""
    if not isinstance(fd_in, int):
        return _publish_made(fd_in, dfd, final, size, mtime_ns, mode, fsync, replace,
                             unstable, meta, prefixes, owner, bare)
    before = os.fstat(fd_in)
    if (
        (before.st_size < size if unstable else before.st_size != size)
        or (before.st_mtime_ns != mtime_ns and not unstable)
        or not stat.S_ISREG(before.st_mode)
        or (  # the inode and device an identity holds (see ``scan``)
            type(identity) is int
            and (identity & _INO != before.st_ino or (identity >> 128 or src_dev) != before.st_dev)
        )
    ):
        raise SourceChanged("the source file changed since it was scanned")
    fd_out, tmp = new_file(dfd, mode & 0o777)
    try:
        try:
            if sparse and before.st_blocks * 512 < size:
                copied = _copy_holes(fd_in, fd_out, size)
            else:
                copied = copy_fd(fd_in, fd_out, size)
            if unstable and copied > size:  # it grew: what it held at the scan
                os.ftruncate(fd_out, size)
                copied = size
            if copied >= WRITEBACK_MIN and not fsync:  # written while the copy goes on
                start_writeback(fd_out)
            _finish(fd_out, mode, mtime_ns, fsync, meta, prefixes, owner, bare)
            after = os.fstat(fd_in)
            if unstable:
                if copied != size:
                    raise SourceChanged("the source file shrank while it was copied")
            elif (
                copied != before.st_size
                or after.st_size != before.st_size
                or after.st_mtime_ns != before.st_mtime_ns
            ):
                raise SourceChanged("the source file changed while it was copied")
            if tmp is None:  # unnamed: linked in while open
                link_unnamed(fd_out, final, dfd, replace=replace)
        finally:
            os.close(fd_out)
        if tmp is not None:  # named: renamed once closed
            rename_into(tmp, final, dfd, replace=replace)
    except BaseException:
        if tmp is not None:
            unlink_quiet(tmp, dfd)
        raise
    return copied


def publish_linked(
    made: LinksItself, dfd: int, final: str, size: int, mtime_ns: int, mode: int,
    fsync: bool, replace: bool, unstable: bool, meta: Meta | None,
    prefixes: tuple[str, ...],
) -> int | None:
    """``publish`` of content in an unnamed file that can be linked into ``dfd``: its
    owner, mode, attributes and mtime set as a copy's would be, then it is linked in as
    ``final`` (an update: under a temporary name, renamed over). Returns the bytes
    published, or None
    where a file made in ``dfd`` could differ from it in what ``meta`` does not set
    (``dfd`` hands down an attribute or a group it has not got), or it cannot be
    linked there: the caller copies it."""
    fd = made.fileno()
    st = os.fstat(fd)
    if (st.st_size < size if unstable else st.st_size != size) or (
        st.st_mtime_ns != mtime_ns and not unstable
    ):
        raise SourceChanged("the source file changed since it was scanned")
    if os.listxattr(fd) or not inherits_none(dfd):
        return None  # a default ACL or a label: as a file created in dfd gets them
    if (meta is None or meta[0] is None or meta[1] is None) and (  # owner not all set:
        (st.st_uid, st.st_gid) != new_owner(dfd, os.geteuid(), os.getegid())  # as made there
    ):
        return None
    if unstable and st.st_size > size:
        os.ftruncate(fd, size)
    # as created by O_CREATE with the node's permission bits, then as any copy
    os.fchmod(fd, mode & 0o777 & ~umask())
    _finish(fd, mode, mtime_ns, fsync, meta, prefixes, None)
    try:
        link_unnamed(fd, final, dfd, replace=replace)
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.ENOENT, errno.EOPNOTSUPP, errno.EPERM, errno.EMLINK):
            # another filesystem, or no linking there: copied
            return None
        raise
    made.linkable = False  # one name only
    return size


def _publish_made(
    made: WritesItself, dfd: int, final: str, size: int, mtime_ns: int, mode: int,
    fsync: bool, replace: bool, unstable: bool, meta: Meta | None,
    prefixes: tuple[str, ...], owner: tuple[int, int] | None, bare: bool,
) -> int:
    """``publish`` of content that writes itself into the temporary file. A small
    file held in memory whole (``HeldWhole``), created where nothing but its mode and
    mtime is to be set, is made in one call (``create_whole``)."""
    if (made.size < size if unstable else made.size != size) or (
        made.mtime_ns != mtime_ns and not unstable
    ):
        raise SourceChanged("the source file changed since it was scanned")
    held = getattr(made, "held", None)
    if held is not None and size < WRITEBACK_MIN and not (replace or fsync or unstable) \
            and not chown_needed(meta, owner if not mode & SETID else None) \
            and not xattrs_needed(meta, prefixes, bare=bare):
        mode = safe_mode(mode, meta, True)
        if create_whole(dfd, final, held(), mode,
                        mode if mode & ~UMASK_SAFE or umask() & mode else -1, mtime_ns):
            return size
    fd_out, tmp = new_file(dfd, mode & 0o777)
    try:
        try:
            copied = made.write_into(fd_out)
            if copied != made.size:
                raise SourceChanged("the source file changed while it was copied")
            if unstable and copied > size:
                os.ftruncate(fd_out, size)
                copied = size
            if copied >= WRITEBACK_MIN and not fsync:
                start_writeback(fd_out)
            _finish(fd_out, mode, mtime_ns, fsync, meta, prefixes, owner, bare)
            if tmp is None:  # unnamed: linked in while open
                link_unnamed(fd_out, final, dfd, replace=replace)
        finally:
            os.close(fd_out)
        if tmp is not None:  # named: renamed once closed
            rename_into(tmp, final, dfd, replace=replace)
    except BaseException:
        if tmp is not None:
            unlink_quiet(tmp, dfd)
        raise
    return copied


def _finish(
    fd_out: int, mode: int, mtime_ns: int, fsync: bool, meta: Meta | None,
    prefixes: tuple[str, ...], owner: tuple[int, int] | None, bare: bool = False,
) -> None:
    """A published file's owner, mode, attributes and mtime (and fsync), as
    ``publish`` sets them."""
    # the owner before the mode: a user's set-uid file never becomes a set-uid
    # file of whoever runs hsync (root), whatever was kept or refused
    # (a set-id file is always given its owner: were the creator's ids not what
    # the filesystem made, root squashed on NFS, the bit would go to another)
    has = owner if not mode & SETID else None
    mode = safe_mode(mode, meta, chown(fd_out, meta, has=has))
    if mode & ~UMASK_SAFE or umask() & mode:
        os.fchmod(fd_out, mode)
    set_xattrs(fd_out, meta, prefixes, bare=bare)
    os.utime(fd_out, ns=(mtime_ns, mtime_ns))
    if fsync:
        os.fsync(fd_out)


def _copy_holes(fd_in: int, fd_out: int, size: int) -> int:
    """``copy_sparse``, or a plain copy where the source's filesystem cannot seek to its
    data (then the destination has no holes either)."""
    try:
        return copy_sparse(fd_in, fd_out, size)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENXIO, errno.EOPNOTSUPP):
            raise
    os.ftruncate(fd_out, 0)
    os.lseek(fd_in, 0, os.SEEK_SET)
    os.lseek(fd_out, 0, os.SEEK_SET)
    return copy_fd(fd_in, fd_out, size)


def process_pool() -> Executor:
    """COPY_PROCESSES forked copy workers (``copy_chunk``'s), each dying with the
    thread that forked it (``posix.copy_worker``: with this process when it is the main
    thread). Only where no other thread runs: a lock another thread holds at the fork
    stays held in the child forever."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        COPY_PROCESSES,
        mp_context=multiprocessing.get_context("fork"),
        initializer=copy_worker,
        initargs=(os.getpid(),),
    )


def _started() -> None:
    """Nothing: the task that makes a pool fork its workers now."""


def forked_early() -> Executor | None:
    """Copy workers forked now, while this process has no other thread, for copies that
    come later from a thread (a watch's first pass: its observer's thread and the
    daemon's pair threads run by then, so it could not fork them itself); None where
    another thread already runs or there is no fork. A pool with the fork method forks
    all its workers at its first task (Python >= 3.11: ``_launch_processes``); the
    caller shuts it down."""
    if threading.active_count() != 1 or not hasattr(os, "fork"):
        return None
    executor = process_pool()
    executor.submit(_started).result()
    return executor


class Workers:
    """Copy worker processes kept over the batches of one long run of copies (an
    initial copy cut into many batches: a watch's first pass) instead of a pool per
    batch: ``forked_early``'s, or forked by the first batch that needs them (the
    batches so far hold PROCESS_MIN_FILES files, or one is streamed) where no other
    thread runs; None (threads, per batch) else. Its workers end at ``close``."""

    def __init__(self, executor: Executor | None = None, ahead: int | None = None) -> None:
        self.files = 0
        self.executor = executor
        self.ahead = ahead
        """Chunks queued and not yet copied, at most (None: no bound): what a stop
        waits for."""

    def take(self, files: int, many: bool) -> Executor | None:
        """The kept pool for a batch of ``files`` copies (``many``: enough for a pool of
        processes on its own); None: this batch takes threads."""
        self.files += files
        if (
            self.executor is None
            and (many or self.files >= PROCESS_MIN_FILES)
            and threading.active_count() == 1
            and hasattr(os, "fork")
        ):
            self.executor = process_pool()
        return self.executor

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


class Copies:
    """The content copies of one batch: queued, handed to a pool a chunk at a time (up
    to CHUNK_FILES files or CHUNK_BYTES bytes: one hand-off per chunk, not per file),
    collected at a barrier."""

    def __init__(
        self, root: str, source: ContentSource, local: LocalTree | None, fsync: bool,
        open_dir: OpenDir, unstable: bool = False, prefixes: tuple[str, ...] = (),
        sparse: bool = True, workers: Workers | None = None,
        landed: Callable[[list[Op], list[Outcome]], None] | None = None,
    ) -> None:
        self.root = root
        self.landed = landed
        """Told each chunk's outcomes as soon as it is copied (from the thread that
        finished it), before the barrier collects them: a progress bar's bytes."""
        self.workers = workers
        """Copy workers kept over several batches (``Workers``), or None."""
        self.prefixes = prefixes
        """The attribute namespaces the destination keeps (``meta.Reader.prefixes``)."""
        self.src = source
        self.local = local
        self.fsync = fsync
        self.open_dir = open_dir
        self.unstable = unstable
        self.sparse = sparse
        self.inflight: list[tuple[list[Op], Future[list[Outcome]]]] = []
        self.settled = 0
        """``inflight``'s first chunks known to be copied (``Workers.ahead``)."""
        self.chunk: list[Op] = []
        self.chunk_bytes = 0
        self.executor: Executor | None = None

    @contextmanager
    def pool(self, ops: Sequence[Op]) -> Iterator[None]:
        """Where the copies of ``ops`` run, while the block runs. Many small files from a
        local tree: worker processes, so the per-file Python work runs on every core
        instead of queueing for the GIL; else (a few files, a source that is not a local
        tree, threads already running, where a fork is unsafe) a thread pool."""
        # a streamed batch (``Capabilities.streamed_ops``): the ops walked so far; it is
        # streamed only when the tree has more nodes than a small batch
        known: Sequence[Op] = getattr(ops, "known", ops)
        files = sum(1 for op in known if op.kind == FILE and op.op in (CREATE, UPDATE))
        if not files and known is ops:  # nothing will be queued: no pool (a no-op run
            # imports none); a stream's later ops may hold files though its first do not
            yield
            return
        many = files >= PROCESS_MIN_FILES or known is not ops
        if self.local is not None and self.workers is not None:
            kept = self.workers.take(files, many)
            if kept is not None:  # the kept workers: not shut down with this batch
                self.executor = kept
                try:
                    yield
                finally:
                    self.executor = None
                return
        executor: Executor
        if (self.local is not None and many and threading.active_count() == 1
                and hasattr(os, "fork")):
            executor = process_pool()
        else:
            from concurrent.futures import ThreadPoolExecutor

            executor = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="hsync-copy")
        with executor:
            self.executor = executor
            try:
                yield
            finally:
                self.executor = None

    def queue(self, op: Op) -> None:
        """``TargetChanged`` now (for this op) when its name could leave the tree."""
        assert op.node is not None
        check_key(op.key)
        self.chunk.append(op)
        self.chunk_bytes += op.node.size
        if len(self.chunk) >= CHUNK_FILES or self.chunk_bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.chunk:
            assert self.executor is not None
            if self.local is not None:  # picklable work: a process pool may take it
                fut = self.executor.submit(
                    copy_chunk, [self.item(op) for op in self.chunk], self.fsync,
                    self.unstable, self.sparse,
                )
            else:
                fut = self.executor.submit(self.copy_many, self.chunk)
            self.inflight.append((self.chunk, fut))
            if self.landed is not None:
                chunk = self.chunk
                fut.add_done_callback(lambda f: self._landed(chunk, f))
            self.chunk = []
            self.chunk_bytes = 0
            ahead = self.workers.ahead if self.workers is not None else None
            if ahead is not None and len(self.inflight) - self.settled > ahead:
                # a stop (the walk ends at a cancel) waits for these only
                from concurrent.futures import wait

                while len(self.inflight) - self.settled > ahead:
                    wait((self.inflight[self.settled][1],))
                    self.settled += 1

    def _landed(self, ops: list[Op], fut: Future[list[Outcome]]) -> None:
        if self.landed is not None and not fut.cancelled() and fut.exception() is None:
            self.landed(ops, fut.result())

    def collect(self) -> list[tuple[Op, Outcome]]:
        """Wait for every copy queued; each op with its outcome."""
        self.flush()
        out: list[tuple[Op, Outcome]] = []
        for ops, fut in self.inflight:
            out += zip(ops, fut.result(), strict=True)
        self.inflight = []
        self.settled = 0
        return out

    def item(self, op: Op) -> CopyItem:
        node = op.node
        assert node is not None and self.local is not None
        src_root, src_dev = self.local
        return (
            src_root, src_dev, op.key, self.root, op.key[:-1], op.key[-1],
            node.size, node.mtime_ns, node.mode, node.identity, op.op == UPDATE,
            node.data, self.prefixes,
        )

    def copy_many(self, ops: list[Op]) -> list[Outcome]:
        """Copies for a source that is not a local tree (streams from ``read``). Each
        destination directory is opened once per chunk (its files are neighbours,
        mostly), as ``copy_chunk`` does: no move or delete runs on the destination
        while a chunk is copied."""
        out: list[Outcome] = []
        opened: Opened = {}
        try:
            for op in ops:
                try:
                    out.append(self._streamed(op, opened))
                except (OSError, NodeError) as e:
                    out.append(e)
        finally:
            for fd, _, _ in opened.values():
                os.close(fd)
        return out

    def copy(self, op: Op) -> int:
        """Publish the source file at ``op.key`` now; return the bytes copied."""
        assert op.node is not None
        check_key(op.key)  # refuses names that could leave either tree
        if self.local is not None:
            outcome = copy_chunk([self.item(op)], self.fsync, self.unstable, self.sparse)[0]
        else:
            outcome = self.copy_many([op])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _streamed(self, op: Op, opened: Opened) -> int:
        """``copy`` of a file streamed from ``read``, into a directory of ``opened``."""
        node = op.node
        assert node is not None
        stream = self.src.read(op.key)
        try:
            parent = op.key[:-1]
            where = opened.get(parent)
            if where is None:
                dfd = self.open_dir(parent)
                try:
                    where = (dfd, *made_there(dfd, self.prefixes, os.geteuid(), os.getegid()))
                except BaseException:
                    os.close(dfd)
                    raise
                opened[parent] = where
            dfd, owner, bare = where
            if getattr(stream, "linkable", False):  # spooled unnamed near the destination
                done = publish_linked(cast(LinksItself, stream), dfd, op.key[-1],
                                      node.size, node.mtime_ns, node.mode, self.fsync,
                                      op.op == UPDATE, self.unstable, node.data,
                                      self.prefixes)
                if done is not None:
                    return done
            if hasattr(stream, "write_into"):  # made as it is written: once, into the
                # temporary file
                return publish(cast(WritesItself, stream), dfd, op.key[-1], node.size,
                               node.mtime_ns, node.mode, None, 0, self.fsync,
                               op.op == UPDATE, self.unstable, node.data, self.prefixes,
                               owner=owner, bare=bare)
            # a stream's descriptor says nothing of the source's identity
            return publish(stream.fileno(), dfd, op.key[-1], node.size, node.mtime_ns,
                           node.mode, None, 0, self.fsync, op.op == UPDATE, self.unstable,
                           node.data, self.prefixes, self.sparse, owner, bare)
        finally:
            stream.close()
