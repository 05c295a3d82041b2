"""Command-line tests: the installed ``hsync`` console script on real trees (SPEC 2, 5, 8, 9).

Every test runs the script in a subprocess and checks what a user would check: the exit
code, the destination tree byte for byte, what stderr says, that the source (and, on bad
input, both trees) are left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from treeutil import DIR, File, Link, assert_same_tree, build, hsync_bin, read_tree

OPS = {"create", "update", "move", "delete"}
KINDS = {"dir", "file", "symlink", "entry"}
T0 = 1_600_000_000_123_456_789
"""An old mtime (ns) with a non-zero sub-second part, so a lost nanosecond shows."""


class Run(NamedTuple):
    rc: int
    out: str
    err: str
    out_bytes: bytes


def hsync(*args: Any, env: dict[str, str] | None = None, nobody: bool = False) -> Run:
    """Run the console script; output decoded with surrogate escapes (names are bytes)."""
    cmd = [hsync_bin(), *(os.fspath(a) if isinstance(a, Path) else a for a in args)]
    if nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    p = subprocess.run(
        cmd, capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=120, check=False
    )
    return Run(
        p.returncode,
        p.stdout.decode("utf-8", "surrogateescape"),
        p.stderr.decode("utf-8", "surrogateescape"),
        p.stdout,
    )


def ok(r: Run, rc: int = 0) -> Run:
    assert r.rc == rc, f"exit {r.rc} (expected {rc})\nstdout:\n{r.out}\nstderr:\n{r.err}"
    assert "Traceback" not in r.err, r.err
    return r


def set_dir_mtimes(root: Path, ns: int = T0) -> None:
    """Give every directory below and including ``root`` a fixed old mtime, deepest first."""
    dirs = [p for p, _, _ in os.walk(os.fsencode(root))]
    for d in sorted(dirs, key=len, reverse=True):
        os.utime(d, ns=(ns, ns))


def stat_all(root: Path) -> dict[bytes, tuple[int, int, int]]:
    """ctime, inode and mode of every node: anything written to the tree changes one."""
    out = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [b".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, base)] = (st.st_ctime_ns, st.st_ino, st.st_mode)
    return out


def names(root: Path) -> set[bytes]:
    return set(read_tree(root)) - {b""}


def plan_json(src: Path, dst: Path, *extra: str) -> list[dict[str, str]]:
    r = hsync("diff", "--json", *extra, src, dst)
    assert r.rc in (0, 1), r.err
    ops = json.loads(r.out_bytes.decode("utf-8"))  # valid UTF-8, whatever the names are
    assert isinstance(ops, list)
    return ops


SAMPLE = {
    "top.txt": File(b"top level\n", 0o644, T0),
    "exec.sh": File(b"#!/bin/sh\necho hi\n", 0o755, T0 + 1),
    "private": File(b"secret-ish", 0o600, T0 + 2),
    "empty": File(b"", 0o640, T0 + 3),
    "a": DIR,
    "a/b": DIR,
    "a/b/c": DIR,
    "a/b/c/deep.bin": File(bytes(range(256)) * 64, 0o644, T0 + 4),
    "a/sibling": File(b"sib", 0o444, T0 + 5),
    "emptydir": DIR,
    "rel-link": Link("a/b/c/deep.bin"),
    "a/up-link": Link("../top.txt"),
    "abs-link": Link("/etc/passwd"),
    "dangling": Link("does/not/exist"),
    "dir-link": Link("a/b"),
}


def make_sample(root: Path) -> Path:
    build(root, SAMPLE)
    os.chmod(root / "a" / "b", 0o750)
    os.chmod(root / "emptydir", 0o700)
    set_dir_mtimes(root)
    return root


# -- sync and diff on a whole tree --------------------------------------------------------


def test_sync_copies_tree_and_diff_reports_in_sync(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"  # missing: created (its parent exists)
    ok(hsync("sync", src, dst))
    assert_same_tree(src, dst)
    assert os.readlink(dst / "abs-link") == "/etc/passwd"  # never followed, copied verbatim
    assert os.path.islink(dst / "dir-link")
    r = ok(hsync("diff", src, dst))
    assert "in sync" in r.out
    assert plan_json(src, dst) == []
    assert ok(hsync("diff", "--json", src, dst)).rc == 0


def test_diff_exits_1_when_trees_differ_and_changes_nothing(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    (src / "a" / "sibling").chmod(0o644)
    (src / "new-file").write_bytes(b"new")
    before = read_tree(dst)
    r = ok(hsync("diff", src, dst), 1)
    assert "new-file" in r.out
    assert "a/sibling" in r.out
    assert "in sync" not in r.out
    assert read_tree(dst) == before


def test_second_sync_applies_every_kind_of_change(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    (src / "top.txt").write_bytes(b"changed content, other size\n")
    (src / "exec.sh").chmod(0o700)
    os.utime(src / "private", ns=(T0 + 99, T0 + 99))
    os.unlink(src / "rel-link")
    os.symlink("top.txt", src / "rel-link")
    os.unlink(src / "empty")
    os.mkdir(src / "empty")  # file -> directory
    (src / "empty" / "inside").write_bytes(b"in")
    shutil.rmtree(src / "emptydir")
    (src / "emptydir").write_bytes(b"directory -> file")
    shutil.rmtree(src / "a" / "b")  # a subtree leaves
    r = ok(hsync("sync", src, dst))
    assert "Traceback" not in r.err
    assert_same_tree(src, dst)
    assert "in sync" in ok(hsync("diff", src, dst)).out


def test_sync_accepts_file_urls(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", f"file://{src}", f"file://{dst}"))
    assert_same_tree(src, dst)
    ok(hsync("diff", f"file://{src}", dst))


# -- diff --json / --tree -----------------------------------------------------------------


def test_diff_json_ops_have_the_spec_fields(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = build(tmp_path / "dst", {"only-in-dst": b"x", "top.txt": b"other"})
    ops = plan_json(src, dst)
    assert ops, "the trees differ, the plan cannot be empty"
    for op in ops:
        assert op["op"] in OPS
        assert op["kind"] in KINDS
        assert isinstance(op["path"], str)
        assert set(op) == ({"op", "kind", "path", "to"} if op["op"] == "move"
                           else {"op", "kind", "path"})
    by_path = {(o["op"], o["path"]) for o in ops}
    assert ("delete", "only-in-dst") in by_path
    assert ("create", "a/b/c/deep.bin") in by_path
    assert ("create", "rel-link") in by_path
    # parents before children in the ordered plan
    order = [o["path"] for o in ops if o["op"] == "create"]
    assert order.index("a") < order.index("a/b") < order.index("a/b/c/deep.bin")


def test_diff_json_directory_rename_is_one_move(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    ino = os.stat(dst / "a" / "b" / "c" / "deep.bin").st_ino
    os.rename(src / "a", src / "renamed")
    ops = plan_json(src, dst)
    moves = [o for o in ops if o["op"] == "move"]
    assert moves == [{"op": "move", "kind": "dir", "path": "a", "to": "renamed"}], ops
    assert not [o for o in ops if o["op"] in ("create", "delete")], ops
    ok(hsync("sync", src, dst))
    assert_same_tree(src, dst)
    # moved, not copied again: the destination file is the same inode
    assert os.stat(dst / "renamed" / "b" / "c" / "deep.bin").st_ino == ino


def test_diff_json_file_rename_is_one_move(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    os.rename(src / "a" / "b" / "c" / "deep.bin", src / "a" / "moved.bin")
    ops = plan_json(src, dst)
    moves = [o for o in ops if o["op"] == "move"]
    assert moves == [
        {"op": "move", "kind": "file", "path": "a/b/c/deep.bin", "to": "a/moved.bin"}
    ], ops
    assert not [o for o in ops if o["op"] in ("create", "delete")], ops


def test_diff_tree_names_the_touched_paths(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"x/y/zed.txt": b"z", "keep": b"k"})
    dst = build(tmp_path / "dst", {"keep": b"k", "gone-dir/gone.txt": b"g"})
    r = ok(hsync("diff", "--tree", src, dst), 1)
    for name in ("x", "y", "zed.txt", "gone-dir", "gone.txt"):
        assert re.search(rf"(^|\W){re.escape(name)}(\W|$)", r.out, re.M), (name, r.out)
    lines = r.out.splitlines()
    x_line = next(i for i, s in enumerate(lines) if re.search(r"\bx\b", s))
    zed_line = next(i for i, s in enumerate(lines) if "zed.txt" in s)
    assert x_line < zed_line  # drawn as a tree: the parent comes first
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.out)


def test_diff_tree_after_rename_names_both_names(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    os.rename(src / "emptydir", src / "fresh-name")
    r = ok(hsync("diff", "--tree", src, dst), 1)
    assert "emptydir" in r.out and "fresh-name" in r.out
    assert "move" in r.out


def test_diff_json_and_tree_together_is_a_usage_error(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    r = hsync("diff", "--json", "--tree", src, tmp_path / "dst")
    assert r.rc == 2
    assert "Traceback" not in r.err
    assert not (tmp_path / "dst").exists()


# -- sync --json --------------------------------------------------------------------------


def test_sync_json_report(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a/f": b"12345", "g": b"new-g-content"})
    dst = build(tmp_path / "dst", {"g": b"old", "old": b"to be deleted"})
    r = ok(hsync("sync", "--delete", "--json", src, dst))
    report = json.loads(r.out)  # stdout is the JSON object and nothing else
    assert isinstance(report, dict)
    counts = report["counts"]
    assert set(counts) >= OPS
    assert counts["create"] == 2  # a, a/f
    assert counts["delete"] == 1  # old
    assert counts["move"] == 0
    assert counts["update"] >= 1  # g's content
    assert report["bytes_copied"] == len(b"12345") + len(b"new-g-content")
    assert report["errors"] == []
    assert isinstance(report["elapsed"], int | float) and report["elapsed"] >= 0
    assert_same_tree(src, dst)

    r = ok(hsync("sync", "--delete", "--json", src, dst))
    again = json.loads(r.out)
    assert {k: again["counts"][k] for k in OPS} == dict.fromkeys(OPS, 0)
    assert again["bytes_copied"] == 0


def test_sync_with_progress_and_fsync(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {f"d{i % 7}/f{i}": b"x" * i for i in range(260)})
    dst = tmp_path / "dst"
    r = ok(hsync("sync", "--progress", "--fsync", src, dst))
    assert "created" in r.out
    assert_same_tree(src, dst)


# -- symlinks on the destination are never followed ------------------------------------


def test_destination_symlinks_are_replaced_never_followed(tmp_path: Path) -> None:
    outside = build(tmp_path / "outside", {"o": b"must stay", "a": DIR})
    before = read_tree(outside)
    src = build(tmp_path / "src", {"a/f": b"into a directory", "b": b"a file", "keep": DIR})
    dst = build(tmp_path / "dst", {
        "a": Link("../outside"),  # the source has a directory here
        "b": Link(str(outside / "o")),  # the source has a file here
        "c": Link(str(outside)),  # not in the source: deleted, the target is not
    })
    ok(hsync("sync", "--delete", src, dst))
    assert_same_tree(src, dst)
    assert read_tree(outside) == before


def test_destination_root_may_be_a_symlink_to_a_directory(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    real = tmp_path / "real"
    real.mkdir()
    os.symlink("real", tmp_path / "dst")
    ok(hsync("sync", src, tmp_path / "dst"))
    assert os.path.islink(tmp_path / "dst")
    assert_same_tree(src, real)
    assert "in sync" in ok(hsync("diff", src, tmp_path / "dst")).out


def test_source_root_may_be_a_symlink_to_a_directory(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    os.symlink("src", tmp_path / "src-link")
    dst = tmp_path / "dst"
    ok(hsync("sync", tmp_path / "src-link", dst))
    assert_same_tree(src, dst)


# -- --dry-run ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--dry-run", "-n"])
def test_dry_run_changes_nothing(tmp_path: Path, flag: str) -> None:
    src = make_sample(tmp_path / "src")
    dst = build(tmp_path / "dst", {"top.txt": b"different", "extra/file": b"dst only"})
    before = read_tree(dst)
    before_stat = stat_all(dst)
    r = ok(hsync("sync", "--delete", flag, src, dst))
    assert read_tree(dst) == before
    assert stat_all(dst) == before_stat
    assert "extra" in r.out  # the plan is shown
    # it did plan something: a real sync afterwards does the work
    ok(hsync("sync", "--delete", src, dst))
    assert_same_tree(src, dst)


@pytest.mark.parametrize("flag", ["--dry-run", "-n"])
def test_dry_run_does_not_create_missing_destination(tmp_path: Path, flag: str) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", flag, src, dst))
    assert not os.path.lexists(dst)
    r = ok(hsync("sync", flag, "--json", src, dst))
    report = json.loads(r.out)
    assert {k: report["counts"][k] for k in OPS} == dict.fromkeys(OPS, 0)
    assert not os.path.lexists(dst)


# -- --no-delete, --exclude ---------------------------------------------------------------


def test_no_delete_keeps_destination_only_nodes(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a/f": b"new", "g": b"g"})
    dst = build(
        tmp_path / "dst", {"a/f": b"old!", "a/mine": b"m", "keepdir/x": b"x", "l": Link("g")}
    )
    ok(hsync("sync", "--no-delete", src, dst))
    assert (dst / "a" / "f").read_bytes() == b"new"
    assert (dst / "g").read_bytes() == b"g"
    assert (dst / "a" / "mine").read_bytes() == b"m"
    assert (dst / "keepdir" / "x").read_bytes() == b"x"
    assert os.readlink(dst / "l") == "g"
    # without --no-delete they go
    ok(hsync("sync", "--delete", src, dst))
    assert_same_tree(src, dst)


EXCL_SRC = {
    "a.txt": b"a",
    "debug.log": b"log in source",
    "sub/x.log": b"nested log",
    "sub/keep.txt": b"keep",
    "build/out.o": b"object",
    "sub/build/o": b"nested build",
    "notes/build": b"a FILE named build: 'build/' only matches directories",
    "both.log": b"source version",
}
EXCL_DST = {
    "old.log": b"destination-only, excluded",
    "build/stale": b"destination-only, in an excluded directory",
    "stale.txt": b"destination-only, not excluded",
    "both.log": b"destination version, never touched",
}


def check_excluded_result(src: Path, dst: Path) -> None:
    assert names(dst) == {
        b"a.txt", b"sub", b"sub/keep.txt", b"notes", b"notes/build",
        b"old.log", b"build", b"build/stale", b"both.log",
    }
    assert (dst / "both.log").read_bytes() == b"destination version, never touched"
    assert (dst / "notes" / "build").read_bytes() == (src / "notes" / "build").read_bytes()


def test_exclude_neither_copies_nor_deletes(tmp_path: Path) -> None:
    src = build(tmp_path / "src", EXCL_SRC)
    dst = build(tmp_path / "dst", EXCL_DST)
    ok(hsync("sync", "--delete", "--exclude", "*.log", "--exclude", "build/", src, dst))
    check_excluded_result(src, dst)
    r = ok(hsync("diff", "--exclude", "*.log", "--exclude", "build/", src, dst))
    assert "in sync" in r.out
    # without the excludes the trees do differ
    ok(hsync("diff", src, dst), 1)


def test_exclude_from_file(tmp_path: Path) -> None:
    src = build(tmp_path / "src", EXCL_SRC)
    dst = build(tmp_path / "dst", EXCL_DST)
    pats = tmp_path / "excludes"
    pats.write_text("# a comment line\n\n*.log\nbuild/\n")
    ok(hsync("sync", "--delete", "--exclude-from", pats, src, dst))
    check_excluded_result(src, dst)
    assert not (dst / "# a comment line").exists()
    ok(hsync("diff", "--exclude-from", pats, src, dst))


def test_exclude_negation_and_anchored_pattern(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a.log": b"1", "important.log": b"2", "top/x": b"3",
                                   "sub/top/y": b"4"})
    dst = tmp_path / "dst"
    ok(hsync("sync", "--exclude", "*.log", "--exclude", "!important.log",
             "--exclude", "/top", src, dst))
    assert names(dst) == {b"important.log", b"sub", b"sub/top", b"sub/top/y"}


def test_directory_holding_an_excluded_file_is_kept_quietly(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"d/x.log": b"x", "d/y": b"y", "k/k": b"k"})
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    shutil.rmtree(src / "d")
    r = hsync("sync", "--exclude", "*.log", src, dst)
    assert (dst / "d" / "x.log").read_bytes() == b"x"  # excluded: never deleted
    assert not os.path.lexists(dst / "d" / "y")
    ok(r)
    ok(hsync("diff", "--exclude", "*.log", src, dst))


# -- --max-delete -------------------------------------------------------------------------


def test_max_delete_caps_deletions(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"k": b"keep", "d1": b"1", "d2": b"22", "d3": b"333"})
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    # the new file first: it must not reuse a deleted file's inode (that reads as a move)
    (src / "brand-new").write_bytes(b"a new file of another size")
    for n in ("d1", "d2", "d3"):
        (src / n).unlink()
    (src / "k").write_bytes(b"kept, updated")
    r = hsync("sync", "--max-delete", "2", src, dst)
    assert r.rc == 3, r
    assert "Traceback" not in r.err
    # one line, naming the tree the deletions were held back on
    assert f"{dst}: 3 deletions planned, more than --max-delete 2" in r.err, r.err
    for n in ("d1", "d2", "d3"):
        assert (dst / n).exists(), f"{n} deleted despite --max-delete 2"
    assert (dst / "brand-new").read_bytes() == b"a new file of another size"
    assert (dst / "k").read_bytes() == b"kept, updated"
    ok(hsync("sync", "--max-delete", "3", src, dst))
    assert_same_tree(src, dst)


def test_max_delete_counts_a_subtree(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"k": b"keep", "d/a": b"a", "d/b": b"b"})
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    shutil.rmtree(src / "d")  # three deletions: d/a, d/b, d
    r = hsync("sync", "--max-delete", "2", src, dst)
    assert r.rc == 3 and "max-delete" in r.err, r
    assert (dst / "d" / "a").exists() and (dst / "d" / "b").exists()
    ok(hsync("sync", "--max-delete", "0", src, tmp_path / "fresh"))  # nothing to delete: fine


def test_max_delete_also_caps_a_type_change(tmp_path: Path) -> None:
    """Regression: a directory replaced by a file on the source bypassed --max-delete:
    its whole subtree was deleted although the run said "no deletion done"."""
    src = build(tmp_path / "src", {f"photos/{i}": b"p%d" % i for i in range(10)})
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    shutil.rmtree(src / "photos")
    (src / "photos").write_bytes(b"now a file")
    (src / "other").write_bytes(b"still synced")
    r = hsync("sync", "--max-delete", "5", src, dst)
    assert r.rc == 3 and "max-delete" in r.err, r
    assert sorted(os.listdir(dst / "photos")) == [str(i) for i in range(10)]
    assert (dst / "other").read_bytes() == b"still synced"


# -- --checksum ---------------------------------------------------------------------------


def test_checksum_detects_same_size_same_mtime_difference(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    target = dst / "a" / "sibling"
    st = os.stat(target)
    target.chmod(0o644)
    with open(target, "r+b") as fh:
        fh.write(b"SIB")  # same size, other content
    target.chmod(stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a plain comparison presumes equal content (size and mtime match)
    assert "in sync" in ok(hsync("diff", src, dst)).out
    ok(hsync("sync", src, dst))
    assert target.read_bytes() == b"SIB"
    # --checksum sees it and fixes it
    r = ok(hsync("diff", "--checksum", src, dst), 1)
    assert "a/sibling" in r.out
    ok(hsync("sync", "--checksum", src, dst))
    assert target.read_bytes() == b"sib"
    assert_same_tree(src, dst)
    ok(hsync("diff", "--checksum", src, dst))


def test_content_update_keeps_the_parent_directory_mtime(tmp_path: Path) -> None:
    """Publishing by rename changes the parent directory; its source mtime is restored."""
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    (src / "a" / "b" / "c" / "deep.bin").write_bytes(b"new content, new size")
    ok(hsync("sync", src, dst))
    assert_same_tree(src, dst)
    assert "in sync" in ok(hsync("diff", src, dst)).out


# -- bad input: exit 2, one line, nothing changed -----------------------------------------


def world(tmp_path: Path) -> Path:
    w = tmp_path / "w"
    build(w / "src", {"f": b"source file", "sub/g": b"g"})
    build(w / "dst", {"d": b"destination file", "sub/h": b"h"})
    (w / "a-file").write_bytes(b"just a file")
    (w / "empty-src").mkdir()
    (w / "excl-dir").mkdir()
    os.symlink("src", w / "src-alias")
    os.symlink("dst", w / "dst-alias")
    return w


# (id, arguments relative to the world dir, text that names the path, cause pattern)
BAD_INPUT = [
    ("missing-source", ["nope", "dst"], "nope", r"does not exist|no such"),
    ("source-is-a-file", ["a-file", "dst"], "a-file", r"not a directory"),
    ("src-equals-dst", ["src", "src"], "src", r"same"),
    ("src-equals-dst-trailing-slash", ["src", "src/"], "src", r"same"),
    ("src-equals-dst-via-alias", ["src", "src-alias"], "src", r"same"),
    ("dst-inside-src", ["src", "src/sub"], "src/sub", r"inside"),
    ("missing-dst-inside-src", ["src", "src/newdir"], "src/newdir", r"inside"),
    ("dst-inside-src-via-alias", ["src", "src-alias/newdir"], "src-alias/newdir", r"inside"),
    ("dst-inside-src-alias", ["src-alias", "src/sub"], "src/sub", r"inside"),
    ("src-inside-dst", ["dst/sub", "dst"], "dst/sub", r"inside"),
    ("src-inside-dst-via-alias", ["dst-alias/sub", "dst"], "dst-alias/sub", r"inside"),
    ("src-inside-dst-alias", ["dst/sub", "dst-alias"], "dst", r"inside"),
    ("unknown-scheme-source", ["foo://x", "dst"], "foo", r"scheme"),
    ("unknown-scheme-destination", ["src", "foo://x"], "foo", r"scheme"),
    ("destination-parent-missing", ["src", "no/such/dst"], "no/such/dst", r"parent"),
    ("destination-is-a-file", ["src", "a-file"], "a-file", r"not a directory"),
    ("exclude-from-missing", ["--exclude-from", "no-excludes", "src", "dst"], "no-excludes",
     r"exclude.*(no such file|does not exist)"),
    ("exclude-from-directory", ["--exclude-from", "excl-dir", "src", "dst"], "excl-dir",
     r"exclude.*(is a directory|cannot read)"),
]


def assert_bad_input(r: Run, names_path: str, cause: str) -> None:
    assert r.rc == 2, f"exit {r.rc}\nstdout:\n{r.out}\nstderr:\n{r.err}"
    assert "Traceback" not in r.err, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.err}"
    assert names_path in lines[0], f"{names_path!r} not named in {lines[0]!r}"
    assert re.search(cause, lines[0], re.I), f"cause /{cause}/ not in {lines[0]!r}"


def _abs(w: Path, arg: str) -> str:
    if arg.startswith("-") or "://" in arg:
        return arg
    return str(w / arg) + ("/" if arg.endswith("/") else "")


@pytest.mark.parametrize("command", ["sync", "diff"])
@pytest.mark.parametrize(("args", "named", "cause"), [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input(tmp_path: Path, command: str, args: list[str], named: str, cause: str) -> None:
    w = world(tmp_path)
    before = read_tree(w)
    before_stat = stat_all(w)
    r = hsync(command, *[_abs(w, a) for a in args])
    assert_bad_input(r, named, cause)
    assert read_tree(w) == before
    assert stat_all(w) == before_stat
    assert r.out == ""


def test_empty_source_is_refused_unless_allowed(tmp_path: Path) -> None:
    w = world(tmp_path)
    before = read_tree(w)
    r = hsync("sync", w / "empty-src", w / "dst")
    assert_bad_input(r, "empty-src", r"empty")
    assert "--allow-empty-source" in r.err
    assert read_tree(w) == before
    r = ok(hsync("sync", "--delete", "--allow-empty-source", w / "empty-src", w / "dst"))
    assert names(w / "dst") == set()
    assert_same_tree(w / "empty-src", w / "dst")


def test_empty_source_into_missing_or_empty_destination_is_fine(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ok(hsync("sync", src, tmp_path / "dst"))
    assert (tmp_path / "dst").is_dir()
    ok(hsync("sync", src, tmp_path / "dst"))


def test_source_emptied_by_excludes_is_refused(tmp_path: Path) -> None:
    """Everything excluded looks like an empty source: the destination is not emptied."""
    src = build(tmp_path / "src", {"a.log": b"x"})
    dst = build(tmp_path / "dst", {"precious": b"p"})
    r = hsync("sync", "--exclude", "*.log", src, dst)
    assert r.rc == 2 and "Traceback" not in r.err, r
    assert (dst / "precious").read_bytes() == b"p"


# -- names that are not UTF-8 -------------------------------------------------------------

CAFE = b"caf\xe9"
DIRX = b"d\xff"


def test_non_utf8_names_survive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(src, {
        os.fsdecode(CAFE): b"latin-1 name",
        os.fsdecode(DIRX + b"/inner\xfe"): b"inner",
        os.fsdecode(b"link\xe0"): Link(os.fsdecode(CAFE)),
        "plain": b"p",
    })
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    assert_same_tree(src, dst)
    listed = set(os.listdir(os.fsencode(dst)))
    assert listed == {CAFE, DIRX, b"link\xe0", b"plain"}
    assert os.readlink(os.path.join(os.fsencode(dst), b"link\xe0")) == CAFE
    with open(os.path.join(os.fsencode(dst), CAFE), "rb") as fh:
        assert fh.read() == b"latin-1 name"
    assert "in sync" in ok(hsync("diff", src, dst)).out

    # a new odd name and a rename of an odd directory, as the JSON plan shows them
    with open(os.path.join(os.fsencode(src), b"n\xe9w\xff"), "wb") as fh:
        fh.write(b"brand new")
    os.rename(os.path.join(os.fsencode(src), DIRX), os.path.join(os.fsencode(src), b"e\xfe"))
    ops = plan_json(src, dst)
    creates = [o for o in ops if o["op"] == "create"]
    assert [os.fsencode(o["path"]) for o in creates] == [b"n\xe9w\xff"], ops
    moves = [o for o in ops if o["op"] == "move"]
    assert [(os.fsencode(o["path"]), os.fsencode(o["to"])) for o in moves] == [
        (DIRX, b"e\xfe")
    ], ops
    r = ok(hsync("diff", src, dst), 1)  # the text output copes too
    assert os.fsencode(r.out).count(b"n\xe9w\xff") == 1
    ok(hsync("sync", src, dst))
    assert_same_tree(src, dst)


def test_non_utf8_name_in_json_report(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(src, {os.fsdecode(CAFE): b"x"})
    os.mknod(os.path.join(os.fsencode(src), b"sock\xe9"), 0o600 | stat.S_IFSOCK)
    r = ok(hsync("sync", "--json", src, tmp_path / "dst"))
    report = json.loads(r.out_bytes.decode("utf-8"))
    assert [os.fsencode(s["path"]) for s in report["skipped"]] == [b"sock\xe9"]


# -- special files ------------------------------------------------------------------------


def test_fifo_is_skipped_with_a_warning_under_no_specials(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"sub/regular": b"r", "top": b"t"})
    os.mkfifo(src / "sub" / "pipe")
    set_dir_mtimes(src)
    dst = tmp_path / "dst"
    r = ok(hsync("sync", "--no-specials", src, dst))
    warn = [line for line in r.err.splitlines() if "sub/pipe" in line]
    assert warn, r.err
    assert re.search(r"fifo", warn[0], re.I), warn
    assert not os.path.lexists(dst / "sub" / "pipe")
    want = read_tree(src)
    del want[b"sub/pipe"]
    assert read_tree(dst) == want  # the rest is equal
    r = ok(hsync("sync", "--json", "--no-specials", src, dst))
    assert {"path": "sub/pipe", "kind": "FIFO"} in json.loads(r.out)["skipped"]
    # a skipped special file does not make the trees differ
    ok(hsync("diff", "--no-specials", src, dst))


def test_socket_is_skipped_with_a_warning(tmp_path: Path) -> None:
    import socket

    src = build(tmp_path / "src", {"f": b"f"})
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(src / "sock"))
        r = ok(hsync("sync", src, tmp_path / "dst"))
    finally:
        s.close()
    assert "sock" in r.err
    assert not os.path.lexists(tmp_path / "dst" / "sock")
    assert (tmp_path / "dst" / "f").read_bytes() == b"f"


# -- partial failures as an unprivileged user ---------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-accessible directory outside pytest's 0700 tmp_path, for user 65534."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run hsync as an unprivileged user")
    if os.geteuid() != 0:
        pytest.skip("not root: cannot switch to an unprivileged user (setpriv needs root)")
    base = Path(tempfile.mkdtemp(prefix="hsync-cli-"))
    try:
        os.chmod(base, 0o777)
        probe = hsync("--help", nobody=True)
        if probe.rc != 0:
            pytest.skip(f"user 65534 cannot run {hsync_bin()}: {probe.err.strip()[:200]}")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def nobody_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(base)
    env["XDG_STATE_HOME"] = str(base / "state")
    return env


def test_device_nodes_as_a_user_are_one_warning_per_run(shared_dir: Path) -> None:
    """Only root can create device nodes: a user's run leaves them out on both sides
    with ONE warning (not one per node), exit 0; its FIFOs are still synced, and a
    device already on the destination is not deleted."""
    src = build(shared_dir / "src", {"f": b"f"})
    for i in range(3):
        os.mknod(src / f"tty{i}", 0o644 | stat.S_IFCHR, os.makedev(4, 64 + i))
    os.mkfifo(src / "pipe")
    os.chmod(src / "pipe", 0o644)
    dst = shared_dir / "dst"
    dst.mkdir()
    os.mknod(dst / "tty0", 0o644 | stat.S_IFCHR, os.makedev(4, 64))
    os.chown(dst, 65534, 65534)
    r = ok(hsync("sync", "--delete", src, dst, env=nobody_env(shared_dir), nobody=True))
    lines = [line for line in r.err.splitlines() if "device" in line]
    assert len(lines) == 1 and "3 device nodes" in lines[0] and "root" in lines[0], r.err
    assert "tty0" in lines[0]  # the first one named
    assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)
    assert not os.path.lexists(dst / "tty1")
    assert stat.S_ISCHR(os.lstat(dst / "tty0").st_mode)  # not the user's to delete


def test_unreadable_source_file_is_a_partial_failure(shared_dir: Path) -> None:
    src = build(shared_dir / "src", {"a": b"aaa", "sub/c": b"ccc", "sub/d": Link("c"),
                                     "secret": File(b"hidden", 0o000)})
    dst = shared_dir / "dst"
    r = hsync("sync", src, dst, env=nobody_env(shared_dir), nobody=True)
    assert r.rc == 3, r
    assert "Traceback" not in r.err
    assert "secret" in r.err
    expected = read_tree(src)
    del expected[b"secret"]
    assert read_tree(dst) == expected  # the rest is synced, directory metadata included
    assert not any(n.startswith(".hsync-tmp-") for n in os.listdir(dst))


def test_unreadable_source_directory_is_a_partial_failure(shared_dir: Path) -> None:
    src = build(shared_dir / "src", {"a": b"aaa", "locked/keep": b"kept", "locked/k2": b"2"})
    dst = shared_dir / "dst"
    env = nobody_env(shared_dir)
    ok(hsync("sync", src, dst, env=env, nobody=True))
    os.chmod(src / "locked", 0o000)
    (src / "new").write_bytes(b"new")
    r = hsync("sync", src, dst, env=env, nobody=True)
    assert r.rc == 3, r
    assert "Traceback" not in r.err
    assert "locked" in r.err
    assert (dst / "new").read_bytes() == b"new"
    # what hsync could not list on the source is not deleted on the destination
    assert (dst / "locked" / "keep").read_bytes() == b"kept"
    assert (dst / "locked" / "k2").read_bytes() == b"2"


def test_unreadable_source_root_is_bad_input(shared_dir: Path) -> None:
    src = build(shared_dir / "src", {"a": b"aaa"})
    dst = build(shared_dir / "dst", {"keep": b"k"})
    os.chmod(src, 0o700)  # root's, not readable by 65534
    os.chown(dst, 65534, 65534)
    before = read_tree(dst)
    r = hsync("sync", src, dst, env=nobody_env(shared_dir), nobody=True)
    assert_bad_input(r, str(src), r"not readable|permission denied")
    assert read_tree(dst) == before


# -- the source is never written ----------------------------------------------------------


def test_source_is_never_written(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    (src / "a" / ".hsync-tmp-from-elsewhere").write_bytes(b"looks like a temp")
    set_dir_mtimes(src)
    dst = tmp_path / "dst"
    before, before_stat = read_tree(src), stat_all(src)

    ok(hsync("sync", "-n", src, dst))
    ok(hsync("sync", src, dst))
    (dst / "top.txt").write_bytes(b"changed on the destination")
    (dst / "a" / "sibling").unlink()
    (dst / "dst-only").write_bytes(b"x")
    ok(hsync("diff", src, dst), 1)
    ok(hsync("diff", "--json", src, dst), 1)
    ok(hsync("sync", "--dry-run", "--checksum", src, dst))
    ok(hsync("sync", "--checksum", src, dst))
    os.rename(dst / "a", dst / "moved-on-dst")
    ok(hsync("sync", src, dst))
    ok(hsync("diff", "--checksum", src, dst))

    assert read_tree(src) == before
    assert stat_all(src) == before_stat


# -- temporary files of an interrupted publish --------------------------------------------


def test_stale_temporary_files_are_removed_and_never_copied(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    (src / ".hsync-tmp-abc-1-0123abcd").write_bytes(b"a temp on the source")
    (src / "a" / ".hsync-tmp-1-2-deadbeef").write_bytes(b"another")
    set_dir_mtimes(src)
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    assert not os.path.lexists(dst / ".hsync-tmp-abc-1-0123abcd")
    assert not os.path.lexists(dst / "a" / ".hsync-tmp-1-2-deadbeef")
    assert (src / ".hsync-tmp-abc-1-0123abcd").exists()  # and not removed from the source

    # an interrupted publish left temporaries in the destination
    (dst / ".hsync-tmp-a1-0-00ff00ff").write_bytes(b"half written")
    (dst / "a" / "b" / ".hsync-tmp-4d2-7-12345678").write_bytes(b"half")
    ok(hsync("sync", src, dst))
    assert not os.path.lexists(dst / ".hsync-tmp-a1-0-00ff00ff")
    assert not os.path.lexists(dst / "a" / "b" / ".hsync-tmp-4d2-7-12345678")


def test_after_temp_cleanup_the_trees_are_in_sync(tmp_path: Path) -> None:
    """The directory that held a stale temporary gets its source mtime back."""
    src = make_sample(tmp_path / "src")
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    (dst / "a" / ".hsync-tmp-1f-3-abcdef01").write_bytes(b"half written")
    ok(hsync("sync", src, dst))
    assert not os.path.lexists(dst / "a" / ".hsync-tmp-1f-3-abcdef01")
    assert_same_tree(src, dst)
    assert "in sync" in ok(hsync("diff", src, dst)).out


# -- history file -------------------------------------------------------------------------


def test_history_files_are_private(tmp_path: Path) -> None:
    src = make_sample(tmp_path / "src")
    state = tmp_path / "custom" / "history.sqlite"
    state.parent.mkdir()
    ok(hsync("sync", "--state", state, src, tmp_path / "dst"))
    assert state.exists()
    for p in state.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    ok(hsync("sync", src, tmp_path / "dst2"))  # default: $XDG_STATE_HOME/hsync/
    files = [p for p in (tmp_path / "state" / "hsync").rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


# -- --help -------------------------------------------------------------------------------


def test_top_level_help_lists_the_commands() -> None:
    r = ok(hsync("--help"))
    for cmd in ("sync", "diff"):
        assert re.search(rf"^\s+{cmd}\b", r.out, re.M), r.out


@pytest.mark.parametrize(("command", "options"), [
    ("sync", ["--dry-run", "--no-delete", "--checksum", "--exclude", "--exclude-from",
              "--max-delete", "--json", "--state", "--progress", "--allow-empty-source"]),
    ("diff", ["--json", "--tree"]),
])
def test_command_help(command: str, options: list[str]) -> None:
    r = ok(hsync(command, "--help"))
    assert "Usage" in r.out
    for opt in options:
        assert opt in r.out, f"{opt} missing from `hsync {command} --help`"


def test_unreadable_destination_directory_is_not_called_in_sync(shared_dir: Path) -> None:
    """Regression: a destination directory hsync cannot list was skipped silently (exit 0,
    "in sync") and the source's new file there was never copied."""
    src = build(shared_dir / "src", {"sub/a": b"a"})
    dst = shared_dir / "dst"
    env = nobody_env(shared_dir)
    ok(hsync("sync", src, dst, env=env, nobody=True))
    (src / "sub" / "new").write_bytes(b"new")
    os.chmod(dst / "sub", 0o300)  # writable, not listable
    r = hsync("sync", src, dst, env=env, nobody=True)
    assert r.rc == 3, r
    assert "sub" in r.err and "Traceback" not in r.err
    d = hsync("diff", src, dst, env=env, nobody=True)
    assert d.rc == 2, d
    assert "not compared" in d.err


