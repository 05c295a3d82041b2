"""kill -9 at random moments of a large sync through the real ``hsync`` CLI (SPEC 5):
no torn file under a final name ever, no temporary file left once a run completes, and
the next run converges (``hsync diff`` exits 0)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import xxhash

HSYNC = str(Path(sys.executable).parent / "hsync")
TRIALS = 24
N_DIRS = 40
N_FILES = 2000
_HEAD = 5 + 8 + 16


def _content(rng: random.Random, size: int) -> bytes:
    """Self-validating: magic, body length, xxh3-128 of the body, body."""
    body = rng.randbytes(size)
    return b"HSYNC" + len(body).to_bytes(8, "big") + xxhash.xxh3_128(body).digest() + body


def _valid(data: bytes) -> bool:
    if len(data) < _HEAD or data[:5] != b"HSYNC":
        return False
    n = int.from_bytes(data[5:13], "big")
    body = data[_HEAD:]
    return len(body) == n and xxhash.xxh3_128(body).digest() == data[13:_HEAD]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _size(rng: random.Random) -> int:
    return rng.choice((0, 100, 2000, 9000, 30_000, 120_000, 600_000))


def _make(src: Path, rng: random.Random) -> None:
    for i in range(N_FILES):
        _write(src / f"d{i % N_DIRS:02d}" / f"s{i % 7}" / f"f{i:05d}", _content(rng, _size(rng)))


def _mutate(src: Path, rng: random.Random, trial: int) -> None:
    """Rewrite, add, delete files and rename a directory: the next run has work to do."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for p in rng.sample(files, len(files) // 5):
        _write(p, _content(rng, _size(rng)))
    for p in rng.sample(files, len(files) // 50):
        if p.exists():
            p.unlink()
    for i in range(60):
        _write(src / f"new{trial}" / f"n{i}", _content(rng, _size(rng)))
    dirs = sorted(p for p in src.iterdir() if p.is_dir())
    victim = rng.choice(dirs)
    victim.rename(src / f"{victim.name}-r{trial}")


def _check_destination(dst: Path, since_ns: int = 0) -> list[str]:
    """Every file under a final name (changed since ``since_ns``: a rename sets the
    ctime) is whole; returns the temporary files seen."""
    temps = []
    for d, _, files in os.walk(dst):
        for name in files:
            path = os.path.join(d, name)
            if name.startswith(".hsync-tmp-"):
                temps.append(path)
                continue
            if os.lstat(path).st_ctime_ns < since_ns:
                continue
            with open(path, "rb") as f:
                assert _valid(f.read()), f"torn file under a final name: {path}"
    return temps


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HSYNC, *args], capture_output=True, text=True, timeout=120)


def test_kill_9_at_random_moments_never_tears_a_file(tmp_path: Path) -> None:
    rng = random.Random(5)
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = str(tmp_path / "state" / "history.sqlite")
    _make(src, rng)

    # how long a full run and a run after one mutation take here, to spread the kills
    # over all of a run (with a history, as the trials run: a re-sync without one
    # compares in full and takes longer than theirs)
    scratch = tmp_path / "scratch"
    scratch_state = str(tmp_path / "scratch-state" / "history.sqlite")
    t0 = time.perf_counter()
    assert _run("sync", str(src), str(scratch), "--state", scratch_state).returncode == 0
    full = time.perf_counter() - t0
    _mutate(src, rng, 0)
    t0 = time.perf_counter()
    assert _run("sync", str(src), str(scratch), "--state", scratch_state).returncode == 0
    again = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", str(scratch), os.path.dirname(scratch_state)], check=True)

    killed_mid_run = 0
    for trial in range(TRIALS):
        if trial:
            _mutate(src, rng, trial)
        # spread over the whole run: the early trials copy everything, later ones less
        delay = rng.uniform(0.0, full if trial < 2 else again)
        started = time.time_ns() - 10**9  # coarse filesystem timestamps
        proc = subprocess.Popen(
            [HSYNC, "sync", str(src), str(dst), "--state", state],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        time.sleep(delay)
        if proc.poll() is None:
            killed_mid_run += 1
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.02)  # copy workers die with their parent (PR_SET_PDEATHSIG)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if dst.exists():
            _check_destination(dst, started)
    print(f"full run {full:.2f} s, a run after a mutation {again:.2f} s, "
          f"{killed_mid_run}/{TRIALS} kills landed mid-run")
    assert killed_mid_run >= TRIALS // 2, f"only {killed_mid_run} kills landed mid-run"

    # the journal saw batches begun and never done, and rolled them forward
    db = sqlite3.connect(state.replace("history.sqlite", "history.journal.sqlite"))
    states = [row[0] for row in db.execute("SELECT state FROM batches")]
    db.close()
    assert "rolled forward" in states, states

    done = _run("sync", str(src), str(dst), "--state", state)
    assert done.returncode == 0, done.stderr
    assert _check_destination(dst) == [], "temporary files left after a complete run"
    same = _run("diff", str(src), str(dst), "--state", state)
    assert same.returncode == 0, same.stdout + same.stderr
    # content too, not only size and mtime
    verified = _run("verify", str(src), str(dst), "--settle", "0")
    assert verified.returncode == 0, verified.stdout + verified.stderr
