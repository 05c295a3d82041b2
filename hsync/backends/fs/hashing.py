"""Bulk content hashing for ``hsync verify`` (``BulkHashing``): many files of one tree
hashed where they are, a directory opened once for its neighbouring files."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Any

from ...backend import Hashed
from ...errors import NodeError
from ...model import Key
from .posix import O_READ, check_key, open_beneath, open_root

READ = 1 << 20


def sig(st: os.stat_result) -> tuple[int, ...]:
    """What a look at a node compares: a change of any of these is a change."""
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hash_files(root: str, keys: Sequence[Key]) -> list[Hashed]:
    """Hash the files at ``keys`` below ``root`` (xxh3-128): ``(digest or None when
    unreadable, bytes read, the look at open time)`` for each.

    Keys come sorted, so neighbours share a directory: each directory is opened once
    (beneath the root, without following a symlink) and its files relative to it. One
    reused buffer (a fresh 1 MiB buffer per read costs an mmap), and no read past the
    size seen at open (a file that grew meanwhile shows in verify's settle re-check)."""
    import xxhash

    buf = bytearray(READ)
    view = memoryview(buf)
    readv, fstat, close, osopen, new = os.readv, os.fstat, os.close, os.open, xxhash.xxh3_128
    isreg = stat.S_ISREG
    out: list[Hashed] = []
    root_fd = open_root(root)
    parent: Key | None = None
    pfd = -1
    try:
        for key in keys:
            try:
                check_key(key)
                if key[:-1] != parent:
                    if pfd >= 0:
                        close(pfd)
                        pfd = -1
                    parent = key[:-1]
                    pfd = open_beneath(root_fd, parent)
                fd = osopen(key[-1], O_READ, dir_fd=pfd)
            except (OSError, NodeError):
                out.append((None, 0, None))
                continue
            n = 0
            try:
                st = fstat(fd)
                if not isreg(st.st_mode):
                    out.append((None, 0, sig(st)))
                    continue
                h = new()
                size = st.st_size
                while n < size and (got := readv(fd, [buf])):
                    h.update(view[:got])
                    n += got
                out.append((h.digest(), n, sig(st)))
            except OSError:
                out.append((None, n, None))
            finally:
                close(fd)
    finally:
        if pfd >= 0:
            close(pfd)
        close(root_fd)
    return out


def look(root: str, key: Key) -> Any:
    """``sig`` of the lstat of ``key`` (reached beneath the root), None when absent."""
    try:
        if not key:
            return sig(os.stat(root))
        check_key(key)
        root_fd = open_root(root)
        try:
            dfd = open_beneath(root_fd, key[:-1])
        finally:
            os.close(root_fd)
        try:
            return sig(os.stat(key[-1], dir_fd=dfd, follow_symlinks=False))
        finally:
            os.close(dfd)
    except (OSError, NodeError):
        return None
