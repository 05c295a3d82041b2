"""The POSIX layer of the filesystem backend: the syscalls the standard library lacks
(renameat2, openat2, syncfs, prctl) through one libc handle, the open flags, and the
small helpers every part of the backend shares.

Nothing here knows about snapshots or ops: names, descriptors and errors only. A
directory below a root is opened one way, ``open_beneath``; a name that could leave the
tree is refused by ``check_key``.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat

from ...errors import TargetChanged
from ...model import NEEDS_ROOT, Key

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Iterator
    from typing import Any
else:  # signal's C half, the same functions and constants: the Python module
    # builds its enums at import (enum with it, 2-4 ms of a small sync's start-up)
    import _signal

TMP_PREFIX = ".hsync-tmp-"
"""Temporary files of an unfinished publish: never synced, removed by the next run."""

CHUNK = 1 << 20
"""Bytes per read or kernel copy call."""

# O_NONBLOCK: a FIFO put where a file was must not hang the run (no effect on files)
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_ROOT = O_DIR & ~os.O_NOFOLLOW
"""The root itself may be a symlink the user gave; nothing below it is followed."""
O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# a file's metadata is set through a descriptor: O_NOFOLLOW refuses a symlink put there,
# O_NONBLOCK a FIFO
O_META = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Errors that concern the whole destination: no later write can succeed either."""


_LIBC: dict[str, Any] = {}
"""libc's functions by name (None where missing), loaded through ``ctypes`` when one is
first called: a no-op sync calls none of them, and ``ctypes`` costs it 2-3 ms to
import (issue 15 item 1)."""


def _fn(name: str) -> Any:
    try:
        return _LIBC[name]
    except KeyError:
        pass
    import ctypes

    if "" not in _LIBC:  # the one libc handle (None where there is none to load)
        try:
            _LIBC[""] = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC[""] = None
    fn = getattr(_LIBC[""], name, None) if _LIBC[""] is not None else None
    if fn is not None and name == "syscall":
        fn.restype = ctypes.c_long
    _LIBC[name] = fn
    return fn


def _errno() -> int:
    """``errno`` as the last call through ``_fn`` left it."""
    import ctypes

    return ctypes.get_errno()

_STATX_BTIME = 0x800
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_STATX_SIZE = 256  # struct statx, as the kernel defines it
_BTIME_AT = 80  # offset of stx_btime (struct statx_timestamp: s64 tv_sec, u32 tv_nsec)


def birth_time(name: str, dir_fd: int) -> int:
    """The birth time (ns) of ``name`` in the directory ``dir_fd`` (``""``: the
    directory itself), never following a symlink; 0 where the filesystem keeps none or
    statx is missing. With the inode number it makes an identity that dies with its
    node (SPEC 1); ``hsync._walk`` reads the same field for every listed name, and
    this one with ``_walk.btime`` where it was built (no ctypes: a small no-op reads
    the birth time of each root)."""
    try:
        from ..._walk import btime
    except ImportError:
        pass
    else:
        return btime(dir_fd, name)
    statx = _fn("statx")
    if statx is None:
        return 0
    import ctypes
    import struct

    buf = ctypes.create_string_buffer(_STATX_SIZE)
    flags = _AT_SYMLINK_NOFOLLOW | (_AT_EMPTY_PATH if not name else 0)
    if statx(dir_fd, os.fsencode(name), flags, _STATX_BTIME, buf) != 0:
        return 0
    mask, = struct.unpack_from("<I", buf, 0)
    if not mask & _STATX_BTIME:
        return 0
    sec, nsec = struct.unpack_from("<qI", buf, _BTIME_AT)
    return sec * 1_000_000_000 + nsec


# -- names --------------------------------------------------------------------------------
def check_key(key: Key) -> str:
    """``key`` as a relative path; ``TargetChanged`` for a name that could leave the
    tree (empty, ``.``, ``..``, a slash or a NUL in it)."""
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
    return rel


