"""Subtree digests (issue 15, item 2): a directory moved or renamed with its content
unchanged is matched as one node, by identity and by the digest of its whole subtree;
nothing below it is asked of either scan, compared or planned, and the history still
learns where its descendants went."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treeutil import DIR, File, assert_same_tree, build

from hsync.backends.fs.child import LocalScan, ScanChild
from hsync.backends.fs.scan import scan as scan_tree
from hsync.model import Key, Plan
from hsync.oneshot import sync_once
from hsync.options import Options

T0 = 1_600_000_000 * 10**9


def _tree(files: int, dirs: Iterable[str] = ("big", "big/sub", "other")) -> dict[str, Any]:
    spec: dict[str, Any] = {d: DIR for d in dirs}
    for i in range(files):
        d = ("big", "big/sub")[i % 2]
        spec[f"{d}/f{i:04d}"] = File(b"%d" % i, mtime_ns=T0 + i)
    spec["other/x"] = File(b"x", mtime_ns=T0)
    return spec


def _ops(plan: Plan | None) -> list[tuple[str, str, str | None]]:
    assert plan is not None
    return sorted(
        (op.op, "/".join(op.key), "/".join(op.to) if op.to is not None else None)
        for op in plan.ops
    )


class RowsAsked:
    """How many rows the comparison asked of the digest scans (both sides): a spy on
    the handles' ``rows``, ``listings`` and ``ask_listings`` answers (none of the three
    calls another), the real scans underneath."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[Key] = []
        for cls in (LocalScan, ScanChild):
            for name in ("rows", "listings"):
                monkeypatch.setattr(cls, name, self._spy(getattr(cls, name)))
            monkeypatch.setattr(cls, "ask_listings", self._spy_asked(cls.ask_listings))

    def _spy_asked(self, method: Any) -> Any:
        def spied(handle: Any, *args: Any, **kw: Any) -> Any:
            take = method(handle, *args, **kw)
            return lambda: self._count(take())

        return spied

    def _count(self, out: dict[Key, Any]) -> dict[Key, Any]:
        for k, v in out.items():
            self.keys.append(k)
            if isinstance(v, list):  # a listing: (name, row) per child
                self.keys.extend((*k, name) for name, _ in v)
        return out

    def _spy(self, method: Any) -> Any:
        def spied(handle: Any, *args: Any, **kw: Any) -> Any:
            return self._count(method(handle, *args, **kw))

        return spied

    def below(self, *tops: str) -> list[Key]:
        return [k for k in self.keys if any(k[:1] == (t,) and len(k) > 1 for t in tops)]


def _pair_history(state: str) -> dict[Key, object]:
    """Key -> identity of every node the history holds (the one pair in ``state``)."""
    import sqlite3

    from hsync.history import _dec

    db = sqlite3.connect(state)
    try:
        return {_dec(k): i for k, i in db.execute("SELECT key, ident FROM nodes")}
    finally:
        db.close()


def test_a_renamed_directory_with_unchanged_content_is_one_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renaming a directory of 400 files (in two levels) on the source: the plan is
    exactly one move, the report compared the renamed directory as one node per side,
    no row below it was asked of either scan, and the history now holds its
    descendants under the new name with their identities (a later move inside it is
    found by identity)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, _tree(400))
    # past the source's ctime lag (a clock tick): a node changed within it right before
    # a sync began is read again, on both sides, by the next sync (session.mark_equal)
    time.sleep(0.05)
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).problems == []
    before = _pair_history(state)
    (src / "big").rename(src / "renamed")

    asked = RowsAsked(monkeypatch)
    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.problems == []
    assert_same_tree(src, dst)
    assert _ops(report.plan) == [("move", "big", "renamed"), ("update", "", None)]
    assert report.counts["move"] == 1 and report.bytes_copied == 0
    # the root and its children that differ: "renamed" on the source, "big" on the
    # destination, nothing below either
    assert report.compared == {"source": 2, "destination": 2}
    assert asked.below("big", "renamed") == []
    # the history learned the new keys of the directory and its 401 descendants
    after = _pair_history(state)
    moved = {("renamed", *k[1:]): i for k, i in before.items() if k[:1] == ("big",)}
    assert len(moved) == 1 + 1 + 400
    assert {k: after.get(k) for k in moved} == moved
    assert not any(k[:1] == ("big",) for k in after)

    # a file moved inside the renamed directory is one move found by its identity
    (src / "renamed" / "sub" / "f0001").rename(src / "renamed" / "f0001-moved")
    again = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert again.problems == []
    assert ("move", "renamed/sub/f0001", "renamed/f0001-moved") in _ops(again.plan)
    assert again.counts["create"] == 0 and again.bytes_copied == 0
    assert_same_tree(src, dst)


