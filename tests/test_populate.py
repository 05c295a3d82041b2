"""An initial sync into an empty destination is streamed (``hsync.populate``): the
destination is written while the source is still read. It must give what the planned
sync gives: the same destination, report and history, and the history must serve the
next runs (a diff is empty, a later move is found by identity)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from ldap_fixtures import DST_BASE, SRC_BASE, Slapd, add_ldif, admin, clear, entries, uuids
from treeutil import DIR, File, Link, assert_same_tree, build

import hsync
import hsync.oneshot as sync_module
import hsync.populate
from hsync.oneshot import sync_once
from hsync.options import Options


def _history_rows(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute(
            "SELECT key, ident, kind, size, mtime, target, mode, fp FROM nodes"))
    finally:
        db.close()


def _report(report: hsync.Report) -> dict[str, Any]:
    out = report.to_json()
    del out["elapsed"]
    out["skipped"] = sorted(out["skipped"], key=lambda s: s["path"])
    return out


@pytest.fixture
def streams(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the streamed copies (``populate`` calls) made by ``sync_once``."""
    calls: list[int] = []
    real = hsync.populate.populate

    def counted(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(hsync.populate, "populate", counted)
    return calls


def _empty_destination(server: Slapd) -> None:
    """The destination suffix as the fixture made it: its base entry only, as it was."""
    clear(server, DST_BASE)
    conn = admin(server, DST_BASE)
    conn.modify_s(DST_BASE, [(2, "o", [b"dst"])])
    conn.unbind_s()


def _planned_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "_streams", lambda *a, **kw: False)


TREE = "".join(
    [f"dn: ou=A,{SRC_BASE}\nobjectClass: organizationalUnit\nou: A\n\n",
     f"dn: ou=Deep,ou=A,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Deep\n\n",
     f"dn: ou=B,{SRC_BASE}\nobjectClass: organizationalUnit\nou: B\n\n",
     f"dn: cn=g,ou=B,{SRC_BASE}\nobjectClass: groupOfNames\ncn: g\n"
     f"member: uid=u1,ou=Deep,ou=A,{SRC_BASE}\n\n"]
    + [f"dn: uid=u{i},ou=Deep,ou=A,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
       f"cn: U {i}\nsn: S{i}\n\n" for i in range(40)]
)


def test_a_streamed_sync_into_an_empty_suffix_equals_the_planned_one(
    ldap_env: Slapd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streams: list[int]
) -> None:
    add_ldif(ldap_env, SRC_BASE, TREE)
    src, dst = ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE)
    streamed = sync_once(src, dst, Options(state=str(tmp_path / "a.sqlite")))
    assert streams == [1]
    got = entries(ldap_env, DST_BASE)
    _empty_destination(ldap_env)
    with monkeypatch.context() as m:
        _planned_only(m)
        planned = sync_once(src, dst, Options(state=str(tmp_path / "b.sqlite")))
    assert streams == [1]
    assert _report(streamed) == _report(planned)
    assert streamed.counts == {"create": 44, "update": 1, "move": 0, "delete": 0}  # + base
    assert streamed.ok
    assert got == entries(ldap_env, DST_BASE)
    assert _history_rows(tmp_path / "a.sqlite") == _history_rows(tmp_path / "b.sqlite")
    # the streamed run's history serves the next runs
    state = str(tmp_path / "a.sqlite")
    _empty_destination(ldap_env)
    sync_once(src, dst, Options(state=str(tmp_path / "c.sqlite")))  # streamed again
    for suffix in ("", "-wal", "-shm"):  # the WAL is kept between runs: it goes along
        os.replace(f"{tmp_path / 'c.sqlite'}{suffix}", f"{state}{suffix}")
    assert hsync.diff(src, dst, state=state).to_json() == []
    before = uuids(ldap_env, DST_BASE)
    conn = admin(ldap_env, SRC_BASE)
    conn.rename_s(f"ou=Deep,ou=A,{SRC_BASE}", "ou=Deep", f"ou=B,{SRC_BASE}", 1)
    conn.unbind_s()
    again = sync_once(src, dst, Options(state=state))
    assert again.counts == {"create": 0, "update": 0, "move": 1, "delete": 0}
    after = uuids(ldap_env, DST_BASE)
    assert after["uid=u7,ou=deep,ou=b"] == before["uid=u7,ou=deep,ou=a"]
    assert streams == [1, 1]  # not streamed: the destination was not empty


