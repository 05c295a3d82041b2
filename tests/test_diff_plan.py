"""The pure core, table-driven: diff -> plan -> check_plan on small in-memory trees.

Each case is a destination tree, a source tree (literals: ``"a/": None`` is a directory,
``F(size, mtime, ident)`` a file), and the exact plan expected as ``(op, path, to)``
tuples. Every plan also passes ``check_plan`` against the source (SPEC section 4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from treeutil import D, F, L, snapshot

from hsync.differ import MemoryHistory, diff
from hsync.model import Node
from hsync.planner import TEMP_PREFIX, check_plan, plan

TMP = f"{TEMP_PREFIX}1"
"""The first temporary name the planner parks a node under."""

OpRow = tuple[str, str, str | None]


@dataclass
class Case:
    description: str
    destination: dict[str, Node | None]
    source: dict[str, Node | None]
    expected: list[OpRow] | None
    """The exact plan, or None when only ``properties`` are asserted."""
    history: str | Mapping[Any, tuple[str, Node]] | None = None
    """"destination": the history of a sync that produced the destination (its
    identities); or identity -> (path, node) as synced; None: a first run."""
    digests: dict[tuple[str, str], bytes] | None = None
    """Content hash oracle, (side, path) -> hash."""
    delete: bool = True
    case_insensitive: bool = False
    source_incomplete: dict[str, str] = field(default_factory=dict)
    destination_incomplete: dict[str, str] = field(default_factory=dict)
    source_root: Node | None = None
    properties: Callable[[list[OpRow]], None] | None = None
    bug: str | None = None
    """Set when hsync is known wrong here (SPEC): the case is a strict xfail."""


def _deletes_deepest_first(rows: list[OpRow]) -> None:
    deletes = [path for op, path, _ in rows if op == "delete"]
    depths = [path.count("/") for path in deletes]
    assert depths == sorted(depths, reverse=True), deletes


def _assert_counts(rows: list[OpRow], **expected: int) -> None:
    for op, n in expected.items():
        assert sum(1 for row in rows if row[0] == op) == n, (op, rows)


def _creates_after_parents(rows: list[OpRow]) -> None:
    created = {path for op, path, _ in rows if op == "create"}
    seen: set[str] = set()
    for op, path, _ in rows:
        if op == "create":
            parent = path.rpartition("/")[0]
            assert parent not in created or parent in seen, f"{path} created before {parent}"
            seen.add(path)


def _updates_after_children(rows: list[OpRow]) -> None:
    """An update (a directory's mode and mtime) comes after every op below it."""
    for i, (op, path, _) in enumerate(rows):
        if op != "update":
            continue
        for j, (_, p, to) in enumerate(rows):
            below = p.startswith(path + "/") or (to or "").startswith(path + "/")
            assert not below or j < i, f"update {path} before op {j} below it"


CASES = [
    # -- cycles --------------------------------------------------------------------------
    Case(
        "swap of two files (by size and mtime) goes through one temporary name",
        destination={"a": F(1, 1), "b": F(2, 2)},
        source={"a": F(2, 2), "b": F(1, 1)},
        expected=[("move", "a", TMP), ("move", "b", "a"), ("move", TMP, "b")],
    ),
    Case(
        "rotation of three files costs one extra move",
        destination={"a": F(1, 1), "b": F(2, 2), "c": F(3, 3)},
        source={"a": F(3, 3), "b": F(1, 1), "c": F(2, 2)},
        expected=[
            ("move", "a", TMP),
            ("move", "c", "a"),
            ("move", "b", "c"),
            ("move", TMP, "b"),
        ],
    ),
    Case(
        "parent and child directories exchange places: the child leaves first",
        destination={
            "p/": D(mtime=1),
            "p/c/": D(mtime=2),
            "p/c/x": F(1, 1),
            "p/c/z": F(3, 3),
            "p/y": F(2, 2),
            "p/w": F(4, 4),
        },
        source={
            "c/": D(mtime=2),
            "c/p/": D(mtime=1),
            "c/p/y": F(2, 2),
            "c/p/w": F(4, 4),
            "c/x": F(1, 1),
            "c/z": F(3, 3),
        },
        expected=[("move", "p/c", "c"), ("move", "p", "c/p")],
    ),
    Case(
        "parent and child exchange under the same names (identity): parent parked first",
        destination={
            "d/": D(mtime=1, ident=1),
            "d/e/": D(mtime=2, ident=2),
            "d/e/x": F(1, 1, ident=3),
            "d/y": F(2, 2, ident=4),
        },
        source={
            "d/": D(mtime=2, ident=2),
            "d/e/": D(mtime=1, ident=1),
            "d/e/y": F(2, 2, ident=4),
            "d/x": F(1, 1, ident=3),
        },
        history="destination",
        expected=[("move", "d", TMP), ("move", f"{TMP}/e", "d"), ("move", TMP, "d/e")],
    ),
    # -- type changes --------------------------------------------------------------------
    Case(
        "dir -> file and file -> dir on the same keys: delete, then create",
        destination={"a/": None, "a/x": F(1, 1), "b": F(2, 2)},
        source={"a": F(3, 3), "b/": None, "b/y": F(4, 4)},
        expected=[
            ("delete", "a/x", None),
            ("delete", "a", None),
            ("delete", "b", None),
            ("create", "a", None),
            ("create", "b", None),
            ("create", "b/y", None),
        ],
    ),
    Case(
        "a file replaces its own parent directory: the directory is parked, then deleted",
        destination={"d/": None, "d/f": F(1, 1)},
        source={"d": F(1, 1)},
        expected=[("move", "d", TMP), ("move", f"{TMP}/f", "d"), ("delete", TMP, None)],
    ),
    # -- case-only renames ---------------------------------------------------------------
    Case(
        "case-only rename on a case-sensitive destination is one move",
        destination={"a": F(1, 1), "docs/": None, "docs/x": F(2, 2)},
        source={"A": F(1, 1), "Docs/": None, "Docs/x": F(2, 2)},
        expected=[("move", "a", "A"), ("move", "docs", "Docs")],
    ),
    Case(
        "case-only rename on a case-insensitive destination goes via a temporary name",
        destination={"a": F(1, 1), "docs/": None, "docs/x": F(2, 2)},
        source={"A": F(1, 1), "Docs/": None, "Docs/x": F(2, 2)},
        case_insensitive=True,
        expected=[
            ("move", "a", TMP),
            ("move", TMP, "A"),
            ("move", "docs", f"{TEMP_PREFIX}2"),
            ("move", f"{TEMP_PREFIX}2", "Docs"),
        ],
    ),
    # -- hierarchy -----------------------------------------------------------------------
    Case(
        "move into a new directory: the directory is created before the move",
        destination={"f": F(1, 1)},
        source={"n/": None, "n/f": F(1, 1)},
        expected=[("create", "n", None), ("move", "f", "n/f")],
    ),
    Case(
        "move out of a directory being deleted: the move comes before the delete",
        destination={"d/": None, "d/f": F(1, 1), "d/g": F(9, 9)},
        source={"f": F(1, 1)},
        expected=[("delete", "d/g", None), ("move", "d/f", "f"), ("delete", "d", None)],
    ),
    # -- matching without history ---------------------------------------------------------
    Case(
        "directory rename found by its children (no history): one move",
        destination={"old/": None, "old/a": F(1, 1), "old/b": F(2, 2), "old/c": F(3, 3)},
        source={"new/": None, "new/a": F(1, 1), "new/b": F(2, 2), "new/c": F(3, 3)},
        expected=[("move", "old", "new")],
    ),
    Case(
        "moved directory whose content changed a little: move, then only the differences",
        destination={"old/": None, "old/a": F(1, 1), "old/b": F(2, 2), "old/c": F(3, 3)},
        source={
            "new/": None,
            "new/a": F(1, 1),
            "new/b": F(2, 5),
            "new/c": F(3, 3),
            "new/d": F(4, 4),
        },
        expected=[("move", "old", "new"), ("create", "new/d", None), ("update", "new/b", None)],
    ),
    Case(
        "file move found by (size, mtime) without history, into a new directory",
        destination={"x/": None, "x/f": F(5, 7)},
        source={"y/": None, "y/g": F(5, 7)},
        expected=[("create", "y", None), ("move", "x/f", "y/g"), ("delete", "x", None)],
    ),
    Case(
        "file move found by content hash when the mtime differs: move + metadata update",
        destination={"f": F(5, 7)},
        source={"g": F(5, 9)},
        digests={("source", "g"): b"H1", ("destination", "f"): b"H1"},
        expected=[("move", "f", "g"), ("update", "g", None)],
    ),
    Case(
        "different mtime and a different hash: not a move",
        destination={"f": F(5, 7)},
        source={"g": F(5, 9)},
        digests={("source", "g"): b"H1", ("destination", "f"): b"H2"},
        expected=[("delete", "f", None), ("create", "g", None)],
    ),
    Case(
        "ambiguous equal (size, mtime) candidates are resolved by the content hash",
        destination={"f1": F(5, 7), "f2": F(5, 7)},
        source={"g": F(5, 7), "h": F(9, 9)},
        digests={
            ("source", "g"): b"H2",
            ("destination", "f1"): b"H1",
            ("destination", "f2"): b"H2",
        },
        expected=[("delete", "f1", None), ("move", "f2", "g"), ("create", "h", None)],
    ),
    # -- identity from the history ----------------------------------------------------------
    Case(
        "file renamed and rewritten, found by identity: move + content update",
        destination={"a": F(1, 1, ident=1)},
        source={"b": F(3, 3, ident=1)},
        history="destination",
        expected=[("move", "a", "b"), ("update", "b", None)],
    ),
    Case(
        "swap by identity of two files with the same size and mtime",
        destination={"a": F(1, 1, mode=0o600, ident=1), "b": F(1, 1, mode=0o644, ident=2)},
        source={"a": F(1, 1, mode=0o644, ident=2), "b": F(1, 1, mode=0o600, ident=1)},
        history="destination",
        expected=[("move", "a", TMP), ("move", "b", "a"), ("move", TMP, "b")],
    ),
    Case(
        "directory moved into a new parent, its old name reused by a new directory",
        destination={"d/": D(ident=1), "d/f": F(1, 1, ident=2), "d/g": F(2, 2, ident=3)},
        source={
            "p/": D(ident=9),
            "p/d/": D(ident=1),
            "p/d/f": F(1, 1, ident=2),
            "p/d/g": F(2, 2, ident=3),
            "d/": D(ident=5),
            "d/h": F(7, 7, ident=6),
        },
        history="destination",
        expected=[
            ("create", "p", None),
            ("move", "d", "p/d"),
            ("create", "d", None),
            ("create", "d/h", None),
        ],
    ),
    Case(
        "directory moved into a new parent, its old name reused (different mtime)",
        destination={"d/": D(ident=1), "d/f": F(1, 1, ident=2), "d/g": F(2, 2, ident=3)},
        source={
            "p/": D(ident=9),
            "p/d/": D(ident=1),
            "p/d/f": F(1, 1, ident=2),
            "p/d/g": F(2, 2, ident=3),
            "d/": D(mtime=5, ident=5),
            "d/h": F(7, 7, ident=6),
        },
        history="destination",
        expected=[
            ("create", "p", None),
            ("move", "d", "p/d"),
            ("create", "d", None),
            ("create", "d/h", None),
        ],
    ),
    Case(
        "regression (hypothesis seed 2210...1741): two directories swapped and a node "
        "that stays at its key below them comes back by a move, not delete + create",
        destination={"A/": D(ident=1), "A/x": L("t", ident=10), "B/": D(ident=2),
                     "B/f": F(1, 1, ident=20)},
        source={"A/": D(ident=2), "A/f": F(1, 1, ident=20), "A/x": L("t", ident=10),
                "B/": D(ident=1)},
        history="destination",
        expected=None,
        properties=lambda rows: (
            _assert_counts(rows, create=0, delete=0),
            _assert_counts(rows, move=4),
        ),
    ),
    Case(
        "history ignored when the destination no longer holds what was synced",
        destination={"a": F(1, 5)},
        source={"b": F(1, 1, ident=1)},
        history={1: ("a", F(1, 1, ident=1))},
        expected=[("delete", "a", None), ("create", "b", None)],
    ),
    Case(
        "history ignored when the destination's node changed kind",
        destination={"a/": None, "a/x": F(4, 4)},
        source={"b": F(1, 1, ident=1)},
        history={1: ("a", F(1, 1, ident=1))},
        expected=[("delete", "a/x", None), ("delete", "a", None), ("create", "b", None)],
    ),
    Case(
        "the source root's identity was a subdirectory's in the history: no crash",
        destination={"a/": D(ident=1)},
        source={},
        source_root=D(mtime=1, ident=1),
        history="destination",
        expected=[("delete", "a", None), ("update", "", None)],
    ),
    # -- options and partial scans ----------------------------------------------------------
    Case(
        "delete=False: no deletes except where a type change needs the key, no moves",
        destination={
            "keep": F(1, 1),
            "extra/": None,
            "extra/x": F(2, 2),
            "t/": None,
            "t/u": F(3, 3),
            "f": F(4, 4),
            "m": F(5, 5),
        },
        source={"keep": F(1, 1), "t": F(6, 6), "f/": None, "f/g": F(7, 7), "m2": F(5, 5)},
        delete=False,
        expected=[
            ("delete", "t/u", None),
            ("delete", "f", None),
            ("delete", "t", None),
            ("create", "f", None),
            ("create", "f/g", None),
            ("create", "m2", None),
            ("create", "t", None),
        ],
    ),
    Case(
        "incomplete source subtree: nothing under it is deleted, the rest is synced",
        destination={
            "a/": None,
            "a/x": F(1, 1),
            "a/y": F(2, 2),
            "a/q/": None,
            "a/q/z": F(3, 3),
            "b": F(3, 3),
        },
        source={"a/": None, "a/x": F(1, 1), "c": F(4, 4)},
        source_incomplete={"a": "Permission denied"},
        expected=[("delete", "b", None), ("create", "c", None)],
    ),
    Case(
        "incomplete nested source subtree: its siblings are still compared",
        destination={"a/": None, "a/q/": None, "a/q/z": F(1, 1), "a/r": F(1, 2)},
        source={"a/": None, "a/q/": None},
        source_incomplete={"a/q": "vanished during the scan"},
        expected=[("delete", "a/r", None)],
    ),
    Case(
        "incomplete source entry with no node (its lstat failed): a file there is kept",
        destination={"a": F(1, 1), "b": F(2, 2)},
        source={"b": F(2, 2)},
        source_incomplete={"a": "Permission denied"},
        expected=[],
    ),
    Case(
        "incomplete source entry with no node (its lstat failed): a directory there is kept",
        destination={"a/": None, "a/x": F(1, 1), "b": F(2, 2)},
        source={"b": F(2, 2)},
        source_incomplete={"a": "Permission denied"},
        expected=[],
    ),
    Case(
        "a directory at an incomplete source key is not carried off by identity evidence",
        # history: inode 1 was synced at "a"; now "a" was renamed to "A" and a new, unreadable
        # "a" appeared. Whatever the plan does, "A" must not end up holding "x".
        destination={"a/": D(ident=1), "a/x/": None},
        source={"A/": D(ident=1), "a/": None},
        source_incomplete={"a": "Permission denied"},
        history="destination",
        expected=None,
    ),
    Case(
        "identity evidence does not replace a directory that holds an incomplete key",
        # history: inode 1 was synced at "c"; now it is at "b" (the old "b" went away),
        # and b/a cannot be read. Nothing below b/a may be deleted.
        destination={"b/": None, "b/a/": None, "b/a/x": F(), "c/": D(ident=1)},
        source={"b/": D(mtime=1, ident=1), "b/a/": None},
        source_incomplete={"b/a": "Permission denied"},
        history="destination",
        expected=None,
    ),
    Case(
        "incomplete destination subtree: the source's nodes below it are left alone",
        destination={"a/": None, "b": F(1, 1)},
        destination_incomplete={"a": "Permission denied"},
        source={"a/": None, "a/x": F(1, 1), "c": F(2, 2)},
        expected=None,
    ),
    Case(
        "deletes are deepest first, creates after their parents",
        destination={
            "a/": None,
            "a/b/": None,
            "a/b/c/": None,
            "a/b/c/f": F(1, 1),
            "a/g": F(2, 2),
            "z": F(3, 3),
        },
        source={
            "n/": None,
            "n/m/": None,
            "n/m/k/": None,
            "n/m/k/f": F(8, 8),
            "n/h": F(9, 9),
            "y": F(7, 7),
        },
        expected=None,
        properties=lambda rows: (
            _deletes_deepest_first(rows),
            _creates_after_parents(rows),
            _assert_counts(rows, create=6, delete=6),
        ),
    ),
    Case(
        "an update of a directory's mtime and mode comes after its children's ops",
        destination={
            "a/": D(mtime=1),
            "a/f": F(1, 1),
            "a/g": F(2, 2),
            "a/s/": D(mtime=1),
            "a/s/t": F(3, 3),
        },
        source={
            "a/": D(mtime=9),
            "a/f": F(1, 2),
            "a/h": F(2, 2),
            "a/s/": D(mtime=9, mode=0o700),
            "a/s/t": F(3, 3, mode=0o600),
            "a/s/u": F(4, 4),
        },
        expected=[
            ("move", "a/g", "a/h"),
            ("create", "a/s/u", None),
            ("update", "a/f", None),
            ("update", "a/s/t", None),
            ("update", "a/s", None),
            ("update", "a", None),
        ],
        properties=_updates_after_children,
    ),
    Case(
        "trees already equal: an empty plan",
        destination={"a/": None, "a/f": F(1, 1), "b": F(2, 2, mode=0o600)},
        source={"a/": None, "a/f": F(1, 1), "b": F(2, 2, mode=0o600)},
        expected=[],
    ),
]


def _key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")) if path else ()


def _history(case: Case) -> MemoryHistory | None:
    if case.history is None:
        return None
    if case.history == "destination":
        return MemoryHistory.from_snapshot(snapshot(case.destination))
    assert isinstance(case.history, Mapping)
    return MemoryHistory({i: (_key(p), n) for i, (p, n) in case.history.items()})


def _params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            c,
            id=c.description,
            marks=[pytest.mark.xfail(reason=f"BUG: {c.bug}", strict=True)] if c.bug else [],
        )
        for c in cases
    ]