def test_a_renamed_directory_with_a_change_inside_is_compared_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renamed and one file rewritten: the subtree digests differ, so the directory is
    compared inside: one move and one update, nothing else."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, _tree(40))
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).problems == []
    (src / "big").rename(src / "renamed")
    (src / "renamed" / "sub" / "f0003").write_bytes(b"rewritten")
    os.utime(src / "renamed" / "sub" / "f0003", ns=(T0 + 10**12, T0 + 10**12))

    asked = RowsAsked(monkeypatch)
    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.problems == []
    assert_same_tree(src, dst)
    assert ("move", "big", "renamed") in _ops(report.plan)
    assert ("update", "renamed/sub/f0003", None) in _ops(report.plan)
    assert report.counts["create"] == 0 and report.counts["delete"] == 0
    assert asked.below("renamed") != []  # looked inside, as it must


def test_two_directories_swapped_keep_their_history(tmp_path: Path) -> None:
    """Two directories with unchanged content swap names (through a third): both names
    are on both sides, so they are not folded but compared inside (by identity, as a
    full comparison would): two moves, and the history's rows of both subtrees follow
    them."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    spec: dict[str, Any] = {"a": DIR, "b": DIR, "a/in": DIR, "b/in": DIR}
    for i in range(30):
        spec[f"a/in/f{i}"] = File(b"a%d" % i, mtime_ns=T0 + i)
        spec[f"b/in/g{i}"] = File(b"b%d" % i, mtime_ns=T0 + i)
    build(src, spec)
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).problems == []
    before = _pair_history(state)
    (src / "a").rename(src / "t")
    (src / "b").rename(src / "a")
    (src / "t").rename(src / "b")

    report = sync_once(str(src), str(dst), Options(state=state, check=True))
    assert report.problems == []
    assert_same_tree(src, dst)
    assert report.counts["move"] == 2 and report.bytes_copied == 0
    assert report.counts["create"] == 0 and report.counts["delete"] == 0
    swap = {"a": "b", "b": "a"}
    expected = {(swap[k[0]], *k[1:]) if k else k: i for k, i in before.items()}
    after = _pair_history(state)
    assert {k: after.get(k) for k in expected if k} == {k: v for k, v in expected.items() if k}
    assert _ops(sync_once(str(src), str(dst), Options(state=state, dry_run=True)).plan) == []


def test_a_folded_rename_under_max_delete_is_still_copied_whole(tmp_path: Path) -> None:
    """With more deletions than --max-delete allows, moves are off and the renamed
    directory must be copied whole under its new name (its descendants, which the
    folded comparison never listed, included): the comparison is redone in full."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, {**_tree(20), "gone1": b"1", "gone2": b"2"})
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).problems == []
    (src / "big").rename(src / "renamed")
    (src / "gone1").unlink()
    (src / "gone2").unlink()

    report = sync_once(str(src), str(dst), Options(state=state, check=True, max_delete=1))
    assert [p.message for p in report.problems] == [
        "2 deletions planned, more than --max-delete 1: no deletion done"
    ]
    assert report.counts["delete"] == 0
    for rel in ("renamed/f0000", "renamed/sub/f0001", "big/f0000", "gone1"):
        assert (dst / rel).exists(), rel
    assert (dst / "renamed" / "sub" / "f0019").read_bytes() == b"19"


