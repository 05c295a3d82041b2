"""Reading a filesystem tree: the listing, the rows, the full scan and the sorted walk.

Every node's row is made by one function, ``_list`` (a directory's listing -> rows,
the scan's inner loop), whatever asks: ``scan``, ``walk_sorted``, ``stat_row`` and the
digest scan (``scan`` with ``digests``), so every reader agrees on a node's identity.
An identity dies with its node (SPEC 1): ``(birth time << 64) | inode`` on the root's
device (fixed when the backend opens), ``(device << 128) | ...`` below a mount point.
An inode number alone is reused as soon as a file is deleted: a node whose filesystem
keeps no birth time has no identity (None), so it is never taken for another one that
had its inode (moves of it are found by content instead).

Every directory is opened by ``open_beneath`` from a descriptor of the root (never
through a symlink) and checked to be the directory that was listed: one swapped for
another mid-scan is reported, never followed out of the tree.
"""

from __future__ import annotations

import os
import stat
from array import array
from collections.abc import Iterator

from ...cancel import NEVER, Cancel
from ...errors import TargetChanged
from ...model import DIR, FILE, KIND_CODES, SPECIAL, SYMLINK, Key, Row, Rows, Snapshot, Table
from .meta import Reader, proc_path
from .posix import (
    TMP_PREFIX,
    birth_time,
    check_key,
    is_tmp_name,
    open_beneath,
    open_root,
    special_kind,
)

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any

    from ...filters import Exclude  # annotations only: an agent serves without it
else:
    Any = object  # in the run-time value of the type aliases below

Entry = tuple[str, Any, int, int, int, int, int, int, int, int, int]
"""One listed name: ``(name, st_mode, st_size, st_mtime_ns, st_ino, st_dev, hash,
btime_ns, st_uid, st_gid, xattrs)``, or ``(name, None, errno, 0, 0, 0, 0, 0, 0, 0, -1)``
when its lstat failed; ``st_size`` is ``st_rdev`` for a character or block device.
``hash``: of the name and the payload a sync compares (kind, mtime; mode bits but a
symlink's; size for a file, the device number for a device; a symlink's target, and a
row's ``data``, are not in it), for the directory digests. ``btime_ns``: the birth
time, 0 where the filesystem keeps none. ``xattrs``: when asked, what ``llistxattr``
answers (0: no attribute), -2 when not read (the node's ctime is before ``since``), else
-1. A file's, FIFO's or device's mode comes without the bits of
``strip`` (the set-id bits a pair cannot keep), in the hash too."""

Flags = tuple[bool, bool, bool]
"""What a scan keeps beyond files, directories and symlinks, and where it stops:
``(fifos, devices, one_file_system)``. ``fifos``, ``devices``: FIFOs, character and
block devices are nodes (kind ``special``), else left out with a warning (sockets always
are). ``one_file_system``: a directory on another device than the root (a mount point)
is a node, but its content is not listed (rsync -x), nor ever deleted."""

ALL_KINDS: Flags = (True, os.geteuid() == 0, False)
"""The default: FIFOs, and devices where this process may create them (root)."""

Dirs = list[tuple[Key, int, int]]
"""Directories still to list: ``(key, st_ino, st_dev)`` as their parent's listing saw."""


def lstat_dir_py(
    fd: int, xattrs: bool = False, strip: int = 0, since: int = 0
) -> list[Entry]:
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
            out.append((name, None, e.errno or 0, 0, 0, 0, 0, 0, 0, 0, -1))
            continue
        mode = st.st_mode
        size = st.st_size
        listed = -1
        if xattrs and since and st.st_ctime_ns < since:
            listed = -2  # unchanged since then: not read
        elif xattrs:
            try:
                listed = len(os.listxattr(proc_path(fd, name), follow_symlinks=False))
            except OSError:
                listed = -1
        if not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode):
            mode &= ~strip  # a file's, a FIFO's or a device's (the apply strips them)
        if stat.S_ISREG(mode):
            h = hash((name, stat.S_IFMT(mode), stat.S_IMODE(mode), size, st.st_mtime_ns))
        elif stat.S_ISDIR(mode):
            h = hash((name, stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_mtime_ns))
        elif stat.S_ISLNK(mode):
            h = hash((name, stat.S_IFMT(mode), st.st_mtime_ns))
        else:
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                size = st.st_rdev  # a device's payload: its number, not a size
            h = hash((name, stat.S_IFMT(mode), stat.S_IMODE(mode), size, st.st_mtime_ns))
        out.append((name, mode, size, st.st_mtime_ns, st.st_ino, st.st_dev, h,
                    birth_time(name, fd), st.st_uid, st.st_gid, listed))
    return out


