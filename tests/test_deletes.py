"""Deletes run on a pool of threads (issue 15): every file delete of a batch is in
flight at once, and every other op waits for them. These check what that must keep:
a directory is removed only once its files are gone, a name freed by a delete can be
taken by a create of another kind, a delete refused is a problem (not a crash), and the
tree ends equal to the source."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from treeutil import assert_same_tree, build

import hsync


def _tree(root: Path, dirs: int, files: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    spec: dict[str, bytes] = {}
    for i in range(files):
        parts = [f"d{rng.randrange(dirs)}", f"e{rng.randrange(3)}", f"f{i}"]
        spec["/".join(parts)] = f"{i}\n".encode()
    build(root, spec)
    return sorted(spec)


def test_many_deletes_spread_over_the_tree_and_whole_directories(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _tree(src, dirs=40, files=1500, seed=1)
    state = str(tmp_path / "state.sqlite")
    hsync.sync(str(src), str(dst), state=state)
    rng = random.Random(2)
    for rel in rng.sample(files, 600):  # spread deletes
        os.unlink(src / rel)
    for d in ("d3", "d7", "d11"):  # whole subtrees: their files, then the directories
        shutil.rmtree(src / d, ignore_errors=True)
    # a file replaced by a directory of the same name, and a directory by a file
    victim = next(rel for rel in files if (src / rel).exists())
    os.unlink(src / victim)
    build(src, {f"{victim}/inside": b"now a directory"})
    shutil.rmtree(src / "d20" / "e1", ignore_errors=True)
    (src / "d20").mkdir(exist_ok=True)
    (src / "d20" / "e1").write_bytes(b"now a file")
    report = hsync.sync(str(src), str(dst), state=state)
    assert not report.problems, report.problems
    assert report.counts["delete"] >= 600
    assert_same_tree(src, dst)


def test_a_delete_that_fails_is_a_problem_and_the_rest_goes_on(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {"a/keep": b"k", **{f"a/f{i}": b"x" for i in range(50)}})
    state = str(tmp_path / "state.sqlite")
    hsync.sync(str(src), str(dst), state=state)
    for i in range(50):
        os.unlink(src / "a" / f"f{i}")
    if subprocess.run(["chattr", "+i", str(dst / "a" / "f7")]).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        report = hsync.sync(str(src), str(dst), state=state)
    finally:
        subprocess.run(["chattr", "-i", str(dst / "a" / "f7")], check=True)
    assert [p.key for p in report.problems] == [("a", "f7")], report.problems
    assert "delete failed" in report.problems[0].message
    assert sorted(os.listdir(dst / "a")) == ["f7", "keep"]


def test_a_directory_whose_mode_changed_with_a_delete_in_it_gets_both(
    tmp_path: Path,
) -> None:
    """A directory that only lost a file gets its mtime back and no other call; one
    whose mode, owner or attributes changed too (in the same run) gets them all: the
    shortcut never skips a change."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {"a/x": b"1", "a/y": b"2", "b/x": b"3", "b/y": b"4"})
    state = str(tmp_path / "state.sqlite")
    hsync.sync(str(src), str(dst), state=state)
    os.unlink(src / "a" / "x")
    os.unlink(src / "b" / "x")
    os.chmod(src / "a", 0o750)
    os.setxattr(src / "a", "user.note", b"kept")
    os.utime(src / "b", ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    hsync.sync(str(src), str(dst), state=state)
    for d in ("a", "b"):
        s, t = os.lstat(src / d), os.lstat(dst / d)
        assert (t.st_mode, t.st_mtime_ns) == (s.st_mode, s.st_mtime_ns), d
    assert os.getxattr(dst / "a", "user.note") == b"kept"
    assert sorted(os.listdir(dst / "a")) == ["y"]
    assert_same_tree(src, dst)
