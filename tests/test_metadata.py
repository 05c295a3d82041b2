"""Owner, group, set-id bits, extended attributes and POSIX ACLs (issue "A faithful
replica", section 2): kept by default as ``rsync -aAX`` keeps them, compared by every
comparison (sync, diff, verify, a watch), each with its opt-out.

Real files as root (owners, trusted.*, ACLs need it); ACLs are set with ``setfacl``
(Debian's ``acl``, installed by tests/run.sh)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from treeutil import build, hsync_bin

from hsync.backend import id_map

HSYNC = hsync_bin()

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


def _xattrs_supported(path: Path) -> bool:
    try:
        os.getxattr(path, "user.hsync-test-probe")
    except OSError as e:
        return e.errno not in (95,)  # ENOTSUP: no user.* here
    return True


def _hsync(*args: str | Path, ok: int | None = 0) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([HSYNC, *map(str, args)], capture_output=True, text=True)
    if ok is not None:
        assert run.returncode == ok, (run.returncode, run.stdout, run.stderr)
    return run


def _sync(src: Path, dst: Path, tmp: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return _hsync("sync", src, dst, "--state", tmp / "history.sqlite", *more)


def _diff(src: Path, dst: Path, tmp: Path, *more: str, ok: int | None = None) -> str:
    return _hsync("diff", src, dst, "--state", tmp / "history.sqlite", *more, ok=ok).stdout


def _owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def _acl(path: Path) -> str:
    out = subprocess.run(["getfacl", "-cpn", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return "".join(sorted(out.splitlines(keepends=True)))


needs_acl_tools = pytest.mark.skipif(
    shutil.which("setfacl") is None, reason="setfacl is not installed (Debian: acl)"
)


# -- owner and group ---------------------------------------------------------------------------
@root_only
def test_owner_and_group_are_kept_and_a_chown_alone_is_synced(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a.txt": b"a", "d/b.txt": b"b", "d/l": b"x"})
    os.unlink(src / "d" / "l")
    os.symlink("b.txt", src / "d" / "l")
    os.chown(src / "a.txt", 1234, 5678)
    os.chown(src / "d", 2222, 3333)
    os.chown(src / "d" / "l", 4444, 5555, follow_symlinks=False)
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path)
    assert _owner(dst / "a.txt") == (1234, 5678)
    assert _owner(dst / "d") == (2222, 3333)
    assert _owner(dst / "d" / "l") == (4444, 5555)  # lchown, not the target's
    assert _owner(dst / "d" / "b.txt") == (0, 0)

    # a chown alone: diff shows a metadata update, sync applies it, copying nothing
    os.chown(src / "d" / "b.txt", 999, -1)
    os.chown(src / "d" / "l", 4445, -1, follow_symlinks=False)
    plan = _diff(src, dst, tmp_path, ok=1)
    assert "update file    d/b.txt (metadata)" in plan, plan
    assert "d/l" in plan, plan
    verify = _hsync("verify", src, dst, ok=1).stdout
    assert "owner 999 != 0" in verify, verify
    run = _sync(src, dst, tmp_path)
    assert "0 B copied" in run.stdout, run.stdout
    assert _owner(dst / "d" / "b.txt") == (999, 0)
    assert _owner(dst / "d" / "l") == (4445, 5555)
    assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"

    # a change on the destination alone is repaired
    os.chown(dst / "a.txt", 0, 0)
    _sync(src, dst, tmp_path)
    assert _owner(dst / "a.txt") == (1234, 5678)


@root_only
def test_no_owner_and_no_group_are_neither_kept_nor_compared(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a.txt": b"a"})
    os.chown(src / "a.txt", 1234, 5678)
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path, "--no-owner")
    assert _owner(dst / "a.txt") == (0, 5678)
    _sync(src, dst, tmp_path, "--no-group", "-o")
    assert _owner(dst / "a.txt") == (1234, 5678)
    os.chown(src / "a.txt", 1, 1)
    assert _diff(src, dst, tmp_path, "--no-owner", "--no-group", ok=0).strip() == "in sync"
    assert "a.txt" in _diff(src, dst, tmp_path, ok=1)


def test_ids_map_by_name_where_both_sides_know_it() -> None:
    src = {0: "root", 1000: "alice", 1001: "bob", 1500: "onlyhere"}
    dst = {0: "root", 1001: "alice", 1000: "carol", 2000: "bob"}
    # alice and bob move to the destination's ids; root is the same; an id without a
    # name on the destination stays as it is (rsync's fallback)
    assert dict(id_map(src, dst)) == {1000: 1001, 1001: 2000}


# -- set-id bits ---------------------------------------------------------------------------------
@root_only
def test_a_set_uid_file_never_becomes_set_uid_root_without_its_owner(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"bin/tool": b"#!/bin/sh\n", "bin/gtool": b"#!/bin/sh\n",
                                   "shared": b""})
    os.unlink(src / "shared")
    os.mkdir(src / "shared")
    for name in ("tool", "gtool"):
        os.chown(src / "bin" / name, 1234, 5678)
    os.chmod(src / "bin" / "tool", 0o4755)
    os.chmod(src / "bin" / "gtool", 0o2755)
    os.chown(src / "shared", 1234, 5678)
    os.chmod(src / "shared", 0o2775)  # a directory's set-gid bit only says what it hands down
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path, "--no-owner")
    st = os.lstat(dst / "bin" / "tool")
    assert st.st_uid == 0
    assert not st.st_mode & stat.S_ISUID, oct(st.st_mode)  # not a set-uid-root binary
    assert _mode(dst / "bin" / "tool") == 0o755
    assert _mode(dst / "bin" / "gtool") == 0o2755  # its group is kept: so is set-gid
    assert _mode(dst / "shared") == 0o2775
    # stable: nothing more to do, run after run
    assert _diff(src, dst, tmp_path, "--no-owner", ok=0).strip() == "in sync"
    run = _sync(src, dst, tmp_path, "--no-owner")
    assert run.stdout.startswith("0 created, 0 updated"), run.stdout

    _sync(src, dst, tmp_path, "--no-owner", "--no-group")
    assert _mode(dst / "bin" / "gtool") == 0o755
    assert _diff(src, dst, tmp_path, "--no-owner", "--no-group", ok=0).strip() == "in sync"

    # the owner kept again: the bits come back with it
    _sync(src, dst, tmp_path)
    assert _owner(dst / "bin" / "tool") == (1234, 5678)
    assert _mode(dst / "bin" / "tool") == 0o4755


@root_only
def test_a_set_uid_file_copied_over_by_no_owner_loses_its_bit(tmp_path: Path) -> None:
    """A destination file that kept its set-uid bit with its owner, then synced without
    owners: the destination's file is updated to the mode a sync can keep."""
    src = build(tmp_path / "src", {"tool": b"#!/bin/sh\n"})
    os.chown(src / "tool", 1234, 5678)
    os.chmod(src / "tool", 0o4755)
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path)
    assert _mode(dst / "tool") == 0o4755
    plan = _diff(src, dst, tmp_path, "--no-owner", ok=1)
    assert "tool (metadata)" in plan, plan
    _sync(src, dst, tmp_path, "--no-owner")
    assert _mode(dst / "tool") == 0o755