def test_the_watch_quick_pass_folds_a_renamed_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory renamed while no watch ran: the watch's stat-only pass against the
    history sees the same nodes below the new name as below the old one, so the round
    scans neither subtree (no scan of either side returns a node below them), plans one
    move, and the history follows; a second pass finds nothing."""
    from hsync.backends.fs import FsBackend
    from hsync.live import PairWatch, RoundResult
    from hsync.region import Region
    from hsync.session import PairSession

    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, _tree(300))
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).problems == []
    before = _pair_history(state)
    (src / "big").rename(src / "renamed")

    scanned: list[Key] = []
    original = FsBackend.scan

    def spy(self: FsBackend, *args: Any, **kw: Any) -> Any:
        snap = original(self, *args, **kw)
        scanned.extend(snap.nodes)
        return snap

    monkeypatch.setattr(FsBackend, "scan", spy)

    def quick_round() -> RoundResult:
        rounds: list[RoundResult] = []
        pw = PairWatch(str(src), str(dst), Options(state=state, check=True),
                       on_round=rounds.append)
        with PairSession(str(src), str(dst), pw.options) as session:
            pw._round(session, Region.of([()]), None, quick=True)
        assert len(rounds) == 1
        return rounds[0]

    r = quick_round()
    assert r.problems == ()
    assert_same_tree(src, dst)
    assert r.region.folded == ((("renamed",), ("big",)),)
    assert _ops(Plan(ops=r.ops, changes=())) == [("move", "big", "renamed"), ("update", "", None)]
    assert [k for k in scanned if len(k) > 1 and k[0] in ("big", "renamed")] == []
    after = _pair_history(state)
    moved = {("renamed", *k[1:]): i for k, i in before.items() if k[:1] == ("big",)}
    assert {k: after.get(k) for k in moved} == moved
    assert quick_round().ops == ()


def test_the_quick_pass_does_not_fold_a_renamed_directory_changed_inside(
    tmp_path: Path,
) -> None:
    """Renamed, and one file below it deleted: the subtrees differ, so the round looks
    inside (one move and one delete)."""
    from hsync.live import PairWatch, RoundResult
    from hsync.region import Region
    from hsync.session import PairSession

    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    build(src, _tree(30))
    assert sync_once(str(src), str(dst), Options(state=state, check=True)).problems == []
    (src / "big").rename(src / "renamed")
    (src / "renamed" / "sub" / "f0005").unlink()
    rounds: list[RoundResult] = []
    pw = PairWatch(str(src), str(dst), Options(state=state, check=True), on_round=rounds.append)
    with PairSession(str(src), str(dst), pw.options) as session:
        pw._round(session, Region.of([()]), None, quick=True)
    (r,) = rounds
    assert r.problems == ()
    assert r.region.folded == ()
    assert_same_tree(src, dst)
    ops = _ops(Plan(ops=r.ops, changes=()))
    assert ("move", "big", "renamed") in ops
    assert ("delete", "big/sub/f0005", None) in ops or (
        "delete", "renamed/sub/f0005", None) in ops
    assert not any(op[0] == "create" for op in ops)


# -- the subtree digests themselves -------------------------------------------------------
def _trees(root: Path) -> dict[Key, int]:
    digests: dict[Key, int] = {}
    trees: dict[Key, int] = {}
    scan_tree(str(root), os.stat(root).st_dev, (), None, _never(), [], digests, trees=trees)
    assert set(trees) == set(digests)
    return trees


def _never() -> Any:
    from hsync.cancel import NEVER

    return NEVER


names = st.sampled_from(["a", "b", "c", "é", "d d"])
shapes = st.recursive(
    st.binary(max_size=3),
    lambda kids: st.dictionaries(names, kids, max_size=3),
    max_leaves=8,
)


def _make(root: Path, shape: dict[str, Any] | bytes) -> None:
    assert isinstance(shape, dict)
    root.mkdir()
    for name, kid in shape.items():
        if isinstance(kid, dict):
            _make(root / name, kid)
        else:
            (root / name).write_bytes(kid)
            os.utime(root / name, ns=(T0, T0))
    os.utime(root, ns=(T0, T0))


def _all_paths(shape: dict[str, Any], pre: str = "") -> Iterator[tuple[str, bool]]:
    for name, kid in shape.items():
        yield pre + name, isinstance(kid, dict)
        if isinstance(kid, dict):
            yield from _all_paths(kid, pre + name + "/")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.dictionaries(names, shapes, max_size=3), pick=st.integers(0, 100))
def test_subtree_digest_is_equal_exactly_when_the_subtrees_are(
    tmp_path_factory: pytest.TempPathFactory, shape: dict[str, Any], pick: int
) -> None:
    """Two copies of a tree (same names, payloads, mtimes) have the same subtree digest
    at the root; changing one file's content (and size) anywhere below changes it, and
    the digests of the directories not above the change stay as they were."""
    base = tmp_path_factory.mktemp("trees")
    _make(base / "one", shape)
    _make(base / "two", shape)
    assert _trees(base / "one")[()] == _trees(base / "two")[()]
    files = [p for p, is_dir in _all_paths(shape) if not is_dir]
    if not files:
        return
    rel = files[pick % len(files)]
    before = _trees(base / "two")
    path = base / "two" / rel
    path.write_bytes(path.read_bytes() + b"+")
    os.utime(path, ns=(T0, T0))
    after = _trees(base / "two")
    changed = tuple(rel.split("/"))
    for k in before:
        above = changed[: len(k)] == k
        assert (before[k] != after[k]) == above, (k, rel)
