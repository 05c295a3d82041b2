"""The initial copy of a local tree into an empty destination is streamed into its batch
(``hsync.apply.Stream``): the destination is written while the source is still walked,
every op is in the journal before it runs, and a kill -9 in the middle leaves no torn
file and is resumed by the next run (SPEC 5)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from treeutil import assert_same_tree

import hsync
from hsync.backends.fs import FsBackend
from hsync.journal import Journal
from hsync.oneshot import sync_once
from hsync.options import Options
from hsync.populate import PREFILL

HSYNC = str(Path(sys.executable).parent / "hsync")


def _tree(root: Path, dirs: int, files: int) -> int:
    """``files`` small files spread over ``dirs`` directories two levels deep, each
    file's content checkable alone (its name and an xxh3 of it); the nodes made."""
    for i in range(files):
        d = root / f"d{i % dirs:03d}" / f"s{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        body = f"{i}:".encode() * (1 + i % 50)
        (d / f"f{i:05d}").write_bytes(xxhash.xxh3_64(body).digest() + body)
    return sum(1 for _ in root.rglob("*"))


def _torn(dst: Path) -> list[str]:
    """Files under a final name whose content is not whole, and temporaries left."""
    bad = []
    for p in dst.rglob("*"):
        if p.name.startswith(".hsync-tmp"):
            bad.append(f"temporary {p}")
        elif p.is_file():
            data = p.read_bytes()
            if xxhash.xxh3_64(data[8:]).digest() != data[:8]:
                bad.append(f"torn {p}")
    return bad


def _journal(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state.with_name(state.stem + ".journal.sqlite"))


@pytest.fixture
def walk_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """What the destination held when the source's walk ended (the real walk, watched)."""
    seen: dict[str, Any] = {}
    real = FsBackend.stream

    def watched(self: FsBackend, *a: Any, **kw: Any) -> Iterator[Any]:
        yield from real(self, *a, **kw)
        dst = seen.get("dst")
        if dst is not None:
            seen["dirs"] = sum(1 for p in Path(dst).rglob("*") if p.is_dir())

    monkeypatch.setattr(FsBackend, "stream", watched)
    yield seen