try:
    from ..._walk import list as lstat_dir
except ImportError:  # not built (no compiler where hsync was installed): slower, same
    lstat_dir = lstat_dir_py


def list_dir(fd: int, meta: Reader | None, *, full: bool = False) -> list[Entry]:
    """``lstat_dir`` asking what ``meta`` reads (attribute sizes, set-id bits kept;
    attributes only of nodes changed since ``meta.since``, unless ``full``)."""
    if meta is None:
        return lstat_dir(fd)
    return lstat_dir(fd, meta.xattrs, meta.strip, 0 if full else meta.since)


def listing_digest(hashes: list[int]) -> int:
    """One number for a directory's listing, from its entries' payload hashes (in any
    order, signed 64-bit): a 64-bit xxh3 of them, sorted. Not their sum: Python's tuple
    hash is nearly additive in its fields, so two entries that swap a field (two
    symlinks swapping targets) left the sum as it was. Equal digests mean equal
    listings but with odds of 2^-64."""
    from xxhash import xxh3_64_intdigest

    hashes.sort()
    return xxh3_64_intdigest(array("q", hashes).tobytes())


def stable_hash(value: Any) -> int:
    """A hash of a row's ``data`` (or a symlink's target) that is the same in every
    process: not ``hash()``, which is seeded per process for strings and bytes, so the
    listing digests of a tree scanned by a remote agent never equalled this side's and
    every remote comparison was a full one. Signed 64-bit, like the entries' hashes."""
    from marshal import dumps

    from xxhash import xxh3_64_intdigest

    return xxh3_64_intdigest(dumps(value)) - (1 << 63)


def subtree_digest(listing: int, subdirs: list[tuple[str, int]]) -> int:
    """One number for everything below a directory (a Merkle tree): its listing's
    digest and, per subdirectory, its name and its own subtree digest. Equal for two
    directories that hold the same names with the same payloads at every depth, so a
    directory moved or renamed with its content unchanged keeps it (the directory's
    own name and payload are not in it: its parent's listing holds them)."""
    if not subdirs:
        return listing
    from xxhash import xxh3_64_intdigest

    subdirs.sort()
    parts = [listing.to_bytes(8, "little")]
    for name, tree in subdirs:
        parts += (name.encode("utf-8", "surrogateescape"), b"\0", tree.to_bytes(8, "little"))
    return xxh3_64_intdigest(b"".join(parts))


