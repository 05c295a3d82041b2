"""sync_once on real filesystem trees (tmp_path): renames stay renames, and a source
file that changes under the copy is never published (SPEC sections 3 and 5)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from treeutil import DIR, File, Link, alive, assert_same_tree, build

from hsync.history import History
from hsync.model import Plan
from hsync.oneshot import sync_once
from hsync.options import Options

T0 = 1_600_000_000 * 10**9
N_FILES = 1000


def _inodes(root: Path) -> dict[str, int]:
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_ino
    return out


def _temps(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if n.startswith(".hsync-tmp-")
    ]


@pytest.mark.parametrize(
    "evidence",
    ["history", "matching"],
    ids=[
        "history: the directory's inode is found where it was synced",
        "matching: no state file, the children match by name and size",
    ],
)
def test_renamed_directory_of_1000_files_is_one_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evidence: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite") if evidence == "history" else ""
    build(
        src,
        {
            "big": DIR,
            **{
                f"big/f{i:04d}": File(b"%d" % i, mode=0o600 if i % 7 else 0o755, mtime_ns=T0 + i)
                for i in range(N_FILES)
            },
            "other": b"unrelated",
        },
    )
    first = sync_once(str(src), str(dst), Options(state=state, check=True, delete=True))
    assert first.ok and first.counts["create"] == N_FILES + 3  # root, big, other
    before = _inodes(dst / "big")
    assert len(before) == N_FILES

    found: dict[object, tuple[str, ...]] = {}
    original = History.lookup_many

    def spy(self: History, identities: Iterable[object]) -> dict[object, Any]:
        hits = original(self, identities)
        # an identity's low 64 bits are the inode (the birth time is above them)
        found.update({ident & (2**64 - 1): key for ident, (key, _) in hits.items()
                      if isinstance(ident, int)})
        return hits

    monkeypatch.setattr(History, "lookup_many", spy)
    big_ino = os.stat(src / "big").st_ino
    (src / "big").rename(src / "renamed")

    report = sync_once(str(src), str(dst), Options(state=state, check=True, delete=True))
    assert report.ok, report.problems
    assert report.counts["move"] == 1
    assert report.counts["create"] == 0
    assert report.counts["delete"] == 0
    assert report.bytes_copied == 0
    assert report.plan is not None
    moves = [op.to_json() for op in report.plan.ops if op.op == "move"]
    assert moves == [{"op": "move", "kind": "dir", "path": "big", "to": "renamed"}]
    assert not (dst / "big").exists()
    assert _inodes(dst / "renamed") == before
    assert_same_tree(src, dst)
    if evidence == "history":
        # the move was found by identity: the history placed the inode at "big"
        assert found.get(big_ino) == ("big",)
    else:
        assert found == {}  # no history at all: the children's similarity found it


@pytest.mark.parametrize(
    "existing", [None, b"old content"], ids=["new file", "updated file"]
)
def test_source_file_changing_before_its_copy_is_copied_after_a_retry(
    tmp_path: Path, existing: bytes | None
) -> None:
    """A copy whose source changed since the scan is not published; it is tried again
    within the run, with the source's node as it is now (issue 12, item 12)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, {"keep": File(b"k", mtime_ns=T0), "d": DIR, "d/f": File(b"v1", mtime_ns=T0 + 1)})
    if existing is not None:
        build(dst, {"keep": File(b"k", mtime_ns=T0), "d": DIR, "d/f": File(existing, mtime_ns=T0)})

    def change_source(plan: Plan) -> None:
        # The plan is made; the file it will copy changes before its copy starts.
        assert any(op.key == ("d", "f") and op.op in ("create", "update") for op in plan.ops)
        (src / "d" / "f").write_bytes(b"v2 longer")
        os.utime(src / "d" / "f", ns=(T0 + 2, T0 + 2))

    options = Options(state=state, check=True)
    report = sync_once(str(src), str(dst), options, on_planned=change_source)
    assert report.ok and report.exit_code == 0, report.problems
    assert (dst / "d" / "f").read_bytes() == b"v2 longer"
    assert (dst / "keep").read_bytes() == b"k"
    assert _temps(dst) == []
    assert_same_tree(src, dst)
    # the history holds what was copied: nothing left to do
    assert len(sync_once(str(src), str(dst), Options(state=state, dry_run=True)).plan) == 0
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).ok