def join(root: str, key: Key) -> str:
    """The absolute path of ``key`` below ``root`` (for messages and the watcher)."""
    return "/".join((root.rstrip("/"), *key)) if key else root


_counter = itertools.count()


_HEX = frozenset("0123456789abcdef")


_process: list[tuple[str, int]] = []  # (this process's id in hex, a random 32-bit salt)


def _forked() -> None:
    _process.clear()


os.register_at_fork(after_in_child=_forked)


def tmp_name() -> str:
    """A temporary name for content being written: the prefix, the process and a
    counter (unique among live writers), and a random part, so a name a user gave a
    file of their own is never mistaken for one (``is_tmp_name``). No system call per
    name: the process id and a random salt are read once per process, and the random
    part is the salt mixed with the counter (it need not be secret, only unguessable
    for names made by hand)."""
    if not _process:
        _process.append((f"{os.getpid():x}", int.from_bytes(os.urandom(4), "little")))
    pid, salt = _process[0]
    n = next(_counter)
    return f"{TMP_PREFIX}{pid}-{n:x}-{(salt ^ (n * 0x9E3779B1)) & 0xFFFFFFFF:08x}"


def is_tmp_name(name: str) -> bool:
    """True for a name ``tmp_name`` makes; any other name is an ordinary node, even
    one that starts with ``TMP_PREFIX``."""
    if not name.startswith(TMP_PREFIX):
        return False
    # TMP_PREFIX, then hex fields of 1-16, 1-16 and 8 digits joined by "-" (no ``re``:
    # a sync does not import it)
    parts = name[len(TMP_PREFIX):].split("-")
    return (
        len(parts) == 3 and 0 < len(parts[0]) <= 16 and 0 < len(parts[1]) <= 16
        and len(parts[2]) == 8 and _HEX.issuperset(parts[0] + parts[1] + parts[2])
    )


