"""Watch: a file being written is published once closed, or once quiet (``--settle``).

Real inotify, real files. A file modified and not yet closed never appears under its
name at the destination while its writer is mid-write (SPEC 5); it is copied once;
other changes beside it still go after the usual debounce / max_delay.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from test_watch import (  # noqa: F401  (no_leaks: an autouse fixture)
    _status,
    converge,
    no_leaks,
    running,
    spawned,
    wait_for,
    write,
)
from treeutil import hsync_bin

from hsync.daemon import load_config
from hsync.dirty import Dirty
from hsync.errors import UsageError
from hsync.region import Region

MB = 1 << 20


def _absent_or(path: Path, want: bytes) -> str | None:
    """None when ``path`` is absent or holds ``want``; else what was seen."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return None if data == want else f"{len(data)} of {len(want)} bytes"


def test_a_file_written_in_steps_is_published_once_after_its_close(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "other.txt", b"x")
    steps = [os.urandom(MB) for _ in range(10)]
    whole = b"".join(steps)
    seen: list[str] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            if (dst / "big.dat").exists():
                seen.append(_absent_or(dst / "big.dat", whole) or "complete")
            time.sleep(0.01)

    with running(src, dst, tmp_path, debounce=0.05, max_delay=0.5, settle=2) as (pw, rounds):
        converge(src, dst)
        before = len(rounds)
        copied = pw.status.bytes_copied
        t = threading.Thread(target=sampler)
        t.start()
        try:
            with open(src / "big.dat", "wb") as f:
                for chunk in steps:
                    f.write(chunk)
                    f.flush()
                    time.sleep(0.15)  # longer than debounce, shorter than settle
            assert not seen, f"published while open: {seen[:5]}"
            wait_for(lambda: (dst / "big.dat").exists(), timeout=5, what="big.dat published")
            converge(src, dst, timeout=5)
        finally:
            stop.set()
            t.join()
        assert (dst / "big.dat").read_bytes() == whole
        assert all(s == "complete" for s in seen), seen[:5]

        def big_ops() -> list[str]:
            return [op.op for r in rounds[before:] for op in r.done if op.key == ("big.dat",)]

        # the round that published it is listed once it has recorded its history (late,
        # on a loaded machine); then no second round may touch the file
        wait_for(lambda: bool(big_ops()), timeout=10, what="the publishing round listed")
        time.sleep(0.3)
        assert big_ops() == ["create"]
        assert len(whole) <= pw.status.bytes_copied - copied < 1.5 * len(whole)


def test_an_open_log_is_published_after_settle_seconds_of_quiet(tmp_path: Path) -> None:
    """Through the command: ``hsync watch --settle 1``."""
    src, dst, status = tmp_path / "src", tmp_path / "dst", tmp_path / "status.json"
    write(src / "a.txt", b"a")
    with spawned([hsync_bin(), "watch", str(src), str(dst), "--debounce", "50",
                  "--max-delay", "300", "--settle", "1", "--status-file", str(status)]):
        wait_for(lambda: _status(status).get("pairs", [{}])[0].get("rounds", 0) >= 1,
                 what="the first round")
        converge(src, dst)
        with open(src / "app.log", "wb") as f:
            f.write(b"started\n")
            f.flush()
            t0 = time.monotonic()
            time.sleep(0.6)  # past debounce and max_delay, not settle
            assert not (dst / "app.log").exists(), "an open file published before settle"
            wait_for(lambda: (dst / "app.log").exists(), timeout=5, what="the log published")
            took = time.monotonic() - t0
            assert (dst / "app.log").read_bytes() == b"started\n"
            assert 0.9 <= took < 4, took


def test_other_changes_beside_a_file_being_written_go_as_usual(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "d" / "keep.txt", b"k")
    with running(src, dst, tmp_path, debounce=0.05, max_delay=0.3, settle=3) as (_pw, _r):
        converge(src, dst)
        with open(src / "d" / "slow.dat", "wb") as f:
            f.write(os.urandom(100_000))
            f.flush()
            deadline = time.monotonic() + 2.5
            t0 = time.monotonic()
            write(src / "d" / "small.txt", b"small")  # created and closed
            arrived: float | None = None
            while time.monotonic() < deadline:
                f.write(os.urandom(10_000))  # keeps the slow file busy
                f.flush()
                if arrived is None and (dst / "d" / "small.txt").exists():
                    arrived = time.monotonic() - t0
                assert not (dst / "d" / "slow.dat").exists(), "published while open"
                time.sleep(0.1)
            assert arrived is not None and arrived < 1.0, arrived
            assert (dst / "d" / "small.txt").read_bytes() == b"small"
        converge(src, dst, timeout=5)