# -- extended attributes and ACLs -------------------------------------------------------------
@root_only
def test_xattrs_round_trip_and_a_change_alone_is_synced(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a.txt": b"a", "d/b.txt": b"b"})
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no user.* extended attributes on this filesystem")
    os.setxattr(src / "a.txt", "user.mime_type", b"text/plain")
    os.setxattr(src / "a.txt", "user.empty", b"")
    os.setxattr(src / "a.txt", "trusted.origin", b"\x00\x01binary")
    os.setxattr(src / "d", "user.dir", b"yes")
    os.symlink("a.txt", src / "l")
    os.setxattr(src / "l", "trusted.link", b"on the link", follow_symlinks=False)
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path)
    assert _xattrs(dst / "a.txt") == _xattrs(src / "a.txt")
    assert _xattrs(dst / "d") == {"user.dir": b"yes"}
    assert _xattrs(dst / "l") == {"trusted.link": b"on the link"}

    # an attribute changed, one added, one removed: nothing else
    os.setxattr(src / "a.txt", "user.mime_type", b"text/markdown")
    os.removexattr(src / "a.txt", "user.empty")
    os.setxattr(src / "d" / "b.txt", "user.new", b"1")
    plan = _diff(src, dst, tmp_path, ok=1)
    assert "update file    a.txt (metadata)" in plan, plan
    assert "update file    d/b.txt (metadata)" in plan, plan
    verify = _hsync("verify", src, dst, ok=1).stdout
    assert "xattrs user.empty, user.mime_type" in verify, verify
    run = _sync(src, dst, tmp_path)
    assert "0 B copied" in run.stdout
    assert _xattrs(dst / "a.txt") == _xattrs(src / "a.txt")
    assert _xattrs(dst / "d" / "b.txt") == {"user.new": b"1"}

    # repaired after a change on the destination: changed, added, removed
    os.setxattr(dst / "a.txt", "user.mime_type", b"tampered")
    os.setxattr(dst / "d" / "b.txt", "user.extra", b"x")
    os.removexattr(dst / "d", "user.dir")
    _sync(src, dst, tmp_path)
    for rel in ("a.txt", "d", "d/b.txt", "l"):
        assert _xattrs(dst / rel) == _xattrs(src / rel), rel
    assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"

    # --no-xattrs: neither copied nor compared
    os.setxattr(src / "a.txt", "user.mime_type", b"ignored")
    assert _diff(src, dst, tmp_path, "--no-xattrs", ok=0).strip() == "in sync"
    fresh = tmp_path / "fresh"
    _hsync("sync", src, fresh, "--state", "", "--no-xattrs")
    assert _xattrs(fresh / "a.txt") == {}


