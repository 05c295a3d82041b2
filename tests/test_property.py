"""Property tests (hypothesis): for any pair of trees the plan is legal and complete.

(a) pure: random in-memory trees -> diff -> plan -> check_plan (case-sensitive,
    case-insensitive, --no-delete, with and without a history, with a stale one);
(b) real: random trees on disk -> sync_once -> the trees are equal, a second run plans
    nothing;
(c) real: a first sync, random mutations of the source (renames, swaps, moves, deletes,
    creates, rewrites, type changes), a second sync with the same history -> equal again;
    a sequence of pure renames copies no byte.

Names come from a tiny alphabet with case variants (and, on disk, a name that is not
UTF-8), so collisions, case-only renames, nesting and type changes are frequent.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import attrs
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from treeutil import DIR, D, F, File, L, Link, assert_same_tree, build

from hsync.differ import Digest, MemoryHistory, diff
from hsync.live import RoundResult
from hsync.model import Key, Node, Snapshot, is_under
from hsync.oneshot import sync_once
from hsync.options import Options, Report
from hsync.planner import check_plan, plan
from hsync.region import Region

NAMES = ("a", "A", "b", "B", "c")
IDENTS = range(1, 16)

Tree = dict[Key, Node]

names = st.sampled_from(NAMES)
fs_names = st.sampled_from((*NAMES, "\udcff"))
"""On disk, one more name: the byte 0xff, not valid UTF-8 (carried as a surrogate escape)."""
file_nodes = st.builds(
    F,
    size=st.integers(0, 2),
    mtime=st.integers(1, 2),
    mode=st.sampled_from([0o644, 0o600]),
)
dir_nodes = st.builds(D, mode=st.sampled_from([0o755, 0o700]), mtime=st.integers(0, 1))
link_nodes = st.builds(L, st.sampled_from(["x", "y"]))
any_nodes = st.one_of(file_nodes, dir_nodes, link_nodes)
_fresh = itertools.count(1000)
MUTATIONS = ["move", "move", "swap", "swap", "delete", "create", "modify", "retype"]


# -- (a) pure ------------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn, max_nodes: int = 10) -> Tree:
    """A random tree; every node has a unique identity or none (like inodes)."""
    paths = draw(
        st.lists(
            st.lists(names, min_size=1, max_size=3).map(tuple), min_size=1, max_size=max_nodes
        )
    )
    nodes: Tree = {(): draw(dir_nodes)}
    for p in sorted(paths, key=lambda k: (len(k), k)):
        if p in nodes:
            continue
        for i in range(1, len(p)):
            head = p[:i]
            if head not in nodes:
                nodes[head] = draw(dir_nodes)
        if nodes[p[:-1]].kind != "dir":
            continue
        nodes[p] = draw(any_nodes)
    # drop anything that ended up below a non-directory
    nodes = {
        k: n for k, n in nodes.items() if all(nodes[k[:i]].kind == "dir" for i in range(len(k)))
    }
    idents = draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from(IDENTS)),
            min_size=len(nodes),
            max_size=len(nodes),
        )
    )
    used: set[int] = set()
    out: Tree = {}
    for (k, n), i in zip(nodes.items(), idents, strict=True):
        if i in used:
            i = None
        elif i is not None:
            used.add(i)
        out[k] = attrs.evolve(n, identity=i)
    return out


def _subtree(nodes: Tree, key: Key) -> list[Key]:
    return [k for k in nodes if is_under(k, key)]


def _relocate(nodes: Tree, key: Key, to: Key) -> None:
    moving = {k: nodes.pop(k) for k in _subtree(nodes, key)}
    for k, n in moving.items():
        nodes[to + k[len(key) :]] = n


@st.composite
def mutated(draw: st.DrawFn, base: Tree) -> Tree:
    """``base`` after a few random edits that keep identities (so moves are real)."""
    nodes = dict(base)
    for _ in range(draw(st.integers(1, 6))):
        what = draw(st.sampled_from(MUTATIONS))
        keys = sorted(k for k in nodes if k)
        dirs = sorted(k for k, n in nodes.items() if n.kind == "dir")
        if what == "create" or not keys:
            k = (*draw(st.sampled_from(dirs)), draw(names))
            if k not in nodes:
                nodes[k] = attrs.evolve(draw(any_nodes), identity=next(_fresh))
            continue
        k = draw(st.sampled_from(keys))
        n = nodes[k]
        if what == "move":
            targets = [d for d in dirs if not is_under(d, k)]
            to = (*draw(st.sampled_from(targets)), draw(names))
            if to not in nodes:
                _relocate(nodes, k, to)
        elif what == "swap":
            other = draw(st.sampled_from(keys))
            if is_under(other, k) or is_under(k, other):
                continue
            tmp = ("\0swap",)
            _relocate(nodes, k, tmp)
            _relocate(nodes, other, k)
            _relocate(nodes, tmp, other)
        elif what == "delete":
            for d in _subtree(nodes, k):
                del nodes[d]
        elif what == "modify":
            if n.kind == "file":
                new = draw(file_nodes)
            elif n.kind == "dir":
                new = draw(dir_nodes)
            else:
                new = draw(link_nodes)
            nodes[k] = attrs.evolve(new, identity=n.identity)
        else:  # retype
            for d in _subtree(nodes, k):
                del nodes[d]
            new = draw(any_nodes.filter(lambda m, kind=n.kind: m.kind != kind))
            nodes[k] = attrs.evolve(new, identity=next(_fresh))
    return dict(sorted(nodes.items(), key=lambda kv: (len(kv[0]), kv[0])))


@st.composite
def tree_pairs(draw: st.DrawFn) -> tuple[Snapshot, Snapshot]:
    dst = draw(trees())
    src = draw(st.one_of(trees(), mutated(dst), mutated(dst)))
    source = Snapshot(nodes=src)
    if draw(st.booleans()):
        # a directory whose listing failed: the scan saw it, but nothing below it
        cands = sorted(k for k, n in src.items() if n.kind == "dir" and k)
        if cands:
            k = draw(st.sampled_from(cands))
            source = Snapshot(
                nodes={s: n for s, n in src.items() if not (is_under(s, k) and s != k)},
                incomplete={k: "Permission denied"},
            )
    return Snapshot(nodes=dst), source


def _literal(n: Node) -> str:
    if n.kind == "dir":
        return f"D(mode=0o{n.mode:o}, mtime={n.mtime_ns}, ident={n.identity})"
    if n.kind == "file":
        return f"F({n.size}, {n.mtime_ns}, ident={n.identity}, mode=0o{n.mode:o})"
    return f"L({n.target!r}, ident={n.identity})"


def render(snap: Snapshot) -> str:
    """A snapshot as a ``treeutil.snapshot`` literal (for failure reports)."""
    rows = [
        f'"{"/".join(k)}{"/" if n.kind == "dir" else ""}": {_literal(n)}'
        for k, n in snap.nodes.items()
        if k
    ]
    out = "{" + ", ".join(rows) + "}"
    out += f", root={_literal(snap.nodes[()])}"
    if snap.incomplete:
        out += f", incomplete={ {'/'.join(k): v for k, v in snap.incomplete.items()} }"
    return out


def _no_case_collisions(snap: Snapshot) -> bool:
    folded = {tuple(n.casefold() for n in k) for k in snap.nodes}
    return len(folded) == len(snap.nodes)


def _digest_oracle(mode: str | None, src: Snapshot, dst: Snapshot) -> Digest | None:
    if mode is None:
        return None

    def digest(side: str, key: Key) -> bytes | None:
        node = (src if side == "source" else dst).nodes.get(key)
        if node is None:
            return None
        # "size": every file of one size has the same content; "exact": (size, mtime)
        return repr((node.size, node.mtime_ns if mode == "exact" else 0)).encode()

    return digest


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=tree_pairs(),
    history=st.sampled_from(["none", "destination", "stale"]),
    digest_mode=st.sampled_from([None, "size", "exact"]),
    checksum=st.booleans(),
    stale=trees(),
)
def test_pure_plan_is_legal_and_complete(
    pair: tuple[Snapshot, Snapshot],
    history: str,
    digest_mode: str | None,
    checksum: bool,
    stale: Tree,
) -> None:
    dst, src = pair
    note(f"destination = snapshot({render(dst)})")
    note(f"source = snapshot({render(src)})")
    hist = None
    if history == "destination":
        hist = MemoryHistory.from_snapshot(dst)
    elif history == "stale":
        hist = MemoryHistory.from_snapshot(Snapshot(nodes=stale))
    digest = _digest_oracle(digest_mode, src, dst)
    checksum = checksum and digest is not None

    changes = diff(src, dst, hist, digest=digest, checksum=checksum)
    ops = plan(changes, dst).ops
    check_plan(ops, dst, src)
    for i, op in enumerate(ops):  # a directory's metadata is set after its children settle
        if op.op == "update" and op.kind == "dir":
            assert not any(
                (later.key != op.key and is_under(later.key, op.key))
                or (later.to is not None and is_under(later.to, op.key))
                for later in ops[i + 1 :]
            ), [o.to_json() for o in ops]

    if _no_case_collisions(src) and _no_case_collisions(dst):
        ci = plan(changes, dst, case_insensitive=True)
        check_plan(ci.ops, dst, src, case_insensitive=True)

    keep = diff(src, dst, hist, digest=digest, checksum=checksum, delete=False)
    check_plan(plan(keep, dst).ops, dst, src, allow_extra=True)
    assert all(c.op != "move" for c in keep)


# -- (b) real trees -------------------------------------------------------------------------

T0 = 1_600_000_000 * 10**9


@st.composite
def fs_specs(draw: st.DrawFn, max_nodes: int = 10) -> dict[str, object]:
    """A tree for ``treeutil.build``; directory metadata under ``("meta", path)``.

    A file's mtime is derived from its content (plus a small shift): equal size and
    mtime imply equal content, as the quick check presumes (SPEC section 2)."""
    paths = draw(
        st.lists(st.lists(fs_names, min_size=1, max_size=3).map(tuple), max_size=max_nodes)
    )
    kinds: dict[Key, str] = {}
    for p in sorted(paths, key=lambda k: (len(k), k)):
        if p in kinds or any(kinds.get(p[:i], "dir") != "dir" for i in range(1, len(p))):
            continue
        for i in range(1, len(p)):
            kinds.setdefault(p[:i], "dir")
        kinds[p] = draw(st.sampled_from(["file", "file", "dir", "symlink"]))
    spec: dict[str, object] = {}
    for k, kind in kinds.items():
        rel = "/".join(k)
        if kind == "dir":
            spec[rel] = DIR
            spec[f"\0meta/{rel}"] = (
                draw(st.sampled_from([0o755, 0o700, 0o750])),
                T0 + draw(st.integers(0, 3)) * 10**9,
            )
        elif kind == "symlink":
            spec[rel] = Link(draw(st.sampled_from(["a", "../x", "b/c", "/nonexistent"])))
        else:
            spec[rel] = _file(draw(st.binary(max_size=6)), draw(st.integers(0, 1)), draw)
    spec["\0meta/"] = (draw(st.sampled_from([0o755, 0o700])), T0)
    return spec


def _file(content: bytes, shift: int, draw: st.DrawFn) -> File:
    mode = draw(st.sampled_from([0o644, 0o600, 0o755]))
    return File(content, mode, _mtime(content, shift))


def _mtime(content: bytes, shift: int) -> int:
    return T0 + zlib.crc32(content) * 1000 + shift


def materialize(
    root: Path, spec: dict[str, object], then: Callable[[Path], None] | None = None
) -> Path:
    """Build ``spec`` under ``root`` (``then(root)`` adds more), then set directory modes
    and mtimes deepest first."""
    build(root, {k: v for k, v in spec.items() if not k.startswith("\0")})
    if then is not None:
        then(root)
    meta = sorted(
        ((k[len("\0meta/") :], v) for k, v in spec.items() if k.startswith("\0meta/")),
        key=lambda kv: -kv[0].count("/") - (kv[0] != ""),
    )
    for rel, (mode, mtime) in meta:
        path = root / rel if rel else root
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))
    return root


def _sync(src: Path, dst: Path, state: Path | None, **options: object) -> Report:
    """sync_once with check_plan on (``state`` None: no history) and deletions allowed
    (random destinations are never hsync's own); an empty source is a legitimate random
    case."""
    where = str(state) if state is not None else ""
    options = {"state": where, "check": True, "allow_empty_source": True, "delete": True,
               **options}
    return sync_once(str(src), str(dst), Options(**options))


def _moved(report: Report) -> list[bytes]:
    """Final paths of the directories that were move targets of ``report``'s run."""
    assert report.plan is not None
    return [os.fsencode("/".join(op.to)) for op in report.plan.ops if op.to is not None]


def _assert_converged(src: Path, dst: Path, state: Path | None, report: Report) -> None:
    """The trees are equal (directory mtimes included) and a second run plans nothing."""
    assert_same_tree(src, dst)
    again = _sync(src, dst, state, dry_run=True)
    assert again.plan is not None
    left = [op.to_json() for op in again.plan.ops]
    assert left == [], again.plan.to_json()
    assert not _temps(dst)


def _temps(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if n.startswith((".hsync-tmp-", ".hsync-mv-"))
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_specs(), destination=st.one_of(st.none(), fs_specs()))
def test_real_sync_makes_trees_equal(
    source: dict[str, object], destination: dict[str, object] | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="hsync-prop-") as tmp:
        base = Path(tmp)
        src = materialize(base / "src", source)
        dst = base / "dst"
        if destination is not None:
            materialize(dst, destination)
        report = _sync(src, dst, base / "state.sqlite")
        assert report.problems == [], report.problems
        _assert_converged(src, dst, base / "state.sqlite", report)


# -- (c) mutations of a real source after a first sync -------------------------------------

MOVES = ("rename", "move", "swap")
OTHERS = ("delete", "create", "modify", "retype", "chmod")


def mutation_lists(kinds: tuple[str, ...]) -> st.SearchStrategy[list[tuple]]:
    """Mutations as data: (kind, entry pick, second pick, name, content)."""
    return st.lists(
        st.tuples(
            st.sampled_from(kinds),
            st.integers(0, 50),  # picks an entry
            st.integers(0, 50),  # picks another entry or a directory
            fs_names,
            st.binary(max_size=6),
        ),
        min_size=1,
        max_size=6,
    )

def _entries(root: Path) -> tuple[list[Path], list[Path]]:
    """Every node below ``root`` (sorted) and every directory (``root`` included)."""
    everything: list[Path] = []
    dirs = [root]
    for d, dnames, fnames in os.walk(root):
        for n in dnames + fnames:
            p = Path(d) / n
            everything.append(p)
            if p.is_dir() and not p.is_symlink():
                dirs.append(p)
    return sorted(everything), sorted(dirs)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _write(p: Path, content: bytes, shift: int = 0) -> None:
    p.write_bytes(content)
    mtime = _mtime(content, shift)
    os.utime(p, ns=(mtime, mtime))


def apply_mutation(root: Path, mutation: tuple[str, int, int, str, bytes]) -> str | None:
    """Apply one mutation to the real tree; what was done, or None when skipped."""
    what, i, j, name, content = mutation
    everything, dirs = _entries(root)
    if not everything and what != "create":
        return None
    if what == "create":
        target = dirs[j % len(dirs)] / name
        if os.path.lexists(target):
            return None
        _write(target, content)
        return "create"
    e = everything[i % len(everything)]
    if what == "rename":
        target = e.parent / name
        if os.path.lexists(target):
            return None
        e.rename(target)
    elif what == "move":
        choices = [d for d in dirs if d != e and e not in d.parents and d != e.parent]
        if not choices:
            return None
        target = choices[j % len(choices)] / (name if j % 2 else e.name)
        if os.path.lexists(target):
            return None
        e.rename(target)
    elif what == "swap":
        other = everything[j % len(everything)]
        if other == e or e in other.parents or other in e.parents:
            return None
        tmp = e.parent / ".swap-tmp"
        e.rename(tmp)
        other.rename(e)
        tmp.rename(other)
    elif what == "delete":
        _remove(e)
    elif what == "modify":
        if not e.is_file() or e.is_symlink():
            return None
        if e.read_bytes() == content:
            content += b"!"
        _write(e, content)
    elif what == "chmod":
        if not e.is_file() or e.is_symlink():
            return None
        mode = stat.S_IMODE(e.lstat().st_mode)
        os.chmod(e, 0o600 if mode != 0o600 else 0o644)
    else:  # retype: file or symlink -> directory, directory -> file
        is_dir = e.is_dir() and not e.is_symlink()
        _remove(e)
        if is_dir:
            _write(e, content)
        else:
            e.mkdir()
            _write(e / name, content)
    return what


def _sync_after_mutations(
    source: dict[str, object], steps: list[tuple], *, history: bool
) -> tuple[list[str], Report]:
    """First sync, mutate the source, sync again; the trees converge. Returns the
    mutations that applied and the second run's report."""
    with tempfile.TemporaryDirectory(prefix="hsync-prop-") as tmp:
        base = Path(tmp)
        state = base / "state.sqlite" if history else None
        src = materialize(base / "src", source)
        dst = base / "dst"
        first = _sync(src, dst, state)
        assert first.problems == [], first.problems
        assert_same_tree(src, dst)

        applied = [done for m in steps if (done := apply_mutation(src, m)) is not None]
        note(f"applied: {applied}")
        report = _sync(src, dst, state)
        note(f"plan: {report.plan.to_json() if report.plan else None}")
        assert report.problems == [], report.problems
        _assert_converged(src, dst, state, report)
        return applied, report


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_specs(max_nodes=12), steps=mutation_lists(MOVES + OTHERS))
def test_real_sync_after_mutations(source: dict[str, object], steps: list[tuple]) -> None:
    applied, report = _sync_after_mutations(source, steps, history=True)
    if applied and set(applied) <= set(MOVES):
        assert report.bytes_copied == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_specs(max_nodes=12), steps=mutation_lists(MOVES), history=st.booleans())
