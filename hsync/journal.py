"""The journal of applied batches (SQLite, WAL): what a killed run leaves behind.

SPEC section 5: the ops of a plan run in batches; each batch gets a sequence number and
is written here before its first op runs, and is marked done after the batch's flush.
On a local destination batches run one after the other, so at most one batch per pair is
unfinished at any time (a window of them, in flight to a remote destination, see below).

When the record must be on disk. A kill -9 finds any committed record (it is in the
page cache). Against a power loss the record protects one thing: a history that says
more than the destination holds (the history of a batch is recorded while its flush
still runs). A destination that holds part of a batch while the history still says
what was there before is harmless: the next comparison scans the destination where the
source differs from the history. So a batch is begun ``BEGUN`` without waiting for the
disk (``begin(..., durable=False)``: the watch's single-file rounds then do not wait for
an fsync before the file is published) and made durable (``sync``: ``RUNNING``, one
``synchronous=FULL`` commit) before anything that trusts it, the history's record, is
written. Both states are unfinished. ``done`` need not wait for the disk either
(``done(durable=False)``): a power loss that drops it leaves an unfinished batch, whose
roll-forward costs one full comparison and trusts nothing. On the far side (an agent's
journal, ``session`` given) the record is begun the same way, without waiting for the
disk (a killed agent leaves it committed, so a resent batch is still known as begun),
and the done mark with the stored answer is always flushed, the begun record with it:
the acknowledgement sent after them promises they are on disk.

Roll forward. A run that finds an unfinished batch for its pair does not replay the
recorded ops blindly: the destination may hold any prefix of them, and a source that
cannot be locked may have changed since. Instead it re-checks every key against the
destination's actual state by the simplest means that is always correct: the history
of the pair is marked incomplete, so this run's diff compares the two full scans
without trusting the history (a key already done compares equal, a key not done is
planned again, a key changed by someone else is planned from what is there now), and
the run records a full history at its end. The cost is one run without the history's
move hints; the gain is that no recorded op is ever applied against a destination it
no longer describes. Temporary files of an interrupted publish (``.hsync-tmp-*``) are
never synced; the scan lists them and the first batch of the next run removes them.

The journal lives next to the history (``history.sqlite`` -> ``history.journal.sqlite``),
is created with mode 0600, and keeps the last ``KEEP`` batches per pair (older ones are
pruned). ``HSYNC_JOURNAL=0`` in the environment turns it off (to measure its cost).

A remote destination keeps a window of batches in flight (``hsync.apply``): several
batches of a pair may be running at once here; each is marked done by its own sequence
number, in order. The agent on the far side journals each batch it applies under the
sender's session and sequence number (``acks``) with the answer it sent, in the same
transaction that marks it done: a sender that reconnects asks which of its batches are
applied and flushed there (``acknowledged``), takes their stored answers, and resends
the rest from the first unacknowledged one.
"""

from __future__ import annotations

import marshal
import os
import time
from collections.abc import Sequence

from .history import close_keeping_wal, keep_wal, sqlite3  # _sqlite3 where there is one
from .model import Op

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any

KEEP = 64
"""Batches kept per pair; older ones are pruned."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches(
    pair TEXT, seq INTEGER, state TEXT, pid INTEGER, started REAL, finished REAL,
    n_ops INTEGER, ops BLOB, PRIMARY KEY(pair, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS more_ops(
    pair TEXT, seq INTEGER, part INTEGER, ops BLOB, PRIMARY KEY(pair, seq, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks(
    session TEXT, seq INTEGER, batch INTEGER, state TEXT, time REAL, answer BLOB,
    PRIMARY KEY(session, seq)) WITHOUT ROWID;
"""
ACKS_KEPT = 24 * 3600
"""Seconds the far side keeps another session's acknowledgements."""
RUNNING = "running"
BEGUN = "begun"
"""Written before the batch ran, not yet flushed (``sync`` makes it ``RUNNING``)."""
DONE = "done"
ROLLED = "rolled forward"


def enabled() -> bool:
    return os.environ.get("HSYNC_JOURNAL", "1") not in ("0", "off", "no", "false")