def _list(
    entries: list[Entry],
    fd: int,
    key: Key,
    root_dev: int,
    exclude: Exclude | None,
    rows: dict[Key, Row],
    kids: list[Key],
    dirs: Dirs,
    incomplete: dict[Key, str],
    skipped: list[tuple[Key, str]],
    temps: list[Key],
    held: set[Key],
    hashes: list[int] | None,
    flags: Flags = ALL_KINDS,
    meta: Reader | None = None,
) -> None:
    """The rows of one directory's ``entries`` (``lstat_dir`` of ``fd``, the directory
    at ``key``) into ``rows``, their keys into ``kids``, its subdirectories into
    ``dirs``; what could not be read into ``incomplete``, special files into
    ``skipped``, hsync's temporaries into ``temps``; ``key`` into ``held`` when a child
    is excluded; each kept entry's hash into ``hashes``; ``flags``: what else is kept
    (``Flags``); ``meta``: what makes a row's ``data`` (None: none). The scan's inner
    loop: no function call per entry beyond what a row needs."""
    S_ISREG, S_ISDIR, S_ISLNK, S_IMODE = stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK, stat.S_IMODE
    S_ISFIFO, S_ISCHR, S_ISBLK = stat.S_ISFIFO, stat.S_ISCHR, stat.S_ISBLK
    readlink = os.readlink
    of = meta.of if meta is not None and meta.active else None
    shared = meta.shared if meta is not None else {}
    m: Any = None
    hm = 0
    for name, mode, size, mtime, st_ino, st_dev, h, born, uid, gid, listed in entries:
        k = (*key, name)
        if mode is None:  # its lstat failed (one gone since the listing is left out)
            incomplete[k] = os.strerror(size)
            continue
        ino = (((born << 64) | st_ino if st_dev == root_dev  # identity_of, inline
                else (st_dev << 128) | (born << 64) | st_ino) if born else None)
        if S_ISREG(mode):
            if name.startswith(TMP_PREFIX) and is_tmp_name(name):  # cheap test first
                temps.append(k)
                continue
            if exclude is not None and exclude(k, False):
                held.add(key)
                continue
            if of is not None:  # the data, shared by the nodes without attributes read
                if listed > 0:
                    m = of(uid, gid, listed, proc_path(fd, name))
                    hm = stable_hash(m)
                else:
                    m, hm = shared.get((uid << 34) | (gid << 2) | (listed + 2)) or _shared(
                        shared, of, uid, gid, listed)
                h ^= hm
            rows[k] = (FILE, S_IMODE(mode), size, mtime, None, ino, m)
            kids.append(k)
        elif S_ISDIR(mode):
            if exclude is not None and exclude(k, True):
                held.add(key)
                continue
            if of is not None:
                if listed > 0:
                    m = of(uid, gid, listed, proc_path(fd, name))
                    hm = stable_hash(m)
                else:
                    m, hm = shared.get((uid << 34) | (gid << 2) | (listed + 2)) or _shared(
                        shared, of, uid, gid, listed)
                h ^= hm
            rows[k] = (DIR, S_IMODE(mode), 0, mtime, None, ino, m)
            kids.append(k)
            if st_dev != root_dev and flags[2]:
                held.add(k)  # a mount point, not crossed: what is below it stays
            else:
                dirs.append((k, st_ino, st_dev))
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
            if of is not None:
                m = of(uid, gid, listed, proc_path(fd, name) if listed > 0 else None)
            rows[k] = (SYMLINK, 0, 0, mtime, target, ino, m)  # payload: target, mtime, data
            kids.append(k)
            h = stable_hash((h, target, m))
        elif (flags[0] and S_ISFIFO(mode)) or (flags[1] and (S_ISCHR(mode) or S_ISBLK(mode))):
            if exclude is not None and exclude(k, False):
                held.add(key)
                continue
            if of is not None:
                if listed > 0:
                    m = of(uid, gid, listed, proc_path(fd, name))
                    hm = stable_hash(m)
                else:
                    m, hm = shared.get((uid << 34) | (gid << 2) | (listed + 2)) or _shared(
                        shared, of, uid, gid, listed)
                h ^= hm
            # size: the device number; the data: owner, group, attributes, as a file's
            rows[k] = (SPECIAL, mode, size, mtime, None, ino, m)
            kids.append(k)
        else:
            skipped.append((k, special_kind(mode, flags[0])))
            continue
        if hashes is not None:
            hashes.append(h)


_KIND_OF_FMT = bytes(
    KIND_CODES[DIR] if f == stat.S_IFDIR >> 12 else KIND_CODES[FILE] if f == stat.S_IFREG >> 12
    else 255 for f in range(256)
)


