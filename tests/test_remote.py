"""Remote trees over ssh (SPEC 12), against a real sshd on 127.0.0.1 (``tests/sshd.py``).

Both "hosts" are this machine: a test compares the two trees directly, and can kill
the ssh client or the agent (processes it started) in the middle of a batch.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treeutil import DIR, File, Link, assert_same_tree, build, hsync_bin

import hsync
from hsync.backend import open_endpoint
from hsync.errors import BackendError, HsyncError
from hsync.model import Node, Op

HOST = "127.0.0.1"


def run(*args: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hsync_bin(), *(os.fspath(a) for a in args)], capture_output=True, text=True,
        errors="surrogateescape", stdin=subprocess.DEVNULL, timeout=timeout, check=False,
    )


def tree_spec(n: int = 5) -> dict[str, Any]:
    spec: dict[str, Any] = {"d": DIR, "d/sub": DIR, "link": Link("d/f0")}
    for i in range(n):
        spec[f"d/f{i}"] = File(f"content {i}\n".encode() * (i + 1), mode=0o640)
        spec[f"d/sub/g{i}"] = os.urandom(1000 * i)
    spec["big"] = os.urandom(3 << 20)  # crosses in chunks
    return spec


def test_push_then_resync_and_rename(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", tree_spec())
    dst = tmp_path / "dst"
    r = run("sync", "--json", src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert_same_tree(src, dst)
    assert report["counts"]["create"] == 15  # the root too
    # content crossed the link once, compressed where it compresses
    wire = report["bytes_on_wire"]
    assert wire["sent"] >= 3 << 20 and wire["received"] > 0
    # a no-op re-sync: nothing planned, little on the wire
    r = run("sync", "--json", src, f"{HOST}:{dst}")
    again = json.loads(r.stdout)
    assert r.returncode == 0 and sum(again["counts"].values()) == 0
    assert again["bytes_on_wire"]["sent"] < 64 << 10
    # a directory renamed on the source is renamed on the far side: no content crosses
    os.rename(src / "d", src / "renamed")
    r = run("sync", "--json", "--stats", src, f"{HOST}:{dst}")
    moved = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert moved["counts"]["move"] == 1 and moved["bytes_copied"] == 0
    assert moved["bytes_on_wire"]["sent"] < 64 << 10
    assert_same_tree(src, dst)


def test_pull_and_both_remote(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", tree_spec())
    pulled = tmp_path / "pulled"
    r = run("sync", "--json", f"{HOST}:{src}", pulled)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_on_wire"]["received"] >= 3 << 20
    assert_same_tree(src, pulled)
    # both remote: the content is proxied through this process
    both = tmp_path / "both"
    r = run("sync", f"ssh://{HOST}{src}", f"ssh://root@{HOST}{both}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, both)
    # a change pulled again: only that file
    (src / "d" / "f1").write_bytes(b"changed")
    r = run("sync", "--json", f"{HOST}:{src}", pulled)
    report = json.loads(r.stdout)
    assert report["counts"]["update"] >= 1 and report["bytes_copied"] == len(b"changed")
    assert_same_tree(src, pulled)


def test_diff_dry_run_excludes_max_delete(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1", "b/c": b"2", "skip.tmp": b"3"})
    dst = tmp_path / "dst"
    far = f"{HOST}:{dst}"
    r = run("diff", "--json", src, far)
    assert r.returncode == 1
    assert {op["path"] for op in json.loads(r.stdout)} == {"", "a", "b", "b/c", "skip.tmp"}
    r = run("sync", "-n", "--json", src, far)
    assert r.returncode == 0 and not dst.exists()
    assert len(json.loads(r.stdout)["plan"]) == 5  # the root too
    r = run("sync", "--exclude", "*.tmp", src, far)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(dst)) == ["a", "b"]
    assert run("diff", "--exclude", "*.tmp", src, far).returncode == 0
    (src / "a").unlink()
    (src / "b" / "c").unlink()
    r = run("sync", "--max-delete", "1", "--exclude", "*.tmp", src, far)
    assert r.returncode != 0 and (dst / "a").exists()
    assert "max-delete" in r.stderr or "--max-delete" in r.stderr


def test_verify_hashes_on_each_side(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"same", "b": b"0123456789"})
    dst = tmp_path / "dst"
    assert run("sync", src, f"{HOST}:{dst}").returncode == 0
    r = run("verify", src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stdout + r.stderr
    st = os.stat(dst / "b")
    (dst / "b").write_bytes(b"9123456789")  # same size and mtime: only a hash tells
    os.utime(dst / "b", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run("verify", src, f"{HOST}:{dst}")
    assert r.returncode == 1 and "b" in r.stdout


def test_verify_reaches_the_far_tree_as_told(remote: Any, tmp_path: Path) -> None:
    """``verify``'s ``--remote-hsync`` and ``-e`` are used, as ``sync``'s are."""
    src = build(tmp_path / "src", {"a": b"1"})
    dst = tmp_path / "dst"
    assert run("sync", src, f"{HOST}:{dst}").returncode == 0
    r = run("verify", "--remote-hsync", "/nonexistent/hsync", src, f"{HOST}:{dst}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert HOST in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr
    r = run("verify", "-e", "ssh -o BatchMode=yes -o ConnectTimeout=5 -p 1", src,
            f"{HOST}:{dst}")
    assert r.returncode == 2 and HOST in r.stderr, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert run("verify", src, f"{HOST}:{dst}").returncode == 0


def test_missing_remote_hsync_is_one_line(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    r = run("sync", "--remote-hsync", "/nonexistent/hsync", src, f"{HOST}:{tmp_path / 'd'}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert HOST in lines[0] and "not found" in lines[0] and "Traceback" not in r.stderr


def test_unreachable_host_is_one_line(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    r = run("sync", "-e", "ssh -o BatchMode=yes -o ConnectTimeout=5 -p 1", src,
            f"{HOST}:{tmp_path / 'd'}")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and HOST in r.stderr
    assert not (tmp_path / "d").exists()


def test_a_link_that_never_started_says_why_not_that_it_was_lost(remote: Any,
                                                                  tmp_path: Path) -> None:
    """ssh could not connect (a closed port): a request asked once its process had
    ended said "connection lost (end of stream)", a ``LinkLost`` (which a pull or a
    watch retries as if it had been up), instead of what ssh said; which of the two a
    run printed depended on timing."""
    from sshd import _free_port

    from hsync.errors import LinkLost
    from hsync.remote import Reach
    from hsync.remote.transport import Link
    from hsync.remote.url import parse

    closed = _free_port()
    try:  # sending the hello may fail already (ssh gone): that says why too
        link = Link(parse(f"ssh://{HOST}:{closed}{tmp_path}"), Reach())
        link.proc.wait(timeout=30)
        link._reader.join(timeout=30)  # it saw the end of the stream: the link is broken
        link.call("open", str(tmp_path), "source", [])
    except BackendError as e:
        failed = e
    assert not isinstance(failed, LinkLost)
    message = str(failed)
    assert message.startswith(f"{HOST}: ssh failed: ") and f"port {closed}" in message
    assert "lost" not in message


def test_a_batch_failing_there_as_a_whole_names_the_host_and_the_tree(remote: Any,
                                                                       tmp_path: Path) -> None:
    """A far batch that failed as a whole with an OSError (here: the destination's root
    cannot be made under /proc) said only ``OSError: No such file or directory``."""
    src = build(tmp_path / "src", {"a": b"1"})
    far = "/proc/hsync-cannot-be-made"
    r = run("sync", src, f"{HOST}:{far}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"hsync: error: {HOST}: {far}: the batch failed there: No such file or directory"
    ], r.stderr


def test_host_colon_path_is_not_a_local_directory(remote: Any, tmp_path: Path) -> None:
    """rsync's ``host:path``: before, this made a local directory named ``host:path``."""
    src = build(tmp_path / "src", {"a": b"1"})
    os.chdir(tmp_path)
    r = run("sync", src, f"root@{HOST}:{tmp_path / 'far'}")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / f"root@{HOST}:{tmp_path / 'far'}").exists()
    assert (tmp_path / "far" / "a").read_bytes() == b"1"
    # ./a:b stays a local path
    r = run("sync", src, "./x:y")
    assert r.returncode == 0 and (tmp_path / "x:y" / "a").exists()