@root_only
@needs_acl_tools
def test_acls_round_trip_and_are_repaired(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"d/a.txt": b"a", "b.txt": b"b"})
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no extended attributes on this filesystem")
    subprocess.run(["setfacl", "-m", "u:1234:rwx,g:5678:r", str(src / "b.txt")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rx", str(src / "d")], check=True)
    subprocess.run(["setfacl", "-m", "u:4321:r", str(src / "d" / "a.txt")], check=True)
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path)
    for rel in ("b.txt", "d", "d/a.txt"):
        assert _acl(dst / rel) == _acl(src / rel), rel
    assert "default:user:1234:r-x" in _acl(dst / "d")

    # an ACL changed on the source alone
    subprocess.run(["setfacl", "-m", "u:1234:r", str(src / "b.txt")], check=True)
    plan = _diff(src, dst, tmp_path, ok=1)
    assert "update file    b.txt (metadata)" in plan, plan
    assert "ACL access" in _hsync("verify", src, dst, ok=1).stdout
    _sync(src, dst, tmp_path)
    assert _acl(dst / "b.txt") == _acl(src / "b.txt")

    # repaired after a change on the destination
    subprocess.run(["setfacl", "-b", str(dst / "d" / "a.txt")], check=True)
    subprocess.run(["setfacl", "-k", str(dst / "d")], check=True)
    _sync(src, dst, tmp_path)
    assert _acl(dst / "d" / "a.txt") == _acl(src / "d" / "a.txt")
    assert _acl(dst / "d") == _acl(src / "d")
    assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"

    # --no-acls: neither copied nor compared
    subprocess.run(["setfacl", "-b", str(src / "b.txt")], check=True)
    assert _diff(src, dst, tmp_path, "--no-acls", ok=0).strip() == "in sync"


@contextlib.contextmanager
def _ramfs(path: Path) -> Iterator[Path]:
    """A ramfs mount (a filesystem without extended attributes) at ``path``."""
    path.mkdir()
    run = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(path)], capture_output=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here: {run.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@root_only
@needs_acl_tools
def test_a_destination_without_xattrs_warns_once_and_the_rest_syncs(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {f"f{i}": b"x" for i in range(20)})
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no extended attributes on this filesystem")
    for i in range(20):
        os.setxattr(src / f"f{i}", "user.tag", b"t")
    subprocess.run(["setfacl", "-m", "u:1234:r", str(src / "f0")], check=True)
    os.chown(src / "f1", 1234, 5678)
    with _ramfs(tmp_path / "ram") as ram:
        dst = ram / "dst"
        first = _sync(src, dst, tmp_path)
        lines = [ln for ln in first.stderr.splitlines() if "cannot keep" in ln]
        assert len(lines) == 1, first.stderr  # one warning, not one per file
        assert str(dst) in lines[0]
        assert "user.*" in lines[0] and "ACL" in lines[0], lines[0]
        assert sorted(os.listdir(dst)) == sorted(f"f{i}" for i in range(20))
        assert _owner(dst / "f1") == (1234, 5678)  # what it can hold is kept
        # and no later run tries again
        second = _sync(src, dst, tmp_path)
        assert second.stdout.startswith("0 created, 0 updated"), second.stdout
        assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"


# -- the watcher -----------------------------------------------------------------------------------
@root_only
def test_a_watch_syncs_a_chown_and_an_xattr_change_alone(tmp_path: Path) -> None:
    from test_watch import converge, running, wait_for

    src = build(tmp_path / "src", {"a.txt": b"a", "d/b.txt": b"b"})
    dst = tmp_path / "dst"
    with running(src, dst, tmp_path):
        converge(src, dst)
        os.chown(src / "a.txt", 1234, 5678)
        wait_for(lambda: _owner(dst / "a.txt") == (1234, 5678), what="the chown synced")
        if _xattrs_supported(src):
            os.setxattr(src / "d" / "b.txt", "user.k", b"v")
            wait_for(lambda: _xattrs(dst / "d" / "b.txt") == {"user.k": b"v"},
                     what="the xattr synced")
        os.chown(src / "d", 42, 43)
        wait_for(lambda: _owner(dst / "d") == (42, 43), what="the directory's chown synced")
    # made while no watch ran: the quick pass against the history finds it
    os.chown(src / "d" / "b.txt", 77, 78)
    with running(src, dst, tmp_path):
        wait_for(lambda: _owner(dst / "d" / "b.txt") == (77, 78), what="the quick pass")


# -- the cost: attributes read only where ctime moved ---------------------------------------
def _since_now(state: Path) -> None:
    """As if the last sync that left the pair equal began now (no margin)."""
    import sqlite3
    import time

    db = sqlite3.connect(state)
    with db:
        (value,) = db.execute("SELECT value FROM meta WHERE name LIKE 'since:%'").fetchone()
        sig = value.partition(" ")[2]
        db.execute("UPDATE meta SET value=? WHERE name LIKE 'since:%'",
                   (f"{time.time_ns()} {sig}",))
    db.close()
    time.sleep(0.05)


@root_only
def test_a_resync_reads_attributes_only_where_a_ctime_moved(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"a", "b": b"b", "c": b"c"})
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no extended attributes on this filesystem")
    for name in ("a", "b", "c"):
        os.setxattr(src / name, "user.k", name.encode())
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path)
    os.setxattr(src / "c", "user.k", b"changed before")  # its ctime: before the mark
    _since_now(tmp_path / "history.sqlite")
    os.setxattr(dst / "a", "user.k", b"tampered")  # after it: read, on this side
    os.setxattr(src / "b", "user.k", b"new")  # and on this one
    plan = _diff(src, dst, tmp_path, ok=1)
    assert "update file    a (metadata)" in plan and "update file    b (metadata)" in plan
    # c's ctime did not move since the mark: its attributes were not read on either side
    assert "c" not in plan.split(), plan
    _sync(src, dst, tmp_path)
    assert _xattrs(dst / "a") == {"user.k": b"a"}  # the source's, read in full to repair
    assert _xattrs(dst / "b") == {"user.k": b"new"}
    # a comparison without the history (verify) reads everything
    assert "metadata c  (xattrs user.k)" in _hsync("verify", src, dst, ok=1).stdout


