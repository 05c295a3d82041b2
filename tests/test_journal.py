"""The journal of batches (SPEC section 5): recorded before a batch runs, done after its
syncfs, an unfinished one rolled forward by the next run, bounded, 0600."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from treeutil import assert_same_tree, build

from hsync import journal as journal_mod
from hsync.backends.fs import apply as fs_apply
from hsync.history import History
from hsync.journal import BEGUN, DONE, KEEP, ROLLED, RUNNING, Journal, journal_path, recover
from hsync.model import Op
from hsync.oneshot import sync_once
from hsync.options import Options


def _pair_history(src: Path, dst: Path, state: str) -> History:
    from hsync.backends.fs import FsBackend

    return History(state, FsBackend(str(src)).canonical_url(),
                   FsBackend(str(dst)).canonical_url())


def test_each_batch_is_recorded_before_it_runs_and_done_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = build(tmp_path / "src", {"a/b": b"1", "c": b"2"})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    seen: list[Any] = []
    real = fs_apply.Batch.run

    def spy(self: Any, ops: Any) -> Any:
        history = _pair_history(src, dst, state)
        j = Journal(journal_path(state), history.pair)
        seen.append((j.unfinished(), j.batches()))
        j.close()
        history.close()
        return real(self, ops)

    monkeypatch.setattr(fs_apply.Batch, "run", spy)
    at_record: list[Any] = []
    real_record = History.record

    def record_spy(self: History, *args: Any, **kwargs: Any) -> Any:
        j = Journal(journal_path(state), self.pair)
        at_record.append(j.batches())
        j.close()
        return real_record(self, *args, **kwargs)

    monkeypatch.setattr(History, "record", record_spy)
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    (unfinished, batches), = seen
    # written before the batch runs (a killed run finds it); the ops do not wait for
    # its flush, which runs beside them (it may have ended already) ...
    assert unfinished == [1] and batches in ([(1, BEGUN, 4)], [(1, RUNNING, 4)])
    # ... and flushed (RUNNING: one synchronous=FULL commit) before the history that
    # trusts the batch is recorded, while the destination's flush still runs
    assert at_record == [[(1, RUNNING, 4)]]
    history = _pair_history(src, dst, state)
    j = Journal(journal_path(state), history.pair)
    assert j.batches() == [(1, DONE, 4)]
    assert stat.S_IMODE(Path(journal_path(state)).stat().st_mode) == 0o600


@pytest.mark.parametrize("durable", [True, False], ids=["running", "begun"])
def test_an_unfinished_batch_makes_the_next_run_compare_in_full(
    tmp_path: Path, durable: bool
) -> None:
    src = build(tmp_path / "src", {"a/f": b"1", "b": b"2"})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    history = _pair_history(src, dst, state)
    assert history.complete
    # a run killed between "begin" and "done" (before or after the record's flush)
    j = Journal(journal_path(state), history.pair)
    seq = j.begin([Op(op="create", kind="file", key=("x",))], durable=durable)
    j.close()

    assert recover(history) is False  # the history is not trusted by this run
    assert not history.complete  # ... nor by any later run until a full record
    j = Journal(journal_path(state), history.pair)
    assert j.unfinished() == []
    assert (seq, ROLLED, 1) in j.batches()
    assert recover(history) is True  # nothing left to roll forward
    history.close()

    (src / "a" / "f").write_bytes(b"changed")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    assert_same_tree(src, dst)
    history = _pair_history(src, dst, state)
    assert history.complete  # the run recorded a full history again


def test_a_dry_run_does_not_trust_the_history_of_an_unfinished_batch(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    history = _pair_history(src, dst, state)
    Journal(journal_path(state), history.pair).begin([])
    ro = History(state, "x", "y", readonly=True)
    ro.pair = history.pair
    assert recover(ro) is False
    assert history.complete  # a dry run changes nothing


def test_the_journal_is_bounded(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.sqlite"), "pair")
    for _ in range(KEEP + 10):
        j.begin([])
        j.done()
    kept = j.batches()
    assert len(kept) == KEEP
    assert kept[-1][0] == KEEP + 10


def test_the_journal_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSYNC_JOURNAL", "0")
    assert not journal_mod.enabled()
    src = build(tmp_path / "src", {"a": b"1"})
    state = str(tmp_path / "h.sqlite")
    assert sync_once(str(src), str(tmp_path / "dst"), Options(state=state)).ok
    assert not Path(journal_path(state)).exists()


def test_a_corrupt_journal_is_set_aside_and_distrusted(tmp_path: Path) -> None:
    src = build(tmp_path / "src", {"a": b"1"})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    assert sync_once(str(src), str(dst), Options(state=state)).ok
    # the WAL is kept between runs (``history.keep_wal``): garbage in both files
    for suffix in ("", "-wal"):
        Path(journal_path(state) + suffix).write_bytes(b"not a database" * 100)
    history = _pair_history(src, dst, state)
    assert recover(history) is False
    assert list(tmp_path.glob("h.journal.sqlite.corrupt-*"))
    assert sync_once(str(src), str(dst), Options(state=state)).ok


def test_the_history_is_recorded_while_the_batch_flushes_and_done_comes_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history of a batch is written while its syncfs runs (the flush waits on the
    disk, not on Python), and the journal marks the batch done only after both: a run
    killed during the flush finds the batch unfinished and does not trust the history."""
    import threading

    src = build(tmp_path / "src", {"a/b": b"1", "c": b"2"})
    dst = tmp_path / "dst"
    state = str(tmp_path / "h.sqlite")
    recorded = threading.Event()
    during: list[Any] = []
    real_syncfs, real_flush, real_record = fs_apply.syncfs, fs_apply.flush_nodes, History.record

    def slow(flush: Any) -> Any:
        def slow_flush(path: str, *args: Any) -> None:
            # the history is recorded before this flush ends (or the wait times out)
            during.append(recorded.wait(timeout=10))
            history = _pair_history(src, dst, state)
            j = Journal(journal_path(state), history.pair)
            during.append(j.batches())
            j.close()
            history.close()
            flush(path, *args)
        return slow_flush

    def spy_record(self: History, *args: Any, **kwargs: Any) -> Any:
        out = real_record(self, *args, **kwargs)
        recorded.set()
        return out

    # whichever flush a batch gets: the filesystem's, or the fsyncs of a small batch's
    # nodes (both batches here)
    monkeypatch.setattr(fs_apply, "syncfs", slow(real_syncfs))
    monkeypatch.setattr(fs_apply, "flush_nodes", slow(real_flush))
    monkeypatch.setattr(History, "record", spy_record)
    for name in ("sync into an empty destination", "re-sync"):
        recorded.clear()
        during.clear()
        (src / "a" / "b").write_bytes(name.encode())
        assert sync_once(str(src), str(dst), Options(state=state)).ok
        assert_same_tree(src, dst)
        assert during[0] is True, name  # recorded while the flush ran
        (seq, status, _), = during[1][-1:]
        assert status == RUNNING, name  # not done before the flush ended
        history = _pair_history(src, dst, state)
        j = Journal(journal_path(state), history.pair)
        assert (seq, DONE) in [(s, st) for s, st, _ in j.batches()], name
        j.close()
        history.close()


