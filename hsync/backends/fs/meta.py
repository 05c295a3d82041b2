"""Owner, group, extended attributes and POSIX ACLs of filesystem nodes (SPEC 2).

A row's last field (``Node.data``) is ``(uid, gid, xattrs)`` when the pair keeps any of
them, else None: ``uid``/``gid`` are None when not kept (and, on a source, already
mapped to the destination's ids by name); ``xattrs`` is None or a sorted tuple of
``(name, value)`` in the namespaces kept (ACLs are the ``system.posix_acl_access`` and
``system.posix_acl_default`` attributes, compared and copied as their bytes).

``Reader`` makes that field from what the listing's lstat gave (owner and group come
free) and, only where ``llistxattr`` said a node has attributes at all, reads them.
``chown`` and ``set_xattrs`` set it on the destination: chown before the mode (chown clears set-id
bits), a set-id bit never left on a file whose owner or group is not the source's
(``safe_mode``), attributes last.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

from ..._values import evolve
from ...backend import IdNames, Keep
from ...model import UNREAD

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any

Meta = tuple["int | None", "int | None", "tuple[tuple[str, bytes], ...] | str | None"]
"""(uid, gid, xattrs); xattrs is ``model.UNREAD`` where not read (unchanged)."""

NAMESPACES = ("user", "trusted", "security")
ACL_PREFIX = "system.posix_acl_"
UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)
SETID = stat.S_ISUID | stat.S_ISGID


def can_chown() -> bool:
    """Whether this process may give a file away: root, or CAP_CHOWN (bit 0) in its
    effective capabilities."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & 1)
    except (OSError, ValueError):
        pass
    return False


def is_admin() -> bool:
    """trusted.* and security.* can be read and set (root: CAP_SYS_ADMIN)."""
    return os.geteuid() == 0


def id_names() -> IdNames:
    """This machine's user and group names by id (the first name of an id wins)."""
    import grp  # only here: a sync of two local trees maps no names (session.negotiate)
    import pwd

    users: dict[int, str] = {}
    groups: dict[int, str] = {}
    for p in pwd.getpwall():
        users.setdefault(p.pw_uid, p.pw_name)
    for g in grp.getgrall():
        groups.setdefault(g.gr_gid, g.gr_name)
    return users, groups


def _probe(path: str, name: str) -> bool:
    """Whether the filesystem at ``path`` has the attribute namespace of ``name`` (a
    read: ENODATA says yes, ENOTSUP no)."""
    try:
        os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        return e.errno not in UNSUPPORTED
    return True


def supported(path: str, wanted: Keep) -> Keep:
    """What of ``wanted`` the filesystem at ``path`` (or its nearest existing ancestor)
    can hold and this process may set: owner and group where it may chown, trusted.*
    and security.* as root, each namespace the filesystem supports."""
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    chown = can_chown()
    names = {ns for ns in wanted.xattrs if ns == "user" or is_admin()}
    names = {ns for ns in names if _probe(path, f"{ns}.hsync-probe")}
    acls = wanted.acls and _probe(path, ACL_PREFIX + "access")
    return evolve(
        wanted, owner=wanted.owner and chown, group=wanted.group and chown,
        xattrs=frozenset(names), acls=acls,
    )


class Reader:
    """Makes a row's ``data`` (the module doc) and strips the set-id bits the pair
    cannot keep from its mode."""

    __slots__ = (
        "active", "gids", "group", "owner", "prefixes", "shared", "since", "strip", "uids",
        "xattrs",
    )

    def __init__(self, keep: Keep, *, source: bool = True) -> None:
        self.owner, self.group = keep.owner, keep.group
        self.uids = dict(keep.uids) or None
        self.gids = dict(keep.gids) or None
        prefixes = [f"{ns}." for ns in sorted(keep.xattrs)]
        if keep.acls:
            prefixes.append(ACL_PREFIX)
        self.prefixes = tuple(prefixes)
        self.xattrs = bool(prefixes)
        self.active = self.owner or self.group or self.xattrs
        self.since = keep.since_ns if self.xattrs else 0
        self.shared: dict[int, tuple[Meta | None, int]] = {}
        """Data without attributes read, by owner: one tuple shared by their rows."""
        # a source file's set-uid bit only with its owner, set-gid only with its group:
        # what the destination can hold (a destination's rows show what it has)
        self.strip = (0 if self.owner else stat.S_ISUID) | (0 if self.group else stat.S_ISGID)
        if not source:
            self.strip = 0

    def of(self, uid: int, gid: int, listed: int, where: Any) -> Meta | None:
        """The ``data`` of a node owned by ``uid``:``gid``; ``listed``: its
        ``llistxattr`` size (0: no attribute, -2: not read, unchanged since
        ``since``, -1: not asked or not supported);
        ``where``: its path or descriptor, read only when ``listed`` > 0."""
        if not self.active:
            return None
        if self.owner:
            u: int | None = self.uids.get(uid, uid) if self.uids else uid
        else:
            u = None
        if self.group:
            g: int | None = self.gids.get(gid, gid) if self.gids else gid
        else:
            g = None
        if listed == -2:
            return (u, g, UNREAD)  # not read: unchanged since ``since``
        xs = read_xattrs(where, self.prefixes) if listed > 0 and self.xattrs else None
        return (u, g, xs)