def test_daemon_pair_keys_for_metadata(tmp_path: Path) -> None:
    from hsync.daemon import pair_config
    from hsync.errors import UsageError

    base = {"source": str(tmp_path), "destination": str(tmp_path / "d")}
    o = pair_config("pair 1", {**base, "owner": False, "acls": False, "numeric_ids": True}).options
    assert (o.owner, o.group, o.xattrs, o.acls, o.numeric_ids) == (False, True, True, False, True)
    o = pair_config("pair 1", base).options
    assert (o.owner, o.group, o.xattrs, o.acls, o.numeric_ids) == (True, True, True, True, False)
    with pytest.raises(UsageError, match="xattrs"):
        pair_config("pair 1", {**base, "xattrs": "yes"})


# -- FIFOs and device nodes ---------------------------------------------------------------------
@root_only
@needs_acl_tools
def test_fifos_and_devices_keep_owner_group_acl_and_never_escalate(tmp_path: Path) -> None:
    """A FIFO and a device node made by the destination's apply (``mknod``) get their
    owner, group and attributes as a file does; a set-id bit only with its owner."""
    src = build(tmp_path / "src", {"f": b"x"})
    os.mkfifo(src / "pipe")
    os.mknod(src / "null", 0o660 | stat.S_IFCHR, os.makedev(1, 3))
    os.chown(src / "pipe", 1234, 5678)
    os.chmod(src / "pipe", 0o4640)
    os.chown(src / "null", 2222, 3333)
    os.chmod(src / "null", 0o660)
    subprocess.run(["setfacl", "-m", "u:4321:r", str(src / "pipe")], check=True)
    os.setxattr(src / "null", "trusted.hsync-test", b"dev", follow_symlinks=False)
    dst = tmp_path / "dst"
    _sync(src, dst, tmp_path)
    assert _owner(dst / "pipe") == (1234, 5678)
    assert _owner(dst / "null") == (2222, 3333)
    assert stat.S_ISFIFO(os.lstat(dst / "pipe").st_mode)
    assert _mode(dst / "pipe") == 0o4640  # its owner is kept: so is the bit
    assert _acl(dst / "pipe") == _acl(src / "pipe")
    assert "user:4321:r--" in _acl(dst / "pipe")
    assert _xattrs(dst / "null").get("trusted.hsync-test") == b"dev"
    assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"

    # a chown alone is synced (the node is made again with it)
    os.chown(src / "null", 2223, -1)
    assert "null" in _diff(src, dst, tmp_path, ok=1)
    _sync(src, dst, tmp_path)
    assert _owner(dst / "null") == (2223, 3333)
    assert os.lstat(dst / "null").st_rdev == os.makedev(1, 3)

    # without owners, a set-uid FIFO is never root's, and the pair stays in sync
    other = tmp_path / "other"
    other.mkdir()
    dst2 = tmp_path / "dst2"
    _sync(src, dst2, other, "--no-owner")
    st = os.lstat(dst2 / "pipe")
    assert st.st_uid == 0 and st.st_gid == 5678
    assert not st.st_mode & stat.S_ISUID, oct(st.st_mode)
    assert _diff(src, dst2, other, "--no-owner", ok=0).strip() == "in sync"
    run = _sync(src, dst2, other, "--no-owner")
    assert run.stdout.startswith("0 created, 0 updated"), run.stdout