def test_the_location_s_port_and_user_win_over_the_rsh_s(remote: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``$HSYNC_RSH`` (or ``-e``) with a ``-p`` and a ``-l`` for most hosts, and a
    location that names its own: ssh takes the first ``-p`` and ``-l`` it is given, so
    they were the rsh's, and the run reached another port (another machine behind the
    same address) or logged in as another user."""
    from sshd import _free_port

    src = build(tmp_path / "src", {"a": b"1"})
    closed = _free_port()  # nothing listens there
    argv = shlex.split(remote.rsh)
    argv[argv.index("-p") + 1] = str(closed)
    monkeypatch.setenv("HSYNC_RSH", shlex.join([*argv, "-l", "no-such-user-hsync"]))
    far = tmp_path / "far"
    r = run("sync", src, f"ssh://{remote.user}@{HOST}:{remote.port}{far}")
    assert r.returncode == 0, r.stderr
    assert (far / "a").read_bytes() == b"1"
    r = run("sync", f"{remote.user}@{HOST}:{far}", tmp_path / "back")  # rsync's form
    assert r.returncode == 2 and f"port {closed}" in r.stderr, r.stderr  # no port of its own
    # the other way round: the location's port is closed, the rsh's is the sshd's
    monkeypatch.setenv("HSYNC_RSH", remote.rsh)
    r = run("sync", src, f"ssh://{HOST}:{closed}{tmp_path / 'elsewhere'}")
    assert r.returncode == 2 and f"port {closed}" in r.stderr, r.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_awkward_remote_path_and_command(remote: Any, tmp_path: Path) -> None:
    """Spaces, quotes, ``;`` and a name that is not UTF-8, in the remote path and in
    the remote command (``--remote-hsync``): nothing reaches a shell unquoted."""
    weird = "we ird 'q' \"d\" ;touch PWNED; $(touch PWNED2)"
    src = build(tmp_path / "src", {"plain": b"1", os.fsdecode(b"bad-\xff\xfe"): b"2",
                                   f"{weird}/inner": b"3"})
    far = tmp_path / weird / "dst"
    far.parent.mkdir()
    bindir = tmp_path / "bin dir; echo PWNED3 >&2"
    bindir.mkdir()
    (bindir / "hsync it").symlink_to(hsync_bin())
    r = run("sync", "--remote-hsync", bindir / "hsync it", src, f"{HOST}:{far}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, far)
    assert os.path.exists(os.path.join(os.fsencode(far), b"bad-\xff\xfe"))
    home = Path(os.path.expanduser("~"))
    for marker in ("PWNED", "PWNED2"):
        assert not (home / marker).exists() and not (tmp_path / marker).exists()
    assert "PWNED3" not in r.stderr
    r = run("sync", "--json", f"ssh://{HOST}{far}", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, tmp_path / "back")


@pytest.fixture
def restricted(remote: Any, tmp_path: Path) -> str:
    """An ssh command whose key may only run ``hsync agent --restrict ROOT``."""
    root = tmp_path / "allowed"
    root.mkdir()
    key = tmp_path / "restricted_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    command = f"hsync agent --restrict {shlex.quote(str(root))}"
    remote.add_key(f'command="{command}",restrict {(tmp_path / "restricted_key.pub").read_text()}')
    argv = shlex.split(remote.rsh)
    argv[argv.index("-i") + 1] = str(key)
    return shlex.join(argv)


def test_restricted_agent_refuses_outside_its_root(restricted: str, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    outside = tmp_path / "elsewhere"
    r = run("sync", "-e", restricted, src, f"{HOST}:{outside}")
    assert r.returncode == 2
    assert "outside" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not outside.exists()
    r = run("sync", "-e", restricted, src, f"{HOST}:{tmp_path / 'allowed' / '..' / 'x'}")
    assert r.returncode == 2 and not (tmp_path / "x").exists()
    # relative to its root, and inside it: served
    r = run("sync", "-e", restricted, src, f"{HOST}:inside")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "allowed" / "inside" / "a").read_bytes() == b"1"


def test_api_and_endpoint_features(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1", "d/e": b"2"})
    far = f"{HOST}:{src}"
    ep = open_endpoint(far, role="source")
    try:
        names = set(ep.features.names())
        # what the far fs backend offers, forwarded
        assert {"digest_scanning", "bulk_hashing", "watchable", "sorted_walk",
                "streaming", "prefetching", "linked"} <= names
        assert ep.backend.canonical_url() == f"ssh://{HOST}{src}"
        assert ep.backend.stat(("d", "e")) is not None
    finally:
        ep.close()
    with pytest.raises(HsyncError, match="no host name"):
        hsync.sync(str(src), "ssh:///x")


def test_a_pull_tells_each_file_as_it_arrives(remote: Any, tmp_path: Path) -> None:
    """``--progress`` counts a file's bytes when the apply tells it done (``on_done``). A
    pull's copies were told only at their batch's barrier (a batch holds up to 1 GiB):
    over a slow link the bar stood at 0 B until all of them had arrived."""
    from hsync.model import FILE
    from hsync.oneshot import sync_once

    n = 12
    src = build(tmp_path / "src", {f"f{i:02}": os.urandom(4 << 20) for i in range(n)})
    dst = tmp_path / "dst"
    arrived: list[int] = []  # the files published when each was told

    def done(op: Any) -> None:
        if op.kind == FILE:
            arrived.append(sum(1 for name in os.listdir(dst) if name.startswith("f")))

    # as ``hsync sync --progress`` runs it: the plan first (the bar's total), then the apply
    report = sync_once(f"{HOST}:{src}", str(dst), on_planned=lambda plan: None, on_done=done)
    assert not report.problems and len(arrived) == n
    assert_same_tree(src, dst)
    assert arrived[0] < n, arrived  # the first was told before the last had arrived


# -- faults ------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _agents_of(sshd_pid: int) -> list[int]:
    """The agents the test's sshd runs (its descendants running ``hsync agent``)."""
    found, todo = [], [sshd_pid]
    while todo:
        pid = todo.pop()
        for child in _children(pid):
            args = _cmdline(child)
            if "agent" in args and any(a.endswith("hsync") for a in args):
                found.append(child)
            todo.append(child)
    return found


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def test_compression_on_the_link(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"zeros": b"\0" * (2 << 20), "text": b"hsync " * 100_000})
    r = run("sync", "--json", src, f"{HOST}:{tmp_path / 'z'}")
    assert r.returncode == 0, r.stderr
    compressed = json.loads(r.stdout)["bytes_on_wire"]["sent"]
    r = run("sync", "--json", "--no-compress", src, f"{HOST}:{tmp_path / 'plain'}")
    assert r.returncode == 0, r.stderr
    plain = json.loads(r.stdout)["bytes_on_wire"]["sent"]
    assert plain > (2 << 20) + 600_000 > 20 * compressed, (plain, compressed)
    assert_same_tree(src, tmp_path / "z")
    assert_same_tree(src, tmp_path / "plain")