def _plain(
    entries: list[Entry], key: Key, root_dev: int, table: Table, dirs: Dirs,
    hashes: list[int] | None, meta: Reader | None,
) -> bool:
    """``_list`` into ``table`` for a listing (sorted by name) of only files and
    directories on the root's device, with no hsync temporary among them, when nothing
    is excluded, all of one owner and group, none with attributes to read (``meta``):
    column by column, no work per entry beyond a few list comprehensions. False (nothing
    done) for any other listing."""
    if not entries:
        table.add_plain(key, (), b"", (), (), (), (), ())
        return True
    (names, modes, sizes, mtimes, inos, devs, hs, borns, uids, gids,
     listed) = zip(*entries, strict=True)
    n = len(names)
    if None in modes or devs.count(root_dev) != n:
        return False
    m: Any = None
    if meta is not None and meta.active:
        uid, gid, ls = uids[0], gids[0], listed[0]
        if ls > 0 or uids.count(uid) != n or gids.count(gid) != n or listed.count(ls) != n:
            return False
        m, hm = meta.shared.get((uid << 34) | (gid << 2) | (ls + 2)) or _shared(
            meta.shared, meta.of, uid, gid, ls)
        hs = tuple([h ^ hm for h in hs])  # as ``_list`` mixes the data into the hash
    fmts = bytes([m >> 12 for m in modes])
    n_dirs = fmts.count(stat.S_IFDIR >> 12)
    if n_dirs + fmts.count(stat.S_IFREG >> 12) != n:
        return False
    if ("\0" + TMP_PREFIX) in "\0" + "\0".join(names):
        return False
    no_birth = borns.count(0)
    if no_birth and no_birth != n:
        return False
    kinds = fmts.translate(_KIND_OF_FMT)
    table.add_plain(
        key, names, kinds, [m & 0o7777 for m in modes],
        # a directory's size is not payload: 0, as ``_list`` gives it
        [s * (f >> 3) for f, s in zip(fmts, sizes, strict=True)] if n_dirs else sizes,
        mtimes, borns if not no_birth else [0] * n, inos if not no_birth else [0] * n, m,
    )
    if n_dirs:
        at = 0
        for _ in range(n_dirs):
            at = fmts.index(stat.S_IFDIR >> 12, at)
            dirs.append(((*key, names[at]), inos[at], devs[at]))
            at += 1
    if hashes is not None:
        hashes.extend(hs)
    return True


def _shared(
    shared: dict[int, tuple[Any, int]], of: Any, uid: int, gid: int, listed: int
) -> tuple[Any, int]:
    """The data (and its hash) of a node owned by ``uid``:``gid`` whose attributes
    were not read (``listed`` <= 0), made once per owner and kept in ``shared``."""
    m = of(uid, gid, listed, None)
    found = shared[(uid << 34) | (gid << 2) | (listed + 2)] = (m, stable_hash(m))
    return found


def identity_of(st_ino: int, st_dev: int, born: int, root_dev: int) -> int | None:
    """A node's identity (the module doc); ``_list`` computes the same inline."""
    if not born:
        return None
    ident = (born << 64) | st_ino
    return ident if st_dev == root_dev else (st_dev << 128) | ident


def top_row(st: os.stat_result, root_dev: int, fd: int, meta: Reader | None = None) -> Row:
    """The row of the root directory (the one node that is nobody's child), open as
    ``fd``."""
    ident = identity_of(st.st_ino, st.st_dev, birth_time("", fd), root_dev)
    m = None
    if meta is not None and meta.active:
        m = meta.of(st.st_uid, st.st_gid, 1, fd)
    return (DIR, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, None, ident, m)


class _One:
    """What ``_list`` made of one name looked up alone (``lookup``)."""

    __slots__ = ("dirs", "held", "incomplete", "rows", "skipped")

    def __init__(self) -> None:
        self.rows: dict[Key, Row] = {}
        self.dirs: Dirs = []
        self.incomplete: dict[Key, str] = {}
        self.skipped: list[tuple[Key, str]] = []
        self.held: set[Key] = set()


