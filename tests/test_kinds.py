"""The kinds and metadata a replica keeps beyond files, directories and symlink targets
(issue 11, SPEC 2): holes of sparse files, symlink mtimes, FIFOs and device nodes,
hard links re-linked, mount points not crossed. Real files in ``tmp_path``, the real
command line; root where the kernel requires it (devices, mounts)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeutil import assert_same_tree, build, hsync_bin, read_tree

MiB = 1 << 20
T0 = 1_600_000_000_000_000_000


def hsync(*args: Any, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hsync_bin(), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def ok(r: subprocess.CompletedProcess[str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def sparse_file(path: Path, size: int, extents: list[tuple[int, bytes]]) -> Path:
    """A file of ``size`` bytes holding only ``extents`` (offset, data): holes elsewhere."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset, data in extents:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    os.utime(path, ns=(T0, T0))
    return path


def holes_supported(where: Path) -> bool:
    probe = sparse_file(where / ".probe", 8 * MiB, [])
    try:
        return allocated(probe) < MiB
    finally:
        probe.unlink()


# -- sparse files ------------------------------------------------------------------------


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    s.mkdir()
    if not holes_supported(s):
        pytest.skip(f"{s}: this filesystem keeps no holes")
    return s


def test_a_sparse_file_keeps_its_holes(tmp_path: Path, src: Path) -> None:
    """64 MiB with two 4 KiB extents allocates under 1 MiB on the destination; the
    content is equal, and a re-sync finds it in sync."""
    f = sparse_file(src / "disk.img", 64 * MiB,
                    [(MiB, b"\xaa" * 4096), (40 * MiB, b"\x55" * 4096)])
    assert allocated(f) < MiB
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    out = dst / "disk.img"
    assert out.stat().st_size == 64 * MiB
    assert allocated(out) < MiB, allocated(out)
    assert digest(out) == digest(f)
    assert_same_tree(src, dst)
    assert ok(hsync("diff", src, dst)).stdout.strip() == "in sync"


def test_all_hole_and_trailing_hole_files(tmp_path: Path, src: Path) -> None:
    empty = sparse_file(src / "all-hole", 16 * MiB, [])
    tail = sparse_file(src / "tail-hole", 16 * MiB, [(0, b"head" * 1024)])
    head = sparse_file(src / "head-hole", 16 * MiB, [(16 * MiB - 4096, b"end!" * 1024)])
    dst = tmp_path / "dst"
    ok(hsync("sync", src, dst))
    for f in (empty, tail, head):
        out = dst / f.name
        assert out.stat().st_size == 16 * MiB
        assert allocated(out) < MiB, (f.name, allocated(out))
        assert digest(out) == digest(f)
    assert allocated(dst / "all-hole") == 0


def test_no_sparse_writes_the_holes(tmp_path: Path, src: Path) -> None:
    """``--no-sparse`` (rsync without -S): the copy is dense, the content the same."""
    f = sparse_file(src / "img", 8 * MiB, [(MiB, b"x" * 4096)])
    dst = tmp_path / "dst"
    ok(hsync("sync", "--no-sparse", src, dst))
    assert allocated(dst / "img") >= 8 * MiB
    assert digest(dst / "img") == digest(f)