def read_xattrs(where: Any, prefixes: tuple[str, ...]) -> tuple[tuple[str, bytes], ...] | None:
    """The attributes of ``where`` (a path, never followed, or a descriptor) whose names
    start with one of ``prefixes``, sorted; None when there is none (or they cannot be
    read: a node gone meanwhile is found by the next scan)."""
    follow = not isinstance(where, str)
    try:
        names = [n for n in os.listxattr(where, follow_symlinks=follow) if n.startswith(prefixes)]
        if not names:
            return None
        out = []
        for n in sorted(names):
            try:
                out.append((n, os.getxattr(where, n, follow_symlinks=follow)))
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        return tuple(out) or None
    except OSError:
        return None


def proc_path(dfd: int, name: str) -> str:
    """A path to ``name`` in the directory open as ``dfd`` (for the calls that take no
    ``dir_fd``: the xattr ones); its last component is never followed by them."""
    return f"/proc/self/fd/{dfd}/{name}"


def safe_mode(mode: int, meta: Meta | None, owned: bool) -> int:
    """``mode`` without the set-id bits a file may not keep: set-uid only when its
    owner was set to the source's (``owned`` and the owner kept), set-gid likewise
    with its group. A user's set-uid file never becomes a set-uid file of whoever runs
    hsync (rsync strips them alike)."""
    if not mode & SETID:
        return mode
    if not owned or meta is None or meta[0] is None:
        mode &= ~stat.S_ISUID
    if not owned or meta is None or meta[1] is None:
        mode &= ~stat.S_ISGID
    return mode


def chown_needed(meta: Meta | None, has: tuple[int, int] | None = None) -> bool:
    """Whether ``chown`` would call the system for ``meta``: an owner or group is kept
    and the node is not known to have it already (``has``)."""
    if meta is None or (meta[0] is None and meta[1] is None):
        return False
    return has is None or meta[0] not in (None, has[0]) or meta[1] not in (None, has[1])


def chown(
    where: Any, meta: Meta | None, dfd: int | None = None, *,
    has: tuple[int, int] | None = None,
) -> bool:
    """Set the owner and group ``meta`` holds (those kept); True when both that the
    node's set-id bits depend on are the source's (or nothing was asked). ``where``: a
    descriptor, or a name in ``dfd`` (never followed). ``has``: the owner and group
    ``where`` is known to have (a file just created): no call when they are those
    asked for. A refusal (EPERM: not root, a filesystem that keeps no owners) is
    False, not an error: the caller strips the set-id bits."""
    if not chown_needed(meta, has):
        return True
    assert meta is not None
    uid = -1 if meta[0] is None else meta[0]
    gid = -1 if meta[1] is None else meta[1]
    try:
        if isinstance(where, int):
            os.fchown(where, uid, gid)
        else:
            os.chown(where, uid, gid, dir_fd=dfd, follow_symlinks=False)
    except PermissionError:
        return False
    except OSError as e:
        if e.errno in UNSUPPORTED or e.errno == errno.EINVAL:
            return False
        raise
    return True


def xattrs_needed(meta: Meta | None, prefixes: tuple[str, ...], *, bare: bool = False
                  ) -> bool:
    """Whether ``set_xattrs`` would call the system: attributes are kept and read, and
    the node is not known to have none where none are wanted (``bare``)."""
    if not prefixes or meta is None or isinstance(meta[2], str):
        return False
    return not (bare and not meta[2])