def journal_path(history_path: str) -> str:
    """The journal beside the history file ``history_path``."""
    head, tail = os.path.split(history_path)
    stem = tail[: -len(".sqlite")] if tail.endswith(".sqlite") else tail
    return os.path.join(head, f"{stem}.journal.sqlite")


def _pack(ops: Sequence[Op]) -> bytes:
    """The ops as plain tuples (for a post-mortem; recovery does not replay them)."""
    import zlib  # not imported by a run that writes no batch

    rows = [(op.op, op.kind, op.key, op.to) for op in ops]
    return zlib.compress(marshal.dumps(rows), 1)


def unpack(blob: bytes) -> list[tuple[Any, ...]]:
    import zlib

    return marshal.loads(zlib.decompress(blob))


class Journal:
    """The journal of one pair (``pair`` is the history's pair id)."""

    def __init__(self, path: str, pair: str) -> None:
        self.path = path
        self.pair = pair
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        if not os.path.exists(path):
            # 0600 from the start: it names synced paths (SPEC section 8)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        try:
            self.db = self._connect(path)
        except sqlite3.DatabaseError:
            # corrupt: set it aside; without a journal the history is not trusted either
            # (the caller treats a journal it had to replace as an unfinished batch)
            os.replace(path, f"{path}.corrupt-{int(time.time())}")
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            self.db = self._connect(path)
            self.replaced = True
        else:
            self.replaced = False
        self.running: list[int] = []
        """Sequence numbers begun and not yet marked done, oldest first."""
        self.unflushed: set[int] = set()
        """Running batches begun ``durable=False`` and not yet made durable by ``sync``."""

    @property
    def flushed(self) -> bool:
        """Every running batch's record is on disk (``sync`` has nothing to do)."""
        return not self.unflushed

    @property
    def seq(self) -> int | None:
        """The oldest running batch (None: none runs)."""
        return self.running[0] if self.running else None

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        # the far side's agent uses it from its applier thread and its main thread (the
        # agent serialises the two with a lock of its own)
        db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a begun batch is on disk before it runs
        keep_wal(db)  # no checkpoint when the run closes it (see ``history.keep_wal``)
        db.executescript(_SCHEMA)
        return db

    def close(self) -> None:
        close_keeping_wal(self.db)

    def unfinished(self) -> list[int]:
        """Sequence numbers of batches begun and never marked done."""
        return [
            seq
            for (seq,) in self.db.execute(
                "SELECT seq FROM batches WHERE pair=? AND state IN (?,?) ORDER BY seq",
                (self.pair, RUNNING, BEGUN),
            )
        ]

    def mark_rolled(self, seqs: Sequence[int]) -> None:
        with self.db:
            self.db.executemany(
                "UPDATE batches SET state=?, finished=? WHERE pair=? AND seq=?",
                ((ROLLED, time.time(), self.pair, s) for s in seqs),
            )

    def roll_stale(self) -> int:
        """On the far side (an agent's journal, shared by every agent of the host): the
        batches an agent began and never finished, that agent gone (killed, its sender
        never resent them), are marked rolled forward, so the pruning of old batches
        reaches them; the sender's next run compares the trees and trusts none of them.
        A sender that reconnects still finds them begun (``acknowledged`` reads the
        acknowledgements, not these rows). Returns how many."""
        stale = [
            (pair, seq) for pair, seq, pid in self.db.execute(
                "SELECT pair, seq, pid FROM batches WHERE state IN (?,?)", (RUNNING, BEGUN))
            if pid != os.getpid() and not _alive(pid)
        ]
        if stale:
            with self.db:
                self.db.executemany(
                    "UPDATE batches SET state=?, finished=? WHERE pair=? AND seq=?",
                    ((ROLLED, time.time(), pair, seq) for pair, seq in stale))
        return len(stale)

    def begin(self, ops: Sequence[Op], *, durable: bool = True, session: str | None = None,
              sender_seq: int = 0) -> int:
        """Record a batch before it runs; returns its sequence number. Several may run
        at once (a window of batches in flight); each is marked done by ``done``.

        ``durable=False``: committed (a killed process leaves it) but not flushed to
        the disk; ``sync`` must run before anything that trusts the batch is written.
        ``session``, ``sender_seq``: on the far side, the sender's session and its
        sequence number for the batch (``acknowledged`` answers by them); its ``done``
        is always flushed (and the begun record with it)."""
        with self._commit(durable):
            (last,) = self.db.execute(
                "SELECT coalesce(max(seq), 0) FROM batches WHERE pair=?", (self.pair,)
            ).fetchone()
            seq = last + 1
            self.db.execute(
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?)",
                (self.pair, seq, RUNNING if durable else BEGUN, os.getpid(), time.time(),
                 None, len(ops), _pack(ops)),
            )
            if session is not None:
                # a batch resent after a break: the try an agent was cut off in is
                # rolled forward by this one (it stays listed, no longer running)
                self.db.execute(
                    "UPDATE batches SET state=?, finished=? WHERE pair=? AND state IN (?,?) AND "
                    "seq=(SELECT batch FROM acks WHERE session=? AND seq=?)",
                    (ROLLED, time.time(), self.pair, RUNNING, BEGUN, session, sender_seq),
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO acks VALUES (?,?,?,?,?,?)",
                    (session, sender_seq, seq, RUNNING, time.time(), None),
                )
        self.running.append(seq)
        if not durable:
            self.unflushed.add(seq)
        return seq

    def extend(self, seq: int, ops: Sequence[Op]) -> None:
        """Add ``ops`` to running batch ``seq``'s record before they run (a streamed
        batch: its ops are journaled a chunk at a time as the source's walk finds them,
        ``hsync.apply.Stream``). Not flushed, like ``begin(durable=False)``: ``sync``
        flushes every part with the record."""
        assert seq in self.running
        with self._commit(False):
            self.db.execute(
                "INSERT INTO more_ops VALUES (?,?,"
                "(SELECT coalesce(max(part), 0) + 1 FROM more_ops WHERE pair=? AND seq=?),?)",
                (self.pair, seq, self.pair, seq, _pack(ops)),
            )
            self.db.execute(
                "UPDATE batches SET n_ops=n_ops+? WHERE pair=? AND seq=?",
                (len(ops), self.pair, seq),
            )

    def ops_of(self, seq: int) -> list[tuple[Any, ...]]:
        """What batch ``seq``'s record holds: its ops as ``(op, kind, key, to)``, in
        order (a post-mortem's, and the tests')."""
        row = self.db.execute(
            "SELECT ops FROM batches WHERE pair=? AND seq=?", (self.pair, seq)
        ).fetchone()
        if row is None:
            return []
        out = unpack(row[0])
        for (blob,) in self.db.execute(
            "SELECT ops FROM more_ops WHERE pair=? AND seq=? ORDER BY part", (self.pair, seq)
        ):
            out += unpack(blob)
        return out

    def sync(self, seq: int | None = None) -> None:
        """Make a running batch's record durable (``seq``; None: every running one; a
        no-op when it is): one commit with ``synchronous=FULL``, which flushes the WAL
        that holds the record (and so every record committed before it: all the
        running batches begun without a flush become ``RUNNING`` in that commit)."""
        if not self.unflushed or (seq is not None and seq not in self.unflushed):
            return
        with self.db:
            self.db.executemany(
                "UPDATE batches SET state=? WHERE pair=? AND seq=?",
                ((RUNNING, self.pair, s) for s in sorted(self.unflushed)),
            )
        self.unflushed.clear()

    def _commit(self, durable: bool) -> _Commit:
        """One transaction; flushed to the disk when ``durable`` (``synchronous=FULL``),
        else only written: no fsync, and no checkpoint either (a checkpoint made without
        a flush could move what it wrote out of the WAL that the next flushed commit
        flushes, and a WAL's unflushed tail is dropped whole, never half-applied)."""
        return _Commit(self.db, durable)

    def done(self, seq: int | None = None, *, durable: bool = True,
             session: str | None = None, sender_seq: int = 0,
             answer: bytes | None = None) -> None:
        """Mark a running batch done (after its flush; the oldest when ``seq`` is None)
        and prune old batches. On the far side, ``answer`` (the acknowledgement sent
        for the sender's batch ``sender_seq`` of ``session``) is kept with it, in the
        same transaction, on disk before the acknowledgement is sent (always flushed,
        whatever ``durable`` says).

        ``durable=False``: not flushed (the next flushed commit flushes it). A power
        loss that drops it leaves the batch unfinished: the next run rolls it forward
        (one full comparison), never trusting more than the destination holds. The
        WAL's checksums keep a torn commit from counting."""
        if seq is None:
            seq = self.running[0]
        self.running.remove(seq)
        self.unflushed.discard(seq)
        now = time.time()
        with self._commit(durable or session is not None):
            self.db.execute(
                "UPDATE batches SET state=?, finished=? WHERE pair=? AND seq=?",
                (DONE, now, self.pair, seq),
            )
            self.db.execute(
                "DELETE FROM batches WHERE pair=? AND seq<=? AND state NOT IN (?,?)",
                (self.pair, seq - KEEP, RUNNING, BEGUN),
            )
            self.db.execute(
                "DELETE FROM more_ops WHERE pair=? AND seq<=? AND NOT EXISTS (SELECT 1 "
                "FROM batches b WHERE b.pair=more_ops.pair AND b.seq=more_ops.seq)",
                (self.pair, seq - KEEP),
            )
            if session is not None:
                self.db.execute(
                    "UPDATE acks SET state=?, time=?, answer=? WHERE session=? AND seq=?",
                    (DONE, now, answer, session, sender_seq),
                )
                self.db.execute(
                    "DELETE FROM acks WHERE (session=? AND seq<=?) OR (session!=? AND time<?)",
                    (session, sender_seq - KEEP, session, now - ACKS_KEPT),
                )

    def acknowledged(self, session: str, first: int) -> tuple[dict[int, bytes], list[int]]:
        """What the far side did of ``session``'s batches from ``first`` on: the answers
        of those applied and flushed (by sequence number), and the batches begun and
        never finished (an agent killed while it applied them: partly applied)."""
        done: dict[int, bytes] = {}
        begun: list[int] = []
        for seq, state, answer in self.db.execute(
            "SELECT seq, state, answer FROM acks WHERE session=? AND seq>=? ORDER BY seq",
            (session, first),
        ):
            if state == DONE and answer is not None:
                done[seq] = answer
            elif state == RUNNING:
                begun.append(seq)
        return done, begun

    def batches(self) -> list[tuple[int, str, int]]:
        """(seq, state, n_ops) of the kept batches, oldest first (tests, post-mortems)."""
        return list(
            self.db.execute(
                "SELECT seq, state, n_ops FROM batches WHERE pair=? ORDER BY seq", (self.pair,)
            )
        )