@pytest.mark.parametrize("case", _params(CASES))
def test_diff_plan(case: Case) -> None:
    dst = snapshot(case.destination, incomplete=case.destination_incomplete)
    src = snapshot(case.source, incomplete=case.source_incomplete, root=case.source_root)
    digest = None
    if case.digests is not None:
        table = {(side, _key(path)): h for (side, path), h in case.digests.items()}

        def digest(side: str, key: tuple[str, ...]) -> bytes | None:
            return table.get((side, key))

    changes = diff(src, dst, _history(case), digest=digest, delete=case.delete)
    the_plan = plan(changes, dst, case_insensitive=case.case_insensitive)
    check_plan(
        the_plan.ops,
        dst,
        src,
        case_insensitive=case.case_insensitive,
        allow_extra=not case.delete,
    )
    rows = [(j["op"], j["path"], j.get("to")) for j in (op.to_json() for op in the_plan.ops)]
    _updates_after_children(rows)  # SPEC 4: directory metadata after the children
    if case.expected is not None:
        assert rows == case.expected
    if case.properties is not None:
        case.properties(rows)


def test_no_change_plans_the_empty_plan_compare_builds_without_the_planner() -> None:
    """``compare.plan_between`` does not import the planner when nothing differs and
    uses ``Plan(ops=(), changes=())`` for it: that must be what ``plan`` makes of no
    change."""
    from hsync.model import Plan

    tree = {"d": D(), "d/f": F(3, 1), "l": L("d/f")}
    for case_insensitive in (False, True):
        assert plan(diff(snapshot(tree), snapshot(tree)), snapshot(tree),
                    case_insensitive=case_insensitive) == Plan(ops=(), changes=())