def test_a_dense_file_stays_dense_and_equal(tmp_path: Path, src: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    (src / "dense").write_bytes(data)
    dst = tmp_path / "dst"
    ok(hsync("sync", "-S", src, dst))
    assert (dst / "dense").read_bytes() == data


# -- symlink mtimes ----------------------------------------------------------------------


def test_a_symlink_mtime_is_kept_and_a_touch_alone_is_synced(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    os.symlink("f", src / "link")
    os.symlink("nowhere", src / "dangling")
    for name in ("link", "dangling"):
        os.utime(src / name, ns=(T0, T0), follow_symlinks=False)
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    assert os.lstat(dst / "link").st_mtime_ns == T0
    assert os.lstat(dst / "dangling").st_mtime_ns == T0
    f_mtime = os.stat(dst / "f").st_mtime_ns
    os.utime(src / "link", ns=(T0 + 5, T0 + 5), follow_symlinks=False)  # touch -h
    d = ok(hsync("diff", "--state", state, src, dst), 1)
    assert "link" in d.stdout and "dangling" not in d.stdout
    ok(hsync("sync", "--state", state, src, dst))
    assert os.lstat(dst / "link").st_mtime_ns == T0 + 5
    assert os.readlink(dst / "link") == "f"
    assert os.stat(dst / "f").st_mtime_ns == f_mtime  # never through the link
    assert_same_tree(src, dst)
    ok(hsync("diff", "--state", state, src, dst))
    # a symlink's mtime changed on the destination is found by verify and repaired
    os.utime(dst / "dangling", ns=(1, 1), follow_symlinks=False)
    v = ok(hsync("verify", src, dst), 1)
    assert "dangling" in v.stdout + v.stderr
    ok(hsync("sync", "--state", state, src, dst))
    assert os.lstat(dst / "dangling").st_mtime_ns == T0


# -- FIFOs and device nodes --------------------------------------------------------------


def test_a_fifo_is_replicated_without_being_opened(tmp_path: Path) -> None:
    """A FIFO is made again on the destination (rsync -D) with its mode and mtime; no
    one writes into it, so a run that opened it would hang (the timeout)."""
    src = build(tmp_path / "src", {"f": b"x"})
    os.mkfifo(src / "pipe", 0o640)
    os.chmod(src / "pipe", 0o604)
    os.utime(src / "pipe", ns=(T0, T0))
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "--state", state, src, dst, timeout=30))
    st = os.lstat(dst / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_mtime_ns == T0
    assert_same_tree(src, dst)
    assert ok(hsync("diff", "--state", state, src, dst, timeout=30)).stdout.strip() == "in sync"
    # its mode alone changes: synced
    os.chmod(src / "pipe", 0o600)
    assert "pipe" in ok(hsync("diff", "--state", state, src, dst), 1).stdout
    ok(hsync("sync", "--state", state, src, dst, timeout=30))
    assert stat.S_IMODE(os.lstat(dst / "pipe").st_mode) == 0o600
    assert_same_tree(src, dst)
    # verify (content by hash) never opens it either
    ok(hsync("verify", src, dst, timeout=30))


def test_a_file_that_became_a_fifo_is_a_delete_and_a_create(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"was a file", "b/c": b"c"})
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    (src / "a").unlink()
    os.mkfifo(src / "a")
    os.rename(src / "b" / "c", src / "c-moved")
    os.mkfifo(src / "b" / "c")
    plan = json.loads(ok(hsync("diff", "--json", "--state", state, src, dst), 1).stdout)
    ops = [(o["op"], o["kind"], o["path"]) for o in plan]
    assert ("delete", "file", "a") in ops and ("create", "special", "a") in ops
    assert ops.index(("delete", "file", "a")) < ops.index(("create", "special", "a"))
    assert ("create", "special", "b/c") in ops
    ok(hsync("sync", "--state", state, src, dst, timeout=30))
    assert stat.S_ISFIFO(os.lstat(dst / "a").st_mode)
    assert (dst / "c-moved").read_bytes() == b"c"
    assert_same_tree(src, dst)
    # and back: the FIFO becomes a directory
    (src / "a").unlink()
    (src / "a").mkdir()
    (src / "a" / "in").write_bytes(b"in")
    ok(hsync("sync", "--state", state, src, dst, timeout=30))
    assert_same_tree(src, dst)


def test_no_specials_leaves_fifos_out(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    os.mkfifo(src / "pipe")
    dst = tmp_path / "dst"
    r = ok(hsync("sync", "--no-specials", src, dst))
    assert not os.path.lexists(dst / "pipe")
    assert "pipe" in r.stderr
    ok(hsync("sync", "-D", src, dst))  # rsync's spelling: back on
    assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can create device nodes")
def test_device_nodes_are_replicated_as_root(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chmod(src / "null", 0o666)
    for n in ("null", "loop"):
        os.utime(src / n, ns=(T0, T0))
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "--state", state, src, dst, timeout=30))
    for n in ("null", "loop"):
        a, b = os.lstat(src / n), os.lstat(dst / n)
        assert (a.st_mode, a.st_rdev, a.st_mtime_ns) == (b.st_mode, b.st_rdev, b.st_mtime_ns)
    assert_same_tree(src, dst)
    ok(hsync("diff", "--state", state, src, dst))
    # another device number at the same name: made again
    (src / "null").unlink()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    assert "null" in ok(hsync("diff", "--state", state, src, dst), 1).stdout
    ok(hsync("sync", "--state", state, src, dst, timeout=30))
    assert os.lstat(dst / "null").st_rdev == os.makedev(1, 5)
    assert_same_tree(src, dst)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop CAP_MKNOD)")
