"""Watch latency at the default settings (issue 15 item 5), by behaviour, never by time:

- a file written and closed alone starts its round at once (no debounce), a round
  that the close's own echo does not make stale;
- a burst (a script writing 1,000 files) is coalesced into few rounds (counted);
- a batch of a few nodes is made durable by fsyncs of those nodes and their
  directories, a larger one (or one with a symlink) by one ``syncfs``.

Real inotify, real files; the latency itself is measured in ``bench/bench_watch.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_watch import converge, no_leaks, running, wait_for, write  # noqa: F401
from treeutil import assert_same_tree, build
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from hsync.backends.fs import apply as fs_apply
from hsync.backends.fs import durable
from hsync.backends.fs.durable import FEW, flush_nodes, touched
from hsync.backends.fs.watcher import _Handler
from hsync.dirty import BURST_GAP, Dirty
from hsync.live import WatchOptions
from hsync.model import Node, Op
from hsync.oneshot import sync_once
from hsync.options import Options
from hsync.region import Region

DEFAULTS = WatchOptions()


def _file(key: tuple[str, ...], op: str = "create") -> Op:
    return Op(op=op, kind="file", key=key, node=Node(kind="file", size=1))


@pytest.mark.parametrize(
    ("description", "ops", "dirs", "want"),
    [
        ("a new file: the file and the directory that got its name",
         [_file(("d", "f"))], [], {("d", "f"): False, ("d",): True}),
        ("a file at the top", [_file(("f",), "update")], [], {("f",): False, (): True}),
        ("a new directory: itself and its parent",
         [Op(op="create", kind="dir", key=("d",), node=Node(kind="dir"))], [],
         {("d",): True, (): True}),
        ("a delete: the directory that lost the name",
         [Op(op="delete", kind="file", key=("a", "b"))], [], {("a",): True}),
        ("a directory moved: both parents and itself (its '..')",
         [Op(op="move", kind="dir", key=("a", "x"), to=("b", "x"), node=Node(kind="dir"))],
         [], {("a",): True, ("b",): True, ("b", "x"): True}),
        ("directories whose metadata was set", [], [("p",), ("p", "q")],
         {("p",): True, ("p", "q"): True}),
        ("a symlink cannot be opened to fsync: the filesystem's flush",
         [Op(op="create", kind="symlink", key=("l",), node=Node(kind="symlink", target="x"))],
         [], None),
        ("more than FEW nodes: the filesystem's flush",
         [_file((f"f{i}",)) for i in range(FEW)], [], None),
    ],
)
def test_what_a_small_batch_flushes(
    description: str, ops: list[Op], dirs: list[tuple[str, ...]], want: Any
) -> None:
    assert touched(ops, dirs) == want, description


def _count_syncfs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for module in (fs_apply, durable):
        real = module.syncfs

        def counted(path: str, real: Any = real) -> None:
            calls.append(path)
            real(path)

        monkeypatch.setattr(module, "syncfs", counted)
    return calls


def test_a_one_file_sync_fsyncs_that_file_not_the_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = build(tmp_path / "src", {f"d{i}/f{j}": b"x" * j for i in range(5) for j in range(10)})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    calls = _count_syncfs(monkeypatch)
    assert sync_once(str(src), str(dst), Options(state=state)).ok  # 55 nodes
    assert len(calls) == 1
    (src / "d3" / "f4").write_bytes(b"changed")
    assert sync_once(str(src), str(dst), Options(state=state)).ok  # one file
    assert_same_tree(src, dst)
    assert len(calls) == 1, "one changed file flushed the whole filesystem"


def test_a_node_gone_before_its_fsync_gets_the_filesystems_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = build(tmp_path / "dst", {"d/f": b"1"})
    calls = _count_syncfs(monkeypatch)
    flush_nodes(str(root), {("d", "f"): False, ("d",): True})
    assert calls == []
    flush_nodes(str(root), {("d", "gone"): False, ("d",): True})  # never raises
    assert calls == [str(root)]


class _Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], bool, bool]] = []

    def dirty(self, key: tuple[str, ...], *, deep: bool = True, writing: bool = False) -> None:
        self.calls.append((key, deep, writing))

    def moved(self, old: tuple[str, ...], new: tuple[str, ...], *,
              directory: bool = True) -> None:
        pass  # the moves' two dirty calls are what these tests read

    def lost(self, reason: str, *, quick: bool = True) -> None:
        raise AssertionError(reason)

    def unwatched(self, key: tuple[str, ...], reason: str) -> None:
        raise AssertionError(reason)


def test_the_echo_of_a_close_does_not_dirty_its_directory() -> None:
    """watchdog follows every close with a DirModifiedEvent of the file's directory:
    closing a file changes no directory, and dirtying it would make the round that took
    the closed file stale (a restart, then a whole debounce)."""
    sink = _Sink()
    handler = _Handler(b"/r", sink)
    handler.dispatch(FileClosedEvent("/r/d/f"))
    handler.dispatch(DirModifiedEvent("/r/d"))
    assert sink.calls == [(("d", "f"), False, False)]
    # a directory's own modification (a create in it) still counts
    handler.dispatch(FileCreatedEvent("/r/d/g"))
    handler.dispatch(DirModifiedEvent("/r/d"))
    assert (("d",), False, False) in sink.calls[1:]
    assert sink.calls[-1] == (("d",), False, False)


def test_a_lone_close_is_ready_at_once_and_a_burst_after_it_waits() -> None:
    d = Dirty()  # close_quiet 0, as a watch at its defaults
    d.dirty(("d", "f"), deep=True)  # created, written, closed
    d.dirty(("d",), deep=False)
    d.dirty(("d", "f"), deep=False, writing=True)
    d.dirty(("d", "f"), deep=False)
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 5) is True
    assert time.monotonic() - t0 < 4, "a lone closed file waited for the debounce"
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([("d", "f")], [("d",)])
    # the next files of a burst come while that round runs: they wait for the debounce
    for name in ("g", "h"):
        d.dirty(("d", name), deep=True)
        d.dirty(("d", name), deep=False, writing=True)
        d.dirty(("d", name), deep=False)
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 0.5) is False
    assert time.monotonic() - t0 >= 0.5, "a burst's close was not debounced"
    d.take(allow_full=False)
    # once the burst is over (BURST_GAP after the early round), a close goes at once
    time.sleep(BURST_GAP)
    d.dirty(("e",), deep=False, writing=True)
    d.dirty(("e",), deep=False)
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 5) is True
    assert time.monotonic() - t0 < 4


def test_a_lone_directory_rename_is_ready_at_once_and_one_after_a_change_below_waits(
) -> None:
    """A directory renamed within the tree, nothing reported below it: one rename,
    complete, ready without the debounce and offered folded. The same after a file
    below it changed waits for the debounce, and is not folded."""
    d = Dirty()
    for k, deep in ((("a",), True), (("b",), True), ((), False)):
        d.dirty(k, deep=deep)
    d.moved(("a",), ("b",))
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 5) is True
    assert time.monotonic() - t0 < 4, "a lone rename waited for the debounce"
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([("a",), ("b",)], [()], [(("b",), ("a",))])
    time.sleep(BURST_GAP)
    d.dirty(("b", "f"), deep=False)  # a file below it changed, then it moved
    for k, deep in ((("b",), True), (("c",), True), ((), False)):
        d.dirty(k, deep=deep)
    d.moved(("b",), ("c",))
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 0.5) is False
    region, _first, _quick = d.take(allow_full=False)
    assert region.folded == ()
    # moved, then a file below its new key changed before the round took it: whole
    for k, deep in ((("c",), True), (("e",), True), ((), False)):
        d.dirty(k, deep=deep)
    d.moved(("c",), ("e",))
    d.dirty(("e", "f"), deep=False)
    region, _first, _quick = d.take(allow_full=False)
    assert region.deep >= {("c",), ("e",)} and region.folded == ()


def test_a_save_by_rename_is_ready_at_once() -> None:
    """An editor's save: the new content written to a temporary name, closed, then
    renamed over the file. The rename ends it: ready without the debounce (30 s here),
    as a plain write that ended is."""
    d = Dirty()
    handler = _Handler(b"/r", d)
    handler.dispatch(FileCreatedEvent("/r/d/.f.swp"))
    handler.dispatch(FileModifiedEvent("/r/d/.f.swp"))
    handler.dispatch(FileClosedEvent("/r/d/.f.swp"))
    handler.dispatch(FileMovedEvent("/r/d/.f.swp", "/r/d/f"))
    handler.dispatch(DirModifiedEvent("/r/d"))
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 5) is True
    assert time.monotonic() - t0 < 4, "a save by rename waited for the debounce"
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([("d", ".f.swp"), ("d", "f")], [("d",)])


@pytest.mark.parametrize("restarted", [True, False])
def test_a_directory_moved_while_a_round_copies_a_file_below_it_is_not_folded(
    restarted: bool,
) -> None:
    """A file below ``big`` closed after its write: its round starts at once; ``big``
    is renamed while that round runs. Whether the round is then put back (restarted)
    or ends, the next one must look inside the directory (the file's new content may
    not have reached the destination), never take it as one node."""
    d = Dirty()
    f, big, new = ("big", "f07"), ("big",), ("renamed",)
    d.dirty(f, deep=False, writing=True)
    d.dirty(f, deep=False)
    assert d.wait(30.0, 60.0, time.monotonic() + 5) is True
    region, first, _quick = d.take(allow_full=False)
    d.begin(region)
    for k, deep in ((big, True), ((), False), (new, True), ((), False)):
        d.dirty(k, deep=deep)
    d.moved(big, new)
    assert d.stale
    if restarted:
        d.put_back(region, first)
    else:
        d.end()
    region, _first, _quick = d.take(allow_full=False)
    assert {big, new} <= region.deep
    assert region.folded == ()


@pytest.mark.parametrize("restarted", [True, False])
def test_a_save_whose_temporary_file_an_early_round_took_is_not_a_burst(
    restarted: bool,
) -> None:
    """The temporary file's close starts a round at once; the rename comes while that
    round runs (it restarts) or right after it. The rename finishes that save: ready
    without the debounce, where another file's events that soon would be a burst."""
    d = Dirty()
    tmp, f, parent = ("d", ".f.swp"), ("d", "f"), ("d",)
    d.dirty(tmp, deep=True)
    d.dirty(parent, deep=False)
    d.dirty(tmp, deep=False, writing=True)
    d.dirty(tmp, deep=False)  # closed after its write
    assert d.wait(30.0, 60.0, time.monotonic() + 5) is True
    region, first, _quick = d.take(allow_full=False)
    d.begin(region)
    if not restarted:
        d.end()
    for k, deep in ((tmp, True), (parent, False), (f, True), (parent, False)):
        d.dirty(k, deep=deep)
    d.moved(tmp, f, directory=False)
    if restarted:
        assert d.stale
        d.put_back(region, first)
    t0 = time.monotonic()
    assert d.wait(30.0, 60.0, t0 + 5) is True
    assert time.monotonic() - t0 < 4, "the save's rename waited for the debounce"
    region, _first, _quick = d.take(allow_full=False)
    assert f in region.deep