def test_an_entry_whose_parent_arrives_later_is_created_after_it(
    ldap_env: Slapd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streams: list[int]
) -> None:
    """The server's pages in the worst order (deepest first): every child is held until
    its parent has come, and the adds still go parents first."""
    from hsync_ldap import connection
    from hsync_ldap.backend import LdapBackend

    add_ldif(ldap_env, SRC_BASE, TREE)
    pages = connection.pages

    def deepest_first(conn: Any, dn: str, **kw: Any) -> Any:
        found = [e for page in pages(conn, dn, **kw) for e in page]
        yield sorted(found, key=lambda e: -e[0].count(","))  # one page, deepest first

    monkeypatch.setattr(connection, "pages", deepest_first)
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    try:
        keys = [k for k, _ in backend.stream()]
    finally:
        backend.close()
    assert len(keys) == 44
    assert all(k[:-1] == () or keys.index(k[:-1]) < i for i, k in enumerate(keys))
    report = sync_once(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
                       Options(state=str(tmp_path / "h.sqlite"), check=False))
    assert streams == [1]
    assert report.ok, report.problems
    assert report.counts["create"] == 44
    assert hsync.diff(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
                      state="").to_json() == []


def test_a_streamed_sync_into_an_empty_directory_equals_the_planned_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streams: list[int]
) -> None:
    src = build(tmp_path / "src", {
        "a": DIR, "a/b": DIR, "a/b/f": b"hello", "a/g": File(b"x" * 5000, mode=0o600),
        "c": DIR, "c/l": Link("../a/b/f"), "top": b"top",
        **{f"many/{i:03d}": f"n{i}".encode() for i in range(300)},
    })
    os.mknod(src / "a" / "sock", 0o600 | stat.S_IFSOCK)  # skipped, with a warning
    os.chmod(src / "c", 0o750)
    a, b = tmp_path / "dst-a", tmp_path / "dst-b"
    a.mkdir()  # an existing empty directory, and (b) a missing one
    streamed_a = sync_once(str(src), str(a), Options(state=str(tmp_path / "a.sqlite")))
    streamed_b = sync_once(str(src), str(b), Options(state=str(tmp_path / "b.sqlite")))
    assert streams == [1, 1]
    assert_same_tree(src, a)
    assert_same_tree(src, b)
    with monkeypatch.context() as m:
        _planned_only(m)
        for d, name in ((a, "pa"), (b, "pb")):
            shutil.rmtree(d)
            if name == "pa":
                d.mkdir()
            planned = sync_once(str(src), str(d), Options(state=str(tmp_path / f"{name}.sqlite")))
            streamed = streamed_a if name == "pa" else streamed_b
            assert _report(streamed) == _report(planned)
            assert _history_rows(tmp_path / f"{name[1]}.sqlite") == \
                _history_rows(tmp_path / f"{name}.sqlite")
    assert streamed_a.skipped == [(("a", "sock"), "socket")]
    assert streamed_b.counts["create"] == 309 and streamed_b.bytes_copied == 5000 + 5 + 3 + sum(
        len(f"n{i}") for i in range(300))
    # the streamed run's history finds a later move by identity
    shutil.rmtree(a)
    a.mkdir()
    state = str(tmp_path / "a.sqlite")
    os.remove(state)
    sync_once(str(src), str(a), Options(state=state))
    assert hsync.diff(str(src), str(a), state=state).to_json() == []
    os.rename(src / "many", src / "renamed")
    again = sync_once(str(src), str(a), Options(state=state))
    assert again.counts["move"] == 1 and again.counts["create"] == 0
    assert_same_tree(src, a)


def test_dry_run_and_no_delete_into_an_empty_destination(
    tmp_path: Path, streams: list[int]
) -> None:
    src = build(tmp_path / "src", {"a": DIR, "a/f": b"1", "g": b"2"})
    dst = tmp_path / "dst"
    dry = sync_once(str(src), str(dst), Options(dry_run=True, state=str(tmp_path / "h")))
    assert streams == [] and dry.planned["create"] == 4 and not dst.exists()
    kept = sync_once(str(src), str(dst), Options(delete=False, state=str(tmp_path / "h")))
    assert streams == [1] and kept.counts["create"] == 4  # no history (--no-delete)
    assert_same_tree(src, dst)