def test_a_window_of_batches_begun_unflushed_is_made_durable_by_one_sync(
    tmp_path: Path,
) -> None:
    """Several batches run at once (a window to a remote destination), each begun without
    an fsync: ``sync`` of one makes every record before it durable (one flushed commit
    flushes the WAL up to it), a batch marked done leaves the others unfinished, and a
    kill with two running leaves both to roll forward."""
    j = Journal(str(tmp_path / "j.sqlite"), "pair")
    one = j.begin([Op(op="create", kind="file", key=("a",))], durable=False)
    two = j.begin([Op(op="create", kind="file", key=("b",))], durable=False)
    assert [(s, st) for s, st, _ in j.batches()] == [(one, BEGUN), (two, BEGUN)]
    assert j.running == [one, two] and not j.flushed
    j.sync(one)
    assert [(s, st) for s, st, _ in j.batches()] == [(one, RUNNING), (two, RUNNING)]
    assert j.flushed
    j.done(one, durable=False)
    three = j.begin([Op(op="create", kind="file", key=("c",))], durable=False)
    assert j.unfinished() == [two, three]
    j.close()
    # killed here: both still running are found by the next run
    j = Journal(str(tmp_path / "j.sqlite"), "pair")
    assert j.unfinished() == [two, three]
    assert dict((s, st) for s, st, _ in j.batches())[one] == DONE
    j.close()


def test_the_far_side_keeps_its_done_mark_and_answer(tmp_path: Path) -> None:
    """On the far side (a session given) the record is begun without waiting for the
    disk (the file it publishes does not wait for an fsync of the journal) yet
    committed, so an agent killed while it applies leaves the batch known as begun;
    the done mark and the answer are one flushed commit, whatever ``durable`` says
    (the acknowledgement promises them), and the begun record is flushed with them."""
    j = Journal(str(tmp_path / "j.sqlite"), "pair")
    seq = j.begin([Op(op="create", kind="file", key=("a",))], durable=False,
                  session="s1", sender_seq=7)
    assert [(s, st) for s, st, _ in j.batches()] == [(seq, BEGUN)]
    assert not j.flushed
    j.close()
    # killed while it applied: a new agent finds it begun (the sender resends it resumed)
    j = Journal(str(tmp_path / "j.sqlite"), "pair")
    assert j.acknowledged("s1", 1) == ({}, [7])
    again = j.begin([Op(op="create", kind="file", key=("a",))], durable=False,
                    session="s1", sender_seq=7)
    j.done(again, durable=False, session="s1", sender_seq=7, answer=b"ok")
    assert j.flushed
    j.close()
    j = Journal(str(tmp_path / "j.sqlite"), "pair")
    assert j.acknowledged("s1", 1) == ({7: b"ok"}, [])
    assert dict((s, st) for s, st, _ in j.batches()) == {seq: ROLLED, again: DONE}
    j.close()
