"""The filesystem backend called directly (no core): identities, cancellation, the kind
of a problem, how two trees overlap."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from treeutil import build

from hsync.backend import ApplyOptions
from hsync.backends.fs import FsBackend
from hsync.backends.fs import copy as fs_copy
from hsync.backends.fs.posix import birth_time
from hsync.cancel import Cancel
from hsync.errors import Cancelled
from hsync.model import Key, Op


def _identities(b: FsBackend) -> dict[str, dict[Key, object]]:
    """Every node's identity as each reader of the backend sees it."""
    full = {k: r[5] for k, r in b.scan().nodes.rows.items()}  # type: ignore[attr-defined]
    walked = {k: r[5] for k, r in b.walk_sorted() if r is not None and len(r) == 7}
    walked[()] = full[()]  # the walk yields what is below the root
    stats: dict[Key, object] = {}
    for k in full:
        node = b.stat(k)
        assert node is not None
        stats[k] = node.identity
    child = b.digest_scan(background=True)
    try:
        digest = {k: r[5] for k, r in child.rows((), [()]).items()}
    finally:
        child.close()
    local = b.digest_scan()
    in_process = {k: r[5] for k, r in local.snapshot().nodes.rows.items()}  # type: ignore[attr-defined]
    subtrees: dict[Key, object] = {}
    for k in full:
        rows = b.scan(k).nodes.rows  # type: ignore[attr-defined]
        subtrees[k] = rows[k][5]
    return {"scan": full, "walk_sorted": walked, "stat": stats, "digest_scan": digest,
            "digest_scan here": in_process, "scan(subtree)": subtrees}


