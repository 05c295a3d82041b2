"""Filters (SPEC 2): gitignore-style ``--exclude`` selecting what git selects,
rsync's ``--include`` / ``--filter`` rules (first match wins), ``--delete-excluded``.
Through the installed ``hsync`` command, as a user would run it."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from treeutil import build, hsync_bin

from hsync.errors import UsageError
from hsync.filters import Exclude
from hsync.filters import build as build_filter

TREE: dict[str, bytes] = {
    name: name.encode()
    for name in (
        "x.gz", "y.txt", ".hidden.gz", "top.txt", "sp ace.gz",
        "a/z.gz", "a/w.txt", "a/b/c/q.gz", "a/b/c/r.txt", "a/keep/k.txt", "a/keep/k.gz",
        "build/out.o", "build/keep.txt", "build/sub/deep.gz",
        "d/e.gz", "d/f", "d/top.txt", "logs/app.log", "logs/important.log",
        "x/cache/c1", "y/cache/c2", "cache/c3", "doc/a.md", "doc/deep/er/b.md",
    )
}

GITIGNORES = [
    ["*", "!*/", "!*.gz"],  # the issue's: everything but the .gz files, at every depth
    ["build/", "!build/keep.txt"],  # a file below an excluded directory stays out
    ["*.log", "!important.log"],
    ["/top.txt", "a/b/"],
    ["**/cache", "!x/cache"],
    ["*", "!*/", "!a/**"],
    ["a/*", "!a/keep/"],
    ["doc/**/*.md"],
    ["*.gz", "!d/*.gz", "d/"],
    ["# a comment", "", "\\#x", "*.txt", "!/top.txt"],
    ["cache/", "!cache"],
    ["[a-c]/", "!?/keep/"],
]


def hsync(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hsync_bin(), *map(os.fspath, args)], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120, check=False,
    )


def ok(r: subprocess.CompletedProcess[str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == rc, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def files(root: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(root) for f in fs
    }


def git_selects(tmp: Path, lines: list[str]) -> set[str]:
    """The files git would add in a repository holding TREE and ``lines`` as its
    .gitignore (the .gitignore itself left out)."""
    repo = build(tmp / "repo", TREE)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("".join(line + "\n" for line in lines))
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {p for p in out.split("\0") if p and p != ".gitignore"}


@pytest.mark.parametrize("lines", GITIGNORES, ids=lambda ls: " ".join(ls) or "-")
def test_exclude_selects_what_git_selects(tmp_path: Path, lines: list[str]) -> None:
    """The same lines as --exclude and in a .gitignore select the same files (before
    the fix, '*' '!*/' '!*.gz' kept only the top-level .gz files)."""
    want = git_selects(tmp_path, lines)
    src, dst = build(tmp_path / "src", TREE), tmp_path / "dst"
    args: list[str] = []
    for line in lines:
        args += ["--exclude", line]
    ok(hsync("sync", *args, "--state", tmp_path / "h.sqlite", src, dst))
    assert files(dst) == want
    ok(hsync("diff", *args, "--state", tmp_path / "h.sqlite", src, dst))


def test_exclude_selects_what_git_selects_issue_case(tmp_path: Path) -> None:
    want = git_selects(tmp_path, ["*", "!*/", "!*.gz"])
    assert "a/b/c/q.gz" in want and "d/e.gz" in want
    src, dst = build(tmp_path / "src", TREE), tmp_path / "dst"
    ok(hsync("sync", "--exclude", "*", "--exclude", "!*/", "--exclude", "!*.gz", src, dst))
    assert files(dst) == want


def test_include_is_tried_before_exclude(tmp_path: Path) -> None:
    """rsync's idiom: --include '*/' --include '*.gz' --exclude '*'."""
    src, dst = build(tmp_path / "src", TREE), tmp_path / "dst"
    ok(hsync("sync", "--include", "*/", "--include", "*.gz", "--exclude", "*", src, dst))
    assert files(dst) == {k for k in TREE if k.endswith(".gz")}
    # and an --include keeps a file that an --exclude names
    dst2 = tmp_path / "dst2"
    ok(hsync("sync", "--exclude", "*.log", "--include", "important.log", src, dst2))
    assert files(dst2) == set(TREE) - {"logs/app.log"}


def test_filter_rules_first_match_wins(tmp_path: Path) -> None:
    src = build(tmp_path / "src", TREE)
    ok(hsync("sync", "--filter", "+ important.log", "--filter", "- *.log",
             src, tmp_path / "d1"))
    assert files(tmp_path / "d1") == set(TREE) - {"logs/app.log"}
    ok(hsync("sync", "--filter", "- *.log", "--filter", "+ important.log",
             src, tmp_path / "d2"))
    assert files(tmp_path / "d2") == set(TREE) - {"logs/app.log", "logs/important.log"}
    # rsync's anchoring: '/top.txt' is the root's only; 'a/b' matches at any depth's end;
    # 'build/***' is the directory and its content
    ok(hsync("sync", "--filter", "- /top.txt", "--filter", "exclude build/***",
             "--filter", "- c/r.txt", src, tmp_path / "d3"))
    gone = {"top.txt", "a/b/c/r.txt"} | {k for k in TREE if k.startswith("build/")}
    assert files(tmp_path / "d3") == set(TREE) - gone
    assert not (tmp_path / "d3" / "build").exists()
    # a '+' rule before a gitignore-style exclude of everything: only what it names
    ok(hsync("sync", "--filter", "+ */", "--filter", "include *.md", "--exclude", "*",
             src, tmp_path / "d4"))
    assert files(tmp_path / "d4") == {"doc/a.md", "doc/deep/er/b.md"}