def test_a_big_file_is_spooled_not_held(remote: Any, tmp_path: Path) -> None:
    """A file bigger than the in-memory limit crosses both ways (spooled to a temporary
    file on the receiving side), and arrives whole."""
    from hsync.remote.protocol import MEMFD_MAX

    src = build(tmp_path / "src", {"big": os.urandom(MEMFD_MAX + (3 << 20)), "small": b"s"})
    r = run("sync", "--no-compress", src, f"{HOST}:{tmp_path / 'pushed'}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, tmp_path / "pushed")
    r = run("sync", f"{HOST}:{tmp_path / 'pushed'}", tmp_path / "pulled")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, tmp_path / "pulled")


def test_values_cross_the_link_whole_and_a_far_journal_of_protocol_4_still_reads() -> None:
    """What a batch carries (ops, their nodes with an identity beyond 64 bits and a
    node's attributes, a problem) reads back equal, beside maps that are data (a map of
    names, an empty one); and an answer a protocol-4 agent kept in its journal (a value
    class as an extension holding a packed map) still reads after an upgrade: a batch
    resumed from it is answered from it."""
    import msgpack

    from hsync.model import CREATE, FILE, Node, Op, Problem
    from hsync.remote.protocol import _EXT_VALUE, pack, unpack

    node = Node(kind=FILE, mode=0o100600, size=3, mtime_ns=5, identity=(2049 << 128) | 9,
                data=(("user.a", frozenset({b"x"})),))
    op = Op(op=CREATE, kind=FILE, key=("d", "f"), node=node, content=True)
    problem = Problem(("d", "f"), "it changed", op=CREATE)
    value = {"ops": [op, op], "problems": [problem], "names": {"a b": 1, "": 2}, "empty": {}}
    got = unpack(pack(value))
    assert got["ops"] == (op, op) and got["ops"][0].node.identity == node.identity
    assert got["problems"] == (problem,)
    assert got["names"] == {"a b": 1, "": 2} and got["empty"] == {}

    old = msgpack.packb({"done": [0], "problems": [msgpack.ExtType(_EXT_VALUE, msgpack.packb(
        ["Problem", {"key": ["d", "f"], "message": "it changed", "op": CREATE}]))]},
        use_bin_type=True)
    assert unpack(old)["problems"] == (problem,)


