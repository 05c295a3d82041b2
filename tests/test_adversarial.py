"""Property tests (hypothesis) with hostile names and shapes: newlines, leading dashes,
dot-like names, names that are not UTF-8, 255-byte names, glob and escape characters,
Unicode look-alikes, deep chains. Against the planner (every plan passes check_plan)
and against the filesystem backend (a sync makes the trees equal, nothing is left to
do, no temporary file is left, nothing outside the destination is touched)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_property import materialize
from treeutil import DIR, D, F, File, L, Link, assert_same_tree

from hsync.differ import MemoryHistory, diff
from hsync.model import Key, Node, Snapshot
from hsync.oneshot import sync_once
from hsync.options import Options
from hsync.planner import check_plan, plan

HOSTILE = (
    "a", "b",
    "new\nline", "\n", "-rf", "--", "-", "...", "..a", "a..", ". ", " .", " ",
    "\t", "*", "?", "[a]", "\\", "a\\b", "~", "#x", "$HOME", "'q'", '"d"',
    "\udcff", "\udc80a", "é", "e\u0301", "\u202e", "\x7f", "\x01",
    "L" * 255, "é" * 127,  # 255 and 254 bytes
)
"""Never: "", ".", "..", anything with "/" or NUL (no POSIX name holds them), nor a name
starting with ".hsync-tmp-" (hsync's own temporary files; see README)."""

names = st.sampled_from(HOSTILE)
T0 = 1_600_000_000 * 10**9


@st.composite
def paths(draw: st.DrawFn, max_bytes: int = 1 << 20) -> tuple[str, ...]:
    """A path of hostile names; now and then a deep chain. ``max_bytes`` keeps it within
    what the test's own tree reader can handle (PATH_MAX: see test_faults)."""
    if draw(st.integers(0, 9)) == 0:
        name = draw(names)
        depth = min(draw(st.integers(20, 60)), max_bytes // (len(os.fsencode(name)) + 1))
        return (*([name] * depth), draw(names))
    return tuple(draw(st.lists(names, min_size=1, max_size=3)))


@st.composite
def node_trees(draw: st.DrawFn) -> dict[Key, Node]:
    nodes: dict[Key, Node] = {(): D()}
    ident = 1
    for p in sorted(draw(st.lists(paths(), min_size=1, max_size=8)), key=len):
        if p in nodes or any(nodes.get(p[:i], D()).kind != "dir" for i in range(1, len(p))):
            continue
        for i in range(1, len(p)):
            if p[:i] not in nodes:
                nodes[p[:i]] = D(ident=ident)
                ident += 1
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink"]))
        nodes[p] = (
            F(draw(st.integers(0, 2)), draw(st.integers(0, 1)), ident=ident) if kind == "file"
            else D(ident=ident) if kind == "dir"
            else L(draw(names), ident=ident)
        )
        ident += 1
    return dict(sorted(nodes.items(), key=lambda kv: (len(kv[0]), kv[0])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dst=node_trees(), src=node_trees(), history=st.booleans())
def test_plans_for_hostile_names_are_legal_and_complete(
    dst: dict[Key, Node], src: dict[Key, Node], history: bool
) -> None:
    d, s = Snapshot(nodes=dst), Snapshot(nodes=src)
    hist = MemoryHistory.from_snapshot(d) if history else None
    ops = plan(diff(s, d, hist), d).ops
    check_plan(ops, d, s)
    for op in ops:
        for key in (op.key, op.to or ()):
            assert all(n not in ("", ".", "..") and "/" not in n for n in key), op


@st.composite
def fs_trees(draw: st.DrawFn) -> dict[str, object]:
    spec: dict[str, object] = {}
    kinds: dict[Key, str] = {}
    for p in sorted(draw(st.lists(paths(max_bytes=3000), max_size=6)), key=len):
        if p in kinds or any(kinds.get(p[:i], "dir") != "dir" for i in range(1, len(p))):
            continue
        for i in range(1, len(p)):
            kinds.setdefault(p[:i], "dir")
        kinds[p] = draw(st.sampled_from(["file", "dir", "symlink"]))
    for k, kind in kinds.items():
        rel = "/".join(k)
        if kind == "dir":
            spec[rel] = DIR
        elif kind == "symlink":
            spec[rel] = Link(draw(st.sampled_from(["..", "../../etc", "/", "x\ny", "-rf"])))
        else:
            content = draw(st.binary(max_size=8))
            spec[rel] = File(content, draw(st.sampled_from([0o644, 0o600])),
                             T0 + len(content) * 7919 + sum(content))
    return spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_trees(), destination=st.one_of(st.none(), fs_trees()))
def test_a_sync_of_hostile_names_makes_the_trees_equal(
    source: dict[str, object], destination: dict[str, object] | None
) -> None:
    note(repr(source))
    with tempfile.TemporaryDirectory(prefix="hsync-adv-") as tmp:
        base = Path(tmp)
        src = materialize(base / "src", source)
        dst = base / "dst"
        if destination is not None:
            materialize(dst, destination)
        fence = base / "fence"  # a neighbour of the destination: never touched
        fence.mkdir()
        (fence / "keep").write_bytes(b"k")
        report = sync_once(
            str(src), str(dst),
            Options(state=str(base / "h.sqlite"), check=True, allow_empty_source=True,
                    delete=True),
        )
        assert report.problems == [], report.problems
        assert_same_tree(src, dst)
        again = sync_once(str(src), str(dst), Options(state=str(base / "h.sqlite"),
                                                      dry_run=True, allow_empty_source=True,
                                                      delete=True))
        assert again.plan is not None and not again.plan, again.plan.to_json()
        assert sorted(os.listdir(fence)) == ["keep"]
        assert sorted(n for n in os.listdir(base) if not n.startswith("h.")) == [
            "dst", "fence", "src"
        ]
        for d, dirs, files in os.walk(dst):
            assert not any(n.startswith(".hsync-tmp-") for n in dirs + files), d
