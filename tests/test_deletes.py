"""Deletes run on a pool of threads (issue 15): every file delete of a batch is in
flight at once, and every other op but a directory's update (set once they are done)
waits for them. These check what that must keep:
a directory is removed only once its files are gone, a name freed by a delete can be
taken by a create of another kind, a delete refused is a problem (not a crash), and the
tree ends equal to the source."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from treeutil import assert_same_tree, build, hsync_bin

import hsync
from hsync.history import History
from hsync.model import DELETE, UPDATE
from hsync.oneshot import sync_once
from hsync.options import Options

T0 = 1_577_836_800 * 10**9  # 2020-01-01
CTIME_LAG = 0.05
"""Past the source's ctime lag (``backend.CtimeClock``): nodes built before a sync's
mark are older than it, their attributes not read again by the next run."""


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


def _history_keys(state: str) -> set[tuple[str, ...]]:
    db = sqlite3.connect(state)
    try:
        return {tuple(bytes(k).decode().split("\0")) if k else ()
                for (k,) in db.execute("SELECT key FROM nodes")}
    finally:
        db.close()


def test_the_deleted_rows_are_gone_from_the_history_after_one_run(tmp_path: Path) -> None:
    """One run that deletes drops the deleted nodes' rows (and nothing else): the next
    run has nothing to do."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _tree(src, dirs=10, files=200, seed=3)
    state = str(tmp_path / "state.sqlite")
    hsync.sync(str(src), str(dst), state=state)
    gone = [tuple(rel.split("/")) for rel in random.Random(4).sample(files, 40)]
    for key in gone:
        os.unlink(src.joinpath(*key))
    before = _history_keys(state)
    report = hsync.sync(str(src), str(dst), state=state)
    assert report.ok and report.counts["delete"] == 40, report.problems
    assert _history_keys(state) == before - set(gone)
    assert not hsync.diff(str(src), str(dst), state=state)
    assert_same_tree(src, dst)