def test_root_without_cap_mknod_gets_one_warning_per_run(tmp_path: Path) -> None:
    """Root in a container without CAP_MKNOD: devices cannot be made; one warning for
    the run (not one per node, not a failure), the rest synced; FIFOs still made."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    src = build(tmp_path / "src", {"f": b"x"})
    for i in range(4):
        os.mknod(src / f"tty{i}", 0o644 | stat.S_IFCHR, os.makedev(4, 64 + i))
    os.mkfifo(src / "pipe")
    dst = tmp_path / "dst"
    cmd = ["setpriv", "--inh-caps=-mknod", "--bounding-set=-mknod", hsync_bin(),
           "sync", str(src), str(dst)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if "setpriv" in r.stderr:
        pytest.skip(f"cannot drop CAP_MKNOD here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "mknod" in line]
    assert len(lines) == 1 and "device nodes cannot be created" in lines[0], r.stderr
    assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)
    assert (dst / "f").read_bytes() == b"x"
    assert not any(os.path.lexists(dst / f"tty{i}") for i in range(4))


def test_a_socket_is_skipped_with_a_warning_and_the_run_succeeds(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    os.mknod(src / "sock", 0o600 | stat.S_IFSOCK)
    os.mkfifo(src / "pipe")
    dst = tmp_path / "dst"
    r = ok(hsync("sync", src, dst))
    assert "sock: socket skipped" in r.stderr
    assert not os.path.lexists(dst / "sock")
    assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)


# -- hard links re-linked ----------------------------------------------------------------


def test_hard_links_copied_separately_are_linked_again(tmp_path: Path) -> None:
    """a and b are one inode on the source; an earlier run without -H made two copies:
    a -H run makes them one inode again, copying nothing, and diff -H says so first."""
    src = build(tmp_path / "src", {"a": b"shared content", "other": b"o"})
    os.link(src / "a", src / "b")
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    assert os.stat(dst / "a").st_ino != os.stat(dst / "b").st_ino
    ok(hsync("diff", "--state", state, src, dst))  # without -H: in sync
    d = ok(hsync("diff", "-H", "--state", state, src, dst), 1)
    assert "b" in d.stdout.split() or any(line.endswith(" b") for line in d.stdout.splitlines())
    r = json.loads(ok(hsync("sync", "-H", "--json", "--state", state, src, dst)).stdout)
    assert r["bytes_copied"] == 0
    assert os.stat(dst / "a").st_ino == os.stat(dst / "b").st_ino
    assert (dst / "b").read_bytes() == b"shared content"
    ok(hsync("diff", "-H", "--state", state, src, dst))
    # a link made on the source after the sync
    os.link(src / "other", src / "other2")
    ok(hsync("sync", "--state", state, src, dst))  # without -H: a copy
    assert os.stat(dst / "other").st_ino != os.stat(dst / "other2").st_ino
    ok(hsync("sync", "-H", "--state", state, src, dst))
    assert os.stat(dst / "other").st_ino == os.stat(dst / "other2").st_ino
    assert_same_tree(src, dst)


# -- one file system ---------------------------------------------------------------------


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted below the source (skipped where mounting is not allowed)."""
    src = tmp_path / "src"
    where = src / "mnt"
    where.mkdir(parents=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0750", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_one_file_system_does_not_cross_a_mount_point(tmp_path: Path, mounted: Path) -> None:
    """rsync -x: the mount point is an empty directory on the destination (with the
    mounted directory's mode), nothing below it is copied, and the next run neither
    deletes it nor finds a difference."""
    src = mounted.parent
    (src / "top").write_bytes(b"top")
    (mounted / "inside").write_bytes(b"on another file system")
    (mounted / "sub").mkdir()
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "-x", "--state", state, src, dst))
    assert (dst / "top").read_bytes() == b"top"
    assert (dst / "mnt").is_dir() and os.listdir(dst / "mnt") == []
    assert stat.S_IMODE(os.stat(dst / "mnt").st_mode) == 0o750
    ok(hsync("diff", "-x", "--state", state, src, dst))
    ok(hsync("sync", "--one-file-system", "--delete", "--state", state, src, dst))
    assert (dst / "mnt").is_dir()
    # without -x the mount is crossed, as before
    ok(hsync("sync", "--state", state, src, dst))
    assert (dst / "mnt" / "inside").read_bytes() == b"on another file system"