def test_source_file_replaced_during_the_sync_is_not_published(tmp_path: Path) -> None:
    """Same size, another mtime, another inode: a stale plan, its copy not published;
    the retry copies the new file."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {"f": File(b"aaaa", mtime_ns=T0)})

    def replace_source(plan: Plan) -> None:
        build(tmp_path / "side", {"f": File(b"bbbb", mtime_ns=T0 + 5)})
        os.rename(tmp_path / "side" / "f", src / "f")

    report = sync_once(str(src), str(dst), Options(state="", delete=True),
                       on_planned=replace_source)
    # the stale copy is not published; the retry within the run copies the new file
    assert report.ok, report.problems
    assert (dst / "f").read_bytes() == b"bbbb"
    assert _temps(dst) == []
    assert sync_once(str(src), str(dst), Options(state="", delete=True)).ok
    assert_same_tree(src, dst)


def test_symlink_rename_is_a_move_with_history(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, {"a": File(b"x", mtime_ns=T0), "link": Link("a")})
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).ok
    (src / "link").rename(src / "renamed")
    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.ok
    assert_same_tree(src, dst)
    assert report.plan is not None
    assert [op.to_json() for op in report.plan.ops if op.op != "update"] == [
        {"op": "move", "kind": "symlink", "path": "link", "to": "renamed"}
    ]


def test_directory_mtime_restored_after_a_delete_inside_a_moved_directory(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src, {"b/c/k": File(b"1", mtime_ns=T0)})
    build(dst, {"a/c/k": File(b"1", mtime_ns=T0), "a/c/x": b"gone"})
    for tree, top in ((src, "b"), (dst, "a")):
        for d in (tree / top / "c", tree / top, tree):
            os.utime(d, ns=(T0, T0))
    report = sync_once(str(src), str(dst), Options(state="", delete=True, check=True))
    assert report.ok
    assert report.plan is not None
    assert [op.to_json() for op in report.plan.ops] == [
        {"op": "delete", "kind": "file", "path": "a/c/x"},
        {"op": "move", "kind": "dir", "path": "a", "to": "b"},
    ]
    assert_same_tree(src, dst)  # b/c keeps the source's mtime


@pytest.mark.timeout(60)
def test_source_file_replaced_by_a_fifo_does_not_hang(tmp_path: Path) -> None:
    """Regression: a source file replaced by a FIFO after the scan made the copy block
    forever on open(); now it is a problem for retry and the rest is synced."""
    src = build(tmp_path / "src", {"a": b"aaa", "b": b"bbb"})
    dst = tmp_path / "dst"

    def to_fifo(_plan: Plan) -> None:
        os.unlink(src / "a")
        os.mkfifo(src / "a")

    report = sync_once(str(src), str(dst), Options(state="", delete=True), on_planned=to_fifo)
    assert report.exit_code == 3
    assert [p.key for p in report.problems] == [("a",)]
    assert (dst / "b").read_bytes() == b"bbb"
    assert not (dst / "a").exists()


def test_directory_swapped_for_a_symlink_mid_scan_is_not_followed(tmp_path: Path) -> None:
    """Regression: the scan lstat'ed a directory, then listed whatever was at that path
    later, so a directory swapped for a symlink mid-scan leaked files from outside the
    source into the destination. The swap happens from the exclude hook, which runs
    right after the entry's lstat and before its listing."""
    from hsync.backends.fs import FsBackend

    outside = build(tmp_path / "outside", {"secret": b"not yours"})
    src = build(tmp_path / "src", {"a/f": b"f", "b": b"b"})

    def swap(key: tuple[str, ...], is_dir: bool) -> bool:
        if key == ("a",):
            os.rename(src / "a", tmp_path / "a-aside")
            os.symlink(outside, src / "a")
        return False

    snap = FsBackend(str(src)).scan(exclude=swap)
    assert ("a", "secret") not in snap.nodes
    assert ("a",) in snap.incomplete
    report = sync_once(str(src), str(tmp_path / "dst"), Options(state="", delete=True))
    assert report.exit_code == 0  # the next scan sees a symlink and copies it as one
    assert os.path.islink(tmp_path / "dst" / "a")
    assert os.readlink(tmp_path / "dst" / "a") == str(outside)