def test_real_renames_copy_nothing(
    source: dict[str, object], steps: list[tuple], history: bool
) -> None:
    """Only renames, moves and swaps: no byte is copied, with or without a history."""
    applied, report = _sync_after_mutations(source, steps, history=history)
    assert set(applied) <= set(MOVES)
    assert report.bytes_copied == 0
    if history:
        # With the history, renames are moves, never create + delete.
        assert report.plan is not None
        recreated = [op.to_json() for op in report.plan.ops if op.op in ("create", "delete")]
        assert recreated == []


def _quick_round(src: Path, dst: Path, state: Path) -> RoundResult:
    """What a restarted watch does first: the source against the history (stat-only),
    then a round over what that found. Returns the round."""
    from hsync.live import PairWatch
    from hsync.session import PairSession

    rounds: list[RoundResult] = []
    pw = PairWatch(str(src), str(dst), Options(state=str(state), check=True),
                   on_round=rounds.append)
    with PairSession(str(src), str(dst), pw.options) as session:
        pw._round(session, Region.of([()]), None, quick=True)
    assert len(rounds) == 1 and rounds[0].full
    return rounds[0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_specs(max_nodes=12), steps=mutation_lists(MOVES + OTHERS))
def test_quick_pass_against_the_history_finds_every_change(
    source: dict[str, object], steps: list[tuple]
) -> None:
    """Changes made while nothing watched: the stat-only pass of the source against the
    history, then a round over what it found, makes the trees equal (and renames stay
    renames)."""
    with tempfile.TemporaryDirectory(prefix="hsync-quick-") as tmp:
        base = Path(tmp)
        state = base / "state.sqlite"
        src = materialize(base / "src", source)
        dst = base / "dst"
        assert _sync(src, dst, state).problems == []
        applied = [done for m in steps if (done := apply_mutation(src, m)) is not None]
        note(f"applied: {applied}")
        # (an emptied source is refused, as by sync: tests/test_watch.py covers it)
        assume(any(src.iterdir()))
        r = _quick_round(src, dst, state)
        note(f"region: {r.region}; ops: {[op.to_json() for op in r.ops]}")
        assert r.problems == (), r.problems
        assert_same_tree(src, dst)
        if applied and set(applied) <= set(MOVES):
            recreated = [op.to_json() for op in r.ops if op.op in ("create", "delete")]
            assert recreated == []
        # and nothing is left for the next pass
        assert not _quick_round(src, dst, state).ops