# -- regressions named after the bug they pin ----------------------------------------------


def test_same_size_and_mtime_but_other_content_is_not_a_move(tmp_path: Path) -> None:
    """Regression: without a history, a file created with the size and mtime of a deleted
    one was taken for it moved, and its content was never copied."""
    src = build(tmp_path / "src", {"old/x": File(b"AAAA", mtime_ns=T0)})
    dst = tmp_path / "dst"
    ok(hsync("sync", "--delete", src, dst, "--state", ""))
    shutil.rmtree(src / "old")
    build(src, {"new/z": File(b"CCCC", mtime_ns=T0)})
    ok(hsync("sync", "--delete", src, dst, "--state", ""))
    assert (dst / "new" / "z").read_bytes() == b"CCCC"
    assert_same_tree(src, dst)


def test_non_utf8_name_printed_under_a_strict_utf8_stdout(tmp_path: Path) -> None:
    """Regression: with PYTHONIOENCODING=utf-8, printing a name that is not UTF-8 raised
    UnicodeEncodeError (exit 2) instead of printing the plan."""
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"caf\xe9"), "wb") as f:
        f.write(b"x")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    r = hsync("diff", src, tmp_path / "dst", env=env)
    assert r.rc == 1, r
    assert b"caf\xe9" in r.out_bytes
    r = ok(hsync("sync", "-n", src, tmp_path / "dst", env=env))
    assert b"caf\xe9" in r.out_bytes