def test_the_destination_is_written_before_the_walk_ends(
    tmp_path: Path, walk_end: dict[str, Any]
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    nodes = _tree(src, 40, 3000)
    assert nodes > PREFILL
    walk_end["dst"] = dst
    report = sync_once(str(src), str(dst), Options(state=str(tmp_path / "h.sqlite")))
    assert report.ok, report.problems
    assert report.counts["create"] == nodes + 1  # and the root
    # the copy had begun while the walk still ran: most directories were there already
    assert walk_end["dirs"] > 100, walk_end
    assert_same_tree(src, dst)
    assert _torn(dst) == []
    assert hsync.diff(str(src), str(dst), state=str(tmp_path / "h.sqlite")).to_json() == []


def test_every_streamed_op_is_journaled_before_it_runs(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    nodes = _tree(src, 60, 2500)
    reader: list[sqlite3.Connection] = []
    at_done: list[tuple[tuple[str, ...], int]] = []

    def done(op: hsync.Op) -> None:  # each op as it is done: what the journal held then
        if not reader:
            reader.append(_journal(state))
        (n,) = reader[0].execute(
            "SELECT n_ops FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        at_done.append((op.key, n))

    report = sync_once(str(src), str(dst), Options(state=str(state)), on_done=done)
    reader[0].close()
    assert report.ok, report.problems
    assert_same_tree(src, dst)
    assert len(at_done) == nodes + 1
    # the journal's record grew while the batch ran: the first ops ran before the walk
    # had found the last ones
    assert at_done[0][1] < nodes + 1, at_done[0]
    journal = Journal(str(state.with_name("h.journal.sqlite")), report_pair(state))
    try:
        assert journal.batches() == [(1, "done", nodes + 1)]  # one batch: one syncfs
        keys = [tuple(k) for _, _, k, _ in journal.ops_of(1)]
    finally:
        journal.close()
    assert len(keys) == len(set(keys)) == nodes + 1
    assert all(k[:-1] in set(keys[:i]) for i, k in enumerate(keys) if k), "parents first"
    place = {k: i for i, k in enumerate(keys)}
    # every op was in the journal's record when it was done
    assert all(place[k] < n for k, n in at_done), [x for x in at_done if place[x[0]] >= x[1]]


def report_pair(state: Path) -> str:
    """The pair id the history at ``state`` holds (one pair)."""
    db = sqlite3.connect(state.with_name("h.journal.sqlite"))
    try:
        (pair,) = db.execute("SELECT DISTINCT pair FROM batches").fetchone()
    finally:
        db.close()
    return str(pair)


def _kill_once(src: Path, dst: Path, state: Path) -> tuple[int, str, int]:
    """A sync killed (-9) as soon as its first directory is there; the journal's one
    batch: its number, state and ops recorded."""
    proc = subprocess.Popen(
        [HSYNC, "sync", str(src), str(dst), "--state", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (dst / "d000").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.05)  # the copy workers die with their parent (PR_SET_PDEATHSIG)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    db = _journal(state)
    try:
        [(seq, st, n_ops)] = db.execute("SELECT seq, state, n_ops FROM batches").fetchall()
    finally:
        db.close()
    return seq, st, n_ops


def test_kill_9_in_the_middle_of_a_streamed_copy_is_resumed(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = tmp_path / "state" / "history.sqlite"
    nodes = _tree(src, 400, 12_000)
    for _ in range(3):  # a kill that came after the walk ended (a slow poller) again
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(state.parent, ignore_errors=True)
        seq, st, n_ops = _kill_once(src, dst, state)
        if n_ops < nodes + 1:
            break
    assert st in ("begun", "running"), st  # killed mid-batch
    # the kill landed in a batch the walk was still feeding: fewer ops journaled than
    # the tree has
    assert 0 < n_ops < nodes + 1, (n_ops, nodes)
    assert [p for p in _torn(dst) if p.startswith("torn")] == []

    again = subprocess.run([HSYNC, "sync", str(src), str(dst), "--state", str(state)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    db = _journal(state)
    try:
        states = dict(db.execute("SELECT seq, state FROM batches"))
    finally:
        db.close()
    assert states[seq] == "rolled forward"
    assert _torn(dst) == []
    assert_same_tree(src, dst)
    same = subprocess.run([HSYNC, "diff", str(src), str(dst), "--state", str(state)],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stdout + same.stderr


def test_a_stop_request_while_the_walk_feeds_the_batch_keeps_the_history_true(
    tmp_path: Path,
) -> None:
    """A stop request while the walk still feeds the batch ends the walk at its next
    directory; what was handed out is finished, flushed and recorded (the batch is
    done in the journal), the run stops with ``Cancelled``, the history holds only
    what is at the destination, and the next sync copies the rest."""
    from hsync.cancel import Cancel, Cancelled

    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    nodes = _tree(src, 60, 4000)  # 120 directories
    cancel = Cancel()
    dirs: list[tuple[str, ...]] = []

    def done(op: hsync.Op) -> None:
        if op.kind == "dir":  # a directory's create is done as it runs, mid-walk
            dirs.append(op.key)
            if len(dirs) == 100:
                cancel.cancel("stop requested")

    with pytest.raises(Cancelled):
        sync_once(str(src), str(dst), Options(state=str(state)), on_done=done,
                  cancel=cancel)
    made = sum(1 for _ in dst.rglob("*"))
    assert PREFILL < made < nodes, (made, nodes)
    assert _torn(dst) == []
    db = sqlite3.connect(state)
    try:
        (rows,) = db.execute("SELECT count(*) FROM nodes").fetchone()
    finally:
        db.close()
    assert rows == made + 1, (rows, made)  # every node made, and the root
    jdb = _journal(state)
    try:
        assert [st for (st,) in jdb.execute("SELECT state FROM batches")] == ["done"]
    finally:
        jdb.close()
    again = sync_once(str(src), str(dst), Options(state=str(state)))
    assert again.ok, again.problems
    assert again.counts["create"] == nodes - made
    assert_same_tree(src, dst)
    assert hsync.diff(str(src), str(dst), state=str(state)).to_json() == []