# -- (d) the comparison by directory digests plans what a full comparison plans ------------


def _changes(src: Path, dst: Path, state: Path | None, *, full: bool) -> list[tuple]:
    """The changes ``hsync diff`` finds, by directory digests or (``full``) by shipping
    and comparing every node; read-only."""
    import hsync.digests
    from hsync.oneshot import compare

    saved = hsync.digests.DIRTY_SHARE
    # -1: every comparison ships everything; 1: never, however much differs
    hsync.digests.DIRTY_SHARE = -1.0 if full else 1.0
    try:
        cmp = compare(str(src), str(dst), Options(
            state=str(state) if state is not None else "", check=True, dry_run=True,
            allow_empty_source=True,
        ))
    finally:
        hsync.digests.DIRTY_SHARE = saved
    return sorted(
        ((c.op, c.key, c.to or (), c.kind) for c in cmp.plan.changes),
        key=lambda c: (c[0], [os.fsencode(n) for n in c[1]], [os.fsencode(n) for n in c[2]]),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=fs_specs(max_nodes=12),
    on_source=mutation_lists(MOVES + OTHERS),
    on_destination=st.lists(st.tuples(
        st.sampled_from(MOVES + OTHERS), st.integers(0, 50), st.integers(0, 50), fs_names,
        st.binary(max_size=6)), max_size=3),
)
def test_digest_comparison_finds_what_a_full_comparison_finds(
    source: dict[str, object], on_source: list[tuple], on_destination: list[tuple]
) -> None:
    """After a first sync, the source changes and so does the destination behind
    hsync's back; comparing directory digests and shipping only what differs (and
    where it came from) finds no more changes than comparing every node (the same
    ones in all but a few cases, where a directory is kept in place rather than moved
    by its identity), and the sync converges."""
    with tempfile.TemporaryDirectory(prefix="hsync-prop-") as tmp:
        base = Path(tmp)
        state = base / "state.sqlite"  # without a history, every comparison is full
        src = materialize(base / "src", source)
        dst = base / "dst"
        assert _sync(src, dst, state).problems == []
        done = [m for m in on_source if apply_mutation(src, m) is not None]
        drift = [m for m in on_destination if apply_mutation(dst, m) is not None]
        note(f"source: {done}; destination: {drift}")
        by_digest = _changes(src, dst, state, full=False)
        full = _changes(src, dst, state, full=True)
        note(f"by digest: {by_digest}; full: {full}")
        assert len(by_digest) <= len(full)
        report = _sync(src, dst, state)
        assert report.problems == [], report.problems
        _assert_converged(src, dst, state, report)


