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
