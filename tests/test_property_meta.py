"""Property (hypothesis): random owners (uids and gids that need not exist as users),
modes with set-id bits and extended attributes, on the source and on a destination
that may hold other ones; one sync makes the destination equal in all of that, and a
second run plans nothing. Without owners (``--no-owner``) no file on the destination is
left set-uid for an owner that is not the source's.

Real files as root (giving a file away, trusted.* attributes need it)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsync.oneshot import sync_once
from hsync.options import Options

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")

NAMES = ("a", "b", "c")

Meta = tuple[int, int, int, dict[str, bytes]]
"""(uid, gid, mode, xattrs) of one node."""


# -- the strategies: each small, for the metadata only -----------------------------------
def owners() -> st.SearchStrategy[tuple[int, int]]:
    """uid and gid, existing users or not (65534: nobody; 70000: no name)."""
    ids = st.sampled_from([0, 1, 1234, 65534, 70000])
    return st.tuples(ids, ids)


def file_modes() -> st.SearchStrategy[int]:
    """Permission bits with set-uid, set-gid, both, or neither."""
    return st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2755, 0o6755, 0o4700])


def dir_modes() -> st.SearchStrategy[int]:
    return st.sampled_from([0o755, 0o700, 0o2775])


def xattr_sets(symlink: bool = False) -> st.SearchStrategy[dict[str, bytes]]:
    """A few attributes in the namespaces root keeps (user.* is refused on a symlink)."""
    names = ["trusted.t", "trusted.u"] if symlink else ["user.a", "user.b", "trusted.t"]
    return st.dictionaries(st.sampled_from(names), st.binary(max_size=6), max_size=3)


@st.composite
def meta_trees(draw: st.DrawFn) -> dict[str, tuple[str, Meta]]:
    """A small tree (path -> (kind, meta)): files and a directory with a file and a
    symlink in it, each with random metadata."""
    out: dict[str, tuple[str, Meta]] = {}
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3)):
        out[name] = ("file", (*draw(owners()), draw(file_modes()), draw(xattr_sets())))
    if draw(st.booleans()):
        out["d"] = ("dir", (*draw(owners()), draw(dir_modes()), draw(xattr_sets())))
        out["d/f"] = ("file", (*draw(owners()), draw(file_modes()), draw(xattr_sets())))
        out["d/l"] = ("symlink", (*draw(owners()), 0, draw(xattr_sets(symlink=True))))
    return out


# -- building and reading ----------------------------------------------------------------
def _make(root: Path, spec: dict[str, tuple[str, Meta]]) -> None:
    root.mkdir()
    for rel in sorted(spec):
        kind, (uid, gid, mode, xattrs) = spec[rel]
        p = root / rel
        if kind == "dir":
            p.mkdir()
        elif kind == "symlink":
            os.symlink("f", p)
        else:
            p.write_bytes(rel.encode())
        os.chown(p, uid, gid, follow_symlinks=False)
        if kind != "symlink":
            os.chmod(p, mode)  # after the chown (which clears set-id bits)
        for n, v in xattrs.items():
            os.setxattr(p, n, v, follow_symlinks=False)
    for rel in sorted(spec, reverse=True):  # directory mtimes once their children are in
        if spec[rel][0] == "dir":
            os.utime(root / rel, ns=(10**18, 10**18))
    os.utime(root, ns=(10**18, 10**18))


def _read(root: Path) -> dict[str, tuple[int, int, int, dict[str, bytes]]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st_ = os.lstat(p)
            names = os.listxattr(p, follow_symlinks=False)
            xattrs = {x: os.getxattr(p, x, follow_symlinks=False) for x in names}
            mode = 0 if stat.S_ISLNK(st_.st_mode) else stat.S_IMODE(st_.st_mode)
            out[str(p.relative_to(root))] = (st_.st_uid, st_.st_gid, mode, xattrs)
    return out


def _sync(
    src: Path, dst: Path, *, owner: bool = True, group: bool = True
) -> list[dict[str, str]]:
    """One sync, then the plan a second one would make (as JSON ops)."""
    opts = Options(state="", delete=True, check=True, allow_empty_source=True, owner=owner,
                   group=group)
    report = sync_once(str(src), str(dst), opts)
    assert report.problems == [], report.problems
    again = sync_once(str(src), str(dst), attrs.evolve(opts, dry_run=True))
    assert again.plan is not None
    return again.plan.to_json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=meta_trees(), destination=st.one_of(st.none(), meta_trees()))
def test_sync_makes_owners_modes_and_xattrs_equal(
    source: dict[str, tuple[str, Meta]], destination: dict[str, tuple[str, Meta]] | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="hsync-prop-meta-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        _make(src, source)
        if destination is not None:
            _make(dst, destination)
        assert _sync(src, dst) == []
        assert _read(dst) == _read(src)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=meta_trees(), destination=st.one_of(st.none(), meta_trees()))
def test_without_owners_no_set_id_bit_outlives_its_owner(
    source: dict[str, tuple[str, Meta]], destination: dict[str, tuple[str, Meta]] | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="hsync-prop-meta-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        _make(src, source)
        if destination is not None:
            _make(dst, destination)
        assert _sync(src, dst, owner=False, group=False) == []
        want, got = _read(src), _read(dst)
        assert sorted(got) == sorted(want)
        for rel, (uid, _gid, mode, xattrs) in got.items():
            if source[rel][0] == "file":
                assert not mode & (stat.S_ISUID | stat.S_ISGID), (rel, oct(mode), uid)
                assert mode == want[rel][2] & 0o777, rel
            assert xattrs == want[rel][3], rel