def test_a_save_by_rename_reaches_the_destination_without_the_debounce(
    tmp_path: Path,
) -> None:
    """The same through real inotify, with a debounce of 30 s: the saved content
    arrives in one round well before it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "d" / "f", b"first")
    with running(src, dst, tmp_path, debounce=30.0, max_delay=60.0) as (_pw, rounds):
        wait_for(lambda: (dst / "d" / "f").exists(), what="the first copy")
        del rounds[:]
        (src / "d" / ".f.swp").write_bytes(b"saved")
        os.rename(src / "d" / ".f.swp", src / "d" / "f")
        wait_for(lambda: (dst / "d" / "f").read_bytes() == b"saved", timeout=10,
                 what="the saved content")
        assert not (dst / "d" / ".f.swp").exists()


def test_a_lone_file_at_the_defaults_arrives_in_one_round_without_a_restart(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "a" / "b" / "old.txt", b"x")
    with running(src, dst, tmp_path, debounce=DEFAULTS.debounce,
                 max_delay=DEFAULTS.max_delay) as (pw, rounds):
        converge(src, dst)
        for i in range(5):
            time.sleep(0.3)  # apart: each is a lone write
            before = pw.status.rounds
            data = os.urandom(100 + i)
            (src / "a" / "b" / f"n{i}").write_bytes(data)
            target = dst / "a" / "b" / f"n{i}"
            wait_for(lambda t=target, d=data: t.exists() and t.read_bytes() == d,
                     what=f"n{i} at the destination")
            wait_for(lambda b=before: pw.status.rounds > b, what="the round listed")
        time.sleep(0.3)
        assert pw.status.restarts == 0
        touched_files = [op.key for r in rounds[1:] for op in r.done if op.kind == "file"]
        assert sorted(touched_files) == [("a", "b", f"n{i}") for i in range(5)]


def test_a_burst_of_1000_files_costs_few_rounds(tmp_path: Path) -> None:
    """A script writing 1,000 files (a ``git checkout``) at the default settings: the
    round of its first file, then the rest coalesced by the debounce."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(20):
        write(src / f"d{i:02d}" / "keep", b"k")
    with running(src, dst, tmp_path, debounce=DEFAULTS.debounce,
                 max_delay=DEFAULTS.max_delay) as (pw, rounds):
        converge(src, dst)
        time.sleep(0.3)
        before = pw.status.rounds
        for i in range(1000):
            (src / f"d{i % 20:02d}" / f"f{i:04d}").write_bytes(b"%d" % i)
        converge(src, dst, timeout=30)
        wait_for(lambda: pw.status.pending == 0 and pw.status.state == "idle",
                 what="the loop idle")
        burst_rounds = pw.status.rounds - before
        print(f"{burst_rounds} rounds, {pw.status.restarts} restarts")
        assert 1 <= burst_rounds <= 5, f"{burst_rounds} rounds for a burst of 1,000 files"
        created = {op.key for r in rounds for op in r.done if op.op == "create"
                   and op.key and op.key[-1].startswith("f")}
        assert len(created) == 1000