def test_directory_updates_do_not_wait_for_the_deletes_in_flight(tmp_path: Path) -> None:
    """A directory that lost files gets its mtime back once the batch's deletes are done
    (``Touched.settle``), so its update does not wait for the deletes in flight: every
    file delete of the batch is in flight at once (all reported after the directories'
    updates), and each directory ends with the source's mtime."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {f"d{d:02d}/f{i}": b"%d" % i for d in range(12) for i in range(6)})
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    for d in range(12):
        for i in (1, 4):
            os.unlink(src / f"d{d:02d}" / f"f{i}")
    done: list[str] = []
    report = sync_once(str(src), str(dst), Options(state=state),
                       on_done=lambda op: done.append(op.op))
    assert report.ok and report.counts["delete"] == 24, report.problems
    updates = [i for i, op in enumerate(done) if op == UPDATE]
    deletes = [i for i, op in enumerate(done) if op == DELETE]
    assert len(updates) >= 12 and max(updates) < min(deletes), done
    for d in range(12):
        s, t = os.lstat(src / f"d{d:02d}"), os.lstat(dst / f"d{d:02d}")
        assert t.st_mtime_ns == s.st_mtime_ns
    assert_same_tree(src, dst)


def test_a_directory_that_only_lost_files_is_not_reidentified_child_by_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A directory whose mtime moved because files were removed from it is compared by
    its listing: its remaining children, untouched since the last sync (their ctimes
    older than its mark), are not looked up in the history by identity one by one."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    # other directories: the ones whose listings differ are few, compared by digests
    build(src, {**{f"d/f{i:02d}": b"%d" % i for i in range(40)},
                **{f"e{i}/x": b"x" for i in range(10)}})
    time.sleep(CTIME_LAG)
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    for i in range(0, 40, 4):
        os.unlink(src / "d" / f"f{i:02d}")
    asked: list[tuple[str, ...]] = []
    moved_from = History.moved_from

    def counted(self: History, places: dict[object, tuple[str, ...]]) -> object:
        asked.extend(places.values())
        return moved_from(self, places)  # type: ignore[arg-type]

    monkeypatch.setattr(History, "moved_from", counted)
    report = sync_once(str(src), str(dst), Options(state=state))
    assert report.ok and report.counts["delete"] == 10, report.problems
    assert ("d",) in asked  # the directory itself: it might have come from elsewhere
    assert [k for k in asked if len(k) == 2] == []  # none of its 30 remaining files
    assert_same_tree(src, dst)


def test_a_swap_beside_a_delete_is_still_found_by_identity(tmp_path: Path) -> None:
    """Two equal files that swap names in a directory that also lost a file: a rename
    sets a node's ctime, so both are read and looked up, and each destination file
    follows its source file (two renames, nothing copied)."""
    src = build(tmp_path / "src", {"d/a": b"same", "d/b": b"same", "d/gone": b"g",
                                   **{f"d/k{i}": b"k" for i in range(10)},
                                   **{f"e{i}/x": b"x" for i in range(10)}})
    for name in ("a", "b"):
        os.utime(src / "d" / name, ns=(T0, T0))
    time.sleep(CTIME_LAG)
    dst, state = tmp_path / "dst", str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    followed = {os.stat(src / "d" / n).st_ino: os.stat(dst / "d" / n).st_ino for n in "ab"}
    os.unlink(src / "d" / "gone")
    os.rename(src / "d" / "a", src / "d" / "tmp")
    os.rename(src / "d" / "b", src / "d" / "a")
    os.rename(src / "d" / "tmp", src / "d" / "b")
    report = sync_once(str(src), str(dst), Options(state=state))
    assert report.ok and report.counts["move"] >= 2 and report.bytes_copied == 0
    assert report.counts["delete"] == 1
    assert {os.stat(src / "d" / n).st_ino: os.stat(dst / "d" / n).st_ino
            for n in "ab"} == followed
    assert_same_tree(src, dst)


_KILLED_MID_DELETES = """
import os, signal, sys
from hsync.backends.fs import apply
from hsync.oneshot import sync_once
from hsync.options import Options

unlink, done = apply.Batch.unlink, []

def killed_after_some(self, op):
    unlink(self, op)
    done.append(op.key)
    if len(done) == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)  # the whole run, its pool's threads too

apply.Batch.unlink = killed_after_some
sync_once(sys.argv[1], sys.argv[2], Options(state=sys.argv[3]))
"""


def test_a_run_killed_among_its_deletes_is_finished_by_the_next(tmp_path: Path) -> None:
    """A run killed (SIGKILL) after some of its batch's deletes leaves the batch
    unfinished in the journal; the next run rolls it forward (compares in full, trusts
    no row), deletes the rest, puts the directories' mtimes back, and drops the deleted
    nodes' rows from the history."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _tree(src, dirs=15, files=400, seed=5)
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    gone = random.Random(6).sample(files, 120)
    for rel in gone:
        os.unlink(src / rel)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_DELETES, str(src), str(dst), state, "30"],
        capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [rel for rel in gone if (dst / rel).exists()]
    assert 0 < len(left) < len(gone)  # killed among its deletes
    journal = sqlite3.connect(str(tmp_path / "state.journal.sqlite"))
    try:
        states = [s for (s,) in journal.execute("SELECT state FROM batches ORDER BY seq")]
    finally:
        journal.close()
    assert states[-1] in ("begun", "running"), states

    report = sync_once(str(src), str(dst), Options(state=state))
    assert report.ok, report.problems
    assert report.counts["delete"] == len(left)
    assert_same_tree(src, dst)  # directory mtimes included
    assert not {tuple(rel.split("/")) for rel in gone} & _history_keys(state)
    journal = sqlite3.connect(str(tmp_path / "state.journal.sqlite"))
    try:
        states = [s for (s,) in journal.execute("SELECT state FROM batches ORDER BY seq")]
    finally:
        journal.close()
    assert "rolled forward" in states and states[-1] == "done", states
    assert not sync_once(str(src), str(dst), Options(state=state, dry_run=True)).plan