def test_the_sink_holds_back_keys_being_written_and_what_lists_them() -> None:
    d = Dirty(settle=0.3)
    d.dirty(("new",), deep=True)  # a directory created ...
    d.dirty(("new", "f"), deep=True)  # ... a file in it, still being written
    d.dirty(("new", "f"), deep=False, writing=True)
    t_log = time.monotonic()
    d.dirty(("log",), deep=False, writing=True)
    d.dirty(("small",), deep=True)
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([("small",)])  # the deep ("new",) would list the file
    d.wait(0.0, 0.0, time.monotonic() + 0.1)  # nothing ready: returns at ``until``
    d.dirty(("new", "f"), deep=False)  # closed after the write
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([("new",)])
    d.wait(0.0, 0.0, time.monotonic() + 5)  # the log settles
    assert 0.3 <= time.monotonic() - t_log < 1.5
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([], [("log",)])
    # a full comparison is never held back; a key written meanwhile stays pending
    d.dirty(("log",), deep=False, writing=True)
    d.lost("overflow")
    region, _first, _quick = d.take(allow_full=True)
    assert region.full and d.pending() == 1


def test_a_daemon_pair_takes_settle_s(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    config = tmp_path / "hsync.toml"
    config.write_text('[[pair]]\nsource = "s"\ndestination = "d"\nsettle_s = 0.5\n')
    assert load_config(str(config)).pairs[0].wopts.settle == 0.5
    config.write_text('[[pair]]\nsource = "s"\ndestination = "d"\nsettle_s = -1\n')
    with pytest.raises(UsageError, match="settle_s"):
        load_config(str(config))


def test_a_closed_file_needs_no_long_debounce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file closed after its write is complete: it goes after ``close_quiet``, not after
    the debounce (30 s here), while a create that is never written and closed still
    waits for the debounce (it may be the start of a burst)."""
    import hsync.live

    # the loop also wakes up every second to check the source root (and then takes what
    # is pending): out of the way, so only the debounce rules decide
    monkeypatch.setattr(hsync.live, "ROOT_POLL", 60.0)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "d" / "old.txt", b"x")
    with running(src, dst, tmp_path, debounce=30, max_delay=60):
        converge(src, dst)
        (src / "d" / "new.txt").write_bytes(b"complete")  # open, write, close
        wait_for(lambda: (dst / "d" / "new.txt").exists(), timeout=10, what="the closed file")
        assert (dst / "d" / "new.txt").read_bytes() == b"complete"
        os.mkdir(src / "e")  # not a write: the debounce holds it
        time.sleep(1)
        assert not (dst / "e").exists()


def test_a_close_shortens_the_quiet_period_until_a_create_or_delete_comes() -> None:
    d = Dirty(close_quiet=0.01)
    d.dirty(("f",), deep=True)
    d.dirty(("f",), deep=False, writing=True)
    d.dirty(("f",), deep=False)  # closed after the write
    d.dirty((), deep=False)  # its directory's mtime (watchdog sends one after a close)
    t0 = time.monotonic()
    d.wait(30.0, 60.0, t0 + 5)
    assert time.monotonic() - t0 < 4, "the close did not end the debounce"
    region, _first, _quick = d.take(allow_full=False)
    assert region == Region.of([("f",)], [()])
    # a burst: after a close, the next file's create brings the debounce back
    d.dirty(("g",), deep=False, writing=True)
    d.dirty(("g",), deep=False)
    d.dirty(("h",), deep=True)
    t0 = time.monotonic()
    d.wait(30.0, 60.0, t0 + 0.5)
    assert time.monotonic() - t0 >= 0.5, "a create after a close was not debounced"