def test_read_only_directories_are_synced_as_a_user(shared_dir: Path) -> None:
    """Regression: as an ordinary user, creates and deletes inside a destination
    directory without owner write (a read-only tree, a module cache) failed on every run.
    hsync makes it owner-writable for the change and puts its mode back."""
    src = build(shared_dir / "src", {"ro/a": b"a", "ro/b": b"b"})
    dst = shared_dir / "dst"
    env = nobody_env(shared_dir)
    os.chown(src, 65534, 65534)
    for p in (src / "ro", src / "ro" / "a", src / "ro" / "b"):
        os.chown(p, 65534, 65534)
    os.chmod(src / "ro", 0o555)
    ok(hsync("sync", src, dst, env=env, nobody=True))
    assert stat.S_IMODE(os.stat(dst / "ro").st_mode) == 0o555
    os.chmod(src / "ro", 0o755)
    (src / "ro" / "a").unlink()
    (src / "ro" / "c").write_bytes(b"c")
    os.chmod(src / "ro", 0o555)
    ok(hsync("sync", src, dst, env=env, nobody=True))
    assert sorted(os.listdir(dst / "ro")) == ["b", "c"]
    assert_same_tree(src, dst)


def test_destination_directory_holding_a_fifo_is_deleted(tmp_path: Path) -> None:
    """Regression: special files are never synced, so the plan did not know the FIFO in
    a destination-only directory, and the directory's delete failed on every run."""
    src = build(tmp_path / "src", {"keep": b"k"})
    dst = build(tmp_path / "dst", {"keep": b"k", "gone/f": b"f"})
    os.mkfifo(dst / "gone" / "pipe")
    ok(hsync("sync", "--delete", src, dst))
    assert not os.path.lexists(dst / "gone")