# -- (d) holes, FIFOs and symlink mtimes (issue 11) -----------------------------------------

Extra = tuple[str, int, int, int]
"""One node beyond what ``build`` makes: (kind, where, a, b): a sparse file (``hole``:
``a`` extents of 4 KiB in a file of ``b`` MiB, ``a`` 0: all hole), a FIFO (``fifo``:
mode pick ``a``, mtime shift ``b``), or a symlink's own mtime (``touch``: the
``where``-th symlink, mtime shift ``a``)."""


def extras() -> st.SearchStrategy[list[Extra]]:
    return st.lists(
        st.tuples(st.sampled_from(["hole", "fifo", "touch"]), st.integers(0, 20),
                  st.integers(0, 3), st.integers(1, 8)),
        max_size=5,
    )


def add_extras(root: Path, items: list[Extra]) -> None:
    """Make ``items`` below ``root``: in one of its directories (``where``), under
    names ``build`` never uses; symlink mtimes set last."""
    _, dirs = _entries(root)
    for n, (kind, where, a, b) in enumerate(items):
        d = dirs[where % len(dirs)]
        if kind == "hole":
            fd = os.open(d / f"hole-{n}", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for e in range(a):
                    os.pwrite(fd, bytes([65 + e]) * 4096, (e * 2 + 1) * b * (1 << 18))
                os.ftruncate(fd, b << 20)
            finally:
                os.close(fd)
            os.utime(d / f"hole-{n}", ns=(T0 + n, T0 + n))
        elif kind == "fifo":
            os.mkfifo(d / f"fifo-{n}")
            os.chmod(d / f"fifo-{n}", (0o644, 0o600, 0o640, 0o666)[a])
            os.utime(d / f"fifo-{n}", ns=(T0 + b, T0 + b))
    links = sorted(p for p in _entries(root)[0] if p.is_symlink())
    for kind, where, a, _ in items:
        if kind == "touch" and links:
            mtime = T0 + a * 10**9 + where
            os.utime(links[where % len(links)], ns=(mtime, mtime), follow_symlinks=False)


def _assert_holes_kept(src: Path, dst: Path) -> None:
    """Each sparse file allocates on the destination no more than on the source (plus
    a little: a filesystem may round an extent up)."""
    for p in _entries(src)[0]:
        if p.name.startswith("hole-") and p.is_file() and not p.is_symlink():
            there = dst / p.relative_to(src)
            assert os.lstat(there).st_blocks <= os.lstat(p).st_blocks + 128, there


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_specs(), more=extras(), destination=st.one_of(st.none(), fs_specs()),
       theirs=extras())
