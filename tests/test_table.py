"""The compact table a whole scan keeps (``model.Table``): the same rows as a dict of
tuples, found by key, listed parents first, shipped as bytes, diffed listing by listing,
in a fraction of the memory; and the filesystem scan that fills it."""

from __future__ import annotations

import gc
import marshal
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treeutil import build

from hsync.backend import Keep
from hsync.backends.fs import FsBackend
from hsync.backends.fs import scan as fs_scan
from hsync.backends.fs.meta import Reader
from hsync.backends.fs.posix import tmp_name
from hsync.cancel import NEVER
from hsync.differ import diff
from hsync.model import DIR, FILE, SPECIAL, SYMLINK, Key, Row, Rows, Snapshot, Table

names = st.text(alphabet="abcé\udcff.-_ ", min_size=1, max_size=4)
leaf_rows = st.one_of(
    st.tuples(st.just(FILE), st.integers(0, 0o7777), st.integers(0, 2**40),
              st.integers(-(2**62), 2**62), st.none(),
              st.one_of(st.none(), st.integers(1, 2**128 - 1), st.integers(2**130, 2**140)),
              st.one_of(st.none(), st.tuples(st.integers(0, 9), st.integers(0, 9), st.none()))),
    st.tuples(st.just(SYMLINK), st.just(0), st.just(0), st.integers(0, 2**62), names,
              st.one_of(st.none(), st.integers(1, 2**100)), st.none()),
    st.tuples(st.just(SPECIAL), st.just(0o10644), st.integers(0, 99), st.integers(0, 9),
              st.none(), st.none(), st.none()),
)


@st.composite
def trees(draw: st.DrawFn) -> dict[Key, Row]:
    """Rows of a tree, parents first: directories with children, and leaves."""
    rows: dict[Key, Row] = {(): (DIR, 0o755, 0, 1, None, 7, None)}
    dirs: list[Key] = [()]
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(dirs))
        key = (*parent, draw(names))
        if key in rows:
            continue
        if draw(st.booleans()):
            rows[key] = (DIR, draw(st.integers(0, 0o7777)), 0, draw(st.integers(0, 5)), None,
                         draw(st.integers(1, 2**100)), None)
            dirs.append(key)
        else:
            rows[key] = draw(leaf_rows)
    return rows


def table_of(rows: dict[Key, Row]) -> Table:
    """The table a scan would fill: each directory's listing, by name."""
    t = Table(rows.get(()))
    kids: dict[Key, dict[Key, Row]] = {}
    for k, r in rows.items():
        if k:
            kids.setdefault(k[:-1], {})[k] = r
    for k, r in rows.items():
        if r[0] == DIR:
            t.add(k, dict(sorted(kids.get(k, {}).items())))
    return t


@settings(max_examples=200, deadline=None)
@given(trees(), st.lists(st.tuples(names, names), max_size=5))
def test_a_table_holds_the_rows_it_was_given(rows: dict[Key, Row], probes: list[Key]) -> None:
    t = table_of(rows)
    assert dict(t.items()) == rows
    assert len(t) == len(rows)
    assert set(t) == set(rows)
    seen: set[Key] = set()
    for k in t:  # parents first
        assert not k or k[:-1] in seen
        seen.add(k)
    for k, r in rows.items():
        assert k in t and t[k] == r and t.get(k) == r
        if r[0] == DIR:
            assert sorted(t.children(k)) == sorted(c for c in rows if c and c[:-1] == k)
    for p in probes:
        assert (p in t) == (p in rows)
        assert t.get(p) == rows.get(p)
    wire = Table.from_wire(marshal.loads(marshal.dumps(t.to_wire())))
    assert dict(wire.items()) == rows
    assert list(t.values()) == [rows[k] for k in t]


@settings(max_examples=200, deadline=None)
@given(trees(), trees())
def test_two_tables_differ_where_their_rows_do(a: dict[Key, Row], b: dict[Key, Row]) -> None:
    """``Table.differing`` (listing by listing) finds what a row by row comparison does."""
    # the same names with other payloads, too
    b = {**b, **{k: (*r[:3], r[3] + 1, *r[4:]) for k, r in a.items() if k and r[0] == FILE
                 and k[:-1] in b and b[k[:-1]][0] == DIR and k not in b}}
    ta, tb = table_of(a), table_of(b)
    for checksum in (False, True):
        new, changed, same, gone = ta.differing(tb, checksum)
        assert set(new) == {k for k in a if k not in b}
        assert set(gone) == {k for k in b if k not in a}
        assert set(changed) == {k for k in a if k in b and (a[k][:5] != b[k][:5]
                                                          or a[k][6:] != b[k][6:])}
        assert set(same) == ({k for k in a if k in b and k not in changed and a[k][0] == FILE}
                             if checksum else set())
    # the differ gives the same changes over tables as over dicts of rows
    got = diff(Snapshot(nodes=Rows(ta)), Snapshot(nodes=Rows(tb)), None)
    want = diff(Snapshot(nodes=Rows(dict(a))), Snapshot(nodes=Rows(dict(b))), None)
    assert sorted(map(repr, got)) == sorted(map(repr, want))