def test_every_reader_gives_a_node_the_same_identity(tmp_path: Path) -> None:
    build(tmp_path / "t", {"a/f": b"1", "a/b/g": b"2", "h": b"3"})
    os.symlink("h", tmp_path / "t" / "l")
    seen = _identities(FsBackend(str(tmp_path / "t")))
    assert len(seen["scan"]) == 7
    for reader, ids in seen.items():
        assert ids == seen["scan"], reader
    ident = seen["scan"][("h",)]
    assert isinstance(ident, int)
    assert ident & (2**64 - 1) == os.lstat(tmp_path / "t" / "h").st_ino  # the inode
    fd = os.open(tmp_path / "t", os.O_RDONLY)
    try:
        assert ident >> 64 == birth_time("h", fd) > 0  # the birth time above the inode
    finally:
        os.close(fd)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at ``t/mnt`` (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mnt = tmp_path / "t" / "mnt"
    mnt.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_identities_agree_below_a_mount_point(tmp_path: Path, mounted: Path) -> None:
    """Regression: four readers computed identities four ways below a mount point (a
    subtree scan against the subtree's device, stat with the bare inode number)."""
    build(tmp_path / "t", {"top": b"0"})
    build(mounted, {"x": b"1", "d/y": b"2"})
    seen = _identities(FsBackend(str(tmp_path / "t")))
    for reader, ids in seen.items():
        assert ids == seen["scan"], reader
    st = os.lstat(mounted / "d" / "y")
    below = seen["scan"][("mnt", "d", "y")]
    assert isinstance(below, int)
    assert below >> 128 == st.st_dev and below & (2**64 - 1) == st.st_ino
    top = seen["scan"][("top",)]
    assert isinstance(top, int)
    assert top >> 128 == 0 and top & (2**64 - 1) == os.lstat(tmp_path / "t" / "top").st_ino


def _creates(src: FsBackend) -> tuple[list[Op], object]:
    snap = src.scan()
    ops = [Op(op="create", kind=snap.nodes[k].kind, key=k, node=snap.nodes[k])
           for k in sorted(snap.nodes) if k]  # parents first
    return ops, snap


def test_a_batch_cancelled_before_it_runs_returns_every_op_not_run(tmp_path: Path) -> None:
    src = FsBackend(str(build(tmp_path / "src", {"a/f": b"1", "g": b"2"})))
    dst = tmp_path / "dst"
    dst.mkdir()
    ops, snap = _creates(src)
    cancel = Cancel()
    cancel.cancel()
    result = FsBackend(str(dst), role="destination").apply_batch(
        ops, src, snap, cancel=cancel  # type: ignore[arg-type]
    )
    assert result.done == []
    assert [(p.key, p.op, p.kind) for p in result.problems] == [
        (op.key, "create", "cancelled") for op in ops
    ]
    assert all(p.message.endswith("not run: cancelled") for p in result.problems)
    assert os.listdir(dst) == []


def test_a_batch_cancelled_midway_stops_between_ops(tmp_path: Path) -> None:
    src = FsBackend(str(build(tmp_path / "src", {"a/f": b"1", "b/g": b"2", "c/h": b"3"})))
    ops, snap = _creates(src)
    (tmp_path / "dst").mkdir()
    cancel = Cancel()

    def on_done(op: Op) -> None:
        if op.key == ("a",):
            cancel.cancel()

    result = FsBackend(str(tmp_path / "dst"), role="destination").apply_batch(
        ops, src, snap, options=ApplyOptions(), cancel=cancel, on_done=on_done  # type: ignore[arg-type]
    )
    assert [op.key for op in result.done] == [("a",)], result.problems
    assert {p.key for p in result.problems} == {op.key for op in ops[1:]}
    assert {p.kind for p in result.problems} == {"cancelled"}


def test_a_scan_with_a_cancelled_token_raises_cancelled(tmp_path: Path) -> None:
    b = FsBackend(str(build(tmp_path / "t", {"a/f": b"1"})))
    cancel = Cancel()
    cancel.cancel()
    with pytest.raises(Cancelled):
        b.scan(cancel=cancel)
    with pytest.raises(Cancelled):
        list(b.walk_sorted(cancel=cancel))


def test_a_source_file_that_changes_mid_copy_is_a_retry_problem_of_its_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src_root = build(tmp_path / "src", {"f": b"before"})
    src = FsBackend(str(src_root))
    ops, snap = _creates(src)
    real = fs_copy.copy_fd

    def copy_then_grow(fd_in: int, fd_out: int, size: int) -> int:
        n = real(fd_in, fd_out, size)
        with open(src_root / "f", "ab") as f:  # a writer appends meanwhile
            f.write(b" and after")
        return n

    monkeypatch.setattr(fs_copy, "copy_fd", copy_then_grow)
    dst = tmp_path / "dst"
    dst.mkdir()
    result = FsBackend(str(dst), role="destination").apply_batch(ops, src, snap)  # type: ignore[arg-type]
    assert result.done == []
    [problem] = result.problems
    assert (problem.key, problem.op, problem.kind) == (("f",), "create", "retry")
    assert problem.retry
    assert os.listdir(dst) == []  # neither published nor a temporary left behind


def test_relation(tmp_path: Path) -> None:
    (tmp_path / "a" / "in").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link")
    a = FsBackend(str(tmp_path / "a"))
    assert a.relation(str(tmp_path / "a")) == "same"
    assert a.relation(f"file://{tmp_path}/a/") == "same"
    assert a.relation(str(tmp_path / "link")) == "same"  # through a symlink
    assert a.relation(str(tmp_path / "a" / "in")) == "inside"
    assert a.relation(str(tmp_path / "link" / "in" / "new")) == "inside"
    assert a.relation(str(tmp_path)) == "contains"
    assert FsBackend(str(tmp_path / "link" / "in")).relation(str(tmp_path / "a")) == "contains"
    assert a.relation(str(tmp_path / "b")) is None
    assert a.relation(str(tmp_path / "ab")) is None  # a prefix of the name is not a parent
    assert a.relation("ldap://localhost/dc=example,dc=com") is None


def test_the_backend_pickles_by_reopening(tmp_path: Path) -> None:
    root = build(tmp_path / "t", {"f": b"x"})
    b = FsBackend(str(root), role="destination")
    again = pickle.loads(pickle.dumps(b))
    assert (again.url, again.role, again.root) == (b.url, b.role, b.root)
    [(digest, n, look)] = again.hash_many([("f",)])
    assert digest == b.digest(("f",)) and n == 1 and look == b.look(("f",))


def test_the_sorted_walk_and_the_stream_name_special_files_in_place(tmp_path: Path) -> None:
    root = build(tmp_path / "t", {"b/f": b"1", "c": b"2"})
    os.mknod(root / "a-sock", 0o600 | stat.S_IFSOCK)  # a socket: never synced
    os.mkfifo(root / "b-fifo")  # a FIFO: a node (rsync -D)
    b = FsBackend(str(root))
    walked = list(b.walk_sorted())
    assert [k for k, _ in walked] == [("a-sock",), ("b",), ("b", "f"), ("b-fifo",), ("c",)]
    assert walked[0][1] == ("socket",)
    assert len(walked[1][1] or ()) == 7  # a directory's row, nothing more
    fifo = walked[3][1]
    assert fifo is not None and fifo[0] == "special" and stat.S_ISFIFO(fifo[1])
    streamed = dict(b.stream())
    assert streamed[("a-sock",)] == "socket"
    assert streamed[("b-fifo",)] == b.stat(("b-fifo",))
    assert streamed[("b", "f")] == b.stat(("b", "f"))
    assert list(FsBackend(str(tmp_path / "absent")).stream()) == [((), None)]


@pytest.mark.parametrize("background", [False, True])
def test_a_digest_scan_hands_stale_temporaries_to_the_next_apply(
    tmp_path: Path, background: bool
) -> None:
    root = build(tmp_path / "t", {"d/f": b"1"})
    (root / "d" / ".hsync-tmp-1-2-0a0b0c0d").write_bytes(b"half")
    b = FsBackend(str(root), role="destination")
    scan = b.digest_scan(background=background)
    try:
        summary = scan.summary()
        assert summary.count == 3 and set(summary.digests) == {(), ("d",)}
    finally:
        scan.close()
    result = b.apply_batch([], b, b.scan(("d", "f")))
    assert result.problems == []
    assert sorted(os.listdir(root / "d")) == ["f"]


def test_a_name_no_directory_can_hold_is_absent(tmp_path: Path) -> None:
    b = FsBackend(str(build(tmp_path / "t", {"d/f": b"1"})))
    for key in [("..", "t"), ("d", ".."), ("d/f",), ("",), ("d", "f\0")]:
        assert b.stat(key) is None, key
        assert len(b.scan(key)) == 0, key


def test_rounds_of_scan_diff_plan_apply_converge(tmp_path: Path) -> None:
    """The backend alone under the pure core: creates, updates, a type change, a
    symlink retargeted, deletes; each round leaves the trees equal and the next
    plans nothing."""
    from treeutil import File, Link, assert_same_tree

    from hsync.differ import diff
    from hsync.model import Snapshot
    from hsync.planner import plan

    src = build(tmp_path / "src", {"a/x": b"1", "a/y": File(b"22", mode=0o600),
                                   "a/sub/z": b"3", "b/w": b"4", "l": Link("a/x")})
    s = FsBackend(str(src))
    d = FsBackend(str(tmp_path / "dst"), role="destination")

    def round_() -> dict[str, int]:
        ss = s.scan()
        ds = d.scan() if d.root_id() is not None else Snapshot()
        p = plan(diff(ss, ds), ds)
        result = d.apply_batch(p.ops, s, ss)
        assert result.problems == []
        assert len(result.done) == len(p.ops)
        assert_same_tree(src, tmp_path / "dst")
        return p.counts()

    assert round_()["create"] == 9
    assert sum(round_().values()) == 0
    (src / "a" / "x").write_bytes(b"changed")
    (src / "a" / "y").unlink()
    (src / "a" / "y").mkdir()
    (src / "a" / "y" / "in").write_bytes(b"6")
    (src / "b" / "w").unlink()
    (src / "b").rmdir()
    (src / "l").unlink()
    os.symlink("elsewhere", src / "l")
    assert round_()["delete"] >= 3
    assert sum(round_().values()) == 0


@pytest.mark.parametrize("name", [
    ".hsync-tmp-1f-0-0a1b2c3d", ".hsync-tmp-", ".hsync-tmp-a-b-1234567",
    ".hsync-tmp-A-b-12345678", ".hsync-tmp--b-12345678", ".hsync-tmp-a-b-12345678-",
    ".hsync-tmp-" + "a" * 17 + "-b-12345678", ".hsync-tmp-a-b-1234567g",
    "x.hsync-tmp-a-b-12345678", ".hsync-tmp-a-b-12345678\n", ".hsync-tmp-a-b-１２345678",
    ".hsync-tmp-a-b-c-12345678", "notes.txt",
])  # fmt: skip
def test_is_tmp_name_is_the_form_tmp_name_makes(name: str) -> None:
    """``is_tmp_name`` (checked without ``re``: a sync does not import it) accepts
    exactly the names of the form ``tmp_name`` makes: the prefix, then hex fields of
    1-16, 1-16 and 8 lowercase digits."""
    import re

    from hsync.backends.fs.posix import is_tmp_name, tmp_name

    form = re.compile(r"\.hsync-tmp-[0-9a-f]{1,16}-[0-9a-f]{1,16}-[0-9a-f]{8}")
    assert is_tmp_name(name) == (form.fullmatch(name) is not None)
    assert is_tmp_name(tmp_name())


class _Arriving:
    """A content source as the far side of a push is one: each file's content arrives
    over the link and waits in a ``Spool`` made near the destination (``near``, as the
    agent makes it from the destination's ``Spooling``). ``spooled`` keeps the inode
    each big file waited in."""

    def __init__(self, src: Path, near: str | None) -> None:
        self.src, self.near = src, near
        self.spooled: dict[Key, int] = {}

    def read(self, key: Key) -> object:
        from hsync.remote.protocol import Spool

        path = self.src.joinpath(*key)
        spool = Spool(self.near)
        data = path.read_bytes()
        for i in range(0, len(data), 1 << 20):
            spool.add(data[i:i + (1 << 20)])
        if spool.fd is not None:
            self.spooled[key] = os.fstat(spool.fd).st_ino
        return spool.file(path.stat().st_mtime_ns)


def _push(src: Path, dst: Path, near: str | None) -> tuple[_Arriving, list[object]]:
    ops, snap = _creates(FsBackend(str(src)))
    arriving = _Arriving(src, near)
    result = FsBackend(str(dst), role="destination").apply_batch(
        ops, arriving, snap  # type: ignore[arg-type]
    )
    return arriving, list(result.problems)


BIG = 9 << 20  # over MEMFD_MAX: spooled in a file, not held in memory


def _tmp_names(root: Path) -> list[str]:
    from hsync.backends.fs.posix import is_tmp_name

    return [n for _, _, names in os.walk(root) for n in names if is_tmp_name(n)]


def test_a_big_file_spooled_near_the_destination_is_linked_in_not_copied(
    tmp_path: Path,
) -> None:
    """A big file pushed is written once on the far side: the unnamed file it arrived
    in, made on the destination's filesystem, becomes the published file."""
    src = build(tmp_path / "src", {"a/big": os.urandom(BIG), "a/small": b"s"})
    os.chmod(src / "a" / "big", 0o640)
    dst = tmp_path / "dst"
    dst.mkdir()
    arriving, problems = _push(src, dst, str(dst))
    assert problems == []
    assert (dst / "a" / "big").read_bytes() == (src / "a" / "big").read_bytes()
    st, want = os.lstat(dst / "a" / "big"), os.lstat(src / "a" / "big")
    assert st.st_ino == arriving.spooled[("a", "big")]  # the spooled file itself
    assert (st.st_mode, st.st_mtime_ns, st.st_nlink) == (want.st_mode, want.st_mtime_ns, 1)
    assert (dst / "a" / "small").read_bytes() == b"s"
    assert _tmp_names(dst) == []


def test_a_big_file_spooled_on_another_filesystem_is_copied(
    tmp_path: Path, mounted: Path
) -> None:
    """The destination's subdirectory is another filesystem (a tmpfs mounted there): the
    spooled file cannot be linked across, so it is copied, whole and under its name."""
    src = build(tmp_path / "src", {"mnt/big": os.urandom(BIG)})
    dst = tmp_path / "t"
    arriving, problems = _push(src, dst, str(dst))
    assert problems == []
    assert (mounted / "big").read_bytes() == (src / "mnt" / "big").read_bytes()
    assert os.lstat(mounted / "big").st_ino != arriving.spooled[("mnt", "big")]
    assert _tmp_names(dst) == []


def test_a_big_file_gets_what_its_directory_hands_down_not_what_the_spool_had(
    tmp_path: Path,
) -> None:
    """A file published in a directory with a default ACL gets that ACL, and in a
    set-group-id directory that directory's group, as a file created there does; a file
    spooled at the destination's root has neither, so there it is copied, not linked."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    src = build(tmp_path / "src", {"acl/big": os.urandom(BIG), "sgid/big": os.urandom(BIG)})
    dst = tmp_path / "dst"
    (dst / "acl").mkdir(parents=True)
    (dst / "sgid").mkdir()
    if subprocess.run(["setfacl", "-d", "-m", "u:1234:r", str(dst / "acl")]).returncode:
        pytest.skip("setfacl is missing or ACLs are off here")
    os.chown(dst / "sgid", 0, 4321)
    os.chmod(dst / "sgid", 0o2755)
    ops, snap = _creates(FsBackend(str(src)))
    ops = [op for op in ops if len(op.key) == 2]  # the directories are there
    arriving = _Arriving(src, str(dst))
    result = FsBackend(str(dst), role="destination").apply_batch(
        ops, arriving, snap  # type: ignore[arg-type]
    )
    assert not result.problems, result.problems
    for d in ("acl", "sgid"):
        assert (dst / d / "big").read_bytes() == (src / d / "big").read_bytes()
        assert os.lstat(dst / d / "big").st_ino != arriving.spooled[(d, "big")]
    assert os.getxattr(dst / "acl" / "big", "system.posix_acl_access")
    assert os.lstat(dst / "sgid" / "big").st_gid == 4321


class _Watching:
    """Content that writes itself (``WritesItself``) and, while it is written, records
    what the destination directory shows."""

    def __init__(self, src: Path, seen: list[list[str]], where: Path) -> None:
        self.src, self.seen, self.where = src, seen, where

    def read(self, key: Key) -> object:
        path = self.src.joinpath(*key)
        data, mtime = path.read_bytes(), path.stat().st_mtime_ns
        seen, where = self.seen, self.where

        class Made:
            size, mtime_ns = len(data), mtime

            def write_into(self, fd: int) -> int:
                os.write(fd, data[: len(data) // 2])
                seen.append(sorted(os.listdir(where)))  # half of it written
                os.write(fd, data[len(data) // 2:])
                return len(data)

            def fileno(self) -> int:
                raise OSError("read as a file")

            def close(self) -> None:
                pass

        return Made()


def _write_watched(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, list[list[str]]]:
    """The files of ``files`` (all in ``d/``) created in ``dst/d`` from content that
    records what ``dst/d`` shows while each is half written."""
    src = build(tmp_path / "src", files)
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    seen: list[list[str]] = []
    ops, snap = _creates(FsBackend(str(src)))
    result = FsBackend(str(dst), role="destination").apply_batch(
        [op for op in ops if op.key != ("d",)], _Watching(src, seen, dst / "d"),  # type: ignore[arg-type]
        snap,
    )
    assert not result.problems, result.problems
    return dst, seen


def test_a_file_being_written_is_seen_under_no_name(tmp_path: Path) -> None:
    """A file is written unnamed and linked in whole: while half of it is written the
    directory shows neither its name nor a temporary one (and a crash then would leave
    nothing behind)."""
    dst, seen = _write_watched(tmp_path, {"d/a": b"a" * 1000, "d/b": b"b" * 2000})
    assert len(seen) == 2
    for listing in seen:  # the other file done, or nothing: not this one, no temporary
        assert len(listing) <= 1 and set(listing) <= {"a", "b"}, listing
    assert sorted(os.listdir(dst / "d")) == ["a", "b"]
    assert (dst / "d" / "b").read_bytes() == b"b" * 2000


def test_where_the_filesystem_makes_no_unnamed_file_a_temporary_name_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback (a network or FUSE filesystem without ``O_TMPFILE``): the file is
    written under a temporary name, renamed once whole; nothing is left of it."""
    from hsync.backends.fs import posix
    from hsync.backends.fs.posix import is_tmp_name

    monkeypatch.setattr(posix, "_NO_UNNAMED", {os.stat(tmp_path).st_dev})
    dst, seen = _write_watched(tmp_path, {"d/a": b"a" * 1000})
    assert len(seen) == 1 and len(seen[0]) == 1 and is_tmp_name(seen[0][0])
    assert os.listdir(dst / "d") == ["a"]
    assert (dst / "d" / "a").read_bytes() == b"a" * 1000


def test_content_for_a_destination_not_made_yet_waits_beside_it(tmp_path: Path) -> None:
    """A push into a new directory: its big files arrive before the first batch makes
    the root, so they wait in its parent (the same filesystem), not in /tmp, and are
    linked in all the same."""
    new = tmp_path / "new"
    dst = FsBackend(str(new), role="destination")
    assert dst.spool_dir() == str(tmp_path)
    new.mkdir()
    assert dst.spool_dir() == str(new)
    assert FsBackend(str(new), role="source").spool_dir() is None


@pytest.mark.parametrize("mode", [0o640, 0o777, 0o4755, 0o2750])
@pytest.mark.parametrize("mtime_ns", [1_700_000_000_123_456_789, -1_500_000_001])
def test_a_small_file_made_in_one_call_is_what_the_long_way_makes(
        tmp_path: Path, mode: int, mtime_ns: int) -> None:
    """A small file a push sends, held whole in memory, is made by one call of the C
    helper (``posix.create_whole``: written unnamed, its mode and times set, linked
    in). It is the file the long way makes (``new_file``, a write, ``_finish``,
    ``link_unnamed``): content, mode bits past the umask and the set-id ones, mtime
    before 1970 too, owner; a name taken is refused and left as it was; without the
    helper nothing is made and the caller goes the long way."""
    from hsync.backends.fs import posix
    from hsync.backends.fs.meta import safe_mode
    from hsync.errors import TargetChanged

    data = os.urandom(3000)
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()
    ffd, sfd = os.open(fast, os.O_RDONLY), os.open(slow, os.O_RDONLY)
    try:
        want = safe_mode(mode, (0, 0, None), True)
        chmod = want if want & ~0o777 or posix.umask() & want else -1
        assert posix.create_whole(ffd, "f", data, want, chmod, mtime_ns)
        out, tmp = posix.new_file(sfd, mode & 0o777)
        try:
            os.write(out, data)
            fs_copy._finish(out, mode, mtime_ns, False, (0, 0, None), (), None)
            posix.link_unnamed(out, "f", sfd, replace=False)
        finally:
            os.close(out)
        assert tmp is None  # unnamed there too
        a, b = os.stat(fast / "f"), os.stat(slow / "f")
        assert (fast / "f").read_bytes() == data
        assert (a.st_mode, a.st_mtime_ns, a.st_atime_ns, a.st_uid, a.st_gid, a.st_nlink) == (
            b.st_mode, b.st_mtime_ns, b.st_atime_ns, b.st_uid, b.st_gid, b.st_nlink)
        assert stat.S_IMODE(a.st_mode) == mode & ~(0 if chmod != -1 else posix.umask())
        assert a.st_mtime_ns == mtime_ns
        with pytest.raises(TargetChanged):  # a create never clobbers
            posix.create_whole(ffd, "f", b"other", want, chmod, mtime_ns)
        assert (fast / "f").read_bytes() == data
        kept = list(posix._CREATE)
        posix._CREATE[:] = [None]  # as where the C helper was not built
        try:
            assert not posix.create_whole(ffd, "g", data, want, chmod, mtime_ns)
        finally:
            posix._CREATE[:] = kept
        assert sorted(os.listdir(fast)) == ["f"]
    finally:
        os.close(ffd)
        os.close(sfd)


def test_a_file_is_read_only_where_no_symlink_leads(tmp_path: Path) -> None:
    """``read`` opens a source file in one openat2 below the root
    (``posix.open_file_beneath``): its content where it is a file; a symlink put in its
    place, or in place of a directory on the way, is not followed (the source changed:
    a retry), even one that leads to a file inside the tree; an absent file is not
    found."""
    from hsync.errors import SourceChanged

    src = build(tmp_path / "src", {"d/f": b"content", "g": b"other", "e/f": b"elsewhere"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"secret")
    b = FsBackend(str(src))
    with b.read(("d", "f")) as f:
        assert f.read() == b"content"
    os.replace(src / "g", src / "g.old")
    os.symlink("d/f", src / "g")  # a symlink in the file's place, to a file inside
    with pytest.raises(SourceChanged):
        b.read(("g",))
    os.rename(src / "e", src / "e.old")
    os.symlink(outside, src / "e")  # a directory on the way swapped for a symlink
    with pytest.raises(SourceChanged):
        b.read(("e", "f"))
    with pytest.raises(FileNotFoundError):
        b.read(("d", "absent"))


def test_a_held_small_file_is_published_in_one_call_only_where_nothing_else_is_set(
        tmp_path: Path) -> None:
    """``publish`` of a small file that crossed a link (held whole in memory) makes it
    with one call of the C helper where only its mode and mtime are to be set; where
    its owner is to change, or it is to be flushed, the long way, which does that.
    Either way the file is the one asked for."""
    from hsync.backends.fs import posix
    from hsync.remote.protocol import Chunks

    try:
        from hsync._walk import create as real
    except ImportError:
        pytest.skip("the C helper was not built")
    calls: list[str] = []

    def counted(dfd: int, name: str, *rest: Any) -> tuple[int, int]:
        calls.append(name)
        return real(dfd, name, *rest)

    me = (os.geteuid(), os.getegid())
    cases = [("plain", (*me, None), False), ("flushed", (*me, None), True)]
    if os.geteuid() == 0:
        cases.append(("chowned", (1234, 4321, None), False))
    kept = list(posix._CREATE)
    posix._CREATE[:] = [counted]
    dfd = os.open(tmp_path, os.O_RDONLY)
    try:
        for name, meta, fsync in cases:
            made = Chunks([b"abc"], 3, 5_000_000_000)
            assert fs_copy.publish(made, dfd, name, 3, 5_000_000_000, 0o640, None, 0,
                                   fsync, False, meta=meta, owner=me) == 3
            st = os.stat(tmp_path / name)
            assert (st.st_uid, st.st_gid) == meta[:2]
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 5_000_000_000)
            assert (tmp_path / name).read_bytes() == b"abc"
    finally:
        posix._CREATE[:] = kept
        os.close(dfd)
    assert calls == ["plain"]


def _write_sizes(write: Any, total: int) -> list[int]:
    """The sizes of the writes ``write(fd)`` makes, seen at a packet socket (each write
    is one message there), until ``total`` bytes arrived."""
    import socket
    import threading

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sizes: list[int] = []

    def drain() -> None:
        got = 0
        while got < total:
            n = len(b.recv(4 << 20))
            if not n:
                break
            sizes.append(n)
            got += n

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write(a.fileno())
    finally:
        a.close()
        reader.join(10)
        b.close()
    return sizes


def test_content_reaches_the_page_cache_in_writes_of_at_most_a_piece() -> None:
    """A file received over a link, held in memory or patched, is written in pieces of
    at most ``WRITE_PIECE``: the kernel gives a write a folio of its size, and on a
    virtual machine whose host took back the free high-order blocks a megabyte's folio
    is faulted in page by page (20x the system time of 64 KiB writes here)."""
    from hsync import delta
    from hsync.backends.fs.posix import WRITE_PIECE
    from hsync.remote.protocol import Chunks

    data = os.urandom(2 * (1 << 20) + 5)
    held = Chunks([data[: 1 << 20], data[1 << 20:]], len(data), 0)
    sizes = _write_sizes(held.write_into, len(data))
    assert sum(sizes) == len(data)
    assert max(sizes) == WRITE_PIECE
    if delta.available():  # librsync's patch: "these bytes" with no old file
        dlt = bytes([0x72, 0x73, 0x02, 0x36, 0x44]) + len(data).to_bytes(8, "big") + data + b"\0"
        empty = os.open(os.devnull, os.O_RDONLY)
        try:
            sizes = _write_sizes(lambda fd: delta.patch(empty, [dlt], fd), len(data))
        finally:
            os.close(empty)
        assert sum(sizes) == len(data)
        assert max(sizes) <= WRITE_PIECE


def test_a_deferred_flush_that_fails_fails_when_it_is_waited_for(tmp_path: Path) -> None:
    """A batch whose flush runs in the background (``defer_durable``: the history is
    recorded, a far agent applies its next batch meanwhile) is durable only when the
    flush succeeded: waiting for one that failed raises its error, as the flush would
    have raised in place (a thread's ``join`` had swallowed it: the batch was
    acknowledged). The filesystem's own flushes fall back to ``sync`` rather than fail;
    an ``fsync`` of a descriptor that is gone fails for real."""
    from hsync.backends.fs.apply import in_background

    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    wait = in_background(lambda: os.fsync(fd))
    with pytest.raises(OSError) as e:
        wait()
    assert e.value.errno == errno.EBADF
    f = tmp_path / "f"
    f.write_bytes(b"x")
    kept = os.open(f, os.O_RDONLY)
    try:
        in_background(lambda: os.fsync(kept))()  # one that succeeds returns
    finally:
        os.close(kept)