def test_only_the_directory_whose_listing_changed_is_compared(tmp_path: Path) -> None:
    """``hsync sync --json`` after two files deleted from one directory of twenty: the
    comparison holds that directory (and the root above it) on the source, and the
    two deleted files with them on the destination; no other directory, and none of
    the directory's remaining files, is compared."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {f"d{d:02d}/f{i}": b"%d" % i for d in range(20) for i in range(10)})
    time.sleep(CTIME_LAG)
    state = str(tmp_path / "state.sqlite")

    def run() -> dict[str, Any]:
        done = subprocess.run(
            [hsync_bin(), "sync", str(src), str(dst), "--json", "--state", state],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    assert run()["counts"]["create"] == 221
    for i in (1, 4):
        os.unlink(src / "d03" / f"f{i}")
    report = run()
    assert report["counts"] == {"create": 0, "update": 1, "move": 0, "delete": 2}
    assert report["compared"] == {"source": 2, "destination": 4}
    assert report["scanned"] == {"source": 219, "destination": 221}
    assert_same_tree(src, dst)


def _stats_of(monkeypatch: pytest.MonkeyPatch, dst: Path) -> list[tuple[str, ...]]:
    """The keys the destination's backend is asked to ``stat`` (read in full) from now on."""
    from hsync.backends.fs import FsBackend

    asked: list[tuple[str, ...]] = []
    stat = FsBackend.stat

    def counted(self: FsBackend, key: tuple[str, ...]) -> object:
        if os.path.samefile(self.root, dst):
            asked.append(key)
        return stat(self, key)

    monkeypatch.setattr(FsBackend, "stat", counted)
    return asked


def test_the_files_a_spread_delete_removes_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files deleted on the source, spread over directories: the destination's copies
    (unchanged since the last sync) are deleted without their attributes read again
    (a delete needs none: the applier checks kind, size and mtime before it removes
    a node), nor are their directories' (unchanged since the last sync, which gave
    them the source's attributes: the history's fingerprint says the source's are
    still those), and the trees end equal."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {f"d{d}/f{i}": b"%d" % i for d in range(12) for i in range(8)})
    time.sleep(CTIME_LAG)
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    gone = [(f"d{d}", f"f{d % 8}") for d in range(0, 12, 2)]
    for k in gone:
        os.unlink(src.joinpath(*k))
    asked = _stats_of(monkeypatch, dst)
    report = sync_once(str(src), str(dst), Options(state=state))
    assert report.ok and report.counts["delete"] == len(gone), report.problems
    assert asked == []
    assert_same_tree(src, dst)


def _xattr(path: Path, value: bytes) -> None:
    try:
        os.setxattr(path, "user.hsync-test", value)
    except OSError:
        pytest.skip("no user extended attributes on this filesystem")