def test_copies_in_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many files from a local tree are copied by worker processes: the tree is equal,
    and a file changed after the plan, refused by the worker, is copied by the retry."""
    from hsync.backends.fs import copy as fs_copy

    monkeypatch.setattr(fs_copy, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(fs_copy, "CHUNK_FILES", 7)
    spec: dict[str, object] = {f"d{i % 5}/f{i}": File(b"x" * i, mode=0o640) for i in range(60)}
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"

    def touch_one(_plan: Plan) -> None:
        (src / "d3" / "f33").write_bytes(b"changed after the plan")

    report = sync_once(str(src), str(dst), Options(state="", delete=True), on_planned=touch_one)
    # the worker's copy of the changed file failed; the retry within the run copied it
    assert report.ok, report.problems
    assert report.counts["create"] == 1 + 5 + 60
    assert (dst / "d3" / "f33").read_bytes() == b"changed after the plan"
    assert_same_tree(src, dst)
    assert sync_once(str(src), str(dst), Options(state="")).ok


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


@pytest.mark.timeout(120)
def test_copy_workers_die_with_a_killed_run(tmp_path: Path) -> None:
    """Regression: after kill -9 of a run, its copy worker processes went on writing
    into the destination and then hung for ever."""
    import signal
    import subprocess
    import sys
    import time

    from treeutil import hsync_bin

    src = tmp_path / "src"
    chunk = os.urandom(64 * 1024)
    for i in range(3000):
        d = src / f"d{i % 30}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(chunk)
    proc = subprocess.Popen(
        [hsync_bin(), "sync", str(src), str(tmp_path / "dst"), "--state", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _children_of(proc.pid)
        if len(workers) >= 2:
            break
        time.sleep(0.005)
    if proc.poll() is not None or len(workers) < 2:
        proc.wait()
        pytest.skip(f"the run ended before its copy workers could be seen ({sys.platform})")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "copy workers outlived the killed run"


def test_create_never_clobbers_a_file_that_appeared_since_the_scan(tmp_path: Path) -> None:
    """Regression: a planned create renamed its content over whatever had appeared at
    that name on the destination since the scan; now that node is kept and the create
    is a problem for the next round."""
    src = build(tmp_path / "src", {"new": b"from the source", "other": b"o"})
    dst = build(tmp_path / "dst", {"other": b"o"})

    def someone_writes(_plan: Plan) -> None:
        (dst / "new").write_bytes(b"written by someone else meanwhile")

    report = sync_once(str(src), str(dst), Options(state="", delete=True),
                       on_planned=someone_writes)
    assert [p.key for p in report.problems] == [("new",)]
    assert (dst / "new").read_bytes() == b"written by someone else meanwhile"
    assert not [n for n in os.listdir(dst) if n.startswith(".hsync-tmp-")]


def _op_list(plan: Plan | None) -> list[tuple[str, str, str | None]]:
    assert plan is not None
    return sorted(
        (op.op, "/".join(op.key), "/".join(op.to) if op.to is not None else None)
        for op in plan.ops
    )


def test_resync_finds_changes_on_both_sides_from_the_directories_that_differ(
    tmp_path: Path,
) -> None:
    """A re-sync with a history compares directory digests first and then only what
    differs: a rename on the source is still one move, and what others changed on the
    destination (a rewritten file, a stray file, a deleted one, a directory's mode)
    is still repaired, with nothing else touched."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    spec: dict[str, Any] = {}
    for d in range(20):
        spec[f"d{d:02d}"] = DIR
        for f in range(10):
            spec[f"d{d:02d}/f{f}"] = File(b"%d-%d" % (d, f), mtime_ns=T0 + d * 100 + f)
    build(src, spec)
    # past the source's ctime lag (a clock tick): a node changed within it right before
    # a sync began is read again, on both sides, by the next sync (session.mark_equal)
    time.sleep(0.05)
    first = sync_once(str(src), str(dst), Options(state=state, check=True, delete=True))
    assert first.problems == []
    before = _inodes(dst)

    (src / "d03").rename(src / "moved")
    (src / "d04" / "f1").unlink()
    (dst / "d05" / "f2").write_bytes(b"rewritten on the destination")
    (dst / "d06" / "stray").write_bytes(b"not on the source")
    (dst / "d07" / "f3").unlink()
    (dst / "d08").chmod(0o700)

    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.problems == []
    assert_same_tree(src, dst)
    # 20 directories of 10 files and the root were scanned on each side; what was
    # compared one by one: the root, the 6 directories that changed and the
    # children that differ in them, and the moved directory alone: its subtree is equal
    # on both sides (subtree digests), so its files are neither listed nor compared
    assert report.scanned == {"source": 1 + 20 + 199, "destination": 1 + 20 + 200}
    assert report.compared == {"source": 1 + 5 + 1 + 2, "destination": 1 + 5 + 1 + 3}
    assert _op_list(report.plan) == sorted([
        ("move", "d03", "moved"),
        ("delete", "d04/f1", None),
        ("update", "d05/f2", None),
        ("delete", "d06/stray", None),
        ("create", "d07/f3", None),
        ("update", "d08", None),
        # the parents whose mtime changed with their listing on the source
        ("update", "", None),
        ("update", "d04", None),
        # and those whose listing changed on the destination
        ("update", "d06", None),
        ("update", "d07", None),
    ])
    after = _inodes(dst)
    moved = {k.replace("d03/", "moved/", 1): v for k, v in before.items() if k.startswith("d03/")}
    assert {k: after[k] for k in moved} == moved  # renamed, not copied
    again = sync_once(str(src), str(dst), Options(state=state, dry_run=True))
    assert _op_list(again.plan) == []


def test_no_scan_process_outlives_a_refused_sync(tmp_path: Path) -> None:
    """The destination is scanned in a forked child; a sync refused half-way (the
    source was emptied) leaves no child behind, and deletes nothing."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, {"a": DIR, "a/f": b"x", "g": b"y"})
    assert sync_once(str(src), str(dst), Options(state=state)).problems == []
    for p in (src / "a" / "f", src / "g"):
        p.unlink()
    (src / "a").rmdir()
    with pytest.raises(Exception, match="source is empty"):
        sync_once(str(src), str(dst), Options(state=state))
    assert _children_of(os.getpid()) == []
    assert (dst / "a" / "f").read_bytes() == b"x"


@pytest.mark.timeout(60)
def test_the_scanning_child_dies_with_a_killed_run(tmp_path: Path) -> None:
    """kill -9 of a run while the destination is being scanned in its forked child:
    the child goes too (it is not left walking a big tree for nothing)."""
    import signal
    import subprocess
    import sys
    import time

    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, {f"d{i:02d}/f{j}": b"x" for i in range(30) for j in range(30)})
    assert sync_once(str(src), str(dst), Options(state=state)).problems == []
    # a run whose scans are held: the destination's child is forked by then
    code = (
        "import sys, time\n"
        "import hsync.backends.fs as fs\n"
        "real = fs.scan_tree\n"
        "def slow(root, *a, **k):\n"
        f"    if root == {str(src)!r}:\n"
        "        print('scanning', flush=True)\n"
        "    time.sleep(60)  # both walks are long: the child's too\n"
        "    return real(root, *a, **k)\n"
        "fs.scan_tree = slow\n"
        "import hsync.compare\n"
        "hsync.compare.SMALL_TREE = 0  # forked whatever its size (a small tree is not)\n"
        "from hsync.oneshot import sync_once\nfrom hsync.options import Options\n"
        f"sync_once({str(src)!r}, {str(dst)!r}, Options(state={state!r}))\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    assert run.stdout.readline().strip() == "scanning"
    children = _children_of(run.pid)
    assert len(children) == 1  # the destination's scan
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 10
    while alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(children[0])


@pytest.mark.parametrize(
    "swap",
    ["symlink targets", "file modes", "file mtimes", "file sizes"],
)
def test_two_entries_swapping_one_field_are_synced_by_a_resync(tmp_path: Path, swap: str) -> None:
    """Regression (hypothesis): a re-sync compares directory digests, and a digest that
    was a sum of tuple hashes did not change when two entries swapped a field (two
    symlinks swapping targets): the destination kept the old targets."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    src.mkdir()
    if swap == "symlink targets":
        os.symlink("a", src / "A")
        os.symlink("../x", src / "a")
    else:
        build(src, {
            "A": File(b"1" * 10, mode=0o644, mtime_ns=T0),
            "a": File(b"2" * 20, mode=0o600, mtime_ns=T0 + 1),
        })
    assert sync_once(str(src), str(dst), Options(state=state)).problems == []
    if swap == "symlink targets":
        (src / "A").unlink()
        (src / "a").unlink()
        os.symlink("../x", src / "A")
        os.symlink("a", src / "a")
    elif swap == "file modes":
        (src / "A").chmod(0o600)
        (src / "a").chmod(0o644)
    elif swap == "file mtimes":
        os.utime(src / "A", ns=(T0 + 1, T0 + 1))
        os.utime(src / "a", ns=(T0, T0))
    else:  # sizes: each file gets the other's length, mtimes kept
        (src / "A").write_bytes(b"1" * 20)
        (src / "a").write_bytes(b"2" * 10)
        os.utime(src / "A", ns=(T0, T0))
        os.utime(src / "a", ns=(T0 + 1, T0 + 1))
    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.problems == []
    assert_same_tree(src, dst)


def test_a_rotation_through_a_node_that_kept_its_name_and_payload_is_moves_only(
    tmp_path: Path,
) -> None:
    """Regression (hypothesis): two identical symlinks swap places, then one of them
    swaps with a directory. The symlink now at ``a`` kept its name and payload, so its
    directory's digest alone did not show it; where the region's nodes came from is
    compared too, and the plan is moves, as a full comparison plans it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, {"b/a": File(b"", mtime_ns=T0), "A": Link("a"), "a": Link("a")})
    assert sync_once(str(src), str(dst), Options(state=state)).problems == []

    def swap(x: str, y: str) -> None:
        (src / x).rename(src / ".swap-tmp")
        (src / y).rename(src / x)
        (src / ".swap-tmp").rename(src / y)

    swap("A", "a")
    swap("A", "b")
    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.problems == []
    assert_same_tree(src, dst)
    assert report.plan is not None
    assert sorted(op.op for op in report.plan.ops if op.op in ("create", "delete")) == []