def test_case_only_rename_without_temporary_fails_check_on_case_insensitive() -> None:
    """check_plan itself catches a direct case-only rename on a case-insensitive tree."""
    dst = snapshot({"a": F(1, 1)})
    src = snapshot({"A": F(1, 1)})
    direct = plan(diff(src, dst), dst, case_insensitive=False)
    assert [op.to_json() for op in direct.ops] == [
        {"op": "move", "kind": "file", "path": "a", "to": "A"}
    ]
    with pytest.raises(Exception, match="temporary name"):
        check_plan(direct.ops, dst, src, case_insensitive=True)


def test_moved_directory_is_not_copied_again() -> None:
    """A moved directory's untouched children get no op of their own."""
    dst = snapshot({"old/": None, **{f"old/{i}": F(i, i) for i in range(1, 20)}})
    src = snapshot({"new/": None, **{f"new/{i}": F(i, i) for i in range(1, 20)}, "new/x": F(0, 0)})
    the_plan = plan(diff(src, dst), dst)
    check_plan(the_plan.ops, dst, src)
    assert [op.to_json() for op in the_plan.ops] == [
        {"op": "move", "kind": "dir", "path": "old", "to": "new"},
        {"op": "create", "kind": "file", "path": "new/x"},
    ]


def test_regression_a_context_file_is_never_matched_away_by_similarity() -> None:
    """Hypothesis found it in a restarted watch: a file kept as the context of a partial
    rescan (only its metadata may change) was taken as the move source of a new file of
    the same size and mtime elsewhere, so nothing was left at its key."""
    dst = snapshot({"a": F(0, 1, ident=1), "b": F(0, 1, ident=2)})
    src = snapshot({"a": F(0, 2, ident=1), "b/": D(ident=3), "b/a": F(0, 1, ident=4)})
    dst.partial = {(), ("a",)}
    src.partial = {(), ("a",)}
    changes = diff(src, dst, None)
    ops = plan(changes, dst).ops
    check_plan(ops, dst, src)
    assert not any(op.key == ("a",) and op.op in ("move", "delete") for op in ops), ops


