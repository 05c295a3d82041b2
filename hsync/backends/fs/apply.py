"""Applying a batch of ops to a filesystem destination (``FsBackend.apply_batch``).

File content is published under a temporary name and renamed (``copy``); copies run on
a pool (threads, or forked processes for many small files from a local tree) in chunks,
and every op that changes the structure (a move, a delete) first waits for the copies
in flight. Every write names its target relative to a directory reached beneath the
root without following a symlink. Directory mode and mtime are set once their children
settled, deepest first. Files are deleted on a small pool of threads (an ``unlink``
waits on the disk's journal, not on Python), and every other op but a directory's update
first waits for the deletes in flight (a directory is removed once its files are gone;
a directory's update only marks it: its metadata is set once the deletes are done).
One ``syncfs`` per batch (or one ``fsync`` per file; a batch of a few nodes: an
``fsync`` of each node and directory it changed, ``durable``), perhaps left running
for the caller (``defer_durable``). A full disk stops the batch (``DestinationFull``);
a cancel token stops it between ops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial

from ...backend import ApplyOptions, ApplyResult, ContentSource
from ...cancel import Cancel
from ...errors import DestinationFull, NodeError, TargetChanged, problem_kind
from ...model import (
    CREATE,
    DELETE,
    DIR,
    FILE,
    MOVE,
    SPECIAL,
    SYMLINK,
    UPDATE,
    Key,
    Node,
    Op,
    Problem,
    Snapshot,
)
from .copy import Copies, LocalTree, Outcome, Workers
from .dirs import Touched
from .durable import flush_nodes, touched
from .meta import Reader, chown, proc_path, safe_mode, set_xattrs
from .posix import (
    FULL,
    O_META,
    check_key,
    open_beneath,
    open_root,
    rename_into,
    rename_noreplace,
    rmdir,
    syncfs,
    tmp_name,
    unlink_quiet,
)
from .workers import Job, Threads

UNLINK_THREADS = 8
"""Files deleted at once: an ``unlink`` mostly waits on the disk (the inode, the
journal), so a few in flight overlap those waits."""


def in_background(flush: Callable[[], None]) -> Callable[[], None]:
    """``flush`` started in a thread of its own; what this returns waits for it to end
    and raises what it raised (a flush that failed fails its batch, deferred or not)."""
    job = Job(flush)
    threading.Thread(target=job.run, name="hsync-syncfs").start()

    def wait() -> None:
        job.result()

    return wait


class Batch:
    """One batch of ops on the destination tree at ``root`` (``run`` runs it once)."""

    def __init__(
        self,
        root: str,
        stale_temps: list[Key],
        source: ContentSource,
        local: LocalTree | None,
        final: Snapshot,
        options: ApplyOptions,
        cancel: Cancel,
        on_done: Callable[[Op], None] | None,
        meta: Reader | None = None,
        workers: Workers | None = None,
    ) -> None:
        self.root = root
        self.prefixes = meta.prefixes if meta is not None else ()
        """The attribute namespaces this destination keeps."""
        self.stale_temps = stale_temps
        self.final = final
        self.fsync = options.fsync
        self.hard_links = options.hard_links
        self.defer_durable = options.defer_durable
        self.cancel = cancel
        self.on_done = on_done
        self.result = ApplyResult()
        self.dirs = Touched(self.prefixes)
        self.told: set[int] = set()
        """The ops (``id``) told to ``on_done`` as their copy landed (``landed``)."""
        self.telling = threading.Lock()
        self.tell_failed = False
        self.copies = Copies(
            root, source, local, options.fsync, self.open_dir, options.copy_unstable,
            self.prefixes, options.sparse, workers,
            landed=self.landed if on_done is not None else None,
        )
        self.lock = threading.Lock()
        self.full: tuple[Key, OSError] | None = None
        self._root_fd: int | None = None
        self.groups: dict[object, list[Key]] = {}
        self.linked: list[Op] = []  # file ops done by a link, after the copies
        self.unlinks: list[tuple[Op, Job]] = []  # file deletes in flight
        self._unlinker: Threads | None = None

    # -- the batch ----------------------------------------------------------------------
    def run(self, ops: Sequence[Op]) -> ApplyResult:
        if self.cancel.cancelled():
            self.not_run(ops)  # nothing written, not even a stale temporary removed
            return self.result
        try:
            self.clean_temps()
            if self.hard_links:
                self.groups = link_groups(self.final)
            with self.copies.pool(ops):
                try:
                    ran = self.run_ops(ops)
                finally:
                    self.unlinked()
                    if self._unlinker is not None:
                        self._unlinker.close()
                        self._unlinker = None
                self.barrier()
                self.run_linked()
            self.not_run(ops[ran:])
            self.result.problems += self.dirs.settle(self.final, self.root_fd)
            self.make_durable()
        finally:
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None
        if self.full is not None:
            key, e = self.full
            what = {
                errno.EROFS: "is read-only",
                errno.ENOSPC: "is full",
                errno.EDQUOT: "is over its quota",
            }.get(e.errno or 0, "is not writable")
            hint = ("free some space and run again" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "nothing more was written")
            raise DestinationFull(
                f"{self.root}: the destination {what} ({e.strerror or e}: "
                f"{'/'.join(key) or '.'}); the run stopped: {hint}"
            )
        return self.result

    def run_ops(self, ops: Sequence[Op]) -> int:
        """Run ``ops`` until the end, a full disk or the cancel token; how many ran."""
        for i, op in enumerate(ops):
            if self.full is not None:
                return len(ops)  # the disk is full: stop, keep what is done
            if self.cancel.cancelled():
                return i
            try:
                self.one(op)
            except PermissionError as e:
                self.retry_writable(op, e, partial(self.one, op))
            except (OSError, NodeError) as e:
                self.fail(op, e)
        return len(ops)

    def run_linked(self) -> None:
        """The files that link to another name of their source inode (after the copies,
        so those names have landed)."""
        for i, op in enumerate(self.linked):
            if self.full is not None:
                return
            if self.cancel.cancelled():
                self.not_run(self.linked[i:])
                return
            try:
                self.link_or_copy(op)
            except (OSError, NodeError) as e:
                self.fail(op, e)

    def not_run(self, ops: Sequence[Op]) -> None:
        if self.full is not None:
            return  # DestinationFull says it
        for op in ops:
            self.result.problems.append(
                Problem(op.key, f"{op.op} not run: cancelled", op=op.op, kind="cancelled")
            )

    def make_durable(self) -> None:
        """One flush of the destination's filesystem, unless each file had its fsync; a
        batch that touched a few nodes flushes only those (``durable``)."""
        if self.fsync or not (self.result.done or self.dirs.keys):
            return
        few = touched(self.result.done, self.dirs.keys)
        flush = partial(syncfs, self.root) if few is None else partial(
            flush_nodes, self.root, few)
        if self.defer_durable:
            # the flush waits on the disk, not on Python: the caller's own work
            # (recording the history) runs meanwhile
            self.result.durable = in_background(flush)
        else:
            flush()

    def clean_temps(self) -> None:
        """Remove temporary files left by an interrupted publish (found by the scan of
        the destination: regular files whose names ``tmp_name`` made, random part
        included; a user's ``.hsync-tmp-notes`` is an ordinary node)."""
        for key in self.stale_temps:
            try:
                with self.parent(key) as (dfd, name):
                    os.unlink(name, dir_fd=dfd)
                self.dirs.touch(key)
            except (FileNotFoundError, TargetChanged):
                continue  # gone, or its directory is not what was scanned: not ours
            except OSError as e:
                self.result.problems.append(Problem(
                    key, f"cannot remove a stale temporary file: {e.strerror}",
                    kind=problem_kind(e),
                ))
                self.stop_if_full(key, e)
        self.stale_temps.clear()

    # -- outcomes -----------------------------------------------------------------------
    def stop_if_full(self, key: Key, e: BaseException) -> None:
        """A fault of the whole destination (full, over quota, read-only, its root not
        writable): no later op can succeed either; the run stops (SPEC 5)."""
        if not isinstance(e, OSError) or self.full is not None:
            return
        if e.errno in FULL or (
            e.errno in (errno.EACCES, errno.EPERM) and len(key) <= 1
            and not os.access(self.root, os.W_OK | os.X_OK)
        ):
            self.full = (key, e)

    def fail(self, op: Op, e: BaseException) -> None:
        if isinstance(e, OSError):
            msg = f"{op.op} failed: {e.strerror or e}"
            if e.filename and isinstance(e.filename, str):
                rel = os.path.relpath(e.filename, self.root)
                if not rel.startswith(".."):
                    msg += f" ({rel})"
        elif isinstance(e, TargetChanged):
            msg = f"{op.op} skipped: {e}"
        else:
            msg = f"{op.op} failed: {e}"
        self.result.problems.append(Problem(op.key, msg, op=op.op, kind=problem_kind(e)))
        self.stop_if_full(op.key, e)

    def ok(self, op: Op, nbytes: int = 0) -> None:
        with self.lock:
            self.result.done.append(op)
            self.result.bytes_copied += nbytes
        if self.on_done is not None:
            with self.telling:
                self._tell(op)  # a chunk's callback may come after this: told once

    def landed(self, ops: list[Op], outcomes: list[Outcome]) -> None:
        """A chunk of copies landed (called from the thread that finished it): each file
        copied is told to ``on_done`` now, not at the barrier that collects the batch's
        copies, so a progress bar moves as the files arrive (a batch of a pull holds up
        to 1 GiB, which a slow link takes minutes to bring); ``ok`` does not tell it
        again, nor this one what ``ok`` told first (a future's waiter may run before
        its callbacks). A copy that failed is left to the barrier; so is every op after an
        ``on_done`` that raised here (a closed stdout under ``-i``): ``ok`` calls it
        again on the batch's own thread, where what it raises ends the run as before,
        not in a pool's thread that would only log it."""
        with self.telling:
            for op, outcome in zip(ops, outcomes, strict=True):
                if self.tell_failed:
                    return
                if isinstance(outcome, int):
                    try:
                        self._tell(op)
                    except BaseException:
                        return

    def _tell(self, op: Op) -> None:
        """``on_done(op)`` unless ``op`` was told already (``telling`` held); what it
        raises stops the pool's threads telling the rest (``tell_failed``)."""
        assert self.on_done is not None
        if id(op) in self.told:
            return
        try:
            self.on_done(op)
        except BaseException:
            self.tell_failed = True
            raise
        self.told.add(id(op))

    def retry_writable(self, op: Op, error: OSError, again: Callable[[], object]) -> None:
        """A directory without owner write (a read-only tree, a module cache) refuses
        creates, renames and deletes in it: make it owner-writable, retry once, and let
        settle_directories put its mode back (rsync does the same)."""
        keys = {op.key[:-1]}
        if op.to is not None:
            keys.add(op.to[:-1])
            if op.kind == DIR:
                keys.add(op.key)  # a directory moving to a new parent rewrites its ".."
        if not any([self.unlock(key) for key in keys]):
            self.fail(op, error)
            return
        try:
            again()
        except (OSError, NodeError) as e:
            self.fail(op, e)

    def unlock(self, key: Key) -> bool:
        """Make directory ``key`` owner-writable; True when it was not."""
        try:
            fd = open_beneath(self.root_fd(), key)
        except (OSError, NodeError):
            return False
        try:
            mode = os.fstat(fd).st_mode
            if mode & stat.S_IWUSR:
                return False
            os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IWUSR | stat.S_IXUSR)
        except OSError:
            return False
        finally:
            os.close(fd)
        self.dirs.unlocked_from(key, stat.S_IMODE(mode))
        return True

    # -- where things are ---------------------------------------------------------------
    def root_fd(self) -> int:
        """The destination root, opened once per batch."""
        if self._root_fd is None:
            with self.lock:  # the copy threads open directories beneath it too
                if self._root_fd is None:
                    self._root_fd = open_root(self.root)
        return self._root_fd

    def open_dir(self, key: Key) -> int:
        """A descriptor of the directory at ``key``, reached from the root as ``parent``
        reaches one (the caller closes it)."""
        return open_beneath(self.root_fd(), key)

    @contextlib.contextmanager
    def parent(self, key: Key) -> Iterator[tuple[int, str]]:
        """``(descriptor of key's parent directory, key's name)``: every write names its
        target relative to a directory reached from the root without following a
        symlink, so a directory swapped for a symlink mid-run is never written through
        and no path is longer than one name (PATH_MAX does not apply)."""
        assert key, "the root has no parent"
        check_key(key)
        fd = self.open_dir(key[:-1])
        try:
            yield fd, key[-1]
        finally:
            os.close(fd)

    def expect(self, key: Key, old: Node | None) -> None:
        """Before a destructive op: the destination still holds what was planned."""
        if old is None:
            return
        if key:
            with self.parent(key) as (dfd, name):
                self.expect_in(dfd, name, key, old)
            return
        _expect_stat(os.stat(self.root), old)

    def expect_in(self, dfd: int, name: str, key: Key, old: Node | None) -> None:
        """``expect`` of ``key``, named ``name`` in the open directory ``dfd``."""
        if old is None:
            return
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise TargetChanged(f"{'/'.join(key)} vanished from the destination") from None
        _expect_stat(st, old)

    # -- the ops ------------------------------------------------------------------------
    def one(self, op: Op) -> None:
        if op.op == DELETE and op.kind != DIR:
            self.delete_soon(op)
            return
        if op.op == UPDATE and op.kind == DIR:
            # its metadata is only marked here and set once the batch's deletes are
            # done (``settle``): the deletes in flight need not be waited for
            self.update(op)
            return
        self.unlinked()  # what follows may depend on those files being gone
        if op.op == CREATE:
            self.create(op)
        elif op.op == UPDATE:
            self.update(op)
        elif op.op == MOVE:
            self.move(op)
        elif op.op == DELETE:
            self.delete(op)

    def create(self, op: Op) -> None:
        self.dirs.touch(op.key)
        if op.kind == DIR:
            self.mkdir(op.key)
            self.dirs.mark(op.key)
            self.ok(op)
        elif op.kind == FILE:
            self.queue(op)
        elif op.kind == SYMLINK:
            assert op.node is not None and op.node.target is not None
            with self.parent(op.key) as (dfd, name):
                os.symlink(op.node.target, name, dir_fd=dfd)
                self.set_symlink_metadata(op.node, dfd, name)
            self.ok(op)
        elif op.kind == SPECIAL:
            self.make_special(op)
        else:
            raise TargetChanged(f"cannot create a {op.kind} on a filesystem")

    def move(self, op: Op) -> None:
        self.barrier()
        assert op.to is not None
        self.expect(op.key, op.old)
        with self.parent(op.key) as (ofd, old), self.parent(op.to) as (nfd, new):
            rename_noreplace(old, new, ofd, nfd)
        self.dirs.touch(op.key)
        self.dirs.follow(op.key, op.to)
        self.dirs.touch(op.to)
        self.ok(op)

    def delete(self, op: Op) -> None:
        self.barrier()
        self.expect(op.key, op.old)
        with self.parent(op.key) as (dfd, name):
            if op.kind == DIR:
                rmdir(name, dfd)
            else:
                os.unlink(name, dir_fd=dfd)
        self.dirs.touch(op.key)
        self.ok(op)

    def delete_soon(self, op: Op) -> None:
        """A file delete, run on the pool; ``unlinked`` collects the outcomes."""
        self.barrier()
        self.root_fd()  # opened here, once, not by the pool's threads
        if self._unlinker is None:
            self._unlinker = Threads(UNLINK_THREADS, "hsync-rm")
        self.dirs.touch(op.key)
        self.unlinks.append((op, self._unlinker.submit(partial(self.unlink, op))))

    def unlink(self, op: Op) -> None:
        with self.parent(op.key) as (dfd, name):
            self.expect_in(dfd, name, op.key, op.old)  # one descriptor for both
            os.unlink(name, dir_fd=dfd)

    def unlink_now(self, op: Op) -> None:
        self.unlink(op)
        self.ok(op)

    def unlinked(self) -> None:
        """Wait for the file deletes in flight; each is done or a problem."""
        pending, self.unlinks = self.unlinks, []
        for op, job in pending:
            try:
                job.result()
            except PermissionError as e:
                self.retry_writable(op, e, partial(self.unlink_now, op))
                continue
            except (OSError, NodeError) as e:
                self.fail(op, e)
                continue
            self.ok(op)

    def mkdir(self, key: Key) -> None:
        if not key:
            try:
                os.mkdir(self.root, 0o700)
            except FileExistsError:
                if not os.path.isdir(self.root):
                    raise
            self.dirs.mark(key)
            return
        with self.parent(key) as (dfd, name):
            try:
                # owner-writable until its children are in; final mode set in settle
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise

    def update(self, op: Op) -> None:
        if op.kind == DIR:
            # a directory whose mode, owner and attributes are those it has: its mtime
            # only (a name in it created or deleted since the last sync)
            old, node = op.old, op.node
            same = old is not None and node is not None and (
                old.mode == node.mode and old.data == node.data)
            self.dirs.mark(op.key, full=not same)
            self.ok(op)
        elif op.kind == FILE and op.content:
            self.expect(op.key, op.old)
            self.dirs.touch(op.key)  # the publish renames over it: the directory changes
            self.queue(op)
        elif op.kind == FILE:
            self.expect(op.key, op.old)
            self.set_file_metadata(op)
        elif op.kind == SYMLINK and op.content:
            self.expect(op.key, op.old)
            self.replace_symlink(op)
        elif op.kind == SYMLINK:  # its mtime, owner, group or attributes only
            self.expect(op.key, op.old)
            assert op.node is not None
            with self.parent(op.key) as (dfd, name):
                self.set_symlink_metadata(op.node, dfd, name)
            self.ok(op)
        elif op.kind == SPECIAL:
            self.expect(op.key, op.old)
            self.make_special(op)
        else:
            raise TargetChanged(f"cannot update a {op.kind} on a filesystem")

    def set_file_metadata(self, op: Op) -> None:
        node = op.node
        assert node is not None
        with self.parent(op.key) as (dfd, name):
            fd = os.open(name, O_META, dir_fd=dfd)  # never a symlink's target
            try:
                # the owner before the mode (see ``copy.publish``)
                os.fchmod(fd, safe_mode(node.mode, node.data, chown(fd, node.data)))
                set_xattrs(fd, node.data, self.prefixes)
                os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
            finally:
                os.close(fd)
        self.ok(op)

    def replace_symlink(self, op: Op) -> None:
        assert op.node is not None and op.node.target is not None
        with self.parent(op.key) as (dfd, name):
            tmp = tmp_name()
            os.symlink(op.node.target, tmp, dir_fd=dfd)
            try:
                self.set_symlink_metadata(op.node, dfd, tmp)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError:
                unlink_quiet(tmp, dfd)
                raise
        self.dirs.touch(op.key)
        self.ok(op)

    def make_special(self, op: Op) -> None:
        """A FIFO or a device node (rsync -D) made under a temporary name with its
        owner, group (before the mode, as a file's: a set-id bit is kept only with the
        owner or group it belongs to, ``meta.safe_mode``), mode, attributes and mtime,
        then renamed to its final name (over the old one for an update: a special file
        has no content to keep, it is made again). Never opened."""
        node = op.node
        assert node is not None
        with self.parent(op.key) as (dfd, name):
            tmp = tmp_name()
            try:
                os.mknod(tmp, stat.S_IFMT(node.mode) | 0o600, node.size, dir_fd=dfd)
            except PermissionError as e:
                if stat.S_ISFIFO(node.mode):
                    raise
                # root without CAP_MKNOD (a container): the destination cannot hold
                # devices; one warning (the same line for every batch), not one per node
                why = (f"{self.root}: device nodes cannot be created here (mknod: "
                       f"{e.strerror}); they were left out")
                if why not in self.result.warnings:
                    self.result.warnings.append(why)
                return
            try:
                # the temporary is ours (a random name): by name is not raced
                owned = chown(tmp, node.data, dfd)
                os.chmod(tmp, safe_mode(stat.S_IMODE(node.mode), node.data, owned), dir_fd=dfd)
                set_xattrs(proc_path(dfd, tmp), node.data, self.prefixes)
                os.utime(tmp, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dfd,
                         follow_symlinks=False)
                rename_into(tmp, name, dfd, replace=op.op == UPDATE)
            except BaseException:
                unlink_quiet(tmp, dfd)
                raise
        self.dirs.touch(op.key)
        self.ok(op)

    def set_symlink_metadata(self, node: Node, dfd: int, name: str) -> None:
        """A new symlink's owner, group and attributes (lchown; the attribute calls by a
        path whose last component is not followed), then its mtime (last: lchown and
        the attribute calls move its ctime, not its mtime, but keep the order safe)."""
        if node.data is not None:
            chown(name, node.data, dfd)
            set_xattrs(proc_path(dfd, name), node.data, self.prefixes)
        _symlink_mtime(name, dfd, node.mtime_ns)

    def link_or_copy(self, op: Op) -> None:
        """A file with other names for its source inode (``--hard-links``): link it to one
        of them that the destination already holds as the source has it, else copy it
        (then the next names link to it). Runs after the batch's copies have landed."""
        node = op.node
        assert node is not None
        for other in self.groups.get(node.identity, ()):
            if other != op.key and self.link_to(op, node, other):
                self.dirs.touch(op.key)
                self.ok(op)
                return
        self.ok(op, self.copies.copy(op))

    def link_to(self, op: Op, node: Node, other: Key) -> bool:
        """Publish ``op.key`` as a new name of ``other`` when the destination holds
        ``other`` as the source has ``node``; False when it does not."""
        try:
            with self.parent(other) as (ofd, oname):
                st = os.stat(oname, dir_fd=ofd, follow_symlinks=False)
                if not (
                    stat.S_ISREG(st.st_mode)
                    and st.st_size == node.size
                    and st.st_mtime_ns == node.mtime_ns
                    and stat.S_IMODE(st.st_mode) == node.mode
                ):
                    return False
                if op.old is not None:
                    self.expect(op.key, op.old)
                with self.parent(op.key) as (dfd, name):
                    tmp = tmp_name()
                    os.link(oname, tmp, src_dir_fd=ofd, dst_dir_fd=dfd, follow_symlinks=False)
                    try:
                        rename_into(tmp, name, dfd, replace=op.op == UPDATE)
                    except BaseException:
                        unlink_quiet(tmp, dfd)
                        raise
        except (FileNotFoundError, TargetChanged):
            return False
        return True

    # -- copies -------------------------------------------------------------------------
    def queue(self, op: Op) -> None:
        """Queue a content copy (a file with other names for its source inode, under
        ``--hard-links``, waits for the copies: its other names may land first)."""
        assert op.node is not None
        if self.groups and op.node.identity in self.groups:
            self.linked.append(op)
        else:
            self.copies.queue(op)

    def barrier(self) -> None:
        """Wait for every copy in flight (before an op that changes the structure)."""
        for op, outcome in self.copies.collect():
            if isinstance(outcome, PermissionError):
                self.retry_writable(op, outcome, partial(self.copy_again, op))
            elif isinstance(outcome, BaseException):
                self.fail(op, outcome)
            else:
                self.ok(op, outcome)

    def copy_again(self, op: Op) -> None:
        self.ok(op, self.copies.copy(op))


def _expect_stat(st: os.stat_result, old: Node) -> None:
    """``TargetChanged`` unless ``st`` is still the node that was planned (``old``)."""
    mode = st.st_mode
    if old.kind == DIR:
        ok = stat.S_ISDIR(mode)
    elif old.kind == FILE:
        ok = stat.S_ISREG(mode) and st.st_size == old.size and st.st_mtime_ns == old.mtime_ns
    elif old.kind == SPECIAL:
        ok = stat.S_IFMT(mode) == stat.S_IFMT(old.mode)
    else:
        ok = stat.S_ISLNK(mode)
    if not ok:
        raise TargetChanged("the destination changed since it was scanned")


def _symlink_mtime(name: str, dfd: int, mtime_ns: int) -> None:
    """Set a symlink's own mtime (utimensat with AT_SYMLINK_NOFOLLOW), never its
    target's."""
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)


def link_groups(final: Snapshot) -> dict[object, list[Key]]:
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
