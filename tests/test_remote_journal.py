"""The journals of a remote pair (through a real sshd on 127.0.0.1): what the local
side waits for before it records the history, what the far journal keeps."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST, run
from test_remote_window import LostForGood, _agent_wrapper, _far_journal, _start_push
from treeutil import assert_same_tree, build

from hsync.history import History
from hsync.journal import BEGUN, DONE, ROLLED, RUNNING, Journal, journal_path
from hsync.oneshot import sync_once
from hsync.options import Options


def test_an_acknowledged_remote_batch_is_recorded_without_an_fsync_of_the_local_journal(
    remote: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the far side acknowledged is durable there already: the local journal's
    record of it need not be flushed before the history that trusts it is written (a
    flush that cost a watch round tens of milliseconds on a busy disk). It is still
    written before the batch is sent, and marked done after."""
    src = build(tmp_path / "src", {"a/b": b"1", "c": b"2"})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    at_record: list[Any] = []
    real_record = History.record

    def record_spy(self: History, *args: Any, **kwargs: Any) -> Any:
        j = Journal(journal_path(state), self.pair)
        at_record.append((self.pair, j.batches()))
        j.close()
        return real_record(self, *args, **kwargs)

    monkeypatch.setattr(History, "record", record_spy)
    report = sync_once(str(src), f"{HOST}:{dst}", Options(state=state))
    assert report.ok
    assert_same_tree(src, dst)
    ((pair, batches),) = at_record
    assert [(st, n) for _, st, n in batches] == [(BEGUN, 4)]
    j = Journal(journal_path(state), pair)
    assert [st for _, st, _ in j.batches()] == [DONE]
    j.close()



def test_a_batch_left_begun_by_a_killed_agent_is_rolled_by_the_next_one(
    remote: Any, tmp_path: Path
) -> None:
    """An agent killed in the middle of a batch, its sender unable to reconnect, leaves
    the batch begun in the far journal; the next agent marks it rolled forward (so the
    pruning of old batches reaches it) while the next run converges."""
    def begun(far_state: Path) -> bool:  # killed while a batch is begun there (a
        # fast agent may have applied every batch it had been sent)
        if not (far_state / "hsync" / "agent.journal.sqlite").exists():
            return False
        try:
            batches, _ = _far_journal(far_state)
        except sqlite3.Error:
            return False
        return any(st in (BEGUN, RUNNING) for st, _ in batches)

    lost = LostForGood(tmp_path, remote, _start_push, "agent", ready=begun)
    assert lost.returncode == 2, (lost.out, lost.err)
    batches, _ = _far_journal(lost.far_state)
    assert [st for st, _ in batches if st in (BEGUN, RUNNING)], batches
    lost.host_back()
    r = run("sync", "--json", "--state", lost.state, "-e", lost.rsh, "--remote-hsync",
            lost.wrapper, lost.src, f"{HOST}:{lost.dst}")
    assert r.returncode == 0, r.stderr
    assert_same_tree(lost.src, lost.dst)
    batches, _ = _far_journal(lost.far_state)
    assert not [st for st, _ in batches if st in (BEGUN, RUNNING)], batches
    assert ROLLED in [st for st, _ in batches]


def test_the_far_journal_keeps_each_pair_apart(remote: Any, tmp_path: Path) -> None:
    """Two sources pushed into one far tree: the far journal numbers each pair's batches
    under that pair's own id (its history's), not under the far tree's address, so one
    pair's batches never count against, or resume as, the other's."""
    import sqlite3

    wrapper, far_state = _agent_wrapper(tmp_path)
    dst = tmp_path / "dst"
    pairs = []
    for name in ("one", "two"):
        src = build(tmp_path / name, {f"{name}/f": name.encode()})
        state = str(tmp_path / f"{name}.sqlite")
        r = run("sync", "--json", "--state", state, "--remote-hsync", wrapper,
                "--exclude", "two" if name == "one" else "one", src, f"{HOST}:{dst}")
        assert r.returncode == 0, r.stderr
        db = sqlite3.connect(state)
        pairs.append(db.execute("SELECT pair FROM pairs").fetchone()[0])
        db.close()
    assert len(set(pairs)) == 2
    db = sqlite3.connect(far_state / "hsync" / "agent.journal.sqlite")
    try:
        far = {p for (p,) in db.execute("SELECT DISTINCT pair FROM batches")}
    finally:
        db.close()
    assert far == set(pairs), (far, pairs)
