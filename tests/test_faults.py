"""The fault catalogue (SPEC sections 5 and 8): a full disk, a permission denied, a
subtree that vanishes mid-scan, a destination directory swapped for a symlink mid-run,
a file replaced by a directory mid-copy, hostile names and shapes. Each test runs on a
real filesystem; the races are real ones, made reliable with many or big files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from treeutil import DIR, File, Link, assert_same_tree, build, hsync_bin

from hsync.oneshot import sync_once
from hsync.options import Options

HSYNC = hsync_bin()
T0 = 1_600_000_000 * 10**9


def _run(*args: str, user: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [HSYNC, *args]
    if user:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _temps(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if n.startswith(".hsync-tmp-")
    ]


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
        capture_output=True, text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_stops_with_one_line_removes_its_temp_and_converges_later(
    tmp_path: Path, small_fs: Path
) -> None:
    src = build(
        tmp_path / "src",
        {f"d{i}/f{j}": File(bytes([65 + j]) * 400_000, mtime_ns=T0) for i in range(3)
         for j in range(5)},
    )
    dst = small_fs / "dst"
    state = str(tmp_path / "state.sqlite")
    full = _run("sync", str(src), str(dst), "--state", state)
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1, full.stderr
    assert "No space left on device" in lines[0] and str(dst) in lines[0], lines[0]
    assert "Traceback" not in full.stderr
    assert _temps(dst) == []
    for path in dst.rglob("f*"):  # nothing half-written under a final name
        data = path.read_bytes()
        assert len(data) == 400_000 and len(set(data)) == 1, path

    db = sqlite3.connect(str(tmp_path / "state.journal.sqlite"))
    # unfinished: written before it ran (its flush, begun beside the ops, may have
    # ended or not: the full disk stopped the batch before any history was recorded)
    assert [r[0] for r in db.execute("SELECT state FROM batches")] in (["begun"], ["running"])
    db.close()

    subprocess.run(["mount", "-o", "remount,size=40m", str(small_fs)], check=True)
    again = _run("sync", str(src), str(dst), "--state", state)
    assert again.returncode == 0, again.stderr
    db = sqlite3.connect(str(tmp_path / "state.journal.sqlite"))
    assert [r[0] for r in db.execute("SELECT state FROM batches ORDER BY seq")] == [
        "rolled forward", "done"
    ]
    db.close()
    assert _run("diff", str(src), str(dst), "--state", state).returncode == 0
    assert_same_tree(src, dst)


# -- a permission denied ---------------------------------------------------------------------


def test_permission_denied_on_a_source_subtree_syncs_the_rest_exit_3() -> None:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run hsync as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="hsync-perm-", dir="/tmp"))
    try:
        base.chmod(0o755)
        src = build(base / "src", {"ok/a": b"a", "ok/b": b"b", "locked/x": b"x",
                                   "locked/sub/y": b"y", "top": b"t"})
        for d, dirs, files in os.walk(base):
            for n in [d, *(os.path.join(d, x) for x in dirs + files)]:
                os.chown(n, 65534, 65534)
        (src / "locked").chmod(0)
        dst = base / "dst"
        out = _run("sync", str(src), str(dst), "--state", str(base / "state.sqlite"),
                   user=True)
        assert out.returncode == 3, out.stdout + out.stderr
        assert "locked" in out.stderr and "Permission denied" in out.stderr, out.stderr
        assert (dst / "ok" / "a").read_bytes() == b"a"
        assert (dst / "ok" / "b").read_bytes() == b"b"
        assert (dst / "top").read_bytes() == b"t"
        assert not (dst / "locked" / "x").exists()
        assert "Traceback" not in out.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- a subtree deleted mid-scan ------------------------------------------------------------


def test_source_subtree_deleted_mid_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {f"gone/d{i}/f{j}": b"g" for i in range(5) for j in range(5)}
    spec.update({"keep/a": b"a", "z": b"z"})
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"
    state = str(tmp_path / "state.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    (src / "keep" / "new").write_bytes(b"new")

    from hsync.backends.fs import scan as fs_scan

    real_list = fs_scan.list_dir

    def listing_then_delete(fd, *args, **kw):  # type: ignore[no-untyped-def]
        out = real_list(fd, *args, **kw)
        if os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(src):
            # the root is listed, "gone" will be on the stack: it vanishes before its turn
            shutil.rmtree(src / "gone")
        return out

    monkeypatch.setattr(fs_scan, "list_dir", listing_then_delete)
    report = sync_once(str(src), str(dst), Options(state=state))
    monkeypatch.undo()
    assert [p.key for p in report.problems] == [("gone",)], report.problems
    assert "vanished" in report.problems[0].message
    assert report.exit_code == 3
    assert (dst / "keep" / "new").read_bytes() == b"new"
    # nothing under the unknown subtree was deleted on the strength of a partial scan
    assert len(list((dst / "gone").rglob("f*"))) == 25
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    assert_same_tree(src, dst)


# -- a destination directory swapped for a symlink mid-run ----------------------------------


def test_destination_directory_replaced_by_a_symlink_mid_run_is_not_written_through(
    tmp_path: Path,
) -> None:
    n = 3000
    src = build(tmp_path / "src", {f"a/f{i:05d}": File(b"%05d" % i * 3000, mtime_ns=T0)
                                   for i in range(n)})
    dst, outside = tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    dst.mkdir()
    proc = subprocess.Popen(
        [HSYNC, "sync", str(src), str(dst), "--state", str(tmp_path / "s.sqlite")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = dst / "a" / "f00000"
    deadline = time.monotonic() + 30
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        pass  # spin: react within microseconds of the first publish
    os.rename(dst / "a", dst / "a-real")
    os.symlink(outside, dst / "a")
    out, err = proc.communicate(timeout=120)
    assert list(outside.iterdir()) == [], "written through a symlink"
    published = len(list((dst / "a-real").iterdir()))
    assert published < n, "the swap came too late to test anything"
    assert proc.returncode == 3, out + err
    assert "nothing written through it" in err

    again = _run("sync", str(src), str(dst), "--state", str(tmp_path / "s.sqlite"))
    assert again.returncode == 0, again.stderr
    assert list(outside.iterdir()) == []
    assert (dst / "a").is_dir() and not (dst / "a").is_symlink()
    assert len(list((dst / "a").iterdir())) == n


# -- a file replaced by a directory mid-copy -------------------------------------------------


def test_source_file_replaced_by_a_directory_mid_copy(tmp_path: Path) -> None:
    size = 96 << 20
    src = tmp_path / "src"
    src.mkdir()
    block = os.urandom(1 << 20)
    with open(src / "big", "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
    dst = tmp_path / "dst"
    dst.mkdir()
    state = str(tmp_path / "s.sqlite")
    proc = subprocess.Popen([HSYNC, "sync", str(src), str(dst), "--state", state],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _temps(dst) and proc.poll() is None and time.monotonic() < deadline:
        pass
    swapped = proc.poll() is None
    os.rename(src / "big", tmp_path / "big-old")
    (src / "big").mkdir()
    (src / "big" / "inside").write_bytes(b"i")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), err
    assert "Traceback" not in err
    assert _temps(dst) == []
    if (dst / "big").is_file():  # published: whole, the file that was scanned
        assert (dst / "big").stat().st_size == size
        with open(dst / "big", "rb") as f:
            assert all(f.read(1 << 20) == block for _ in range(size >> 20))
    again = _run("sync", str(src), str(dst), "--state", state)
    assert again.returncode == 0, again.stderr
    assert (dst / "big" / "inside").read_bytes() == b"i"
    assert swapped or (dst / "big").is_dir()


# -- hostile names and shapes ----------------------------------------------------------------


def test_hostile_names_and_a_300_level_deep_path(tmp_path: Path) -> None:
    long = "L" * 255
    deep = "/".join(["d"] * 300)
    spec: dict[str, object] = {
        "new\nline": b"n",
        "-rf": b"dash",
        "--help": DIR,
        "...": b"dots",
        "..a": b"x",
        " space ": b"s",
        long: b"long",
        f"{'M' * 255}/{long}": b"longer",
        "\udcff\udcfe": b"not utf-8",
        "tab\there": b"t",
        f"{deep}/bottom": b"deep",
        "loop/a": Link("b"),
        "loop/b": Link("a"),
        "self": Link("self"),
        "up": Link("../../../etc"),
    }
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"
    out = _run("sync", str(src), str(dst))
    assert out.returncode == 0, out.stderr
    assert_same_tree(src, dst)
    assert os.readlink(dst / "up") == "../../../etc"  # copied as a string, never followed
    assert _run("diff", str(src), str(dst)).returncode == 0
    assert _run("verify", str(src), str(dst), "--settle", "0").returncode == 0
    # a rename deep down and a delete of the whole deep chain
    os.rename(os.path.join(src, deep, "bottom"), os.path.join(src, deep, "moved"))
    shutil.rmtree(src / ("M" * 255))
    assert _run("sync", str(src), str(dst)).returncode == 0
    assert_same_tree(src, dst)


def test_history_and_journal_are_created_0600(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"a"})
    state = tmp_path / "state" / "h.sqlite"
    assert _run("sync", str(src), str(tmp_path / "dst"), "--state", str(state)).returncode == 0
    files = sorted(state.parent.iterdir())
    assert {p.name for p in files} >= {"h.sqlite", "h.journal.sqlite"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700


def test_a_directory_swapped_for_a_symlink_between_scan_and_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic counterpart of the race above: every kind of write (create, update,
    metadata, symlink, move, delete) aimed below a swapped directory is refused."""
    src = build(tmp_path / "src", {"d/new": b"new", "d/upd": b"2222", "d/meta": File(b"m"),
                                   "d/link": Link("x"), "d/moved": b"mv"})
    dst = build(tmp_path / "dst", {"d/upd": b"1", "d/meta": File(b"m", mode=0o600),
                                   "d/link": Link("y"), "d/tomove": b"mv", "d/gone": b"g"})
    os.utime(src / "d" / "moved", ns=(T0, T0))
    os.utime(dst / "d" / "tomove", ns=(T0, T0))
    outside = build(tmp_path / "outside", {"upd": b"1", "meta": File(b"m", mode=0o600),
                                            "link": Link("y"), "tomove": b"mv", "gone": b"g"})
    before = {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in outside.iterdir()}

    from hsync.backends.fs import apply as fs_apply

    real_batch = fs_apply.Batch.run

    def swap_then_run(self, ops):  # type: ignore[no-untyped-def]
        os.rename(dst / "d", tmp_path / "d-real")
        os.symlink(outside, dst / "d")
        return real_batch(self, ops)

    monkeypatch.setattr(fs_apply.Batch, "run", swap_then_run)
    report = sync_once(str(src), str(dst), Options(state="", delete=True))
    monkeypatch.undo()
    assert not report.ok
    after = {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in outside.iterdir()}
    assert after == before
    assert sorted(os.listdir(outside)) == sorted(before)