def unlink_quiet(name: str, dfd: int) -> None:
    try:  # noqa: SIM105 (contextlib is not on a no-op's path)
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def special_kind(mode: int, specials: bool = True) -> str:
    """What a special file left out of a scan is, for the report (``specials``: FIFOs
    and devices were asked for, so a device skipped is one this process cannot
    create)."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device" + (NEEDS_ROOT if specials else "")
    if stat.S_ISBLK(mode):
        return "block device" + (NEEDS_ROOT if specials else "")
    return "special file"


_umask_value: list[int] = []


def umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    if not _umask_value:
        old = os.umask(0o022)
        os.umask(old)
        _umask_value.append(old)
    return _umask_value[0]


def root_device(root: str) -> int:
    """The device of ``root``, or of its nearest existing ancestor when it is absent
    (a destination created later lands there: it cannot be a mount point yet)."""
    path = root
    while True:
        try:
            return os.stat(path).st_dev
        except OSError:
            up = os.path.dirname(path)
            if up == path:
                return 0
            path = up


# -- opening ------------------------------------------------------------------------------
_RESOLVE = 0x04 | 0x08  # RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH


def _load_openat2() -> Any:
    """openat2(O_DIR, RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH) through libc's syscall(2),
    as a function ``(root_fd, path bytes) -> (fd, errno)``; None without syscall.
    ``hsync._walk`` makes the call where it was built (no ctypes: a small no-op opens
    its directories below the roots with it)."""
    try:
        from ..._walk import openat2 as call
    except ImportError:
        pass
    else:
        return lambda root_fd, raw, flags=O_DIR: call(root_fd, raw, flags, _RESOLVE)
    syscall = _fn("syscall")
    if syscall is None:
        return None
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = (
            ("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        )

    nr = ctypes.c_long(437)  # the same number on every architecture (Linux 5.6)
    how = OpenHow(O_DIR, 0, _RESOLVE)
    how_ref, how_size = ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
    c_long, get_errno = ctypes.c_long, ctypes.get_errno

    def openat2(root_fd: int, raw: bytes, flags: int = O_DIR) -> tuple[int, int]:
        ref = how_ref if flags == O_DIR else ctypes.byref(OpenHow(flags, 0, _RESOLVE))
        fd = syscall(nr, c_long(root_fd), raw, ref, how_size)
        return (fd, 0) if fd >= 0 else (-1, get_errno())

    return openat2


_openat2: list[Any] = []
"""``[_load_openat2()]`` once loaded; ``[None]`` once it is known to be missing."""
_SWAPPED = (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
_SWAPPED_MSG = (
    "{}: no longer a directory (a symlink or a file was put there): nothing written "
    "through it (nor read)"
)


def _in_one(root_fd: int, path: str, flags: int, swapped: str) -> int | None:
    """``path`` below ``root_fd`` opened with ``flags`` in one openat2 (no symlink
    followed, the tree not left); None where that cannot be (no openat2, or a seccomp
    filter refusing it: then never tried again; a path over PATH_MAX): the caller
    goes name by name. ``TargetChanged`` (saying ``swapped``) for a symlink or a
    non-directory on the way."""
    raw = os.fsencode(path)
    if not _openat2:
        _openat2.append(_load_openat2())
    call = _openat2[0]
    if call is None or len(raw) >= 4000:
        return None
    for _ in range(3):  # EAGAIN: a rename raced the lookup; try again
        fd, err = call(root_fd, raw, flags)
        if fd >= 0:
            return int(fd)
        if err == errno.EAGAIN:
            continue
        if err in (errno.ENOSYS, errno.EPERM):  # no openat2 (or a seccomp filter)
            _openat2[0] = None
            return None
        if err == errno.ENAMETOOLONG:
            return None
        if err in _SWAPPED:
            raise TargetChanged(swapped)
        raise OSError(err, os.strerror(err), path)
    return None


def open_beneath(root_fd: int, rel: Key) -> int:
    """A new descriptor of directory ``rel`` below the directory ``root_fd``, reached
    without following any symlink and without leaving it: openat2(RESOLVE_NO_SYMLINKS |
    RESOLVE_BENEATH) in one call, else (an old kernel, a path over PATH_MAX) one
    ``openat(O_NOFOLLOW)`` per name. ``FileNotFoundError`` when a name is absent;
    ``TargetChanged`` when one on the way is a symlink or not a directory."""
    if not rel:
        return os.dup(root_fd)
    path = "/".join(rel)
    got = _in_one(root_fd, path, O_DIR, _SWAPPED_MSG.format(path))
    if got is not None:
        return got
    fd = os.dup(root_fd)
    try:
        for name in rel:
            nfd = os.open(name, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        if e.errno in _SWAPPED:
            raise TargetChanged(_SWAPPED_MSG.format(path)) from None
        raise
    return fd


def open_file_beneath(root_fd: int, key: Key) -> int:
    """A new descriptor (``O_READ``) of the node at ``key`` below the directory
    ``root_fd``, reached without following any symlink: one openat2 where the kernel
    has it (a file read for its content: before, its directory was opened, then the
    file in it, then the directory closed), else ``open_beneath`` and an ``openat``.
    ``FileNotFoundError`` when a name is absent; ``TargetChanged`` when one on the way
    is a symlink or not a directory, or the node itself is a symlink."""
    path = "/".join(key)
    got = _in_one(root_fd, path, O_READ,
                  f"{path}: a symlink on the way to it, or in its place: not read")
    if got is not None:
        return got
    dfd = open_beneath(root_fd, key[:-1])
    try:
        return os.open(key[-1], O_READ, dir_fd=dfd)
    finally:
        os.close(dfd)


def open_root(root: str) -> int:
    """A descriptor of the root directory (following the root itself if a symlink)."""
    return os.open(root, O_ROOT)


# -- publishing ---------------------------------------------------------------------------
def rename_noreplace(old: str, new: str, old_fd: int, new_fd: int) -> None:
    """rename(2) that fails instead of replacing what is at ``new`` (renameat2 with
    RENAME_NOREPLACE; where the kernel or filesystem lacks it, a check then a rename).
    Names are relative to the directory descriptors. ``TargetChanged`` when ``new``
    exists."""
    renameat2 = _fn("renameat2")
    if renameat2 is not None:
        if renameat2(old_fd, os.fsencode(old), new_fd, os.fsencode(new), 1) == 0:
            return
        err = _errno()
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


O_UNNAMED = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
_UNNAMED: list[bool] = []
"""Whether this system links unnamed files in (``O_TMPFILE`` and ``/proc/self/fd``)."""
_NO_UNNAMED: set[int] = set()
"""Devices whose filesystem makes no unnamed file (files go under a temporary name)."""


def new_file(dfd: int, mode: int) -> tuple[int, str | None]:
    """A new empty file, open for writing, for content on its way into directory
    ``dfd``; and its temporary name, or None where it has none: an unnamed file
    (``O_TMPFILE``) that ``link_unnamed`` links in once written, so nothing is ever seen
    half-written and a crash leaves nothing behind (one change of the
    directory where a temporary name and a rename make two; creates about 30% cheaper
    here). Where the filesystem cannot (a network or FUSE filesystem, an old kernel),
    under a ``tmp_name``, renamed once closed (``rename_into``)."""
    if _unnamed_in(dfd):
        try:
            return os.open(".", O_UNNAMED, mode, dir_fd=dfd), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            _NO_UNNAMED.add(os.fstat(dfd).st_dev)
    tmp = tmp_name()
    return os.open(tmp, O_CREATE, mode, dir_fd=dfd), tmp


_CREATE: list[Any] = []
"""``[hsync._walk.create]`` once looked up; ``[None]`` where it was not built."""


def create_whole(dfd: int, final: str, data: bytes, mode: int, chmod: int,
                 mtime_ns: int) -> bool:
    """A new file of ``data`` (a small file held in memory whole) published as ``final``
    in ``dfd`` at once, as ``new_file``, a write, ``fchmod`` to ``chmod`` (-1: none),
    ``utime`` and ``link_unnamed`` (never over a node that is there: ``TargetChanged``)
    would, in one call of the C helper (``hsync._walk.create``) instead of six from
    Python. False, with nothing made, where it cannot: the helper was not built, or
    the filesystem makes no unnamed file (the caller publishes it the long way)."""
    if not _CREATE:
        try:
            from ..._walk import create as call
        except ImportError:
            call = None  # type: ignore[assignment]
        _CREATE.append(call)
    call = _CREATE[0]
    if call is None or not _unnamed_in(dfd):
        return False
    err, stage = call(dfd, final, data, mode & 0o777, chmod, mtime_ns)
    if not err:
        return True
    if stage == 0 and err in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
        _NO_UNNAMED.add(os.fstat(dfd).st_dev)
        return False
    if stage == 2 and err == errno.EEXIST:
        raise TargetChanged("a node appeared on the destination since the scan")
    raise OSError(err, os.strerror(err), final)


def _unnamed_in(dfd: int) -> bool:
    """Whether files are made unnamed in directory ``dfd`` (``new_file``)."""
    if not _UNNAMED:
        _UNNAMED.append(O_UNNAMED != os.O_WRONLY | os.O_CLOEXEC
                        and os.path.isdir("/proc/self/fd"))
    return _UNNAMED[0] and not (_NO_UNNAMED and os.fstat(dfd).st_dev in _NO_UNNAMED)


def link_unnamed(fd: int, final: str, dfd: int, *, replace: bool) -> None:
    """Publish the written unnamed file ``fd`` (``new_file``, before it is closed) as
    ``final`` in ``dfd``: over what is there (``replace``, an update: linked under a
    temporary name, then renamed) or only onto a free name (a create:
    ``TargetChanged`` when a node appeared there)."""
    if not replace:
        try:
            os.link(f"/proc/self/fd/{fd}", final, dst_dir_fd=dfd)
        except FileExistsError:
            raise TargetChanged("a node appeared on the destination since the scan") from None
        return
    tmp = tmp_name()
    os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=dfd)
    try:
        os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        unlink_quiet(tmp, dfd)
        raise


def rename_into(tmp: str, final: str, dfd: int, *, replace: bool) -> None:
    """Publish the temporary ``tmp`` as ``final`` in the directory ``dfd``: over what is
    there (``replace``, an update) or only onto a free name (a create)."""
    if replace:
        os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
    else:
        rename_noreplace(tmp, final, dfd, dfd)


def rmdir(name: str, dfd: int) -> None:
    """Remove a directory the plan emptied. Special files a scan left out (sockets,
    FIFOs and devices under ``--no-specials``, devices for a user that is not root)
    are not in the plan: they go with their directory, as rsync --delete removes them;
    anything else that appeared since the scan stays."""
    try:
        os.rmdir(name, dir_fd=dfd)
        return
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
        fd = os.open(name, O_DIR, dir_fd=dfd)
        try:
            with os.scandir(fd) as it:
                left = [(x.name, x.stat(follow_symlinks=False).st_mode) for x in it]
            if any(stat.S_ISREG(m) or stat.S_ISDIR(m) or stat.S_ISLNK(m) for _, m in left):
                raise
            for entry, _ in left:
                os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
    os.rmdir(name, dir_fd=dfd)


# -- copying and flushing -----------------------------------------------------------------
WRITE_PIECE = 64 << 10
"""The most one ``write`` puts in the page cache (``write_all``; the C helper's
``create`` alike). The kernel gives a buffered write a folio as large as the write
(ext4 and xfs have large folios): a write of 1 MiB takes a 1 MiB folio from the
high-order free blocks, which a virtual machine with free page reporting
(virtio-balloon) has handed back to its host, and the copy into it then faults every
page back in from the host. Measured here (a Firecracker guest, ext4): 1,000 files of
1 MiB cost 6.7-9.6 s of system time written in 1 MiB writes, 4.0 s in 256 KiB, 2.6 s
in 128 KiB, 0.3-0.5 s in 64 KiB; a push of the 2.4 GB bench tree spent 38% of its far
core there (rsync's receiver, writing in small pieces, 1.5%). The kernel's own copies
(``copy_file_range``, ``sendfile``) write through a pipe of 64 KiB already. Right after
the page cache is dropped even small writes fault (1 GiB in 64 KiB writes: 7.0-8.7 s of
system time, session 29): the pieces spare what the write's size adds, not that."""


def write_all(fd: int, data: bytes | memoryview, at: int | None = None) -> None:
    """All of ``data`` to ``fd``, in writes of at most ``WRITE_PIECE``: at its
    position, or at offset ``at``."""
    view = memoryview(data)
    while view:
        piece = view[:WRITE_PIECE]
        n = os.write(fd, piece) if at is None else os.pwrite(fd, piece, at)
        view = view[n:]
        if at is not None:
            at += n


_copy_file_range_ok = [hasattr(os, "copy_file_range")]


def copy_fd(fd_in: int, fd_out: int, size_hint: int) -> int:
    """Copy until EOF (or ``size_hint`` bytes); kernel-side where possible
    (copy_file_range, then sendfile, then read/write). Returns the bytes copied."""
    total = 0
    if size_hint == 0:
        return 0  # the caller's fstat after the copy catches a file that grew
    if _copy_file_range_ok[0]:
        try:
            while True:
                n = os.copy_file_range(fd_in, fd_out, max(size_hint - total, CHUNK))
                total += n
                if n == 0 or total == size_hint:
                    return total  # a file that grew meanwhile is caught by the caller
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            if total:
                raise
            _copy_file_range_ok[0] = False
    try:
        while True:
            n = os.sendfile(fd_out, fd_in, total, max(size_hint - total, CHUNK))
            if n == 0:
                return total
            total += n
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or total:
            raise
    while chunk := os.read(fd_in, CHUNK):
        write_all(fd_out, chunk)
        total += len(chunk)
    return total


def _load_writeback() -> Any:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` as a function of ``fd``
    (``hsync._walk.writeback`` where it was built, else through ``ctypes``); None
    where the system has no such call (not Linux)."""
    try:
        from ..._walk import writeback
    except ImportError:
        pass
    else:
        return writeback
    call = _fn("sync_file_range")
    if call is None:
        return None
    import ctypes

    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return lambda fd: call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2
_writeback: list[Any] = []
"""``[_load_writeback()]`` once loaded."""


def start_writeback(fd: int) -> None:
    """Start writing the dirty pages of the file open as ``fd`` back to the disk, and
    do not wait for it (Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, what dpkg
    does before its fsyncs): a batch's flush (``syncfs``) then finds them written or
    under way, and the disk works while the copy goes on instead of after it. Nothing
    where the system has no such call; an error is ignored (the flush still makes the
    file durable)."""
    if not _writeback:
        _writeback.append(_load_writeback())
    call = _writeback[0]
    if call is not None:
        call(fd)


def copy_sparse(fd_in: int, fd_out: int, size: int) -> int:
    """Copy the first ``size`` bytes of ``fd_in`` keeping its holes (rsync -S): only the
    data extents (``SEEK_DATA``/``SEEK_HOLE``) are written, each at its own offset, and
    ``fd_out`` is cut to the length copied, so a hole stays unallocated. Returns the
    bytes covered: ``size``, or less when the file is now shorter. ``OSError``
    (EINVAL, ENXIO for a filesystem without the seeks) is the caller's to fall back."""
    end = min(size, os.lseek(fd_in, 0, os.SEEK_END))
    for start, stop in data_extents(fd_in, end):
        copy_range(fd_in, fd_out, start, stop)
    os.ftruncate(fd_out, end)
    return end


def data_extents(fd: int, end: int) -> Iterator[tuple[int, int]]:
    """The data extents (``SEEK_DATA``/``SEEK_HOLE``) of the first ``end`` bytes of
    ``fd``, as ``(start, stop)``. ``OSError`` (EINVAL for a filesystem without the
    seeks) is the caller's."""
    pos = 0
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            return  # only a hole left
        if start >= end:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        yield start, stop
        pos = stop


def copy_range(fd_in: int, fd_out: int, start: int, stop: int) -> None:
    """Bytes ``start``..``stop`` of ``fd_in`` to the same offsets of ``fd_out``."""
    pos = start
    if _copy_file_range_ok[0]:
        try:
            while pos < stop:
                n = os.copy_file_range(fd_in, fd_out, stop - pos, pos, pos)
                if n == 0:
                    return
                pos += n
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    while pos < stop:
        chunk = os.pread(fd_in, min(CHUNK, stop - pos), pos)
        if not chunk:
            return
        write_all(fd_out, chunk, pos)
        pos += len(chunk)


def syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` (one call per batch; SPEC section 5)."""
    call = _fn("syncfs")
    if call is None:
        os.sync()
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        os.sync()
        return
    try:
        if call(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def die_with_parent(parent: int) -> None:
    """In a forked worker (a copy worker, a scanning child): die with the parent, so a
    killed run neither goes on writing nor walking."""
    prctl = _fn("prctl")
    if prctl is not None:
        try:  # noqa: SIM105
            prctl(1, _signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:
        os._exit(1)


def copy_worker(parent: int) -> None:
    """In a copy worker (``copy.process_pool``): die with the parent
    (``die_with_parent``), and leave the signals that stop a run to it: a Ctrl-C (sent
    to the whole process group) or a service manager's SIGTERM to every process of the
    unit asks the parent to finish the batch in flight, which needs its workers alive;
    the parent ends them when it is done."""
    die_with_parent(parent)
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, _signal.SIG_IGN)
