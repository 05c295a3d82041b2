"""The history's record of a move and its close (``history.keep_wal``, ``_direct``).

A run closes its history and journal without checkpointing their WALs (no write of the
database file, no fsync at the end of the run): the next run reads the rows from the
kept WAL. A moved directory's rows move in SQL. What a user checks: the history after
a rename (local and over ssh) is the one a fresh sync of the source records, the next
rename is still one move, and a kill -9 at any moment of a run leaves a history the
next run trusts or rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from treeutil import assert_same_tree, hsync_bin

HOST = "127.0.0.1"


def run(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hsync_bin(), *(os.fspath(a) for a in args)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=180, check=False)


def make_tree(root: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(files):
            (root / f"d{d}" / f"f{i}").write_bytes(f"{d}/{i}\n".encode())


def rows(state: Path) -> list[tuple[Any, ...]]:
    """Every row the (only) pair of the history at ``state`` holds, in key order."""
    import sqlite3

    db = sqlite3.connect(state)
    try:
        ((pair,),) = db.execute("SELECT pair FROM pairs").fetchall()
        out = list(db.execute(
            "SELECT key, ident, kind, size, mtime, target, mode, fp FROM nodes WHERE pair=? "
            "ORDER BY key", (pair,)))
        (complete,) = db.execute("SELECT complete FROM pairs").fetchone()
    finally:
        db.close()
    assert complete == 1
    return out


def fresh_rows(src: Path, tmp: Path, name: str, far: bool = False) -> list[tuple[Any, ...]]:
    """The rows a first sync of ``src`` into an empty destination records."""
    state = tmp / f"{name}.sqlite"
    dst = f"{HOST}:{tmp / name}" if far else tmp / name
    r = run("sync", "--state", state, src, dst)
    assert r.returncode == 0, r.stderr
    return rows(state)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_rename_leaves_the_database_file_alone_and_the_next_run_reads_the_wal(
    tmp_path: Path,
) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    make_tree(src, 3, 200)
    assert run("sync", "--state", state, src, dst).returncode == 0
    main_file = digest(state)
    os.rename(src / "d1", src / "moved")
    r = run("sync", "--json", "--state", state, src, dst)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["move"] == 1
    # the rows of the move are in the WAL, kept: the database file was not written
    # (no checkpoint at close), and the WAL is still there for the next run
    assert digest(state) == main_file
    assert Path(f"{state}-wal").stat().st_size > 0
    assert rows(state) == fresh_rows(src, tmp_path, "fresh")
    # the next run reads the move from the kept WAL: one move again, nothing copied
    os.rename(src / "moved", src / "again")
    r = run("sync", "--json", "--state", state, src, dst)
    report = json.loads(r.stdout)
    assert report["counts"]["move"] == 1 and report["bytes_copied"] == 0
    assert_same_tree(src, dst)


def test_the_history_after_a_remote_rename_is_a_fresh_syncs(remote: Any, tmp_path: Path
                                                           ) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    make_tree(src, 3, 300)
    assert run("sync", "--state", state, src, f"{HOST}:{dst}").returncode == 0
    for old, new in (("d1", "renamed"), ("d2", "d1")):
        os.rename(src / old, src / new)
        r = run("sync", "--json", "--state", state, src, f"{HOST}:{dst}")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["counts"]["move"] == 1 and report["bytes_copied"] == 0
    assert_same_tree(src, dst)
    assert rows(state) == fresh_rows(src, tmp_path, "fresh", far=True)


def test_a_swap_of_two_directories_is_recorded_through_the_spare_name(tmp_path: Path
                                                                      ) -> None:
    """Two moves at once (not the single move's straight path): the rows still end up
    as a fresh sync records them."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    make_tree(src, 2, 50)
    assert run("sync", "--state", state, src, dst).returncode == 0
    os.rename(src / "d0", src / "t")
    os.rename(src / "d1", src / "d0")
    os.rename(src / "t", src / "d1")
    r = run("sync", "--json", "--state", state, src, dst)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_copied"] == 0
    assert_same_tree(src, dst)
    assert rows(state) == fresh_rows(src, tmp_path, "fresh")


def test_kill_9_at_any_moment_leaves_a_history_the_next_run_trusts_or_rebuilds(
    tmp_path: Path,
) -> None:
    rng = random.Random(14)
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    make_tree(src, 4, 150)
    assert run("sync", "--state", state, src, dst).returncode == 0
    os.rename(src / "d0", src / "x")
    t0 = time.perf_counter()
    assert run("sync", "--state", state, src, dst).returncode == 0
    took = time.perf_counter() - t0
    killed = 0
    for trial in range(6):
        names = sorted(p.name for p in src.iterdir())
        victim = rng.choice(names)
        os.rename(src / victim, src / f"r{trial}")
        proc = subprocess.Popen([hsync_bin(), "sync", "--state", str(state), str(src),
                                 str(dst)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.0, took))
        if proc.poll() is None:
            killed += 1
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # the history opens (whatever the kill left of its WAL), and is either still
        # trusted (then it holds nothing the destination does not) or rebuilt
        r = run("sync", "--state", state, src, dst)
        assert r.returncode == 0, r.stderr
        assert_same_tree(src, dst)
        assert rows(state) == fresh_rows(src, tmp_path, f"fresh{trial}")
    assert killed >= 2, f"only {killed} kills landed mid-run"