def test_real_sync_keeps_holes_fifos_and_symlink_mtimes(
    source: dict[str, object], more: list[Extra], destination: dict[str, object] | None,
    theirs: list[Extra],
) -> None:
    """Holes stay holes, FIFOs are made again, symlink mtimes are kept, over any
    destination (its own FIFOs and sparse files where the source has other kinds)."""
    with tempfile.TemporaryDirectory(prefix="hsync-prop-") as tmp:
        base = Path(tmp)
        src = materialize(base / "src", source, lambda r: add_extras(r, more))
        dst = base / "dst"
        if destination is not None:
            materialize(dst, destination, lambda r: add_extras(r, theirs))
        report = _sync(src, dst, base / "state.sqlite")
        assert report.problems == [], report.problems
        _assert_converged(src, dst, base / "state.sqlite", report)
        _assert_holes_kept(src, dst)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=fs_specs(max_nodes=8), more=extras(), later=extras(),
       steps=mutation_lists(MOVES + OTHERS))
def test_real_sync_after_mutations_of_the_new_kinds(
    source: dict[str, object], more: list[Extra], later: list[Extra], steps: list[tuple]
) -> None:
    """A first sync, then mutations (moves, deletes, retypes) and new holes, FIFOs and
    symlink touches on the source: a second sync with the history converges."""
    with tempfile.TemporaryDirectory(prefix="hsync-prop-") as tmp:
        base = Path(tmp)
        state = base / "state.sqlite"
        src = materialize(base / "src", source, lambda r: add_extras(r, more))
        dst = base / "dst"
        assert _sync(src, dst, state).problems == []
        assert_same_tree(src, dst)
        applied = [done for m in steps if (done := apply_mutation(src, m)) is not None]
        for i, item in enumerate(later):  # new names: never those of the first extras
            if item[0] == "touch":
                add_extras(src, [item])
            else:
                _add_renamed(src, item, i)
        note(f"applied: {applied}")
        report = _sync(src, dst, state)
        assert report.problems == [], report.problems
        _assert_converged(src, dst, state, report)
        _assert_holes_kept(src, dst)


def _add_renamed(root: Path, item: Extra, i: int) -> None:
    """``add_extras`` of one item under a name of the second round (``hole-2-i``)."""
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        where = Path(tmp)
        add_extras(where, [item])
        made = next(iter(os.listdir(where)))
        _, dirs = _entries(root)
        target = dirs[item[1] % len(dirs)] / f"{made.split('-')[0]}-2-{i}"
        if not os.path.lexists(target):
            os.rename(where / made, target)
