"""The history of past syncs (SQLite): what was synced, per pair, keyed by source identity.

It lets diff turn "the inode that was at K1 is now at K2" into one rename (SPEC sections
3 and 7). It is advisory: diff trusts it only while the destination still holds what was
synced, so a stale, missing or corrupt history costs a copy, never a wrong plan. A
corrupt file is set aside and replaced.

One row per synced source node: (pair, key, identity, kind, size, mtime_ns, target, mode,
fingerprint); the fingerprint digests an entry's attributes (LDAP), None for files. Keys are
stored as the names joined by NUL (a name never contains NUL), encoded with surrogate
escapes. Rows change only where a sync changed something: a no-op run writes nothing.

Per pair, the history may also keep an opaque *resume token* of the source's watcher
(an LDAP syncrepl cookie): the point of the source's change stream that the rows are
synced up to. ``hsync watch`` stores it only after a round that left nothing behind, and
a restarted watch asks the source for what changed since instead of reading it all
(see ``watch.PairWatch``). The token is kept with a *context* (the two roots' identities
and the options that shape the rows): a token whose context differs is not returned.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from .model import ENTRY, Fingerprint, Key, Node, Snapshot, data_digest, fingerprint, sha256

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    import sqlite3
    from typing import Any
else:
    try:  # CPython's C module, all that ``sqlite3`` re-exports but its default date
        # adapters (``sqlite3.dbapi2`` imports ``datetime`` for them: 1-2 ms of a small
        # sync; the history stores no dates). The journal and the session use it too.
        import _sqlite3 as sqlite3
    except ImportError:  # another implementation, or a build without it
        import sqlite3

SCHEMA_VERSION = 6
_SEP = "\0"
_RESUME_TABLE = """
CREATE TABLE IF NOT EXISTS resume(
    pair TEXT PRIMARY KEY, token BLOB, context TEXT, saved_at REAL);