class _Commit:
    """``Journal._commit``'s context (a class: ``contextlib`` is not imported by a run
    that writes no batch)."""

    __slots__ = ("db", "durable")

    def __init__(self, db: sqlite3.Connection, durable: bool) -> None:
        self.db, self.durable = db, durable

    def __enter__(self) -> None:
        if not self.durable:
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.db.__exit__(*exc)  # commits, or rolls back what raised
        finally:
            if not self.durable:
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.execute("PRAGMA wal_autocheckpoint=1000")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's: alive
    return True


def recover(history: Any, journal: Journal | None = None) -> bool:
    """Before a diff: roll forward what a killed run left for ``history``'s pair
    (``journal``: its journal, already open, left open; else opened and closed here).

    Returns True when the history may be trusted. With an unfinished batch (or a journal
    that had to be replaced), a writable history is marked incomplete (this run then
    compares in full and records a full history) and the batch is marked rolled forward;
    a read-only history (a dry run) is only not trusted."""
    if not enabled():
        return True
    path = journal_path(history.path)
    if history.readonly:
        if not os.path.exists(path):
            return True
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute(
                    "SELECT 1 FROM batches WHERE pair=? AND state IN (?,?) LIMIT 1",
                    (history.pair, RUNNING, BEGUN),
                ).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return False
        return row is None
    opened = journal is None
    if journal is None:
        journal = Journal(path, history.pair)
    try:
        seqs = journal.unfinished()
        if not seqs and not journal.replaced:
            return True
        history.forget()  # first: a crash between the two repeats this, harmlessly
        journal.mark_rolled(seqs)
        return False
    finally:
        if opened:
            journal.close()


def open_for(history: Any) -> Journal | None:
    """The journal to record this run's batches in, or None (no history, or turned off)."""
    if history is None or history.readonly or not enabled():
        return None
    return Journal(journal_path(history.path), history.pair)