def test_read_only_directory_moved_to_another_parent(shared_dir: Path) -> None:
    """Regression: moving a directory to a new parent rewrites its "..", which needs
    write permission on the directory itself; a read-only one failed on every run."""
    src = build(shared_dir / "src", {"a/ro/f": b"f", "b/g": b"g"})
    dst = shared_dir / "dst"
    env = nobody_env(shared_dir)
    for dirpath, dirnames, filenames in os.walk(src):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.chown(n, 65534, 65534)
    os.chmod(src / "a" / "ro", 0o555)
    ok(hsync("sync", src, dst, env=env, nobody=True))
    os.chmod(src / "a", 0o755)
    os.rename(src / "a" / "ro", src / "b" / "ro")
    r = ok(hsync("sync", "--json", src, dst, env=env, nobody=True))
    assert json.loads(r.out)["counts"]["move"] == 1
    assert_same_tree(src, dst)


def test_kept_read_only_directory_keeps_its_mode(shared_dir: Path) -> None:
    """Regression: a destination-only directory kept for its excluded content was left
    owner-writable after hsync unlocked it to delete a sibling of that content."""
    src = build(shared_dir / "src", {"z": b"z"})
    dst = build(shared_dir / "dst", {"P/keep.log": b"log", "P/y": b"y", "z": b"z"})
    for dirpath, dirnames, filenames in os.walk(dst):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.chown(n, 65534, 65534)
    os.chmod(dst / "P", 0o555)
    ok(hsync("sync", "--delete", "--exclude", "*.log", src, dst, env=nobody_env(shared_dir),
             nobody=True))
    assert sorted(os.listdir(dst / "P")) == ["keep.log"]
    assert stat.S_IMODE(os.stat(dst / "P").st_mode) == 0o555