_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                 min_size=1, max_size=8)
_keys = st.lists(_names, min_size=1, max_size=4).map(tuple)
_nodes = st.builds(
    Node, kind=st.sampled_from(("file", "dir", "symlink")),
    mode=st.integers(0, 0o177777), size=st.integers(0, 1 << 62),
    mtime_ns=st.integers(-(1 << 63), (1 << 63) - 1),
    target=st.none() | _names,
    identity=st.none() | st.integers(-(1 << 200), 1 << 200) | _names,
    data=st.none() | st.tuples(st.integers(0, 1 << 32), st.integers(0, 1 << 32), st.none())
    | st.tuples(st.tuples(_names, st.frozensets(st.binary(max_size=4), max_size=3))))
_ops = st.builds(
    Op, op=st.sampled_from(("create", "update", "move", "delete")),
    kind=st.sampled_from(("file", "dir", "symlink")), key=_keys, to=st.none() | _keys,
    node=st.none() | _nodes, old=st.none() | _nodes, content=st.booleans(),
    temporary=st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(_ops, max_size=20))
def test_a_batch_s_ops_cross_as_rows_and_read_back_equal(ops: list[Op]) -> None:
    """An apply's ops cross as rows of plain values (protocol 7), not as maps of their
    fields: every field reads back equal, an identity beyond 64 bits or of text
    included (identities are not compared by a node's equality: checked one by one)."""
    from hsync.remote.protocol import decode_ops, encode_ops, pack, unpack

    got = decode_ops(unpack(pack(encode_ops(ops))))
    assert got == ops
    for a, b in zip(got, ops, strict=True):
        for x, y in ((a.node, b.node), (a.old, b.old)):
            assert (x.identity, type(x.identity)) == (y.identity, type(y.identity)) \
                if x is not None and y is not None else x is y is None


