"""The history keeps an entry's payload (as a fingerprint), so identity-based move
detection trusts it only while the destination still holds what was synced."""

from __future__ import annotations

from pathlib import Path

from hsync.history import History
from hsync.model import ENTRY, Fingerprint, Node, Snapshot, same_content


def _entry(ident: str, **attrs: set[bytes]) -> Node:
    data = tuple(sorted((k, frozenset(v)) for k, v in attrs.items()))
    return Node(ENTRY, identity=ident, data=data)


def test_entry_fingerprint_round_trips_through_the_history(tmp_path: Path) -> None:
    a = _entry("u1", cn={b"a"}, objectclass={b"person", b"top"})
    snap = Snapshot({(): Node(ENTRY, data=()), ("cn=a",): a})
    h = History(str(tmp_path / "h.sqlite"), "ldap://x/dc=a", "ldap://x/dc=b")
    h.record(snap, [(), ("cn=a",)], full=True)
    (key, synced), = h.lookup_many(["u1"]).values()
    h.close()
    assert key == ("cn=a",)
    assert isinstance(synced.data, Fingerprint)
    assert same_content(synced, _entry("x", objectclass={b"top", b"person"}, cn={b"a"}))
    assert not same_content(synced, _entry("x", objectclass={b"top", b"person"}, cn={b"b"}))


def test_a_schema_3_history_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    """Schema 4 adds the resume token, schema 5 whether a pair may delete; a schema 3
    file gets both, keeps its rows, and its pairs keep deleting as they did."""
    import sqlite3

    path = str(tmp_path / "h.sqlite")
    snap = Snapshot({(): Node(ENTRY, data=()), ("cn=a",): _entry("u1", cn={b"a"})})
    h = History(path, "ldap://x/dc=a", "ldap://x/dc=b")
    h.record(snap, [(), ("cn=a",)], full=True)
    h.close()
    db = sqlite3.connect(path)  # what a schema 3 file looks like
    with db:
        db.execute("DROP TABLE resume")
        db.execute("ALTER TABLE pairs DROP COLUMN deletes")
        db.execute("UPDATE meta SET value='3' WHERE name='schema'")
    db.close()
    h = History(path, "ldap://x/dc=a", "ldap://x/dc=b")
    assert [k for k, _ in h.walk()] == [(), ("cn=a",)]
    assert h.deletes_allowed
    assert list(h.identities()) == [("u1", ("cn=a",))]
    assert h.resume_token("ctx") is None
    h.save_resume(b"cookie", "ctx")
    assert h.resume_token("ctx") == b"cookie"
    assert h.resume_token("other roots") is None  # kept with its context only
    h.forget()  # an unfinished batch: neither the rows nor the token are trusted
    assert h.resume_token("ctx") is None
    h.close()
    (version,) = sqlite3.connect(path).execute(
        "SELECT value FROM meta WHERE name='schema'").fetchone()
    assert version == "6"


def test_a_schema_5_history_of_files_is_compared_in_full_once(tmp_path: Path) -> None:
    """Schema 6: a file's identity holds its birth time, so the rows of a filesystem
    pair written before are not trusted for moves (one full comparison records them
    afresh); an LDAP pair's rows (entryUUIDs) stay trusted."""
    import sqlite3

    path = str(tmp_path / "h.sqlite")
    files = History(path, "file:///src", "file:///dst")
    files.record(Snapshot({(): Node("dir", identity=7)}), [()], full=True)
    files.close()
    entries = History(path, "ldap://x/dc=a", "ldap://x/dc=b")
    entries.record(Snapshot({(): Node(ENTRY, data=())}), [()], full=True)
    entries.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value='5' WHERE name='schema'")
    db.close()
    for source, destination, trusted in (("file:///src", "file:///dst", False),
                                         ("ldap://x/dc=a", "ldap://x/dc=b", True)):
        h = History(path, source, destination)
        assert h.complete is trusted, source
        h.close()


def test_moved_from_names_only_the_nodes_the_history_holds_elsewhere(tmp_path: Path) -> None:
    """The digest comparison asks where the identities of a region's nodes were synced:
    only those held at another key come back (with that key), none that stayed."""
    snap = Snapshot({(): Node("dir", identity=1), ("a",): Node("file", identity=2),
                     ("b",): Node("file", identity=3), ("d",): Node("dir", identity=4),
                     ("d", "x\udcff"): Node("file", identity=5)})
    h = History(str(tmp_path / "h.sqlite"), "file:///s", "file:///d")
    h.record(snap, list(snap.nodes), full=True)
    now = {2: ("a",), 3: ("c",), 5: ("x\udcff",), 6: ("new",), None: ("n",)}
    assert h.moved_from(now) == {3: ("b",), 5: ("d", "x\udcff")}
    h.close()


def test_moved_from_counts_an_inode_still_at_one_of_its_names_as_not_moved(
    tmp_path: Path,
) -> None:
    """Two names of one inode (a hard link) were synced: a region that holds the inode at
    either name has not moved it (no rename is planned for a link), one that holds it
    only at a third name has it from one of the two."""
    snap = Snapshot({(): Node("dir", identity=1), ("h1",): Node("file", identity=7),
                     ("h2",): Node("file", identity=7)})
    h = History(str(tmp_path / "h.sqlite"), "file:///s", "file:///d")
    h.record(snap, list(snap.nodes), full=True)
    assert h.moved_from({7: ("h2",)}) == {}
    assert h.moved_from({7: ("h1",)}) == {}
    assert h.moved_from({7: ("h3",)}) in ({7: ("h1",)}, {7: ("h2",)})
    h.close()