@pytest.mark.parametrize("limit", [5000, 0], ids=["by-lookup", "whole-history"])
def test_names_swapped_with_equal_payloads_are_moves_by_identity(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes swapped names and ended with equal payloads (two empty OUs through a
    temporary name, two identical files): every key is equal, but the history says each
    identity moved, so the destination nodes follow them. With ``parents_witness`` only
    below a container whose payload differs (a rename changes its directory's mtime)."""
    import hsync.differ

    monkeypatch.setattr(hsync.differ, "LOOKUP_LIMIT", limit)
    history = MemoryHistory({1: (("a",), F(1, 1, ident=1)), 2: (("b",), F(1, 1, ident=2))})
    dst = snapshot({"a": F(1, 1, ident=10), "b": F(1, 1, ident=20)})
    src = snapshot({"a": F(1, 1, ident=2), "b": F(1, 1, ident=1)})
    the_plan = plan(diff(src, dst, history), dst)
    check_plan(the_plan.ops, dst, src)
    moves = {(op.key, op.to) for op in the_plan.ops if op.op == "move"}
    assert moves == {(("a",), (TMP,)), (("b",), ("a",)), ((TMP,), ("b",))}
    # where renames leave their trace on the parent: nothing without one...
    assert diff(src, dst, history, parents_witness=True) == []
    # ...the same moves with it (the root directory's mtime changed)
    touched = snapshot({"a": F(1, 1, ident=2), "b": F(1, 1, ident=1)}, root=D(mtime=5))
    changes = diff(touched, dst, history, parents_witness=True)
    assert sorted(c.op for c in changes) == ["move", "move", "update"]