def lookup(
    root_fd: int, key: Key, root_dev: int, flags: Flags = ALL_KINDS, meta: Reader | None = None
) -> _One | None:
    """``key`` (not the root) looked at alone, through its parent reached beneath the
    root; None when it or a directory on the way is absent, or a name on the way is a
    symlink or not a directory. An hsync temporary is absent, and so is a name no
    directory can hold ("", ".", "..", a slash or a NUL in it)."""
    try:
        check_key(key)
        dfd = open_beneath(root_fd, key[:-1])
    except (FileNotFoundError, TargetChanged):
        return None
    one = _One()
    try:
        if flags[2] and key[:-1] and os.fstat(dfd).st_dev != root_dev:
            # below a mount point that -x does not cross: not this run's (the mount
            # point is the shallowest ancestor on another device; its parent is enough)
            one.held.add(key[:-1])
            return one
        try:
            st = os.stat(key[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        mode = st.st_mode
        if meta is not None and not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode):
            mode &= ~meta.strip
        size = st.st_size
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            size = st.st_rdev  # as lstat_dir gives it
        entry = (key[-1], mode, size, st.st_mtime_ns, st.st_ino, st.st_dev, 0,
                 birth_time(key[-1], dfd), st.st_uid, st.st_gid, 1)
        _list([entry], dfd, key[:-1], root_dev, None, one.rows, [], one.dirs,
              one.incomplete, one.skipped, [], one.held, None, flags, meta)
    finally:
        os.close(dfd)
    return one


def stat_row(
    root: str, root_dev: int, key: Key, flags: Flags = ALL_KINDS, meta: Reader | None = None
) -> Row | tuple[str] | None:
    """The row at ``key``, ``(kind,)`` for a special file, or None when absent (also
    when an ancestor is absent or not a directory). ``OSError`` for what cannot be
    read."""
    try:
        root_fd = open_root(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not key:
        try:
            return top_row(os.fstat(root_fd), root_dev, root_fd, meta)
        finally:
            os.close(root_fd)
    try:
        one = lookup(root_fd, key, root_dev, flags, meta)
    finally:
        os.close(root_fd)
    if one is None:
        return None
    if key in one.rows:
        return one.rows[key]
    if one.skipped:
        return (one.skipped[0][1],)
    if one.incomplete:
        raise OSError(one.incomplete[key])
    return None  # a temporary, or a symlink gone before it was read


def scan(
    root: str,
    root_dev: int,
    subtree: Key,
    exclude: Exclude | None,
    cancel: Cancel,
    temps: list[Key],
    digests: dict[Key, int] | None = None,
    flags: Flags = ALL_KINDS,
    meta: Reader | None = None,
    trees: dict[Key, int] | None = None,
) -> Snapshot:
    """See ``Backend.scan``; hsync's temporaries found are added to ``temps``.
    ``digests``: filled with one number per directory listed (``listing_digest``);
    ``flags``: what else is kept (``Flags``); ``meta``: what makes the rows' ``data``
    (owner, group, attributes);
    ``trees`` (with ``digests``): with one per directory listed for its whole subtree
    (``subtree_digest``), computed bottom-up once the walk is done (directories only:
    no second pass over the entries or the disk)."""
    rows: dict[Key, Row] = {}
    # a whole tree is kept as a compact table (``model.Table``), filled one listing at
    # a time; a subtree (a region, small) as a dict with its children index
    table = None if subtree else Table()
    snap = Snapshot(nodes=Rows(rows if table is None else table))
    order: list[tuple[Key, list[Key]]] = []  # each directory listed, its subdirectories
    children: dict[Key, list[Key]] = {}
    if table is None:
        snap._children = children
    incomplete, skipped, held = snap.incomplete, snap.skipped, snap.holds_excluded
    try:
        root_fd = open_root(root)
    except NotADirectoryError:
        incomplete[subtree] = "is not a directory"
        return snap
    except OSError as e:
        incomplete[subtree] = e.strerror or str(e)
        return snap
    try:
        stack: Dirs
        if subtree:
            # a partial rescan: absent is an answer, a leaf is one node
            try:
                one = lookup(root_fd, subtree, root_dev, flags, meta)
            except OSError as e:
                incomplete[subtree] = e.strerror or str(e)
                return snap
            if one is None:
                return snap
            rows.update(one.rows)
            incomplete.update(one.incomplete)
            skipped.extend(one.skipped)
            held.update(one.held)
            stack = one.dirs
        else:
            st = os.fstat(root_fd)
            assert table is not None
            table.root = top_row(st, root_dev, root_fd, meta)
            stack = [((), st.st_ino, st.st_dev)]
        fstat, close = os.fstat, os.close
        plain = exclude is None
        while stack:
            key, want_ino, want_dev = stack.pop()
            cancel.check()
            try:
                fd = open_beneath(root_fd, key)
            except FileNotFoundError:
                incomplete[key] = "vanished during the scan"
                continue
            except TargetChanged:
                incomplete[key] = "replaced during the scan"
                continue
            except OSError as e:
                incomplete[key] = e.strerror or str(e)
                continue
            try:
                seen = fstat(fd)
                if seen.st_ino != want_ino or seen.st_dev != want_dev:
                    incomplete[key] = "replaced during the scan"
                    continue
                try:
                    entries = list_dir(fd, meta)
                except OSError as e:
                    incomplete[key] = e.strerror or str(e)
                    continue
                kids: list[Key] = []  # the children index, built as we go
                hashes: list[int] | None = [] if digests is not None else None
                pushed = len(stack)
                if table is None:
                    children[key] = kids
                    _list(entries, fd, key, root_dev, exclude, rows, kids, stack,
                          incomplete, skipped, temps, held, hashes, flags, meta)
                else:  # one listing's rows, by name, into the table
                    entries.sort()
                    if not (plain and _plain(entries, key, root_dev, table, stack, hashes, meta)):
                        _list(entries, fd, key, root_dev, exclude, rows, kids, stack,
                              incomplete, skipped, temps, held, hashes, flags, meta)
                        table.add(key, rows)
                        rows.clear()
                if digests is not None:
                    assert hashes is not None
                    digests[key] = listing_digest(hashes)
                    if trees is not None:
                        order.append((key, [d for d, _, _ in stack[pushed:]]))
            finally:
                close(fd)
        if trees is not None and digests is not None:
            for key, subs in reversed(order):  # a directory is listed after its parent
                # a subdirectory not listed (unreadable) counts as 0: its key is in
                # ``incomplete``, and nothing relies on digests then
                trees[key] = subtree_digest(digests[key], [(d[-1], trees.get(d, 0))
                                                           for d in subs])
    finally:
        os.close(root_fd)
    # a directory held but not listed is a mount point -x did not cross (a directory
    # holding excluded nodes was listed)
    listed = children if table is None else table.dirs
    snap.mounts = {k for k in held if k not in listed}
    return snap


Listed = list[tuple[bytes, Key, Any]]


def walk_sorted(
    root: str, root_dev: int, exclude: Exclude | None, cancel: Cancel = NEVER,
    flags: Flags = ALL_KINDS,
    meta: Reader | None = None,
) -> Iterator[tuple[Key, Row | tuple[str] | None]]:
    """See ``SortedWalk.walk_sorted``: holds one listing per level, never the tree."""
    try:
        root_fd = open_root(root)
    except OSError:
        yield (), None
        return
    lost: dict[Key, str] = {}  # a name whose lstat or readlink failed: left out
    temps: list[Key] = []
    held: set[Key] = set()

    def listing(key: Key, ino: int, dev: int) -> tuple[Listed, dict[Key, tuple[int, int]]] | None:
        cancel.check()
        try:
            fd = open_beneath(root_fd, key)
        except (OSError, TargetChanged):
            return None
        rows: dict[Key, Row] = {}
        kids: list[Key] = []
        dirs: Dirs = []
        skipped: list[tuple[Key, str]] = []
        try:
            seen = os.fstat(fd)
            if seen.st_ino != ino or seen.st_dev != dev:
                return None
            # in full: the quick pass compares the attributes with the history's
            _list(list_dir(fd, meta, full=True), fd, key, root_dev, exclude, rows, kids, dirs,
                  lost, skipped, temps, held, None, flags, meta)
        except OSError:
            return None
        finally:
            os.close(fd)
        lost.clear()
        temps.clear()
        held.clear()
        # sorted by the names' bytes (UTF-8 with surrogate escapes: os.fsencode, inline)
        out: Listed = [(k[-1].encode("utf-8", "surrogateescape"), k, r) for k, r in rows.items()]
        if skipped:
            out += [(k[-1].encode("utf-8", "surrogateescape"), k, (what,)) for k, what in skipped]
        out.sort(reverse=True)  # popped from the end: smallest name first
        return out, {k: (i, d) for k, i, d in dirs}

    try:
        st = os.fstat(root_fd)
        top = listing((), st.st_ino, st.st_dev)
        if top is None:
            yield (), None
            return
        stack = [top]
        while stack:
            kids, ids = stack[-1]
            if not kids:
                stack.pop()
                continue
            _, k, row = kids.pop()
            yield k, row
            if row[0] == DIR and k in ids:  # (not a mount point left alone)
                sub = listing(k, *ids[k])
                if sub is None:
                    yield k, None
                else:
                    stack.append(sub)
    finally:
        os.close(root_fd)