def test_a_row_replaced_in_place() -> None:
    rows: dict[Key, Row] = {(): (DIR, 0o755, 0, 1, None, 1, None),
                            ("a",): (FILE, 0o644, 3, 4, None, 2**70 + 5, None)}
    t = table_of(rows)
    t[("a",)] = (FILE, 0o600, 3, 4, None, 9, ("u", "g", ()))
    assert t[("a",)] == (FILE, 0o600, 3, 4, None, 9, ("u", "g", ()))
    t[()] = (DIR, 0o700, 0, 1, None, 1, None)
    assert t[()][1] == 0o700


def _scan(root: Path, meta: Reader | None) -> tuple[Snapshot, dict[Key, int], dict[Key, int]]:
    digests: dict[Key, int] = {}
    trees_: dict[Key, int] = {}
    snap = fs_scan.scan(str(root), os.stat(root).st_dev, (), None, NEVER, [], digests,
                        trees=trees_, meta=meta)
    return snap, digests, trees_


@pytest.mark.parametrize("keep", [None, Keep(owner=True, group=True, xattrs=frozenset({"user"}))])
def test_the_column_listing_gives_the_rows_and_digests_of_the_row_listing(
    tmp_path: Path, keep: Keep | None
) -> None:
    """A listing of plain files and directories goes into the table column by column
    (``scan._plain``); listings with anything else row by row (``scan._list``). Both give
    the same rows, digests and subtree digests, with or without owners and attributes."""
    meta = None if keep is None else Reader(keep)
    root = tmp_path / "t"
    build(root, {"a/f": b"1", "a/b/g": b"22", "h": b"333", "c/d/e/i": b"", "j/k": b"x",
                 "m/n": b"", "m/o": b"", "x/y": b""})
    os.symlink("h", root / "j" / "l")  # j: a listing row by row
    os.mkfifo(root / "c" / "p")
    os.chown(root / "m" / "o", 1234, 99)  # another owner: row by row
    os.setxattr(root / "x" / "y", "user.k", b"v")  # an attribute: row by row
    (root / "a" / tmp_name()).write_bytes(b"t")  # a temporary: row by row
    (root / "c" / ".hsync-tmp-mine").write_bytes(b"m")  # not one: a node
    fast, d1, t1 = _scan(root, meta)
    assert isinstance(fast.nodes, Rows) and isinstance(fast.nodes.rows, Table)
    mp = pytest.MonkeyPatch()
    mp.setattr(fs_scan, "_plain", lambda *a: False)
    try:
        slow, d2, t2 = _scan(root, meta)
    finally:
        mp.undo()
    assert dict(fast.nodes.rows.items()) == dict(slow.nodes.rows.items())
    assert (d1, t1) == (d2, t2)
    assert sorted(fast.nodes.rows.children(("a",))) == [("a", "b"), ("a", "f")]
    assert ("c", ".hsync-tmp-mine") in fast.nodes
    assert fast.nodes[("j", "l")].target == "h"
    assert fast.children(("a",)) == [("a", "b"), ("a", "f")]
    if keep is not None:
        assert fast.nodes[("m", "o")].data[:2] == (1234, 99)
        assert fast.nodes[("x", "y")].data[2] == (("user.k", b"v"),)
        assert fast.nodes[("a", "f")].data[:2] == (0, 0)


def test_a_full_scan_holds_a_tree_in_few_bytes_per_node(tmp_path: Path) -> None:
    """Issue 15 item 4: a scan of N nodes holds about 110 bytes a node (a name and
    a slot per column), not a dict of tuples (about 450)."""
    root = tmp_path / "t"
    root.mkdir()
    n = 0
    for d in range(40):
        sub = root / f"dir{d:03d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"file{f:05d}.dat").write_bytes(b"")
            n += 1
    backend = FsBackend(str(root))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        snap = backend.scan()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(snap.nodes) == n + 41
    assert held / n < 160, f"{held / n:.0f} bytes per node"
    backend.close()