@pytest.mark.parametrize("where", ["source", "destination"])
def test_a_directory_attribute_changed_beside_a_delete_is_synced(
    tmp_path: Path, where: str,
) -> None:
    """A directory that lost a file on the source and whose extended attribute changed
    too, on the source (the history's fingerprint of its data no longer matches) or
    behind hsync's back on the destination (its ctime moved: read in full): the
    destination's directory ends with the source's attribute, beside the delete."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {**{f"d/f{i}": b"%d" % i for i in range(6)},
                **{f"e{i}/x": b"x" for i in range(8)}})
    _xattr(src / "d", b"one")
    time.sleep(CTIME_LAG)
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    assert os.getxattr(dst / "d", "user.hsync-test") == b"one"
    os.unlink(src / "d" / "f3")
    _xattr(src / "d" if where == "source" else dst / "d", b"two")
    report = sync_once(str(src), str(dst), Options(state=state))
    assert report.ok and report.counts["delete"] == 1, report.problems
    assert os.getxattr(dst / "d", "user.hsync-test") == os.getxattr(
        src / "d", "user.hsync-test")
    assert_same_tree(src, dst)


def test_a_file_renamed_over_another_beside_deletes_moves_with_its_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file renamed over another name on the source (no name new on the source),
    beside spread deletes: the destination's file is moved there (its attributes
    compare equal: no attribute update; its old place is not read, the history's
    fingerprint of what the last sync wrote there vouches that they are the moved
    source file's), the replaced file and the deleted ones removed, and the moved file
    keeps its extended attribute and its inode."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {"d/a": b"aaa", "d/b": b"bb", "d/gone": b"g",
                **{f"e{i}/x": b"x" for i in range(6)}, **{f"e{i}/y": b"y" for i in range(6)}})
    try:
        os.setxattr(src / "d" / "a", "user.hsync-test", b"kept")
    except OSError:
        pytest.skip("no user extended attributes on this filesystem")
    time.sleep(CTIME_LAG)
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    inode = os.stat(dst / "d" / "a").st_ino
    os.replace(src / "d" / "a", src / "d" / "b")
    os.unlink(src / "d" / "gone")
    for i in range(0, 6, 2):
        os.unlink(src / f"e{i}" / "y")
    asked = _stats_of(monkeypatch, dst)
    report = sync_once(str(src), str(dst), Options(state=state))
    assert report.ok, report.problems
    assert report.counts["move"] == 1 and report.bytes_copied == 0
    assert report.counts["delete"] == 5  # the replaced b, gone, three y
    assert report.counts["update"] == 4  # the four directories' mtimes: no file's attributes
    assert ("d", "a") not in asked  # the move's origin: vouched for by the history
    assert [k for k in asked if k[-1] in ("gone", "y")] == []
    assert os.stat(dst / "d" / "b").st_ino == inode
    assert os.getxattr(dst / "d" / "b", "user.hsync-test") == b"kept"
    assert_same_tree(src, dst)


def test_the_destination_listings_asked_ahead_are_what_listings_gives(tmp_path: Path) -> None:
    """A spread delete asks the destination's scan (a forked child here) for the
    dirty directories' listings before it lists the source's (``ask_listings``): the
    answer taken later, after other requests were made meanwhile, is the listings, the
    same as a scan in this process gives."""
    from hsync.backends.fs import FsBackend

    files = _tree(tmp_path / "t", dirs=6, files=120, seed=9)
    backend = FsBackend(str(tmp_path / "t"))
    dirs = sorted({tuple(rel.split("/")[:-1]) for rel in files[::7]})
    local = backend.digest_scan()
    want = local.listings(dirs)
    assert sum(len(v) for v in want.values()) > len(dirs)
    child = backend.digest_scan(background=True)
    try:
        assert child.pid  # type: ignore[attr-defined]  # (a child indeed)
        child.summary()
        take = child.ask_listings(dirs)
        assert child.rows(keys=[dirs[0]]) == local.rows(keys=[dirs[0]])  # meanwhile
        again = child.ask_listings(dirs[:1])  # a second one before the first is taken
        assert take() == want
        assert again() == {dirs[0]: want[dirs[0]]}
        assert child.listings(dirs) == want
    finally:
        child.close()
    assert local.ask_listings(dirs)() == want


def test_a_rewritten_row_takes_a_new_identity_and_keeps_an_equal_one(tmp_path: Path) -> None:
    """The record sets a row's identity apart from its payload (only where it changed):
    a file replaced by another (a new inode) at the same key is found at that key by its
    new identity, no longer by its old one; a directory whose mtime alone changed keeps
    its identity."""
    from hsync.model import Node, Rows, Snapshot

    def snap(file_ident: int, dir_mtime: int) -> Snapshot:
        return Snapshot(nodes=Rows({
            (): ("dir", 0o755, 0, 1, None, 1, None),
            ("d",): ("dir", 0o755, 0, dir_mtime, None, 2, None),
            ("d", "f"): ("file", 0o644, 3, 5, None, file_ident, None),
        }))

    h = History(str(tmp_path / "h.sqlite"), "file:///s", "file:///d")
    first = snap(10, 1)
    h.record(first, list(first.nodes), full=True)
    second = snap(11, 2)
    h.record(second, [("d",), ("d", "f")])
    found = h.lookup_many([2, 10, 11])
    assert set(found) == {2, 11}
    assert found[11][0] == ("d", "f") and found[2][0] == ("d",)
    assert found[2][1] == Node("dir", 0, 0, 2, None, 2, None)
    h.close()


def test_a_one_shot_record_leaves_its_wal_to_the_next_runs_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a one-shot command's process the record's commit does not checkpoint the WAL
    (a spread delete's record at 100k writes about 2,450 pages, past the default
    checkpoint): it is left in place, every row readable from it, and the next run's
    ``start_checkpoint`` writes it into the database and truncates it."""
    import hsync.history as history_module
    from hsync.model import Rows, Snapshot

    monkeypatch.setattr(history_module, "LEFT_TO_THE_EXIT", True)
    path = str(tmp_path / "h.sqlite")
    h = History(path, "file:///s", "file:///d")
    rows: dict[tuple[str, ...], tuple[Any, ...]] = {(): ("dir", 0o755, 0, 1, None, 1, None)}
    for d in range(60):
        rows[(f"dir{d:03d}",)] = ("dir", 0o755, 0, 1, None, 100 + d, None)
        for i in range(500):
            rows[(f"dir{d:03d}", f"file-{i:05d}")] = (
                "file", 0o644, i, T0 + i, None, (d << 20) + i + 1000, None)
    big = Snapshot(nodes=Rows(rows))
    before = os.path.getsize(path)
    h.record(big, list(rows), full=True)
    wal = path + "-wal"
    assert os.path.getsize(wal) > history_module.WAL_LIMIT
    assert os.path.getsize(path) == before  # not checkpointed: the rows are in the WAL
    assert History(path, "file:///s", "file:///d").holds_more_than(len(rows) - 2)
    join = h.start_checkpoint()
    assert join is not None
    join()
    assert os.path.getsize(wal) == 0
    db = sqlite3.connect(path)  # the database file alone holds every row now
    assert db.execute("SELECT count(*) FROM nodes").fetchone() == (len(rows),)
    db.close()
    assert h.start_checkpoint() is None  # nothing left to do