def _walk_create(root: Path, names: list[str], leaf: str, data: bytes) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def _walk_read(root: Path, names: list[str], leaf: str) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            return os.read(f, 1 << 16)
        finally:
            os.close(f)
    finally:
        os.close(fd)


def test_a_path_longer_than_path_max_is_synced_name_by_name(tmp_path: Path) -> None:
    chain = [c * 255 for c in "ABCDEFGHIJKLMNOPQRST"]  # 5,120 bytes: over PATH_MAX (4096)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _walk_create(src, chain, "leaf", b"at the bottom")
    report = sync_once(str(src), str(dst), Options(state=str(tmp_path / "h.sqlite")))
    assert report.problems == [], report.problems
    assert _walk_read(dst, chain, "leaf") == b"at the bottom"
    again = sync_once(str(src), str(dst), Options(state=str(tmp_path / "h.sqlite"),
                                                   dry_run=True))
    assert again.plan is not None and not again.plan

    import hsync

    assert hsync.verify(str(src), str(dst), settle=0).exit_code == 0
    # a byte flipped at the bottom, size and mtime kept: verify finds it there too
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    for name in chain:
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    st = os.stat("leaf", dir_fd=fd)
    leaf = os.open("leaf", os.O_WRONLY, dir_fd=fd)
    os.pwrite(leaf, b"A", 0)
    os.close(leaf)
    os.utime("leaf", ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=fd)
    os.close(fd)
    found = hsync.verify(str(src), str(dst), settle=0.05)
    assert [(d.key[-1], d.what) for d in found.differences] == [("leaf", "content")]


def test_a_destination_file_replaced_by_a_directory_before_its_update_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination changed between the scan and the publish: the directory that took
    the file's place (and what it holds) is not clobbered; the next run converges."""
    src = build(tmp_path / "src", {"f": File(b"new content", mtime_ns=T0 + 1), "g": b"g"})
    dst = build(tmp_path / "dst", {"f": File(b"old", mtime_ns=T0), "g": b"g"})
    from hsync.backends.fs import apply as fs_apply

    real_batch = fs_apply.Batch.run

    def swap_then_run(self, ops):  # type: ignore[no-untyped-def]
        (dst / "f").unlink()
        (dst / "f").mkdir()
        (dst / "f" / "precious").write_bytes(b"p")
        return real_batch(self, ops)

    monkeypatch.setattr(fs_apply.Batch, "run", swap_then_run)
    report = sync_once(str(src), str(dst), Options(state="", delete=True))
    monkeypatch.undo()
    assert [p.key for p in report.problems] == [("f",)], report.problems
    assert (dst / "f" / "precious").read_bytes() == b"p"
    assert _temps(dst) == []
    assert sync_once(str(src), str(dst), Options(state="", delete=True)).ok
    assert_same_tree(src, dst)
