"""The journals of a remote pair (through a real sshd on 127.0.0.1): what the local
side waits for before it records the history, what the far journal keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_remote import HOST
from treeutil import assert_same_tree, build

from hsync.history import History
from hsync.journal import BEGUN, DONE, Journal, journal_path
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

