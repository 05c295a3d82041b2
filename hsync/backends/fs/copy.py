"""Publishing file content on a filesystem destination: a temporary name in the target
directory, the content copied in (kernel-side where possible), then renamed to its
final name; never when the source is not what was scanned or changes meanwhile.

Module level and picklable: ``copy_chunk`` runs in a copy worker process too.
"""

from __future__ import annotations

import os
import stat

from ...errors import NodeError, SourceChanged
from ...model import Key
from .posix import (
    O_CREATE,
    O_READ,
    copy_fd,
    open_beneath,
    open_root,
    rename_into,
    tmp_name,
    umask,
    unlink_quiet,
)

UMASK_SAFE = 0o777

CopyItem = tuple[str, int, Key, str, Key, str, int, int, int, "int | str | None", bool]
"""One file to copy from a local tree: (source root, source root's device, source key,
destination root, destination parent key, final name, size, mtime_ns, mode, identity,
replace)."""


def copy_chunk(items: list[CopyItem], fsync: bool) -> list[int | BaseException]:
    """Copy ``items`` (neighbours, mostly: each directory, on either side, is opened once
    per chunk beneath its root); one outcome per item, the bytes copied or the
    exception. No move or delete runs on the destination while a chunk is copied."""
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

    osopen = os.open
    try:
        for (src_root, src_dev, src_key, root, parent, name, size, mtime_ns, mode,
             identity, replace) in items:
            try:
                dfd = parents.get(parent)
                if dfd is None:
                    dfd = directory(parents, root, parent)
                src_dir = src_key[:-1]
                sfd = sources.get(src_dir)
                if sfd is None:
                    sfd = directory(sources, src_root, src_dir)
                fd_in = osopen(src_key[-1], O_READ, dir_fd=sfd)
                try:
                    out.append(publish(fd_in, dfd, name, size, mtime_ns, mode, identity,
                                       src_dev, fsync, replace))
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


def publish(
    fd_in: int, dfd: int, final: str, size: int, mtime_ns: int, mode: int,
    identity: int | str | None, src_dev: int, fsync: bool, replace: bool,
) -> int:
    """Write what ``fd_in`` holds to a temporary name in directory ``dfd``, rename it to
    ``final`` there (over it only when ``replace``: a create never clobbers a node that
    appeared since the scan); not if the source is not what was scanned (its size,
    mtime, and its identity when ``identity`` is an inode number on a source tree whose
    root is on ``src_dev``) or changes meanwhile. Returns the bytes copied.

    The hot path of an initial sync: fstat, create, copy, utime, close, fstat, rename
    per file, and as little Python as that allows."""
    before = os.fstat(fd_in)
    if (
        before.st_size != size
        or before.st_mtime_ns != mtime_ns
        or not stat.S_ISREG(before.st_mode)
        or (
            type(identity) is int
            and identity != (
                before.st_ino if before.st_dev == src_dev
                else (before.st_dev << 64) | before.st_ino
            )
        )
    ):
        raise SourceChanged("the source file changed since it was scanned")
    tmp = tmp_name()
    fd_out = os.open(tmp, O_CREATE, mode & 0o777, dir_fd=dfd)
    try:
        try:
            copied = copy_fd(fd_in, fd_out, size)
            if mode & ~UMASK_SAFE or umask() & mode:
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
        rename_into(tmp, final, dfd, replace=replace)
    except BaseException:
        unlink_quiet(tmp, dfd)
        raise
    return copied
