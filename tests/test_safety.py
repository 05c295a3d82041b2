"""Safety rules of SPEC 8, through the installed ``hsync`` command (issue 12, items 1-7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_cli import assert_bad_input, hsync, nobody_env, ok
from treeutil import build, hsync_bin, read_tree


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A world-accessible directory outside pytest's 0700 tmp_path, for user 65534."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("cannot run hsync as an unprivileged user (needs root and setpriv)")
    base = Path(tempfile.mkdtemp(prefix="hsync-safety-"))
    try:
        os.chmod(base, 0o777)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- 1. a destination hsync never synced from this source ----------------------------------
def test_first_sync_into_a_foreign_destination_deletes_nothing(tmp_path: Path) -> None:
    """`hsync sync photos backupdisk/` kept the disk's `taxes/2023.pdf` only with --delete
    absent: it copies the rest, warns once, and keeps withholding on the next run."""
    src, dst, state = tmp_path / "photos", tmp_path / "disk", tmp_path / "h.sqlite"
    build(src, {"a.jpg": b"A", "old": b"new"})
    build(dst, {"taxes/2023.pdf": b"T", "old/x": b"dir", "notes": b"N"})
    r = ok(hsync("sync", "--state", state, "--json", src, dst))
    tree = read_tree(dst)
    assert tree[b"taxes/2023.pdf"][-1] == b"T" and tree[b"notes"][-1] == b"N"
    assert tree[b"a.jpg"][-1] == b"A"
    assert tree[b"old/x"][-1] == b"dir"  # never replaced by the source's file of that name
    report = json.loads(r.out)
    assert report["counts"]["delete"] == 0
    assert report["deletions_withheld"] == 5
    assert sum("taxes" in w for w in report["warnings"]) == 1
    lines = [ln for ln in r.err.splitlines() if "--delete" in ln]
    assert len(lines) == 1 and "5 destination-only nodes" in lines[0] and str(dst) in lines[0]
    # the second run (the pair now has a history) still deletes nothing
    r = ok(hsync("sync", "--state", state, src, dst))
    assert (dst / "taxes" / "2023.pdf").exists() and "--delete" in r.err
    # without a history at all, too
    r = ok(hsync("sync", "--state", "", src, dst))
    assert (dst / "taxes" / "2023.pdf").exists() and "--delete" in r.err
    # --no-delete never deletes; --delete does, and the pair deletes from then on
    ok(hsync("sync", "--state", state, "--no-delete", src, dst))
    assert (dst / "taxes" / "2023.pdf").exists()
    r = ok(hsync("sync", "--state", state, "--delete", src, dst))
    assert sorted(p.name for p in dst.iterdir()) == ["a.jpg", "old"]
    assert (dst / "old").read_bytes() == b"new" and "--delete" not in r.err
    (dst / "stray").write_bytes(b"s")
    ok(hsync("sync", "--state", state, src, dst))
    assert not (dst / "stray").exists()


def test_a_synced_pair_deletes_by_default(tmp_path: Path) -> None:
    """An empty destination is hsync's from the first run: later runs mirror deletions."""
    src, dst, state = tmp_path / "s", tmp_path / "d", tmp_path / "h.sqlite"
    build(src, {"a": b"A", "b": b"B"})
    ok(hsync("sync", "--state", state, src, dst))
    (src / "b").unlink()
    r = ok(hsync("sync", "--state", state, src, dst))
    assert not (dst / "b").exists() and "--delete" not in r.err


# -- 2. --state: a directory, unreadable, unwritable, corrupt --------------------------------
def test_state_naming_a_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    src, dst = build(tmp_path / "s", {"a": b"A"}), tmp_path / "d"
    mine = build(tmp_path / "mydir", {"keep": b"K"})
    r = hsync("sync", "--state", mine, src, dst)
    assert_bad_input(r, str(mine), "directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydir", "s"]
    assert (mine / "keep").read_bytes() == b"K"