@pytest.mark.parametrize("rule", ["x y", "+", "* foo", "-nospace"])
def test_a_malformed_filter_rule_is_a_usage_error(tmp_path: Path, rule: str) -> None:
    src = build(tmp_path / "src", {"f": b"f"})
    r = ok(hsync("sync", "--filter", rule, src, tmp_path / "dst"), 2)
    assert len(r.stderr.strip().splitlines()) == 1 and "filter rule" in r.stderr
    assert not (tmp_path / "dst").exists()


DST_ONLY = {"old.log": b"excluded", "build/stale": b"in an excluded dir", "stale": b"plain"}


def test_delete_excluded(tmp_path: Path) -> None:
    """Without it, excluded nodes on the destination stay; with it they go (rsync; it
    implies --delete, as rsync's does)."""
    src = build(tmp_path / "src", {"a.txt": b"a", "keep.log": b"k"})
    spec = {"--exclude": ["*.log", "build/"]}
    args = [x for p in spec["--exclude"] for x in ("--exclude", p)]
    dst = build(tmp_path / "dst", DST_ONLY)
    ok(hsync("sync", "--delete", *args, src, dst))
    assert files(dst) == {"a.txt", "old.log", "build/stale"}
    r = ok(hsync("diff", "--json", "--delete-excluded", *args, src, dst), 1)
    assert "old.log" in r.stdout and "build" in r.stdout
    ok(hsync("sync", "--delete-excluded", *args, src, dst))
    assert files(dst) == {"a.txt"} and not (dst / "build").exists()
    ok(hsync("diff", "--delete-excluded", *args, src, dst))
    # an excluded source node is still not copied
    assert not (dst / "keep.log").exists()


def test_delete_excluded_with_a_history(tmp_path: Path) -> None:
    """A second run (compared by directory digests when nothing excluded is asked to
    go) deletes what was excluded on the destination once --delete-excluded is given."""
    src = build(tmp_path / "src", {"a/x.txt": b"x", "a/y.tmp": b"y"})
    dst = tmp_path / "dst"
    state = tmp_path / "h.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    ok(hsync("sync", "--state", state, "--exclude", "*.tmp", src, dst))
    assert files(dst) == {"a/x.txt", "a/y.tmp"}
    ok(hsync("sync", "--state", state, "--exclude", "*.tmp", "--delete-excluded", src, dst))
    assert files(dst) == {"a/x.txt"}


def test_filter_value_pickles_and_validates() -> None:
    f = build_filter(["*", "!*/"], include=["*.gz"], filters=["- secret.gz"])
    assert f is not None
    g = pickle.loads(pickle.dumps(f))
    assert g == f and g.rules == (("+", "*.gz"), ("-", "secret.gz"))
    for key, is_dir, want in [
        (("a",), True, False), (("a", "b.gz"), False, False), (("a", "c"), False, True),
        (("secret.gz",), False, False),  # '+ *.gz' comes first
    ]:
        assert g(key, is_dir) is want
    assert build_filter([], [], []) is None
    with pytest.raises(UsageError):
        build_filter([], filters=["? x"])
    with pytest.raises(UsageError):
        Exclude((), rules=[("x", "y")])


def test_daemon_pair_keys(tmp_path: Path) -> None:
    from hsync.daemon import pair_config

    pc = pair_config("pair 1", {
        "source": str(tmp_path), "destination": str(tmp_path / "d"),
        "include": ["*.gz"], "filter": ["- *.tmp"], "delete_excluded": True,
    })
    o = pc.options
    assert (o.include, o.filters, o.delete_excluded) == (("*.gz",), ("- *.tmp",), True)
    with pytest.raises(UsageError, match="pair 1"):
        pair_config("pair 1", {
            "source": str(tmp_path), "destination": str(tmp_path / "d"), "filter": ["x"],
        })


def test_git_is_there() -> None:
    assert shutil.which("git")


def test_delete_excluded_implies_delete(tmp_path: Path) -> None:
    """rsync's --delete-excluded implies --delete: into a destination hsync never synced
    (where deletions are otherwise withheld) it removes what the source lacks too."""
    src = build(tmp_path / "src", {"a.txt": b"a"})
    dst = build(tmp_path / "dst", DST_ONLY)
    ok(hsync("sync", "--delete-excluded", "--exclude", "*.log", src, dst))
    assert files(dst) == {"a.txt"}