def test_one_file_system_leaves_what_is_below_a_mount_point_alone(
    tmp_path: Path, mounted: Path
) -> None:
    """rsync -x --delete keeps what the destination holds below a mount point the source
    does not cross: nothing there is the source's to delete, by a run with a history
    (directory digests) or without one (a full comparison)."""
    src = mounted.parent
    (src / "top").write_bytes(b"top")
    (mounted / "inside").write_bytes(b"on another file system")
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "-x", "--state", state, src, dst))
    (dst / "mnt" / "kept").write_bytes(b"the destination's own")
    (dst / "mnt" / "dir").mkdir()
    (dst / "mnt" / "dir" / "deeper").write_bytes(b"also its own")
    for st in (state, tmp_path / "fresh.sqlite"):
        ok(hsync("sync", "-x", "--delete", "--state", st, src, dst))
        assert (dst / "mnt" / "kept").read_bytes() == b"the destination's own"
        assert (dst / "mnt" / "dir" / "deeper").read_bytes() == b"also its own"
        ok(hsync("diff", "-x", "--state", st, src, dst))  # nothing to do
    assert not (dst / "mnt" / "inside").exists()


def test_a_watch_with_one_file_system_ignores_changes_below_a_mount_point(
    tmp_path: Path, mounted: Path
) -> None:
    """The watch's partial rescans (a change notified below the mount point) do not
    cross it either: the file written there is not copied, the destination's own file
    there is not deleted."""
    import threading
    import time

    from hsync.live import PairWatch, RoundResult, WatchOptions
    from hsync.options import Options

    src = mounted.parent
    (src / "top").write_bytes(b"top")
    (mounted / "sub").mkdir()
    dst = tmp_path / "dst"
    state = tmp_path / "st.sqlite"
    ok(hsync("sync", "-x", "--state", state, src, dst))
    (dst / "mnt" / "sub").mkdir()
    (dst / "mnt" / "sub" / "own").write_bytes(b"the destination's own")
    rounds: list[RoundResult] = []
    pw = PairWatch(str(src), str(dst), Options(state=str(state), one_file_system=True),
                   WatchOptions(debounce=0.05, max_delay=0.5), on_round=rounds.append)
    t = threading.Thread(target=pw.run, name="test-pair")
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not rounds:
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.05)
        (mounted / "sub" / "new").write_bytes(b"below the mount point")
        (mounted / "sub" / "own").write_bytes(b"the source's, not to be copied")
        (mounted / "new2").write_bytes(b"at the mount point's top")
        time.sleep(0.3)  # its notifications (if any) come before the next one
        (src / "later").write_bytes(b"after")
        while not (dst / "later").exists():
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        pw.stop()
        t.join(15)
    assert not t.is_alive()
    assert not (dst / "mnt" / "sub" / "new").exists()
    assert not (dst / "mnt" / "new2").exists()
    assert (dst / "mnt" / "sub" / "own").read_bytes() == b"the destination's own"


def test_python_api_and_daemon_config_take_the_options(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"f": b"x"})
    os.mkfifo(src / "pipe")
    code = (
        "import sys, hsync\n"
        "r = hsync.sync(sys.argv[1], sys.argv[2], specials=False, sparse=False, state='')\n"
        "print(r.counts['create'], [k for k, _ in r.skipped])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "dst")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "2 [('pipe',)]"  # the root and f
    conf = tmp_path / "hsync.toml"
    conf.write_text(
        f'[[pair]]\nsource = "{src}"\ndestination = "{tmp_path / "d2"}"\n'
        "specials = false\nsparse = false\none_file_system = true\n"
    )
    ok(hsync("daemon", "--config", conf, "--check"))
    conf.write_text(conf.read_text().replace("specials = false", 'specials = "no"'))
    bad = hsync("daemon", "--config", conf, "--check")
    assert bad.returncode != 0 and "specials" in bad.stderr


def test_read_tree_sees_what_the_new_kinds_add(tmp_path: Path) -> None:
    """The helper every tree comparison uses reads symlink mtimes and FIFOs (a test of
    the tests: without it, ``assert_same_tree`` could not fail on them)."""
    a = build(tmp_path / "a", {})
    os.symlink("x", a / "l")
    os.mkfifo(a / "p")
    before = read_tree(a)
    os.utime(a / "l", ns=(1, 1), follow_symlinks=False)
    assert read_tree(a) != before
    before = read_tree(a)
    os.chmod(a / "p", 0o600)
    assert read_tree(a) != before
