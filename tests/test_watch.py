"""Live sync: real inotify through watchdog, real files, the real loop (SPEC 6, 7)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treeutil import alive, assert_same_tree, build, hsync_bin, reuse_inode

from hsync.live import Dirty, PairWatch, RoundResult, StatusFile, WatchOptions
from hsync.oneshot import compare
from hsync.options import Options
from hsync.region import Region

# -- leak checks: every test here must end with no thread and no inotify watch left -------


def _inotify_watches() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                n += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return n


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    threads = set(threading.enumerate())
    watches = _inotify_watches()
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not extra and _inotify_watches() <= watches:
            break
        time.sleep(0.05)
    extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    assert not extra, f"threads leaked: {extra}"
    assert _inotify_watches() <= watches, "inotify watches leaked"


# -- helpers ---------------------------------------------------------------------------------


def in_sync(src: Path, dst: Path) -> bool:
    cmp = compare(str(src), str(dst), Options(dry_run=True, state="", allow_empty_source=True))
    return not cmp.plan.ops and not cmp.src.incomplete


def converge(src: Path, dst: Path, timeout: float = 10.0) -> float:
    """Seconds until ``dst`` equals ``src`` (fails after ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if dst.exists() and in_sync(src, dst):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{dst} did not converge to {src} within {timeout} s")


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def running(
    src: Path,
    dst: Path,
    tmp_path: Path,
    *,
    on_compared: Callable[[Region], None] | None = None,
    exclude: tuple[str, ...] = (),
    **wopts: Any,
) -> Iterator[tuple[PairWatch, list[RoundResult]]]:
    rounds: list[RoundResult] = []
    params = {"debounce": 0.05, "max_delay": 0.5, "poll_interval": 0.5, **wopts}
    pw = PairWatch(
        str(src), str(dst), Options(state=str(tmp_path / "history.sqlite"), exclude=exclude),
        WatchOptions(**params), status=StatusFile(str(tmp_path / "status.json")),
        on_round=rounds.append, on_compared=on_compared,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pw.run()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, name="test-pair")
    t.start()
    try:
        wait_for(lambda: len(rounds) >= 1 or bool(errors), what="the first round")
        assert not errors, errors
        yield pw, rounds
    finally:
        pw.stop()
        t.join(10)
        assert not t.is_alive(), "the loop did not stop"
    assert not errors, errors


@contextmanager
def spawned(cmd: list[str], **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``hsync`` process, killed if the test leaves it running."""
    # a watch logs every applied op: a test that does not read stderr discards it,
    # or a full pipe would stall the process
    kw.setdefault("stderr", subprocess.PIPE)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, **kw)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def ino(path: Path) -> int:
    return os.lstat(path).st_ino


# -- tests -------------------------------------------------------------------------------------


def test_region_normalises_and_knows_what_it_touches() -> None:
    r = Region.of(deep=[("a",), ("a", "b"), ("c", "d")], shallow=[("a", "x"), ("c",), ()])
    assert r.deep == {("a",), ("c", "d")}
    assert r.shallow == {("c",), ()}
    assert r.touches(("a", "b", "c"))  # below a deep key
    assert r.touches(("c",))  # an ancestor of a deep key
    assert r.touches(())  # the root is an ancestor of everything
    assert not r.touches(("c", "e"))  # a sibling of a deep key
    assert not r.touches(("b",))


_keys = st.lists(st.sampled_from("abc"), min_size=0, max_size=4).map(tuple)


@settings(max_examples=200, deadline=None)
@given(deep=st.lists(_keys, max_size=8), shallow=st.lists(_keys, max_size=8), probe=_keys)
def test_the_sink_decides_staleness_as_the_region_does(
    deep: list[tuple[str, ...]], shallow: list[tuple[str, ...]], probe: tuple[str, ...]
) -> None:
    region = Region.of(deep, shallow)
    sink = Dirty()
    sink.begin(region)
    if region.full:
        assert sink.inflight is None  # full comparisons are never restarted
    else:
        assert sink._touches(probe) == region.touches(probe)


def test_bursts_of_changes_converge_and_moves_stay_renames(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(20):
        write(src / f"d{i % 4}" / f"f{i}.txt", f"file {i}\n".encode() * (i + 1))
    write(src / "big" / "blob.bin", os.urandom(2 << 20))
    write(src / "a.txt", b"A")
    write(src / "b.txt", b"B")
    with running(src, dst, tmp_path) as (pw, rounds):
        converge(src, dst)
        big_ino = ino(dst / "big" / "blob.bin")
        copied = pw.status.bytes_copied
        # a burst: creates, modifies, a file move, a directory move, a swap, deletes
        for i in range(30):
            write(src / "new" / f"n{i}" / "deep" / f"x{i}.txt", b"x" * i)
        (src / "d0" / "f0.txt").write_bytes(b"changed")
        os.rename(src / "d1" / "f1.txt", src / "d2" / "moved.txt")
        os.rename(src / "big", src / "bigger")
        os.rename(src / "a.txt", src / "tmp.txt")
        os.rename(src / "b.txt", src / "a.txt")
        os.rename(src / "tmp.txt", src / "b.txt")
        for p in (src / "d3").iterdir():
            p.unlink()
        (src / "d3").rmdir()
        converge(src, dst)
    # (the loop has stopped: its counters are final)
    # the 2 MiB blob moved with its directory: renamed, never copied again
    assert ino(dst / "bigger" / "blob.bin") == big_ino
    assert pw.status.bytes_copied - copied < 1 << 20
    assert (dst / "a.txt").read_bytes() == b"B" and (dst / "b.txt").read_bytes() == b"A"
    assert pw.status.counts["move"] >= 2
    assert not any(r.full for r in rounds[1:]), "incremental rounds only after the first"
    assert_same_tree(src, dst)
    # the CLI agrees
    out = subprocess.run([hsync_bin(), "diff", str(src), str(dst)], capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _payload(n: int, seq: int) -> bytes:
    body = f"{seq}:".encode() + os.urandom(n)
    return len(body).to_bytes(8, "big") + hashlib.sha256(body).digest() + body


def _valid(data: bytes) -> bool:
    if len(data) < 40:
        return False
    n = int.from_bytes(data[:8], "big")
    body = data[40:]
    return len(body) == n and hashlib.sha256(body).digest() == data[8:40]


def test_a_changing_source_never_shows_a_torn_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    names = [Path(f"d{i % 5}") / f"v{i}.dat" for i in range(40)]
    for i, rel in enumerate(names):
        write(src / rel, _payload(1000 + i * 500, 0))
    stop = threading.Event()
    torn: list[str] = []
    seen = [0]

    def mutator() -> None:
        rng = random.Random(7)
        seq = 0
        while not stop.is_set():
            seq += 1
            rel = rng.choice(names)
            tmp = src / rel.parent / f".w{seq}"
            tmp.write_bytes(_payload(rng.randint(100, 300_000), seq))
            os.replace(tmp, src / rel)  # the source is never torn: writes are atomic
            # and a file rewritten in place, to make copies see a changing source
            with open(src / "log.txt", "ab") as f:
                f.write(b"x" * rng.randint(1, 5000))
            if seq % 50 == 0:
                d = src / f"d{rng.randint(0, 4)}"
                os.rename(d, src / "moving")
                os.rename(src / "moving", d)
            time.sleep(rng.random() * 0.004)

    def sampler() -> None:
        while not stop.is_set():
            for rel in names:
                try:
                    data = (dst / rel).read_bytes()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    continue
                seen[0] += 1
                if not _valid(data):
                    torn.append(str(rel))

    with running(src, dst, tmp_path) as (_pw, _rounds):
        threads = [threading.Thread(target=mutator), threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        time.sleep(10)
        stop.set()
        for t in threads:
            t.join()
        took = converge(src, dst, timeout=5)
    assert not torn, f"torn files seen in the destination: {torn[:5]}"
    assert seen[0] > 1000, "the sampler read too little to prove anything"
    assert took < 5
    assert_same_tree(src, dst)


def test_a_comparison_made_stale_is_restarted_and_never_applied(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "a" / "keep.txt", b"keep")
    paused = threading.Event()
    release = threading.Event()

    def pause(region: Region) -> None:
        if ("a", "old.txt") in region.deep and not release.is_set():
            paused.set()
            release.wait(10)

    with running(src, dst, tmp_path, on_compared=pause) as (pw, rounds):
        converge(src, dst)
        write(src / "a" / "old.txt", b"old content")
        wait_for(paused.is_set, what="the differ to pause inside a/")
        # the subtree changes while its comparison is paused
        os.rename(src / "a" / "old.txt", src / "a" / "new.txt")
        wait_for(lambda: pw.dirty.stale, what="the change to mark the comparison stale")
        release.set()
        converge(src, dst)
        assert pw.status.restarts == 1
    applied = [op for r in rounds for op in r.done]
    assert all(("a", "old.txt") not in (op.key, op.to) for op in applied), applied
    assert any(op.key == ("a", "new.txt") and op.op == "create" for op in applied)
    assert not (dst / "a" / "old.txt").exists()
    assert (dst / "a" / "new.txt").read_bytes() == b"old content"


def test_queue_overflow_leads_to_one_full_comparison(tmp_path: Path) -> None:
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "x" / "f.txt", b"f")
    with running(src, dst, tmp_path) as (pw, _rounds):
        converge(src, dst)
        fulls, quicks = pw.status.full_comparisons, pw.status.quick_passes
        # the kernel drops the events of a change (what an overflow means) ...
        sink = pw.dirty
        sink.dirty = lambda *a, **k: None  # type: ignore[method-assign]
        write(src / "x" / "lost.txt", b"no event reached hsync for this")
        (src / "x" / "f.txt").write_bytes(b"changed, unseen")
        time.sleep(0.5)
        del sink.dirty  # back to the class's method
        assert not (dst / "x" / "lost.txt").exists()
        # ... and then says so: one pass over the whole source (stat-only against the
        # history), not a comparison of both trees
        fd = pw.watcher.observer._inotify_fd
        fd.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
        converge(src, dst)
        time.sleep(1.0)  # no reset loop: exactly one more pass
        assert (pw.status.quick_passes, pw.status.full_comparisons) == (quicks + 1, fulls)


def test_directories_that_cannot_be_watched_are_polled(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "f.txt", b"f")
    with running(src, dst, tmp_path, poll_interval=0.5) as (pw, _rounds):
        converge(src, dst)
        fd = pw.watcher.observer._inotify_fd
        real = fd.add_callback

        def limited(path: bytes, *args: Any) -> Any:
            if b"nowatch" in path:
                raise OSError(errno.ENOSPC, "inotify watch limit reached")
            return real(path, *args)

        fd.add_callback = limited  # the watch limit, reached for new directories
        (src / "nowatch").mkdir()
        wait_for(lambda: ("nowatch",) in pw.dirty.unwatched_keys, what="the unwatched report")
        converge(src, dst)
        # no notification comes from inside: polling finds it
        write(src / "nowatch" / "inner.txt", b"inner")
        converge(src, dst, timeout=5)
        assert "nowatch" in json.loads((tmp_path / "status.json").read_text())["pairs"][0][
            "unwatched"
        ]


def test_a_vanished_source_root_never_deletes_and_resumes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(10):
        write(src / f"f{i}.txt", b"data")
    with running(src, dst, tmp_path) as (pw, _rounds):
        converge(src, dst)
        os.rename(src, tmp_path / "away")
        time.sleep(1.5)
        assert len(list(dst.iterdir())) == 10, "the destination lost files"
        assert pw.status.state in ("waiting", "error")
        # an empty directory where the root was (a mount point) is not a reason either
        src.mkdir()
        time.sleep(2.5)
        assert len(list(dst.iterdir())) == 10, "an empty source root emptied the destination"
        assert pw.status.last_error and "empty" in pw.status.last_error
        src.rmdir()
        os.rename(tmp_path / "away", src)
        write(src / "after.txt", b"back")
        converge(src, dst, timeout=15)


def test_a_restarted_watch_finds_moves_made_while_it_was_down(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "photos" / "a.jpg", os.urandom(1 << 20))
    with running(src, dst, tmp_path):
        converge(src, dst)
    before = ino(dst / "photos" / "a.jpg")
    os.rename(src / "photos", src / "pictures")
    with running(src, dst, tmp_path) as (pw, rounds):
        converge(src, dst)
    assert rounds[0].full
    # what the status file says: one quick pass, no comparison of both trees
    assert (pw.status.quick_passes, pw.status.full_comparisons) == (1, 0)
    assert pw.status.to_json()["quick_passes"] == 1
    # the stat-only pass against the history found the two places, nothing else
    # (a directory renamed with nothing changed below it: folded, one node each side)
    assert rounds[0].region == Region.of(
        [("photos",), ("pictures",)], [()], [(("pictures",), ("photos",))]
    )
    # one rename (and the root's new mtime), nothing copied again
    assert sorted(op.op for op in rounds[0].done) == ["move", "update"]
    assert [op.key for op in rounds[0].done if op.op == "update"] == [()]
    assert pw.status.bytes_copied == 0
    assert ino(dst / "pictures" / "a.jpg") == before


def _moved_round(rounds: list[RoundResult]) -> RoundResult:
    (r,) = [r for r in rounds if any(op.op == "move" for op in r.done)]
    return r


def test_a_directory_renamed_under_the_watch_is_one_move_compared_as_one_node(
    tmp_path: Path,
) -> None:
    """``mv big renamed`` while the watch runs: the round compares the directory as one
    node on each side (folded: neither subtree is scanned), renames it on the
    destination, and the history follows its files (a second rename folds again)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(200):
        write(src / "big" / f"f{i:03d}", b"%d" % i)
    write(src / "big" / "sub" / "deep", b"deep")
    write(src / "other", b"o")
    with running(src, dst, tmp_path) as (pw, rounds):
        converge(src, dst)
        before = ino(dst / "big" / "sub" / "deep")
        copied = pw.status.bytes_copied
        for old, new in (("big", "renamed"), ("renamed", "again")):
            del rounds[:]
            os.rename(src / old, src / new)
            converge(src, dst)
            wait_for(lambda: any(r.done for r in rounds), what="the rename's round")
            r = _moved_round(rounds)
            assert r.region.folded == (((new,), (old,)),)
            assert sorted(op.op for op in r.done) == ["move", "update"]
            assert ino(dst / new / "sub" / "deep") == before
    assert pw.status.bytes_copied == copied
    # the history knows every file at its new key: a fresh comparison finds nothing
    assert compare(str(src), str(dst), Options(state=str(tmp_path / "history.sqlite"))
                   ).plan.ops == ()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_directory_renamed_and_changed_inside_is_compared_whole(
    tmp_path: Path, when: str
) -> None:
    """A file rewritten below a directory just before the directory is renamed: the
    round cannot take the directory as one node, it compares both subtrees and copies
    the new content. Just after: the rename may go first, folded (it is ready at once),
    and the write in the next round; the content arrives either way (that a report
    below a folded pair unfolds it is test_watch_latency's)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(20):
        write(src / "big" / f"f{i:02d}", b"old %d" % i)
    with running(src, dst, tmp_path, debounce=0.5, max_delay=5.0) as (_pw, rounds):
        converge(src, dst)
        del rounds[:]
        if when == "before":
            write(src / "big" / "f07", b"new content")
            os.rename(src / "big", src / "renamed")
        else:
            os.rename(src / "big", src / "renamed")
            write(src / "renamed" / "f07", b"new content")
        converge(src, dst)
        assert (dst / "renamed" / "f07").read_bytes() == b"new content"
        if when == "before":
            assert all(r.region.folded == () for r in rounds)


def test_a_renamed_directory_is_compared_whole_where_excludes_depend_on_the_path(
    tmp_path: Path,
) -> None:
    """``--exclude big/skip.txt``: the file was never copied; once ``big`` is renamed it
    is no longer excluded, so the round must look inside the directory and copy it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "big" / "keep.txt", b"k")
    write(src / "big" / "skip.txt", b"s")
    with running(src, dst, tmp_path, exclude=("big/skip.txt",)) as (_pw, rounds):
        wait_for(lambda: (dst / "big" / "keep.txt").exists(), what="the first copy")
        assert not (dst / "big" / "skip.txt").exists()
        del rounds[:]
        os.rename(src / "big", src / "renamed")
        wait_for(lambda: (dst / "renamed" / "skip.txt").exists(), what="the copy of skip.txt")
        assert (dst / "renamed" / "keep.txt").read_bytes() == b"k"
        assert all(r.region.folded == () for r in rounds)


def test_a_renamed_directory_with_a_failed_op_waiting_for_its_retry_is_compared_whole(
    tmp_path: Path,
) -> None:
    """A file below ``big`` failed to update (its destination copy was immutable) and
    waits for its retry when ``big`` is renamed: the destination's directory is not
    what the history says below, so the rename's round compares it whole and copies
    the file's new content, instead of renaming the stale copy."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(20):
        write(src / "big" / f"f{i:02d}", b"old %d" % i)
    with running(src, dst, tmp_path) as (_pw, rounds):
        converge(src, dst)
        made = subprocess.run(["chattr", "+i", str(dst / "big" / "f07")],
                              capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {made.stderr.strip()}")
        try:
            del rounds[:]
            write(src / "big" / "f07", b"new content")
            wait_for(lambda: any(r.problems for r in rounds), what="the failed update")
        finally:
            subprocess.run(["chattr", "-i", str(dst / "big" / "f07")], check=True)
        os.rename(src / "big", src / "renamed")  # before the retry (a second later)
        wait_for(lambda: (dst / "renamed" / "f07").exists()
                 and (dst / "renamed" / "f07").read_bytes() == b"new content",
                 what="the new content under the new name")
        converge(src, dst)


def test_periodic_rescan_repairs_drift_made_by_others(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "f.txt", b"f")
    with running(src, dst, tmp_path, rescan_interval=0.5) as (_pw, _rounds):
        converge(src, dst)
        (dst / "f.txt").write_bytes(b"tampered")
        converge(src, dst, timeout=5)


def test_a_symlink_touch_a_fifo_and_a_device_alone_are_synced(tmp_path: Path) -> None:
    """Attribute events and special files: a ``touch -h`` of a symlink, a FIFO made or
    chmodded, a device node made (root) are synced by the watch, at once (never held
    back as a file being written: ``settle`` is long here)."""
    import stat

    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "f", b"f")
    os.symlink("f", src / "link")
    t = 1_500_000_000_123_456_789
    with running(src, dst, tmp_path, settle=60) as (_pw, _rounds):
        converge(src, dst)
        os.utime(src / "link", ns=(t, t), follow_symlinks=False)
        wait_for(lambda: os.lstat(dst / "link").st_mtime_ns == t, what="the symlink's mtime")
        os.mkfifo(src / "pipe", 0o644)
        wait_for(lambda: os.path.lexists(dst / "pipe"), what="the FIFO")
        assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)
        os.chmod(src / "pipe", 0o600)
        wait_for(lambda: stat.S_IMODE(os.lstat(dst / "pipe").st_mode) == 0o600,
                 what="the FIFO's mode")
        if os.geteuid() == 0:
            os.mknod(src / "zero", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
            wait_for(lambda: os.path.lexists(dst / "zero"), what="the device node")
            assert os.lstat(dst / "zero").st_rdev == os.makedev(1, 5)
        converge(src, dst)
    assert_same_tree(src, dst)


def test_excluded_paths_are_neither_synced_nor_deleted(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "keep.txt", b"k")
    write(dst / "cache" / "local.bin", b"mine")
    pw = PairWatch(
        str(src), str(dst), Options(state="", exclude=("cache/", "*.tmp")),
        WatchOptions(debounce=0.05),
    )
    t = threading.Thread(target=pw.run)
    t.start()
    try:
        wait_for(lambda: (dst / "keep.txt").exists(), what="the first round")
        write(src / "junk.tmp", b"j")
        write(src / "cache" / "x", b"x")
        write(src / "real.txt", b"r")
        wait_for(lambda: (dst / "real.txt").exists(), what="real.txt")
        time.sleep(0.3)
        assert not (dst / "junk.tmp").exists()
        assert not (dst / "cache" / "x").exists()
        assert (dst / "cache" / "local.bin").read_bytes() == b"mine"
    finally:
        pw.stop()
        t.join(10)


# -- the command line -------------------------------------------------------------------------


def _status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_cli_watch_status_and_sigterm(tmp_path: Path) -> None:
    src, dst, status = tmp_path / "src", tmp_path / "dst", tmp_path / "status.json"
    write(src / "a" / "f.txt", b"hello")
    with spawned([hsync_bin(), "watch", str(src), str(dst), "--debounce", "20",
                  "--status-file", str(status), "--log-format", "json"]) as p:
        wait_for(lambda: _status(status).get("pairs", [{}])[0].get("rounds", 0) >= 1,
                 what="the first round")
        write(src / "a" / "g.txt", b"new")
        converge(src, dst)
        out = subprocess.run(
            [hsync_bin(), "status", "--status-file", str(status)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "running" in out.stdout and "idle" in out.stdout
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        code = p.wait(10)
        assert time.monotonic() - t0 < 5
        assert code == 0
    err = p.stderr.read().decode() if p.stderr else ""
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any("round" in line["message"] for line in lines)
    doc = _status(status)
    assert doc["pairs"][0]["state"] == "stopped"
    # the process is gone: status says so, exit 1
    out = subprocess.run([hsync_bin(), "status", "--status-file", str(status)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "NOT RUNNING" in out.stdout


def test_cli_watch_refuses_a_missing_source(tmp_path: Path) -> None:
    out = subprocess.run(
        [hsync_bin(), "watch", str(tmp_path / "nope"), str(tmp_path / "dst")],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "nope" in out.stderr and "Traceback" not in out.stderr


def test_daemon_runs_pairs_and_reloads_on_sighup(tmp_path: Path) -> None:
    pairs = {n: (tmp_path / f"src{n}", tmp_path / f"dst{n}") for n in "abc"}
    for n, (s, _d) in pairs.items():
        write(s / f"{n}.txt", n.encode())
    status = tmp_path / "status.json"
    config = tmp_path / "hsync.toml"

    def conf(names: str) -> str:
        text = f'status_file = "{status}"\n[defaults]\ndebounce_ms = 20\n'
        text += f'state = "{tmp_path / "history.sqlite"}"\n'
        for n in names:
            s, d = pairs[n]
            text += f'[[pair]]\nname = "{n}"\nsource = "{s}"\ndestination = "{d}"\n'
        return text

    config.write_text(conf("ab"))
    with spawned([hsync_bin(), "daemon", "--config", str(config)]) as p:
        converge(*pairs["a"])
        converge(*pairs["b"])
        assert not pairs["c"][1].exists()
        config.write_text(conf("bc"))
        p.send_signal(signal.SIGHUP)
        converge(*pairs["c"])
        wait_for(lambda: sorted(x["name"] for x in _status(status).get("pairs", [])) == ["b", "c"],
                 what="the status file to list the reloaded pairs")
        write(pairs["a"][0] / "late.txt", b"a is no longer synced")
        write(pairs["b"][0] / "late.txt", b"b still is")
        converge(*pairs["b"])
        time.sleep(0.3)
        assert not (pairs["a"][1] / "late.txt").exists()
        # a broken config on SIGHUP keeps the running pairs
        config.write_text("this is not toml [")
        p.send_signal(signal.SIGHUP)
        write(pairs["c"][0] / "still.txt", b"c")
        converge(*pairs["c"])
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    err = p.stderr.read().decode() if p.stderr else ""
    assert "reload refused" in err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[pair]]\nsource = 'a'\n", "destination is missing"),
        ("[[pair]]\nsource = 'a'\ndestination = 'b'\ndebouce_ms = 3\n", "unknown key 'debouce_ms'"),
        ("[[pair]]\nsource = 'a'\ndestination = 'b'\ndelete = 'yes'\n", "delete must be a boolean"),
        ("nonsense = [", "not valid TOML"),
        ("", "no [[pair]]"),
    ],
)
def test_daemon_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "hsync.toml"
    config.write_text(text)
    out = subprocess.run([hsync_bin(), "daemon", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert needle in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_the_example_config_is_valid_and_paths_are_relative_to_it() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "hsync.toml"
    out = subprocess.run([hsync_bin(), "daemon", "--config", str(example), "--check"],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    assert str(example.parent / "source") in out.stdout


def test_a_restart_over_an_emptied_source_deletes_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(5):
        write(src / f"d{i}" / "f.txt", b"data")
    with running(src, dst, tmp_path):
        converge(src, dst)
    for d in list(src.iterdir()):  # emptied while nothing watched (an unmounted volume)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    rounds: list[RoundResult] = []
    pw = PairWatch(str(src), str(dst), Options(state=str(tmp_path / "history.sqlite")),
                   WatchOptions(debounce=0.05), on_round=rounds.append)
    t = threading.Thread(target=pw.run)
    t.start()
    try:
        wait_for(lambda: pw.status.state == "error", what="the refusal")
        assert "empty" in (pw.status.last_error or "")
        time.sleep(0.5)
        assert len(list(dst.iterdir())) == 5 and not rounds
    finally:
        pw.stop()
        t.join(10)


def test_the_initial_copy_into_an_empty_destination_streams_in_batches(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(60):
        write(src / f"t{i % 3}" / f"m{i % 7}" / f"f{i}.txt", f"{i}".encode() * i)
    os.symlink("t0/m0", src / "link")
    os.chmod(src / "t1" / "m1", 0o555)  # read-only: its children still arrive
    for i, d in enumerate(sorted(p for p in src.rglob("*") if p.is_dir())):
        os.utime(d, ns=(10**18 + i, 10**18 + i))
    # batches of 5 ops: directories get children over several batches
    with running(src, dst, tmp_path, batch_ops=1) as (pw, rounds):
        assert rounds[0].full, rounds[0]
        assert not rounds[0].problems, rounds[0].problems
        assert pw.status.counts["create"] == 60 + 3 + 21 + 1 + 1, pw.status.to_json()
        assert_same_tree(src, dst)
    os.chmod(src / "t1" / "m1", 0o755)
    os.chmod(dst / "t1" / "m1", 0o755)


def test_the_watch_s_first_pass_copies_a_tree_as_sync_does_in_one_streamed_batch(
    tmp_path: Path,
) -> None:
    # (session 21's, branch ic2) a tree of more nodes than ``batch_ops`` (1,000): ``sync``
    # streams the walk into one batch (copies start before the walk ends, one flush);
    # the watch's first pass used to cut it into a batch (and a flush) per ``batch_ops``
    from hsync import diff
    from hsync.journal import Journal

    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(1200):
        write(src / f"d{i % 20:02d}" / f"s{i % 3}" / f"f{i}.bin", os.urandom(i % 3000))
    nodes = sum(1 for _ in src.rglob("*"))
    assert nodes > WatchOptions().batch_ops
    with running(src, dst, tmp_path) as (pw, rounds):
        assert rounds[0].full and not rounds[0].problems, rounds[0]
        assert pw.status.counts["create"] == nodes + 1  # and the root
        assert_same_tree(src, dst)
    state = tmp_path / "history.sqlite"
    assert diff(str(src), str(dst), state=str(state)).to_json() == []  # the history is whole
    db = sqlite3.connect(tmp_path / "history.journal.sqlite")
    try:
        (pair,) = db.execute("SELECT DISTINCT pair FROM batches").fetchone()
    finally:
        db.close()
    journal = Journal(str(tmp_path / "history.journal.sqlite"), str(pair))
    try:
        assert journal.batches() == [(1, "done", nodes + 1)]  # one batch: one flush
    finally:
        journal.close()


def test_sigterm_during_the_initial_copy_stops_within_5s_and_a_restart_finishes(
    tmp_path: Path,
) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    for i in range(4000):
        write(src / f"d{i % 40}" / f"f{i}.bin", os.urandom(2000))
    cmd = [hsync_bin(), "watch", str(src), str(dst), "--state", str(state)]
    with spawned(cmd, stderr=subprocess.DEVNULL) as p:
        wait_for(lambda: dst.exists() and any(dst.iterdir()), what="the copy to start")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert time.monotonic() - t0 < 5
    # nothing torn, no temporary file left behind under a final name
    leftovers = [q for q in dst.rglob(".hsync-tmp-*")]
    assert not leftovers
    with spawned(cmd, stderr=subprocess.DEVNULL) as p:
        converge(src, dst, timeout=60)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_a_watch_killed_mid_copy_leaves_nothing_torn_and_a_restart_converges(
    tmp_path: Path,
) -> None:
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    for i in range(3000):
        write(src / f"d{i % 30}" / f"f{i}.bin", os.urandom(3000 + i))
    cmd = [hsync_bin(), "watch", str(src), str(dst), "--state", str(state)]
    with spawned(cmd, stderr=subprocess.DEVNULL) as p:
        wait_for(lambda: dst.exists() and sum(1 for _ in dst.rglob("*.bin")) > 300,
                 what="the copy to be under way")
        p.kill()  # SIGKILL: no batch finishes, no history is flushed
        p.wait()
    for f in dst.rglob("*.bin"):  # whatever is under a final name is whole
        assert f.read_bytes() == (src / f.relative_to(dst)).read_bytes(), f
    status = tmp_path / "status.json"

    def idle() -> bool:  # the restarted watch is up and its first round is done
        with contextlib.suppress(OSError, ValueError, LookupError):
            return bool(json.loads(status.read_text())["pairs"][0]["state"] == "idle")
        return False

    with spawned([*cmd, "--status-file", str(status)], stderr=subprocess.DEVNULL) as p:
        converge(src, dst, timeout=60)
        # (the first watch may have copied everything before its kill: the tree can be
        # equal before the restarted one has even set its signal handlers)
        wait_for(idle, timeout=60, what="the restarted watch to finish its first round")
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    assert not list(dst.rglob(".hsync-tmp-*"))
    assert_same_tree(src, dst)


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (its children, theirs, ...), as /proc lists them."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = {int(c) for c in f.read().split()}
            except OSError:
                continue
            todo += kids - out
            out |= kids
    return out


@contextmanager
def watch_logging(cmd: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """``spawned(cmd)`` with its log read into a list of lines as it comes."""
    lines: list[str] = []
    with spawned(cmd) as p:
        assert p.stderr is not None
        err = p.stderr
        reader = threading.Thread(
            target=lambda: lines.extend(iter(lambda: err.readline().decode(), "")),
            name="test-log-reader",
        )
        reader.start()
        try:
            yield p, lines
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            reader.join(10)


def test_a_watch_copies_many_small_files_on_worker_processes_that_end_after_the_first_pass(
    tmp_path: Path,
) -> None:
    """Issue 15 item 5: a watch's initial copy ran its copies on threads (its observer's
    thread runs, so it could not fork), several times slower than the one-shot's forked
    workers. Now its first pass copies on worker processes, forked before any thread,
    which end once that pass is done; the watch then goes on as before."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    for i in range(3000):
        write(src / f"d{i % 30}" / f"e{i % 7}" / f"f{i}.txt", f"{i}\n".encode() * (i % 50))
    cmd = [hsync_bin(), "watch", str(src), str(dst), "--state", str(state)]
    with watch_logging(cmd) as (p, lines):
        workers: set[int] = set()

        def copied() -> bool:
            workers.update(_descendants(p.pid))
            return any("initial copy into an empty destination" in line for line in lines)

        wait_for(copied, timeout=120, what="the initial copy")
        assert len(workers) >= 2, f"no copy worker process seen: {workers}"
        assert_same_tree(src, dst)
        wait_for(lambda: not any(alive(w) for w in workers), timeout=10,
                 what="the workers to end after the first pass")
        assert not _descendants(p.pid)
        write(src / "d0" / "late.txt", b"after the first pass")
        converge(src, dst, timeout=20)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    assert not any("Traceback" in line for line in lines), "".join(lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_watch_stopped_in_its_first_pass_leaves_no_copy_worker_behind(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM in the middle of the first pass: the batch in flight finishes, the
    workers end with the watch; SIGKILL: they die with it (``PR_SET_PDEATHSIG``),
    nothing goes on writing into the destination."""
    src, dst, state = tmp_path / "src", tmp_path / "dst", tmp_path / "h.sqlite"
    for i in range(6000):
        write(src / f"d{i % 60}" / f"f{i}.bin", os.urandom(1000 + i % 3000))
    cmd = [hsync_bin(), "watch", str(src), str(dst), "--state", str(state)]
    with watch_logging(cmd) as (p, lines):
        workers: set[int] = set()

        def under_way() -> bool:
            workers.update(_descendants(p.pid))
            return dst.exists() and sum(1 for _ in dst.rglob("*.bin")) > 200

        wait_for(under_way, timeout=60, what="the copy to be under way")
        assert workers, "no copy worker process"
        assert not any("initial copy into an empty destination" in line for line in lines)
        p.send_signal(sig)
        code = p.wait(10)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), "".join(lines)
        wait_for(lambda: not any(alive(w) for w in workers), timeout=5,
                 what="the workers to end with the watch")
    if sig == signal.SIGKILL:
        time.sleep(0.5)  # a worker left alive would go on publishing meanwhile
    published = {q: q.stat().st_mtime_ns for q in dst.rglob("*.bin")}
    time.sleep(0.5)
    assert {q: q.stat().st_mtime_ns for q in dst.rglob("*.bin")} == published
    for f in published:  # whatever is under a final name is whole
        assert f.read_bytes() == (src / f.relative_to(dst)).read_bytes(), f
    if sig == signal.SIGTERM:
        assert not list(dst.rglob(".hsync-tmp-*"))
        assert not any("Traceback" in line for line in lines), "".join(lines)


def test_periodic_verify_finds_a_flipped_byte_and_the_loop_repairs_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "d" / "data.bin", bytes(range(256)) * 64)
    write(src / "other.txt", b"unchanged")
    with running(src, dst, tmp_path, verify_interval=0.5) as (pw, _rounds):
        converge(src, dst)
        target = dst / "d" / "data.bin"
        st = target.stat()
        with open(target, "r+b") as f:  # bit rot: same size, same mtime
            f.seek(1000)
            f.write(b"\xff")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert in_sync(src, dst)  # a stat comparison cannot see it
        wait_for(lambda: target.read_bytes() == (src / "d" / "data.bin").read_bytes(),
                 timeout=20, what="verify to find the flipped byte and a round to repair it")
    assert pw.status.verify_found == 1  # the one file, found once, repaired


def test_daemon_keeps_other_pairs_running_and_starts_a_late_source(tmp_path: Path) -> None:
    good_src, good_dst = tmp_path / "good", tmp_path / "good-copy"
    late_src, late_dst = tmp_path / "late", tmp_path / "late-copy"
    write(good_src / "g.txt", b"g")
    status = tmp_path / "status.json"
    config = tmp_path / "hsync.toml"
    config.write_text(
        f'status_file = "{status}"\n[defaults]\ndebounce_ms = 20\n'
        f'state = "{tmp_path / "h.sqlite"}"\n'
        f'[[pair]]\nname = "good"\nsource = "{good_src}"\ndestination = "{good_dst}"\n'
        f'[[pair]]\nname = "late"\nsource = "{late_src}"\ndestination = "{late_dst}"\n'
    )
    with spawned([hsync_bin(), "daemon", "--config", str(config)]) as p:
        converge(good_src, good_dst)

        def late_state() -> str | None:
            pairs = {x["name"]: x for x in _status(status).get("pairs", [])}
            return pairs.get("late", {}).get("state")

        wait_for(lambda: late_state() == "error", what="the missing source reported")
        write(good_src / "more.txt", b"still synced")
        converge(good_src, good_dst)
        write(late_src / "l.txt", b"mounted at last")  # the source appears
        converge(late_src, late_dst, timeout=20)
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


def test_a_source_that_cannot_be_watched_at_all_is_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchdog.observers.inotify_c import InotifyFD

    def no_instance(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    # the fault, at watchdog's boundary: no inotify instance can be created
    monkeypatch.setattr(InotifyFD, "__init__", no_instance)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "a.txt", b"a")
    with running(src, dst, tmp_path, poll_interval=0.3) as (pw, _rounds):
        converge(src, dst)
        assert pw.watcher is None and () in pw.dirty.unwatched_keys
        write(src / "sub" / "b.txt", b"found by polling")
        converge(src, dst, timeout=5)


def test_a_reused_inode_under_a_watch_is_copied_not_moved(tmp_path: Path) -> None:
    """A file deleted and another created with its size and mtime and its freed inode
    while the watch runs: the destination gets the new bytes under the new name, never
    the old file renamed."""
    t0 = 1_577_836_800 * 10**9
    src = build(tmp_path / "src", {"d/keep": b"k"})
    dst = tmp_path / "dst"
    with running(src, dst, tmp_path) as (_pw, rounds):
        old, new = src / "d" / "a", src / "d" / "b"
        write(old, b"AAAA-old")
        os.utime(old, ns=(t0, t0))
        converge(src, dst)
        if not reuse_inode(old, new, b"BBBB-new"):
            pytest.skip("this filesystem never reused a freed inode (tmpfs does not): the "
                        "bug needs a reused inode")
        wait_for(lambda: (dst / "d" / new.name).exists(), what="the new file")
        converge(src, dst)
        assert (dst / "d" / new.name).read_bytes() == b"BBBB-new"
        assert not (dst / "d" / old.name).exists()
        assert not any(op.op == "move" for r in rounds for op in r.ops)