@root_only
def test_the_resync_after_a_sync_that_wrote_reads_back_nothing_it_wrote(tmp_path: Path) -> None:
    """The nodes a sync wrote on the destination have ctimes after that sync began: the
    next run must not read their attributes back (each directory it wrote into would
    differ from the source's unread one, and be listed and compared node by node), and
    must still find an attribute changed there by someone else afterwards."""
    import json
    import time

    files = {f"d{i}/e{j}/f{k}": f"{i}{j}{k}".encode()
             for i in range(4) for j in range(3) for k in range(10)}
    src = build(tmp_path / "src", files)
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no extended attributes on this filesystem")
    for rel in files:
        os.setxattr(src / rel, "user.k", rel.encode())
    time.sleep(2.2)  # the source's ctimes: before the mark of the syncs below
    dst = tmp_path / "dst"

    def sync() -> dict[str, object]:
        report = json.loads(_sync(src, dst, tmp_path, "--json").stdout)
        assert not report["errors"], report
        return report

    sync()  # the initial copy wrote all 120 files and 16 directories
    again = sync()
    assert again["compared"] == {"source": 1, "destination": 1}, again["compared"]

    # a sync that wrote a file in every directory (as after deletes on the destination)
    for i in range(4):
        for j in range(3):
            (dst / f"d{i}/e{j}/f0").unlink()
    restored = sync()
    assert restored["counts"].get("create") == 12, restored["counts"]
    assert _xattrs(dst / "d3/e2/f0") == {"user.k": b"d3/e2/f0"}
    again = sync()
    assert again["compared"] == {"source": 1, "destination": 1}, again["compared"]
    assert not any(again["counts"].values()), again["counts"]

    # someone changes an attribute on the destination (of a file the sync wrote, and
    # one it did not): found and repaired by the next run
    os.setxattr(dst / "d1/e1/f0", "user.k", b"tampered")
    os.setxattr(dst / "d2/e0/f5", "user.k", b"tampered too")
    repaired = sync()
    assert repaired["counts"].get("update") == 2, repaired["counts"]
    assert _xattrs(dst / "d1/e1/f0") == {"user.k": b"d1/e1/f0"}
    assert _xattrs(dst / "d2/e0/f5") == {"user.k": b"d2/e0/f5"}
    assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"