def test_a_re_sync_checkpoints_the_wal_an_earlier_run_left(tmp_path: Path) -> None:
    """A WAL an earlier run left past the limit (its commits not checkpointed) is
    written into the history and truncated by the next ``hsync sync``, beside its scan:
    nothing committed is lost and the run compares by digests as before."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src, dirs=4, files=40, seed=5)
    state = str(tmp_path / "state.sqlite")
    hsync_cmd = [hsync_bin(), "sync", "--json", "--state", state, str(src), str(dst)]
    assert subprocess.run(hsync_cmd, capture_output=True, check=False).returncode == 0
    # an earlier run's commit left 6 MB in the WAL (a process that ends without closing
    # its connection, as a one-shot command does)
    fill = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1]); db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "with db:\n"
        "    db.execute(\"INSERT INTO meta VALUES ('test-filler', ?)\", (os.urandom(6 << 20),))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", fill, state], check=True)
    assert os.path.getsize(state + "-wal") > 6 << 20
    r = subprocess.run(hsync_cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["compared"] == {"source": 1, "destination": 1}  # digests, as before
    assert os.path.getsize(state + "-wal") == 0
    db = sqlite3.connect(state)
    ((size,),) = db.execute("SELECT length(value) FROM meta WHERE name='test-filler'")
    db.close()
    assert size == 6 << 20
