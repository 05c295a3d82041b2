"""The scan's listing: one lstat per name, in C (``hsync._walk``) where it was built and
in Python elsewhere; both give the same entries, names that are not UTF-8 included."""

from __future__ import annotations

import os
import shutil
import stat
import sysconfig
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treeutil import assert_same_tree, build

from hsync.backends.fs import scan as fs
from hsync.oneshot import sync_once
from hsync.options import Options

names = st.sampled_from(["a", "B", "é", "\udcff", "\udcfe\udcfd", "x" * 200, ".h", "-"])
kinds = st.sampled_from(["file", "dir", "link", "fifo", "device"])


def _make(root: Path, entries: dict[str, tuple[str, int]]) -> None:
    for name, (kind, size) in entries.items():
        p = os.path.join(os.fsencode(root), os.fsencode(name))
        if kind == "file":
            with open(p, "wb") as f:
                f.write(b"x" * size)
            os.utime(p, ns=(size, 1_600_000_000_123_456_789 + size))
        elif kind == "dir":
            os.mkdir(p, 0o700 + (size % 8))
        elif kind == "link":
            os.symlink(b"target-%d" % size, p)
            os.utime(p, ns=(size, 1_500_000_000_000_000_000 + size), follow_symlinks=False)
        elif kind == "device" and os.geteuid() == 0:
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(size % 300, size % 7))
        else:
            os.mkfifo(p)


@pytest.mark.skipif(fs.lstat_dir is fs.lstat_dir_py, reason="hsync._walk was not built")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(names, st.tuples(kinds, st.integers(0, 9000)), max_size=8))
def test_the_c_listing_equals_the_python_one(entries: dict[str, tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory(prefix="hsync-walk-") as tmp:
        root = Path(tmp)
        _make(root, entries)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.listdir(fd)  # the descriptor's offset moved: the listing must not care
            got = sorted(e[:6] for e in fs.lstat_dir(fd))  # the hashes differ by design
            want = sorted(e[:6] for e in fs.lstat_dir_py(fd))
        finally:
            os.close(fd)
        assert got == want
        assert sorted(n for n, *_ in got) == sorted(entries)
        for name, mode, size, mtime, ino, dev in got:
            st_ = os.lstat(os.path.join(tmp, name))
            assert (mode, ino, dev) == (st_.st_mode, st_.st_ino, st_.st_dev)
            assert mtime == st_.st_mtime_ns
            if stat.S_ISREG(mode):
                assert size == st_.st_size
            if stat.S_ISCHR(mode):  # a device's number, where a file's size is
                assert size == st_.st_rdev


def test_the_c_listing_is_built_where_there_is_a_compiler() -> None:
    """``pip install`` builds it (setup.py); only a machine without a C compiler or
    Python's headers runs the slower Python listing."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        pytest.skip("no Python headers here")
    assert fs.lstat_dir is not fs.lstat_dir_py


def test_a_sync_with_the_python_listing_gives_the_same_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"d/f": b"1", "d/e/g": b"22", "\udcffname": b"333", "l": b"4"}
    src = build(tmp_path / "src", spec)
    os.symlink("d/f", src / "link")
    monkeypatch.setattr(fs, "lstat_dir", fs.lstat_dir_py)
    report = sync_once(str(src), str(tmp_path / "dst"), Options(state=str(tmp_path / "h")))
    assert report.problems == []
    assert_same_tree(src, tmp_path / "dst")
    (src / "d" / "f").write_bytes(b"changed")
    again = sync_once(str(src), str(tmp_path / "dst"), Options(state=str(tmp_path / "h")))
    assert again.counts["update"] >= 1
    assert_same_tree(src, tmp_path / "dst")



@pytest.mark.parametrize("listing", ["c", "python"])
def test_an_entry_hash_follows_the_payload_a_sync_compares(tmp_path: Path, listing: str) -> None:
    """The per-entry hash behind the directory digests changes with what a sync
    compares (a file's mode, size, mtime; a directory's mode and mtime; a symlink's
    own mtime; a FIFO's mode and mtime) and with nothing else (a directory's size)."""
    if listing == "c" and fs.lstat_dir is fs.lstat_dir_py:
        pytest.skip("hsync._walk was not built")
    lst = fs.lstat_dir if listing == "c" else fs.lstat_dir_py

    def hashes() -> dict[str, int]:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return {e[0]: e[6] for e in lst(fd)}
        finally:
            os.close(fd)

    f, d, link = tmp_path / "f", tmp_path / "d", tmp_path / "l"
    f.write_bytes(b"abc")
    os.utime(f, ns=(1, 10**18))
    d.mkdir()
    os.utime(d, ns=(1, 10**18))
    os.symlink("target", link)
    before = hashes()
    assert len(set(before.values())) == 3
    mode = stat.S_IMODE(f.stat().st_mode)
    f.chmod(0o600 if mode != 0o600 else 0o640)
    assert hashes()["f"] != before["f"]
    f.chmod(mode)
    assert hashes()["f"] == before["f"]  # the mode back: the hash back
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 10**18))
    assert hashes()["f"] != before["f"]  # size
    f.write_bytes(b"abc")
    os.utime(f, ns=(1, 10**18 + 1))
    assert hashes()["f"] != before["f"]  # mtime
    for i in range(300):  # the directory grows: its size changes, its payload not
        (d / f"n{i:03d}-{'x' * 40}").write_bytes(b"")
    os.utime(d, ns=(1, 10**18))
    assert os.stat(d).st_size > 4096
    assert hashes()["d"] == before["d"]
    os.utime(link, ns=(5, 5), follow_symlinks=False)  # a symlink's mtime is payload
    assert hashes()["l"] != before["l"]
    os.mkfifo(tmp_path / "p", 0o600)
    os.utime(tmp_path / "p", ns=(1, 10**18))
    fifo = hashes()["p"]
    os.chmod(tmp_path / "p", 0o640)
    assert hashes()["p"] != fifo
    os.chmod(tmp_path / "p", 0o600)
    assert hashes()["p"] == fifo
    os.utime(tmp_path / "p", ns=(1, 10**18 + 1))
    assert hashes()["p"] != fifo