CHANGING = """
import os, sys
import hsync.remote.backend as backend
real, left = backend._read_small, [int(os.environ["CHANGES"])]
def read_small(fd, size):
    if left[0] > 0 and os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
        left[0] -= 1  # a writer appends between the file's stat and its read
        with open(f"/proc/self/fd/{fd}", "ab") as f:
            f.write(b"appended while sent\\n")
    return real(fd, size)
backend._read_small = read_small
from hsync.cli import main
sys.argv = ["hsync", *sys.argv[1:]]
main()
"""


def test_a_small_file_written_while_pushed_is_sent_again(remote: Any, tmp_path: Path) -> None:
    """Small files written between their stat and their read, in a push: the run ends
    with both trees equal, the appended lines there."""
    import sys

    src = build(tmp_path / "src", {"a.log": b"first line\n", "b": b"b" * 100,
                                   "d": DIR, "d/c.log": b"c" * 5000})
    dst = tmp_path / "dst"
    r = subprocess.run(
        [sys.executable, "-c", CHANGING, "sync", "--json", src, f"{HOST}:{dst}"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180,
        env=dict(os.environ, CHANGES="2"), check=False)
    assert r.returncode == 0, r.stderr
    assert (src / "a.log").read_bytes().endswith(b"appended while sent\n")
    assert_same_tree(src, dst)


def test_a_small_file_read_at_once_tells_it_changed(tmp_path: Path) -> None:
    """A small file crosses as one item: read with one ``read`` of a byte more than its
    size, its end says it changed where it grew or was rewritten after its stat (the
    far side then publishes nothing of it), else gives its mtime."""
    from hsync.remote.backend import _end, _read_small

    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    fd = os.open(f, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        data = _read_small(fd, before.st_size)
        assert data == b"x" * 10
        assert _end(before, os.fstat(fd), len(data)) == [before.st_mtime_ns, None]
        with open(f, "ab") as w:  # grew after its stat
            w.write(b"y")
        os.lseek(fd, 0, os.SEEK_SET)
        data = _read_small(fd, before.st_size)
        assert data == b"x" * 10 + b"y"
        assert _end(before, os.fstat(fd), len(data))[1] == \
            "the source file changed while it was read"
        os.utime(f, ns=(1, 1))  # the same size, another mtime
        os.lseek(fd, 0, os.SEEK_SET)
        again = os.fstat(fd)
        assert _end(before, again, before.st_size)[0] == 0
    finally:
        os.close(fd)


# -- files with holes ------------------------------------------------------------------------
def test_a_file_with_holes_keeps_its_holes_both_ways_and_sends_its_data_only(
        remote: Any, tmp_path: Path) -> None:
    """A 64 MiB disk image holding 8 KiB, a 16 MiB file that is all hole and a small
    file with a hole before its data: pushed, then pulled back, each has its content
    and allocates about what the source does; without compression, what crosses is
    about the data, not the sizes. ``--no-sparse`` (rsync without ``-S``) writes the holes there."""
    from test_kinds import allocated, holes_supported, sparse_file

    src = tmp_path / "src"
    src.mkdir()
    if not holes_supported(src):
        pytest.skip(f"{src}: this filesystem keeps no holes")
    MiB = 1 << 20
    sparse_file(src / "disk.img", 64 * MiB, [(MiB, b"\xaa" * 4096), (40 * MiB, b"\x55" * 4096)])
    sparse_file(src / "all-hole", 16 * MiB, [])
    sparse_file(src / "small", 200_000, [(150_000, b"tail" * 1000)])
    r = run("sync", "--json", "--no-compress", src, f"{HOST}:{tmp_path / 'dst'}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_on_wire"]["sent"] < 2 * MiB
    assert_same_tree(src, tmp_path / "dst")
    for name in ("disk.img", "all-hole", "small"):
        assert allocated(tmp_path / "dst" / name) <= allocated(src / name) + 64 * 1024, name

    r = run("sync", "--json", "--no-compress", f"{HOST}:{tmp_path / 'dst'}",
            tmp_path / "pulled")  # and back: a pull keeps them too
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_on_wire"]["received"] < 2 * MiB
    assert_same_tree(src, tmp_path / "pulled")
    for name in ("disk.img", "all-hole", "small"):
        assert allocated(tmp_path / "pulled" / name) <= allocated(src / name) + 64 * 1024, name

    r = run("sync", "--no-sparse", src, f"{HOST}:{tmp_path / 'dense'}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, tmp_path / "dense")
    assert allocated(tmp_path / "dense" / "disk.img") >= 64 * MiB