def test_state_unwritable_is_refused(tmp_path: Path) -> None:
    src, dst = build(tmp_path / "s", {"a": b"A"}), tmp_path / "d"
    state = tmp_path / "h.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    (src / "b").write_bytes(b"B")
    state.chmod(0o444)
    subprocess.run(["chattr", "+i", str(state)], check=True)  # unwritable even for root
    try:
        r = hsync("sync", "--state", state, src, dst)
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert_bad_input(r, str(state), "not readable and writable")
    assert not (dst / "b").exists()
    assert not list(tmp_path.glob("h.sqlite.corrupt*"))


def test_state_unreadable_is_refused(nobody_dir: Path) -> None:
    src, dst = build(nobody_dir / "s", {"a": b"A"}), nobody_dir / "d"
    state = nobody_dir / "h.sqlite"
    state.write_bytes(b"root's history")
    state.chmod(0o600)
    r = hsync("sync", "--state", state, src, dst, nobody=True, env=nobody_env(nobody_dir))
    assert_bad_input(r, str(state), "not readable")
    assert state.read_bytes() == b"root's history"


def test_a_corrupt_history_is_set_aside_with_a_warning(tmp_path: Path) -> None:
    src, dst = build(tmp_path / "s", {"a": b"A"}), tmp_path / "d"
    state = tmp_path / "h.sqlite"
    state.write_bytes(b"this is not a database" * 100)
    r = ok(hsync("sync", "--json", "--state", state, src, dst))
    (aside,) = tmp_path.glob("h.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    lines = [ln for ln in r.err.splitlines() if "set aside" in ln]
    assert len(lines) == 1 and str(state) in lines[0] and str(aside) in lines[0]
    assert any(str(aside) in w for w in json.loads(r.out)["warnings"])
    assert (dst / "a").read_bytes() == b"A"


def test_a_history_that_claims_the_current_schema_without_its_columns_is_set_aside(
    tmp_path: Path,
) -> None:
    """A history file that says it is current but lacks a column (written by another
    build's numbering) is set aside with a warning, not a crash at the first query."""
    import sqlite3

    src, dst = build(tmp_path / "s", {"a": b"A"}), tmp_path / "d"
    state = tmp_path / "h.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    db = sqlite3.connect(state)
    with db:
        db.execute("ALTER TABLE pairs DROP COLUMN deletes")
    db.close()
    (src / "b").write_bytes(b"B")
    r = ok(hsync("sync", "--state", state, src, dst))
    (aside,) = (p for p in tmp_path.glob("h.sqlite.corrupt-*") if p.suffix != ".sqlite"
                and not p.name.endswith(("-wal", "-shm")))
    lines = [ln for ln in r.err.splitlines() if "set aside" in ln]
    assert len(lines) == 1 and str(aside) in lines[0] and "deletes" in lines[0]
    assert (dst / "b").read_bytes() == b"B"


# -- 7. only temporary names hsync made are removed as such ----------------------------------
def test_a_users_hsync_tmp_file_is_an_ordinary_node(tmp_path: Path) -> None:
    src, dst, state = tmp_path / "s", tmp_path / "d", tmp_path / "h.sqlite"
    build(src, {"a": b"A", ".hsync-tmp-notes": b"my notes", "sub/.hsync-tmp-1-2": b"mine"})
    ok(hsync("sync", "--state", state, src, dst))
    assert (dst / ".hsync-tmp-notes").read_bytes() == b"my notes"  # synced
    assert (dst / "sub" / ".hsync-tmp-1-2").read_bytes() == b"mine"
    # a destination-only one is kept with --no-delete, and by a cleanup of hsync's own
    (dst / "sub" / ".hsync-tmp-todo").write_bytes(b"dst only")
    (dst / "sub" / ".hsync-tmp-1f-3-abcdef01").write_bytes(b"hsync's, half written")
    (src / "b").write_bytes(b"B")
    ok(hsync("sync", "--state", state, "--no-delete", src, dst))
    assert (dst / "sub" / ".hsync-tmp-todo").read_bytes() == b"dst only"
    assert not (dst / "sub" / ".hsync-tmp-1f-3-abcdef01").exists()
    assert (dst / "b").read_bytes() == b"B"
    # a user's file is deleted like any other only where deleting is allowed
    (src / ".hsync-tmp-notes").unlink()
    ok(hsync("sync", "--state", state, src, dst))
    assert not (dst / ".hsync-tmp-notes").exists() and not (dst / "sub/.hsync-tmp-todo").exists()


# -- 5. one run per pair at a time ----------------------------------------------------------
def _watching(src: Path, dst: Path, state: Path) -> subprocess.Popen[bytes]:
    """``hsync watch`` of the pair, once it holds the pair's lock."""
    p = subprocess.Popen([hsync_bin(), "watch", "--state", str(state), str(src), str(dst)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        locks = list(state.parent.glob(f"{state.name}.lock-*"))
        if locks and locks[0].read_text().strip() == str(p.pid):
            return p
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the watch never took the pair's lock")


def test_a_second_run_of_a_pair_exits_2_naming_the_holder(tmp_path: Path) -> None:
    src, dst, state = build(tmp_path / "s", {"a": b"A"}), tmp_path / "d", tmp_path / "h.sqlite"
    watch = _watching(src, dst, state)
    try:
        r = hsync("sync", "--state", state, src, dst)
        assert_bad_input(r, str(dst), rf"pid {watch.pid}\b")
        # --wait-lock waits for the holder to end, then syncs
        (src / "b").write_bytes(b"B")
        waiting = subprocess.Popen(
            [hsync_bin(), "sync", "--wait-lock", "--state", str(state), str(src), str(dst)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        assert waiting.poll() is None, "did not wait for the lock"
    finally:
        watch.terminate()
        watch.wait(30)
    assert waiting.wait(60) == 0, waiting.stderr.read() if waiting.stderr else ""
    assert (dst / "b").read_bytes() == b"B"
    # a dry run and a diff take no lock (they write nothing)
    watch = _watching(src, dst, state)
    try:
        ok(hsync("sync", "-n", "--state", state, src, dst))
        ok(hsync("diff", "--state", state, src, dst))
    finally:
        watch.terminate()
        watch.wait(30)


# -- 4. a fault of the whole destination ----------------------------------------------------
@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_read_only_destination_is_one_line_and_exit_2(tmp_path: Path, small_mount: Path) -> None:
    src = build(tmp_path / "s", {f"d{i}/f{j}": b"x" for i in range(8) for j in range(8)})
    dst, state = small_mount / "dst", tmp_path / "h.sqlite"
    ok(hsync("sync", "--state", state, src, dst))
    for i in range(8):
        (src / f"d{i}" / "new").write_bytes(b"new")
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    r = hsync("sync", "--state", state, src, dst)
    assert_bad_input(r, str(dst), "read-only")
    assert str(src) not in r.err


def test_a_full_destination_is_one_line_and_exit_2(tmp_path: Path, small_mount: Path) -> None:
    src = build(tmp_path / "s", {f"f{i}": os.urandom(300_000) for i in range(8)})
    r = hsync("sync", "--state", tmp_path / "h.sqlite", src, small_mount / "dst")
    assert_bad_input(r, str(small_mount / "dst"), "full|no space")


# -- 3. a destination that vanishes is never recreated --------------------------------------
def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_unmounted_destination_is_not_refilled_by_a_watch(
    tmp_path: Path, small_mount: Path
) -> None:
    src = build(tmp_path / "s", {"a": b"A"})
    state, status = tmp_path / "h.sqlite", tmp_path / "status.json"
    watch = subprocess.Popen(
        [hsync_bin(), "watch", "--state", str(state), "--status-file", str(status),
         str(src), str(small_mount)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    unmounted = False
    try:
        _wait_for(lambda: (small_mount / "a").exists(), "the first sync")
        subprocess.run(["umount", str(small_mount)], check=True)
        unmounted = True
        (src / "b").write_bytes(b"B")

        def waiting() -> bool:
            try:
                return json.loads(status.read_text())["pairs"][0]["state"] == "waiting"
            except (OSError, ValueError, KeyError, IndexError):
                return False

        _wait_for(waiting, "the pair to wait for its destination")
        time.sleep(1.5)
        assert list(small_mount.iterdir()) == []  # the mount point stays empty
        assert watch.poll() is None
    finally:
        watch.terminate()
        watch.wait(30)
        if not unmounted:
            subprocess.run(["umount", "-l", str(small_mount)], check=False)


def test_a_sync_never_recreates_a_destination_it_synced_before(
    tmp_path: Path, small_mount: Path
) -> None:
    src, state = build(tmp_path / "s", {"a": b"A"}), tmp_path / "h.sqlite"
    dst = small_mount / "backup"  # created by the first run: its parent exists
    ok(hsync("sync", "--state", state, src, dst))
    subprocess.run(["umount", str(small_mount)], check=True)
    r = hsync("sync", "--state", state, src, dst)
    assert_bad_input(r, str(dst), "gone|unmounted")
    assert not dst.exists()
    dst.mkdir()  # the user's way to say: sync into it again
    ok(hsync("sync", "--state", state, src, dst))
    assert (dst / "a").read_bytes() == b"A"


# -- 6. daemon --check ----------------------------------------------------------------------
def _config(tmp_path: Path, pairs: list[tuple[str, str]]) -> Path:
    cfg = tmp_path / "hsync.toml"
    cfg.write_text("".join(
        f'[[pair]]\nname = "p{i}"\nsource = "{s}"\ndestination = "{d}"\n\n'
        for i, (s, d) in enumerate(pairs)
    ))
    return cfg


def test_daemon_check_refuses_a_destination_inside_its_source(tmp_path: Path) -> None:
    src = build(tmp_path / "s", {"a": b"A"})
    r = hsync("daemon", "--check", "--config", _config(tmp_path, [(str(src), f"{src}/bak")]))
    assert_bad_input(r, f"{src}/bak", "inside")


def test_daemon_check_refuses_two_pairs_with_one_destination(tmp_path: Path) -> None:
    a, b = build(tmp_path / "a", {"x": b"1"}), build(tmp_path / "b", {"y": b"2"})
    dst = tmp_path / "d"
    r = hsync("daemon", "--check", "--config",
              _config(tmp_path, [(str(a), str(dst)), (str(b), f"{dst}/")]))
    assert_bad_input(r, str(dst), "one destination")
    r = hsync("daemon", "--check", "--config",
              _config(tmp_path, [(str(a), str(dst)), (str(b), f"{dst}/sub")]))
    assert_bad_input(r, str(dst), "one destination")


def test_daemon_check_warns_on_a_missing_source(tmp_path: Path) -> None:
    r = ok(hsync("daemon", "--check", "--config",
                 _config(tmp_path, [(str(tmp_path / "nope"), str(tmp_path / "d"))])))
    assert "warning" in r.err and str(tmp_path / "nope") in r.err


def test_example_config_and_unit_agree(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    unit = (root / "examples" / "hsync.service").read_text()
    r = ok(hsync("daemon", "--check", "--config", root / "examples" / "hsync.toml"))
    assert "example" in r.out
    cfg = (root / "examples" / "hsync.toml").read_text()
    assert 'status_file = "/run/hsync/' in cfg and 'state = "/var/lib/hsync/' in cfg
    assert "RuntimeDirectory=hsync" in unit and "StateDirectory=hsync" in unit
    assert "User=" in unit and "root" in unit


def test_a_watch_keeps_what_a_foreign_destination_holds(tmp_path: Path) -> None:
    """The watch's first comparison follows the first-sync rule, and says so in its log."""
    src = build(tmp_path / "s", {"a": b"A"})
    dst = build(tmp_path / "d", {"taxes/2023.pdf": b"T"})
    watch = subprocess.Popen(
        [hsync_bin(), "watch", "--state", str(tmp_path / "h.sqlite"), str(src), str(dst)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: (dst / "a").exists(), "the first round")
        (src / "b").write_bytes(b"B")
        _wait_for(lambda: (dst / "b").exists(), "a later round")
        assert (dst / "taxes" / "2023.pdf").read_bytes() == b"T"
    finally:
        watch.terminate()
        _, err = watch.communicate(timeout=30)
    assert b"--delete would remove them" in err
