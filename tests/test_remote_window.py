"""A window of batches in flight to a remote destination, and a link that breaks in the
middle of it (SPEC 5 and 12), against a real sshd on 127.0.0.1 (``tests/sshd.py``).

The agent's journal is kept in a directory of the test's (``--remote-hsync`` names a
wrapper that sets ``XDG_STATE_HOME`` for the agent), so a test reads what the far side
applied: each batch of the run's session once, each op once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_faults import small_fs  # noqa: F401 (a fixture)
from test_remote import HOST, _agents_of, _children, _cmdline, _files, run
from treeutil import assert_same_tree, build, hsync_bin

from hsync.journal import unpack
from hsync.options import Options


def _agent_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """(the --remote-hsync wrapper, the agent's state directory)."""
    state = tmp_path / "agent-state"
    state.mkdir()
    wrapper = tmp_path / "hsync-agent.sh"
    wrapper.write_text(f'#!/bin/sh\nXDG_STATE_HOME={state} exec {hsync_bin()} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, state


def _far_journal(state: Path) -> tuple[list[tuple[str, list[Any]]], list[tuple[int, str]]]:
    """The agent's batches ``(state, ops)`` and its acknowledgements ``(seq, state)``."""
    db = sqlite3.connect(state / "hsync" / "agent.journal.sqlite")
    try:
        batches = [(st, unpack(ops)) for st, ops in
                   db.execute("SELECT state, ops FROM batches ORDER BY seq")]
        acks = list(db.execute("SELECT seq, state FROM acks ORDER BY session, seq"))
    finally:
        db.close()
    return batches, acks


def _downable_rsh(tmp_path: Path, remote: Any) -> tuple[Path, Path]:
    """An ``-e`` command that is the real ssh until the returned file exists, then
    fails as an unreachable host does: (the command, that file)."""
    down = tmp_path / "down"
    rsh = tmp_path / "rsh.sh"
    rsh.write_text(f'#!/bin/sh\nif [ -e {down} ]; then echo "ssh: connect to host '
                   f'{HOST}: Connection refused" >&2; exit 255; fi\nexec {remote.rsh} "$@"\n')
    rsh.chmod(0o755)
    return rsh, down


def _spec(n: int = 150, size: int = 200_000) -> dict[str, bytes]:
    return {f"d{i // 50}/f{i}": os.urandom(size) for i in range(n)}


def _start_push(src: Path, dst: Path, wrapper: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [hsync_bin(), "sync", "--json", "--no-compress", "--batch-ops", "20",
         "--window", "3", "--remote-hsync", str(wrapper), *extra, str(src), f"{HOST}:{dst}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cut(proc: subprocess.Popen[str], remote: Any, dst: Path, victim: str,
         before: Any = None, ready: Any = None) -> bool:
    """Kill the ssh client or the agent once some files of the push landed (and
    ``ready()`` says so, where given)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if victim == "ssh":
            targets = [c for c in _children(proc.pid) if _cmdline(c)[:1] == ["ssh"]]
        else:
            targets = _agents_of(remote.proc.pid)
        landed = sum(1 for _, _, names in os.walk(dst) for n in names
                     if ".hsync-tmp" not in n)
        # a batch or so in, most still to come
        if targets and landed >= 25 and (ready is None or ready()):
            if before is not None:
                before()
            os.kill(targets[0], signal.SIGKILL)
            return True
        time.sleep(0.005)
    return False


class LostForGood:
    """A run whose link was cut once some files landed, with the host then
    unreachable for its reconnects (``lost_for_good``): what a test checks after."""

    def __init__(self, tmp_path: Path, remote: Any, start: Any, victim: str,
                 ready: Any = None) -> None:
        self.spec = _spec()
        self.src = build(tmp_path / "src", self.spec)
        self.dst = tmp_path / "dst"
        self.state = tmp_path / "h.sqlite"
        self.rsh, self.down = _downable_rsh(tmp_path, remote)
        self.wrapper, self.far_state = _agent_wrapper(tmp_path)
        proc = start(self.src, self.dst, self.wrapper, "--state", str(self.state),
                     "-e", str(self.rsh))
        killed = _cut(proc, remote, self.dst, victim, before=self.down.touch,
                      ready=None if ready is None else lambda: ready(self.far_state))
        self.out, self.err = proc.communicate(timeout=180)
        self.returncode = proc.returncode
        assert killed, f"the run ended before the {victim} could be killed"

    def landed(self) -> set[str]:
        """The files under their final names, each checked whole (none torn)."""
        out = {n: d for n, d in _files(self.dst).items() if ".hsync-tmp" not in n}
        for name, data in out.items():
            assert data == self.spec[name], name
        return set(out)

    def host_back(self) -> None:
        self.down.unlink()


@pytest.mark.parametrize("victim", ["ssh", "agent"])
def test_link_cut_in_a_window_is_resumed_in_the_run(remote: Any, tmp_path: Path,
                                                     victim: str) -> None:
    spec = _spec()
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"
    wrapper, state = _agent_wrapper(tmp_path)
    proc = _start_push(src, dst, wrapper, "--state", str(tmp_path / "h.sqlite"))
    killed = _cut(proc, remote, dst, victim)
    out, err = proc.communicate(timeout=180)
    assert killed, "the push ended before the link could be cut"
    # reconnected within the run: converged, exit 0, nothing said
    assert proc.returncode == 0, (out, err)
    assert err == ""
    assert_same_tree(src, dst)
    assert not [n for n in _files(dst) if ".hsync-tmp" in n]
    report = json.loads(out)
    assert report["counts"]["create"] == len(spec) + 4  # the root, 3 directories
    assert not report.get("problems")
    # the far side's journal: every batch of the run acknowledged once; no op ran in
    # two batches that finished (a batch cut off is left begun; its resend carries
    # only the ops not done yet)
    batches, acks = _far_journal(state)
    done_keys = [tuple(op[2]) for st, ops in batches if st == "done" for op in ops]
    assert len(done_keys) == len(set(done_keys))
    assert not [st for st, _ in batches if st == "running"]  # the cut one: rolled
    begun = {tuple(op[2]) for st, ops in batches if st == "rolled forward" for op in ops}
    assert set(done_keys) | begun == {(), ("d0",), ("d1",), ("d2",),
                                      *(tuple(k.split("/")) for k in spec)}
    seqs = [seq for seq, st in acks if st == "done"]
    assert seqs == list(range(1, len(seqs) + 1))  # 8 batches of 20 ops: 1..8, each once
    assert len(seqs) == 8
    # the next run has nothing to do
    r = run("sync", "--json", "--state", tmp_path / "h.sqlite", src, f"{HOST}:{dst}")
    assert r.returncode == 0 and sum(json.loads(r.stdout)["counts"].values()) == 0


def test_link_lost_for_good_ends_the_run_and_the_next_resumes(remote: Any,
                                                              tmp_path: Path) -> None:
    """Reconnecting fails (the host stays unreachable): one line naming the host, exit
    2, nothing torn; the next run resumes and converges."""
    lost = LostForGood(tmp_path, remote, _start_push, "ssh")
    err = lost.err
    assert lost.returncode == 2, (lost.out, err)
    assert len(err.strip().splitlines()) == 1 and HOST in err and "reconnect" in err, err
    landed = lost.landed()  # nothing torn under a final name
    assert 0 < len(landed) < len(lost.spec)
    lost.host_back()
    r = run("sync", "--json", "--state", lost.state, "-e", lost.rsh, lost.src,
            f"{HOST}:{lost.dst}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(lost.src, lost.dst)
    assert not [n for n in _files(lost.dst) if ".hsync-tmp" in n]
    dirs = json.loads(r.stdout)["counts"]["create"] - (len(lost.spec) - len(landed))
    assert 0 <= dirs <= 3  # what landed was not copied again


def _most_in_flight(src: Path, dst: Path, window: int) -> int:
    """Push ``src`` (60 files, batches of 5 ops) with ``window``; the most batches the
    agent held received and not yet acknowledged at once."""
    from hsync.apply import ONE_SHOT
    from hsync.populate import populate
    from hsync.session import PairSession

    options = Options(window=window, batch_ops=5)
    with PairSession(str(src), f"{HOST}:{dst}", options, history=False) as session:
        done = populate(session, batching=ONE_SHOT)
        assert not done.problems
        link = session.destination.backend.link  # type: ignore[attr-defined]
        now, most = link.call("outstanding")
    assert now == 0
    assert_same_tree(src, dst)
    return int(most)


def test_window_keeps_several_batches_in_flight(remote: Any, tmp_path: Path) -> None:
    src = build(tmp_path / "src", {f"d/f{i}": os.urandom(5000) for i in range(60)})
    assert _most_in_flight(src, tmp_path / "one", 1) == 1
    most = _most_in_flight(src, tmp_path / "four", 4)
    assert 2 <= most <= 4, most


def test_batches_are_applied_in_order_across_the_window(remote: Any, tmp_path: Path) -> None:
    """A directory created in one batch holds the files of the next ones (the far side
    applies the window in order); moves and deletes of a later plan too."""
    spec = {f"a/b{i}/c/f{j}": f"{i}/{j}".encode() for i in range(8) for j in range(6)}
    src = build(tmp_path / "src", spec)
    dst = tmp_path / "dst"
    args = ("--batch-ops", "3", "--window", "5", "--state", tmp_path / "h.sqlite")
    r = run("sync", "--json", *args, src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)
    for i in range(8):
        os.rename(src / "a" / f"b{i}", src / f"moved{i}")
        (src / f"moved{i}" / "c" / "f0").unlink()
        (src / f"moved{i}" / "new").write_bytes(b"n" * i)
    r = run("sync", "--json", *args, src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["counts"]
    assert counts["move"] == 8 and counts["delete"] == 8 and counts["create"] == 8
    assert_same_tree(src, dst)


def test_a_batch_failing_there_stops_the_window(remote: Any, tmp_path: Path,
                                               small_fs: Path) -> None:  # noqa: F811
    """A batch that fails as a whole on the far side (its destination is full) stops
    the batches sent after it: they are not applied there, even one that would
    succeed on its own; the sender gets the fault first, in order."""
    from hsync.backend import open_endpoint
    from hsync.errors import HsyncError
    from hsync.model import CREATE, FILE, Op
    from hsync.remote import Reach, reaching

    src = build(tmp_path / "src", {"big": os.urandom(4 << 20), "small": b"s"})
    dst = small_fs / "dst"
    dst.mkdir()
    with reaching(Reach(window=4)):
        source = open_endpoint(str(src), role="source")
        far = open_endpoint(f"{HOST}:{dst}", role="destination")
    try:
        snap = source.backend.scan()
        backend: Any = far.backend
        assert far.features.windowed is backend
        first, second = (
            backend.submit_batch([Op(op=CREATE, kind=FILE, key=(k,), node=snap.nodes[(k,)])],
                                 source.backend, snap)
            for k in ("big", "small"))
        with pytest.raises(HsyncError, match=r"full|space"):
            first.result()
        with pytest.raises(HsyncError, match="batch 2 not applied: batch 1 failed"):
            second.result()
        assert os.listdir(dst) == []
    finally:
        far.close()
        source.close()


def test_a_resumed_batch_skips_exactly_what_the_tree_shows_done(tmp_path: Path) -> None:
    """The far side's check of a batch begun by an agent that was cut off (no link
    needed: the agent's own method on a real tree)."""
    from treeutil import File

    from hsync.backend import open_endpoint
    from hsync.model import CREATE, DELETE, FILE, MOVE, UPDATE, Op
    from hsync.remote.agent import Agent

    t0, t1 = 1_600_000_000 * 10**9, 1_700_000_000 * 10**9
    new = build(tmp_path / "new", {
        "a": File(b"aa", mtime_ns=t1), "b": File(b"bb", mtime_ns=t1),
        "c": File(b"cc2", mtime_ns=t1), "d": File(b"d", mode=0o600, mtime_ns=t0),
        "e": File(b"e", mtime_ns=t0)})
    old = build(tmp_path / "old", {"c": File(b"c1", mtime_ns=t0),
                                   "d": File(b"d", mode=0o644, mtime_ns=t0)})
    # the destination as the cut-off agent left it: a created, c updated, gone
    # deleted, m moved to n; b not created, d's mode not changed yet
    build(tmp_path / "dst", {"a": File(b"aa", mtime_ns=t1), "c": File(b"cc2", mtime_ns=t1),
                             "d": File(b"d", mode=0o644, mtime_ns=t0),
                             "e": File(b"e", mtime_ns=t0), "n": b"moved"})
    nodes = open_endpoint(str(new), role="source").backend.scan().nodes
    olds = open_endpoint(str(old), role="source").backend.scan().nodes
    ops = [
        Op(op=CREATE, kind=FILE, key=("a",), node=nodes[("a",)]),
        Op(op=CREATE, kind=FILE, key=("b",), node=nodes[("b",)]),
        Op(op=UPDATE, kind=FILE, key=("c",), node=nodes[("c",)], old=olds[("c",)],
           content=True),
        Op(op=UPDATE, kind=FILE, key=("d",), node=nodes[("d",)], old=olds[("d",)]),
        # only what a stat does not show changes (an owner): it runs again
        Op(op=UPDATE, kind=FILE, key=("e",), node=nodes[("e",)], old=nodes[("e",)]),
        Op(op=DELETE, kind=FILE, key=("gone",)),
        Op(op=MOVE, kind=FILE, key=("m",), to=("n",)),
    ]
    agent = Agent(None, None)  # type: ignore[arg-type]
    agent.do_open(0, str(tmp_path / "dst"), "destination", [])
    try:
        todo, already = agent._not_done(ops)
    finally:
        agent.endpoint.close()  # type: ignore[union-attr]
    assert [op.key for op in already] == [("a",), ("c",), ("gone",), ("m",)]
    assert [op.key for op in todo] == [("b",), ("d",), ("e",)]


def test_agent_ends_without_checkpointing_its_journal(remote: Any, tmp_path: Path) -> None:
    """The client's run waits for the agent to end: the agent does not close its journal
    (closing SQLite's last connection checkpoints the WAL: the database written and
    fsynced), it exits at once. Every done mark and answer is already flushed in the
    WAL: read there by the next reader, and by the next agent, which goes on."""
    wrapper, state = _agent_wrapper(tmp_path)
    src = build(tmp_path / "src", {f"d{i % 3}/f{i}": os.urandom(300) for i in range(30)})
    dst = tmp_path / "dst"
    args = ("--batch-ops", "10", "--remote-hsync", wrapper, "--state", tmp_path / "h.sqlite")
    r = run("sync", "--json", *args, src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stderr
    wal = state / "hsync" / "agent.journal.sqlite-wal"
    assert wal.exists() and wal.stat().st_size > 0  # left as it was: no checkpoint
    batches, acks = _far_journal(state)
    assert len(acks) >= 3 and {st for _, st in acks} == {"done"}, acks
    assert {st for st, _ in batches} == {"done"}, batches
    os.rename(src / "d1", src / "moved")
    r = run("sync", "--json", *args, src, f"{HOST}:{dst}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["move"] == 1
    assert_same_tree(src, dst)
    _, later = _far_journal(state)
    assert len(later) == len(acks) + 1 and {st for _, st in later} == {"done"}, later