"""
_MIGRATIONS = {
    3: _RESUME_TABLE,  # 3 -> 4: the watcher's resume token; the rows are unchanged
    # 4 -> 5: whether the pair may delete without --delete; every pair synced before
    # was synced with deletions allowed (the default then)
    4: "ALTER TABLE pairs ADD COLUMN deletes INTEGER; UPDATE pairs SET deletes=1;",
    # 5 -> 6: a file's identity holds its birth time (an inode number alone is reused):
    # the rows of filesystem pairs no longer match what a scan gives, so those pairs are
    # compared in full once (without moves from the history) and recorded afresh
    5: "UPDATE pairs SET complete=0 WHERE source LIKE 'file://%';",
}
"""Schema version -> the script that takes a file from it to the next version. A file
of a version with no migration is set aside like a corrupt one (the history is
advisory: losing it costs one full comparison)."""
_COLUMNS = {
    "pairs": {"pair", "source", "destination", "complete", "synced_at", "deletes"},
    "nodes": {"pair", "key", "ident", "kind", "size", "mtime", "target", "mode", "fp"},
    "resume": {"pair", "token", "context", "saved_at"},
}
"""The columns each table of the current schema has."""


def default_state_path() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "hsync", "history.sqlite")


def pair_id(source_url: str, destination_url: str) -> str:
    raw = f"{source_url}\n{destination_url}".encode(errors="surrogateescape")
    return sha256(raw).hexdigest()[:32]


def encode_key(key: Key) -> bytes:
    return _SEP.join(key).encode("utf-8", "surrogateescape")


def _dec(blob: bytes) -> Key:
    if not blob:
        return ()
    return tuple(blob.decode("utf-8", "surrogateescape").split(_SEP))


def _enc_text(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def _dec_text(blob: bytes | None) -> str | None:
    return None if blob is None else blob.decode("utf-8", "surrogateescape")


def identity_form(value: object) -> int | str | None:
    # inode numbers beyond SQLite's 64-bit integers (device-qualified) are kept as text
    if isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
        return str(value)
    return value  # type: ignore[return-value]


WAL_LIMIT = 4 << 20
"""Bytes a WAL kept between runs is truncated to once checkpointed (``keep_wal``)."""


def keep_wal(db: sqlite3.Connection) -> None:
    """Leave ``db``'s WAL in place when the connection closes: no checkpoint on close
    (``close_keeping_wal`` closes it).

    SQLite's last connection to a WAL database checkpoints it when it closes (the
    WAL's pages written into the database, both fsynced, the WAL deleted), and the
    next first commit to a new WAL fsyncs its header: up to seconds on a busy disk,
    at the end of every run that wrote a row, while the user waits. Kept, the WAL is
    read by the next connection as it was left (every commit in it counts, a torn
    tail does not, as after a kill -9), and checkpointed when it grows past
    ``wal_autocheckpoint`` (1000 pages: a rename's record writes tens), by the
    commit that makes it so; ``journal_size_limit`` then trims the file.

    ``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``: ``Connection.setconfig`` from Python 3.12,
    here; before, the same call made through ctypes on the connection's handle, by
    ``close_keeping_wal`` (only a connection that is closed needs it: ctypes is not
    imported by a one-shot command, see ``LEFT_TO_THE_EXIT``). Where neither works the
    WAL is checkpointed at close, as before: slower, as safe."""
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    if sys.version_info >= (3, 12):
        try:  # noqa: SIM105 (no contextlib on a no-op's path)
            db.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)  # type: ignore[attr-defined]
        except sqlite3.Error:
            pass


LEFT_TO_THE_EXIT = False
"""Set by a one-shot command (``hsync sync``, ``hsync diff``), whose process ends with
``os._exit`` once its run returns (``commands.end_process``): ``close_keeping_wal``
then leaves the connection to the process's end instead of closing it. The WAL stays
as a close without a checkpoint leaves it (and as a kill -9 does: SQLite's locks go
with the process, the next connection reads the WAL as it was left); what was
committed was committed before, a transaction still open is rolled back either way.
It spares such a run the ctypes call of ``keep_wal`` before Python 3.12 (``ctypes``'
import is 2-3 ms of a small no-op sync)."""


CHECKPOINT_LATER = 1 << 14
"""``wal_autocheckpoint`` (pages, 64 MiB) of the record of a one-shot command
(``LEFT_TO_THE_EXIT``): its WAL is checkpointed beside the next run's scan
(``History.start_checkpoint``), not by its commit while the user waits (a spread
delete of 1,000 files at 100k writes about 2,450 pages: past the default 1000, each
such run's commit checkpointed them, 0.1 s of its 0.15 s). This bounds the WAL where
no such run comes."""


def close_keeping_wal(db: sqlite3.Connection) -> None:
    """Close ``db`` (opened with ``keep_wal``) without checkpointing its WAL; in a
    one-shot command's process, leave it to the process's end (``LEFT_TO_THE_EXIT``)."""
    if LEFT_TO_THE_EXIT:
        return
    if sys.version_info < (3, 12):
        _no_checkpoint_on_close(db)
    db.close()


_NO_CKPT_ON_CLOSE = 1006  # SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE (sqlite3.h, since 3.16.2)
_capi: Any = None


def _no_checkpoint_on_close(db: sqlite3.Connection) -> bool:
    """``keep_wal`` before Python 3.12: CPython's connection object starts with its
    ``sqlite3 *`` handle (right after the object header, unchanged from 3.6 to 3.11);
    the handle is trusted only when SQLite names this connection's file by it."""
    global _capi
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12) or \
            not sys.platform.startswith("linux") or \
            _version(sqlite3.sqlite_version) < (3, 16, 2):
        return False
    try:
        import ctypes

        if _capi is None:
            import _sqlite3

            lib = ctypes.CDLL(_sqlite3.__file__)
            lib.sqlite3_db_filename.restype = ctypes.c_char_p
            lib.sqlite3_db_filename.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
            lib.sqlite3_db_config.restype = ctypes.c_int
            _capi = lib
        lib = _capi
        handle = ctypes.c_void_p.from_address(id(db) + object.__basicsize__).value
        (name,) = db.execute("SELECT file FROM pragma_database_list WHERE name='main'"
                             ).fetchone()
        if not handle or not name or \
                lib.sqlite3_db_filename(handle, b"main") != os.fsencode(name):
            return False
        done = ctypes.c_int(-1)
        rc = lib.sqlite3_db_config(
            ctypes.c_void_p(handle), _NO_CKPT_ON_CLOSE, ctypes.c_int(1), ctypes.byref(done))
    except (ImportError, OSError, AttributeError, ValueError, sqlite3.Error):
        return False
    return rc == 0 and done.value == 1


def _version(text: str) -> tuple[int, ...]:
    """``sqlite3.sqlite_version_info`` (made by ``sqlite3.dbapi2``) from the C module's
    ``sqlite_version``."""
    return tuple(int(part) for part in text.split("."))


def _related(a: Key, b: Key) -> bool:
    """One of ``a``, ``b`` is the other or below it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _direct(renames: list[tuple[Key, Key]], drop_prefixes: list[Key]) -> bool:
    """A single directory's move whose rows can go straight to their new keys: neither
    of its keys is the other or below it, and no dropped subtree holds or lies below
    its new key (a drop after the move would take the moved rows)."""
    if len(renames) != 1:
        return False
    old, new = renames[0]
    return not _related(old, new) and not any(_related(p, new) for p in drop_prefixes)


class History:
    """The history store for one (source, destination) pair."""

    def __init__(
        self, path: str, source_url: str, destination_url: str, *, readonly: bool = False
    ) -> None:
        """Open (creating it unless ``readonly``) the history at ``path`` for one pair."""
        self.path = path
        self.pair = pair_id(source_url, destination_url)
        self.readonly = readonly
        self.set_aside: tuple[str, str] | None = None
        """Where a corrupt file at ``path`` was moved, and why (it was replaced)."""
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            return
        self.db = self._open(path)
        self.db.execute(
            "INSERT OR IGNORE INTO pairs(pair, source, destination, complete) VALUES (?,?,?,0)",
            (self.pair, source_url, destination_url),
        )
        self.db.commit()

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level="DEFERRED")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        keep_wal(db)
        db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT);
            INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');
            CREATE TABLE IF NOT EXISTS pairs(
                pair TEXT PRIMARY KEY, source TEXT, destination TEXT,
                complete INTEGER, synced_at REAL, deletes INTEGER);
            CREATE TABLE IF NOT EXISTS nodes(
                pair TEXT, key BLOB, ident, kind TEXT, size INTEGER, mtime INTEGER,
                target BLOB, mode INTEGER, fp TEXT, PRIMARY KEY(pair, key)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS nodes_ident ON nodes(pair, ident);
            {_RESUME_TABLE}
            """
        )
        (schema,) = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        version = int(schema)
        while version in _MIGRATIONS and version != SCHEMA_VERSION:
            db.executescript(
                f"BEGIN; {_MIGRATIONS[version]}"
                f"UPDATE meta SET value='{version + 1}' WHERE name='schema'; COMMIT;"
            )
            version += 1
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema {schema}, expected {SCHEMA_VERSION}")
        # a file that says it is current but lacks a column (written by a build of
        # another numbering, or tables created before the schema was recorded) would
        # fail at the first query that needs the column: treat it as foreign now
        for table, wanted in _COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if not wanted <= have:
                missing = ", ".join(sorted(wanted - have))
                raise sqlite3.DatabaseError(f"table {table} lacks column(s) {missing}")
        return db

    def _open(self, path: str) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        if not os.path.exists(path):
            # created 0600: it names every synced path (SPEC section 8)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as e:
            # corrupt or foreign: keep it aside for a post-mortem, start afresh (the
            # caller says so: ``set_aside``)
            aside = f"{path}.corrupt-{int(time.time())}"
            n = 0
            while os.path.lexists(aside):
                n += 1
                aside = f"{path}.corrupt-{int(time.time())}-{n}"
            os.replace(path, aside)
            self.set_aside = (aside, str(e))
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            return self._connect(path)

    def close(self) -> None:
        if self.readonly:
            self.db.close()
        else:
            close_keeping_wal(self.db)

    def start_checkpoint(self) -> Callable[[], None] | None:
        """Where earlier runs left a WAL past ``WAL_LIMIT`` (their records did not
        checkpoint it: ``CHECKPOINT_LATER``), checkpoint and truncate it on a thread,
        through a connection of its own: its writes and fsyncs wait on the disk while
        the caller scans (SQLite lets go of the GIL meanwhile). What is returned waits
        for it; None when there is nothing to do. A checkpoint that finds the history
        busy does what it can and leaves the rest (the WAL stays valid: a checkpoint
        never loses a commit)."""
        if self.readonly:
            return None
        try:
            if os.path.getsize(self.path + "-wal") <= WAL_LIMIT:
                return None  # a commit's checkpoint truncates it to that
        except OSError:
            return None
        import threading

        path = self.path

        def run() -> None:
            try:
                db = sqlite3.connect(path, timeout=0, check_same_thread=False)
            except sqlite3.Error:
                return
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
            finally:
                db.close()  # not the last connection: no checkpoint of its own

        thread = threading.Thread(target=run, name="hsync-checkpoint", daemon=True)
        thread.start()
        return thread.join

    # -- reading ------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        try:
            row = self.db.execute(
                "SELECT complete FROM pairs WHERE pair=?", (self.pair,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return False  # read-only and unreadable: as if there were no history
        return bool(row and row[0])

    @property
    def deletes_allowed(self) -> bool:
        """True once a run of this pair was allowed to delete (``--delete``, or a
        destination that held nothing the source lacked): from then on a plain sync
        deletes what the source no longer has."""
        try:
            row = self.db.execute(
                "SELECT deletes FROM pairs WHERE pair=?", (self.pair,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return False
        return bool(row and row[0])

    def allow_deletes(self) -> None:
        """Remember that this pair's destination is hsync's to keep equal to the source."""
        with self.db:
            self.db.execute("UPDATE pairs SET deletes=1 WHERE pair=?", (self.pair,))

    def lookup_many(
        self, identities: Iterable[int | str | None]
    ) -> dict[int | str | None, tuple[Key, Node]]:
        wanted = {identity_form(i): i for i in identities if i is not None}
        out: dict[int | str | None, tuple[Key, Node]] = {}
        items = list(wanted)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, ident, kind, size, mtime, target, fp in self.db.execute(
                # without statistics SQLite prefers walking the pair's primary-key range
                # (every row) to this index: 6 ms per lookup on 100k nodes instead of 6 us
                f"SELECT key, ident, kind, size, mtime, target, fp FROM nodes INDEXED BY "
                f"nodes_ident WHERE pair=? AND ident IN ({marks})",
                (self.pair, *chunk),
            ):
                orig = wanted.get(ident)
                if orig is not None and orig not in out:
                    data = Fingerprint(fp) if fp is not None else None
                    node = Node(kind, 0, size, mtime, _dec_text(target), orig, data)
                    out[orig] = (_dec(key), node)
        return out

    def moved_from(self, places: Mapping[int | str | None, Key]) -> dict[int | str | None, Key]:
        """For each identity of ``places`` (identity -> the key it is at now) that the
        history holds at another key, and not at that one: the other key. What
        ``lookup_many`` answers, less the nodes still where they were synced, without
        building their nodes: the keys are compared encoded, only those that differ
        are decoded."""
        wanted = {identity_form(i): (i, encode_key(k)) for i, k in places.items()
                  if i is not None}
        out: dict[int | str | None, Key] = {}
        stayed: set[int | str | None] = set()  # (an inode with two names: one is enough)
        items = list(wanted)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, ident in self.db.execute(
                # the index, as in ``lookup_many``
                f"SELECT key, ident FROM nodes INDEXED BY nodes_ident "
                f"WHERE pair=? AND ident IN ({marks})",
                (self.pair, *chunk),
            ):
                got = wanted.get(ident)
                if got is None:
                    continue
                if bytes(key) == got[1]:
                    stayed.add(got[0])
                elif got[0] not in out:
                    out[got[0]] = _dec(key)
        for i in stayed:
            out.pop(i, None)
        return out

    def fingerprints(self, keys: Iterable[Key]) -> dict[Key, str | None]:
        """The ``fp`` (``model.data_digest`` of the data last synced) of each of
        ``keys`` the history holds."""
        wanted = {encode_key(k): k for k in keys}
        items = list(wanted)
        out: dict[Key, str | None] = {}
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, fp in self.db.execute(
                f"SELECT key, fp FROM nodes WHERE pair=? AND key IN ({marks})",
                (self.pair, *chunk),
            ):
                out[wanted[key]] = fp
        return out

    def is_empty(self) -> bool:
        """True when no node below the root was recorded for this pair."""
        return self.db.execute(
            "SELECT 1 FROM nodes WHERE pair=? AND key>? LIMIT 1", (self.pair, b"")
        ).fetchone() is None

    def holds_more_than(self, n: int) -> bool:
        """True when more than ``n`` nodes are recorded for this pair (reads at most
        ``n + 1`` index entries, not the whole pair)."""
        try:
            return self.db.execute(
                "SELECT 1 FROM nodes WHERE pair=? LIMIT 1 OFFSET ?", (self.pair, n)
            ).fetchone() is not None
        except sqlite3.DatabaseError:
            return True  # read-only and unreadable: nothing says the tree is small

    def identities(self) -> Iterator[tuple[object, Key]]:
        """``(identity, key)`` of every synced node that has an identity (no order): the
        source's identity -> key map as of the last sync (a watcher resuming from the
        resume token seeds its own map from it)."""
        cur = self.db.execute(
            "SELECT ident, key FROM nodes WHERE pair=? AND ident IS NOT NULL", (self.pair,)
        )
        while rows := cur.fetchmany(2000):
            for ident, key in rows:
                yield ident, _dec(key)

    def resume_token(self, context: str) -> bytes | None:
        """The stored resume token, when the history is complete and the token was
        stored with this ``context``; else None."""
        try:
            row = self.db.execute(
                "SELECT token, context FROM resume WHERE pair=?", (self.pair,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return None  # read-only and of an older schema: no token
        if row is None or row[1] != context or not self.complete:
            return None
        return bytes(row[0])

    def walk(self) -> Iterator[tuple[Key, tuple[object, ...]]]:
        """Every synced node as ``(key, (kind, mode, size, mtime_ns, target, identity,
        fingerprint))`` (a scan's row, and an entry's fingerprint), in key order: names
        compared as UTF-8 bytes with surrogate escapes, a directory right before its
        descendants (``FsBackend.walk_sorted`` walks a tree in the same order)."""
        cur = self.db.execute(
            "SELECT key, ident, kind, size, mtime, target, mode, fp FROM nodes WHERE pair=? "
            "ORDER BY key",
            (self.pair,),
        )
        while rows := cur.fetchmany(2000):
            for key, ident, kind, size, mtime, target, mode, fp in rows:
                yield _dec(key), (kind, mode or 0, size, mtime, _dec_text(target), ident, fp)

    def meta_since(self, signature: str) -> tuple[int, int]:
        """The marks of the last sync that left this pair equal, for attributes of
        ``signature`` (``Keep.signature``): (source, destination), each a time (ns)
        before which a node's ctime says its attributes did not change since that sync
        (the source's: when its scans began; the destination's: after its writes were
        durable). (0, 0) when unknown or for other attributes, or when the history is
        not complete. A mark written by an older version (one time) is both."""
        if not self.complete:
            return 0, 0
        try:
            row = self.db.execute(
                "SELECT value FROM meta WHERE name=?", (f"since:{self.pair}",)
            ).fetchone()
        except sqlite3.DatabaseError:
            return 0, 0
        if row is None:
            return 0, 0
        when, _, sig = str(row[0]).partition(" ")
        src, _, dst = when.partition(":")
        dst = dst or src
        if sig != signature or not src.isdigit() or not dst.isdigit():
            return 0, 0
        return int(src), int(dst)

    # -- writing ------------------------------------------------------------------------
    def set_meta_since(self, source_ns: int, destination_ns: int, signature: str) -> None:
        """A sync left the pair equal: the marks ``meta_since`` returns. (An older
        version reads the two-mark form as no mark: it reads every node once.)"""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?,?)",
                (f"since:{self.pair}", f"{source_ns}:{destination_ns} {signature}"),
            )

    def has_rows(self) -> bool:
        """Whether any node of this pair is recorded."""
        return self.db.execute(
            "SELECT 1 FROM nodes WHERE pair=? LIMIT 1", (self.pair,)).fetchone() is not None

    def forget(self) -> None:
        """Stop trusting the history of this pair until the next full record (a killed
        run's batch may have left the destination anywhere; see ``journal.recover``)."""
        with self.db:
            self.db.execute("UPDATE pairs SET complete=0 WHERE pair=?", (self.pair,))
            self.db.execute("DELETE FROM meta WHERE name=?", (f"since:{self.pair}",))
            self.db.execute("DELETE FROM resume WHERE pair=?", (self.pair,))

    def save_resume(self, token: bytes, context: str) -> None:
        """Keep ``token``: the rows are synced up to that point of the source's change
        stream (the caller guarantees it; see ``watch.PairWatch``)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO resume VALUES (?,?,?,?)",
                (self.pair, token, context, time.time()),
            )

    def clear_resume(self) -> None:
        """Drop the resume token (notifications were lost: the rows may lag behind any
        point of the change stream a watcher saw)."""
        with self.db:
            self.db.execute("DELETE FROM resume WHERE pair=?", (self.pair,))

    def record(
        self,
        source: Snapshot,
        set_keys: Iterable[Key] = (),
        drop_prefixes: Iterable[Key] = (),
        drop_keys: Iterable[Key] = (),
        *,
        full: bool = False,
        fingerprints: Mapping[Key, str] | None = None,
        renames: Iterable[tuple[Key, Key]] = (),
        identities: Iterable[tuple[Key, object]] = (),
        fresh: bool = False,
    ) -> None:
        """Record what the last sync made true.

        ``full``: replace everything with ``source``. Otherwise remove ``drop_keys`` and
        everything below ``drop_prefixes``, then (re)write ``set_keys`` from ``source``.
        ``fingerprints``: entries' fingerprints computed already (by key).
        ``renames``: ``(old, new)`` directories moved whose descendants are not in
        ``source`` (folded: unchanged below): the rows below ``old`` move below ``new``
        in SQL, before the drops (so ``old`` and ``new`` may be dropped: their own rows
        are set from ``source``), whatever was below ``new`` is replaced, and a swap or a
        rotation of directories is fine (through a name no key has).
        ``identities``: ``(key, identity)`` of nodes unchanged but for their identity
        (replaced in place by an equal one): the recorded rows, where there are, take it.
        ``fresh``: the pair had no rows when the run began (``has_rows``: an initial
        copy's batches), so every row of ``set_keys`` is new or was written by this run,
        with its identity: no row's identity is checked after the insert.
        """
        db = self.db
        nodes: Mapping[Key, Node] = source.nodes
        fps: Mapping[Key, str] = fingerprints or {}
        renames = list(renames)
        if LEFT_TO_THE_EXIT:  # checkpointed beside the next run's scan instead
            db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_LATER}")
        with db:
            if full:
                db.execute("DELETE FROM nodes WHERE pair=?", (self.pair,))
            if _direct(renames, drop_prefixes := list(drop_prefixes)):
                # one directory moved, clear of every other change: its rows go
                # straight to their new keys (one UPDATE; each row rewritten once)
                (old, new), = renames
                self._drop_below(encode_key(new))
                self._move_below(encode_key(old), encode_key(new))
                renames = []
            for i, (old, _) in enumerate(renames):
                # out of the way first: a name starting with a NUL is no key's
                self._move_below(encode_key(old), b"\0%d" % i)
            for _, new in renames:
                self._drop_below(encode_key(new))
            for prefix in drop_prefixes:
                top = encode_key(prefix)
                # two primary-key lookups (an OR would make SQLite scan the pair)
                db.execute("DELETE FROM nodes WHERE pair=? AND key=?", (self.pair, top))
                db.execute(
                    "DELETE FROM nodes WHERE pair=? AND key>=? AND key<?",
                    (self.pair, top + _SEP.encode(), top + b"\x01"),
                )
            for i, (_, new) in enumerate(renames):
                self._move_below(b"\0%d" % i, encode_key(new))
            db.executemany(
                "DELETE FROM nodes WHERE pair=? AND key=?",
                ((self.pair, encode_key(k)) for k in drop_keys),
            )
            rows = [
                (
                    self.pair, encode_key(k), identity_form(n.identity), n.kind,
                    n.size, n.mtime_ns,
                    _enc_text(n.target), n.mode,
                    (fps.get(k) or fingerprint(n.data)) if n.kind == ENTRY
                    else data_digest(n.kind, n.data),
                )
                for k in set_keys
                if (n := nodes.get(k)) is not None
            ]
            db.executemany(
                # a node whose attributes were not read (unchanged: "?") keeps the
                # digest it had. The identity is not set here: an upsert that sets a
                # column rewrites the index entries over it even when its value is the
                # same (a page of ``nodes_ident`` written to the WAL per row: a spread
                # delete's directories, whose mtimes alone changed, made 16% of its
                # WAL pages, all checkpointed); the UPDATE below writes only those
                # that changed
                "INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(pair, key) DO "
                "UPDATE SET kind=excluded.kind, size=excluded.size, "
                "mtime=excluded.mtime, target=excluded.target, mode=excluded.mode, "
                "fp=CASE WHEN excluded.fp='?' THEN nodes.fp ELSE excluded.fp END",
                rows,
            )
            db.executemany(
                "UPDATE nodes SET ident=?1 WHERE pair=?2 AND key=?3 AND ident IS NOT ?1",
                ([] if fresh else [(r[2], self.pair, r[1]) for r in rows])
                + [(identity_form(i), self.pair, encode_key(k)) for k, i in identities],
            )
            db.execute(
                "UPDATE pairs SET complete=1, synced_at=? WHERE pair=?", (time.time(), self.pair)
            )

    def _move_below(self, old: bytes, new: bytes) -> None:
        """The rows strictly below the encoded key ``old`` moved below ``new``, in SQL
        (one statement, however many rows)."""
        sep = _SEP.encode()
        self.db.execute(
            "UPDATE nodes SET key = CAST(? || substr(key, ?) AS BLOB) "
            "WHERE pair=? AND key>=? AND key<?",
            (new + sep, len(old) + 2, self.pair, old + sep, old + b"\x01"),
        )

    def _drop_below(self, top: bytes) -> None:
        self.db.execute(
            "DELETE FROM nodes WHERE pair=? AND key>=? AND key<?",
            (self.pair, top + _SEP.encode(), top + b"\x01"),
        )