def set_xattrs(
    where: Any, meta: Meta | None, prefixes: tuple[str, ...], *, bare: bool = False
) -> list[str]:
    """Make the attributes of ``where`` (a descriptor, or a path never followed) in
    the namespaces of ``prefixes`` those of ``meta``: extra ones removed, differing
    ones set. Returns the names the filesystem could not hold (ENOTSUP, EPERM): they
    are left out, said once per run by the caller.

    ``bare``: ``where`` is known to have no attribute (a file just created in a
    directory that has none, ``inherits_none``): nothing is listed or removed."""
    if not xattrs_needed(meta, prefixes, bare=bare):
        return []  # not kept, UNREAD (unchanged since the last sync), or none and bare
    assert meta is not None and not isinstance(meta[2], str)
    want = dict(meta[2] or ())
    follow = not isinstance(where, str)
    failed: list[str] = []
    try:
        have = [] if bare else [
            n for n in os.listxattr(where, follow_symlinks=follow) if n.startswith(prefixes)]
    except OSError as e:
        if e.errno in UNSUPPORTED:
            return list(want)
        raise
    for n in have:
        if n not in want:
            try:
                os.removexattr(where, n, follow_symlinks=follow)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    for n, v in want.items():
        if n in have:
            try:
                if os.getxattr(where, n, follow_symlinks=follow) == v:
                    continue
            except OSError:
                pass
        try:
            os.setxattr(where, n, v, follow_symlinks=follow)
        except OSError as e:
            if e.errno in (*UNSUPPORTED, errno.EPERM):
                failed.append(n)
                continue
            raise
    return failed


TICK_NS = 20 * 10**6
"""A ctime stamped by this host's coarse clock is behind the real time by less than a
clock tick (10 ms at 100 Hz): the lag of a local filesystem that stamps to the ns is two
ticks (``tick_ns``), at most this."""
_COARSE_CLOCK = 5
"""Linux's ``CLOCK_REALTIME_COARSE`` (``time`` has no name for it): the clock a local
filesystem stamps its ctimes from; its resolution is the kernel's tick."""
COARSE_NS = 2 * 10**9
"""The lag assumed of any other (whole seconds, a network filesystem's server)."""
FINE_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs", "overlay",
})
"""Local filesystems whose ctimes come from this host's clock, to the ns (ext2/3/4 only
with large inodes: a tree whose root's ctime is whole seconds is taken as coarse)."""


def tick_ns() -> int:
    """Two ticks of the clock this host's filesystems stamp ctimes from (4 ms at 250 Hz:
    8 ms), at most ``TICK_NS`` (also where the tick cannot be read). A sync that changed
    the destination ends this long after its last write (``PairSession.mark_equal``)."""
    if not sys.platform.startswith("linux"):
        return TICK_NS
    try:
        tick = round(time.clock_getres(_COARSE_CLOCK) * 1e9)
    except OSError:
        return TICK_NS
    return min(TICK_NS, 2 * tick) if tick > 0 else TICK_NS


def ctime_lag_ns(root: str) -> int:
    """``backend.CtimeClock.ctime_lag_ns`` of the tree at ``root``: ``tick_ns()`` on a
    filesystem of ``FINE_FILESYSTEMS`` (by ``/proc/self/mountinfo``) whose root's ctime
    has a fraction of a second, else ``COARSE_NS``. A root not there yet (an initial
    copy's, created by its first batch) is judged by the directory it will be created
    in: the same filesystem (a name that does not exist is no mount point)."""
    where = root
    while True:
        try:
            st = os.lstat(where)
            break
        except FileNotFoundError:
            up = os.path.dirname(where)
            if up == where:
                return COARSE_NS
            where = up
        except OSError:
            return COARSE_NS
    if st.st_ctime_ns % 10**9 == 0:
        return COARSE_NS
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    kind = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[2] == want and "-" in parts[6:]:
                    kind = parts[parts.index("-", 6) + 1]  # the last mount of it wins
    except (OSError, IndexError):
        return COARSE_NS
    return tick_ns() if kind in FINE_FILESYSTEMS else COARSE_NS


def inherits_none(dfd: int) -> bool:
    """True when a file created in directory ``dfd`` is sure to get no extended
    attribute: the directory has none itself. A new file's attributes come from its
    directory (a default ACL, ``system.posix_acl_default``) or from a security module
    that labels files (``security.*``), which labels the directory too; so a directory
    without any hands none down, and the files a copy creates there need no listing
    (one ``flistxattr`` per directory instead of one per file)."""
    try:
        return not os.listxattr(dfd)
    except OSError:
        return False