def test_the_marks_are_kept_per_side_and_an_older_single_mark_is_both(tmp_path: Path) -> None:
    """The history keeps a mark per side; a mark an older version wrote (one time)
    is read as both, and other attributes or an incomplete history have none."""
    from hsync.history import History

    h = History(str(tmp_path / "h.sqlite"), "file:///a", "file:///b")
    h.db.execute("UPDATE pairs SET complete=1")
    h.db.commit()
    h.set_meta_since(100, 250, "user;acls=1")
    assert h.meta_since("user;acls=1") == (100, 250)
    assert h.meta_since("user,trusted;acls=1") == (0, 0)
    h.db.execute("UPDATE meta SET value='180 user;acls=1' WHERE name LIKE 'since:%'")
    h.db.commit()
    assert h.meta_since("user;acls=1") == (180, 180)
    h.forget()
    assert h.meta_since("user;acls=1") == (0, 0)
    h.close()


def test_a_local_filesystem_stamping_ns_lags_a_tick_others_two_seconds(tmp_path: Path) -> None:
    from hsync.backends.fs.meta import COARSE_NS, TICK_NS, ctime_lag_ns, tick_ns

    fine = os.lstat(tmp_path).st_ctime_ns % 10**9 != 0
    assert ctime_lag_ns(str(tmp_path)) == (tick_ns() if fine else COARSE_NS)
    assert 0 < tick_ns() <= TICK_NS
    assert ctime_lag_ns("/proc") == COARSE_NS  # not a filesystem of this host's disks
    # a root not there yet (an initial copy's): the filesystem it will be created on
    assert ctime_lag_ns(str(tmp_path / "gone" / "deeper")) == ctime_lag_ns(str(tmp_path))
    assert ctime_lag_ns("/proc/hsync-not-there") == COARSE_NS


@root_only
@needs_acl_tools
def test_new_files_get_exactly_the_source_attributes_where_the_directory_hands_some_down(
    tmp_path: Path,
) -> None:
    """A copy lists a new file's attributes only where its directory could hand some
    down (``meta.inherits_none``): under a destination directory with a default ACL,
    the ACL every new file inherits is removed again (the source's files have none),
    and a file's own attributes land whether its directory has any or not."""
    src = build(tmp_path / "src", {f"d/f{i}": b"x" for i in range(10)} | {"top": b"t"})
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no extended attributes on this filesystem")
    os.setxattr(src / "d" / "f3", "user.tag", b"three")
    os.setxattr(src / "top", "user.tag", b"top")
    inherits, plain = tmp_path / "inherits", tmp_path / "plain"
    inherits.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(inherits)], check=True)
    for dst in (inherits, plain):
        _sync(src, dst, tmp_path)
        for rel in ("top", *(f"d/f{i}" for i in range(10))):
            # no inherited ACL left behind, the source's own attributes there
            assert _xattrs(dst / rel) == _xattrs(src / rel), (dst, rel)
        assert _diff(src, dst, tmp_path, ok=0).strip() == "in sync"


def test_a_destination_attribute_changed_right_after_a_sync_that_changed_it_is_seen(
    tmp_path: Path,
) -> None:
    """A sync that changed the destination marks it (``mark_equal``): what changes there
    after the run returned has a ctime past the mark and is read by the next sync. The
    mark is after the run's last write, and the run returns a tick of the coarse clock
    after the mark (``tick_ns``; less the time the history's record and the flush took
    since the last write): an attribute set on the destination at once, over and over,
    is still seen."""
    from hsync.oneshot import sync_once
    from hsync.options import Options

    src = build(tmp_path / "src", {f"d/f{i}": b"%d" % i for i in range(12)})
    if not _xattrs_supported(src):
        pytest.skip(f"{src}: no extended attributes on this filesystem")
    dst = tmp_path / "dst"
    options = Options(state=str(tmp_path / "history.sqlite"))
    assert sync_once(str(src), str(dst), options).ok
    for i in range(6):
        (src / "d" / f"f{i}").unlink()  # a change: the run marks the destination
        report = sync_once(str(src), str(dst), options)
        assert report.ok and report.counts["delete"] == 1, report
        os.setxattr(dst / "d" / "f11", "user.k", b"set at once")  # right after it
        again = sync_once(str(src), str(dst), options)
        assert again.ok and _xattrs(dst / "d" / "f11") == {}, (i, again.counts)
