"""--hard-links: source files that are one inode stay one inode (as rsync -H)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from treeutil import assert_same_tree, build, hsync_bin

from hsync.oneshot import sync_once
from hsync.options import Options

T0 = 1_600_000_000 * 10**9


def _ino(p: Path) -> int:
    return p.lstat().st_ino


def _source(tmp_path: Path) -> Path:
    src = build(tmp_path / "src", {"a": b"shared", "e": b"shared", "c/x": b"other"})
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "c" / "d")
    return src


def test_hard_links_stay_linked(tmp_path: Path) -> None:
    src = _source(tmp_path)
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    out = subprocess.run([hsync_bin(), "sync", "--hard-links", str(src), str(dst),
                          "--state", state], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert_same_tree(src, dst)
    assert _ino(dst / "a") == _ino(dst / "b") == _ino(dst / "c" / "d")
    assert _ino(dst / "e") != _ino(dst / "a")  # same content, not a link on the source
    assert (dst / "a").stat().st_nlink == 3

    # a new name for the inode: linked to what the destination already holds
    os.link(src / "a", src / "c" / "new")
    assert sync_once(str(src), str(dst), Options(state=state, hard_links=True)).ok
    assert _ino(dst / "c" / "new") == _ino(dst / "a")

    # new content through one name: every name sees it, still one inode
    with open(src / "b", "wb") as f:
        f.write(b"rewritten, longer")
    os.utime(src / "b", ns=(T0, T0))
    report = sync_once(str(src), str(dst), Options(state=state, hard_links=True))
    assert report.ok, report.problems
    assert_same_tree(src, dst)
    assert len({_ino(dst / k) for k in ("a", "b", "c/d", "c/new")}) == 1
    assert (dst / "c" / "d").read_bytes() == b"rewritten, longer"


def test_without_the_option_each_name_is_a_copy(tmp_path: Path) -> None:
    src = _source(tmp_path)
    dst = tmp_path / "dst"
    assert sync_once(str(src), str(dst), Options(state="")).ok
    assert_same_tree(src, dst)
    assert len({_ino(dst / "a"), _ino(dst / "b"), _ino(dst / "c" / "d")}) == 3
